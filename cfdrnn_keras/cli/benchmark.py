"""Time the path a user runs: the packaged models on LiteRT, as `LandmarkDetector()` runs them.

    cfdrnn benchmark --json benchmark.json
    cfdrnn benchmark --models fast --threads 1 --runs 100 --photo my_photo.jpg

For each model and thread count (default: 1 and all cores):

- cold start: a new Python process, from its start to the first landmarks of the photo
  (`from cfdrnn_keras import LandmarkDetector; LandmarkDetector(...).detect(photo)`), median of
  `--cold-runs` processes; and the whole `cfdrnn predict PHOTO --json ...` command the same way;
- end to end per face: `detect(photo)` — face detector, crops, network, points mapped back — divided
  by the faces found, median of `--runs` calls after `--warmup`;
- its parts: the face detector alone, and the network alone on one crop (batch 1).

Needs only the plain install (numpy, OpenCV, LiteRT). The JSON records the CPU's model and the flags
that decide which kernels are fast (avx512_vnni, avx512_bf16, amx_bf16, ...), and the load average.
`tools/benchmark_formats.py` compares every export format instead (Keras, SavedModel, each TFLite).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..errors import one_line

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"

COLD_START_SCRIPT = """
import sys
from cfdrnn_keras import LandmarkDetector
faces = LandmarkDetector(model=sys.argv[1], threads=int(sys.argv[2])).detect(sys.argv[3])
print("ready", len(faces), flush=True)
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", dest="json_path", default="benchmark.json",
                        help="write the results here (default: benchmark.json)")
    parser.add_argument("--models", default=None,
                        help="comma-separated packaged model names (NAME:keras for the float Keras network, which "
                             "needs the [train] extra and ignores --threads) or model paths (default: every "
                             "packaged model's LiteRT file)")
    parser.add_argument("--threads", default="1,all",
                        help="comma-separated thread counts; 'all' = every core this process may use (default: 1,all)")
    parser.add_argument("--photo", default=None,
                        help="the photo timed end to end (default: examples/astronaut.png of the checkout)")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per row (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default: 5)")
    parser.add_argument("--cold-runs", type=int, default=5,
                        help="new processes timed for the cold start; 0 skips it (default: 5)")
    parser.add_argument("--verbose", action="store_true", help="show LiteRT's own log lines (default: hidden)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.cold_runs < 0:
        parser.error("--runs must be at least 1, --warmup and --cold-runs at least 0")
    return args


def thread_counts(text: str) -> list[int]:
    """'1,all' → [1, cores]; duplicates dropped, order kept. ValueError on anything else."""
    from ..runtime.backends import default_threads

    counts = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        count = default_threads() if item == "all" else int(item)
        if count < 1:
            raise ValueError(f"thread counts must be at least 1, got {item}")
        if count not in counts:
            counts.append(count)
    if not counts:
        raise ValueError("no thread count given")
    return counts


def time_calls(call, runs: int, warmup: int) -> dict:
    """Median and minimum wall time of `call()` in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "runs": runs}


def cold_start(command: list[str], runs: int, ready_marker: str | None = None) -> dict | None:
    """Median seconds from launching `command` to its `ready_marker` line (or to its exit)."""
    if runs == 0:
        return None
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        elapsed = None
        if ready_marker:
            for line in process.stdout:
                if line.startswith(ready_marker):
                    elapsed = time.perf_counter() - started
                    break
        _, error = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])}...: exit {process.returncode}: "
                               f"{(error.strip().splitlines() or ['no message'])[-1]}")
        times.append(elapsed if elapsed is not None else time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "runs": runs}


def time_model(model: str, threads: int, photo, args) -> dict:
    """One row: cold start, end to end per face and its parts, for `model` at `threads`."""
    from data_pipelines.geometry import crop_matrix, warp_to_crop
    from data_pipelines.images import read_image

    from ..runtime.landmarker import LandmarkDetector

    image = read_image(photo)
    detector = LandmarkDetector(model=model, threads=threads)
    faces = detector.detect(image)
    if not faces:
        raise RuntimeError(f"{photo}: no face found, nothing to time")
    crop = warp_to_crop(image, crop_matrix(faces[0].box, detector.input_size, detector.margin), detector.input_size)
    crops = crop[None]
    end_to_end = time_calls(lambda: detector.detect(image), args.runs, args.warmup)
    face_detector = time_calls(lambda: detector.find_faces(image), args.runs, args.warmup)
    network = time_calls(lambda: detector.backend.predict_crops(crops), args.runs, args.warmup)
    per_face = {key: round(value / len(faces), 3) if key.endswith("_ms") else value for key, value in end_to_end.items()}
    row = {
        "model": model, "threads": threads, "faces": len(faces), "input_size": detector.input_size,
        "end_to_end_per_face": per_face, "face_detector": face_detector, "network": network,
        "model_file_bytes": _file_size(detector.backend),
        "cold_start_api": cold_start([sys.executable, "-c", COLD_START_SCRIPT, model, str(threads), str(photo)],
                                     args.cold_runs, "ready"),
        "cold_start_cli": cold_start([sys.executable, "-m", "cfdrnn_keras", "predict", str(photo), "--model", model,
                                      "--threads", str(threads), "--quiet", "--json", os.devnull], args.cold_runs),
    }
    return row


def _file_size(backend) -> int | None:
    path = getattr(backend, "path", None)
    return Path(path).stat().st_size if path and Path(path).is_file() else None


def markdown_table(report: dict) -> str:
    lines = ["| model | threads | cold start, API (s) | cold start, `cfdrnn predict` (s) | end to end (ms/face) "
             "| face detector (ms) | network alone (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(entry, key):
        return "—" if not entry else f"{entry[key]:.2f}" if key.endswith("_s") else f"{entry[key]:.1f}"

    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['threads']} | error: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['model']} | {row['threads']} | {cell(row['cold_start_api'], 'median_s')} "
                     f"| {cell(row['cold_start_cli'], 'median_s')} | {cell(row['end_to_end_per_face'], 'median_ms')} "
                     f"| {cell(row['face_detector'], 'median_ms')} | {cell(row['network'], 'median_ms')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..machine import machine_info
    from ..runtime import packaged

    try:
        threads = thread_counts(args.threads)
    except ValueError as error:
        print(f"benchmark: --threads: {error}", file=sys.stderr)
        return 2
    models = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models
              else [name for name, m in packaged.PACKAGED_MODELS.items() if m.tflite_path.exists()])
    for model in models:
        if packaged.packaged_name(model) is None and not Path(model).exists():
            print(f"benchmark: {model}: neither a packaged model ({', '.join(packaged.PACKAGED_MODELS)}) "
                  "nor a model file", file=sys.stderr)
            return 2
    photo = Path(args.photo) if args.photo else ASTRONAUT
    if not photo.is_file():
        print(f"benchmark: {photo}: photo not found (pass --photo)", file=sys.stderr)
        return 2
    report = {"command": " ".join(["cfdrnn benchmark", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine_info(), "photo": str(photo), "runs": args.runs, "warmup": args.warmup,
              "cold_runs": args.cold_runs, "rows": []}
    started = time.time()
    for model in models:
        for count in threads:
            print(f"benchmark: {model} at {count} thread(s)", file=sys.stderr, flush=True)
            try:
                report["rows"].append(time_model(model, count, photo, args))
            except Exception as error:  # one row fails (a model that does not load): report it, go on
                message = one_line(error)
                report["rows"].append({"model": model, "threads": count, "error": message})
                print(f"benchmark: {model} at {count} thread(s): {message}", file=sys.stderr)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started, 1)
    try:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as error:
        print(f"benchmark: {args.json_path}: cannot write the report: {error.strerror or error}", file=sys.stderr)
        return 2
    machine = report["machine"]
    print(markdown_table(report))
    print(f"\n{machine['cpu']}, {machine['cpus']} cores, flags {' '.join(machine['cpu_flags']) or 'none of note'}; "
          f"median of {args.runs} calls ({args.cold_runs} processes for cold starts); load average "
          f"{machine['load_average_start']} → {machine['load_average_end']}; wrote {args.json_path}")
    return 1 if any("error" in row for row in report["rows"]) else 0


__all__ = ["cold_start", "main", "markdown_table", "parse_args", "thread_counts", "time_calls", "time_model"]
