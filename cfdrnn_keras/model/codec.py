"""Heat-map encoding (training targets) and decoding (model output), side by side.

Keeping both here means the data pipeline and the network cannot drift apart on the one thing
they must agree on: where a landmark sits in a heat-map.

Conventions (DESIGN.md §1–2):
- Points are (x, y) in crop pixels, 0-based pixel centres. "Normalised" points are crop pixels
  divided by the input size (pixel 128 of a 256 crop is 0.5).
- Heat-map pixel (u, v) stands for crop pixel (stride·u, stride·v). A landmark at crop pixel p is
  encoded as a Gaussian of σ heat-map pixels (peak 1, background 0) centred at p / stride, with
  sub-pixel precision (paper Eq. 5).
- Decoding (Eqs. 1–4): coarse point = stride · argmax(H); final point = coarse + Δ. The argmax
  carries no gradient.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def to_normalized(points_px, input_size: int):
    """Crop pixels → normalised crop coordinates."""
    return points_px / float(input_size)


def to_pixels(points_normalized, input_size: int):
    """Normalised crop coordinates → crop pixels."""
    return points_normalized * float(input_size)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------
def encode_heatmaps_numpy(points_px, input_size: int = 256, stride: int = 4, sigma: float = 1.3) -> np.ndarray:
    """Gaussian heat-maps for points (..., N, 2) in crop pixels → (..., H, H, N) float32."""
    points = np.asarray(points_px, dtype=np.float32) / float(stride)
    size = input_size // stride
    grid = np.arange(size, dtype=np.float32)
    # (..., N, H) squared distances along each axis; the outer sum builds the separable Gaussian.
    dx = (grid - points[..., 0:1]) ** 2
    dy = (grid - points[..., 1:2]) ** 2
    gx = np.exp(-dx / (2.0 * sigma * sigma))
    gy = np.exp(-dy / (2.0 * sigma * sigma))
    maps = gy[..., :, None] * gx[..., None, :]  # (..., N, H(y), W(x))
    return np.moveaxis(maps, -3, -1).astype(np.float32)


def encode_heatmaps(points_px, input_size: int = 256, stride: int = 4, sigma: float = 1.3):
    """TensorFlow version of `encode_heatmaps_numpy`, for use inside a tf.data graph."""
    import tensorflow as tf

    points = tf.cast(points_px, tf.float32) / float(stride)
    size = input_size // stride
    grid = tf.range(size, dtype=tf.float32)[:, None]  # (H, 1), broadcast against (..., 1, N)
    # Built directly in (..., H, W, N) layout: 3–4× faster in tf.data than building (..., N, H, W)
    # and transposing (measured in docs/DATA.md).
    gx = tf.exp(-tf.square(grid - points[..., None, :, 0]) / (2.0 * sigma * sigma))  # (..., W, N)
    gy = tf.exp(-tf.square(grid - points[..., None, :, 1]) / (2.0 * sigma * sigma))  # (..., H, N)
    return gy[..., :, None, :] * gx[..., None, :, :]


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def _argmax_flat(flat):
    """Argmax over axis 1 of (B, H·W, N) as int32.

    Under TensorFlow `tf.argmax(output_type=int32)` converts to TFLite's builtin ARG_MAX, while
    `keras.ops.argmax` on floats adds a sign-bit test that needs Flex ops (DESIGN.md §4).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.argmax(flat, axis=1, output_type=tf.int32)
    return ops.cast(ops.argmax(flat, axis=1), "int32")


def heatmap_peaks(heatmaps, stride: int = 4, input_size: int = 256):
    """Normalised coarse points s·argmax(H) (B, N, 2) and peak values (B, N); no gradient."""
    heatmaps = ops.stop_gradient(heatmaps)
    height, width, count = heatmaps.shape[1], heatmaps.shape[2], heatmaps.shape[3]
    flat = ops.reshape(heatmaps, (-1, height * width, count))
    index = _argmax_flat(flat)
    x = ops.cast(index % width, "float32")
    y = ops.cast(index // width, "float32")
    points = ops.stack([x, y], axis=-1) * float(stride) / float(input_size)
    peak = ops.cast(ops.max(flat, axis=1), "float32")
    return points, peak


def heatmap_peaks_numpy(heatmaps, stride: int = 4, input_size: int = 256):
    """numpy twin of `heatmap_peaks` for evaluation code and tests."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    batch, height, width, count = heatmaps.shape
    flat = heatmaps.reshape(batch, height * width, count)
    index = flat.argmax(axis=1)
    points = np.stack([index % width, index // width], axis=-1).astype(np.float32)
    return points * stride / input_size, flat.max(axis=1)


@keras.saving.register_keras_serializable(package="cfdrnn")
class HeatmapDecoder(keras.layers.Layer):
    """Final landmarks (Eq. 4) and per-point confidence from the last heat-maps and offsets.

    Inputs: heat-maps (B, H, W, N) and offsets Δ (B, N, 2) in normalised units.
    Outputs: landmarks = s·argmax(H)/input_size + Δ (B, N, 2), confidence = peak value (B, N).
    """

    def __init__(self, stride: int = 4, input_size: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.input_size = int(input_size)

    def call(self, heatmaps, delta):
        coarse, peak = heatmap_peaks(ops.cast(heatmaps, "float32"), self.stride, self.input_size)
        landmarks = coarse + ops.cast(delta, "float32")
        return landmarks, peak

    def compute_output_spec(self, heatmaps, delta):
        batch, count = heatmaps.shape[0], heatmaps.shape[-1]
        return (
            keras.KerasTensor((batch, count, 2), dtype="float32"),
            keras.KerasTensor((batch, count), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(stride=self.stride, input_size=self.input_size)
        return config
