"""Heat-map targets (paper Eq. 5): Gaussian of σ = 1.3 heat-map pixels at point / 4, peak 1, background 0."""
import math

import numpy as np
import pytest

from cfdrnn_keras.model.codec import encode_heatmaps, encode_heatmaps_numpy

SIGMA = 1.3


def _moments(heatmap):
    """Mean (u, v) and standard deviation along each axis of a non-negative map (H, W)."""
    weights = np.asarray(heatmap, dtype=np.float64)
    vs, us = np.mgrid[0:weights.shape[0], 0:weights.shape[1]]
    total = weights.sum()
    mean_u, mean_v = (weights * us).sum() / total, (weights * vs).sum() / total
    std_u = math.sqrt((weights * (us - mean_u) ** 2).sum() / total)
    std_v = math.sqrt((weights * (vs - mean_v) ** 2).sum() / total)
    return mean_u, mean_v, std_u, std_v


def test_peak_position_and_value_on_a_grid_node():
    points = np.array([[[100.0, 36.0], [0.0, 0.0], [252.0, 128.0]]], np.float32)  # crop pixels
    maps = encode_heatmaps_numpy(points, 256, 4, SIGMA)[0]
    assert maps.shape == (64, 64, 3) and maps.dtype == np.float32
    for k, (u, v) in enumerate([(25, 9), (0, 0), (63, 32)]):
        assert np.unravel_index(np.argmax(maps[..., k]), (64, 64)) == (v, u)  # row v, column u
        assert maps[v, u, k] == pytest.approx(1.0, abs=1e-6)


def test_sub_pixel_peak_value_and_neighbours():
    point = np.array([[101.6, 37.2]], np.float32)  # → heat-map (25.4, 9.3)
    maps = encode_heatmaps_numpy(point, 256, 4, SIGMA)[..., 0]
    assert np.unravel_index(np.argmax(maps), maps.shape) == (9, 25)
    expected = math.exp(-(0.4 ** 2 + 0.3 ** 2) / (2 * SIGMA ** 2))
    assert maps[9, 25] == pytest.approx(expected, rel=1e-5)
    assert maps[9, 26] == pytest.approx(math.exp(-(0.6 ** 2 + 0.3 ** 2) / (2 * SIGMA ** 2)), rel=1e-5)


def test_mean_and_second_moment_give_point_and_sigma():
    point = np.array([[130.3, 99.9]], np.float32)
    maps = np.asarray(encode_heatmaps(point, 256, 4, SIGMA))[..., 0]
    mean_u, mean_v, std_u, std_v = _moments(maps)
    assert mean_u == pytest.approx(130.3 / 4, abs=1e-3) and mean_v == pytest.approx(99.9 / 4, abs=1e-3)
    assert std_u == pytest.approx(SIGMA, rel=0.01) and std_v == pytest.approx(SIGMA, rel=0.01)
    assert maps.min() >= 0.0 and maps[0, 0] < 1e-12  # background 0 far from the point


def test_batch_layout_tensorflow_equals_numpy():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 255, (2, 68, 2)).astype(np.float32)
    graph = np.asarray(encode_heatmaps(points))
    assert graph.shape == (2, 64, 64, 68)
    np.testing.assert_allclose(graph, encode_heatmaps_numpy(points), atol=1e-6)
    # Channel k belongs to landmark k: its peak is the nearest heat-map pixel of point k.
    k = 41
    v, u = np.unravel_index(np.argmax(graph[1, ..., k]), (64, 64))
    assert (u, v) == tuple(np.clip(np.round(points[1, k] / 4), 0, 63).astype(int))
