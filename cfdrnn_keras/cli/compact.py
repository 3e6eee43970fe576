"""Store a `.keras` file's convolution kernels as float16, half its size (`cfdrnn_keras.model.storage`):

    python tools/compact_model.py runs/a/best.keras --out cfdrnn_keras/assets/cfdrnn_a.keras

How the packaged networks are stored (docs/MODEL_CARD.md). Loading needs nothing new: the file is a
`.keras` archive and loads into a float32 network with `safe_mode=True`. Prints how far the points move.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the .keras file")
    parser.add_argument("--out", required=True, help="the .keras file to write (not the input)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    source, target = Path(args.model), Path(args.out)
    if not source.is_file() or source.suffix.lower() != ".keras":
        print(f"compact: {source}: not a .keras file", file=sys.stderr)
        return 2
    if target.suffix.lower() != ".keras" or not target.parent.is_dir():
        print(f"compact: {target}: must be a .keras path in an existing folder", file=sys.stderr)
        return 2
    if target.exists() and target.resolve() == source.resolve():
        print(f"compact: {target}: is the input; write to another path", file=sys.stderr)
        return 2
    from ..model.storage import store_kernels_float16
    from ..training.callbacks import RunFileError

    try:
        halved = store_kernels_float16(source, target)
    except (ValueError, RunFileError) as error:
        print(f"compact: {error}", file=sys.stderr)
        return 2
    moved = _largest_move(source, target)
    print(f"{target}: {halved:,} kernel values stored as float16, {source.stat().st_size / 1e6:.1f} → "
          f"{target.stat().st_size / 1e6:.1f} MB; landmarks moved at most {moved:.4f} crop px on 8 random crops")
    return 0


def _largest_move(source: Path, target: Path) -> float:
    """The largest change of any landmark (crop pixels) between the two files, on random crops."""
    import numpy as np

    from ..quiet import native_stderr_silenced

    with native_stderr_silenced():
        import keras

        import cfdrnn_keras.model  # noqa: F401  (registers the layers)
    before, after = (keras.saving.load_model(str(p), safe_mode=True) for p in (source, target))
    size = int(before.inputs[0].shape[1])
    crops = np.random.default_rng(0).uniform(-0.5, 0.5, (8, size, size, 3)).astype(np.float32)
    a, b = (m.predict(crops, verbose=0)["landmarks"] for m in (before, after))
    return float(np.abs(a - b).max() * size)


if __name__ == "__main__":
    sys.exit(main())
