"""Training speed per face (issue 8): steady-state ms/face and faces/s beside the forward pass.

    python tools/benchmark_train.py --json train_bench.json
    python tools/benchmark_train.py --preset lite --precision fp32 --batches 10 --json lite.json

For every preset × precision × batch-norm layer, a worker process builds the training model exactly as
`tools/train.py` does (`cfdrnn_keras.training.build_trainer`: the real losses of all eight heads, the
recipe's optimizer) and runs `fit` on one synthetic batch repeated (random pixels, random points and
their Gaussian heat-maps: no input pipeline cost, no disk). Batch times are taken between consecutive
`on_train_batch_end` calls; the first batch (tracing) and `--warmup-batches` more are dropped and the
median of the next `--batches` is reported. The forward pass (inference mode, same batch size and
precision) is timed the same way, so the ratio training / forward is visible (about 3 is the
arithmetic: a backward pass costs two forwards).

`--data DIR` adds, for every configuration, the same measurement on real faces fed by the stream
`tools/train.py` uses (crops decoded once and cached, augmentation and heat-map encoding per batch in
tf.data): where its ms/face matches the synthetic row's, the input pipeline keeps up with training.
`--batch-size 4,8,16` compares batch sizes.

`--batchnorm fused,keras` compares the network's FusedBatchNormalization with Keras's own layer
(`CFDRNNConfig.fused_batchnorm=False`). Each configuration runs in its own process, so one's compiled
graphs and memory cannot slow the next. Prints a Markdown table and writes JSON.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_TOOLS = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _TOOLS]  # tools/export.py shadows `export`
if str(_TOOLS.parent) not in sys.path:
    sys.path.insert(0, str(_TOOLS.parent))

GOAL = {"preset": "paper", "precision": "bf16", "faces_per_second": 3.6}  # issue 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper,lite", help="comma-separated presets (default: paper,lite)")
    parser.add_argument("--json", dest="json_path", default="benchmark_train.json",
                        help="write the results here (default: benchmark_train.json)")
    parser.add_argument("--batch-size", default="8",
                        help="comma-separated faces per training batch, e.g. 4,8,16 (default: 8)")
    parser.add_argument("--width", type=float, default=None, help="override the presets' width multiplier")
    parser.add_argument("--input-size", type=int, default=None, help="override the presets' input size")
    parser.add_argument("--data", nargs="+", default=None, metavar="DIR",
                        help="also time training on the real faces of these 300-W folders (their training split), "
                             "fed as tools/train.py feeds them; default: synthetic batches only")
    parser.add_argument("--faces", type=int, default=256,
                        help="with --data: use this many faces (the first ones found; 0 = all) (default: 256)")
    parser.add_argument("--precision", default="bf16,fp32",
                        help="comma-separated: bf16 (Keras mixed_bfloat16) and/or fp32 (default: bf16,fp32)")
    parser.add_argument("--batchnorm", default="fused,keras",
                        help="comma-separated batch-norm layers: fused (FusedBatchNormalization) and/or keras "
                             "(keras.layers.BatchNormalization) (default: fused,keras)")
    parser.add_argument("--batches", type=int, default=3, help="timed training batches (default: 3)")
    parser.add_argument("--warmup-batches", type=int, default=1,
                        help="untimed batches after the first (tracing) one (default: 1)")
    parser.add_argument("--forward-runs", type=int, default=3, help="timed forward calls (default: 3)")
    parser.add_argument("--onednn", default="default",
                        help="comma-separated oneDNN settings for the workers: default (TensorFlow's choice: on only "
                             "for CPUs with AVX512-VNNI/BF16 or AMX), on (TF_ENABLE_ONEDNN_OPTS=1), off (=0) "
                             "(default: default)")
    parser.add_argument("--recipe", default="practical",
                        help="training recipe whose optimizer is used (cfdrnn_keras.training.RECIPES; default: practical)")
    parser.add_argument("--worker", default=None, help="internal: run one configuration given as JSON and print JSON")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Worker: one configuration
# ------------------------------------------------------------------------------------------------
def synthetic_batch(config, batch_size: int, seed: int = 0):
    """Random crops, random points inside the middle of the crop, and the points' heat-maps."""
    import numpy as np

    from cfdrnn_keras.model.codec import encode_heatmaps_numpy

    rng = np.random.default_rng(seed)
    size = config.input_size
    images = rng.uniform(-0.5, 0.5, (batch_size, size, size, 3)).astype(np.float32)
    points_px = rng.uniform(0.2 * size, 0.8 * size, (batch_size, config.num_landmarks, 2)).astype(np.float32)
    heatmaps = encode_heatmaps_numpy(points_px, size, config.stride, config.heatmap_sigma)
    return images, {"heatmaps": heatmaps, "landmarks": points_px / size}


def run_worker(spec: dict) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from cfdrnn_keras import get_preset
    from cfdrnn_keras.training import build_trainer, get_recipe, set_precision

    batch = spec["batch_size"]
    set_precision(spec["precision"])
    overrides = {key: spec[key] for key in ("width", "input_size") if spec.get(key) is not None}
    config = get_preset(spec["preset"]).replace(fused_batchnorm=spec["batchnorm"] == "fused", **overrides)
    recipe = get_recipe(spec["recipe"]).replace(batch_size=batch)
    steps = 1 + spec["warmup_batches"] + spec["batches"]
    keras.utils.set_random_seed(0)
    trainer = build_trainer(config, recipe, steps_per_epoch=steps)
    images, targets = synthetic_batch(config, batch)
    if spec.get("input", "synthetic") == "synthetic":
        dataset = tf.data.Dataset.from_tensors((images, targets)).repeat()
    else:
        dataset = real_training_stream(spec["data"], spec["faces"], config, batch)

    class BatchClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = [time.perf_counter()]

        def on_train_batch_end(self, batch_index, logs=None):
            self.marks.append(time.perf_counter())

    clock = BatchClock()
    started = time.perf_counter()
    history = trainer.fit(dataset, steps_per_epoch=steps, epochs=1, callbacks=[clock], verbose=0, shuffle=False)
    fit_seconds = time.perf_counter() - started
    step_ms = [(b - a) * 1000.0 for a, b in zip(clock.marks, clock.marks[1:])]
    measured = step_ms[1 + spec["warmup_batches"]:]
    train_ms = statistics.median(measured) / batch

    network = trainer.network
    forward = tf.function(lambda x: network(x, training=False))
    x = tf.constant(images)
    for _ in range(2):
        forward(x)["landmarks"].numpy()
    forward_times = []
    for _ in range(spec["forward_runs"]):
        begin = time.perf_counter()
        forward(x)["landmarks"].numpy()
        forward_times.append((time.perf_counter() - begin) * 1000.0)
    forward_ms = statistics.median(forward_times) / batch
    loss = float(history.history["loss"][-1])
    return {
        **{key: spec[key] for key in ("preset", "precision", "batchnorm", "batch_size", "onednn")},
        "input": spec.get("input", "synthetic"),
        "width": config.width,
        "input_size": config.input_size,
        "onednn_enabled": onednn_enabled(),
        "train_ms_per_face": train_ms,
        "faces_per_second": 1000.0 / train_ms,
        "forward_ms_per_face": forward_ms,
        "train_to_forward": train_ms / forward_ms,
        "step_ms": step_ms,
        "first_batch_ms": step_ms[0],
        "measured_batches": len(measured),
        "fit_seconds": fit_seconds,
        "final_loss": loss if np.isfinite(loss) else None,
    }


def real_training_stream(roots, max_faces: int, config, batch_size: int):
    """The batches `tools/train.py` trains on: cached loose crops, default augmentation, endless."""
    from cfdrnn_keras.training import resumable_training_dataset
    from data_pipelines.augment import AugmentConfig
    from data_pipelines.discovery import load_split

    faces = list(load_split("train", roots).faces)
    if max_faces:
        faces = faces[:max_faces]
    if len(faces) < batch_size:
        raise ValueError(f"{len(faces)} training faces under {' '.join(roots)}: fewer than one batch of {batch_size}")
    return resumable_training_dataset(faces, config, batch_size=batch_size, augment_config=AugmentConfig(), seed=0)


# ------------------------------------------------------------------------------------------------
# Parent: every configuration, the table
# ------------------------------------------------------------------------------------------------
def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process (None where it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:
        return None


def onednn_environment(setting: str) -> dict:
    """The environment of a worker for a oneDNN setting (it must be fixed before TensorFlow starts)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if setting == "on":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    elif setting == "off":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return env


def run_configuration(spec: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=onednn_environment(spec["onednn"]))
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        return {**spec, "error": reason}


def markdown_table(rows: list) -> str:
    lines = [
        "| preset | precision | batch norm | oneDNN | batch | input | train ms/face | faces/s | forward ms/face "
        "| train / forward |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        onednn = {True: "on", False: "off", None: "?"}[row.get("onednn_enabled")] if "error" not in row else row["onednn"]
        head = (f"| {row['preset']} | {row['precision']} | {row['batchnorm']} | {onednn} | {row['batch_size']} "
                f"| {row.get('input', 'synthetic')} |")
        if "error" in row:
            lines.append(f"{head} failed: {row['error']} | | | |")
        else:
            lines.append(
                f"{head} {row['train_ms_per_face']:.0f} | {row['faces_per_second']:.2f} | "
                f"{row['forward_ms_per_face']:.0f} | {row['train_to_forward']:.1f} |"
            )
    return "\n".join(lines)


def _split(text: str, allowed=None, name="") -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if allowed is not None and item not in allowed]
    if bad or not items:
        raise ValueError(f"--{name}: unknown value(s) {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    return items


def _positive_integers(text: str, name: str) -> list:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{name}: every value must be at least 1, got {text!r}")
    return values


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    try:
        from cfdrnn_keras.config import PRESETS

        presets = _split(args.preset, sorted(PRESETS), "preset")
        precisions = _split(args.precision, ("bf16", "fp32"), "precision")
        batchnorms = _split(args.batchnorm, ("fused", "keras"), "batchnorm")
        onednn_settings = _split(args.onednn, ("default", "on", "off"), "onednn")
        batch_sizes = _positive_integers(args.batch_size, "batch-size")
        if args.batches < 1 or args.warmup_batches < 0 or args.forward_runs < 1:
            raise ValueError("--batches and --forward-runs must be positive, --warmup-batches >= 0")
        inputs = ["synthetic"]
        if args.data:
            missing = [root for root in args.data if not Path(root).is_dir()]
            if missing:
                raise ValueError(f"--data: no such folder: {', '.join(missing)}")
            if args.faces < 0:
                raise ValueError("--faces must be >= 0")
            inputs.append("real")
    except ValueError as error:
        print(f"benchmark_train: {error}", file=sys.stderr)
        return 2

    from cfdrnn_keras.machine import machine_info

    report = {
        "command": " ".join(["benchmark_train.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "goal": GOAL,
        "rows": [],
    }
    started = time.time()
    configurations = [(preset, precision, batchnorm, onednn, batch, source) for preset in presets
                      for precision in precisions for onednn in onednn_settings for batchnorm in batchnorms
                      for batch in batch_sizes for source in inputs]
    for preset, precision, batchnorm, onednn, batch, source in configurations:
        spec = {"preset": preset, "precision": precision, "batchnorm": batchnorm, "onednn": onednn,
                "batch_size": batch, "batches": args.batches, "warmup_batches": args.warmup_batches,
                "forward_runs": args.forward_runs, "recipe": args.recipe, "width": args.width,
                "input_size": args.input_size, "input": source}
        if source == "real":
            spec.update(data=[str(Path(root).resolve()) for root in args.data], faces=args.faces)
        print(f"{preset} {precision} {batchnorm} batch norm, oneDNN {onednn}, batch {batch}, {source} input ...",
              file=sys.stderr, flush=True)
        row = run_configuration(spec)
        report["rows"].append(row)
        summary = row.get("error") or f"{row['train_ms_per_face']:.0f} ms/face, {row['faces_per_second']:.2f} faces/s"
        print(f"  {summary}", file=sys.stderr, flush=True)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started, 1)
    goal_rows = sorted((r for r in report["rows"] if "error" not in r and r["preset"] == GOAL["preset"]
                        and r["precision"] == GOAL["precision"] and r["batchnorm"] == "fused"
                        and args.width is None and args.input_size is None),
                       key=lambda r: -r["faces_per_second"])
    if goal_rows:
        report["goal_met"] = goal_rows[0]["faces_per_second"] >= GOAL["faces_per_second"]
    Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report["rows"]))
    if goal_rows:
        verdict = "met" if report["goal_met"] else "NOT met"
        print(f"\nGoal (issue 8): paper bf16 >= {GOAL['faces_per_second']} faces/s: {verdict} "
              f"({goal_rows[0]['faces_per_second']:.2f} faces/s)")
    print(f"load average (1/5/15 min) at start {report['machine']['load_average_start']}, "
          f"at end {report['machine']['load_average_end']}; wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
