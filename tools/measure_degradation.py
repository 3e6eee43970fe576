"""How much do blur and JPEG compression cost a model? The NME of its held-out validation faces (the
split `tools/train.py` makes: seed 0, 10 %), clean and degraded, crop by crop (issue 14's blur-and-JPEG
ablation, `--augment degrade`).

    python tools/measure_degradation.py --model accurate
    python tools/measure_degradation.py --model runs/abl-aug-degrade/best.keras --json degraded.json

Each crop (the model's input size, boxes from the 68 ground-truth points) is degraded as a photo
would be: a Gaussian blur of σ 1 and 2 crop pixels (OpenCV), JPEG at quality 30 and 10 (OpenCV's
libjpeg), and both (σ 1, then quality 30). Degradations are applied to the crop the model sees, so
the figures are comparable between models of one input size. Runs the packaged LiteRT files with the
plain install; `--model` takes what `LandmarkDetector` takes.
"""
from __future__ import annotations

import argparse
import json
import sys

from _validation import add_split_arguments, crop_nme, validation_crops  # noqa: I001  (tools/ leaves the path in _front)
import _front  # noqa: F401  (puts the checkout, not tools/, on the import path)

DEGRADATIONS = ("clean", "blur σ1", "blur σ2", "jpeg q30", "jpeg q10", "blur σ1 + jpeg q30")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures here (default: none)")
    return parser.parse_args(argv)


def degrade(crops, name: str):
    """The crops (N, S, S, 3) uint8 RGB after the named degradation."""
    import cv2
    import numpy as np

    out = crops.copy()
    for step in name.split(" + "):
        kind, level = step.split(" ")
        for index, crop in enumerate(out):
            if kind == "blur":
                sigma = float(level[1:])
                out[index] = cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
            elif kind == "jpeg":
                _, data = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(level[1:])])
                out[index] = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    from cfdrnn_keras import quiet

    quiet.quiet_mode()
    detector, faces, crops, truth, scales, iods = validation_crops(args)
    results = {}
    for name in DEGRADATIONS:
        prediction = detector.predict_crops(crops if name == "clean" else degrade(crops, name))
        results[name] = crop_nme(prediction, truth, scales, iods, detector.input_size)
    print(f"{detector.model_name}, {len(faces)} validation faces, inter-ocular NME (%)")
    print(" | ".join(DEGRADATIONS))
    print(" | ".join(f"{results[name]:.3f}" for name in DEGRADATIONS))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": detector.model_name, "faces": len(faces), "nme_io": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
