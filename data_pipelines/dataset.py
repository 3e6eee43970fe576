"""From annotated faces on disk to the `(image, targets)` batches that `model.fit` consumes.

Speed by design (docs/DATA.md has the figures):

1. Each photo is decoded ONCE (OpenCV, in a thread pool) and cut into a *loose crop*: the final
   crop's square enlarged `loose_factor` times (1.5) at the final crop's pixel density
   (256 · 1.5 = 384 px). Those small fixed-size uint8 crops, with their points, are the cache
   (about 0.44 MB per face; 0.9 GB for the 2014 shared faces).
2. Per epoch: shuffle indices, gather crops, batch, then ONE parallel map per batch does all of the
   random geometry in one affine warp, the colour changes and the heat-map encoding, all in the
   TensorFlow graph (no Python in the hot path), then prefetch.

Validation (`training=False`) caches the plain 256² crops and only encodes targets.

Targets are keyed by the model's output names: `heatmaps_1`..`heatmaps_4` (the same Gaussian
maps for every level, (B, 64, 64, 68)) and `landmarks` (B, 68, 2) in normalised crop coordinates.
Images are float32 RGB in [-0.5, 0.5] (paper 5.1).

TensorFlow is imported inside the functions that need it, so `load_examples` and `crop_face`
also work where only numpy and OpenCV are installed (e.g. a JAX machine).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .discovery import Face, Problem
from .geometry import crop_matrix, face_box_from_points, transform_points, warp_to_crop
from .images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from .pts import PtsFormatError, read_pts

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 1.25
DEFAULT_LOOSE_FACTOR = 1.5
HEATMAP_KEYS = ("heatmaps_1", "heatmaps_2", "heatmaps_3", "heatmaps_4")


# ----------------------------------------------------------------------------------------------
# numpy side: one face → one crop
# ----------------------------------------------------------------------------------------------
@dataclass
class CroppedFace:
    """A face cut out of its photo: crop (S, S, 3) uint8, points (N, 2) float32 in crop pixels,
    and the 3×3 matrix photo → crop (apply `geometry.invert` to map predictions back)."""

    image: np.ndarray
    points: np.ndarray
    matrix: np.ndarray


def crop_face(face: Face, output_size: int = 256, margin: float = DEFAULT_MARGIN, *,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> CroppedFace:
    """Read a face's photo and .pts and cut the crop around its 68-point box (`geometry.crop_matrix`).

    Raises `ImageReadError`, `PtsFormatError` or `ValueError` (degenerate box) naming the file.
    """
    points = read_pts(face.pts_path)
    try:
        matrix = crop_matrix(face_box_from_points(points), output_size, margin)
    except ValueError as error:
        raise PtsFormatError(face.pts_path, str(error)) from None
    image = read_image(face.image_path, max_pixels=max_pixels)
    crop = warp_to_crop(image, matrix, output_size)
    return CroppedFace(crop, transform_points(matrix, points).astype(np.float32), matrix)


@dataclass
class Examples:
    """Crops of many faces, stacked: what evaluation code and the tf.data cache start from."""

    images: np.ndarray  # (N, S, S, 3) uint8
    points: np.ndarray  # (N, P, 2) float32, crop pixels
    matrices: np.ndarray  # (N, 3, 3) float64, photo → crop
    faces: list[Face]
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.faces)


def load_examples(faces, output_size: int = 256, margin: float = DEFAULT_MARGIN, *, workers: int | None = None,
                  num_points: int | None = 68, max_pixels: int = DEFAULT_MAX_PIXELS,
                  problems: list | None = None) -> Examples:
    """Crop every face (in a thread pool; OpenCV releases the GIL) into stacked numpy arrays.

    Faces that cannot be read are logged, appended to `problems` (and `Examples.problems`) and
    left out; `Examples.faces` lists the ones kept, in input order.
    """
    faces = list(faces)
    workers = workers or min(8, os.cpu_count() or 1)
    count = len(faces)
    # Workers write straight into the stacked arrays: no second copy of every crop.
    images = np.zeros((count, output_size, output_size, 3), np.uint8)
    matrices = np.zeros((count, 3, 3), np.float64)
    results: list = [None] * count

    def one(index):
        face = faces[index]
        try:
            cropped = crop_face(face, output_size, margin, max_pixels=max_pixels)
            if num_points is not None and len(cropped.points) != num_points:
                raise PtsFormatError(face.pts_path, f"has {len(cropped.points)} points, expected {num_points}")
        except (ImageReadError, PtsFormatError) as error:
            results[index] = Problem.from_error(error)
            return
        images[index] = cropped.image
        matrices[index] = cropped.matrix
        results[index] = cropped.points

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(count)))
    found_problems = [result for result in results if isinstance(result, Problem)]
    for problem in found_problems:
        log.warning("skipped %s", problem)
    if problems is not None:
        problems.extend(found_problems)
    keep = [index for index, result in enumerate(results) if not isinstance(result, Problem)]
    if len(keep) < count:
        images, matrices = images[keep], matrices[keep]
    point_count = len(results[keep[0]]) if keep else (num_points or 0)
    points = np.zeros((len(keep), point_count, 2), np.float32)
    for row, index in enumerate(keep):
        points[row] = results[index]
    return Examples(images, points, matrices, [faces[index] for index in keep], found_problems)


def loose_geometry(output_size: int, margin: float, loose_factor: float) -> tuple[int, float]:
    """(side in pixels, margin) of the loose crop: `loose_factor` × the final crop at the same
    pixel density, the side rounded so the final crop sits on whole pixels in its centre."""
    extra = int(round(output_size * (loose_factor - 1.0) / 2.0))
    loose_size = output_size + 2 * max(extra, 0)
    return loose_size, margin * loose_size / output_size


# ----------------------------------------------------------------------------------------------
# TensorFlow side: cached crops → batches
# ----------------------------------------------------------------------------------------------
def _config_or_default(config):
    if config is None:
        from cfdrnn_keras.config import CFDRNNConfig

        config = CFDRNNConfig()
    return config


def _stack_to_tensor(examples: Examples, chunk: int = 256):
    """`examples.images` → one tf.Tensor, in chunks and releasing the numpy array before the
    concatenation, so the peak is about 2× the crops rather than 3×."""
    import tensorflow as tf

    images = examples.images
    parts = [tf.convert_to_tensor(images[start:start + chunk]) for start in range(0, len(images), chunk)]
    examples.images = images = None
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def encode_targets(points_px, config):
    """Targets dict for points (B, N, 2) in crop pixels: four identical heat-map targets + landmarks."""
    import tensorflow as tf
    from cfdrnn_keras.model.codec import encode_heatmaps

    heatmaps = encode_heatmaps(points_px, config.input_size, config.stride, config.heatmap_sigma)
    targets = {key: heatmaps for key in HEATMAP_KEYS}
    targets["landmarks"] = tf.cast(points_px, tf.float32) / float(config.input_size)
    return targets


def batches_from_crops(crops, *, config=None, training: bool, batch_size: int = 8, augment_config=None,
                       seed: int = 0, drop_remainder: bool | None = None, num_parallel_calls=None):
    """The common tail of every pipeline: a dataset of (crop uint8 (S, S, 3), points (N, 2)) → batches.

    Training: batch, then per batch one augmentation (random geometry about the loose crop's centre,
    colour) and the target encoding. Evaluation: batch, cut the central `input_size` square (a no-op
    for plain crops), scale, encode.
    `crops` must already be shuffled (and repeated) as wanted.
    """
    import tensorflow as tf

    from .augment import AugmentConfig, apply_augmentation, sample_parameters

    config = _config_or_default(config)
    size = config.input_size
    parallel = num_parallel_calls or tf.data.AUTOTUNE
    if drop_remainder is None:
        drop_remainder = training
    batched = crops.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=parallel)
    if training:
        augment_config = augment_config or AugmentConfig()
        # One random draw per batch and epoch: `Dataset.random` with rerandomize_each_iteration
        # gives a new stream every epoch that is still a pure function of the seed.
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def augment_batch(batch, random):
            images, points = batch
            seed_pair = tf.stack([tf.constant(seed, tf.int64), random])
            params = sample_parameters(augment_config, seed_pair, tf.shape(images)[0])
            images, points = apply_augmentation(images, points, params, augment_config, output_size=size, low=-0.5)
            return images, encode_targets(points, config)

        dataset = tf.data.Dataset.zip(batched, randoms).map(augment_batch, num_parallel_calls=parallel)
    else:

        def finish(images, points):
            crop_size = images.shape[1]
            if crop_size is not None and crop_size != size:  # loose crops (e.g. TFRecords): central square
                offset = (crop_size - size) // 2
                images = images[:, offset:offset + size, offset:offset + size]
                points = points - float(offset)
            return tf.cast(images, tf.float32) / 255.0 - 0.5, encode_targets(points, config)

        dataset = batched.map(finish, num_parallel_calls=parallel)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(faces, config=None, *, training: bool, batch_size: int = 8, augment_config=None,
                 cache: bool = True, shuffle: bool | None = None, seed: int = 0, margin: float = DEFAULT_MARGIN,
                 drop_remainder: bool | None = None, loose_factor: float = DEFAULT_LOOSE_FACTOR,
                 repeat: bool = False, workers: int | None = None, num_parallel_calls=None,
                 problems: list | None = None):
    """A `tf.data.Dataset` of `(image, targets)` batches for `model.fit` / `model.evaluate`.

    Args:
        faces: `discovery.Face`s (e.g. `load_split("train", roots).faces`).
        config: `CFDRNNConfig` (input size, stride, heat-map σ); default `CFDRNNConfig()`.
        training: augment (loose crops + `augment_config`, default `AugmentConfig()`) or not
            (plain crops; `augment_config` is ignored).
        batch_size: examples per batch.
        cache: decode every photo once up front and keep the (loose) crops in memory. False
            re-reads each photo every epoch (for data that does not fit; TFRecords are faster).
        shuffle: reshuffle every epoch; default = `training`.
        seed: seeds the shuffle order and the augmentation; the same seed replays the same epochs.
        margin: crop side = margin × the longer side of the 68-point box.
        drop_remainder: drop a last partial batch; default = `training` (fixed batch shapes).
        loose_factor: side of the cached loose crop relative to the final crop (training only).
        repeat: repeat forever (then give `steps_per_epoch` to `fit`).
        workers: threads that decode photos for the cache.
        problems: a list that collects the faces skipped (also logged as warnings).
    """
    import tensorflow as tf

    config = _config_or_default(config)
    size = config.input_size
    faces = list(faces)
    if not faces:
        raise ValueError("make_dataset: no faces given")
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    crop_size, crop_margin = loose_geometry(size, margin, loose_factor) if training else (size, margin)

    if cache:
        examples = load_examples(faces, crop_size, crop_margin, workers=workers, num_points=config.num_landmarks,
                                 problems=problems)
        if len(examples) == 0:
            raise ValueError(f"none of the {len(faces)} faces could be read (see the warnings above)")
        if drop_remainder and not repeat and len(examples) < batch_size:
            raise ValueError(f"{len(examples)} readable faces cannot fill one batch of {batch_size} "
                             "(drop_remainder=True): lower the batch size or pass repeat=True")
        table = _stack_to_tensor(examples)
        if not tf.distribute.has_strategy():
            # A variable is a resource: graph rewrites (auto-sharding across workers) refer to it
            # instead of copying a gigabyte of pixels into a GraphDef (2 GB limit). Inside a
            # strategy scope it would be mirrored per device, so the plain tensor is kept there.
            table = tf.Variable(table, trainable=False, name="face_crop_cache")
        point_table = tf.convert_to_tensor(examples.points)
        del examples
        crops = tf.data.Dataset.range(int(table.shape[0]))
        if shuffle:
            crops = crops.shuffle(int(table.shape[0]), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            crops = crops.repeat()
        crops = crops.map(lambda index: (tf.gather(table, index), tf.gather(point_table, index)))
    else:
        crops = _streamed_crops(faces, crop_size, crop_margin, config.num_landmarks, shuffle=shuffle, seed=seed,
                                repeat=repeat, problems=problems)
    return batches_from_crops(crops, config=config, training=training, batch_size=batch_size,
                              augment_config=augment_config, seed=seed, drop_remainder=drop_remainder,
                              num_parallel_calls=num_parallel_calls)


def _streamed_crops(faces, crop_size, crop_margin, num_points, *, shuffle, seed, repeat, problems):
    """Crops decoded on the fly every epoch (cache=False); unreadable faces are logged and dropped."""
    import tensorflow as tf

    reported = set()

    def load(index):
        face = faces[int(index)]
        try:
            cropped = crop_face(face, crop_size, crop_margin)
            if len(cropped.points) != num_points:
                raise PtsFormatError(face.pts_path, f"has {len(cropped.points)} points, expected {num_points}")
            return cropped.image, cropped.points, True
        except (ImageReadError, PtsFormatError) as error:
            if face.pts_path not in reported:  # report once, not every epoch
                reported.add(face.pts_path)
                problem = Problem.from_error(error)
                log.warning("skipped %s", problem)
                if problems is not None:
                    problems.append(problem)
            return np.zeros((crop_size, crop_size, 3), np.uint8), np.zeros((num_points, 2), np.float32), False

    def load_tf(index):
        image, points, ok = tf.numpy_function(load, [index], [tf.uint8, tf.float32, tf.bool], stateful=False)
        image.set_shape((crop_size, crop_size, 3))
        points.set_shape((num_points, 2))
        ok.set_shape(())
        return image, points, ok

    indices = tf.data.Dataset.range(len(faces))
    if shuffle:
        indices = indices.shuffle(len(faces), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    crops = indices.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE)
    return crops.filter(_loaded).map(_without_flag)


def _loaded(image, points, ok):
    """Keep the crops that loaded (named functions: AutoGraph cannot parse two lambdas on one line)."""
    return ok


def _without_flag(image, points, ok):
    return image, points


# ----------------------------------------------------------------------------------------------
# numpy pipeline: a keras.utils.PyDataset for backends without TensorFlow (JAX on a GPU machine)
# ----------------------------------------------------------------------------------------------
def _numpy_targets(points_px: np.ndarray, config) -> dict:
    from cfdrnn_keras.model.codec import encode_heatmaps_numpy

    heatmaps = encode_heatmaps_numpy(points_px, config.input_size, config.stride, config.heatmap_sigma)
    targets = {key: heatmaps for key in HEATMAP_KEYS}
    targets["landmarks"] = (points_px / float(config.input_size)).astype(np.float32)
    return targets


def make_pydataset(faces, config=None, *, training: bool, batch_size: int = 8, augment_config=None,
                   shuffle: bool | None = None, seed: int = 0, margin: float = DEFAULT_MARGIN,
                   drop_remainder: bool | None = None, loose_factor: float = DEFAULT_LOOSE_FACTOR,
                   workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10,
                   problems: list | None = None):
    """`make_dataset`'s batches as a `keras.utils.PyDataset` of numpy arrays (OpenCV augmentation).

    Same crops, targets, value range and parameters as `make_dataset`; the augmentation follows the
    same model with numpy random draws (`augment.augment_numpy`). Each batch's randomness is a pure
    function of (seed, epoch, batch index), so results do not depend on how many workers run.
    `workers` / `use_multiprocessing` / `max_queue_size` go to `PyDataset`.
    """
    import keras

    from .augment import AugmentConfig, augment_numpy

    config = _config_or_default(config)
    size = config.input_size
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    augment_config = (augment_config or AugmentConfig()) if training else None
    crop_size, crop_margin = loose_geometry(size, margin, loose_factor) if training else (size, margin)
    examples = load_examples(faces, crop_size, crop_margin, num_points=config.num_landmarks, problems=problems)
    if len(examples) == 0:
        raise ValueError(f"none of the {len(list(faces))} faces could be read (see the warnings above)")

    class FacePyDataset(keras.utils.PyDataset):
        """Cached crops → augmented batches; reshuffled at every epoch end."""

        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
            self.examples = examples
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            count = len(self.examples)
            if not shuffle:
                return np.arange(count)
            return np.random.default_rng([seed, self.epoch]).permutation(count)

        def __len__(self):
            count = len(self.examples)
            return count // batch_size if drop_remainder else -(-count // batch_size)

        def __getitem__(self, index):
            rows = self.order[index * batch_size:(index + 1) * batch_size]
            crops, points = self.examples.images[rows], self.examples.points[rows]
            if augment_config is not None:
                rng = np.random.default_rng([seed, augment_config.seed, self.epoch, index])
                images, points = augment_numpy(crops, points, augment_config, rng, output_size=size, low=-0.5)
            else:
                images = crops.astype(np.float32) / 255.0 - 0.5
            return images, _numpy_targets(points, config)

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return FacePyDataset()
