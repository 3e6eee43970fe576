"""The CFDRNN training losses, one per named head, and the in-graph NME used to watch training.

Scale (why these reductions): both kinds of term are "squared localisation error per landmark in
heat-map pixels", so a point misplaced by d heat-map pixels costs about the same in either:

* heat-map L2 = squared error summed over the H×W pixels, averaged over landmarks and images. For a
  Gaussian of σ moved by d pixels, Σ (g(p) − g(p − d))² = 2πσ²(1 − exp(−d²/4σ²)) ≈ (π/2)·d² for
  small d; a heat-map of zeros costs πσ² ≈ 5.3 (σ = 1.3), a random one saturates at 2πσ² ≈ 10.6.
* delta L2 = ‖Δ_pred − Δ_target‖² with Δ in heat-map pixels (normalised offset × input_size / stride),
  averaged over landmarks and images: d² for an offset wrong by d pixels.

A mean over pixels instead would make the heat-map term 4096× smaller than the delta term, and
offsets in normalised units would make the delta term 256× smaller than the heat-map term; both
starve one half of the network (measured figures in docs/TRAINING.md).

The delta targets come from the network's own heat-maps of the same forward pass (paper Eqs. 1–4):
Δ_target_j = L_gt − s·argmax(H_j)/input_size, with no gradient through the argmax.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from keras import ops

from ..model.codec import heatmap_peaks

HEATMAP_HEADS = tuple(f"heatmaps_{j}" for j in range(1, 5))
DELTA_HEADS = tuple(f"delta_{j}" for j in range(1, 5))
HEADS = HEATMAP_HEADS + DELTA_HEADS


def heatmap_l2(target, predicted):
    """Per-image heat-map loss (B,): squared error summed over pixels, averaged over landmarks."""
    target = ops.cast(target, "float32")
    predicted = ops.cast(predicted, "float32")
    per_landmark = ops.sum(ops.square(predicted - target), axis=(1, 2))  # (B, N)
    return ops.mean(per_landmark, axis=-1)


def delta_targets(landmarks, heatmaps, stride: int, input_size: int):
    """Offsets the delta head should output: ground truth minus the heat-maps' own coarse peaks.

    `landmarks` (B, N, 2) and the result are normalised crop coordinates; `heatmaps` (B, H, W, N)
    are the network's predictions. `heatmap_peaks` stops the gradient.
    """
    coarse, _ = heatmap_peaks(ops.cast(heatmaps, "float32"), stride, input_size)
    return ops.cast(landmarks, "float32") - coarse


def delta_l2(target, predicted, stride: int, input_size: int):
    """Per-image delta loss (B,): squared offset error in heat-map pixels, averaged over landmarks."""
    scale = float(input_size) / float(stride)
    error = (ops.cast(predicted, "float32") - ops.cast(target, "float32")) * scale
    return ops.mean(ops.sum(ops.square(error), axis=-1), axis=-1)


def _offset_distance(target, predicted, stride: int, input_size: int):
    """(B, N) Euclidean offset error in heat-map pixels (ε under the root keeps its gradient finite at 0)."""
    scale = float(input_size) / float(stride)
    error = (ops.cast(predicted, "float32") - ops.cast(target, "float32")) * scale
    return ops.sqrt(ops.sum(ops.square(error), axis=-1) + 1e-12)


def delta_l1(target, predicted, stride: int, input_size: int):
    """Per-image delta loss (B,): the offset's Euclidean error in heat-map pixels, averaged over landmarks
    (the point-to-point distance NME measures; its gradient does not shrink with the error)."""
    return ops.mean(_offset_distance(target, predicted, stride, input_size), axis=-1)


WING_WIDTH, WING_CURVATURE = 2.5, 0.5  # Feng et al. 2018's w = 10, ε = 2 input pixels, in heat-map pixels (÷ 4)


def delta_wing(target, predicted, stride: int, input_size: int, width: float = WING_WIDTH,
               curvature: float = WING_CURVATURE):
    """Per-image Wing loss (B,) on the offset's Euclidean error d in heat-map pixels (Feng et al. 2018):
    w·ln(1 + d/ε) below w, d − C above (C = w − w·ln(1 + w/ε) joins the two): steep for small errors,
    linear for large ones."""
    d = _offset_distance(target, predicted, stride, input_size)
    join = width - width * math.log(1.0 + width / curvature)
    loss = ops.where(d < width, width * ops.log(1.0 + d / curvature), d - join)
    return ops.mean(loss, axis=-1)


DELTA_LOSSES = {"l2": delta_l2, "l1": delta_l1, "wing": delta_wing}


def delta_loss_function(name: str):
    """The per-image offset loss called `name` (l2, the paper's; l1; wing); a clear error otherwise."""
    try:
        return DELTA_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown delta loss {name!r}; choose one of {', '.join(DELTA_LOSSES)}") from None


def interocular_nme(landmarks_true, landmarks_pred, left: int = 36, right: int = 45):
    """Per-image NME (B,) normalised by the outer-eye-corner distance (as `cfdrnn_keras.metrics.nme`).

    Any common scale of the two point sets cancels, so normalised crop coordinates work as they are.
    """
    true = ops.cast(landmarks_true, "float32")
    pred = ops.cast(landmarks_pred, "float32")
    error = ops.mean(ops.sqrt(ops.sum(ops.square(pred - true), axis=-1)), axis=-1)
    distance = ops.sqrt(ops.sum(ops.square(true[:, left] - true[:, right]), axis=-1))
    return error / ops.maximum(distance, 1e-12)


@dataclass(frozen=True)
class LossWeights:
    """Weight of each head's loss in the total; 0 switches a head off."""

    heatmaps: tuple = (1.0, 1.0, 1.0, 1.0)
    deltas: tuple = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self):
        for name in ("heatmaps", "deltas"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 4 or any(v < 0 for v in values):
                raise ValueError(f"{name} loss weights must be 4 non-negative numbers, got {values}")
            object.__setattr__(self, name, values)

    def by_head(self) -> dict:
        return dict(zip(HEATMAP_HEADS + DELTA_HEADS, self.heatmaps + self.deltas))

    @classmethod
    def parse(cls, heatmap: str | float = 1.0, delta: str | float = 1.0) -> "LossWeights":
        """From CLI text: one number for all four heads, or four comma-separated numbers."""

        def four(value):
            parts = [float(v) for v in str(value).split(",")]
            if len(parts) == 1:
                parts = parts * 4
            return tuple(parts)

        return cls(four(heatmap), four(delta))


def cfdrnn_losses(y_true: dict, y_pred: dict, stride: int = 4, input_size: int = 256, delta_loss: str = "l2") -> dict:
    """Mean (over the batch) loss of every head: {"heatmaps_1": ..., "delta_4": ...} as scalars.

    `y_true` holds "heatmaps_1".."heatmaps_4" (Gaussian targets) and "landmarks" (normalised);
    `y_pred` is the network's output dict; `delta_loss` names the offset loss (`DELTA_LOSSES`).
    """
    offset_loss = delta_loss_function(delta_loss)
    terms = {}
    for j in range(1, 5):
        hm = f"heatmaps_{j}"
        target = y_true[hm] if hm in y_true else y_true["heatmaps"]
        terms[hm] = ops.mean(heatmap_l2(target, y_pred[hm]))
    for j in range(1, 5):
        target = delta_targets(y_true["landmarks"], y_pred[f"heatmaps_{j}"], stride, input_size)
        terms[f"delta_{j}"] = ops.mean(offset_loss(target, y_pred[f"delta_{j}"], stride, input_size))
    return terms


def total_loss(terms: dict, weights: LossWeights | None = None):
    """Σ weight_head · loss_head over the heads with a non-zero weight."""
    by_head = (weights or LossWeights()).by_head()
    parts = [by_head[name] * terms[name] for name in HEADS if by_head[name] != 0.0]
    return ops.sum(ops.stack(parts)) if parts else ops.zeros(())
