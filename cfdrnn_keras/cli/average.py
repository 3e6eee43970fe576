"""Average trained CFDRNN networks into one `.keras` graph (`cfdrnn_keras.model.network_average`):

    python tools/average_networks.py runs/a/best.keras runs/b/best.keras --out runs/average.keras

The file runs wherever one network runs (`--model runs/average.keras` in every tool, export to
SavedModel and LiteRT); fit its uncertainty again with `tools/fit_uncertainty.py --model FILE`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", help=".keras networks (or packaged names) to average, two or more")
    parser.add_argument("--out", required=True, help="the .keras file to write")
    parser.add_argument("--name", default="cfdrnn_average", help="the model's name (default: cfdrnn_average)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..runtime.packaged import network_files

    paths = [path for spec in args.members for path in network_files(spec)]  # a packaged model brings all its networks
    out = Path(args.out)
    for path in paths:
        if not path.is_file() or path.suffix.lower() != ".keras":
            print(f"average: {path}: not a .keras file", file=sys.stderr)
            return 2
    if out.suffix.lower() != ".keras":
        print(f"average: {out}: the output must end in .keras", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"average: {out.parent}: no such folder", file=sys.stderr)
        return 2
    from ..quiet import native_stderr_silenced

    with native_stderr_silenced():
        import keras

        import cfdrnn_keras.model  # noqa: F401  (registers the layers)
    from ..model.network_average import average_networks
    from ..training.callbacks import RunFileError, model_bytes, write_bytes_atomically

    try:
        networks = [keras.saving.load_model(str(path), safe_mode=True) for path in paths]
        model = average_networks(networks, name=args.name)
        write_bytes_atomically(str(out), model_bytes(model), "averaged model")  # never half-written
    except (ValueError, OSError, RunFileError) as error:
        print(f"average: {error}", file=sys.stderr)
        return 2
    print(f"{out}: {len(networks)} networks averaged, {model.count_params():,} parameters, "
          f"{out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
