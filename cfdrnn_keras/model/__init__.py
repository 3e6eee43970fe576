"""The Keras side: the CFDRNN network, its registered layers, the heat-map codec and the test-time
ensemble. Needs Keras (and TensorFlow for export and the fastest kernels).

Importing this package registers every custom layer, so `keras.saving.load_model(path,
safe_mode=True)` loads the project's `.keras` files; `load_model` here does both in one call.
"""
from .codec import HeatmapDecoder
from .ensemble import MirrorBatch, MirrorMerge, StageAverage, build_test_time_model
from .layers import FusedBatchNormalization
from .network import OUTPUT_NAMES, build_cfdrnn, config_from_model


def load_model(path):
    """A `.keras` file of this project, loaded with `safe_mode=True` (no Lambda, no arbitrary code)."""
    import keras

    return keras.saving.load_model(str(path), safe_mode=True)


__all__ = ["FusedBatchNormalization", "HeatmapDecoder", "MirrorBatch", "MirrorMerge", "OUTPUT_NAMES",
           "StageAverage", "build_cfdrnn", "build_test_time_model", "config_from_model", "load_model"]
