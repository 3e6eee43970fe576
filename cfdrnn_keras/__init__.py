"""cfdrnn-keras: 68-point facial landmarks with the CFDRNN network (Mahpod et al.) in Keras 3.

Importing the package registers its custom layers, so `.keras` files load with `safe_mode=True`.
"""
from .codec import HeatmapDecoder
from .config import PRESETS, CFDRNNConfig, get_preset
from .ensemble import EnsembleOptions, build_test_time_model
from .layers import FusedBatchNormalization
from .network import OUTPUT_NAMES, build_cfdrnn, config_from_model

__version__ = "0.1.0"

__all__ = [
    "CFDRNNConfig",
    "EnsembleOptions",
    "FusedBatchNormalization",
    "HeatmapDecoder",
    "OUTPUT_NAMES",
    "PRESETS",
    "build_cfdrnn",
    "build_test_time_model",
    "config_from_model",
    "get_preset",
]


def __getattr__(name):
    # The photo-to-landmarks API pulls in OpenCV and the face detector: load it only when asked.
    if name == "LandmarkDetector":
        from .inference import LandmarkDetector

        return LandmarkDetector
    raise AttributeError(f"module 'cfdrnn_keras' has no attribute {name!r}")
