"""SavedModel for TensorFlow Serving: face crops → landmarks, and encoded photo + face box → landmarks.

Two signatures (both also callable as `loaded.signatures[name]` after `tf.saved_model.load`):

* `serving_default`: `image` uint8 [N, S, S, 3] face crops → `landmarks` float32 [N, 68, 2] in crop
  pixels, `confidence` float32 [N, 68].
* `predict_image`: `image` string [N] (encoded JPEG/PNG/BMP/GIF bytes) and `box` float32 [N, 4]
  (x0, y0, x1, y1 of the 68-point box in that photo's pixels) → `landmarks` float32 [N, 68, 2] in
  that photo's pixels (0-based pixel centres), `confidence` float32 [N, 68].

`predict_image` reproduces the Python crop path (`data_pipelines.geometry.crop_matrix` +
`warp_to_crop`) with TensorFlow ops only, so the artefact runs in a process that imports TensorFlow
alone: the same square box × margin, the same pixel-centre convention, the same INTER_AREA pre-shrink
for crops that shrink the photo more than 2×, bilinear warp with black outside the photo, and pixel
values rounded to uint8 as OpenCV does. JPEGs are decoded with libjpeg's accurate integer IDCT (the
one OpenCV uses; `tf.io.decode_image`'s default fast IDCT differs from it by up to ~8 grey levels).
"""
from __future__ import annotations

import keras
import tensorflow as tf

MARGIN = 1.25  # data_pipelines.geometry.crop_matrix's default: the crop the network is trained on


def inference_model(model: keras.Model) -> keras.Model:
    """The sub-graph that deployment runs: `image` → {`landmarks`, `confidence`}.

    Keras prunes layers the two outputs do not need (the tails of landmark-level branches 1–3).
    A test-time model with the uncertainty layer (issue 17) keeps `uncertainty` (crop pixels) and
    `face_score` as well.
    """
    outputs = model.output
    if not isinstance(outputs, dict) or not {"landmarks", "confidence"} <= set(outputs):
        raise ValueError(f"{model.name}: not a CFDRNN model (needs `landmarks` and `confidence` outputs)")
    kept = {name: outputs[name] for name in ("landmarks", "confidence", "uncertainty", "face_score") if name in outputs}
    return keras.Model(model.input, kept, name=f"{model.name}_inference")


def crop_size_of(model: keras.Model) -> int:
    return int(model.input_shape[1])


# ------------------------------------------------------------------------------------------------
# The crop, in TensorFlow ops (float64 geometry as in data_pipelines.geometry).
# ------------------------------------------------------------------------------------------------
def tf_crop_matrices(boxes, output_size: int, margin: float = MARGIN):
    """`geometry.crop_matrix` for a batch: boxes [N, 4] → float64 [N, 3, 3] photo → crop matrices."""
    boxes = tf.cast(boxes, tf.float64)
    x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
    side = tf.maximum(x1 - x0, y1 - y0) * margin
    scale = output_size / side
    centre = (output_size - 1) / 2.0
    zeros, ones = tf.zeros_like(scale), tf.ones_like(scale)
    rows = [
        tf.stack([scale, zeros, centre - scale * (x0 + x1) / 2.0], axis=-1),
        tf.stack([zeros, scale, centre - scale * (y0 + y1) / 2.0], axis=-1),
        tf.stack([zeros, zeros, ones], axis=-1),
    ]
    return tf.stack(rows, axis=-2)


def _round_to_uint8(values):
    """OpenCV's float → uint8 (round half up, saturate)."""
    return tf.cast(tf.clip_by_value(tf.floor(values + 0.5), 0.0, 255.0), tf.uint8)


def _round_half_even_to_uint8(values):
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, 255.0), tf.uint8)


def _area_weights(source_size, target_size):
    """OpenCV's INTER_AREA weights along one axis (its `computeResizeAreaTab`) as a [target, source] matrix.

    `tf.image.resize(method="area")` spreads the footprints slightly differently and rounds 2–5× more
    pixels to the other grey level than this does (measured against cv2.resize on a 1080p photo).
    """
    source = tf.cast(source_size, tf.float64)
    scale = source / tf.cast(target_size, tf.float64)
    d = tf.range(tf.cast(target_size, tf.float64), dtype=tf.float64)[:, None]
    s = tf.range(source, dtype=tf.float64)[None, :]
    start, end = d * scale, d * scale + scale
    last = tf.minimum(tf.floor(end), source - 1.0)
    first = tf.minimum(tf.math.ceil(start), last)
    cell = tf.minimum(scale, source - start)
    inner = tf.cast((s >= first) & (s < last), tf.float64)
    left = tf.cast((s == first - 1.0) & (first - start > 1e-3), tf.float64) * (first - start)
    right = tf.cast((s == last) & (end - last > 1e-3), tf.float64) * tf.minimum(tf.minimum(end - last, 1.0), cell)
    return (inner + left + right) / cell


def _area_shrink(image, height, width):
    """cv2.resize(INTER_AREA) of an (H, W, C) image to (height, width), float32 before rounding."""
    rows = tf.cast(_area_weights(tf.shape(image)[0], height), tf.float32)
    columns = tf.cast(_area_weights(tf.shape(image)[1], width), tf.float32)
    return tf.einsum("yh,hwc,xw->yxc", rows, tf.cast(image, tf.float32), columns)


def _warp(image, matrix, output_size: int):
    """One photo (H, W, C) through one float64 3×3 photo → crop matrix; uint8 (S, S, C)."""
    inverse = tf.linalg.inv(matrix)  # crop → photo: what ImageProjectiveTransformV3 wants
    transform = tf.cast(tf.concat([inverse[0, :], inverse[1, :], tf.zeros([2], tf.float64)], axis=0), tf.float32)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform[None],
        output_shape=tf.constant([output_size, output_size], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return _round_to_uint8(warped)


def tf_warp_to_crop(image, matrix, output_size: int):
    """`geometry.warp_to_crop(image, matrix, output_size, antialias=True)` for one uint8 photo."""
    matrix = tf.cast(matrix, tf.float64)
    scale = tf.sqrt(tf.abs(tf.linalg.det(matrix[:2, :2])))

    def shrink_then_warp():
        # Area-average to 1.5 photo pixels per crop pixel first, so big photos do not alias; the
        # resize is composed into the matrix exactly as geometry.warp_to_crop does.
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
        factor = scale * 1.5
        one = tf.constant(1.0, tf.float64)
        new_width = tf.maximum(one, tf.round(width * factor))  # Python's round(): half to even
        new_height = tf.maximum(one, tf.round(height * factor))
        small = _area_shrink(image, tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32))
        # OpenCV rounds its integer 2× shrink half up and every other scale half to even.
        halving = tf.logical_and(tf.equal(height, 2.0 * new_height), tf.equal(width, 2.0 * new_width))
        small = tf.cond(halving, lambda: _round_to_uint8(small), lambda: _round_half_even_to_uint8(small))
        sx, sy = new_width / width, new_height / height
        zero = tf.constant(0.0, tf.float64)
        resize = tf.stack([
            tf.stack([sx, zero, 0.5 * sx - 0.5]),
            tf.stack([zero, sy, 0.5 * sy - 0.5]),
            tf.constant([0.0, 0.0, 1.0], tf.float64),
        ])
        return _warp(small, matrix @ tf.linalg.inv(resize), output_size)

    return tf.cond(scale < 0.5, shrink_then_warp, lambda: _warp(image, matrix, output_size))


def tf_decode_image(data):
    """Encoded bytes → uint8 (H, W, 3) RGB, decoded exactly as OpenCV decodes it (see module doc)."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def tf_transform_points(matrices, points):
    """Apply float64 [N, 3, 3] affine matrices to points [N, K, 2]."""
    points = tf.cast(points, tf.float64)
    return tf.einsum("nkj,nij->nki", points, matrices[:, :2, :2]) + matrices[:, None, :2, 2]


# ------------------------------------------------------------------------------------------------
# The serving functions and the artefact.
# ------------------------------------------------------------------------------------------------
def crops_to_landmarks(model: keras.Model, crops):
    """uint8 crops [N, S, S, 3] → dict(landmarks [N, K, 2] in crop pixels, confidence [N, K])."""
    size = crop_size_of(model)
    x = tf.cast(crops, tf.float32) / 255.0 - 0.5
    outputs = model(x, training=False)
    landmarks = tf.cast(outputs["landmarks"], tf.float32) * float(size)
    result = {"landmarks": landmarks, "confidence": tf.cast(outputs["confidence"], tf.float32)}
    for name in ("uncertainty", "face_score"):  # uncertainty: crop pixels, like the landmarks
        if name in outputs:
            result[name] = tf.cast(outputs[name], tf.float32)
    return result


def image_to_landmarks(model: keras.Model, images, boxes, margin: float = MARGIN):
    """Encoded photos [N] + boxes [N, 4] → dict(landmarks [N, K, 2] in photo pixels, confidence)."""
    size = crop_size_of(model)
    matrices = tf_crop_matrices(boxes, size, margin)

    def crop_one(args):
        data, matrix = args
        return tf_warp_to_crop(tf_decode_image(data), matrix, size)

    crops = tf.map_fn(crop_one, (images, matrices), fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
    outputs = crops_to_landmarks(model, crops)
    points = tf_transform_points(tf.linalg.inv(matrices), outputs["landmarks"])
    result = {"landmarks": tf.cast(points, tf.float32), "confidence": outputs["confidence"]}
    if "uncertainty" in outputs:  # crop pixels → photo pixels: ÷ each crop's scale
        crop_scale = tf.sqrt(tf.abs(tf.linalg.det(matrices[:, :2, :2])))
        result["uncertainty"] = tf.cast(tf.cast(outputs["uncertainty"], tf.float64) / crop_scale[:, None], tf.float32)
    if "face_score" in outputs:
        result["face_score"] = outputs["face_score"]
    return result


def build_export_archive(model: keras.Model, *, with_predict_image: bool = True, margin: float = MARGIN):
    """A `keras.export.ExportArchive` holding the inference graph and its serving signatures."""
    model = inference_model(model)
    size = crop_size_of(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: crops_to_landmarks(model, image),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")],
    )
    if with_predict_image:
        archive.add_endpoint(
            "predict_image",
            lambda image, box: image_to_landmarks(model, image, box, margin),
            input_signature=[
                tf.TensorSpec([None], tf.string, name="image"),
                tf.TensorSpec([None, 4], tf.float32, name="box"),
            ],
        )
    return archive


def export_saved_model(model: keras.Model, path, *, with_predict_image: bool = True, margin: float = MARGIN) -> str:
    """Write the SavedModel (signatures `serving_default` and `predict_image`) to `path`."""
    build_export_archive(model, with_predict_image=with_predict_image, margin=margin).write_out(
        str(path), verbose=False
    )
    return str(path)
