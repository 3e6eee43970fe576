"""The validation NME the shipped models are judged by, measured every epoch of a run.

Keras's in-graph `val_nme` is the paper's last stage with integer peaks, one pass. The packaged
models run the test-time ensemble instead (four stages averaged, sub-pixel peaks, the flip test:
`model.ensemble.EnsembleOptions()`), and the two can disagree about which epoch is best: a run whose
last stage got worse late (a stage-4 offset loss rising fourfold) had its ensemble improving at the
same time (docs/TRAINING.md, "A wider network"). `DefaultInferenceNME` logs the ensemble's NME as
`val_nme_default`, so `best.keras` can be chosen on it (`tools/train.py --select-best`).

Measured on crops: the inter-ocular NME is a ratio of distances, so a crop (a similarity transform
of the photo) gives the photo's figure; `tools/evaluate.py --held-out` on the same faces agrees.
"""
from __future__ import annotations

import keras
import numpy as np

from ..metrics import nme

DEFAULT_KEY = "val_nme_default"


class DefaultInferenceNME(keras.callbacks.Callback):
    """After every epoch: mean inter-ocular NME of `network` run as the packaged models run, on fixed
    crops `images` (B, S, S, 3) in the model's range with ground truth `landmarks` (B, N, 2) in
    normalised crop coordinates; written to `logs[key]` for the callbacks after it (put it first)."""

    def __init__(self, network: keras.Model, images, landmarks, options=None, key: str = DEFAULT_KEY,
                 batch_size: int = 32):
        super().__init__()
        self.network = network
        self.images = np.asarray(images, dtype=np.float32)
        self.landmarks = np.asarray(landmarks, dtype=np.float32)
        if len(self.images) != len(self.landmarks) or not len(self.images):
            raise ValueError(f"need as many ground truths as crops (≥ 1), got {len(self.landmarks)} and "
                             f"{len(self.images)}")
        self.options = options
        self.key = key
        self.batch_size = int(batch_size)
        self._test_time_model = None  # not `_model`: Keras's Callback keeps the trained model there

    def measure(self) -> float:
        """The mean NME (a fraction) of the network as it is now."""
        from ..model.ensemble import for_inference

        if self._test_time_model is None:  # shares the network's layers: built once, always the current weights
            self._test_time_model = for_inference(self.network, self.options)  # its own layers in float32
        outputs = self._test_time_model.predict(self.images, batch_size=self.batch_size, verbose=0)
        predicted = outputs["landmarks"] if isinstance(outputs, dict) else outputs
        return float(np.mean(nme(np.asarray(predicted, np.float64), self.landmarks.astype(np.float64))))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.key] = self.measure()


__all__ = ["DEFAULT_KEY", "DefaultInferenceNME"]
