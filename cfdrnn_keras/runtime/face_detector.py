"""Find faces in a photo and return boxes in the 68-point-box convention that crops are cut from.

The default detector is MediaPipe's BlazeFace "full range" model (`face_detection_full_range_sparse.tflite`,
Apache-2.0, 0.68 MB, copied unchanged from the `mediapipe==0.10.21` wheel on PyPI into
`cfdrnn_keras/assets/`), run by the LiteRT interpreter that the project already depends on for its
own TFLite files: nothing is downloaded at run time and no new package is needed. It found all 15
annotated faces of the shared sample photos at 4–8 ms per photo (quiet 2-core machine, one pass); docs/INFERENCE.md compares it with
dlib (HOG, CNN) and YuNet and explains the choice.

Why the boxes are re-mapped: every detector draws its own kind of box (BlazeFace's is a square from
the forehead to the chin, while the 68 points start at the brows), while the landmark network was trained on crops cut around the TIGHT box of
the 68 annotated points (`data_pipelines.geometry.face_box_from_points`). `BoxCalibration` moves and
scales the detector's box to that convention with four constants fitted on the shared 300-W faces
(`python tools/compare_face_detectors.py --calibrate`), so a detected face is cropped like a training face.

Small faces: the model sees the photo letterboxed to 192×192, which loses faces narrower than about
6 % of the photo's longer side. With `zoom=2` (the default) photos whose half-side is at least
`min_tile` pixels are also searched in overlapping half-size windows, which halves that limit at a
cost of about six more 4-ms model runs on a 1080p frame.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .packaged import ASSETS

BLAZEFACE_MODEL = ASSETS / "face_detection_full_range_sparse.tflite"


class DetectorUnavailableError(RuntimeError):
    """The face detector cannot run here (a package or the model file is missing); one-line message."""


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1[, ...]) boxes; 0 when they do not overlap."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class BoxCalibration:
    """Linear map from a detector's box to the tight 68-point box.

    centre_x' = centre_x + dx·w,  centre_y' = centre_y + dy·h,  w' = sx·w,  h' = sy·h,
    with (w, h) the detector box's size. The identity is (0, 0, 1, 1).
    """

    dx: float = 0.0
    dy: float = 0.0
    sx: float = 1.0
    sy: float = 1.0

    def apply(self, box) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h
        half_w, half_h = self.sx * w / 2, self.sy * h / 2
        return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)

    @classmethod
    def fit(cls, detector_boxes, point_boxes) -> "BoxCalibration":
        """Medians of the per-face offsets and size ratios (robust to the odd loose detection).

        The two size ratios are then scaled together so that the median of max(w', h') / max(w, h)
        of the 68-point box is 1: the crop's side comes from the longer side (`crop_matrix`), so that
        is the size that must be unbiased.
        """
        d = np.asarray(detector_boxes, dtype=np.float64)[:, :4]
        g = np.asarray(point_boxes, dtype=np.float64)[:, :4]
        if len(d) == 0 or d.shape != g.shape:
            raise ValueError("BoxCalibration.fit needs the same positive number of detector and 68-point boxes")
        w, h = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
        dx = float(np.median(((g[:, 0] + g[:, 2]) - (d[:, 0] + d[:, 2])) / 2 / w))
        dy = float(np.median(((g[:, 1] + g[:, 3]) - (d[:, 1] + d[:, 3])) / 2 / h))
        sx = float(np.median((g[:, 2] - g[:, 0]) / w))
        sy = float(np.median((g[:, 3] - g[:, 1]) / h))
        side_ratio = np.median(np.maximum(sx * w, sy * h) / np.maximum(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]))
        sx, sy = sx / side_ratio, sy / side_ratio
        return cls(*(round(float(v), 4) for v in (dx, dy, sx, sy)))


# Fitted by `python tools/compare_face_detectors.py --calibrate` on the 2014 shared 300-W faces and the
# 15 sample photos (docs/INFERENCE.md): BlazeFace's box sits a little high and is taller than the
# 68-point box (which starts at the brows, not the forehead).
BLAZEFACE_CALIBRATION = BoxCalibration(dx=0.0049, dy=0.099, sx=0.9049, sy=0.8887)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple]:
    """MediaPipe's blending suppression: each kept box is the score-weighted mean of its cluster.

    Averaging overlapping anchors (instead of keeping only the best one) gives steadier boxes from one
    video frame to the next.
    """
    order = list(np.argsort(-scores))
    used = np.zeros(len(scores), dtype=bool)
    kept = []
    for i in order:
        if used[i]:
            continue
        cluster = [j for j in order if not used[j] and iou(boxes[i], boxes[j]) > iou_threshold]
        used[cluster] = True
        weights = scores[cluster]
        box = (boxes[cluster] * weights[:, None]).sum(axis=0) / weights.sum()
        kept.append((*(float(v) for v in box), float(scores[i])))
    return kept


class BlazeFace:
    """The raw BlazeFace full-range model: one square window of a photo → boxes in the photo's pixels."""

    INPUT_SIZE = 192
    GRID = 48  # one anchor per cell of a 48×48 grid (stride 4), fixed anchor size 1

    def __init__(self, model_path=BLAZEFACE_MODEL, num_threads: int | None = None):
        from .backends import ModelLoadError, make_interpreter

        model_path = Path(model_path)
        if not model_path.is_file():
            raise DetectorUnavailableError(
                f"{model_path}: face-detector model missing (reinstall cfdrnn-keras, or pass boxes= yourself)")
        try:
            self._interpreter = make_interpreter(model_path, num_threads)
        except ModelLoadError as error:
            raise DetectorUnavailableError(f"the face detector: {error}") from None
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        outputs = self._interpreter.get_output_details()
        self._regressors = next(o["index"] for o in outputs if o["shape"][-1] == 16)
        self._classifiers = next(o["index"] for o in outputs if o["shape"][-1] == 1)
        ys, xs = np.mgrid[0:self.GRID, 0:self.GRID]
        self._anchors = np.stack([(xs.ravel() + 0.5) / self.GRID, (ys.ravel() + 0.5) / self.GRID], axis=1)
        self._lock = threading.Lock()  # one interpreter, callers in several threads (evaluation does that)

    def __call__(self, image_rgb: np.ndarray, x0: int, y0: int, side: int,
                 score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (K, 4) in PHOTO pixels and scores (K,), before suppression, for the square window
        of `side` px at (x0, y0) (it may reach past the photo: that part is black, as in a letterbox)."""
        import cv2

        size = self.INPUT_SIZE
        height, width = image_rgb.shape[:2]
        # Only the part of the window inside the photo is resized, then pasted into the black input:
        # no side×side array for a letterboxed 10000×10 photo.
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)
        k = size / side
        px, py = int(round((sx0 - x0) * k)), int(round((sy0 - y0) * k))
        w2 = min(size - px, max(1, int(round((sx1 - sx0) * k))))
        h2 = min(size - py, max(1, int(round((sy1 - sy0) * k))))
        region = image_rgb[sy0:sy1, sx0:sx1]
        interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        model_input = np.zeros((size, size, 3), np.float32)
        model_input[py:py + h2, px:px + w2] = cv2.resize(region, (w2, h2), interpolation=interpolation)
        model_input = model_input * (1.0 / 127.5) - 1.0
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], model_input[None])
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._regressors)[0].astype(np.float64)
            logits = self._interpreter.get_tensor(self._classifiers)[0, :, 0].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
        keep = np.flatnonzero(scores >= score_threshold)
        centre = (raw[keep, :2] / size + self._anchors[keep]) * size  # model-input pixel edges
        half = raw[keep, 2:4] / 2
        edges = np.concatenate([centre - half, centre + half], axis=1)
        # Model edge coordinate e ↔ photo edge coordinate (e - paste offset)·(region / resized) + region
        # start; photo pixel centres are edges - 0.5 (the project's convention).
        fx, fy = (sx1 - sx0) / w2, (sy1 - sy0) / h2
        boxes = (edges - [px, py, px, py]) * [fx, fy, fx, fy] + [sx0, sy0, sx0, sy0] - 0.5
        return boxes, scores[keep]


class FaceDetector:
    """Every face in an RGB photo as (x0, y0, x1, y1, score), best first, in the 68-point-box convention.

    zoom: 1 searches the whole photo once (fastest, for video of near faces); 2 also searches
    overlapping windows of half the photo's longer side where that half is ≥ `min_tile` pixels.
    calibrate: False returns the detector's own boxes (for refitting the calibration).
    """

    def __init__(self, score_threshold: float = 0.5, iou_threshold: float = 0.3, zoom: int = 2,
                 min_tile: int = 480, num_threads: int | None = None, calibrate: bool = True,
                 model_path=BLAZEFACE_MODEL):
        if zoom not in (1, 2):
            raise ValueError(f"zoom must be 1 or 2, got {zoom}")
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.zoom = zoom
        self.min_tile = int(min_tile)
        self.calibration = BLAZEFACE_CALIBRATION if calibrate else BoxCalibration()
        self._model = BlazeFace(model_path, num_threads=num_threads)

    def __call__(self, image_rgb: np.ndarray) -> list[tuple]:
        return self.detect(image_rgb)

    def detect(self, image_rgb: np.ndarray) -> list[tuple]:
        image = np.asarray(image_rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"FaceDetector.detect needs an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        all_boxes, all_scores = [], []
        for x0, y0, side, is_tile in self._windows(width, height):
            boxes, scores = self._model(image, x0, y0, side, self.score_threshold)
            if is_tile and len(boxes):
                keep = _inside_tile(boxes - [x0, y0, x0, y0], x0, y0, side, width, height)
                boxes, scores = boxes[keep], scores[keep]
            all_boxes.append(boxes)
            all_scores.append(scores)
        boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4))
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0,))
        faces = [(*self.calibration.apply(b), s) for *b, s in weighted_nms(boxes, scores, self.iou_threshold)]
        return sorted(faces, key=lambda face: -face[4])

    def _windows(self, width: int, height: int):
        """(x0, y0, side, is_tile): the whole photo as one centred square, then half-size tiles."""
        longest = max(width, height)
        yield ((width - longest) // 2, (height - longest) // 2, longest, False)
        side = math.ceil(longest / 2)
        if self.zoom < 2 or side < self.min_tile:
            return
        for y0 in _tile_starts(height, side):
            for x0 in _tile_starts(width, side):
                yield (x0, y0, side, True)


def _tile_starts(length: int, side: int) -> list[int]:
    """Window starts covering [0, length) with half-window overlap (one centred window if it fits)."""
    if length <= side:
        return [(length - side) // 2]
    count = math.ceil((length - side) / (side / 2)) + 1
    return [int(round(v)) for v in np.linspace(0, length - side, count)]


def _inside_tile(boxes: np.ndarray, x0: int, y0: int, side: int, width: int, height: int) -> np.ndarray:
    """Tile detections that are small and not cut by an inner tile edge (big faces come from the whole photo)."""
    margin = 0.02 * side
    lo_x = boxes[:, 0] > margin if x0 > 0 else np.ones(len(boxes), bool)
    lo_y = boxes[:, 1] > margin if y0 > 0 else np.ones(len(boxes), bool)
    hi_x = boxes[:, 2] < side - margin if x0 + side < width else np.ones(len(boxes), bool)
    hi_y = boxes[:, 3] < side - margin if y0 + side < height else np.ones(len(boxes), bool)
    small = (boxes[:, 2] - boxes[:, 0]) < 0.5 * side
    return lo_x & lo_y & hi_x & hi_y & small


_DEFAULT: FaceDetector | None = None


def default_detector() -> FaceDetector:
    """One shared FaceDetector with the default settings (the model loads once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FaceDetector()
    return _DEFAULT


__all__ = ["BLAZEFACE_CALIBRATION", "BlazeFace", "BoxCalibration", "DetectorUnavailableError", "FaceDetector",
           "default_detector", "iou", "weighted_nms"]
