"""Photo in, 68 landmarks per face out: `LandmarkDetector`.

Each face (found by `cfdrnn_keras.detector`, or given as a box in the 68-point-box convention) is cut
out exactly as training faces are — `crop_matrix(box, 256, margin=1.25)`, i.e. the box made square,
enlarged 1.25× and warped to 256×256 — the crops go through the network in batches, and the points
come back through the inverse crop matrix into the ORIGINAL photo's pixel coordinates (0-based
pixel centres, the convention of the whole project).

The network runs behind a small backend interface, so a `.keras` file, a SavedModel directory (its
`serving_default` signature) and a `.tflite` file are used the same way:

    backend.predict_crops(uint8 crops (N, S, S, 3)) -> (landmarks (N, 68, 2) normalised to [0, 1] of
                                                        the crop, confidence (N, 68))

Anything with that method (and an `input_size`) can be passed as `model=` too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.geometry import crop_matrix, invert, transform_points, warp_to_crop
from data_pipelines.images import ImageReadError, read_image

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "cfdrnn_mobile.keras"  # the `mobile` preset, trained as docs/MODEL_CARD.md says
CROP_MARGIN = 1.25
NUM_LANDMARKS = 68


class ModelLoadError(ValueError):
    """A model that cannot be used; the message is one line naming the path and the problem."""


def default_model_path() -> Path:
    """Where the packaged trained model lives (it may not be there yet: see `LandmarkDetector`)."""
    return DEFAULT_MODEL


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
class KerasBackend:
    """A CFDRNN Keras model (input [-0.5, 0.5] floats; outputs `landmarks` normalised, `confidence`).

    ensemble: how the network runs (`cfdrnn_keras.ensemble`); None = `EnsembleOptions()`, the flip
    test and the four-stage average, for a CFDRNN graph, and its own `landmarks` output for any other
    model (one without `heatmaps_j` / `delta_j` outputs, e.g. one already wrapped).
    """

    def __init__(self, model, ensemble=None):
        import keras

        from . import ensemble as ensembles

        model_path = str(model) if isinstance(model, (str, Path)) else ""
        if model_path:
            from . import network  # noqa: F401  (registers the custom layers for safe loading)

            model = keras.saving.load_model(str(model), safe_mode=True)
        if ensemble is None:
            ensemble = ensembles.default_options(model)
        try:
            model = ensembles.for_inference(model, ensemble)
        except ValueError as error:
            where = f"{model_path}: " if model_path else ""
            raise ModelLoadError(f"{where}{error} (pass ensemble=cfdrnn_keras.ensemble.PLAIN)") from None
        self.ensemble = ensemble
        outputs = model.output
        if not isinstance(outputs, dict) or "landmarks" not in outputs:
            raise ModelLoadError(f"model {model.name!r} has no 'landmarks' output")
        wanted = {"landmarks": outputs["landmarks"]}
        if "confidence" in outputs:
            wanted["confidence"] = outputs["confidence"]
        self.model = model
        self._runner = keras.Model(model.inputs, wanted, name=f"{model.name}_inference")
        self.input_size = int(model.inputs[0].shape[1])

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = crops.astype(np.float32) * (1.0 / 255.0) - 0.5
        out = self._runner.predict_on_batch(images)
        landmarks = np.asarray(out["landmarks"], dtype=np.float32)
        confidence = (np.asarray(out["confidence"], dtype=np.float32) if "confidence" in out
                      else np.ones(landmarks.shape[:2], np.float32))
        return landmarks, confidence


class SavedModelBackend:
    """A SavedModel directory whose `serving_default` takes uint8 crops and gives `landmarks` in CROP
    PIXELS and `confidence` (the signature `export/` writes for TF Serving)."""

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        loaded = tf.saved_model.load(str(path))
        if "serving_default" not in loaded.signatures:
            raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature")
        self._loaded = loaded  # keep the object alive: the signature refers to its variables
        self._fn = loaded.signatures["serving_default"]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: serving_default should take one input (crops), takes {sorted(inputs)}")
        self._input_name, spec = next(iter(inputs.items()))
        self._input_dtype = spec.dtype
        self.input_size = int(spec.shape[1]) if spec.shape.rank and spec.shape[1] is not None else 256
        if "landmarks" not in self._fn.structured_outputs:
            raise ModelLoadError(f"{path}: serving_default has no 'landmarks' output")

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = self._tf.constant(crops.astype(self._input_dtype.as_numpy_dtype))
        out = self._fn(**{self._input_name: tensor})
        landmarks = out["landmarks"].numpy().astype(np.float32) / self.input_size
        confidence = (out["confidence"].numpy().astype(np.float32) if "confidence" in out
                      else np.ones(landmarks.shape[:2], np.float32))
        return landmarks, confidence


class TFLiteBackend:
    """A `.tflite` file run by the LiteRT interpreter.

    The file's `serving_default` signature is used when it has one (export/ writes it: input `image`,
    outputs `landmarks` and `confidence`); otherwise the first input and the outputs named (or shaped)
    like landmarks and confidence. Units of `landmarks`: a file whose input is uint8 crops has the
    pre-processing inside, like the SavedModel's `serving_default`, and gives CROP PIXELS; a file with
    float input mirrors the Keras model and gives normalised points. `landmark_units` overrides the
    guess. Quantised (int8/uint8) tensors are (de)quantised with the file's own scale and zero point.
    """

    SIGNATURE = "serving_default"

    def __init__(self, path, landmark_units: str = "auto", num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        signature = self._interpreter.get_signature_list().get(self.SIGNATURE, {})
        if len(signature.get("inputs", ())) == 1 and "landmarks" in signature.get("outputs", ()):
            self._runner = self._interpreter.get_signature_runner(self.SIGNATURE)
            self._input_name = signature["inputs"][0]
            self._input = self._runner.get_input_details()[self._input_name]
            outputs = self._runner.get_output_details()
            self._landmarks = outputs["landmarks"]
            self._confidence = outputs.get("confidence")
        else:
            self._runner = None
            self._input = self._interpreter.get_input_details()[0]
            outputs = self._interpreter.get_output_details()
            self._landmarks = _pick_output(outputs, "landmarks", (NUM_LANDMARKS, 2), path)
            try:
                self._confidence = _pick_output(outputs, "confidence", (NUM_LANDMARKS,), path)
            except ModelLoadError:
                self._confidence = None
        self.input_size = int(self._input["shape"][1])
        uint8_crops = self._input["dtype"] == np.uint8 and not self._input["quantization"][0]
        if landmark_units == "auto":
            landmark_units = "pixels" if uint8_crops else "normalised"
        if landmark_units not in ("pixels", "normalised"):
            raise ValueError(f"landmark_units must be 'auto', 'pixels' or 'normalised', got {landmark_units!r}")
        self._raw_uint8 = uint8_crops
        self._divisor = float(self.input_size) if landmark_units == "pixels" else 1.0
        self._batch = None

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._raw_uint8:
            data = crops.astype(np.uint8)
        else:
            data = _quantise(crops.astype(np.float32) * (1.0 / 255.0) - 0.5, self._input)
        if self._runner is not None:  # the signature runner resizes its input itself
            out = self._runner(**{self._input_name: data})
            landmarks = out["landmarks"]
            confidence = out.get("confidence")
        else:
            if self._batch != len(crops):
                self._interpreter.resize_tensor_input(self._input["index"], [len(crops), *crops.shape[1:]])
                self._interpreter.allocate_tensors()
                self._batch = len(crops)
            self._interpreter.set_tensor(self._input["index"], data)
            self._interpreter.invoke()
            landmarks = self._interpreter.get_tensor(self._landmarks["index"])
            confidence = (self._interpreter.get_tensor(self._confidence["index"])
                          if self._confidence is not None else None)
        landmarks = _dequantise(landmarks, self._landmarks).reshape(len(crops), NUM_LANDMARKS, 2) / self._divisor
        if confidence is None:
            confidence = np.ones(landmarks.shape[:2], np.float32)
        else:
            confidence = _dequantise(confidence, self._confidence)
        return landmarks.astype(np.float32), confidence.reshape(len(crops), NUM_LANDMARKS).astype(np.float32)


def _pick_output(outputs, name: str, shape: tuple, path) -> dict:
    named = [o for o in outputs if name in o["name"]]
    if len(named) == 1:
        return named[0]
    shaped = [o for o in outputs if tuple(o["shape"][1:]) == shape]
    if len(shaped) == 1:
        return shaped[0]
    raise ModelLoadError(f"{path}: cannot tell which TFLite output holds the {name}")


def _quantise(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    dtype = detail["dtype"]
    if scale and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _dequantise(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale and np.issubdtype(values.dtype, np.integer):
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def load_backend(model, ensemble=None):
    """A backend for a path (.keras file, SavedModel directory, .tflite file), a Keras model, or an
    object that already has `predict_crops`. Problems raise `ModelLoadError` (one line).

    ensemble: `cfdrnn_keras.ensemble.EnsembleOptions` for a Keras model (None: its default). A
    SavedModel or .tflite file runs the way it was exported (`tools/export.py --flip-test/--stages`),
    so asking for another ensemble there is an error rather than silently ignored.
    """
    if hasattr(model, "predict_crops"):
        return model
    if not isinstance(model, (str, Path)):
        import keras

        if isinstance(model, keras.Model):
            return KerasBackend(model, ensemble)
        raise ModelLoadError(f"cannot use a {type(model).__name__} as a model: pass a path or a keras.Model")
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"{path}: model not found")
    if ensemble is not None and (path.is_dir() or path.suffix.lower() == ".tflite"):
        raise ModelLoadError(f"{path}: an exported model runs the ensemble it was exported with; "
                             "choose it with tools/export.py --flip-test/--no-flip-test --stages")
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ModelLoadError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
            return SavedModelBackend(path)
        suffix = path.suffix.lower()
        if suffix == ".keras":
            return KerasBackend(path, ensemble)
        if suffix == ".tflite":
            return TFLiteBackend(path)
    except ModelLoadError:
        raise
    except Exception as error:  # a corrupt or foreign file: one line, not a traceback
        raise ModelLoadError(f"{path}: cannot load the model: {_one_line(error)}") from None
    raise ModelLoadError(f"{path}: unknown model format {suffix or '(no extension)'}; "
                         "use a .keras file, a SavedModel directory or a .tflite file")


# ----------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------
@dataclass
class FaceLandmarks:
    """One face: its box (x0, y0, x1, y1, 68-point-box convention), 68 (x, y) points and a confidence
    per point, all in the original photo's pixels; `score` is the face detector's (None for given boxes)."""

    box: tuple
    points: np.ndarray
    confidence: np.ndarray
    score: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self, decimals: int = 2) -> dict:
        """JSON-ready: lists of rounded floats."""
        result = {
            "box": [round(float(v), decimals) for v in self.box],
            "points": np.round(self.points.astype(np.float64), decimals).tolist(),
            "confidence": np.round(self.confidence.astype(np.float64), 4).tolist(),
        }
        if self.score is not None:
            result["score"] = round(float(self.score), 4)
        result.update(self.extra)
        return result


def as_rgb_uint8(image) -> np.ndarray:
    """H×W×3 uint8 RGB from an array that is already RGB, grayscale (H×W or H×W×1) or RGBA."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype} (use data_pipelines.images.read_image for files)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    return np.ascontiguousarray(image[:, :, :3])


class LandmarkDetector:
    """68 landmarks for every face in a photo.

    model: None (the packaged model), a path (.keras, SavedModel directory, .tflite), a keras.Model,
        or any object with `predict_crops` (see the module docstring).
    detector: None (the default BlazeFace `FaceDetector`, loaded on first use), an object with
        `detect(image) -> [(x0, y0, x1, y1[, score])]`, or such a callable.
    ensemble: for a Keras model, `cfdrnn_keras.ensemble.EnsembleOptions` (None: the flip test and
        the four-stage average, the most accurate; `ensemble.PLAIN`, the paper's last stage alone,
        runs twice as fast). Exported models run the ensemble they were exported with.
    """

    def __init__(self, model=None, detector=None, batch_size: int = 8, margin: float = CROP_MARGIN,
                 ensemble=None):
        if model is None:
            model = default_model_path()
            if not Path(model).exists():
                raise ModelLoadError("no packaged model is present in cfdrnn_keras/assets yet: "
                                     "pass model= (a .keras file, a SavedModel directory or a .tflite file)")
        self.backend = load_backend(model, ensemble)
        self.input_size = int(getattr(self.backend, "input_size", 256))
        self.batch_size = max(1, int(batch_size))
        self.margin = float(margin)
        self._detector = detector

    @property
    def detector(self):
        if self._detector is None:
            from .detector import default_detector

            self._detector = default_detector()
        return self._detector

    def find_faces(self, image_rgb) -> list[tuple]:
        """The face detector's boxes (x0, y0, x1, y1, score), best first."""
        detector = self.detector
        found = detector.detect(image_rgb) if hasattr(detector, "detect") else detector(image_rgb)
        return [tuple(float(v) for v in box) for box in found]

    def detect(self, image_rgb, boxes=None) -> list[FaceLandmarks]:
        """Landmarks of every face found in the photo, or of the given boxes (68-point-box convention)."""
        image = as_rgb_uint8(image_rgb)
        boxes = self.find_faces(image) if boxes is None else [tuple(float(v) for v in b) for b in boxes]
        if not boxes:
            return []
        for box in boxes:
            if len(box) < 4 or not np.all(np.isfinite(box[:4])) or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"invalid face box {box}: need x0 < x1 and y0 < y1")
        matrices = [crop_matrix(box[:4], self.input_size, margin=self.margin) for box in boxes]
        crops = np.stack([warp_to_crop(image, m, self.input_size) for m in matrices])
        landmarks, confidence = self.predict_crops(crops)
        faces = []
        for box, matrix, points, conf in zip(boxes, matrices, landmarks, confidence):
            photo_points = transform_points(invert(matrix), points.astype(np.float64) * self.input_size)
            faces.append(FaceLandmarks(box=tuple(box[:4]), points=photo_points, confidence=conf,
                                       score=box[4] if len(box) > 4 else None))
        return faces

    def detect_file(self, path, boxes=None, **read_options) -> list[FaceLandmarks]:
        """`detect` on an image file; unreadable files raise `ImageReadError` with a one-line message."""
        return self.detect(read_image(path, **read_options), boxes=boxes)

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend on uint8 crops, `batch_size` at a time → normalised landmarks, confidence."""
        crops = np.asarray(crops)
        landmarks, confidence = [], []
        for start in range(0, len(crops), self.batch_size):
            lm, conf = self.backend.predict_crops(crops[start:start + self.batch_size])
            landmarks.append(np.asarray(lm, np.float32).reshape(-1, NUM_LANDMARKS, 2))
            confidence.append(np.asarray(conf, np.float32).reshape(-1, NUM_LANDMARKS))
        return np.concatenate(landmarks), np.concatenate(confidence)


__all__ = ["CROP_MARGIN", "DEFAULT_MODEL", "FaceLandmarks", "ImageReadError", "KerasBackend", "LandmarkDetector",
           "ModelLoadError", "SavedModelBackend", "TFLiteBackend", "as_rgb_uint8", "default_model_path",
           "load_backend"]
