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
  carries no gradient. At test time `subpixel_peaks` refines the argmax from the heat-map's own
  shape before Δ is added (the test-time ensemble does it by default; training keeps Eq. 4 as is).
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


def subpixel_peaks(heatmaps, stride: int = 4, input_size: int = 256):
    """Normalised points at the heat-map peak refined to sub-pixel precision (B, N, 2); no gradient.

    Around the argmax, a parabola through the log heat-map's three values along each axis puts the
    peak at argmax + (L₋ − L₊) / (2 (L₋ − 2 L₀ + L₊)), clipped to ±1 pixel. The targets are Gaussians
    (Eq. 5), whose logarithm IS a parabola, so a clean target decodes exactly; a peak on the border,
    a flat or a dead (all-zero) map keeps the integer argmax. Eq. 4 then adds Δ as usual. Measured on
    the packaged `fast` model's 201 validation faces: 3.68 → 3.35 % NME with the default ensemble
    (docs/TRAINING.md, decoding ablation); HRNet's quarter-pixel shift gets 85 % of that.
    """
    heatmaps = ops.stop_gradient(ops.cast(heatmaps, "float32"))
    height, width, count = heatmaps.shape[1], heatmaps.shape[2], heatmaps.shape[3]
    cells = height * width
    flat = ops.reshape(heatmaps, (-1, cells, count))
    index = _argmax_flat(flat)
    x, y = index % width, index // width
    # The values at the argmax and its four neighbours, gathered from the maps flattened to one axis
    # (a 1-D GATHER of B·N values: LiteRT runs take_along_axis on (B, H·W, N) maps, and a one-hot mask,
    # several times slower, which made the full-int8 file 30 % slower than without sub-pixel peaks).
    values = ops.reshape(flat, (-1,))
    batch_offset = ops.arange(ops.shape(flat)[0], dtype="int32")[:, None] * (cells * count)
    point_offset = ops.arange(count, dtype="int32")[None, :]

    def log_at(shift):
        """log h at flat index (argmax + shift), clamped into the map (the caller masks the edges)."""
        where = ops.clip(index + shift, 0, cells - 1)
        picked = ops.take(values, batch_offset + where * count + point_offset)
        return ops.log(ops.maximum(picked, 1e-10))

    centre = log_at(0)

    def offset(before, after, inside):
        curvature = before - 2.0 * centre + after
        usable = ops.logical_and(inside, curvature < 0.0)
        safe = ops.where(usable, curvature, -1.0)
        return ops.where(usable, ops.clip(0.5 * (before - after) / safe, -1.0, 1.0), 0.0)

    dx = offset(log_at(-1), log_at(1), ops.logical_and(x > 0, x < width - 1))
    dy = offset(log_at(-width), log_at(width), ops.logical_and(y > 0, y < height - 1))
    points = ops.stack([ops.cast(x, "float32") + dx, ops.cast(y, "float32") + dy], axis=-1)
    return points * float(stride) / float(input_size)


def subpixel_peaks_numpy(heatmaps, stride: int = 4, input_size: int = 256) -> np.ndarray:
    """numpy twin of `subpixel_peaks`, for tests and evaluation code."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    batch, height, width, count = heatmaps.shape
    flat = heatmaps.reshape(batch, height * width, count)
    index = flat.argmax(axis=1)
    x, y = index % width, index // width

    def log_at(i):
        values = np.take_along_axis(flat, np.clip(i, 0, height * width - 1)[:, None, :], axis=1)[:, 0]
        return np.log(np.maximum(values, 1e-10))

    centre = log_at(index)

    def offset(before, after, inside):
        curvature = before - 2.0 * centre + after
        usable = inside & (curvature < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.clip(0.5 * (before - after) / np.where(usable, curvature, -1.0), -1.0, 1.0)
        return np.where(usable, shift, 0.0)

    dx = offset(log_at(index - 1), log_at(index + 1), (x > 0) & (x < width - 1))
    dy = offset(log_at(index - width), log_at(index + width), (y > 0) & (y < height - 1))
    return (np.stack([x + dx, y + dy], axis=-1) * stride / input_size).astype(np.float32)


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
