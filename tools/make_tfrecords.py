"""Write annotated faces as sharded TFRecords of loose face crops (see data_pipelines/tfrecords.py).

    python tools/make_tfrecords.py --data ../shared/data/300w --out records/train --shards 8
    python tools/make_tfrecords.py --data ../300W --split full --out records/full --shards 4 --encoding raw

Each face is read once, cut to the training pipeline's loose crop (1.5 x the final crop, same pixel
density) and written with its points, its photo-to-crop matrix and its source file names. Faces that
cannot be read are reported on one line each and skipped. Train from the result with
`data_pipelines.tfrecords.make_tfrecord_dataset(OUT, training=True, ...)` (or tools/train.py --tfrecords).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["../shared/data/300w"], metavar="DIR",
                        help="folders searched for image + .pts pairs (default: ../shared/data/300w)")
    parser.add_argument("--split", default="all",
                        help="which faces: a 300-W split (train, common, challenging, full, private), a part "
                             "(e.g. ibug) or 'all' = every face found (default: all)")
    parser.add_argument("--out", default="tfrecords", metavar="DIR", help="output folder (default: tfrecords)")
    parser.add_argument("--shards", type=int, default=8,
                        help="number of files; at least the number of workers that will read them (default: 8)")
    parser.add_argument("--input-size", type=int, default=256, help="side of the network's crop (default: 256)")
    parser.add_argument("--margin", type=float, default=1.25,
                        help="crop side = margin x the longer side of the 68-point box (default: 1.25)")
    parser.add_argument("--loose-factor", type=float, default=1.5,
                        help="stored crop side relative to the final crop, room for augmentation (default: 1.5)")
    parser.add_argument("--encoding", choices=("png", "jpeg", "raw"), default="png",
                        help="png: lossless, ~half of raw; jpeg: smallest (quality 95); raw: fastest to read "
                             "(default: png)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N faces (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="threads decoding photos (default: CPU count)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.shards < 1:
        print("error: --shards must be at least 1", file=sys.stderr)
        return 2
    for folder in args.data:
        if not Path(folder).exists():
            print(f"error: {folder}: data folder not found", file=sys.stderr)
            return 2
    import logging

    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    from data_pipelines.discovery import load_split
    from data_pipelines.tfrecords import write_tfrecords

    try:
        report = load_split(args.split, args.data)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    faces = report.faces[: args.limit] if args.limit else report.faces
    if not faces:
        print("error: no faces to write", file=sys.stderr)
        return 1
    started = time.perf_counter()
    problems = []
    paths = write_tfrecords(faces, args.out, shards=args.shards, output_size=args.input_size, margin=args.margin,
                            loose_factor=args.loose_factor, encoding=args.encoding, workers=args.workers,
                            problems=problems)
    elapsed = time.perf_counter() - started
    size = sum(path.stat().st_size for path in paths)
    written = len(faces) - len(problems)
    print(f"wrote {written} faces to {len(paths)} shards in {args.out} ({size / 2**20:.1f} MiB, {elapsed:.1f} s)"
          + (f"; skipped {len(problems)}" if problems else ""))
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
