"""Stochastic weight averaging (SWA, Izmailov et al. 2018): one network from the last epochs' weights.

At a constant learning rate the weights of successive epochs circle a minimum without settling in
it; their mean lies nearer its centre than any of them, and it is one network of the same size and
cost. `tools/train.py --swa-epochs K` runs the last K epochs at `--swa-learning-rate`, adds the
network's weights to a running mean after each of them and writes the mean as `swa.keras`.

The mean of the weights is not the mean of the batch norms' statistics: a network whose kernels are
an average sees other activations than any of the networks that collected the statistics. So the
statistics are measured again, with one pass over the training faces in training mode
(`recompute_batchnorm_statistics`); without it the average of a restart's two ends scored 3.45 %
against 3.38 % (docs/TRAINING.md, "Weight averaging").

The running mean lives in variables of the trainer (`WeightAverage`), so every epoch's checkpoint
holds it and `--resume` continues it exactly.
"""
from __future__ import annotations

import keras
import numpy as np


class WeightAverage(keras.layers.Layer):
    """A running mean of `network`'s weights (every variable, float32) and how many epochs it holds.

    Attached to the trainer (`CFDRNNTrainer(weight_average=True)`), it is saved and restored with the
    trainer's checkpoints. Never called: `update` and `values` are its interface.
    """

    def __init__(self, network: keras.Model, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self._sources = lambda: network.weights  # a function: Keras would track a list as this layer's own
        self.averages = [self.add_weight(shape=tuple(w.shape), initializer="zeros", trainable=False,
                                         dtype="float32", name=f"average_{i}")
                         for i, w in enumerate(network.weights)]
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32",
                                     name="count")
        self.built = True

    @property
    def epochs(self) -> int:
        """How many epochs' weights the mean holds."""
        return int(round(float(keras.ops.convert_to_numpy(self.count))))

    def update(self) -> None:
        """Add the network's weights as they are now: mean += (w − mean) / (n + 1)."""
        n = float(keras.ops.convert_to_numpy(self.count))
        for average, source in zip(self.averages, self._sources()):
            mean = np.asarray(keras.ops.convert_to_numpy(average), np.float64)
            value = np.asarray(keras.ops.convert_to_numpy(source), np.float64)
            average.assign((mean + (value - mean) / (n + 1.0)).astype(np.float32))
        self.count.assign(n + 1.0)

    def values(self) -> list[np.ndarray]:
        """The mean, in the order of `network.weights` (ValueError when no epoch was added)."""
        if self.epochs < 1:
            raise ValueError("no epoch's weights were averaged yet")
        return [np.asarray(keras.ops.convert_to_numpy(average)) for average in self.averages]


class AverageWeightsEachEpoch(keras.callbacks.Callback):
    """After every epoch numbered above `start_epoch` (1-based epochs), `average.update()`.

    Put it before the checkpoint callback: the epoch's checkpoint then holds the mean that includes it,
    so a run resumed from it neither misses nor repeats an epoch.
    """

    def __init__(self, average: WeightAverage, start_epoch: int):
        super().__init__()
        if start_epoch < 0:
            raise ValueError(f"the averaging starts after a non-negative number of epochs, got {start_epoch}")
        self.average = average
        self.start_epoch = int(start_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 > self.start_epoch:
            self.average.update()


def batchnorm_layers(network: keras.Model) -> list:
    """Every batch norm of the network (Keras's and `FusedBatchNormalization`, a subclass of it)."""
    return [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batchnorm_statistics(network: keras.Model, batches) -> int:
    """Set every batch norm's moving mean and variance to the mean of its batch statistics over `batches`.

    `batches` yields network inputs (or `(inputs, targets)` pairs). The network runs in training
    mode, eagerly, with each layer's momentum set before batch k to (k − 1) / k, so the moving
    average becomes the plain mean over all batches; the momenta are put back afterwards. Returns
    the number of batches (ValueError when there were none: the statistics would be lost).
    """
    layers = batchnorm_layers(network)
    momenta = [layer.momentum for layer in layers]
    saved = [(keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))
             for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    count = 0
    try:
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            count += 1
            for layer in layers:
                layer.momentum = (count - 1) / count
            network(inputs, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        if count == 0:
            for layer, (mean, variance) in zip(layers, saved):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
    if count == 0:
        raise ValueError("no batches to measure the batch-norm statistics on")
    return count


__all__ = ["AverageWeightsEachEpoch", "WeightAverage", "batchnorm_layers", "recompute_batchnorm_statistics"]
