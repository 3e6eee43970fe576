"""300-W landmark metrics in numpy: NME, cumulative error distribution, AUC and failure rate.

Computed the way published face-alignment code computes them (DESIGN.md section 3), so that the
numbers can sit beside the paper's Tables 5-7:

* per-image NME = mean over the 68 points of ||pred - gt|| / d, with d either the inter-ocular
  distance ||gt[36] - gt[45]|| (outer eye corners, 0-based) or the inter-pupil distance
  ||mean(gt[36:42]) - mean(gt[42:48])|| (centres of the two eye contours);
* a subset's NME is the plain mean of its per-image NMEs (image-weighted, so "full" is the mean over
  all 689 images, not the mean of the common and challenging means);
* CED(x) = fraction of images whose NME <= x (an image exactly at x counts as a success), on the grid
  x = 0, 1e-4, ..., 0.08 (801 points, each the float nearest to k / 10000);
* AUC_0.08 = Simpson's rule (``scipy.integrate.simpson``) of CED over that grid, divided by 0.08, so a
  perfect localiser scores 1 and errors spread uniformly on [0, 0.08] score 0.5;
* FR_0.08 = 1 - CED(0.08) = fraction of images whose NME > 0.08.

All functions take fractions (0.05 means 5 %); callers multiply by 100 for tables.
A non-finite error (a face the detector missed, say) is larger than every threshold: it is never a
success and always a failure.
"""
from __future__ import annotations

import numpy as np
from scipy.integrate import simpson

NUM_LANDMARKS = 68
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45  # 0-based outer eye corners of the 68-point markup
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # the two six-point eye contours
AUC_THRESHOLD = 0.08
CED_STEP_DIVISOR = 10_000  # grid step 1e-4 = 1 / 10000


def ced_grid(threshold: float = AUC_THRESHOLD, divisor: int = CED_STEP_DIVISOR) -> np.ndarray:
    """x = 0, 1/divisor, ..., threshold; each value is k / divisor rounded once (0.04 is exactly 0.04)."""
    steps = int(round(threshold * divisor))
    return np.arange(steps + 1, dtype=np.float64) / divisor


def _as_points(points) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim < 2 or array.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected points of shape (..., {NUM_LANDMARKS}, 2), got {array.shape}")
    return array


def inter_ocular_distance(gt) -> np.ndarray:
    """||gt[36] - gt[45]||: distance between the outer eye corners, per image."""
    gt = _as_points(gt)
    return np.linalg.norm(gt[..., LEFT_EYE_OUTER, :] - gt[..., RIGHT_EYE_OUTER, :], axis=-1)


def inter_pupil_distance(gt) -> np.ndarray:
    """||mean(gt[36:42]) - mean(gt[42:48])||: distance between the eye-contour centres, per image."""
    gt = _as_points(gt)
    left = gt[..., LEFT_EYE, :].mean(axis=-2)
    right = gt[..., RIGHT_EYE, :].mean(axis=-2)
    return np.linalg.norm(left - right, axis=-1)


NORMALISERS = {"inter_ocular": inter_ocular_distance, "inter_pupil": inter_pupil_distance}


def nme(pred, gt, normalisation: str = "inter_ocular") -> np.ndarray:
    """Per-image normalised mean error (a fraction), shape (...) for points of shape (..., 68, 2)."""
    if normalisation not in NORMALISERS:
        raise ValueError(f"normalisation must be one of {sorted(NORMALISERS)}, got {normalisation!r}")
    pred, gt = _as_points(pred), _as_points(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    distance = NORMALISERS[normalisation](gt)
    if np.any(distance <= 0):
        raise ValueError("a ground truth has a zero normalising distance (both eyes at one point)")
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) / distance


def _as_errors(errors) -> np.ndarray:
    array = np.asarray(errors, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("no errors given: a subset needs at least one image")
    if np.any(np.isnan(array)):
        raise ValueError("errors contain NaN; use inf for a face without a prediction")
    return array


def mean_nme(errors) -> float:
    """Image-weighted mean of per-image errors."""
    return float(_as_errors(errors).mean())


def ced(errors, grid=None) -> np.ndarray:
    """Cumulative error distribution: for each x of the grid, the fraction of images with error <= x."""
    errors = np.sort(_as_errors(errors))
    grid = ced_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    return np.searchsorted(errors, grid, side="right") / errors.size


def auc(errors, threshold: float = AUC_THRESHOLD) -> float:
    """Area under the CED on [0, threshold] by Simpson's rule, divided by threshold (1 = perfect)."""
    grid = ced_grid(threshold)
    return float(simpson(ced(errors, grid), x=grid) / threshold)


def failure_rate(errors, threshold: float = AUC_THRESHOLD) -> float:
    """1 - CED(threshold): the fraction of images whose error exceeds the threshold."""
    return float(1.0 - ced(errors, np.array([threshold]))[0])


def summarize(errors_io, errors_ip, threshold: float = AUC_THRESHOLD) -> dict:
    """One subset's row in percent: n, NME IO, NME IP, AUC and FR at the threshold (inter-ocular)."""
    errors_io, errors_ip = _as_errors(errors_io), _as_errors(errors_ip)
    if errors_io.size != errors_ip.size:
        raise ValueError(f"{errors_io.size} inter-ocular errors but {errors_ip.size} inter-pupil errors")
    return {
        "n": int(errors_io.size),
        "nme_io": 100.0 * mean_nme(errors_io),
        "nme_ip": 100.0 * mean_nme(errors_ip),
        "auc08_io": 100.0 * auc(errors_io, threshold),
        "fr08_io": 100.0 * failure_rate(errors_io, threshold),
    }
