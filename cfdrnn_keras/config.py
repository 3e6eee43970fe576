"""One configuration object for the network, so a model, its training run and its export agree.

A `CFDRNNConfig` is a frozen dataclass that round-trips through JSON; presets name the two
configurations the project supports: `paper` (exactly Mahpod et al.), `lite` (quarter width at the
paper's 256² input) and `mobile` (quarter width at 128² input: 16× fewer FLOPs than `paper`, for
CPU-only training and devices; the packaged model uses it).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


HEATMAP_ACTIVATIONS = ("relu", "linear")


@dataclass(frozen=True)
class CFDRNNConfig:
    """Shape and regularisation of a CFDRNN network.

    Attributes:
        input_size: side of the square RGB face crop (paper: 256).
        num_landmarks: points per face (68 for the 300-W markup).
        stride: input pixels per heat-map pixel (paper: s = 4).
        width: multiplier on every hidden conv's filter count (1.0 = paper). Heads that emit one
            channel per landmark, or the 2·N offsets, keep their size.
        share_hml_weights: one set of weights for the three heat-map-level branches
            (the paper gives each its own; DESIGN.md marks this as a choice).
        dropout: dropout rate in the resizer block (paper: 0.5).
        heatmap_sigma: Gaussian σ of the target heat-maps in heat-map pixels (paper Eq. 5: 1.3).
        fused_batchnorm: use the fused TensorFlow batch-norm kernel where the backend allows
            (same weights and semantics as Keras's layer; about twice as fast to train on CPU).
        heatmap_activation: what ends each heat-map head (conv 1×1 → batch norm → ?): "relu", the
            paper's, or "linear", as HRNet's heads end. A ReLU head can die on some faces and not
            others (the map is then zero and its point's offset target jumps by the whole crop);
            a linear head always passes a gradient (docs/TRAINING.md, "Linear heat-map heads").
    """

    input_size: int = 256
    num_landmarks: int = 68
    stride: int = 4
    width: float = 1.0
    share_hml_weights: bool = False
    dropout: float = 0.5
    heatmap_sigma: float = 1.3
    fused_batchnorm: bool = True
    heatmap_activation: str = "relu"

    def __post_init__(self):
        if self.input_size <= 0 or self.input_size % (self.stride * 16):
            raise ValueError(
                f"input_size must be a positive multiple of {self.stride * 16} "
                f"(stride {self.stride} × the landmark level's 16× reduction), got {self.input_size}"
            )
        if self.stride != 4:
            raise ValueError(f"stride must be 4 (two 2×2 max-pools in the resizer block), got {self.stride}")
        if self.num_landmarks <= 0:
            raise ValueError(f"num_landmarks must be positive, got {self.num_landmarks}")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.heatmap_sigma <= 0:
            raise ValueError(f"heatmap_sigma must be positive, got {self.heatmap_sigma}")
        if self.heatmap_activation not in HEATMAP_ACTIVATIONS:
            raise ValueError(f"heatmap_activation must be one of {', '.join(HEATMAP_ACTIVATIONS)}, "
                             f"got {self.heatmap_activation!r}")

    @property
    def heatmap_size(self) -> int:
        return self.input_size // self.stride

    def filters(self, paper_filters: int) -> int:
        """Hidden filter count for a layer that has `paper_filters` in the paper (at least 4)."""
        return max(4, int(round(paper_filters * self.width)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CFDRNNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CFDRNNConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CFDRNNConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "CFDRNNConfig":
        return dataclasses.replace(self, **changes)


PRESETS = {
    "paper": CFDRNNConfig(),
    "lite": CFDRNNConfig(width=0.25),
    "mobile": CFDRNNConfig(input_size=128, width=0.25),
}


def get_preset(name: str) -> CFDRNNConfig:
    """The configuration a preset name stands for; a clear error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
