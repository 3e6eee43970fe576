"""What the benchmarks record about the CPU they ran on, so their figures can be read in context.

Timings from these tools are only comparable on the same kind of CPU: whether it computes bfloat16
natively decides whether `mixed_bfloat16` is 4× faster or 10× slower than float32 (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import os

CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(name: str, cpuinfo: str) -> str | None:
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name, or "unknown" where /proc/cpuinfo is absent (macOS, Windows)."""
    return _cpuinfo_field("model name", cpuinfo) or "unknown"


def cpu_has_bf16(cpuinfo: str = CPUINFO) -> bool:
    """True where the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16).

    Without them oneDNN emulates bf16 and mixed_bfloat16 is several times SLOWER than float32
    (measured on an AVX2-only AMD EPYC: > 7 s/face against 2 s/face, docs/TRAINING.md).
    """
    flags = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


# The flags that decide which precision and which kernels are fast (the README's CPU table names them).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: str = CPUINFO) -> list[str]:
    """Which of SPEED_FLAGS the CPU reports, in that order."""
    flags = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return [flag for flag in SPEED_FLAGS if flag in flags]


def machine_info() -> dict:
    """CPU count, model name, its speed-relevant flags, native bf16 and the load average now (for a
    benchmark's JSON)."""
    return {"cpus": os.cpu_count(), "cpu": cpu_name(), "cpu_flags": cpu_flags(), "bf16_native": cpu_has_bf16(),
            "load_average_start": os.getloadavg()}
