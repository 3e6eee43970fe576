"""Print a CFDRNN network's blocks with output shapes, parameters and GFLOPs per face.

    python tools/model_summary.py --preset paper
    python tools/model_summary.py --model path/to/model.keras --json summary.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="paper", help="network preset to build (default: paper)")
    source.add_argument("--model", help="a saved .keras model to summarise instead of a preset")
    parser.add_argument("--width", type=float, default=None, help="override the preset's width multiplier")
    parser.add_argument("--json", dest="json_path", help="also write the table as JSON to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras

    import cfdrnn_keras
    from cfdrnn_keras.model.model_stats import model_stats

    try:
        if args.model:
            model = keras.saving.load_model(args.model, safe_mode=True)
            label = args.model
        else:
            config = cfdrnn_keras.get_preset(args.preset)
            if args.width is not None:
                config = config.replace(width=args.width)
            model = cfdrnn_keras.build_cfdrnn(config)
            label = f"preset {args.preset} ({config.to_json()})"
    except (ValueError, OSError) as error:
        print(f"model_summary: {error}", file=sys.stderr)
        return 2

    rows = model_stats(model)
    total_params = sum(r.params for r in rows)
    total_gflops = sum(r.flops for r in rows) / 1e9
    print(f"CFDRNN summary: {label}\n")
    print(f"| {'block':<12} | {'output shape(s)':<38} | {'params':>12} | {'GFLOPs/face':>11} |")
    print(f"|{'-' * 14}|{'-' * 40}|{'-' * 14}|{'-' * 13}|")
    for r in rows:
        shapes = ", ".join("×".join(str(d) for d in s) for s in r.output_shapes)
        print(f"| {r.name:<12} | {shapes:<38} | {r.params:>12,} | {r.flops / 1e9:>11.3f} |")
    print(f"| {'total':<12} | {'':<38} | {total_params:>12,} | {total_gflops:>11.3f} |")
    print(f"\n{total_params / 1e6:.2f} M parameters, {total_gflops:.1f} GFLOPs per face (multiply-add = 2)")
    if args.json_path:
        payload = {
            "model": label,
            "params": total_params,
            "gflops": total_gflops,
            "blocks": [
                {"name": r.name, "params": r.params, "gflops": r.flops / 1e9, "output_shapes": r.output_shapes}
                for r in rows
            ],
        }
        with open(args.json_path, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
