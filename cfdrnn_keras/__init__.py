"""cfdrnn-keras: 68-point facial landmarks with the CFDRNN network (Mahpod et al.) in Keras 3.

The package has two sides, and importing it loads neither:

- `cfdrnn_keras.runtime`: photo or video in, landmarks out. numpy, OpenCV and LiteRT only, so the
  plain install (`pip install cfdrnn-keras`) runs the packaged models without TensorFlow or Keras.
- `cfdrnn_keras.model` (the network, its layers, heat-map codec and test-time ensemble) and
  `cfdrnn_keras.training` (losses, trainer, callbacks, distribution) need Keras and TensorFlow:
  `pip install 'cfdrnn-keras[train]'`. Importing `cfdrnn_keras.model` registers the custom layers,
  so `.keras` files load with `safe_mode=True`.

The names below are attributes resolved on first use, so `from cfdrnn_keras import LandmarkDetector`
costs what LiteRT and OpenCV cost, and `from cfdrnn_keras import build_cfdrnn` imports Keras.
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

# attribute -> module that defines it (imported on first access)
_LAZY = {
    "LandmarkDetector": "cfdrnn_keras.runtime.landmarker",
    "FaceLandmarks": "cfdrnn_keras.runtime.landmarker",
    "ModelLoadError": "cfdrnn_keras.runtime.backends",
    "PACKAGED_MODELS": "cfdrnn_keras.runtime.packaged",
    "EnsembleOptions": "cfdrnn_keras.ensemble_options",
    "CFDRNNConfig": "cfdrnn_keras.config",
    "PRESETS": "cfdrnn_keras.config",
    "get_preset": "cfdrnn_keras.config",
    "HeatmapDecoder": "cfdrnn_keras.model.codec",
    "FusedBatchNormalization": "cfdrnn_keras.model.layers",
    "OUTPUT_NAMES": "cfdrnn_keras.model.network",
    "build_cfdrnn": "cfdrnn_keras.model.network",
    "config_from_model": "cfdrnn_keras.model.network",
    "build_test_time_model": "cfdrnn_keras.model.ensemble",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cfdrnn_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
