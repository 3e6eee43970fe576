"""Training augmentation inside the tf.data graph: one affine warp for image and points, then colour.

Geometry (rotation, scaling up and down, translation, horizontal mirroring) is composed into ONE
affine matrix per example, applied to the image with `tf.raw_ops.ImageProjectiveTransformV3`
(bilinear, black fill; via `geometry.tf_warp`) and to the landmarks with the same matrix, so the
two cannot disagree. Mirroring also permutes the points (DESIGN.md §3): after a flip, index 36 is
again the outer corner of the eye on the image's left.

Colour (brightness, contrast, saturation, hue) runs on the warped crop in [0, 1]: saturation and hue
are one 3×3 matrix per example (scale and rotate the chroma plane of YIQ, leaving luma alone),
contrast scales around the per-channel mean, brightness adds an offset; then the result is clipped.

Occlusion (off by default; `--augment occlusion`): with a given probability one rectangle of the crop,
each side a random fraction of the crop, is painted one random colour, like a hand, a microphone or
a scarf (random erasing, Zhong et al. 2020; the synthetic occlusion of the 300-W robustness
recipes). The points stay where they are: the network learns to place covered points from the rest
of the face. Its draws come from their own seed stream, so turning it on leaves every other draw
(and every run made without it) exactly as it was.

Degradation (off by default; `--augment degrade`): with given probabilities the crop is blurred by a
Gaussian of random σ (defocus, motion, a webcam's optics) and then JPEG-compressed at a random quality
(the blocks and ringing of web photos and video frames), after the occlusion, as a camera would. The
blur is one banded matrix per axis and example (rows renormalised at the border), so the graph and
the numpy twin compute the same thing; JPEG is TensorFlow's codec in the graph and OpenCV's in the
twin. Its draws come from a third seed stream.

Everything is stateless-random: the same seed gives the same augmentation, on any machine, in
any tf.data parallelism. Works on a batch (B, H, W, 3) with independent parameters per example, or
on one example (H, W, 3).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .geometry import MIRROR_PERMUTATION_68, tf_warp


AUGMENT_CHOICES = ("default", "strong", "occlusion", "degrade", "none")
BLUR_RADIUS_SIGMAS = 3.0  # the blur kernel reaches 3 σ each side


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (all uniform; every range is symmetric around "no change").

    Attributes:
        rotation_degrees: rotation angle in [-r, r] degrees.
        scale_range: zoom factor (> 1 enlarges the face), log-uniform in [lo, hi] so enlargement
            and reduction are equally likely.
        translation: shift in [-t, t] × output size, independently in x and y.
        brightness: offset in [-b, b] added to pixel values in [0, 1].
        contrast: factor in [1 - c, 1 + c] around the per-channel mean.
        saturation: chroma factor in [1 - s, 1 + s].
        hue: chroma rotation in [-h, h] turns (0.05 = ±18°).
        mirror_probability: chance of a horizontal flip (0.5 for training; faces are symmetric
            enough that a flipped face is a valid face with the points permuted).
        seed: mixed into every random draw, so two configs with different seeds differ.
        mirror_permutation: point permutation for flips; None = DESIGN.md §3's 68-point one.
        occlusion_probability: chance of one occluding rectangle per crop (0 = never).
        occlusion_size: its width and height, each uniform in [lo, hi] × the crop side.
        blur_probability: chance of a Gaussian blur per crop (0 = never).
        blur_sigma: its σ in crop pixels, uniform in [lo, hi].
        jpeg_probability: chance of JPEG compression per crop (0 = never).
        jpeg_quality: its quality, an integer uniform in [lo, hi] (1–100).
    """

    rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translation: float = 0.05
    brightness: float = 0.15
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    mirror_probability: float = 0.5
    seed: int = 0
    mirror_permutation: tuple[int, ...] | None = None
    occlusion_probability: float = 0.0
    occlusion_size: tuple[float, float] = (0.15, 0.4)
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (20, 70)

    def __post_init__(self):
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        for name in ("rotation_degrees", "translation", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast > 1 or self.saturation > 1:
            raise ValueError("contrast and saturation must be <= 1 (their factors are 1 ± value)")
        if not 0 <= self.mirror_probability <= 1:
            raise ValueError(f"mirror_probability must be in [0, 1], got {self.mirror_probability}")
        if not 0 <= self.occlusion_probability <= 1:
            raise ValueError(f"occlusion_probability must be in [0, 1], got {self.occlusion_probability}")
        low, high = self.occlusion_size
        if not 0 < low <= high <= 1:
            raise ValueError(f"occlusion_size must satisfy 0 < low <= high <= 1, got {self.occlusion_size}")
        for name in ("blur_probability", "jpeg_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        low, high = self.blur_sigma
        if not 0 < low <= high:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        low, high = self.jpeg_quality
        if not (int(low) == low and int(high) == high and 1 <= low <= high <= 100):
            raise ValueError(f"jpeg_quality must be integers with 1 <= low <= high <= 100, got {self.jpeg_quality}")
        if self.mirror_permutation is not None:
            perm = list(self.mirror_permutation)
            if sorted(perm) != list(range(len(perm))):
                raise ValueError("mirror_permutation must be a permutation of 0..N-1")

    @classmethod
    def none(cls, **changes) -> "AugmentConfig":
        """No augmentation at all (identity warp, no colour change); override fields to taste."""
        values = dict(rotation_degrees=0.0, scale_range=(1.0, 1.0), translation=0.0, brightness=0.0,
                      contrast=0.0, saturation=0.0, hue=0.0, mirror_probability=0.0)
        values.update(changes)
        return cls(**values)

    @classmethod
    def strong(cls, **changes) -> "AugmentConfig":
        """The geometric ranges of HRNet's and others' 300-W recipes: rotation ±30°, scale ±25 %
        (against ±15° and ±10 % by default); colour and shift as the default. Issue 14's ablation."""
        values = dict(rotation_degrees=30.0, scale_range=(0.75, 1.25))
        values.update(changes)
        return cls(**values)

    @classmethod
    def occlusion(cls, **changes) -> "AugmentConfig":
        """The default ranges plus one occluding rectangle in half of the crops, 15–40 % of the crop
        side each way (issue 14's synthetic-occlusion ablation)."""
        values = dict(occlusion_probability=0.5)
        values.update(changes)
        return cls(**values)

    @classmethod
    def degrade(cls, **changes) -> "AugmentConfig":
        """The default ranges plus a Gaussian blur (σ 0.5–1.5 crop px) in 30 % of the crops and JPEG
        compression (quality 20–70) in 30 % (issue 14's blur-and-JPEG ablation)."""
        values = dict(blur_probability=0.3, jpeg_probability=0.3)
        values.update(changes)
        return cls(**values)

    @classmethod
    def named(cls, name: str) -> "AugmentConfig":
        """The augmentation `--augment NAME` asks for: default, strong, occlusion, degrade or none."""
        if name not in AUGMENT_CHOICES:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_CHOICES)}, got {name!r}")
        return {"default": cls, "strong": cls.strong, "occlusion": cls.occlusion, "degrade": cls.degrade,
                "none": cls.none}[name]()

    def permutation(self, num_points: int) -> tuple[int, ...]:
        perm = self.mirror_permutation
        if perm is None:
            if num_points != 68 and self.mirror_probability > 0:
                raise ValueError(f"mirroring {num_points} points needs AugmentConfig.mirror_permutation")
            perm = MIRROR_PERMUTATION_68 if num_points == 68 else tuple(range(num_points))
        if len(perm) != num_points:
            raise ValueError(f"mirror_permutation has {len(perm)} entries for {num_points} points")
        return tuple(perm)

    @property
    def has_colour(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentConfig":
        values = dict(values)
        if "scale_range" in values:
            values["scale_range"] = tuple(values["scale_range"])
        if values.get("mirror_permutation") is not None:
            values["mirror_permutation"] = tuple(values["mirror_permutation"])
        for key in ("occlusion_size", "blur_sigma", "jpeg_quality"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def _seed_pair(seed, config: AugmentConfig):
    """A stateless-RNG seed of shape [2] from an int or a [2] tensor, mixed with config.seed."""
    import tensorflow as tf

    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(seed, tf.int64)])
    elif config.seed:
        seed = tf.cast(seed, tf.int64) + tf.constant([config.seed, 0], tf.int64)
    return tf.cast(seed, tf.int64)


def sample_parameters(config: AugmentConfig, seed, batch_size) -> dict:
    """Random parameters for `batch_size` examples: a dict of (B,) tensors and `shift` (B, 2).

    angle (radians), scale, shift (fraction of the output size), mirror (bool), brightness,
    contrast, saturation, hue (turns).
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(_seed_pair(seed, config), 8)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])

    def uniform(index, low, high, extra=()):
        full_shape = tf.concat([shape, tf.constant(list(extra), tf.int32)], 0)
        return tf.random.stateless_uniform(full_shape, seeds[index], low, high, tf.float32)

    rotation = math.radians(config.rotation_degrees)
    low, high = config.scale_range
    params = {
        "angle": uniform(0, -rotation, rotation),
        "scale": tf.exp(uniform(1, math.log(low), math.log(high))),
        "shift": uniform(2, -config.translation, config.translation, [2]),
        "mirror": uniform(3, 0.0, 1.0) < config.mirror_probability,
        "brightness": uniform(4, -config.brightness, config.brightness),
        "contrast": uniform(5, 1.0 - config.contrast, 1.0 + config.contrast),
        "saturation": uniform(6, 1.0 - config.saturation, 1.0 + config.saturation),
        "hue": uniform(7, -config.hue, config.hue),
    }
    if config.occlusion_probability > 0:  # its own stream: the draws above stay those of a run without it
        more = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(_seed_pair(seed, config), 1), 4)
        extra = lambda index, lo, hi, tail=(): tf.random.stateless_uniform(  # noqa: E731
            tf.concat([shape, tf.constant(list(tail), tf.int32)], 0), more[index], lo, hi, tf.float32)
        lo, hi = config.occlusion_size
        params.update(occlude=extra(0, 0.0, 1.0) < config.occlusion_probability, occlusion_size=extra(1, lo, hi, [2]),
                      occlusion_origin=extra(2, 0.0, 1.0, [2]), occlusion_fill=extra(3, 0.0, 1.0, [3]))
    if config.blur_probability > 0 or config.jpeg_probability > 0:  # a third stream, for the same reason
        more = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(_seed_pair(seed, config), 2), 4)
        draw = lambda index, lo, hi: tf.random.stateless_uniform(shape, more[index], lo, hi, tf.float32)  # noqa: E731
        quality_low, quality_high = config.jpeg_quality
        params.update(blur=draw(0, 0.0, 1.0) < config.blur_probability, blur_sigma=draw(1, *config.blur_sigma),
                      jpeg=draw(2, 0.0, 1.0) < config.jpeg_probability,
                      jpeg_quality=tf.random.stateless_uniform(shape, more[3], int(quality_low), int(quality_high) + 1,
                                                               tf.int32))
    return params


def _occlusion_masks(xp, params: dict, output_size: int):
    """(B, S, S) bool: the pixels (by their centres) inside each crop's occluding rectangle; `xp` is
    numpy or tf.experimental.numpy, so the graph and the numpy twin share the geometry."""
    size = float(output_size)
    extent = xp.asarray(params["occlusion_size"], dtype="float32") * size  # (B, 2): width, height
    origin = xp.asarray(params["occlusion_origin"], dtype="float32") * (size - extent)
    centres = xp.arange(output_size, dtype="float32") + 0.5
    inside_x = (centres[None, :] >= origin[:, 0:1]) & (centres[None, :] < origin[:, 0:1] + extent[:, 0:1])
    inside_y = (centres[None, :] >= origin[:, 1:2]) & (centres[None, :] < origin[:, 1:2] + extent[:, 1:2])
    occlude = xp.asarray(params["occlude"])
    return inside_y[:, :, None] & inside_x[:, None, :] & occlude[:, None, None]


def apply_occlusion(images, params: dict, *, low: float = 0.0):
    """Paint each selected crop's rectangle its fill colour (images (B, S, S, 3) in [low, low + 1])."""
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    masks = _occlusion_masks(tnp, params, int(images.shape[1]))
    fill = tf.cast(params["occlusion_fill"], images.dtype) + low
    return tf.where(masks[..., None], fill[:, None, None, :], images)


def blur_matrices(xp, sigma, blur, size: int, max_sigma: float):
    """(B, S, S) row-stochastic matrices M with M[i, j] = Gaussian weight of pixel j in output pixel i
    (σ per example, reaching `BLUR_RADIUS_SIGMAS`·`max_sigma` pixels, rows renormalised at the
    border); the identity where `blur` is False. `xp` is numpy or tf.experimental.numpy, so the
    graph and the numpy twin share it."""
    radius = max(1, int(math.ceil(BLUR_RADIUS_SIGMAS * max_sigma)))
    index = xp.arange(size, dtype="float32")
    distance = index[None, :, None] - index[None, None, :]  # (1, S, S)
    sigma = xp.reshape(xp.asarray(sigma, dtype="float32"), (-1, 1, 1))
    weights = xp.exp(-0.5 * xp.square(distance / sigma)) * xp.asarray(xp.abs(distance) <= radius, dtype="float32")
    weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    identity = xp.asarray(xp.abs(distance) < 0.5, dtype="float32")
    return xp.where(xp.reshape(xp.asarray(blur), (-1, 1, 1)), weights, identity)


def apply_blur(images, params: dict, config: AugmentConfig):
    """Blur each selected crop (B, S, S, 3): one matrix product per axis."""
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    matrices = blur_matrices(tnp, params["blur_sigma"], params["blur"], int(images.shape[1]), config.blur_sigma[1])
    matrices = tf.cast(matrices, images.dtype)
    return tf.einsum("bij,bjkc,blk->bilc", matrices, images, matrices)


def apply_jpeg(images, params: dict, *, low: float = 0.0):
    """JPEG-compress each selected crop at its quality (TensorFlow's codec; images in [low, low + 1])."""
    import tensorflow as tf

    def one(example):
        image, compress, quality = example
        return tf.cond(compress, lambda: tf.image.adjust_jpeg_quality(image - low, quality) + low, lambda: image)

    return tf.map_fn(one, (images, params["jpeg"], params["jpeg_quality"]),
                     fn_output_signature=tf.TensorSpec(images.shape[1:], images.dtype))


def augmentation_matrices(params: dict, input_height, input_width, output_size: int, base_scale: float = 1.0):
    """(B, 3, 3) affine maps input pixels → output pixels for the sampled geometry.

    Mirror about the input centre, scale by `base_scale · scale`, rotate by `angle` about the
    centre, and move the input centre to the output centre plus `shift · output_size`.
    """
    import tensorflow as tf

    angle, scale = params["angle"], params["scale"] * base_scale
    flip = tf.where(params["mirror"], -1.0, 1.0)
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    l00, l01, l10, l11 = cos * flip, -sin, sin * flip, cos
    cx_in = (tf.cast(input_width, tf.float32) - 1.0) / 2.0
    cy_in = (tf.cast(input_height, tf.float32) - 1.0) / 2.0
    centre_out = (output_size - 1) / 2.0
    tx = centre_out + params["shift"][:, 0] * output_size - (l00 * cx_in + l01 * cy_in)
    ty = centre_out + params["shift"][:, 1] * output_size - (l10 * cx_in + l11 * cy_in)
    zeros, ones = tf.zeros_like(angle), tf.ones_like(angle)
    rows = [tf.stack([l00, l01, tx], -1), tf.stack([l10, l11, ty], -1), tf.stack([zeros, zeros, ones], -1)]
    return tf.stack(rows, axis=1)


_YIQ_FROM_RGB = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = np.linalg.inv(_YIQ_FROM_RGB)


def colour_matrices(saturation, hue):
    """(B, 3, 3) RGB → RGB matrices scaling (saturation) and rotating (hue, turns) YIQ's chroma."""
    import tensorflow as tf

    angle = hue * (2.0 * math.pi)
    cos, sin = tf.cos(angle) * saturation, tf.sin(angle) * saturation
    zeros, ones = tf.zeros_like(cos), tf.ones_like(cos)
    chroma = tf.stack(
        [tf.stack([ones, zeros, zeros], -1), tf.stack([zeros, cos, -sin], -1), tf.stack([zeros, sin, cos], -1)], axis=1
    )
    rgb_from_yiq = tf.constant(_RGB_FROM_YIQ, tf.float32)
    yiq_from_rgb = tf.constant(_YIQ_FROM_RGB, tf.float32)
    return tf.einsum("ij,bjk,kl->bil", rgb_from_yiq, chroma, yiq_from_rgb)


def apply_colour(images, params: dict, *, scale: float = 1.0, low: float = 0.0):
    """Saturation + hue, contrast, brightness on images (B, H, W, 3) holding `scale` × [0, 1]
    values; returns them in [low, low + 1], clipped.

    All of it is affine in the pixel value, so it folds into ONE per-example map x → A·x + d
    (A = contrast · colour matrix / scale, d from the image mean, the brightness and `low`): one
    pass over the pixels instead of five. `scale` and `low` let callers skip separate passes for
    uint8 → [0, 1] and for the model's [-0.5, 0.5].
    """
    import tensorflow as tf

    matrices = colour_matrices(params["saturation"], params["hue"]) / scale  # (B, 3, 3)
    contrast = params["contrast"][:, None]
    mean = tf.reduce_mean(images, axis=[1, 2])  # (B, 3); the mean of T·x is T·mean(x)
    offset = (1.0 - contrast) * tf.einsum("bdc,bc->bd", matrices, mean) + params["brightness"][:, None] + low
    images = tf.einsum("bhwc,bdc->bhwd", images, matrices * contrast[:, :, None]) + offset[:, None, None, :]
    return tf.clip_by_value(images, low, low + 1.0)


def apply_augmentation(images, points, params: dict, config: AugmentConfig, *, output_size: int | None = None,
                       base_scale: float = 1.0, low: float = 0.0):
    """Apply given parameters to a batch: images (B, H, W, 3), points (B, N, 2) in input pixels.

    Returns images (B, size, size, 3) float32 in [low, low + 1] (uint8 input is scaled by 1/255,
    float input taken to be in [0, 1]; `low=-0.5` gives the model's range) and points (B, N, 2)
    float32 in output pixels (mirrored examples with their points permuted).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    scale = 255.0 if images.dtype == tf.uint8 else 1.0  # applied after the warp, on fewer pixels
    images = tf.cast(images, tf.float32)
    points = tf.cast(points, tf.float32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    if output_size is None:
        if images.shape[1] is None:
            raise ValueError("output_size is needed when the image size is not static")
        output_size = int(images.shape[1])
    matrices = augmentation_matrices(params, height, width, output_size, base_scale)
    warped = tf_warp(images, matrices, output_size)
    moved = tf.einsum("bnk,bjk->bnj", points, matrices[:, :2, :2]) + matrices[:, None, :2, 2]
    num_points = points.shape[1]
    if num_points is not None and config.mirror_probability > 0:
        permuted = tf.gather(moved, list(config.permutation(num_points)), axis=1)
        moved = tf.where(params["mirror"][:, None, None], permuted, moved)
    if config.has_colour:
        warped = apply_colour(warped, params, scale=scale, low=low)
    else:
        warped = tf.clip_by_value(warped * (1.0 / scale) + low, low, low + 1.0)
    if config.occlusion_probability > 0:
        warped = apply_occlusion(warped, params, low=low)
    if config.blur_probability > 0:
        warped = apply_blur(warped, params, config)
    if config.jpeg_probability > 0:
        warped = apply_jpeg(warped, params, low=low)
    return warped, moved


def augment(image, points, config: AugmentConfig, seed, *, output_size: int | None = None, base_scale: float = 1.0):
    """Randomly augment one example (H, W, 3) + (N, 2) or a batch (B, H, W, 3) + (B, N, 2).

    `seed`: an int or a shape-[2] integer tensor (one seed per call; a batch draws independent
    parameters for each example from it). `output_size` defaults to the input size; `base_scale`
    scales input pixels to output pixels before the random geometry (1 = same pixel density, as
    for a loose crop cut at the final crop's density). uint8 input is scaled to [0, 1]; float input
    is taken to be in [0, 1]. Returns float32 images in [0, 1] and float32 points in output pixels.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    single = image.shape.rank == 3
    if single:
        image, points = image[None], tf.convert_to_tensor(points)[None]
    params = sample_parameters(config, seed, tf.shape(image)[0])
    images, moved = apply_augmentation(image, points, params, config, output_size=output_size, base_scale=base_scale)
    if single:
        return images[0], moved[0]
    return images, moved


# ----------------------------------------------------------------------------------------------
# numpy twin (OpenCV warp), for keras.utils.PyDataset pipelines on backends without TensorFlow
# ----------------------------------------------------------------------------------------------
def sample_parameters_numpy(config: AugmentConfig, rng: np.random.Generator, batch_size: int) -> dict:
    """`sample_parameters` with a numpy Generator: same ranges and distributions (not the same draws)."""
    rotation = math.radians(config.rotation_degrees)
    low, high = config.scale_range
    size = (batch_size,)
    params = {
        "angle": rng.uniform(-rotation, rotation, size),
        "scale": np.exp(rng.uniform(math.log(low), math.log(high), size)),
        "shift": rng.uniform(-config.translation, config.translation, (batch_size, 2)),
        "mirror": rng.uniform(0.0, 1.0, size) < config.mirror_probability,
        "brightness": rng.uniform(-config.brightness, config.brightness, size),
        "contrast": rng.uniform(1.0 - config.contrast, 1.0 + config.contrast, size),
        "saturation": rng.uniform(1.0 - config.saturation, 1.0 + config.saturation, size),
        "hue": rng.uniform(-config.hue, config.hue, size),
    }
    if config.occlusion_probability > 0:
        lo, hi = config.occlusion_size
        params.update(occlude=rng.uniform(0.0, 1.0, size) < config.occlusion_probability,
                      occlusion_size=rng.uniform(lo, hi, (batch_size, 2)), occlusion_origin=rng.uniform(0.0, 1.0, (batch_size, 2)),
                      occlusion_fill=rng.uniform(0.0, 1.0, (batch_size, 3)))
    if config.blur_probability > 0 or config.jpeg_probability > 0:
        quality_low, quality_high = config.jpeg_quality
        params.update(blur=rng.uniform(0.0, 1.0, size) < config.blur_probability,
                      blur_sigma=rng.uniform(*config.blur_sigma, size),
                      jpeg=rng.uniform(0.0, 1.0, size) < config.jpeg_probability,
                      jpeg_quality=rng.integers(int(quality_low), int(quality_high) + 1, size))
    return params


def apply_blur_numpy(images: np.ndarray, params: dict, config: AugmentConfig) -> np.ndarray:
    """numpy twin of `apply_blur`."""
    matrices = blur_matrices(np, params["blur_sigma"], params["blur"], images.shape[1], config.blur_sigma[1])
    return np.einsum("bij,bjkc,blk->bilc", matrices.astype(np.float32), images.astype(np.float32),
                     matrices.astype(np.float32))


def apply_jpeg_numpy(images: np.ndarray, params: dict, *, low: float = 0.0) -> np.ndarray:
    """numpy/OpenCV twin of `apply_jpeg` (OpenCV's libjpeg: the same format, not the same bits)."""
    import cv2

    out = np.array(images, np.float32, copy=True)
    for index in np.flatnonzero(params["jpeg"]):
        pixels = np.clip(np.round((out[index] - low) * 255.0), 0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(params["jpeg_quality"][index])])
        out[index] = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0 + low
    return out


def apply_occlusion_numpy(images: np.ndarray, params: dict, *, low: float = 0.0) -> np.ndarray:
    """numpy twin of `apply_occlusion`."""
    masks = _occlusion_masks(np, params, images.shape[1])
    fill = (np.asarray(params["occlusion_fill"], np.float32) + low)[:, None, None, :]
    return np.where(masks[..., None], fill, images).astype(images.dtype)


def augmentation_matrices_numpy(params: dict, input_height: int, input_width: int, output_size: int,
                                base_scale: float = 1.0) -> np.ndarray:
    """numpy twin of `augmentation_matrices` (float64)."""
    angle = np.asarray(params["angle"], np.float64)
    scale = np.asarray(params["scale"], np.float64) * base_scale
    flip = np.where(params["mirror"], -1.0, 1.0)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.stack([np.stack([cos * flip, -sin], -1), np.stack([sin * flip, cos], -1)], axis=1)  # (B, 2, 2)
    centre_in = np.array([(input_width - 1) / 2.0, (input_height - 1) / 2.0])
    centre_out = (output_size - 1) / 2.0
    translation = centre_out + np.asarray(params["shift"], np.float64) * output_size - linear @ centre_in
    matrices = np.zeros((len(angle), 3, 3))
    matrices[:, :2, :2], matrices[:, :2, 2], matrices[:, 2, 2] = linear, translation, 1.0
    return matrices


def _colour_matrices_numpy(saturation, hue) -> np.ndarray:
    angle = np.asarray(hue, np.float64) * (2.0 * math.pi)
    cos, sin = np.cos(angle) * saturation, np.sin(angle) * saturation
    chroma = np.zeros((len(angle), 3, 3))
    chroma[:, 0, 0], chroma[:, 1, 1], chroma[:, 1, 2], chroma[:, 2, 1], chroma[:, 2, 2] = 1.0, cos, -sin, sin, cos
    return np.einsum("ij,bjk,kl->bil", _RGB_FROM_YIQ, chroma, _YIQ_FROM_RGB)


def apply_colour_numpy(images: np.ndarray, params: dict, *, scale: float = 1.0, low: float = 0.0) -> np.ndarray:
    """numpy twin of `apply_colour`."""
    matrices = _colour_matrices_numpy(params["saturation"], params["hue"]) / scale
    contrast = np.asarray(params["contrast"], np.float64)[:, None]
    mean = images.reshape(len(images), -1, 3).mean(axis=1, dtype=np.float64)
    offset = (1.0 - contrast) * np.einsum("bdc,bc->bd", matrices, mean) + np.asarray(params["brightness"])[:, None] + low
    linear = (matrices * contrast[:, :, None]).astype(np.float32)
    out = np.einsum("bhwc,bdc->bhwd", images.astype(np.float32), linear) + offset[:, None, None, :].astype(np.float32)
    return np.clip(out, low, low + 1.0, out=out)


def augment_numpy(images: np.ndarray, points: np.ndarray, config: AugmentConfig, rng: np.random.Generator, *,
                  output_size: int | None = None, base_scale: float = 1.0, low: float = 0.0):
    """numpy/OpenCV twin of `augment` for a batch: uint8 (B, H, W, 3) + (B, N, 2) → float32 images in
    [low, low + 1] and float32 points in output pixels. Same geometry and colour model as the graph
    version (tests check the two against each other)."""
    import cv2

    images = np.asarray(images)
    points = np.asarray(points, np.float64)
    batch, height, width = images.shape[:3]
    output_size = output_size or height
    params = sample_parameters_numpy(config, rng, batch)
    matrices = augmentation_matrices_numpy(params, height, width, output_size, base_scale)
    warped = np.stack([
        cv2.warpAffine(image, matrix[:2], (output_size, output_size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        for image, matrix in zip(images, matrices)
    ]).astype(np.float32)
    moved = points @ np.transpose(matrices[:, :2, :2], (0, 2, 1)) + matrices[:, None, :2, 2]
    if config.mirror_probability > 0:
        permuted = moved[:, list(config.permutation(points.shape[1]))]
        moved = np.where(params["mirror"][:, None, None], permuted, moved)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    if config.has_colour:
        warped = apply_colour_numpy(warped, params, scale=scale, low=low)
    else:
        warped = np.clip(warped / scale + low, low, low + 1.0)
    if config.occlusion_probability > 0:
        warped = apply_occlusion_numpy(warped.astype(np.float32), params, low=low)
    if config.blur_probability > 0:
        warped = apply_blur_numpy(warped, params, config)
    if config.jpeg_probability > 0:
        warped = apply_jpeg_numpy(warped, params, low=low)
    return warped.astype(np.float32), moved.astype(np.float32)
