"""How the ensemble's estimates are combined: per-point weights over (network, stage) and a per-point
offset, fitted by least squares on the training faces.

Why. The test-time ensemble (`ensemble.py`) averaged its estimates (every stage of every network, the
crop and its mirror) with equal weights. Two things that average cannot do, measured on the packaged
`accurate` model (docs/TRAINING.md, "Fused estimates"):

* The stages are not equally good, and not equally good at every point: the first is the worst, and
  the wide ReLU network's last stage is worse than its second. Weights per point, one per (network,
  stage), let the better estimates count more.
* The 300-W markup sits about 0.45 crop pixels (0.6 % of the inter-ocular distance) to the right of
  where a mirror-symmetric reading of the face puts it, on the training faces, the validation faces
  and the full-size sample photos alike. Training mirrors half the faces, so a network can learn any
  bias that mirrors with the face, but not this one: it predicts the symmetric position and misses
  every annotation by the same amount. The flip test does not remove it either. A constant offset
  per point puts it back.

The fit (`fit_fusion`) is per point: for point k, weights w_k (summing to one) and an offset b_k
minimise Σ over faces of |Σ_j w_kj x_kj + b_k − y_k|² on the training faces the networks learned
from (never the validation faces): a linear least-squares problem, closed form. A point and its
mirror partner (the 300-W left/right permutation) share their weights, so a face and its mirror are
fused alike; each keeps its own offset, since the offset is exactly what does not mirror. On 5-fold
cross-validation over the training faces, per-point weights and offsets beat one set of weights with
one offset, and that beats the plain mean, for every packaged ensemble.

The entry is stored per ensemble (flip test on/off × four stages/last) in the model's calibration
file (`NAME.uncertainty.json`, `"fusion"` in each ensemble's entry); `build_test_time_model(...,
fusion=entry)` builds it into the graph: `StageAverage(weights=...)` and `PointOffset(offsets)`.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

FUSION_KEY = "fusion"


@keras.saving.register_keras_serializable(package="cfdrnn")
class PointOffset(keras.layers.Layer):
    """Landmarks (B, N, 2), normalised crop coordinates → landmarks + a constant offset per point."""

    def __init__(self, offsets, **kwargs):
        super().__init__(**kwargs)
        self.offsets = [[float(x), float(y)] for x, y in offsets]

    def call(self, landmarks):
        return ops.cast(landmarks, "float32") + ops.convert_to_tensor(self.offsets, dtype="float32")[None]

    def compute_output_spec(self, landmarks):
        return keras.KerasTensor(landmarks.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(offsets=[list(row) for row in self.offsets])
        return config


def fit_fusion(estimates: np.ndarray, truth: np.ndarray, permutation=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-point weights (K, N), each column summing to one, and offsets (N, 2) by least squares.

    estimates: (K, B, N, 2), the K estimates of B faces' N points; truth: (B, N, 2), same units.
    permutation: the left/right point swap (e.g. the 68-point one): a point and its mirror partner
        share their weights (each keeps its own offset), so a face and its mirror are fused alike
        and the flip test stays mirror-equivariant up to the offsets. None: every point on its own.
    With the weights written w = 1/K + Z u (Z spans the vectors summing to zero), each point's (or
    mirror pair's) problem is ordinary least squares in (u, b) over its B·2 coordinates per point.
    """
    estimates = np.asarray(estimates, np.float64)
    truth = np.asarray(truth, np.float64)
    if estimates.ndim != 4 or estimates.shape[1:] != truth.shape or estimates.shape[-1] != 2:
        raise ValueError(f"need estimates (K, B, N, 2) and truth (B, N, 2), got {estimates.shape} and {truth.shape}")
    count, faces, points, _ = estimates.shape
    if faces * 2 < count + 1:
        raise ValueError(f"{faces} faces are too few to fit {count - 1} weights and 2 offsets per point")
    if permutation is not None and sorted(int(i) for i in permutation) != list(range(points)):
        raise ValueError(f"permutation must be a permutation of 0..{points - 1}")
    zero_sum = np.eye(count)[:, :-1] - np.eye(count)[:, -1:]  # (K, K-1)
    weights = np.full((count, points), 1.0 / count)
    offsets = np.zeros((points, 2))
    done = set()
    for k in range(points):
        if k in done:
            continue
        group = sorted({k, int(permutation[k])}) if permutation is not None else [k]
        rows, targets = [], []
        for index, point in enumerate(group):
            x = estimates[:, :, point, :].reshape(count, -1)  # (K, B·2): x0 y0 x1 y1 ...
            axes = np.zeros((faces * 2, 2 * len(group)))
            axes[0::2, 2 * index] = 1.0  # this point's x offset
            axes[1::2, 2 * index + 1] = 1.0  # and its y offset
            rows.append(np.column_stack([(zero_sum.T @ x).T, axes]))
            targets.append(truth[:, point, :].reshape(-1) - x.mean(0))
        solution = np.linalg.lstsq(np.vstack(rows), np.concatenate(targets), rcond=None)[0]
        for index, point in enumerate(group):
            weights[:, point] += zero_sum @ solution[:count - 1]
            offsets[point] = solution[count - 1 + 2 * index: count + 1 + 2 * index]
            done.add(point)
    return weights, offsets


def apply_fusion(estimates: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """numpy twin of the fused graph: (K, B, N, 2) estimates → (B, N, 2)."""
    return np.einsum("kn,kbnc->bnc", np.asarray(weights, np.float64), np.asarray(estimates, np.float64)) + offsets


def cross_validated(estimates: np.ndarray, truth: np.ndarray, folds: int = 5, seed: int = 0,
                    permutation=None) -> np.ndarray:
    """Each face's fused estimate by a fit on the other folds' faces (B, N, 2): an honest figure of
    what the fit gains on faces it did not see."""
    faces = estimates.shape[1]
    out = np.zeros(truth.shape)
    for held in np.array_split(np.random.default_rng(seed).permutation(faces), folds):
        kept = np.setdiff1d(np.arange(faces), held)
        weights, offsets = fit_fusion(estimates[:, kept], truth[kept], permutation)
        out[held] = apply_fusion(estimates[:, held], weights, offsets)
    return out


def fusion_entry(weights: np.ndarray, offsets: np.ndarray, keys, subpixel: bool = True) -> dict:
    """The calibration file's `fusion` entry: weights per (network, stage) key and point, offsets in
    normalised crop units (crop pixels / input size), as `build_test_time_model` takes them."""
    return {"keys": [list(key) for key in keys], "subpixel": bool(subpixel),
            "weights": np.round(np.asarray(weights, np.float64), 6).tolist(),
            "offsets": np.round(np.asarray(offsets, np.float64), 7).tolist()}


def fusion_of(entry, options=None) -> dict | None:
    """The fusion in a calibration entry (`uncertainty.read_calibration`), or None: none was fitted,
    or it was fitted for the other peak decoding than `options.subpixel` (the weights and offsets of
    sub-pixel peaks do not fit integer ones)."""
    if not isinstance(entry, dict) or not isinstance(entry.get(FUSION_KEY), dict):
        return None
    fusion = entry[FUSION_KEY]
    if options is not None and bool(fusion.get("subpixel", True)) != bool(options.subpixel):
        return None
    return fusion


def check_entry(entry: dict, keys, count: int) -> None:
    """ValueError unless `entry` fits a graph whose ensemble reads `keys` and outputs `count` points."""
    want = [list(key) for key in keys]
    if [list(key) for key in entry.get("keys", [])] != want:
        raise ValueError(f"the fusion was fitted on the outputs {entry.get('keys')}, this ensemble reads {want} "
                         "(fit it again: tools/fit_uncertainty.py)")
    weights, offsets = np.asarray(entry["weights"]), np.asarray(entry["offsets"])
    if weights.shape != (len(want), count) or offsets.shape != (count, 2):
        raise ValueError(f"fusion weights {weights.shape} and offsets {offsets.shape} do not fit "
                         f"{len(want)} estimates of {count} points")


__all__ = ["FUSION_KEY", "PointOffset", "apply_fusion", "check_entry", "cross_validated", "fit_fusion", "fusion_entry",
           "fusion_of"]
