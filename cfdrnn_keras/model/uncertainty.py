"""Per-point uncertainty (expected error, crop pixels) and a face score, as a registered layer.

Issue 17. Measured on the packaged model's 201 validation faces (docs/MODEL_CARD.md, "Uncertainty"):
of the candidates — the crop/mirror disagreement, the spread of the four stages' estimates, the
heat-map's shape (peak, local second moment) and a per-landmark table of mean errors — the heat-map
PEAK carries almost all the information, and the face's overall peak level adds what the point's own
peak misses (a hard face is hard everywhere). The mirror disagreement and the stage spread, fitted
beside them, get slopes of about 0. So the calibration is

    log u_k = a_k + b_1 · log p_k + b_2 · mean_j log p_j

p_k: the heat-map peak of point k averaged over the stages and crops the ensemble uses (the crop and
its mirror, mirrored back); a_k: one intercept per landmark (the prior table); b: shared slopes. It
is fitted on held-out faces by the exponential (Gamma) likelihood with a log link, whose score
equations make the mean error equal the mean prediction (calibration), by iteratively re-weighted
least squares (`fit_point_calibration`, numpy only).

face_score = sigmoid(w · [mean_k log p_k, mean_k log mirror_k] + c), mirror_k the crop/mirror
disagreement in crop pixels (only the first feature without the flip test): a face gives confident,
self-consistent heat-maps, a background box faint ones whose mirror disagrees wildly. Fitted by
logistic regression on 300-W training photos (face crops against boxes off the face).

`PointUncertainty(mode="features")` returns the raw features instead, for fitting
(`cfdrnn_keras.cli.fit_uncertainty`). keras.ops only; loads with safe_mode=True; float32 throughout
(the full-int8 TFLite export keeps it float, like the heat-map heads: `export.tflite.float_heatmap_head`).
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from .codec import heatmap_peaks

PEAK_FLOOR = 0.02  # a heat-map peak below this is "nothing found" (log would run away)
MIRROR_FLOOR = 0.05  # crop pixels
POINT_FEATURES = ("log_peak", "face_log_peak")
FACE_FEATURES_FLIP = ("face_log_peak", "face_log_mirror")
FACE_FEATURES_NO_FLIP = ("face_log_peak",)
CALIBRATION_SUFFIX = ".uncertainty.json"
FORMAT = 1


def ensemble_key(options) -> str:
    """The calibration's key for an ensemble: `flip+all`, `flip+last`, `noflip+all`, `noflip+last`."""
    return f"{'flip' if options.flip else 'noflip'}+{options.stages}"


def calibration_path(model_path) -> Path:
    """Where the calibration of a `.keras` file lives: beside it, `NAME.uncertainty.json`."""
    path = Path(model_path)
    return path.with_name(path.stem + CALIBRATION_SUFFIX)


def load_calibration(model_path, options) -> dict | None:
    """The calibration entry for `options` of the `.keras` file at `model_path` (None if none)."""
    return read_calibration(calibration_path(model_path), options)


def uncertainty_of(entry) -> dict | None:
    """The calibration entry itself where it holds an uncertainty fit (its intercepts, slopes and face
    score), else None (an entry may hold only a fusion: `cfdrnn_keras.model.fusion`)."""
    keys = ("intercepts", "slopes", "face_weights", "face_bias")
    return entry if isinstance(entry, dict) and all(key in entry for key in keys) else None


def read_calibration(path, options) -> dict | None:
    """The entry for `options` in the calibration file at `path` (None if there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data.get("ensembles", {}).get(ensemble_key(options))


@keras.saving.register_keras_serializable(package="cfdrnn")
class PointUncertainty(keras.layers.Layer):
    """Heat-maps and offsets of the stages an ensemble uses → uncertainty (B, N) in crop pixels and
    face_score (B,) in [0, 1] (mode "calibrated"), or the raw features (mode "features": point
    features (B, N, 2) and face features (B, F)).

    Inputs: lists of heat-maps (B', H, W, N) and offsets (B', N, 2) (normalised), one per stage used;
    B' = 2B with the flip test (crops then mirrors, as `MirrorBatch` makes them).
    """

    def __init__(self, stride: int = 4, input_size: int = 256, permutation=None, intercepts=None, slopes=None,
                 face_weights=None, face_bias: float = 0.0, mode: str = "calibrated", **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.input_size = int(input_size)
        self.permutation = None if permutation is None else [int(i) for i in permutation]
        self.mode = str(mode)
        if self.mode not in ("calibrated", "features"):
            raise ValueError(f"mode must be 'calibrated' or 'features', got {mode!r}")
        self.intercepts = None if intercepts is None else [float(v) for v in intercepts]
        self.slopes = None if slopes is None else [float(v) for v in slopes]
        self.face_weights = None if face_weights is None else [float(v) for v in face_weights]
        self.face_bias = float(face_bias)
        if self.mode == "calibrated":
            if self.intercepts is None or self.slopes is None or self.face_weights is None:
                raise ValueError("a calibrated PointUncertainty needs intercepts, slopes and face_weights")
            if len(self.slopes) != len(POINT_FEATURES):
                raise ValueError(f"need {len(POINT_FEATURES)} slopes ({', '.join(POINT_FEATURES)}), got {len(self.slopes)}")
            wanted = len(FACE_FEATURES_FLIP if self.permutation is not None else FACE_FEATURES_NO_FLIP)
            if len(self.face_weights) != wanted:
                raise ValueError(f"need {wanted} face weights, got {len(self.face_weights)}")

    def _features(self, heatmaps, deltas):
        flip = self.permutation is not None
        peaks, points = None, None
        for h, d in zip(heatmaps, deltas):
            coarse, peak = heatmap_peaks(ops.cast(h, "float32"), self.stride, self.input_size)
            p = (coarse + ops.cast(d, "float32")) * float(self.input_size)
            peaks = peak if peaks is None else peaks + peak
            points = p if points is None else points + p
        peaks = peaks / float(len(heatmaps))
        points = points / float(len(heatmaps))
        count = peaks.shape[-1]
        if flip:
            index = ops.convert_to_tensor(self.permutation, dtype="int32")
            pk = ops.reshape(peaks, (2, -1, count))
            pt = ops.reshape(points, (2, -1, count, 2))
            mirrored_peak = ops.take(pk[1], index, axis=1)
            peaks = (pk[0] + mirrored_peak) * 0.5
            mirrored = ops.take(pt[1], index, axis=1)
            back = ops.stack([(self.input_size - 1.0) - mirrored[..., 0], mirrored[..., 1]], axis=-1)
            gap = ops.sqrt(ops.sum(ops.square(pt[0] - back), axis=-1) + 1e-12)
        log_peak = ops.log(ops.maximum(peaks, PEAK_FLOOR))
        face_log_peak = ops.mean(log_peak, axis=-1, keepdims=True)
        point_features = ops.stack([log_peak, ops.broadcast_to(face_log_peak, ops.shape(log_peak))], axis=-1)
        face = [face_log_peak[:, 0]]
        if flip:
            face.append(ops.mean(ops.log(ops.maximum(gap, MIRROR_FLOOR)), axis=-1))
        return point_features, ops.stack(face, axis=-1)

    def call(self, heatmaps, deltas):
        if len(heatmaps) != len(deltas) or not heatmaps:
            raise ValueError(f"need as many heat-maps as offsets (≥ 1), got {len(heatmaps)} and {len(deltas)}")
        point_features, face_features = self._features(heatmaps, deltas)
        if self.mode == "features":
            return point_features, face_features
        intercepts = ops.convert_to_tensor(np.asarray(self.intercepts, np.float32))
        slopes = ops.convert_to_tensor(np.asarray(self.slopes, np.float32))
        weights = ops.convert_to_tensor(np.asarray(self.face_weights, np.float32))
        log_u = intercepts[None, :] + ops.sum(point_features * slopes[None, None, :], axis=-1)
        uncertainty = ops.exp(log_u)
        face_score = ops.sigmoid(ops.sum(face_features * weights[None, :], axis=-1) + self.face_bias)
        return uncertainty, face_score

    def compute_output_spec(self, heatmaps, deltas):
        shape = deltas[0].shape
        batch = None if shape[0] is None else (shape[0] // 2 if self.permutation is not None else shape[0])
        count = shape[1]
        if self.mode == "features":
            faces = len(FACE_FEATURES_FLIP if self.permutation is not None else FACE_FEATURES_NO_FLIP)
            return (keras.KerasTensor((batch, count, len(POINT_FEATURES)), dtype="float32"),
                    keras.KerasTensor((batch, faces), dtype="float32"))
        return keras.KerasTensor((batch, count), dtype="float32"), keras.KerasTensor((batch,), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(stride=self.stride, input_size=self.input_size, permutation=self.permutation,
                      intercepts=self.intercepts, slopes=self.slopes, face_weights=self.face_weights,
                      face_bias=self.face_bias, mode=self.mode)
        return config


# ----------------------------------------------------------------------------------------------
# Fitting (numpy only)
# ----------------------------------------------------------------------------------------------
def fit_point_calibration(point_features, errors, iterations: int = 50):
    """(intercepts (N,), slopes (F,)) of log u = a_k + Σ b_i f_i, by the exponential likelihood
    Σ e/u + log u (IRLS: for a Gamma model with log link every weight is 1, so each step is one
    least-squares fit of the working response η + (e − u)/u).

    point_features (B, N, F), errors (B, N) in crop pixels (non-negative).
    """
    features = np.asarray(point_features, np.float64)
    errors = np.maximum(np.asarray(errors, np.float64), 1e-3)
    batch, count, width = features.shape
    # design: one-hot landmark intercepts + the shared features
    onehot = np.broadcast_to(np.eye(count), (batch, count, count))
    design = np.concatenate([onehot, features], axis=-1).reshape(batch * count, count + width)
    target = errors.reshape(-1)
    theta = np.r_[np.log(errors.mean(axis=0)), np.zeros(width)]
    for _ in range(iterations):
        eta = design @ theta
        working = eta + target * np.exp(-eta) - 1.0
        new, *_ = np.linalg.lstsq(design, working, rcond=None)
        step = new - theta
        theta = theta + 0.7 * step if np.abs(step).max() > 1.0 else new
        if np.abs(step).max() < 1e-8:
            break
    return theta[:count], theta[count:]


def predict_point(intercepts, slopes, point_features) -> np.ndarray:
    """u (B, N) from fitted parameters (numpy twin of the layer's calibrated mode)."""
    return np.exp(np.asarray(intercepts)[None, :] + np.asarray(point_features) @ np.asarray(slopes))


def fit_face_score(face_features, is_face, l2: float = 1e-2, iterations: int = 100):
    """(weights (F,), bias) of a logistic face score, classes weighted equally, L2 on the weights
    (the classes are nearly separable: the penalty keeps the scores from saturating at 0 and 1)."""
    x = np.asarray(face_features, np.float64)
    y = np.asarray(is_face, np.float64)
    weight = np.where(y > 0.5, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9)) / len(y)
    design = np.c_[np.ones(len(x)), x]
    theta = np.zeros(design.shape[1])
    penalty = np.r_[0.0, np.full(x.shape[1], 2 * l2)]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (weight * (p - y)) + penalty * theta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[1:], float(theta[0])


def face_score_numpy(weights, bias, face_features) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(np.asarray(face_features) @ np.asarray(weights) + bias)))


# ----------------------------------------------------------------------------------------------
# Measuring (numpy only; also used by evaluation reports)
# ----------------------------------------------------------------------------------------------
from ..uncertainty_metrics import auroc, fifth_ratios, spearman, uncertainty_summary  # noqa: E402,F401

__all__ = ["CALIBRATION_SUFFIX", "POINT_FEATURES", "PointUncertainty", "auroc", "calibration_path", "ensemble_key",
           "face_score_numpy", "fifth_ratios", "fit_face_score", "fit_point_calibration", "load_calibration",
           "read_calibration", "uncertainty_of",
           "predict_point", "spearman", "uncertainty_summary"]
