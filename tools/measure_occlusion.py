"""Does a model's uncertainty rise where points are covered? Issue 17's two occlusion checks, on a
model's held-out validation faces (the split `tools/train.py` makes: seed 0, 10 %):

- a grey patch over the mouth (the annotated mouth box + 10 crop px): the mouth points' mean
  uncertainty before and after, per face;
- the image border: the crop shifted so the left third of the 68-point box lies outside the photo
  (same box, so the same crop geometry): the cut-off points' mean uncertainty before and after.

    python tools/measure_occlusion.py --model accurate
    python tools/measure_occlusion.py --model fast --data ../shared/data/300w

Prints the NME with and without the mouth patch (all points and the mouth's: how well a model places
covered points), then, for each check, the faces whose uncertainty rose and the median and least ratio. Runs the
packaged LiteRT files with the plain install; `--model` takes what `LandmarkDetector` takes.
"""
from __future__ import annotations

import argparse
import statistics
import sys

from _validation import add_split_arguments, crop_nme, validation_crops  # noqa: I001  (tools/ leaves the path in _front)
import _front  # noqa: F401  (puts the checkout, not tools/, on the import path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    return parser.parse_args(argv)


def summary(name: str, ratios: list) -> str:
    raised = sum(r > 1 for r in ratios)
    return (f"{name}: raised on {raised}/{len(ratios)} faces, median ×{statistics.median(ratios):.1f}, "
            f"least ×{min(ratios):.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from cfdrnn_keras import quiet

    quiet.quiet_mode()
    import numpy as np

    from data_pipelines.geometry import face_box_from_points
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    detector, faces, crops, truth, scales, iods = validation_crops(args)
    size = detector.input_size
    covered = crops.copy()
    for crop, points in zip(covered, truth):
        x0, y0 = np.floor(points[48:].min(0) - 10).astype(int)
        x1, y1 = np.ceil(points[48:].max(0) + 10).astype(int)
        crop[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = 128
    plain, patched = detector.predict_crops(crops), detector.predict_crops(covered)

    def nme(prediction, points=slice(None)):  # inter-ocular NME in %, over the given points
        return crop_nme(prediction, truth, scales, iods, size, points)

    print(f"{detector.model_name}, {len(faces)} validation faces")
    print(f"NME without / with the grey patch over the mouth: all points {nme(plain):.2f} / {nme(patched):.2f} %, "
          f"mouth points {nme(plain, slice(48, 68)):.2f} / {nme(patched, slice(48, 68)):.2f} %")
    before = plain.uncertainty
    if before is None:
        print(f"measure_occlusion: {detector.model_name}: the model has no uncertainty output (no calibration); "
              "the uncertainty checks are skipped", file=sys.stderr)
        return 0
    after = patched.uncertainty
    mouth = list(after[:, 48:].mean(1) / before[:, 48:].mean(1))

    border = []
    for face in faces:
        image, points = read_image(face.image_path), read_pts(face.pts_path)
        box = face_box_from_points(points)
        cut = int(round(box[0] + (box[2] - box[0]) / 3))
        outside = points[:, 0] < cut
        if cut <= 2 or outside.sum() < 3:
            continue
        whole = detector.detect(image, boxes=[box])[0]
        part = detector.detect(image[:, cut:], boxes=[(box[0] - cut, box[1], box[2] - cut, box[3])])[0]
        border.append(part.uncertainty[outside].mean() / whole.uncertainty[outside].mean())

    print(summary("grey patch over the mouth, mouth points", mouth))
    print(summary("left third of the face outside the photo, cut-off points", border))
    return 0


if __name__ == "__main__":
    sys.exit(main())
