"""Backends: one interface over every kind of model file, and the LiteRT one that needs no TensorFlow.

    backend.predict_crops(uint8 crops (N, S, S, 3)) -> (landmarks (N, 68, 2) normalised to [0, 1] of
                                                        the crop, confidence (N, 68))

The result is a `CropPrediction`: it unpacks as that pair, and also carries `.uncertainty` (N, 68),
each point's expected error in CROP PIXELS, and `.face_score` (N,) in [0, 1] (issue 17), both None
for a model exported without them.

`load_backend` picks the backend for a packaged model's name, a path or a model object. LiteRT
(`.tflite`) runs here; a `.keras` file or a SavedModel directory is handed to the model side
(`cfdrnn_keras.model.backends`), which is imported only then: it needs the `[train]` extra, and says
so in one line where it is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import packaged
from ..conventions import NUM_LANDMARKS, TRAIN_EXTRA_HINT
from ..errors import one_line  # noqa: F401  (re-exported: callers import it from here)
from ..quiet import native_stderr_silenced


class ModelLoadError(ValueError):
    """A model that cannot be used; the message is one line naming the path and the problem."""


class CropPrediction(tuple):
    """What `predict_crops` returns: the pair (landmarks, confidence) — so `landmarks, confidence =
    backend.predict_crops(crops)` works as it always did — with two more attributes:
    `uncertainty` (N, 68) float32, each point's expected error in crop pixels, and `face_score` (N,)
    float32 in [0, 1]; None where the model has no such outputs."""

    def __new__(cls, landmarks, confidence, uncertainty=None, face_score=None):
        self = super().__new__(cls, (landmarks, confidence))
        self.uncertainty = uncertainty
        self.face_score = face_score
        return self

    @property
    def landmarks(self):
        return self[0]

    @property
    def confidence(self):
        return self[1]


def as_crop_prediction(result) -> CropPrediction:
    """A backend's result (a CropPrediction, or a plain (landmarks, confidence) pair from a backend
    of one's own) as a CropPrediction."""
    if isinstance(result, CropPrediction):
        return result
    landmarks, confidence = result[0], result[1]
    return CropPrediction(landmarks, confidence, getattr(result, "uncertainty", None), getattr(result, "face_score", None))


def default_threads() -> int:
    """All the cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def litert_interpreter():
    """LiteRT's Interpreter class (ai-edge-litert; TensorFlow's own tf.lite where only that is installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tensorflow.lite.python.interpreter import Interpreter  # noqa: F401
        except ImportError:
            raise ModelLoadError("running .tflite files needs LiteRT: pip install ai-edge-litert") from None
    return Interpreter


def make_interpreter(path, num_threads: int | None = None):
    """A LiteRT interpreter for a .tflite file, made quietly in quiet mode (LiteRT prints an INFO line
    for its XNNPACK delegate on every interpreter)."""
    Interpreter = litert_interpreter()
    with native_stderr_silenced():
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()  # applies the XNNPACK delegate, which is when LiteRT logs
    return interpreter


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
        self.path = Path(path)
        self._interpreter = make_interpreter(path, num_threads)
        signature = self._interpreter.get_signature_list().get(self.SIGNATURE, {})
        if len(signature.get("inputs", ())) == 1 and "landmarks" in signature.get("outputs", ()):
            self._runner = self._interpreter.get_signature_runner(self.SIGNATURE)
            self._input_name = signature["inputs"][0]
            self._input = self._runner.get_input_details()[self._input_name]
            outputs = self._runner.get_output_details()
            self._landmarks = outputs["landmarks"]
            self._confidence = outputs.get("confidence")
            self._uncertainty = outputs.get("uncertainty")
            self._face_score = outputs.get("face_score")
        else:
            self._uncertainty = self._face_score = None
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

    def predict_crops(self, crops: np.ndarray) -> CropPrediction:
        if self._raw_uint8:
            data = crops.astype(np.uint8)
        else:
            data = _quantise(crops.astype(np.float32) * (1.0 / 255.0) - 0.5, self._input)
        resized = self._batch != len(crops)  # a new batch size re-applies the delegate, which logs
        if self._runner is not None:  # the signature runner resizes its input itself
            with native_stderr_silenced(None if resized else False):
                out = self._runner(**{self._input_name: data})
            self._batch = len(crops)
            landmarks = out["landmarks"]
            confidence = out.get("confidence")
            uncertainty, face_score = out.get("uncertainty"), out.get("face_score")
        else:
            uncertainty = face_score = None
            if resized:
                self._interpreter.resize_tensor_input(self._input["index"], [len(crops), *crops.shape[1:]])
                with native_stderr_silenced():
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
        if uncertainty is not None:  # crop pixels of this file's input size in the graph
            uncertainty = _dequantise(uncertainty, self._uncertainty).reshape(len(crops), NUM_LANDMARKS)
            face_score = (None if face_score is None else
                          _dequantise(face_score, self._face_score).reshape(len(crops)).astype(np.float32))
        return CropPrediction(landmarks.astype(np.float32),
                              confidence.reshape(len(crops), NUM_LANDMARKS).astype(np.float32),
                              None if uncertainty is None else uncertainty.astype(np.float32), face_score)


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


def _model_side():
    """`cfdrnn_keras.model.backends`, or a one-line ModelLoadError where Keras/TensorFlow are absent."""
    try:
        with native_stderr_silenced():  # Keras imports TensorFlow, which prints its start-up lines
            from ..model import backends
    except ImportError as error:
        raise ModelLoadError(f"running a .keras file or a SavedModel needs TensorFlow and Keras "
                             f"({one_line(error)}): {TRAIN_EXTRA_HINT}") from None
    return backends


def check_keras_file(path) -> None:
    """A `.keras` file is a zip archive holding config.json and the weights: raise `ModelLoadError`
    saying which part is wrong (Keras itself answers "File not found" for a file that exists but is
    not a zip, e.g. truncated). Needs neither Keras nor TensorFlow."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"{path}: not a Keras model: the archive has no config.json")
            damaged = archive.testzip()  # the first member whose checksum fails
    except zipfile.BadZipFile as error:
        raise ModelLoadError(f"{path}: not a valid .keras file: not a complete zip archive (truncated or "
                             f"corrupt: {one_line(error)})") from None
    except (OSError, EOFError) as error:
        raise ModelLoadError(f"{path}: cannot read the .keras file: {getattr(error, 'strerror', None) or one_line(error)}") from None
    if damaged is not None:
        raise ModelLoadError(f"{path}: corrupt .keras file: {damaged} inside it fails its checksum")


def packaged_keras_backend(model: packaged.PackagedModel, ensemble=None):
    """A packaged model's float networks in Keras (`NAME:keras`), with its ensemble unless another is
    asked for and its own calibration; ModelLoadError (one line) where a file is missing or broken."""
    for path in model.network_paths:
        if not path.is_file():
            raise ModelLoadError(f"{path}: the packaged model '{model.name}:keras' is missing from this install "
                                 "(reinstall cfdrnn-keras)")
        check_keras_file(path)
    try:
        return _model_side().KerasBackend(model, model.ensemble if ensemble is None else ensemble)
    except ModelLoadError:
        raise
    except Exception as error:  # a corrupt or foreign file: one line, not a traceback
        raise ModelLoadError(f"{model.name}:keras: cannot load the model: {one_line(error)}") from None


def load_backend(model=None, ensemble=None, threads: int | None = None, trust_model: bool = False):
    """A backend for a packaged model's name (None: the default), a path (.tflite file, .keras file,
    SavedModel directory), a Keras model, or an object that already has `predict_crops`. Problems
    raise `ModelLoadError` (one line).

    ensemble: `cfdrnn_keras.ensemble_options.EnsembleOptions` for a Keras model (None: its default).
    A SavedModel or .tflite file runs the way it was exported (`tools/export.py --flip-test/--stages`),
    so asking for another ensemble there is an error rather than silently ignored.
    threads: LiteRT interpreter threads (None: all cores).
    trust_model: run a SavedModel without checking its graph (it is a program: by default any op that
    this project's exports do not use, file I/O or py_func say, is refused; docs/INFERENCE.md).
    """
    if hasattr(model, "predict_crops"):
        return model
    model, name = packaged.resolve(model)
    if isinstance(model, packaged.PackagedModel):  # NAME:keras: its float networks, run as its LiteRT file runs
        return packaged_keras_backend(model, ensemble)
    if not isinstance(model, (str, Path)):
        if type(model).__module__.startswith("keras"):
            return _model_side().KerasBackend(model, ensemble)
        raise ModelLoadError(f"cannot use a {type(model).__name__} as a model: pass a name "
                             f"({', '.join(packaged.PACKAGED_MODELS)}), a path or a keras.Model")
    path = Path(model)
    if not path.exists():
        if name is not None:
            raise ModelLoadError(f"{path}: the packaged model {name!r} is missing from this install "
                                 "(reinstall cfdrnn-keras)")
        raise ModelLoadError(f"{path}: model not found")
    if ensemble is not None and (path.is_dir() or path.suffix.lower() == ".tflite"):
        raise ModelLoadError(f"{path}: an exported model runs the ensemble it was exported with; "
                             "choose it with tools/export.py --flip-test/--no-flip-test --stages")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ModelLoadError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
            return _model_side().SavedModelBackend(path, trust_model=trust_model)
        if suffix == ".tflite":
            return TFLiteBackend(path, num_threads=default_threads() if threads is None else int(threads))
        if suffix == ".keras":
            check_keras_file(path)  # before Keras, whose message for a broken file is "File not found"
            return _model_side().KerasBackend(path, ensemble)
    except ModelLoadError:
        raise
    except Exception as error:  # a corrupt or foreign file: one line, not a traceback
        raise ModelLoadError(f"{path}: cannot load the model: {one_line(error)}") from None
    raise ModelLoadError(f"{path}: unknown model format {suffix or '(no extension)'}; use a packaged "
                         f"model's name ({', '.join(packaged.PACKAGED_MODELS)}), a .tflite file, "
                         "a .keras file or a SavedModel directory")


__all__ = ["CropPrediction", "ModelLoadError", "TFLiteBackend", "as_crop_prediction", "check_keras_file", "default_threads", "litert_interpreter", "load_backend",
           "packaged_keras_backend",
           "make_interpreter", "one_line"]
