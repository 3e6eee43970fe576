"""300-W metrics against answers worked out by hand."""
import math

import numpy as np
import pytest

from cfdrnn_keras import metrics


def hand_face() -> np.ndarray:
    """68 points whose eyes are drawn by hand: outer corners 80 px apart, eye centres 60 px apart."""
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, size=(68, 2))
    # left eye 36..41: outer corner, two upper lids, inner corner, two lower lids; centre (10, 0)
    face[36:42] = [(0, 0), (5, -5), (15, -5), (20, 0), (15, 5), (5, 5)]
    # right eye 42..47: inner corner, two upper lids, outer corner, two lower lids; centre (70, 0)
    face[42:48] = [(60, 0), (65, -5), (75, -5), (80, 0), (75, 5), (65, 5)]
    return face


def test_eye_distances_by_hand():
    face = hand_face()
    assert metrics.inter_ocular_distance(face) == pytest.approx(80.0)
    assert metrics.inter_pupil_distance(face) == pytest.approx(60.0)


def test_constant_offset_gives_offset_over_eye_distance():
    gt = hand_face()
    pred = gt + np.array([3.0, 4.0])  # every point 5 px off
    assert metrics.nme(pred, gt) == pytest.approx(5 / 80)
    assert metrics.nme(pred, gt, "inter_pupil") == pytest.approx(5 / 60)


def test_nme_is_a_mean_over_points_and_scale_free():
    gt = hand_face()
    pred = gt.copy()
    pred[:34, 0] += 16.0  # half the points 16 px off, the other half exact: mean 8 px
    assert metrics.nme(pred, gt) == pytest.approx(8 / 80)
    assert metrics.nme(3 * pred + 7, 3 * gt + 7) == pytest.approx(8 / 80)


def test_nme_is_per_image_over_a_batch():
    gt = np.stack([hand_face(), 2 * hand_face()])
    pred = gt + np.array([[[0.0, 8.0]], [[6.0, 8.0]]])  # 8 px on an 80 px face, 10 px on a 160 px face
    np.testing.assert_allclose(metrics.nme(pred, gt), [0.1, 10 / 160])


def test_nme_rejects_bad_shapes_and_names():
    with pytest.raises(ValueError, match="68, 2"):
        metrics.nme(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="normalisation"):
        metrics.nme(hand_face(), hand_face(), "inter_nose")


def test_grid_is_801_decimal_steps():
    grid = metrics.ced_grid()
    assert grid.size == 801 and grid[0] == 0.0 and grid[-1] == 0.08
    assert grid[400] == 0.04 and grid[1] == 1e-4


def test_ced_counts_errors_at_the_threshold_as_successes():
    errors = [0.01, 0.02, 0.02, 0.05]
    np.testing.assert_allclose(metrics.ced(errors, [0.0, 0.0199, 0.02, 0.05, 0.08]), [0, 0.25, 0.75, 1, 1])


def test_auc_of_errors_uniform_on_0_to_008_is_one_half():
    # one error in the middle of every grid step: CED(k * 1e-4) = k / 800, a straight line from 0 to 1
    errors = (np.arange(800) + 0.5) * 1e-4
    assert metrics.auc(errors) == pytest.approx(0.5, abs=1e-12)
    assert metrics.failure_rate(errors) == 0.0


def test_auc_of_errors_uniform_on_0_to_004_is_three_quarters():
    # CED rises linearly to 1 at 0.04 and stays there: area 0.04 / 2 + 0.04 = 0.06 of 0.08
    errors = (np.arange(400) + 0.5) * 1e-4
    assert metrics.auc(errors) == pytest.approx(0.75, abs=1e-12)


def test_auc_of_sampled_uniform_errors_is_close_to_one_half():
    errors = np.random.default_rng(1).uniform(0, 0.08, size=200_000)
    assert metrics.auc(errors) == pytest.approx(0.5, abs=0.005)


def test_auc_extremes():
    assert metrics.auc(np.zeros(10)) == pytest.approx(1.0)
    assert metrics.auc(np.full(10, 0.2)) == 0.0


def test_failure_rate_counts_only_errors_above_the_threshold():
    errors = [0.05, 0.08, 0.0801, math.inf]  # 0.08 itself is a success, a missed face (inf) a failure
    assert metrics.failure_rate(errors) == pytest.approx(0.5)
    assert metrics.ced(errors)[-1] == pytest.approx(0.5)


def test_nan_errors_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0.01, float("nan")])


def test_summarize_reports_percent():
    io = [0.02, 0.04, 0.06, 0.10]
    ip = [0.03, 0.05, 0.07, 0.15]
    row = metrics.summarize(io, ip)
    assert row["n"] == 4
    assert row["nme_io"] == pytest.approx(5.5)
    assert row["nme_ip"] == pytest.approx(7.5)
    assert row["fr08_io"] == pytest.approx(25.0)
    assert row["auc08_io"] == pytest.approx(100 * metrics.auc(io))
    assert set(row) == {"n", "nme_io", "nme_ip", "auc08_io", "fr08_io"}
