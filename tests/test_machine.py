"""The CPU facts written beside every benchmark figure, read from hand-written /proc/cpuinfo files."""
from cfdrnn_keras.machine import cpu_flags, cpu_has_bf16, cpu_name, machine_info

SAPPHIRE = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"


def test_model_name_and_native_bf16_come_from_cpuinfo(tmp_path):
    (tmp_path / "xeon").write_text(SAPPHIRE)
    (tmp_path / "epyc").write_text(EPYC)
    assert cpu_name(str(tmp_path / "xeon")) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_name(str(tmp_path / "epyc")) == "AMD EPYC 7B13"
    assert cpu_has_bf16(str(tmp_path / "xeon")) and not cpu_has_bf16(str(tmp_path / "epyc"))
    assert cpu_flags(str(tmp_path / "xeon")) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    assert cpu_flags(str(tmp_path / "epyc")) == ["avx2"]


def test_without_cpuinfo_the_answers_are_honest_defaults(tmp_path):
    assert cpu_name(str(tmp_path / "absent")) == "unknown"
    assert not cpu_has_bf16(str(tmp_path / "absent"))


def test_machine_info_has_what_the_benchmark_tables_print():
    info = machine_info()
    assert set(info) == {"cpus", "cpu", "cpu_flags", "bf16_native", "load_average_start"}
    assert info["cpus"] >= 1 and isinstance(info["bf16_native"], bool) and len(info["load_average_start"]) == 3
