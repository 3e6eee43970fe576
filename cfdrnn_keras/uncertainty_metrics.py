"""How good a per-point uncertainty is (issue 17), numpy only.

* Spearman: rank correlation between the predicted uncertainty and the actual error, over every
  point of every face.
* AUROC: how well the uncertainty separates points off by more than 0.08 of the inter-ocular
  distance from the rest (1 = perfectly, 0.5 = not at all).
* fifths: the points ranked by predicted uncertainty and cut into five equal groups; in each, the
  mean actual error over the mean predicted uncertainty (1 = calibrated; the goal is 0.75–1.25).

Both the ranking metrics use the uncertainty in crop pixels, i.e. relative to the face's size (the
same as dividing photo pixels by the face box), so that a big face's larger pixel errors do not
inflate the correlation; the errors are inter-ocular-normalised. The fifths are in photo pixels, the
unit the user reads.
"""
from __future__ import annotations

import numpy as np

OFF_THRESHOLD = 0.08  # inter-ocular


def _ranks(values) -> np.ndarray:
    """Average ranks (1-based) with ties shared."""
    values = np.asarray(values, np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        if end - start > 1:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def spearman(a, b) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def auroc(score, positive) -> float:
    """Area under the ROC curve of `score` for the boolean labels `positive` (NaN if one class is empty)."""
    score = np.asarray(score, np.float64).ravel()
    positive = np.asarray(positive, bool).ravel()
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _ranks(score)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def fifth_ratios(uncertainty, error, parts: int = 5) -> list[dict]:
    """Points ranked by uncertainty, cut into `parts` equal groups: mean predicted, mean actual, ratio."""
    u = np.asarray(uncertainty, np.float64).ravel()
    e = np.asarray(error, np.float64).ravel()
    groups = np.array_split(np.argsort(u, kind="mergesort"), parts)
    return [{"predicted": float(u[g].mean()), "actual": float(e[g].mean()),
             "ratio": float(e[g].mean() / max(u[g].mean(), 1e-12))} for g in groups if len(g)]


def uncertainty_summary(uncertainty_px, error_px, iod_px, uncertainty_crop=None) -> dict:
    """The report's figures for faces (B, 68): uncertainty and error in photo pixels, inter-ocular
    distances (B,), and the uncertainty in crop pixels (default: photo pixels / inter-ocular)."""
    u = np.asarray(uncertainty_px, np.float64)
    e = np.asarray(error_px, np.float64)
    iod = np.asarray(iod_px, np.float64).reshape(-1, 1)
    relative = u / iod if uncertainty_crop is None else np.asarray(uncertainty_crop, np.float64)
    normalised = e / iod
    fifths = fifth_ratios(u, e)
    return {
        "points": int(u.size),
        "spearman": spearman(relative, normalised),
        "auroc_off_008": auroc(relative, normalised > OFF_THRESHOLD),
        "off_008_fraction": float((normalised > OFF_THRESHOLD).mean()),
        "fifths": fifths,
        "fifth_ratios": [f["ratio"] for f in fifths],
        "mean_uncertainty_px": float(u.mean()),
        "mean_error_px": float(e.mean()),
    }


__all__ = ["OFF_THRESHOLD", "auroc", "fifth_ratios", "spearman", "uncertainty_summary"]
