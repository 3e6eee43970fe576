"""Sharded TFRecords of loose face crops: for data larger than memory and for many workers.

Each record is one face, already decoded, cropped and stored at the training pipeline's loose-crop
size (so reading never touches the original photos again):

    image       encoded loose crop (PNG by default: lossless; "raw" is fastest to read, "jpeg" smallest)
    encoding    b"png" | b"jpeg" | b"raw"
    size        side of the loose crop in pixels
    points      N·2 floats, 0-based loose-crop pixels
    matrix      9 float64 (as bytes): photo → loose crop, to map predictions back to the photo
    image_path, pts_path, subset    where the face came from

Faces go round-robin to the shards (face i → shard i mod S), and the reader interleaves the shards
one record at a time, so an unshuffled read returns the faces in their original order — the same
stream as `dataset.make_dataset` with the same parameters. `metadata.json` beside the shards records
the crop parameters, the counts and the faces that were skipped.

Sharding across workers: give each worker `num_shards=W, shard_index=i`; with at least W files the
files are split (no worker reads another's records), otherwise records are split. Under
`tf.distribute`, leave it to the strategy's auto-sharding (FILE policy works because the files are
independent).
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .dataset import (
    DEFAULT_LOOSE_FACTOR,
    DEFAULT_MARGIN,
    Examples,
    _config_or_default,
    batches_from_crops,
    crop_face,
    loose_geometry,
)
from .discovery import Face, Problem
from .images import ImageReadError
from .pts import PtsFormatError

log = logging.getLogger(__name__)

ENCODINGS = ("png", "jpeg", "raw")
METADATA = "metadata.json"


def shard_name(index: int, count: int) -> str:
    return f"faces-{index:05d}-of-{count:05d}.tfrecord"


def _encode(image: np.ndarray, encoding: str) -> bytes:
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    extension, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]) if encoding == "png" else \
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    ok, data = cv2.imencode(extension, image[:, :, ::-1], params)  # RGB → OpenCV's BGR
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a crop as {encoding}")
    return data.tobytes()


def _example(face: Face, image: np.ndarray, points: np.ndarray, matrix: np.ndarray, encoding: str) -> bytes:
    import tensorflow as tf

    def bytes_feature(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "image": bytes_feature(_encode(image, encoding)),
        "encoding": bytes_feature(encoding.encode()),
        "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[0]])),
        "points": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(points, np.float32).ravel())),
        "matrix": bytes_feature(np.asarray(matrix, np.float64).tobytes()),
        "image_path": bytes_feature(str(face.image_path).encode()),
        "pts_path": bytes_feature(str(face.pts_path).encode()),
        "subset": bytes_feature(face.subset.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_tfrecords(faces, out_dir, *, shards: int = 8, output_size: int = 256, margin: float = DEFAULT_MARGIN,
                    loose_factor: float = DEFAULT_LOOSE_FACTOR, encoding: str = "png", num_points: int = 68,
                    workers: int | None = None, problems: list | None = None, chunk: int = 64) -> list[Path]:
    """Crop `faces` and write them to `shards` TFRecord files in `out_dir` (+ metadata.json).

    Unreadable faces are logged, collected in `problems` and skipped. Returns the shard paths.
    Memory stays bounded: faces are cropped `chunk` at a time.
    """
    import tensorflow as tf

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    faces = list(faces)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loose_size, loose_margin = loose_geometry(output_size, margin, loose_factor)
    paths = [out_dir / shard_name(index, shards) for index in range(shards)]
    writers = [tf.io.TFRecordWriter(str(path)) for path in paths]
    counts = [0] * shards
    skipped: list[Problem] = []
    written = 0

    def one(face):
        try:
            cropped = crop_face(face, loose_size, loose_margin)
            if len(cropped.points) != num_points:
                raise PtsFormatError(face.pts_path, f"has {len(cropped.points)} points, expected {num_points}")
            return _example(face, cropped.image, cropped.points, cropped.matrix, encoding)
        except (ImageReadError, PtsFormatError) as error:
            return Problem.from_error(error)

    try:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(faces), chunk):
                for record in pool.map(one, faces[start:start + chunk]):
                    if isinstance(record, Problem):
                        skipped.append(record)
                        log.warning("skipped %s", record)
                        continue
                    shard = written % shards  # round-robin over the faces actually written
                    writers[shard].write(record)
                    counts[shard] += 1
                    written += 1
    finally:
        for writer in writers:
            writer.close()
    if problems is not None:
        problems.extend(skipped)
    metadata = {
        "faces": written,
        "shards": {path.name: count for path, count in zip(paths, counts)},
        "output_size": output_size,
        "margin": margin,
        "loose_factor": loose_factor,
        "loose_size": loose_size,
        "encoding": encoding,
        "num_points": num_points,
        "skipped": [str(problem) for problem in skipped],
    }
    (out_dir / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return paths


def tfrecord_files(source) -> list[str]:
    """Shard files from a folder (all `*.tfrecord`, sorted), a file, or a list of either."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    files = []
    for item in source:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(str(path) for path in item.glob("*.tfrecord")))
        elif item.is_file():
            files.append(str(item))
        else:
            raise FileNotFoundError(f"{item}: no such TFRecord file or folder")
    if not files:
        raise FileNotFoundError(f"no *.tfrecord files in {', '.join(str(item) for item in source)}")
    return files


def parse_record(serialized, num_points: int = 68):
    """A serialized record → dict of tensors: image (S, S, 3) uint8, points (N, 2), matrix (3, 3)
    float64, size, image_path, pts_path, subset."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "encoding": tf.io.FixedLenFeature([], tf.string),
        "size": tf.io.FixedLenFeature([], tf.int64),
        "points": tf.io.FixedLenFeature([num_points * 2], tf.float32),
        "matrix": tf.io.FixedLenFeature([], tf.string),
        "image_path": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "pts_path": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "subset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    record = tf.io.parse_single_example(serialized, spec)
    size = tf.cast(record["size"], tf.int32)
    data, encoding = record["image"], record["encoding"]

    def raw():
        return tf.reshape(tf.io.decode_raw(data, tf.uint8), [size, size, 3])

    def compressed():  # decode_image reads both PNG and JPEG
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    image = tf.cond(tf.equal(encoding, "raw"), raw, compressed)
    return {
        "image": image,
        "points": tf.reshape(record["points"], [num_points, 2]),
        "matrix": tf.reshape(tf.io.decode_raw(record["matrix"], tf.float64), [3, 3]),
        "size": size,
        "image_path": record["image_path"],
        "pts_path": record["pts_path"],
        "subset": record["subset"],
    }


def read_metadata(source) -> dict:
    """metadata.json of the folder holding the shards (empty dict if absent)."""
    folder = Path(tfrecord_files(source)[0]).parent
    path = folder / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


def _stored_size(files) -> int:
    """Side of the stored crops: from metadata.json, else from the first record."""
    import tensorflow as tf

    metadata = read_metadata(files)
    if "loose_size" in metadata:
        return int(metadata["loose_size"])
    for serialized in tf.data.TFRecordDataset(files[:1]).take(1):
        return int(parse_record(serialized)["size"])
    raise ValueError(f"{files[0]}: empty TFRecord file and no {METADATA}")


def make_tfrecord_dataset(source, config=None, *, training: bool, batch_size: int = 8, augment_config=None,
                          shuffle: bool | None = None, seed: int = 0, drop_remainder: bool | None = None,
                          repeat: bool = False, shuffle_buffer: int = 1024, num_shards: int = 1, shard_index: int = 0,
                          cache: bool = False, num_parallel_calls=None):
    """`make_dataset`'s `(image, targets)` stream, read from TFRecords written by `write_tfrecords`.

    `source`: a folder of shards, a file, or a list. Training uses the stored loose crops for
    augmentation; evaluation cuts their central `input_size` square (the plain crop). Shuffling is
    two-level: shard order, then a buffer of `shuffle_buffer` still-encoded records. `cache` keeps
    the decoded crops in memory after the first epoch (for data that fits). `num_shards` /
    `shard_index` give each of several workers its own part (see the module docstring).
    """
    import tensorflow as tf

    config = _config_or_default(config)
    files = tfrecord_files(source)
    shuffle = training if shuffle is None else shuffle
    stored_size = _stored_size(files)
    written_for = read_metadata(files).get("output_size", config.input_size)
    if written_for != config.input_size:
        raise ValueError(f"{Path(files[0]).parent}: crops were written for input size {written_for}, "
                         f"the model takes {config.input_size}")
    file_level = num_shards > 1 and len(files) >= num_shards
    names = tf.data.Dataset.from_tensor_slices(files)
    if file_level:
        names = names.shard(num_shards, shard_index)
    count = len(files[shard_index::num_shards]) if file_level else len(files)
    if shuffle:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # One record from each shard in turn: unshuffled, this restores the original face order.
    records = names.interleave(tf.data.TFRecordDataset, cycle_length=max(1, count), block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_shards > 1 and not file_level:
        records = records.shard(num_shards, shard_index)

    def decode(serialized):
        record = parse_record(serialized, config.num_landmarks)
        return tf.ensure_shape(record["image"], [stored_size, stored_size, 3]), record["points"]

    if cache:
        crops = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if shuffle:
            crops = crops.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        crops = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        crops = crops.repeat()
    return batches_from_crops(crops, config=config, training=training, batch_size=batch_size,
                              augment_config=augment_config, seed=seed, drop_remainder=drop_remainder,
                              num_parallel_calls=num_parallel_calls)


def load_tfrecord_examples(source, output_size: int | None = None, num_points: int = 68) -> Examples:
    """All records, in writing order, as numpy `Examples` of the plain crops (the central square of
    each loose crop) with matrices photo → plain crop, e.g. for evaluation code."""
    import tensorflow as tf

    files = tfrecord_files(source)
    metadata = read_metadata(files)
    output_size = output_size or metadata.get("output_size", 256)
    # The reader's interleaving, unshuffled: the faces come back in the order they were written.
    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)
    dataset = dataset.map(lambda serialized: parse_record(serialized, num_points))
    images, points, matrices, faces = [], [], [], []
    for record in dataset.as_numpy_iterator():
        offset = (int(record["size"]) - output_size) // 2
        images.append(record["image"][offset:offset + output_size, offset:offset + output_size])
        points.append(record["points"] - offset)
        shift = np.array([[1.0, 0.0, -offset], [0.0, 1.0, -offset], [0.0, 0.0, 1.0]])
        matrices.append(shift @ record["matrix"])
        faces.append(Face(record["image_path"].decode(), record["pts_path"].decode(), record["subset"].decode()))
    if not faces:
        return Examples(np.zeros((0, output_size, output_size, 3), np.uint8), np.zeros((0, num_points, 2), np.float32),
                        np.zeros((0, 3, 3)), [])
    return Examples(np.stack(images), np.stack(points).astype(np.float32), np.stack(matrices), faces)
