"""SavedModel for TensorFlow Serving: face crops → landmarks, and encoded photo + face box → landmarks.

Two signatures (both also callable as `loaded.signatures[name]` after `tf.saved_model.load`):

* `serving_default`: `image` uint8 [N, S, S, 3] face crops → `landmarks` float32 [N, 68, 2] in crop
  pixels, `confidence` float32 [N, 68].
* `predict_image`: `image` string [N] (encoded JPEG/PNG/BMP/WebP bytes) and `box` float32 [N, 4]
  (x0, y0, x1, y1 of the 68-point box in that photo's pixels) → `landmarks` float32 [N, 68, 2] in
  that photo's pixels (0-based pixel centres), `confidence` float32 [N, 68].

`predict_image` refuses, with an InvalidArgument error naming the limit and BEFORE decoding anything, a
request it cannot serve safely (`check_request`): each image's size is read from its header (PNG IHDR,
JPEG via `tf.io.extract_jpeg_shape`, BMP, WebP; GIF and JPEG XL are refused, since their frames cannot
be sized before decoding), an image over `max_image_pixels` or a request over `max_request_pixels`
(both set at export) is refused, and so is a box that is not finite, has x1 <= x0 or y1 <= y0, has a
side under `MIN_BOX_SIDE` px or over `MAX_BOX_SCALE` x the image's longer side, or does not overlap
its image.

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

from . import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS  # noqa: F401  (re-exported)

MARGIN = 1.25  # data_pipelines.geometry.crop_matrix's default: the crop the network is trained on

# predict_image's box rules (docs/DEPLOYMENT.md); its pixel limits, set at export, default to export's constants.
MIN_BOX_SIDE = 4.0  # px: a box narrower or lower than this is refused (its crop would be a few pixels)
MAX_BOX_SCALE = 4.0  # a box side over 4x the image's longer side is refused (the photo would be a speck)


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


# ------------------------------------------------------------------------------------------------
# The request check: sizes from the headers, boxes against them, before anything is decoded.
# ------------------------------------------------------------------------------------------------
HEADER_BYTES = 32  # every header field read below lies in the first 30 bytes

# Formats as tf.io.decode_image tells them apart (its ClassifyFileFormat), and what they are called.
UNKNOWN, JPEG, PNG, BMP, WEBP, GIF, JPEG_XL = range(7)
_FORMAT_PROBLEMS = [
    "not a PNG, JPEG, BMP or WebP file",
    "",
    "a PNG whose first chunk is not IHDR (truncated or corrupt)",
    "",
    "a WebP whose first chunk is not VP8, VP8L or VP8X (truncated or corrupt)",
    "a GIF: predict_image does not take GIFs (its frames cannot be sized before decoding); send PNG or JPEG",
    "a JPEG XL file: predict_image does not take JPEG XL; send PNG or JPEG",
    "an animated WebP: predict_image does not take animations; send PNG or JPEG",
    "an image whose header gives no positive width and height",
]
_ANIMATED_WEBP, _NO_SIZE = 7, 8


def _starts_with(header, magic: bytes):
    """[N] bool: the [N, HEADER_BYTES] int64 header bytes start with `magic` (bytes at offset 0)."""
    return _bytes_equal(header, 0, magic)


def _bytes_equal(header, offset: int, expected: bytes):
    values = tf.constant(list(expected), tf.int64)
    return tf.reduce_all(tf.equal(header[:, offset:offset + len(expected)], values[None]), axis=1)


def _little_endian(header, offset: int, count: int):
    value = tf.zeros_like(header[:, 0])
    for index in reversed(range(count)):
        value = value * 256 + header[:, offset + index]
    return value


def _big_endian(header, offset: int, count: int):
    value = tf.zeros_like(header[:, 0])
    for index in range(count):
        value = value * 256 + header[:, offset + index]
    return value


def _jpeg_sizes(images, is_jpeg):
    """(height, width) int64 [N] from each JPEG's frame header (`tf.io.extract_jpeg_shape`); 0 elsewhere."""
    def one(args):
        data, jpeg = args
        return tf.cond(jpeg, lambda: tf.io.extract_jpeg_shape(data, output_type=tf.int64)[:2],
                       lambda: tf.zeros([2], tf.int64))

    shapes = tf.map_fn(one, (images, is_jpeg), fn_output_signature=tf.TensorSpec([2], tf.int64))
    return shapes[:, 0], shapes[:, 1]


def tf_image_header_sizes(images):
    """What each encoded image is and how big it says it is, from its header alone (nothing decoded).

    images: string [N]. Returns (format int32 [N] (JPEG, PNG, ... above), problem int32 [N] (an index
    into `_FORMAT_PROBLEMS` for an image that is refused whatever its size, else -1), width int64 [N],
    height int64 [N]).
    """
    images = tf.convert_to_tensor(images, tf.string)
    # The first HEADER_BYTES bytes of each, zero-padded (substr never reads past the end).
    padded = tf.strings.join([tf.strings.substr(images, 0, HEADER_BYTES), tf.constant(b"\0" * HEADER_BYTES)])
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, HEADER_BYTES), tf.uint8), tf.int64)
    header = tf.reshape(header, [-1, HEADER_BYTES])

    is_jpeg = _starts_with(header, b"\xff\xd8\xff")
    is_png = _starts_with(header, b"\x89PNG\r\n\x1a\n")
    is_gif = _starts_with(header, b"GIF8")
    is_bmp = _starts_with(header, b"BM")
    is_webp = _starts_with(header, b"RIFF") & _bytes_equal(header, 8, b"WEBP")
    is_jxl = _starts_with(header, b"\xff\x0a") | _starts_with(header, b"\x00\x00\x00\x0cJXL \r\n\x87\n")
    conditions = [is_jpeg, is_png, is_bmp, is_webp, is_gif, is_jxl]
    kinds = [JPEG, PNG, BMP, WEBP, GIF, JPEG_XL]
    fmt = tf.zeros_like(header[:, 0], tf.int32)
    for condition, kind in reversed(list(zip(conditions, kinds))):  # the first match wins, as in TF
        fmt = tf.where(condition, kind, fmt)
    zero = tf.zeros_like(header[:, 0])

    # PNG: the IHDR chunk comes first; width and height are big-endian uint32 at 16 and 20.
    png_ok = _bytes_equal(header, 12, b"IHDR")
    png_w, png_h = _big_endian(header, 16, 4), _big_endian(header, 20, 4)
    # BMP: signed little-endian int32 width at 18 and height at 22 (negative height: top-down rows),
    # read where TensorFlow's BMP decoder reads them.
    def signed32(value):
        return tf.where(value >= 2 ** 31, value - 2 ** 32, value)

    bmp_w, bmp_h = signed32(_little_endian(header, 18, 4)), tf.abs(signed32(_little_endian(header, 22, 4)))
    # WebP: RIFF, size, WEBP, then the first chunk: "VP8 " (lossy: 14-bit sizes at 26 and 28 after the
    # start code), "VP8L" (lossless: 0x2f, then 14 bits width - 1, 14 bits height - 1) or "VP8X"
    # (extended: flags at 20, 24-bit canvas width - 1 at 24 and height - 1 at 27).
    vp8 = _bytes_equal(header, 12, b"VP8 ")
    vp8l = _bytes_equal(header, 12, b"VP8L")
    vp8x = _bytes_equal(header, 12, b"VP8X")
    lossless_bits = _little_endian(header, 21, 4)
    webp_w = tf.where(vp8, _little_endian(header, 26, 2) % 16384,
                      tf.where(vp8l, lossless_bits % 16384 + 1, _little_endian(header, 24, 3) + 1))
    webp_h = tf.where(vp8, _little_endian(header, 28, 2) % 16384,
                      tf.where(vp8l, (lossless_bits // 16384) % 16384 + 1, _little_endian(header, 27, 3) + 1))
    animated = vp8x & (tf.bitwise.bitwise_and(header[:, 20], 2) > 0)

    jpeg_h, jpeg_w = _jpeg_sizes(images, is_jpeg)
    width = tf.where(is_jpeg, jpeg_w, tf.where(is_png, png_w, tf.where(is_bmp, bmp_w, tf.where(is_webp, webp_w, zero))))
    height = tf.where(is_jpeg, jpeg_h, tf.where(is_png, png_h, tf.where(is_bmp, bmp_h, tf.where(is_webp, webp_h, zero))))

    problem = tf.fill(tf.shape(fmt), -1)
    problem = tf.where((fmt == UNKNOWN) | (fmt == GIF) | (fmt == JPEG_XL), fmt, problem)
    problem = tf.where(is_png & ~png_ok & (problem < 0), PNG, problem)
    problem = tf.where(is_webp & ~(vp8 | vp8l | vp8x) & (problem < 0), WEBP, problem)
    problem = tf.where(is_webp & animated & (problem < 0), _ANIMATED_WEBP, problem)
    problem = tf.where((problem < 0) & ((width <= 0) | (height <= 0)), _NO_SIZE, problem)
    return fmt, problem, width, height


def _refuse_unless(ok, message, *values):
    """An Assert that fails with `message` (tf.strings.format placeholders {} filled by `values`)."""
    text = tf.strings.format(message, values) if values else tf.constant(message)
    return tf.debugging.Assert(ok, [text], summarize=1)


def _first(mask):
    """Index of the first True in a [N] bool mask (0 when there is none, N = 0 included)."""
    return tf.concat([tf.cast(tf.where(mask)[:, 0], tf.int32), tf.zeros([1], tf.int32)], axis=0)[0]


def _at(values, index):
    """values[index], or 0 where `values` is empty (the message of a check that cannot fail)."""
    return tf.gather(tf.concat([values, tf.zeros([1], values.dtype)], axis=0), index)


def check_request(images, boxes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS):
    """`images` and `boxes` again, usable only once every check below has passed.

    Each failure is an InvalidArgument error ("assertion failed: [predict_image: ...]") naming the
    first offending image or box and the rule it breaks; they are checked in this order, each after
    the previous one, and all from the headers, before any image is decoded.
    """
    images = tf.convert_to_tensor(images, tf.string)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    count, box_count = tf.shape(images)[0], tf.shape(boxes)[0]
    checks = [_refuse_unless(tf.equal(count, box_count), "predict_image: {} images but {} boxes; one box per image",
                             count, box_count)]
    with tf.control_dependencies(checks):  # everything below runs only on as many boxes as images
        images, boxes = tf.identity(images), tf.identity(boxes)

    def then(make):
        with tf.control_dependencies(checks[-1:]):
            checks.append(make())

    fmt, problem, width, height = tf_image_header_sizes(images)
    refused = problem >= 0
    bad = _first(refused)
    what = tf.gather(tf.constant(_FORMAT_PROBLEMS), tf.maximum(_at(problem, bad), 0))
    then(lambda: tf.debugging.Assert(~tf.reduce_any(refused), [tf.strings.join(
        ["predict_image: image ", tf.strings.as_string(bad), " is ", what])], summarize=1))
    pixels = width * height
    too_big = pixels > int(max_image_pixels)
    big = _first(too_big)
    then(lambda: _refuse_unless(
        ~tf.reduce_any(too_big),
        f"predict_image: image {{}} is {{}}x{{}} = {{}} pixels, over the limit of {int(max_image_pixels)} pixels "
        "per image (max_image_pixels, set at export)",
        big, _at(width, big), _at(height, big), _at(pixels, big)))
    total = tf.reduce_sum(pixels)
    then(lambda: _refuse_unless(
        total <= int(max_request_pixels),
        f"predict_image: the request has {{}} images of {{}} pixels in all, over the limit of "
        f"{int(max_request_pixels)} pixels per request (max_request_pixels, set at export)",
        count, total))

    x0, y0, x1, y1 = tf.unstack(tf.reshape(boxes, [-1, 4]), axis=1)

    def box_rule(bad_mask, rule):
        index = _first(bad_mask)
        then(lambda: _refuse_unless(~tf.reduce_any(bad_mask), "predict_image: box {} [{}, {}, {}, {}] " + rule,
                                    index, _at(x0, index), _at(y0, index), _at(x1, index), _at(y1, index)))

    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=1)
    box_rule(~finite, "is not finite")
    box_rule(~((x1 > x0) & (y1 > y0)), "needs x0 < x1 and y0 < y1")
    box_rule((x1 - x0 < MIN_BOX_SIDE) | (y1 - y0 < MIN_BOX_SIDE),
             f"is smaller than {MIN_BOX_SIDE:g} px a side (MIN_BOX_SIDE)")
    w, h = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
    # The image covers [-0.5, W - 0.5] x [-0.5, H - 0.5] (0-based pixel centres).
    box_rule(~((x0 < w - 0.5) & (x1 > -0.5) & (y0 < h - 0.5) & (y1 > -0.5)), "does not overlap its image")
    box_rule(tf.maximum(x1 - x0, y1 - y0) > MAX_BOX_SCALE * tf.maximum(w, h),
             f"has a side over {MAX_BOX_SCALE:g}x the longer side of its image (MAX_BOX_SCALE)")
    with tf.control_dependencies(checks):
        return tf.identity(images), tf.identity(boxes)


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


def image_to_landmarks(model: keras.Model, images, boxes, margin: float = MARGIN,
                       max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS):
    """Encoded photos [N] + boxes [N, 4] → dict(landmarks [N, K, 2] in photo pixels, confidence).

    The request is checked first (`check_request`); nothing is decoded unless it passes."""
    size = crop_size_of(model)
    images, boxes = check_request(images, boxes, max_image_pixels, max_request_pixels)
    matrices = tf_crop_matrices(boxes, size, margin)

    def crop_one(args):
        data, matrix = args
        return tf_warp_to_crop(tf_decode_image(data), matrix, size)

    # One photo at a time: peak memory is one decoded photo (and its float copy), not ten.
    crops = tf.map_fn(crop_one, (images, matrices), fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
                      parallel_iterations=1)
    outputs = crops_to_landmarks(model, crops)
    points = tf_transform_points(tf.linalg.inv(matrices), outputs["landmarks"])
    result = {"landmarks": tf.cast(points, tf.float32), "confidence": outputs["confidence"]}
    if "uncertainty" in outputs:  # crop pixels → photo pixels: ÷ each crop's scale
        crop_scale = tf.sqrt(tf.abs(tf.linalg.det(matrices[:, :2, :2])))
        result["uncertainty"] = tf.cast(tf.cast(outputs["uncertainty"], tf.float64) / crop_scale[:, None], tf.float32)
    if "face_score" in outputs:
        result["face_score"] = outputs["face_score"]
    return result


def _check_limits(max_image_pixels, max_request_pixels):
    if int(max_image_pixels) < 1 or int(max_request_pixels) < 1:
        raise ValueError(f"max_image_pixels and max_request_pixels must be positive, got "
                         f"{max_image_pixels} and {max_request_pixels}")


def build_export_archive(model: keras.Model, *, with_predict_image: bool = True, margin: float = MARGIN,
                         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                         max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS):
    """A `keras.export.ExportArchive` holding the inference graph and its serving signatures.

    max_image_pixels / max_request_pixels: what `predict_image` accepts per image and per request."""
    _check_limits(max_image_pixels, max_request_pixels)
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
            lambda image, box: image_to_landmarks(model, image, box, margin, int(max_image_pixels),
                                                  int(max_request_pixels)),
            input_signature=[
                tf.TensorSpec([None], tf.string, name="image"),
                tf.TensorSpec([None, 4], tf.float32, name="box"),
            ],
        )
    return archive


def export_saved_model(model: keras.Model, path, *, with_predict_image: bool = True, margin: float = MARGIN,
                       max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> str:
    """Write the SavedModel (signatures `serving_default` and `predict_image`) to `path`.

    `predict_image` refuses an image over `max_image_pixels` and a request over `max_request_pixels`
    (read from the headers, before decoding) and bad boxes (`check_request`)."""
    build_export_archive(model, with_predict_image=with_predict_image, margin=margin,
                         max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels).write_out(
        str(path), verbose=False
    )
    return str(path)
