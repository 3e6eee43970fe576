"""Photo in, 68 landmarks per face out: `LandmarkDetector`.

Each face (found by `cfdrnn_keras.runtime.face_detector`, or given as a box in the 68-point-box
convention) is cut out exactly as training faces are — `crop_matrix(box, S, margin=1.25)`, i.e. the
box made square, enlarged 1.25× and warped to S×S — the crops go through the network in batches, and
the points come back through the inverse crop matrix into the ORIGINAL photo's pixel coordinates
(0-based pixel centres, the convention of the whole project).

By default the packaged model runs on LiteRT (`cfdrnn_keras.runtime.packaged`): no TensorFlow, no
Keras. Any backend (`cfdrnn_keras.runtime.backends`) can be passed instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.geometry import crop_matrix, invert, transform_points, warp_to_crop
from data_pipelines.images import ImageReadError, read_image

from ..conventions import CROP_MARGIN, NUM_LANDMARKS
from .backends import CropPrediction, ModelLoadError, TFLiteBackend, as_crop_prediction, default_threads, load_backend

COLOR_ORDERS = ("rgb", "bgr")


@dataclass
class FaceLandmarks:
    """One face: its box (x0, y0, x1, y1, 68-point-box convention), 68 (x, y) points and a confidence
    per point, all in the original photo's pixels; `score` is the face detector's (None for given boxes).

    uncertainty: (68,) each point's expected error in the ORIGINAL PHOTO's pixels (calibrated on
        held-out faces: over many points, the mean error of points given u is u; docs/INFERENCE.md);
        None for a model exported without it.
    face_score: in [0, 1], whether the crop holds a face the model can align (low for a box on the
        background or a false detection); None for a model without it.
    confidence: the final heat-map's peak per point, averaged over the ensemble (uncalibrated; kept
        for compatibility — `uncertainty` is the number to act on).
    """

    box: tuple
    points: np.ndarray
    confidence: np.ndarray
    score: float | None = None
    extra: dict = field(default_factory=dict)
    uncertainty: np.ndarray | None = None
    face_score: float | None = None

    def to_dict(self, decimals: int = 2) -> dict:
        """JSON-ready: lists of rounded floats."""
        result = {
            "box": [round(float(v), decimals) for v in self.box],
            "points": np.round(self.points.astype(np.float64), decimals).tolist(),
            "confidence": np.round(self.confidence.astype(np.float64), 4).tolist(),
        }
        if self.score is not None:
            result["score"] = round(float(self.score), 4)
        if self.uncertainty is not None:
            result["uncertainty"] = np.round(np.asarray(self.uncertainty, np.float64), decimals).tolist()
        if self.face_score is not None:
            result["face_score"] = round(float(self.face_score), 4)
        result.update(self.extra)
        return result


def as_rgb_uint8(image, color: str = "rgb") -> np.ndarray:
    """H×W×3 uint8 RGB from an array that is RGB (or BGR, with color="bgr"), grayscale (H×W or
    H×W×1), RGBA or BGRA."""
    if color not in COLOR_ORDERS:
        raise ValueError(f"color must be 'rgb' or 'bgr' (OpenCV's cv2.imread order), got {color!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype} (pass a file path, or read it with "
                         "data_pipelines.images.read_image)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if color == "bgr" else image)


class LandmarkDetector:
    """68 landmarks for every face in a photo.

    model: None (the default packaged model, on LiteRT), a packaged model's name (`"fast"`; `"fast:keras"`
        for its float Keras network), a path (.tflite, .keras, SavedModel directory), a keras.Model,
        or any object with `predict_crops` (`cfdrnn_keras.runtime.backends`).
    detector: None (the default BlazeFace `FaceDetector`, loaded on first use), an object with
        `detect(image) -> [(x0, y0, x1, y1[, score])]`, or such a callable.
    ensemble: for a Keras model, `cfdrnn_keras.ensemble_options.EnsembleOptions` (None: the flip test
        and the four-stage average; `PLAIN`, the paper's last stage alone, runs twice as fast).
        LiteRT files and SavedModels run the ensemble they were exported with.
    threads: LiteRT threads for the landmark network and the face detector (None: all cores).
    trust_model: run a SavedModel folder without checking its graph. A SavedModel is a program; by
        default one holding any op this project's exports do not use (file I/O, py_func...) is
        refused, naming the op (`ModelLoadError`). `.keras` and `.tflite` files are data: no check.
    """

    def __init__(self, model=None, detector=None, batch_size: int = 8, margin: float = CROP_MARGIN,
                 ensemble=None, threads: int | None = None, trust_model: bool = False,
                 min_face_score: float | None = None):
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = default_threads() if threads is None else int(threads)
        self.backend = load_backend(model, ensemble, threads=self.threads, trust_model=trust_model)
        self.model_name = _model_name(model)
        self.input_size = int(getattr(self.backend, "input_size", 256))
        self.batch_size = max(1, int(batch_size))
        self.margin = float(margin)
        self.min_face_score = min_face_score  # detect()'s default: every frame of a video uses it too
        self._detector = detector

    @property
    def detector(self):
        """The face detector (the default BlazeFace one is made on first use)."""
        if self._detector is None:
            from .face_detector import FaceDetector

            self._detector = FaceDetector(num_threads=self.threads)
        return self._detector

    @detector.setter
    def detector(self, detector):
        self._detector = detector

    def find_faces(self, image_rgb) -> list[tuple]:
        """The face detector's boxes (x0, y0, x1, y1, score), best first."""
        detector = self.detector
        found = detector.detect(image_rgb) if hasattr(detector, "detect") else detector(image_rgb)
        return [tuple(float(v) for v in box) for box in found]

    def detect(self, image, boxes=None, color: str = "rgb", min_face_score: float | None = None) -> list[FaceLandmarks]:
        """Landmarks of every face found in the photo, or of the given boxes (68-point-box convention).

        image: a file path (read with `data_pipelines.images.read_image`), or an H×W×3 uint8 array in
            RGB order — an array from `cv2.imread` is BGR: pass color="bgr".
        min_face_score: drop faces whose `face_score` is below this (e.g. 0.5: a box on the background
            or a false detection; docs/INFERENCE.md); None: `LandmarkDetector(min_face_score=...)`'s,
            which is None (keep every face) unless given. Faces of a model without a face score are kept.
        """
        if min_face_score is None:
            min_face_score = self.min_face_score
        if isinstance(image, (str, Path)):
            if color != "rgb":
                raise ValueError("color= is for arrays; a file is read in its own colours")
            image = read_image(image)
        else:
            image = as_rgb_uint8(image, color)
        boxes = self.find_faces(image) if boxes is None else [tuple(float(v) for v in b) for b in boxes]
        if not boxes:
            return []
        for box in boxes:
            if len(box) < 4 or not np.all(np.isfinite(box[:4])) or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"invalid face box {box}: need finite x0 < x1 and y0 < y1")
        matrices = [crop_matrix(box[:4], self.input_size, margin=self.margin) for box in boxes]
        crops = np.stack([warp_to_crop(image, m, self.input_size) for m in matrices])
        prediction = self.predict_crops(crops)
        landmarks, confidence = prediction
        faces = []
        for index, (box, matrix, points, conf) in enumerate(zip(boxes, matrices, landmarks, confidence)):
            photo_points = transform_points(invert(matrix), points.astype(np.float64) * self.input_size)
            uncertainty = face_score = None
            if prediction.uncertainty is not None:  # crop pixels → photo pixels: ÷ the crop's scale
                uncertainty = prediction.uncertainty[index].astype(np.float64) / crop_scale(matrix)
            if prediction.face_score is not None:
                face_score = float(prediction.face_score[index])
            if min_face_score is not None and face_score is not None and face_score < min_face_score:
                continue
            faces.append(FaceLandmarks(box=tuple(box[:4]), points=photo_points, confidence=conf,
                                       score=box[4] if len(box) > 4 else None, uncertainty=uncertainty,
                                       face_score=face_score))
        return faces

    def detect_file(self, path, boxes=None, **read_options) -> list[FaceLandmarks]:
        """`detect` on an image file; unreadable files raise `ImageReadError` with a one-line message."""
        return self.detect(read_image(path, **read_options), boxes=boxes)

    def predict_crops(self, crops: np.ndarray) -> CropPrediction:
        """The backend on uint8 crops, `batch_size` at a time → normalised landmarks, confidence (a
        `CropPrediction`: also `.uncertainty` in crop pixels and `.face_score`, or None)."""
        crops = np.asarray(crops)
        landmarks, confidence, uncertainty, face_score = [], [], [], []
        for start in range(0, len(crops), self.batch_size):
            result = as_crop_prediction(self.backend.predict_crops(crops[start:start + self.batch_size]))
            lm, conf = result
            landmarks.append(np.asarray(lm, np.float32).reshape(-1, NUM_LANDMARKS, 2))
            confidence.append(np.asarray(conf, np.float32).reshape(-1, NUM_LANDMARKS))
            uncertainty.append(result.uncertainty)
            face_score.append(result.face_score)
        complete = lambda parts, shape: (None if any(p is None for p in parts) else  # noqa: E731
                                         np.concatenate([np.asarray(p, np.float32).reshape(shape) for p in parts]))
        return CropPrediction(np.concatenate(landmarks), np.concatenate(confidence),
                              complete(uncertainty, (-1, NUM_LANDMARKS)), complete(face_score, (-1,)))


def crop_scale(matrix) -> float:
    """Crop pixels per photo pixel of a crop matrix (a similarity: sqrt |det| of its linear part)."""
    matrix = np.asarray(matrix, np.float64)
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def _model_name(model) -> str:
    """What to call the model in outputs: its packaged name, its path, or its type."""
    from . import packaged

    if model is None:
        return packaged.DEFAULT_MODEL
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "name", type(model).__name__)


__all__ = ["COLOR_ORDERS", "CROP_MARGIN", "CropPrediction", "FaceLandmarks", "ImageReadError", "LandmarkDetector", "ModelLoadError",
           "TFLiteBackend", "as_rgb_uint8", "load_backend"]
