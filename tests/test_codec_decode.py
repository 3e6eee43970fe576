"""Decoding (Eqs. 1–4): hand-made heat-maps with known peaks and deltas give the landmarks of Eq. 4."""
import keras
import numpy as np
import tensorflow as tf

from cfdrnn_keras import CFDRNNConfig, build_cfdrnn
from cfdrnn_keras.model.codec import (
    HeatmapDecoder,
    encode_heatmaps,
    encode_heatmaps_numpy,
    heatmap_peaks,
    heatmap_peaks_numpy,
    to_pixels,
)


def one_hot_maps(peaks_uv, size=64, value=0.7):
    """(N, 2) integer heat-map pixels (u = column, v = row) → (1, size, size, N) maps with one peak each."""
    maps = np.zeros((1, size, size, len(peaks_uv)), np.float32)
    for k, (u, v) in enumerate(peaks_uv):
        maps[0, v, u, k] = value
        maps[0, v + 1 if v + 1 < size else v - 1, u, k] = value / 2  # a lower neighbour must not move the argmax
    return maps


def test_decoder_applies_equation_4_by_hand():
    peaks = [(0, 0), (63, 0), (0, 63), (10, 20), (33, 7)]
    delta = np.array([[0.0, 0.0], [0.01, -0.02], [-0.004, 0.0], [0.5 / 256, 1.5 / 256], [0.0, 0.1]], np.float32)
    landmarks, confidence = HeatmapDecoder(stride=4, input_size=256)(one_hot_maps(peaks), delta[None])
    # L = s·argmax(H)/256 + Δ, worked out per point: e.g. (10, 20) → (40, 80) px → (0.15625, 0.3125).
    expected = np.array(
        [[0.0, 0.0], [252 / 256 + 0.01, -0.02], [-0.004, 252 / 256], [40.5 / 256, 81.5 / 256], [132 / 256, 28 / 256 + 0.1]],
        np.float32,
    )
    np.testing.assert_allclose(np.asarray(landmarks)[0], expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(confidence)[0], 0.7, atol=1e-6)


def test_numpy_and_graph_peaks_agree_on_random_maps():
    maps = np.random.default_rng(3).uniform(0, 1, (3, 64, 64, 68)).astype(np.float32)
    points, peak = heatmap_peaks(maps)
    points_np, peak_np = heatmap_peaks_numpy(maps)
    np.testing.assert_array_equal(np.asarray(points), points_np)
    np.testing.assert_array_equal(np.asarray(peak), peak_np)


def test_argmax_carries_no_gradient():
    maps = tf.Variable(one_hot_maps([(5, 6), (7, 8)]))
    delta = tf.Variable(np.zeros((1, 2, 2), np.float32))
    with tf.GradientTape() as tape:
        landmarks, _ = HeatmapDecoder()(maps, delta)
        loss = tf.reduce_sum(landmarks)
    grad_maps, grad_delta = tape.gradient(loss, [maps, delta])
    assert grad_maps is None or not np.any(grad_maps)
    np.testing.assert_array_equal(np.asarray(grad_delta), 1.0)


def test_encoding_decodes_to_the_nearest_heatmap_pixel():
    points = np.array([[100.0, 37.0], [3.2, 250.9], [128.0, 128.0]], np.float32)
    maps = encode_heatmaps_numpy(points[None])
    decoded, peak = heatmap_peaks_numpy(maps)
    np.testing.assert_allclose(to_pixels(decoded[0], 256), 4 * np.round(points / 4), atol=1e-4)
    assert peak[0, 2] == 1.0  # a point on a heat-map pixel centre peaks at exactly 1


def test_tensorflow_and_numpy_encodings_agree():
    points = np.random.default_rng(5).uniform(-10, 266, (2, 68, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(encode_heatmaps(points)), encode_heatmaps_numpy(points), atol=1e-6)


def test_model_landmarks_equal_decoded_heatmaps_4_plus_delta_4():
    model = build_cfdrnn(CFDRNNConfig(input_size=64, width=0.0625))
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 64, 64, 3)).astype("float32")
    out = model.predict(x, verbose=0)
    coarse, peak = heatmap_peaks_numpy(out["heatmaps_4"], stride=4, input_size=64)
    np.testing.assert_allclose(out["landmarks"], coarse + out["delta_4"], atol=1e-6)
    np.testing.assert_allclose(out["confidence"], peak, atol=1e-6)


def test_decoder_config_round_trip():
    layer = HeatmapDecoder(stride=4, input_size=128, name="dec")
    clone = HeatmapDecoder.from_config(layer.get_config())
    assert (clone.stride, clone.input_size, clone.name) == (4, 128, "dec")
    assert keras.saving.get_registered_object("cfdrnn>HeatmapDecoder") is HeatmapDecoder


def test_subpixel_peaks_recover_gaussian_targets_exactly():
    """The log of a Gaussian target is a parabola, so the refined peak is the encoded point itself."""
    from cfdrnn_keras.model.codec import encode_heatmaps_numpy, subpixel_peaks, subpixel_peaks_numpy

    rng = np.random.default_rng(3)
    points = rng.uniform(8, 120, (2, 68, 2)).astype(np.float32)  # crop pixels of a 128 crop, off the grid
    maps = encode_heatmaps_numpy(points, 128, 4, 1.3)
    np.testing.assert_allclose(subpixel_peaks_numpy(maps, 4, 128) * 128, points, atol=2e-3)
    np.testing.assert_allclose(np.asarray(subpixel_peaks(maps, 4, 128)) * 128, points, atol=2e-3)


def test_subpixel_peaks_keep_the_argmax_where_the_map_cannot_say_more():
    from cfdrnn_keras.model.codec import heatmap_peaks_numpy, subpixel_peaks, subpixel_peaks_numpy

    maps = np.zeros((1, 8, 8, 3), np.float32)
    maps[0, 0, 5, 1] = 1.0                 # peak on the top border: y has no neighbour above
    maps[0, 3, 3, 2] = maps[0, 3, 4, 2] = 1.0  # a plateau: x is flat, no curvature to use
    expected = heatmap_peaks_numpy(maps, 4, 32)[0]  # channel 0 is dead: argmax (0, 0)
    got = subpixel_peaks_numpy(maps, 4, 32)
    np.testing.assert_allclose(got[0, 0], expected[0, 0])
    assert got[0, 1, 1] == expected[0, 1, 1]          # border axis unchanged
    assert abs(got[0, 2, 0] - expected[0, 2, 0]) <= 0.5 * 4 / 32 + 1e-6  # plateau: at most half a cell
    np.testing.assert_allclose(np.asarray(subpixel_peaks(maps, 4, 32)), got, atol=1e-6)
