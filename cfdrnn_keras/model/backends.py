"""The model side's backends: a Keras model (or `.keras` file) and a SavedModel directory, behind the
same `predict_crops` interface as the LiteRT one (`cfdrnn_keras.runtime.backends`), which hands
`.keras` files and SavedModels here. Needs Keras and TensorFlow."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.backends import CropPrediction, ModelLoadError


class KerasBackend:
    """A CFDRNN Keras model (input [-0.5, 0.5] floats; outputs `landmarks` normalised, `confidence`).

    ensemble: how the network runs (`cfdrnn_keras.model.ensemble`); None = `EnsembleOptions()`, the flip
    test and the four-stage average, for a CFDRNN graph, and its own `landmarks` output for any other
    model (one without `heatmaps_j` / `delta_j` outputs, e.g. one already wrapped).
    model: a keras.Model, or a source `cfdrnn_keras.model.loading` loads (a `.keras` path, a packaged
    model's name or `PackagedModel`: its networks averaged when it has several).
    uncertainty: the per-point uncertainty calibration (issue 17): None = the source's own (beside a
    `.keras` file, `NAME.uncertainty.json`; a packaged model's file) for the ensemble it runs, if
    there is one; a calibration entry (dict); or False for none.
    The source's calibration also holds how its estimates are fused (`cfdrnn_keras.model.fusion`):
    that is used whatever `uncertainty` says, since it changes the landmarks, not only what they report.
    """

    def __init__(self, model, ensemble=None, uncertainty=None):
        import keras

        from . import ensemble as ensembles
        from ..runtime.packaged import PackagedModel
        from . import loading
        from .fusion import fusion_of
        from .uncertainty import uncertainty_of

        source = model if isinstance(model, (str, Path, PackagedModel)) else None
        model_path = loading.describe(source) if source is not None else ""
        if source is not None:
            model = loading.load_network(source)
        if ensemble is None:
            ensemble = ensembles.default_options(model)
        entry = None
        if source is not None and ensembles.stage_count(model):
            entry = loading.calibration_entry(source, ensemble)
        if uncertainty is None:
            uncertainty = uncertainty_of(entry)
        fusion = fusion_of(entry, ensemble)
        try:
            model = ensembles.for_inference(model, ensemble, uncertainty=uncertainty or None, fusion=fusion)
        except ValueError as error:
            where = f"{model_path}: " if model_path else ""
            raise ModelLoadError(f"{where}{error} (pass ensemble=cfdrnn_keras.model.ensemble.PLAIN)") from None
        self.ensemble = ensemble
        self.fused = fusion is not None  # the estimates fused as the calibration says
        outputs = model.output
        if not isinstance(outputs, dict) or "landmarks" not in outputs:
            raise ModelLoadError(f"model {model.name!r} has no 'landmarks' output")
        wanted = {"landmarks": outputs["landmarks"]}
        for name in ("confidence", "uncertainty", "face_score"):
            if name in outputs:
                wanted[name] = outputs[name]
        self.model = model
        self._runner = keras.Model(model.inputs, wanted, name=f"{model.name}_inference")
        self.input_size = int(model.inputs[0].shape[1])

    def predict_crops(self, crops: np.ndarray) -> CropPrediction:
        images = crops.astype(np.float32) * (1.0 / 255.0) - 0.5
        out = self._runner.predict_on_batch(images)
        landmarks = np.asarray(out["landmarks"], dtype=np.float32)
        confidence = (np.asarray(out["confidence"], dtype=np.float32) if "confidence" in out
                      else np.ones(landmarks.shape[:2], np.float32))
        return CropPrediction(landmarks, confidence, *_uncertainty_of(out))


class SavedModelBackend:
    """A SavedModel directory whose `serving_default` takes uint8 crops and gives `landmarks` in CROP
    PIXELS and `confidence` (the signature `export/` writes for TF Serving).

    A SavedModel is a program: before it is loaded, its graph is checked against the ops of this
    project's own exports (`cfdrnn_keras.model.saved_model_check`) and anything else (file I/O,
    py_func, unknown ops...) is refused with an `UntrustedModelError` naming the op;
    trust_model=True skips the check, for a model you trust."""

    def __init__(self, path, trust_model: bool = False):
        import tensorflow as tf

        from .saved_model_check import check_saved_model

        if not trust_model:
            check_saved_model(path)
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

    def predict_crops(self, crops: np.ndarray) -> CropPrediction:
        tensor = self._tf.constant(crops.astype(self._input_dtype.as_numpy_dtype))
        out = self._fn(**{self._input_name: tensor})
        landmarks = out["landmarks"].numpy().astype(np.float32) / self.input_size
        confidence = (out["confidence"].numpy().astype(np.float32) if "confidence" in out
                      else np.ones(landmarks.shape[:2], np.float32))
        return CropPrediction(landmarks, confidence, *_uncertainty_of(out))


def _uncertainty_of(out) -> tuple:
    """(uncertainty (N, 68) crop pixels, face_score (N,)) of a model's outputs, None where absent."""
    def get(name):
        if name not in out:
            return None
        value = out[name]
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)

    return get("uncertainty"), get("face_score")


__all__ = ["KerasBackend", "SavedModelBackend"]
