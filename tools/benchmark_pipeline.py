"""How fast the input pipeline makes augmented training examples (it must outrun the network).

    python tools/benchmark_pipeline.py --data ../shared/data/300w --json pipeline.json
    python tools/benchmark_pipeline.py --data ../shared/data/300w --source tfrecords --tfrecords records/

Builds the training dataset exactly as training does (augmentation + heat-map targets), pulls a few
warm-up batches, then times several runs of --steps batches and reports the median examples per
second, plus the process CPU seconds per example (less sensitive to other work on the machine: with
C cores the pipeline alone could make at most C / cpu_s_per_example examples per second). The load
average before and after is recorded, since the machine is shared. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["../shared/data/300w"], metavar="DIR",
                        help="folders with image + .pts pairs (default: ../shared/data/300w)")
    parser.add_argument("--split", default="all", help="300-W split or part to use, or 'all' (default: all)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N faces (default: all)")
    parser.add_argument("--source", choices=("memory", "stream", "tfrecords"), default="memory",
                        help="memory: decode once, cached loose crops (training default); stream: decode every "
                             "epoch (cache=False); tfrecords: read --tfrecords (default: memory)")
    parser.add_argument("--tfrecords", default=None, metavar="DIR",
                        help="TFRecord folder for --source tfrecords (default: none)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per batch (default: 8)")
    parser.add_argument("--steps", type=int, default=50, help="batches per timed run (default: 50)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=10, help="batches pulled before timing (default: 10)")
    parser.add_argument("--no-augment", action="store_true", help="time without augmentation (default: augment)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle/augmentation seed (default: 0)")
    parser.add_argument("--json", dest="json_path", default="pipeline_benchmark.json", metavar="OUT.json",
                        help="where to write the results (default: pipeline_benchmark.json)")
    return parser.parse_args(argv)


def build_dataset(args):
    """(dataset, faces used, seconds to build, problems)."""
    from data_pipelines.augment import AugmentConfig

    augment = AugmentConfig.none() if args.no_augment else AugmentConfig()
    options = dict(training=True, batch_size=args.batch_size, augment_config=augment, seed=args.seed, repeat=True)
    problems: list = []
    started = time.perf_counter()
    if args.source == "tfrecords":
        from data_pipelines.tfrecords import make_tfrecord_dataset, read_metadata

        if not args.tfrecords:
            raise ValueError("--source tfrecords needs --tfrecords DIR")
        dataset = make_tfrecord_dataset(args.tfrecords, **options)
        count = read_metadata(args.tfrecords).get("faces")
    else:
        from data_pipelines.dataset import make_dataset
        from data_pipelines.discovery import load_split

        report = load_split(args.split, args.data)
        faces = report.faces[: args.limit] if args.limit else report.faces
        if not faces:
            raise ValueError(f"no faces found in {', '.join(args.data)} ({report.summary()})")
        dataset = make_dataset(faces, cache=args.source == "memory", problems=problems, **options)
        count = len(faces) - len(problems)
    return dataset, count, time.perf_counter() - started, problems


def main(argv=None) -> int:
    args = parse_args(argv)
    for folder in ([] if args.source == "tfrecords" else args.data) + ([args.tfrecords] if args.tfrecords else []):
        if not Path(folder).exists():
            print(f"error: {folder}: not found", file=sys.stderr)
            return 2
    import logging

    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    import tensorflow  # noqa: F401  (imported before the clock starts: not part of the build time)

    import cfdrnn_keras  # noqa: F401

    load_before = os.getloadavg()
    try:
        dataset, count, build_seconds, problems = build_dataset(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    rates, cpu_per_example = [], []
    for _ in range(args.runs):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            images, _ = next(iterator)
        _ = images.numpy()  # make sure the last batch is really done
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        examples = args.steps * args.batch_size
        rates.append(examples / wall)
        cpu_per_example.append(cpu / examples)
    load_after = os.getloadavg()

    result = {
        "source": args.source,
        "faces": count,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "runs": args.runs,
        "augment": not args.no_augment,
        "build_seconds": round(build_seconds, 2),
        "examples_per_second_median": round(statistics.median(rates), 1),
        "examples_per_second_runs": [round(rate, 1) for rate in rates],
        "cpu_seconds_per_example_median": round(statistics.median(cpu_per_example), 5),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
        "skipped_faces": len(problems),
        "machine": platform.machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    rows = [
        ("source", result["source"]),
        ("faces", result["faces"]),
        ("build (find, decode, crop cache)", f"{result['build_seconds']} s"),
        ("batch size × steps × runs", f"{args.batch_size} × {args.steps} × {args.runs}"),
        ("examples/s, median", result["examples_per_second_median"]),
        ("examples/s, runs", ", ".join(str(rate) for rate in result["examples_per_second_runs"])),
        ("CPU s per example, median", result["cpu_seconds_per_example_median"]),
        (f"load average (1, 5, 15 min) before/after, {os.cpu_count()} cores",
         f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} / "
         f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
