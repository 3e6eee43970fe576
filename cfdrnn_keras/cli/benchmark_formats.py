"""Inference speed per face of every format: Keras fp32 / bf16, SavedModel and each TFLite file, at 1
and 2 threads (a developer's comparison; `cfdrnn benchmark` times the path users run).

    python tools/benchmark_formats.py --json formats.json
    python tools/benchmark_formats.py --json lite.json --presets lite --runs 100

For each preset a network is built (seeded; speed does not depend on the weights), saved as `.keras`,
exported as a SavedModel and as TFLite fp32 / fp16 / int8 / full int8 (calibrated on real faces
where `--calibration-data` has them), and every artefact is timed on one real face crop: batch 1,
median of `--runs` calls after `--warmup` calls. TensorFlow's thread pools must be sized before it
starts, so each thread count runs in its own worker process (`--worker`, internal). dlib's 68-point
shape predictor is a peer row where `dlib` and `face_recognition_models` are installed.

All rows run the deployed graph: `landmarks` and `confidence` only (Keras prunes the landmark-level
tails the other heads need). GFLOPs are counted from the graph (conv multiply-adds × 2) for that
graph and for the whole training graph. Prints a Markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# tools/export.py would shadow the `export` package: take this folder off the import path.

TFLITE_ROWS = ("tflite_fp32", "tflite_fp16", "tflite_int8", "tflite_int8_full")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", dest="json_path", default="benchmark.json",
                        help="write the results here (default: benchmark.json)")
    parser.add_argument("--presets", default="paper,lite", help="comma-separated presets (default: paper,lite)")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per row, batch 1 (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default: 5)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--calibration-data", default=None,
                        help="annotated faces for the full-int8 calibration and the timed crop "
                             "(default: ../shared/data/300w or $CFDRNN_DATA/300w if present; without it the "
                             "full-int8 row is skipped and a noise crop is timed)")
    parser.add_argument("--onednn", choices=("default", "on", "off"), default="default",
                        help="TensorFlow's oneDNN kernels in the workers: default (TensorFlow's choice: on only for "
                             "CPUs with AVX512-VNNI/BF16 or AMX), on (TF_ENABLE_ONEDNN_OPTS=1), off (=0) (default: default)")
    parser.add_argument("--ensembles", default="plain,default",
                        help="comma-separated test-time ensembles to time (cfdrnn_keras.model.ensemble): plain (the "
                             "last stage alone, the paper's output), default (flip test + four-stage average, "
                             "what LandmarkDetector and tools/export.py use), flip, stages (default: plain,default)")
    parser.add_argument("--skip", default="",
                        help="comma-separated rows to leave out, e.g. keras_bf16,tflite_int8 (default: none)")
    parser.add_argument("--worker", default=None,
                        help="internal: run the timings described by this JSON spec file and print JSON")
    parser.add_argument("--worker-threads", type=int, default=0, help="internal: the worker's thread count")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Timing (worker side)
# ------------------------------------------------------------------------------------------------
from ..errors import one_line  # noqa: E402
from .benchmark import time_calls  # noqa: E402  (one timing loop for both benchmarks)


def _keras_call(model_path, crop, bf16: bool):
    import keras
    import numpy as np
    import tensorflow as tf

    import cfdrnn_keras
    import cfdrnn_keras.model  # noqa: F401  (registers the custom layers, the ensemble's among them)
    from export.saved_model import inference_model

    model = keras.saving.load_model(model_path, safe_mode=True)
    if bf16:
        config = cfdrnn_keras.config_from_model(model)
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            mixed = cfdrnn_keras.build_cfdrnn(config)
        finally:
            keras.config.set_dtype_policy("float32")
        mixed.set_weights(model.get_weights())
        model = mixed
    model = inference_model(model)
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(crop[None].astype(np.float32) / 255.0 - 0.5)
    return lambda: forward(x)["landmarks"].numpy()


def _saved_model_call(path, crop):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    image = tf.constant(crop[None])
    return lambda: serve(image=image)["landmarks"].numpy()


def _tflite_call(path, crop, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], crop[None])
    outputs = [detail["index"] for detail in interpreter.get_output_details()]

    def call():
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in outputs]

    return call


def _dlib_call(photo, box):
    import dlib
    import face_recognition_models

    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    rectangle = dlib.rectangle(*(int(round(v)) for v in box))
    return lambda: predictor(photo, rectangle)


def run_worker(spec_path: str, threads: int) -> int:
    """Time every artefact of the spec with `threads` threads; print one JSON line."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    crop = np.load(spec["crop"])
    try:
        from tensorflow.python.util import _pywrap_util_port

        results = {"_onednn_enabled": bool(_pywrap_util_port.IsMklEnabled())}
    except Exception:
        results = {"_onednn_enabled": None}
    for row in spec["rows"]:
        name, kind, path = row["name"], row["kind"], row.get("path")
        try:
            if kind == "keras":
                call = _keras_call(path, crop, row.get("bf16", False))
            elif kind == "saved_model":
                call = _saved_model_call(path, crop)
            elif kind == "tflite":
                call = _tflite_call(path, crop, threads)
            elif kind == "dlib":
                photo = np.load(row["photo"])
                call = _dlib_call(photo, row["box"])
            else:
                raise ValueError(f"unknown row kind {kind}")
            results[name] = time_calls(call, spec["runs"], spec["warmup"])
        except Exception as error:  # one row failing must not lose the others
            results[name] = {"error": one_line(error)}
        print(f"  [{threads} thread(s)] {name}: {results[name]}", file=sys.stderr, flush=True)
    print(json.dumps(results))
    return 0


# ------------------------------------------------------------------------------------------------
# Preparation and report (parent side)
# ------------------------------------------------------------------------------------------------
def _dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
        import face_recognition_models

        return Path(face_recognition_models.pose_predictor_model_location()).is_file()
    except Exception:
        return False


def _timed_crop(calibration_root, size: int):
    """One real face crop (uint8, size²) and calibration crops, or a noise crop and none."""
    import numpy as np

    from export.tflite import face_crops

    if calibration_root:
        crops, _ = face_crops(calibration_root, 17, size)
        if len(crops):
            return crops[0], crops[1:]
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), None


ENSEMBLES = {
    "plain": {"flip": False, "stages": "last"},
    "default": {"flip": True, "stages": "all"},
    "flip": {"flip": True, "stages": "last"},
    "stages": {"flip": False, "stages": "all"},
}


def prepare_preset(preset: str, folder: Path, calibration, skip: set, log,
                   ensemble: str = "plain") -> tuple[list, dict]:
    """Build, save and export one preset run as `ensemble`; return (rows for the workers, static facts)."""
    import keras

    import cfdrnn_keras
    from cfdrnn_keras.model.ensemble import EnsembleOptions, for_inference
    from cfdrnn_keras.model.model_stats import total_flops
    from export import directory_size
    from export.saved_model import export_saved_model, inference_model
    from export.tflite import convert, write_crops_saved_model

    keras.utils.set_random_seed(0)
    network = cfdrnn_keras.build_cfdrnn(cfdrnn_keras.get_preset(preset))
    model = for_inference(network, EnsembleOptions(**ENSEMBLES[ensemble]))
    if model is not network:
        skip = skip | {"keras_bf16"}  # the bf16 row rebuilds the bare network from its config
    deployed = inference_model(model)
    folder = folder / ensemble
    folder.mkdir(exist_ok=True)
    keras_path = folder / f"{preset}.keras"
    model.save(keras_path)
    facts = {
        "params": int(deployed.count_params()),
        "gflops": total_flops(deployed) / 1e9,
        "gflops_training_graph": total_flops(network) / 1e9,
    }
    rows, sizes = [], {}
    for name, bf16 in (("keras_fp32", False), ("keras_bf16", True)):
        if name not in skip:
            rows.append({"name": name, "kind": "keras", "path": str(keras_path), "bf16": bf16})
            sizes[name] = keras_path.stat().st_size
    if "saved_model" not in skip:
        log(f"{preset}: exporting the SavedModel")
        path = export_saved_model(model, folder / f"{preset}_saved_model")
        rows.append({"name": "saved_model", "kind": "saved_model", "path": path})
        sizes["saved_model"] = directory_size(Path(path))
    wanted = [name for name in TFLITE_ROWS if name not in skip]
    if wanted:
        crops_model = write_crops_saved_model(model, folder / f"{preset}_crops")
    for name in wanted:
        if name == "tflite_int8_full" and calibration is None:
            log(f"{preset}: {name} skipped: no real faces to calibrate on (--calibration-data)")
            continue
        log(f"{preset}: converting {name}")
        path = folder / f"{preset}_{name}.tflite"
        path.write_bytes(convert(model, name, calibration, crops_model))
        rows.append({"name": name, "kind": "tflite", "path": str(path)})
        sizes[name] = path.stat().st_size
    return rows, {"facts": facts, "sizes": sizes}


def markdown_table(report: dict) -> str:
    threads = report["threads"]
    header = ("| preset | test time | backend | GFLOPs | size (MB) | "
              + " | ".join(f"ms/face, {t} thr" for t in threads) + " |")
    lines = [header, "|" + "---|" * 5 + "---:|" * len(threads)]
    for row in report["rows"]:
        cells = []
        for t in threads:
            timing = row["timings"].get(str(t), {})
            cells.append(f"{timing['median_ms']:.1f}" if "median_ms" in timing else "failed")
        gflops = f"{row['gflops']:.1f}" if row.get("gflops") is not None else "—"
        size = f"{row['size_bytes'] / 1e6:.1f}" if row.get("size_bytes") else "—"
        lines.append(f"| {row['preset']} | {row.get('ensemble') or '—'} | {row['backend']} | {gflops} | {size} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.worker_threads)
    if args.runs < 1 or args.warmup < 0:
        print("benchmark: --runs must be at least 1 and --warmup at least 0", file=sys.stderr)
        return 2
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        print(f"benchmark: --threads must be comma-separated integers, got {args.threads!r}", file=sys.stderr)
        return 2
    from export import default_calibration_root

    calibration_root = args.calibration_data or default_calibration_root()
    if calibration_root and not Path(calibration_root).is_dir():
        print(f"benchmark: {calibration_root}: calibration data folder not found", file=sys.stderr)
        return 2
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    ensembles = [e.strip() for e in args.ensembles.split(",") if e.strip()]
    unknown = sorted(set(ensembles) - set(ENSEMBLES))
    if unknown or not ensembles:
        print(f"benchmark: unknown --ensembles {', '.join(unknown) or '(none)'}; choose from {', '.join(ENSEMBLES)}",
              file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    import numpy as np

    import cfdrnn_keras

    for preset in presets:
        try:
            cfdrnn_keras.get_preset(preset)
        except ValueError as error:
            print(f"benchmark: {error}", file=sys.stderr)
            return 2

    def log(message):
        print(message, file=sys.stderr, flush=True)

    from cfdrnn_keras.machine import machine_info

    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "runs": args.runs, "warmup": args.warmup, "batch": 1, "threads": threads,
        "timed_crop": "real face crop" if calibration_root else "noise crop",
        "onednn": args.onednn,
        "rows": [],
    }
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for preset in presets:
            crop, calibration = _timed_crop(calibration_root, cfdrnn_keras.get_preset(preset).input_size)
            crop_path = folder / f"{preset}_crop.npy"
            np.save(crop_path, crop)
            rows, static = [], {}
            for ensemble in ensembles:
                more, static[ensemble] = prepare_preset(preset, folder, calibration, skip, log, ensemble)
                rows += [dict(row, ensemble=ensemble, name=f"{ensemble}/{row['name']}") for row in more]
            if "dlib" not in skip and _dlib_available() and preset == presets[0]:
                photo, box = _dlib_photo(calibration_root)
                np.save(folder / "photo.npy", photo)
                rows.append({"name": "dlib_68", "kind": "dlib", "photo": str(folder / "photo.npy"), "box": box})
            spec = folder / f"{preset}_spec.json"
            spec.write_text(json.dumps({"crop": str(crop_path), "rows": rows,
                                        "runs": args.runs, "warmup": args.warmup}))
            timings = {}
            for count in threads:
                log(f"{preset}: timing at {count} thread(s)")
                timings[count] = _run_worker_process(spec, count, args.onednn)
                report["onednn_enabled"] = timings[count].pop("_onednn_enabled", None)
            for row in rows:
                peer = row["kind"] == "dlib"
                own = {} if peer else static[row["ensemble"]]
                report["rows"].append({
                    "preset": "dlib ERT (peer)" if peer else preset,
                    "ensemble": None if peer else row["ensemble"],
                    "backend": row["name"].split("/", 1)[-1],
                    "gflops": None if peer else own["facts"]["gflops"],
                    "gflops_training_graph": None if peer else own["facts"]["gflops_training_graph"],
                    "params": None if peer else own["facts"]["params"],
                    "size_bytes": _dlib_model_size() if peer else own["sizes"].get(row["name"].split("/", 1)[-1]),
                    "timings": {str(count): timings[count].get(row["name"], {"error": "worker failed"})
                                for count in threads},
                })
    report["machine"]["load_average_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started, 1)
    Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"\noneDNN kernels in TensorFlow: {report.get('onednn_enabled')}; batch 1, median of {args.runs} runs")
    print(f"load average (1/5/15 min) at start {report['machine']['load_average_start']}, "
          f"at end {report['machine']['load_average_end']}; wrote {args.json_path}")
    return 0


def _run_worker_process(spec: Path, threads: int, onednn: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(threads))
    if onednn != "default":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn == "on" else "0"
    command = [sys.executable, "-m", __name__, "--worker", str(spec), "--worker-threads", str(threads)]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"benchmark: worker at {threads} thread(s) failed (exit {result.returncode})", file=sys.stderr)
        return {}


def _dlib_model_size() -> int | None:
    import face_recognition_models

    return Path(face_recognition_models.pose_predictor_model_location()).stat().st_size


def _dlib_photo(calibration_root):
    """A real annotated photo and its 68-point box for dlib (the astronaut with a hand box otherwise)."""
    from data_pipelines import geometry
    from data_pipelines.discovery import find_faces
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    if calibration_root:
        faces = find_faces(calibration_root, check=False)
        if faces:
            face = faces[0]
            return read_image(face.image_path), list(geometry.face_box_from_points(read_pts(face.pts_path)))
    photo = read_image(Path(__file__).resolve().parents[2] / "examples" / "astronaut.png")
    return photo, [150.0, 40.0, 300.0, 210.0]


if __name__ == "__main__":
    sys.exit(main())
