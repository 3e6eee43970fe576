"""Face crops as 3×3 matrices: from a face box to the network's square input, and back.

Convention (used by every module of the project): points are (x, y) with integer values at pixel
CENTRES, 0-based — the pixel in column i spans [i - 0.5, i + 0.5]. A crop matrix maps such
coordinates in the photo to the same kind of coordinates in the crop, so

* `transform_points(M, p)` moves landmarks into the crop and `transform_points(invert(M), q)` moves
  predictions back, exactly (float64; a round trip is good to ~1e-12 px);
* `cv2.warpAffine(image, M[:2])` samples crop pixel (i, j) at `invert(M) @ (i, j)`, i.e. the image
  and the points move together with no half-pixel drift (OpenCV and TensorFlow's
  ImageProjectiveTransform both treat integer coordinates as pixel centres).

`crop_matrix` makes the box square around its centre, multiplies its side by `margin`, and maps
that square onto the whole crop: the box centre lands on the crop centre ((size - 1) / 2, e.g.
127.5 for 256) and the square's edges on the crop's outer pixel edges (-0.5 and size - 0.5).
There is no rotation: a crop is a similarity of scale k = size / side plus a translation.

numpy only (no TensorFlow import), so readers and evaluation code stay light; `tf_warp` imports
TensorFlow when called.
"""
from __future__ import annotations

import cv2
import numpy as np

# DESIGN.md §3: index i of a mirrored face takes point MIRROR_PERMUTATION_68[i] (an involution).
MIRROR_PERMUTATION_68 = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
    27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)


def face_box_from_points(points) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) around the points (pixel-centre coordinates, no margin)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0 or not np.all(np.isfinite(points)):
        raise ValueError("face_box_from_points needs at least one finite point")
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def crop_matrix(box, output_size: int = 256, margin: float = 1.25) -> np.ndarray:
    """3×3 similarity (scale + translation) from photo pixels to a square `output_size` crop.

    The box (x0, y0, x1, y1) is made square (side = the longer of its width and height) around its
    centre, the side is multiplied by `margin`, and the square is mapped onto the crop.
    """
    x0, y0, x1, y1 = (float(value) for value in box)
    side = max(x1 - x0, y1 - y0) * float(margin)
    if not np.isfinite(side) or side <= 0:
        raise ValueError(f"degenerate face box {tuple(box)} (margin {margin}): the crop needs a positive size")
    scale = output_size / side
    centre_out = (output_size - 1) / 2.0
    return np.array(
        [
            [scale, 0.0, centre_out - scale * (x0 + x1) / 2.0],
            [0.0, scale, centre_out - scale * (y0 + y1) / 2.0],
            [0.0, 0.0, 1.0],
        ],
        dtype=np.float64,
    )


def centre_scale_matrix(input_size: int, output_size: int, scale: float = 1.0) -> np.ndarray:
    """Scale by `scale` about the centres: input centre → output centre (e.g. loose crop → crop)."""
    centre_in = (input_size - 1) / 2.0
    centre_out = (output_size - 1) / 2.0
    return np.array(
        [[scale, 0.0, centre_out - scale * centre_in], [0.0, scale, centre_out - scale * centre_in], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def invert(matrix) -> np.ndarray:
    """Inverse of a 3×3 affine matrix (float64), e.g. crop → photo."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected 3x3 matrices, got shape {matrix.shape}")
    return np.linalg.inv(matrix)


def transform_points(matrix, points) -> np.ndarray:
    """Apply a 3×3 affine matrix to points (..., 2) → float64 (..., 2)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def warp_to_crop(image: np.ndarray, matrix, output_size: int = 256, *, antialias: bool = True) -> np.ndarray:
    """The `output_size`² crop that `matrix` maps `image` to (bilinear, black outside the photo).

    With `antialias`, a crop that shrinks the photo more than 2× first area-averages it with
    `cv2.resize(INTER_AREA)` (composing the exact resize matrix), so big photos do not alias.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    if antialias and scale < 0.5:
        height, width = image.shape[:2]
        factor = scale * 1.5  # keep 1.5 source pixels per crop pixel for the bilinear warp
        new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
        image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
        sx, sy = new_width / width, new_height / height
        # INTER_AREA maps source pixel centre x to s·(x + 0.5) - 0.5.
        resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ invert(resize)
    return cv2.warpAffine(
        image,
        matrix[:2].astype(np.float64),
        (int(output_size), int(output_size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def mirror_matrix(size: int) -> np.ndarray:
    """Horizontal flip of a `size`-wide image: pixel column i ↔ size - 1 - i."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def tf_warp(images, matrices, output_size: int, fill_value: float = 0.0):
    """TensorFlow twin of `warp_to_crop` for batches, usable inside tf.data graphs.

    images (B, H, W, C) numeric; matrices (B, 3, 3) affine, mapping input pixels to output pixels
    (same convention as above). Bilinear, constant fill. Returns float32 (B, size, size, C).
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    matrices = tf.cast(matrices, tf.float32)
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    # ImageProjectiveTransformV3 wants the OUTPUT → INPUT map: the closed-form affine inverse.
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    zeros = tf.zeros_like(a)
    transforms = tf.stack([ia, ib, itx, ic, id_, ity, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([output_size, output_size], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
