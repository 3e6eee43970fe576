"""Find and revive dead heat-map channels: landmarks whose heat-map is zero on every face.

Each heat-map head of CFDRNN ends conv 1×1 → batch norm → ReLU (paper Tables 2–3). When the batch
norm's β of a channel drifts far enough below γ·x̂ for every pixel of every face, the ReLU outputs
zero everywhere and passes no gradient back: the channel can never learn again. Its landmark is
then placed by the offset head alone, from the argmax of an all-zero map, pixel (0, 0), up to the
whole crop away (docs/TRAINING.md, "Decoding"). The packaged `mobile` network had 22 such
channels over its four stages (9 of the last stage's 68), and a network started from it
inherits them.

The remedy is the usual one for dead ReLUs: put the channel back where half of its pixels are
positive (β = 0, and γ at least the scale a fresh head starts with, `head_gamma`), so the loss
reaches its weights again. That moves the map's argmax off pixel (0, 0), and the offset head, which
had learnt to reach from the corner, is then off by about half the crop; relearning that at Adam's
step of one learning rate per step takes epochs (measured: validation NME 4.4 → 21 % and 14 % three
epochs later). So `recentre_offsets` shifts the stage's offset β of each revived point by the
mean residual on the probe faces (ground truth − new coarse peak − predicted offset), which
removes that jump at once. `ReviveDeadHeatmaps` checks a fixed probe batch of training crops
(never validation faces) before training and at the start of every epoch, so a resumed run
revives exactly what the uninterrupted run would have.

Even so, reviving a *trained* network is not free: later stages and the offset branches read every
stage's maps, so a channel that comes back perturbs every point, and the packaged `mobile` needed
more than a few epochs to recover (docs/TRAINING.md, "Dead heat-map channels"). Hence `tools/train.py
--revive-dead-heatmaps auto` (the default) revives in runs from fresh weights, where channels die
early and come back at little cost, and only reports them in runs from `--init-weights`.
"""
from __future__ import annotations

import math

import keras
import numpy as np

HEATMAP_BN_SUFFIX = "conv1x1_H_bn"


def head_gamma(heatmap_size: int, sigma: float, activation: str = "relu") -> float:
    """γ of a heat-map head's last batch norm at which its output, relu(γ·x̂) or γ·x̂ with x̂ ~ N(0, 1),
    has about a target's energy: Σ over the H×W pixels of out² ≈ πσ² (see `trainer.scale_output_heads`).
    A ReLU keeps half of the energy, hence √2 more."""
    from ..config import HEATMAP_ACTIVATIONS

    if activation not in HEATMAP_ACTIVATIONS:
        raise ValueError(f"unknown heat-map activation {activation!r}; choose {' or '.join(HEATMAP_ACTIVATIONS)}")
    halves = 2.0 if activation == "relu" else 1.0
    return math.sqrt(halves * math.pi) * float(sigma) / float(heatmap_size)


def heatmap_batchnorms(network: keras.Model) -> dict:
    """{batch-norm layer name: [the `heatmaps_j` outputs it feeds]} for the heads that have a loss.

    Stage 1's map comes from `resizer0`, stages 2–4 from `hml1..3` (or one shared `hml` branch,
    which feeds all three); `resizer_r`'s map Hr has no loss of its own and is left alone. Linear
    heads (`CFDRNNConfig.heatmap_activation`) cannot die, so a network with them has none to list.
    """
    from ..model.network import heatmap_activation

    names = {layer.name for layer in network.layers}
    if f"resizer0.{HEATMAP_BN_SUFFIX}" in names and heatmap_activation(network) == "linear":
        return {}
    heads = {}
    if f"resizer0.{HEATMAP_BN_SUFFIX}" in names:
        heads[f"resizer0.{HEATMAP_BN_SUFFIX}"] = ["heatmaps_1"]
    if f"hml.{HEATMAP_BN_SUFFIX}" in names:
        heads[f"hml.{HEATMAP_BN_SUFFIX}"] = ["heatmaps_2", "heatmaps_3", "heatmaps_4"]
    for j in (1, 2, 3):
        if f"hml{j}.{HEATMAP_BN_SUFFIX}" in names:
            heads[f"hml{j}.{HEATMAP_BN_SUFFIX}"] = [f"heatmaps_{j + 1}"]
    if not heads:
        raise ValueError(f"{network.name}: has no heat-map heads ({HEATMAP_BN_SUFFIX} layers)")
    return heads


def dead_channels(inputs, gamma, beta, epsilon: float = 1e-3) -> list:
    """Sorted channels for which batch norm in training mode (the statistics of this batch) then ReLU
    outputs nothing positive: max over the batch and pixels of γ·(x − μ)/√(σ² + ε) + β ≤ 0.

    `inputs` is a list of (B, H, W, C) arrays, the batch norm's input at each of its calls (one, or
    three for a shared branch); a channel is dead only where it is dead in every call. Training-mode
    statistics, because that is what decides whether a gradient can reach the channel: a fresh
    network's moving averages (mean 0, variance 1) leave many channels all-negative at inference
    although every one of them learns.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    alive = np.zeros(gamma.shape, bool)
    for x in inputs:
        x = np.asarray(x, dtype=np.float64).reshape(-1, gamma.shape[0])
        mean, variance = x.mean(axis=0), x.var(axis=0)
        slope = gamma / np.sqrt(variance + epsilon)
        highest = np.where(slope >= 0, slope * (x.max(axis=0) - mean), slope * (x.min(axis=0) - mean)) + beta
        alive |= highest > 0.0
    return sorted(int(c) for c in np.flatnonzero(~alive))


def find_dead_heatmaps(network: keras.Model, images, batch_size: int = 16) -> dict:
    """{batch-norm name: `dead_channels`} of `network`'s heat-map heads on `images` (B, S, S, 3) in the
    model's range; the layers before each head run in inference mode."""
    heads = heatmap_batchnorms(network)
    if not heads:
        return {}  # linear heads
    tensors = {}
    for bn_name in heads:
        # every call of the layer (a shared branch has three): Keras has no public accessor for them
        for call, node in enumerate(network.get_layer(bn_name)._inbound_nodes):
            tensors[f"{bn_name}/{call}"] = node.input_tensors[0]
    probe = keras.Model(network.inputs, tensors, name="heatmap_probe")
    outputs = probe.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0)
    dead = {}
    for bn_name in heads:
        layer = network.get_layer(bn_name)
        calls = [outputs[key] for key in tensors if key.rsplit("/", 1)[0] == bn_name]
        channels = dead_channels(calls, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta),
                                 layer.epsilon)
        if channels:
            dead[bn_name] = channels
    return dead


def revive(network: keras.Model, dead: dict, gamma: float) -> int:
    """Set β = 0 and |γ| ≥ `gamma` for each dead channel (γ keeps its sign); returns how many."""
    count = 0
    for bn_name, channels in dead.items():
        layer = network.get_layer(bn_name)
        index = np.asarray(channels, dtype=np.int64)
        beta = np.array(keras.ops.convert_to_numpy(layer.beta), dtype=np.float32)
        beta[index] = 0.0
        layer.beta.assign(beta.astype(layer.beta.dtype))
        scale = np.array(keras.ops.convert_to_numpy(layer.gamma), dtype=np.float32)
        sign = np.where(scale[index] < 0, -1.0, 1.0)
        scale[index] = sign * np.maximum(np.abs(scale[index]), gamma)
        layer.gamma.assign(scale.astype(layer.gamma.dtype))
        count += len(channels)
    return count


def offset_batchnorm(heatmap_output: str) -> str:
    """The batch norm whose β is the offset Δ_j of the stage `heatmaps_j` belongs to."""
    return f"lml{int(heatmap_output.rsplit('_', 1)[1])}.conv1x1_delta_bn"


def recentre_offsets(network: keras.Model, dead: dict, images, landmarks, stride: int, input_size: int) -> None:
    """For each revived point of each stage: Δ's β += mean over the images of (landmarks − coarse peak −
    Δ), so the stage's points are unbiased on these faces again. `landmarks` (B, N, 2) normalised."""
    from ..model.codec import heatmap_peaks_numpy

    heads = heatmap_batchnorms(network)
    stages = sorted({output for bn_name in dead for output in heads[bn_name]})
    wanted = stages + [output.replace("heatmaps_", "delta_") for output in stages]
    probe = keras.Model(network.inputs, {name: network.output[name] for name in wanted}, name="offset_probe")
    outputs = probe.predict(np.asarray(images, dtype=np.float32), batch_size=16, verbose=0)
    truth = np.asarray(landmarks, dtype=np.float32)
    for bn_name, channels in dead.items():
        for output in heads[bn_name]:
            coarse, _ = heatmap_peaks_numpy(outputs[output], stride, input_size)
            offsets = np.asarray(outputs[output.replace("heatmaps_", "delta_")], dtype=np.float32)
            residual = (truth - coarse - offsets).mean(axis=0)  # (N, 2)
            layer = network.get_layer(offset_batchnorm(output))
            beta = np.array(keras.ops.convert_to_numpy(layer.beta), dtype=np.float32).reshape(-1, 2)
            beta[channels] += residual[channels]
            layer.beta.assign(beta.reshape(-1).astype(layer.beta.dtype))


def describe(dead: dict, heads: dict) -> str:
    """`heatmaps_4: 2, 9, 11` style text, one part per head (empty when nothing is dead)."""
    parts = []
    for bn_name, channels in dead.items():
        label = "+".join(heads.get(bn_name, [bn_name]))
        parts.append(f"{label}: {', '.join(str(c) for c in channels)}")
    return "; ".join(parts)


class ReviveDeadHeatmaps(keras.callbacks.Callback):
    """At the start of every epoch (the first one included): find dead heat-map channels on `images`, a
    fixed batch of training crops, and revive them, re-centring their offsets on `landmarks` (the
    crops' normalised points; None: no re-centring). revive=False only reports them, once and again
    when the set changes; so do epochs from `revive_epochs` on (0-based; None: every epoch revives),
    because late in a schedule a revival costs more than it gains (docs/TRAINING.md: 5.38 → 6.91 %
    at epoch 26 of 50). Revivals are printed and kept in `self.revived` ({epoch: {batch-norm name:
    channels}}, epochs 0-based as Keras counts them)."""

    def __init__(self, images, network: keras.Model, heatmap_size: int, sigma: float, landmarks=None,
                 stride: int = 4, revive: bool = True, log=print, revive_epochs: int | None = None):
        super().__init__()
        self.images = np.asarray(images, dtype=np.float32)
        self.landmarks = None if landmarks is None else np.asarray(landmarks, dtype=np.float32)
        self.stride = int(stride)
        self.network = network
        self.gamma = head_gamma(heatmap_size, sigma)
        self.reviving = bool(revive)
        self.revive_epochs = None if revive_epochs is None else int(revive_epochs)
        self.log = log
        self.revived = {}
        self._reported = None
        self._heads = heatmap_batchnorms(network)

    def check(self, epoch: int) -> dict:
        if not len(self.images):
            return {}
        dead = find_dead_heatmaps(self.network, self.images)
        late = self.revive_epochs is not None and epoch >= self.revive_epochs
        if dead and (late or not self.reviving):
            if dead != self._reported and self.log:  # once, and again only when the set changes
                count = sum(len(channels) for channels in dead.values())
                why = (f"past the first {self.revive_epochs} epoch(s) of the schedule, where a revival costs more "
                       "than it gains" if self.reviving else "the run started from trained weights")
                self.log(f"epoch {epoch + 1}: {count} dead heat-map channel(s), not revived: {why}; "
                         f"--revive-dead-heatmaps always revives them ({describe(dead, self._heads)})")
            self._reported = dead
            return dead
        if dead:
            count = revive(self.network, dead, self.gamma)
            if self.landmarks is not None:
                recentre_offsets(self.network, dead, self.images, self.landmarks, self.stride, self.images.shape[1])
            self.revived[epoch] = dead
            if self.log:
                self.log(f"epoch {epoch + 1}: revived {count} dead heat-map channel(s) ({describe(dead, self._heads)})")
        return dead

    def on_epoch_begin(self, epoch, logs=None):
        self.check(epoch)


__all__ = ["ReviveDeadHeatmaps", "dead_channels", "describe", "find_dead_heatmaps", "head_gamma",
           "heatmap_batchnorms", "offset_batchnorm", "recentre_offsets", "revive"]
