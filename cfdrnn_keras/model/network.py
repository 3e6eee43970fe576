"""The CFDRNN network (Mahpod et al., Tables 2–4) as one Keras functional graph.

Layer names map to the paper's tables: `resizer0.conv9x9_1` is the first 9×9 convolution of the
resizer block instance that gives D0 and H1, `hml2.conv13x13` the 13×13 convolution of the second
heat-map-level branch, `lml3.conv3x3_512` the first layer after the E3 ⊕ E2 link of the third
landmark-level branch. Every convolution is followed by batch normalisation (paper 5.1).
"""
from __future__ import annotations

import keras
from keras import layers

from .codec import HeatmapDecoder
from ..config import CFDRNNConfig
from .layers import FusedBatchNormalization, batch_norm

HEATMAP_OUTPUTS = tuple(f"heatmaps_{j}" for j in range(1, 5))
DELTA_OUTPUTS = tuple(f"delta_{j}" for j in range(1, 5))
OUTPUT_NAMES = HEATMAP_OUTPUTS + DELTA_OUTPUTS + ("landmarks", "confidence")


class _Builder:
    """Creates named conv → BN (→ ReLU) stacks with the config's width and batch-norm choice."""

    def __init__(self, config: CFDRNNConfig):
        self.config = config

    def conv(self, x, name, paper_filters, kernel, stride=1, relu=True, scale_width=True):
        filters = self.config.filters(paper_filters) if scale_width else paper_filters
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
        x = batch_norm(self.config.fused_batchnorm, name=f"{name}_bn")(x)
        if relu:
            x = layers.ReLU(name=f"{name}_relu")(x)
        return x

    @staticmethod
    def pool(x, name, stride):
        return layers.MaxPooling2D(pool_size=2, strides=stride, padding="same", name=name)(x)


def _resizer_block(b: _Builder, image, prefix: str):
    """Table 2: image → (D, H) at a quarter of the input size."""
    n = b.config.num_landmarks
    x = b.conv(image, f"{prefix}.conv3x3_1", 64, 3)
    x = b.conv(x, f"{prefix}.conv3x3_2", 64, 3)
    x = b.pool(x, f"{prefix}.pool_1", 2)
    x = b.conv(x, f"{prefix}.conv3x3_3", 64, 3)
    x = b.conv(x, f"{prefix}.conv3x3_4", 128, 3)
    x = b.pool(x, f"{prefix}.pool_2", 2)
    x = b.conv(x, f"{prefix}.conv3x3_5", 128, 3)
    t = b.conv(x, f"{prefix}.conv3x3_6", 128, 3)  # T
    d = b.conv(t, f"{prefix}.conv1x1_D", n, 1, relu=False, scale_width=False)  # D (no ReLU)
    x = b.conv(t, f"{prefix}.conv9x9_1", 128, 9)
    x = b.conv(x, f"{prefix}.conv9x9_2", 128, 9)
    x = b.conv(x, f"{prefix}.conv1x1_1", 256, 1)
    x = b.conv(x, f"{prefix}.conv1x1_2", 256, 1)
    x = layers.Dropout(b.config.dropout, name=f"{prefix}.dropout")(x)
    h = b.conv(x, f"{prefix}.conv1x1_H", n, 1, relu=b.config.heatmap_activation == "relu", scale_width=False)
    return d, h


class _HMLBranch:
    """Table 3: H_{j+1} = branch_j(D0 ⊕ H_j). Calling one instance twice shares its weights."""

    def __init__(self, b: _Builder, prefix: str):
        n = b.config.num_landmarks
        cfg = b.config
        fused = cfg.fused_batchnorm
        spec = [
            ("conv7x7", 64, 7, True, True),
            ("conv13x13", 64, 13, True, True),
            ("conv1x1_128", 128, 1, True, True),
            ("conv1x1_H", n, 1, cfg.heatmap_activation == "relu", False),
        ]
        self.stages = []
        for suffix, filters, kernel, relu, scale_width in spec:
            name = f"{prefix}.{suffix}"
            width = cfg.filters(filters) if scale_width else filters
            conv = layers.Conv2D(width, kernel, padding="same", use_bias=False, name=name)
            bn = batch_norm(fused, name=f"{name}_bn")
            act = layers.ReLU(name=f"{name}_relu") if relu else None
            self.stages.append((conv, bn, act))
        self.prefix = prefix

    def __call__(self, d0, h, concat_name):
        x = layers.Concatenate(name=concat_name)([d0, h])
        for conv, bn, act in self.stages:
            x = bn(conv(x))
            if act is not None:
                x = act(x)
        return x


def _lml_branch(b: _Builder, features, e_previous, j: int):
    """Table 4: offsets ΔL_j (B, N, 2) from D0 ⊕ H_j ⊕ Dr ⊕ Hr, linked to the previous branch's E."""
    p = f"lml{j}"
    n = b.config.num_landmarks
    x = b.conv(features, f"{p}.conv7x7", 64, 7, stride=2)
    x = b.pool(x, f"{p}.pool_1", 1)
    x = b.conv(x, f"{p}.conv5x5", 128, 5, stride=2)
    x = b.pool(x, f"{p}.pool_2", 1)
    x = b.conv(x, f"{p}.conv3x3_256", 256, 3, stride=2)
    e = b.pool(x, f"{p}.pool_3_E", 1)
    x = e if e_previous is None else layers.Concatenate(name=f"{p}.concat_E{j}_E{j - 1}")([e, e_previous])
    x = b.conv(x, f"{p}.conv3x3_512", 512, 3, stride=2)
    x = b.pool(x, f"{p}.pool_4", 1)
    x = b.conv(x, f"{p}.conv3x3_1024", 1024, 3, stride=2)
    x = b.pool(x, f"{p}.pool_5", 1)
    x = b.conv(x, f"{p}.conv1x1_delta", 2 * n, 1, stride=2, relu=False, scale_width=False)
    delta = layers.Reshape((n, 2), name=f"delta_{j}", dtype="float32")(x)
    return delta, e


def build_cfdrnn(config: CFDRNNConfig | None = None, name: str = "cfdrnn") -> keras.Model:
    """Build the CFDRNN functional model for `config` (default: the paper's network).

    Input `image`: (B, S, S, 3) RGB in [-0.5, 0.5]. Outputs (dict): `heatmaps_1..4` (B, S/4, S/4, N),
    `delta_1..4` (B, N, 2) normalised offsets, `landmarks` (B, N, 2) normalised crop coordinates
    (Eq. 4) and `confidence` (B, N), the peak of each final heat-map.
    """
    config = config or CFDRNNConfig()
    b = _Builder(config)
    size = config.input_size
    image = keras.Input((size, size, 3), name="image")

    d0, h1 = _resizer_block(b, image, "resizer0")
    dr, hr = _resizer_block(b, image, "resizer_r")

    heatmaps = [h1]
    shared = _HMLBranch(b, "hml") if config.share_hml_weights else None
    for j in (1, 2, 3):
        branch = shared or _HMLBranch(b, f"hml{j}")
        heatmaps.append(branch(d0, heatmaps[-1], concat_name=f"hml{j}.concat_D0_H{j}"))

    deltas, e_previous = [], None
    for j in (1, 2, 3, 4):
        features = layers.Concatenate(name=f"lml{j}.concat_D0_H{j}_Dr_Hr")([d0, heatmaps[j - 1], dr, hr])
        delta, e_previous = _lml_branch(b, features, e_previous, j)
        deltas.append(delta)

    named_heatmaps = [
        layers.Activation("linear", dtype="float32", name=HEATMAP_OUTPUTS[j])(h) for j, h in enumerate(heatmaps)
    ]
    landmarks, confidence = HeatmapDecoder(config.stride, size, dtype="float32", name="decoder")(
        named_heatmaps[-1], deltas[-1]
    )
    landmarks = layers.Activation("linear", dtype="float32", name="landmarks")(landmarks)
    confidence = layers.Activation("linear", dtype="float32", name="confidence")(confidence)

    outputs = dict(zip(HEATMAP_OUTPUTS, named_heatmaps))
    outputs.update(zip(DELTA_OUTPUTS, deltas))
    outputs.update(landmarks=landmarks, confidence=confidence)
    return keras.Model(image, outputs, name=name)


def heatmap_activation(model: keras.Model) -> str:
    """"relu" or "linear": what ends a built (or loaded) CFDRNN's heat-map heads (the activation has no
    weights, so the graph's layers are the only record of it)."""
    names = {layer.name for layer in model.layers}
    return "relu" if "resizer0.conv1x1_H_relu" in names else "linear"


def config_from_model(model: keras.Model, heatmap_sigma: float = 1.3) -> CFDRNNConfig:
    """Recover the CFDRNNConfig of a built (or loaded) CFDRNN model from its layers.

    σ is a training-time value the graph does not hold; pass it where it matters.
    """
    first = model.get_layer("resizer0.conv3x3_1")
    names = {layer.name for layer in model.layers}
    return CFDRNNConfig(
        input_size=int(model.input_shape[1]),
        num_landmarks=int(model.get_layer("decoder").output[0].shape[1]),
        stride=int(model.get_layer("decoder").stride),
        width=first.filters / 64.0,
        share_hml_weights="hml.conv7x7" in names,
        dropout=float(model.get_layer("resizer0.dropout").rate),
        heatmap_sigma=heatmap_sigma,
        fused_batchnorm=isinstance(model.get_layer("resizer0.conv3x3_1_bn"), FusedBatchNormalization),
        heatmap_activation=heatmap_activation(model),
    )
