"""Hand-computed cases of the CFDRNN losses and the in-graph NME."""
import math

import numpy as np
import pytest
import tensorflow as tf

from cfdrnn_keras import metrics
from cfdrnn_keras.model.codec import encode_heatmaps_numpy
from cfdrnn_keras.training.losses import (LossWeights, cfdrnn_losses, delta_l1, delta_l2, delta_targets, delta_wing, heatmap_l2,
                                 interocular_nme, total_loss)


def test_heatmap_l2_sums_pixels_and_averages_landmarks():
    target = np.zeros((1, 8, 8, 2), np.float32)
    target[0, 3, 4, 0] = 1.0
    predicted = target.copy()
    predicted[0, 3, 4, 0] = 0.5  # landmark 0: one pixel off by 0.5 → 0.25
    predicted[0, 0, 0, 1] = 1.0  # landmark 1: one stray pixel of 1 → 1.0
    predicted[0, 7, 7, 1] = -1.0  # and another → 2.0
    loss = np.asarray(heatmap_l2(target, predicted))
    assert loss.shape == (1,)
    assert loss[0] == pytest.approx((0.25 + 2.0) / 2)


def test_heatmap_l2_of_a_shifted_gaussian_matches_the_closed_form_behind_the_scale_argument():
    # Σ (g(p) − g(p − d))² = 2πσ²(1 − exp(−d²/4σ²)) ≈ (π/2)·d² for small d (docs/TRAINING.md).
    sigma = 1.3
    for shift_px in (0.25, 0.5, 1.0, 3.0):
        target = encode_heatmaps_numpy(np.array([[[128.0, 128.0]]]), 256, 4, sigma)
        moved = encode_heatmaps_numpy(np.array([[[128.0 + 4 * shift_px, 128.0]]]), 256, 4, sigma)
        loss = float(np.asarray(heatmap_l2(target, moved))[0])
        closed_form = 2 * math.pi * sigma**2 * (1 - math.exp(-shift_px**2 / (4 * sigma**2)))
        assert loss == pytest.approx(closed_form, rel=1e-3)
    zeros = np.zeros_like(target)
    assert float(np.asarray(heatmap_l2(target, zeros))[0]) == pytest.approx(math.pi * sigma**2, rel=1e-3)


def test_delta_target_is_ground_truth_minus_the_heatmap_peak():
    heatmaps = np.zeros((1, 16, 16, 2), np.float32)
    heatmaps[0, 5, 3, 0] = 0.9  # landmark 0 peaks at x = 3, y = 5 (heat-map pixels)
    heatmaps[0, 10, 12, 1] = 0.4  # landmark 1 at x = 12, y = 10
    landmarks = np.array([[[0.25, 0.30], [0.75, 0.70]]], np.float32)  # normalised, input 64
    target = np.asarray(delta_targets(landmarks, heatmaps, stride=4, input_size=64))
    # coarse = 4 · (x, y) / 64
    np.testing.assert_allclose(target[0, 0], [0.25 - 12 / 64, 0.30 - 20 / 64], atol=1e-6)
    np.testing.assert_allclose(target[0, 1], [0.75 - 48 / 64, 0.70 - 40 / 64], atol=1e-6)


def test_delta_l2_is_squared_error_in_heatmap_pixels():
    target = np.zeros((1, 2, 2), np.float32)
    predicted = np.array([[[1 / 64, 0.0], [3 / 64, 4 / 64]]], np.float32)  # input 256, stride 4: 1 px = 4/256
    loss = np.asarray(delta_l2(target, predicted, stride=4, input_size=256))
    assert loss[0] == pytest.approx((1.0 + 25.0) / 2, rel=1e-5)


def test_delta_l1_is_the_offsets_distance_in_heatmap_pixels():
    target = np.zeros((1, 2, 2), np.float32)
    predicted = np.array([[[1 / 64, 0.0], [3 / 64, 4 / 64]]], np.float32)  # errors of 1 and 5 heat-map px
    assert float(np.asarray(delta_l1(target, predicted, stride=4, input_size=256))[0]) == pytest.approx(3.0, rel=1e-5)


def test_delta_wing_is_logarithmic_below_its_width_and_linear_above():
    import math

    target = np.zeros((1, 2, 2), np.float32)
    predicted = np.array([[[1 / 64, 0.0], [3 / 64, 4 / 64]]], np.float32)  # d = 1 and 5 heat-map px
    w, eps = 2.5, 0.5
    small = w * math.log(1 + 1 / eps)  # 1 < w
    large = 5 - (w - w * math.log(1 + w / eps))  # 5 > w: linear, joined at d = w
    loss = float(np.asarray(delta_wing(target, predicted, stride=4, input_size=256))[0])
    assert loss == pytest.approx((small + large) / 2, rel=1e-5)
    # continuous where the two pieces meet
    at = np.array([[[w / 64 - 1e-6, 0.0]]], np.float32), np.array([[[w / 64 + 1e-6, 0.0]]], np.float32)
    below, above = (float(np.asarray(delta_wing(np.zeros((1, 1, 2), np.float32), p, 4, 256))[0]) for p in at)
    assert below == pytest.approx(above, abs=1e-3)


def test_an_unknown_delta_loss_is_named():
    with pytest.raises(ValueError, match="unknown delta loss 'huber'; choose one of l2, l1, wing"):
        cfdrnn_losses({}, {}, delta_loss="huber")


def test_cfdrnn_losses_take_delta_targets_from_the_predicted_heatmaps_without_gradient():
    rng = np.random.default_rng(0)
    heatmaps = tf.Variable(rng.uniform(0, 0.1, (2, 16, 16, 68)).astype(np.float32))
    peak_y, peak_x = 7, 9
    landmarks = np.full((2, 68, 2), 0.5, np.float32)
    with tf.GradientTape() as tape:
        boosted = heatmaps + tf.reshape(tf.one_hot(peak_y * 16 + peak_x, 256), (1, 16, 16, 1))
        y_pred = {f"heatmaps_{j}": boosted for j in range(1, 5)}
        y_pred.update({f"delta_{j}": tf.zeros((2, 68, 2)) for j in range(1, 5)})
        y_true = {f"heatmaps_{j}": np.zeros((2, 16, 16, 68), np.float32) for j in range(1, 5)}
        y_true["landmarks"] = landmarks
        terms = cfdrnn_losses(y_true, y_pred, stride=4, input_size=64)
        delta_only = terms["delta_1"]
    # every peak is at (9, 7) → coarse (36/64, 28/64); target (0.5 − 0.5625, 0.5 − 0.4375) in hm px · 16
    expected = ((0.5 - 36 / 64) * 16) ** 2 + ((0.5 - 28 / 64) * 16) ** 2
    assert float(delta_only) == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {f"heatmaps_{j}" for j in range(1, 5)} | {f"delta_{j}" for j in range(1, 5)}
    gradient = tape.gradient(delta_only, heatmaps)
    assert gradient is None or float(tf.reduce_max(tf.abs(gradient))) == 0.0


def test_interocular_nme_agrees_with_the_metrics_module():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.2, 0.8, (5, 68, 2)).astype(np.float32)
    pred = gt + rng.normal(0, 0.02, gt.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(interocular_nme(gt, pred)), metrics.nme(pred, gt), rtol=1e-5)
    # scale invariance: crop pixels give the same NME as normalised coordinates
    np.testing.assert_allclose(np.asarray(interocular_nme(gt * 256, pred * 256)), metrics.nme(pred, gt), rtol=1e-5)


def test_loss_weights_parse_and_weighted_total():
    weights = LossWeights.parse("1,0,0,2", "0.5")
    assert weights.heatmaps == (1.0, 0.0, 0.0, 2.0) and weights.deltas == (0.5,) * 4
    terms = {f"heatmaps_{j}": tf.constant(float(j)) for j in range(1, 5)}
    terms.update({f"delta_{j}": tf.constant(10.0 * j) for j in range(1, 5)})
    assert float(total_loss(terms, weights)) == pytest.approx(1 * 1 + 2 * 4 + 0.5 * (10 + 20 + 30 + 40))
    with pytest.raises(ValueError):
        LossWeights.parse("1,2", "1")
    with pytest.raises(ValueError):
        LossWeights.parse("-1", "1")
