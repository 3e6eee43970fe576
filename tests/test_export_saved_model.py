"""The SavedModel for TF Serving (issue 6): loaded in a fresh process with TensorFlow alone.

Requests are built and decoded the way TF Serving's REST API does (`export.serving`, whose source runs
in the fresh process; an import blocker proves nothing of this project is needed). The
expected points come from the Python path: `data_pipelines` reads and crops the photo, the Keras model
predicts, the inverse crop matrix maps the points back.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import export.serving as serving
from cfdrnn_keras import build_cfdrnn, get_preset
from data_pipelines import geometry
from data_pipelines.images import decode_image_bytes
from data_pipelines.pts import read_pts
from export import default_model_files
from export.saved_model import (
    _area_shrink,
    crop_size_of,
    export_saved_model,
    inference_model,
    tf_crop_matrices,
    tf_decode_image,
    tf_warp_to_crop,
)

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "examples" / "astronaut.png"
TOLERANCE_PX = 0.01

# Runs before `import tensorflow` in the fresh process: any import of this project fails. (Keras cannot
# be blocked: `import tensorflow` itself loads parts of it. The SavedModel needs none of its layers.)
IMPORT_BLOCKER = '''
import sys
_BLOCKED = {"cfdrnn_keras", "data_pipelines", "export", "tools"}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ImportError(f"the SavedModel must not need {name}")
        return None
sys.meta_path.insert(0, _Blocker())
'''

SERVER_MAIN = '''
loaded = tf.saved_model.load(sys.argv[1])
with open(sys.argv[2]) as handle:
    bodies = json.load(handle)
replies = [predict(loaded, body) for body in bodies]
assert not [m for m in sys.modules if m.split(".")[0] in _BLOCKED], "project modules were imported"
with open(sys.argv[3], "w") as handle:
    json.dump({"replies": replies, "signatures": sorted(loaded.signatures)}, handle)
'''


def serve_in_fresh_process(saved_model_dir, bodies, tmp_path) -> dict:
    """Run `export.serving.predict` on REST bodies in a new interpreter that imports only TF, json, base64."""
    requests_path, replies_path = tmp_path / "requests.json", tmp_path / "replies.json"
    requests_path.write_text(json.dumps(bodies))
    code = IMPORT_BLOCKER + Path(serving.__file__).read_text() + SERVER_MAIN
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", code, str(saved_model_dir), str(requests_path), str(replies_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(replies_path.read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The packaged trained model (its smooth offsets are what a client gets); else a tiny untrained
    CFDRNN written to and read back from a .keras file."""
    if all(path.exists() for path in default_model_files()):
        from cfdrnn_keras.model import loading

        return loading.load_network("accurate:keras")  # the default's networks, averaged as they ship
    keras.utils.set_random_seed(6)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_cfdrnn(get_preset("lite").replace(width=0.0625)).save(path)
    return keras.saving.load_model(path, safe_mode=True)


@pytest.fixture(scope="module")
def saved_model_dir(model, tmp_path_factory):
    return export_saved_model(model, tmp_path_factory.mktemp("export") / "saved_model")


def crop_scale(box, size: int) -> float:
    """Crop pixels per photo pixel for this box."""
    return float(np.sqrt(abs(np.linalg.det(geometry.crop_matrix(box, size, margin=1.25)[:2, :2]))))


def keras_points_in_photo(model, data: bytes, box, crop_with_tensorflow: bool = False) -> np.ndarray:
    """The Python path: decode, crop with data_pipelines.geometry (or the SavedModel's TensorFlow
    crop), Keras model, map back."""
    size = crop_size_of(model)
    image = decode_image_bytes(data)
    matrix = geometry.crop_matrix(box, size, margin=1.25)
    if crop_with_tensorflow:
        crop = tf_warp_to_crop(tf_decode_image(tf.constant(data)), tf.constant(matrix), size).numpy()
    else:
        crop = geometry.warp_to_crop(image, matrix, size)
    points = inference_model(model)(crop[None].astype("float32") / 255.0 - 0.5, training=False)["landmarks"]
    return geometry.transform_points(geometry.invert(matrix), np.asarray(points)[0] * size)


def photos_with_boxes(shared_data_root):
    """(name, encoded bytes, box): the public astronaut photo always; real annotated faces when present."""
    items = [
        ("astronaut", ASTRONAUT.read_bytes(), (150.0, 40.0, 300.0, 210.0)),
        # A box whose crop shrinks the photo > 2×: exercises the area pre-shrink of warp_to_crop.
        ("astronaut-large-box", ASTRONAUT.read_bytes(), (40.0, 30.0, 470.0, 480.0)),
    ]
    if shared_data_root is not None:
        for relative in ("300w/afw/1051618982_1.jpg", "samples/image_006.jpg", "samples/indoor_001.png"):
            path = shared_data_root / relative
            if path.is_file():
                box = geometry.face_box_from_points(read_pts(path.with_suffix(".pts")))
                items.append((relative, path.read_bytes(), box))
    return items


def _shared_root():
    from tests.conftest import shared_data_dir

    root = shared_data_dir()
    return root if (root / "300w").is_dir() else None


def test_rest_requests_in_fresh_process_match_keras(model, saved_model_dir, tmp_path):
    photos = photos_with_boxes(_shared_root())
    size = crop_size_of(model)
    # uint8 crops for serving_default, cut by the Python path.
    crops = []
    for _, data, box in photos[:3]:
        crops.append(geometry.warp_to_crop(decode_image_bytes(data), geometry.crop_matrix(box, size, 1.25), size))
    bodies = [
        serving.image_request([data for _, data, _ in photos], [box for _, _, box in photos]),
        serving.crops_request(crops),
    ]
    answer = serve_in_fresh_process(saved_model_dir, bodies, tmp_path)
    assert {"serving_default", "predict_image"} <= set(answer["signatures"])
    image_reply, crops_reply = answer["replies"]

    assert len(image_reply["predictions"]) == len(photos)
    for (name, data, box), prediction in zip(photos, image_reply["predictions"]):
        got = np.asarray(prediction["landmarks"])
        assert got.shape == (68, 2) and len(prediction["confidence"]) == 68
        # The Keras model on the crop TensorFlow cut: decoding, network, and the way back to the photo
        # agree within 0.01 photo px.
        on_tf_crop = keras_points_in_photo(model, data, box, crop_with_tensorflow=True)
        error = np.abs(got - on_tf_crop).max()
        assert error <= TOLERANCE_PX, f"{name}: {error:.5f} px from the Keras model on the same crop"
        # The whole Python path (OpenCV's crop): TensorFlow's crop may differ by one grey level on a
        # few pixels where bilinear weights tie at .5 (test_tf_warp_equals_opencv_warp), which moves a
        # point by a few thousandths of a CROP pixel; 0.01 crop px is 0.01 × (photo px per crop px) here.
        photo_px_per_crop_px = max(1.0, 1.0 / crop_scale(box, size))
        error = np.abs(got - keras_points_in_photo(model, data, box)).max()
        assert error <= TOLERANCE_PX * photo_px_per_crop_px, f"{name}: {error:.5f} px from the Python path"

    keras_crops = inference_model(model)(np.stack(crops).astype("float32") / 255.0 - 0.5, training=False)
    for index, prediction in enumerate(crops_reply["predictions"]):
        expected = np.asarray(keras_crops["landmarks"][index]) * size
        np.testing.assert_allclose(prediction["landmarks"], expected, atol=TOLERANCE_PX)
        np.testing.assert_allclose(prediction["confidence"], keras_crops["confidence"][index], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The TensorFlow crop against data_pipelines.geometry, in process (fast, and names the culprit).
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [(10.0, 20.0, 110.0, 80.0), (0.5, -3.0, 40.25, 60.0), (-50.0, 5.0, 700.0, 600.0)])
def test_tf_crop_matrix_equals_geometry(box):
    expected = geometry.crop_matrix(box, 256, margin=1.25)
    got = tf_crop_matrices(tf.constant([box], tf.float64), 256, 1.25)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)


def test_tf_crop_matrix_hand_computed():
    # Box 100 × 60 at (10, 20): square side 100 × 1.25 = 125 → scale 256/125; centre (60, 50) → 127.5.
    matrix = tf_crop_matrices(tf.constant([[10.0, 20.0, 110.0, 80.0]]), 256, 1.25)[0].numpy()
    scale = 256 / 125
    np.testing.assert_allclose(matrix, [[scale, 0, 127.5 - scale * 60], [0, scale, 127.5 - scale * 50], [0, 0, 1]])


@pytest.mark.parametrize("box", [(150.0, 40.0, 300.0, 210.0), (40.0, 30.0, 470.0, 480.0), (400.0, 300.0, 560.0, 420.0)],
                         ids=["inside", "area-pre-shrink", "past-the-edge"])
def test_tf_warp_equals_opencv_warp(box):
    data = ASTRONAUT.read_bytes()
    image = decode_image_bytes(data)
    matrix = geometry.crop_matrix(box, 256, 1.25)
    expected = geometry.warp_to_crop(image, matrix, 256)
    decoded = tf_decode_image(tf.constant(data))
    np.testing.assert_array_equal(decoded.numpy(), image)
    got = tf_warp_to_crop(decoded, tf.constant(matrix), 256).numpy()
    difference = np.abs(got.astype(int) - expected.astype(int))
    # Float rounding at exact .5 ties may differ by one grey level on a handful of pixels.
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    if box[0] > 300:
        assert (expected[-10:, -10:] == 0).all(), "outside the photo should be black"


@pytest.mark.parametrize("factor", [0.5, 0.3, 0.45, 0.123])
def test_area_shrink_equals_opencv_inter_area(factor):
    import cv2

    image = decode_image_bytes(ASTRONAUT.read_bytes())
    size = (max(1, round(512 * factor)), max(1, round(512 * factor)))
    expected = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(int)
    got = _area_shrink(tf.constant(image), size[1], size[0]).numpy()
    # OpenCV rounds its 2× shrink half up, other scales half to even (as tf_warp_to_crop does).
    got = np.floor(got + 0.5) if factor == 0.5 else np.round(got)
    difference = np.abs(got - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 5e-4


def test_jpeg_decode_equals_opencv(tmp_path):
    """JPEGs use the accurate IDCT, as OpenCV does (tf.io.decode_image's default differs by a few levels)."""
    import cv2

    image = decode_image_bytes(ASTRONAUT.read_bytes())
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    expected = decode_image_bytes(encoded.tobytes())
    np.testing.assert_array_equal(tf_decode_image(tf.constant(encoded.tobytes())).numpy(), expected)


# ------------------------------------------------------------------------------------------------
# The REST decoding rules themselves (a toy signature: no model needed).
# ------------------------------------------------------------------------------------------------
class _Toy(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image"),
                                  tf.TensorSpec([None, 4], tf.float32, name="box")])
    def two(self, image, box):
        return {"length": tf.strings.length(image), "area": (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.uint8, name="image")])
    def one(self, image):
        return {"sum": tf.reduce_sum(tf.cast(image, tf.int32), axis=1)}


@pytest.fixture(scope="module")
def toy_signatures():
    toy = _Toy()
    return {"predict_image": toy.two.get_concrete_function(), "serving_default": toy.one.get_concrete_function()}


def test_row_format_with_binary_and_numbers(toy_signatures):
    body = serving.image_request([b"abc", b"\x00\xff"], [(0, 0, 2, 3), (1, 1, 2, 2)])
    assert json.loads(body)["instances"][1]["image"] == {"b64": "AP8="}
    name, fmt, inputs = serving.decode_request(body, toy_signatures)
    assert (name, fmt) == ("predict_image", "row")
    assert inputs["image"].numpy().tolist() == [b"abc", b"\x00\xff"]
    assert inputs["box"].dtype == tf.float32
    reply = serving.encode_response(toy_signatures[name](**inputs), fmt)
    assert reply == {"predictions": [{"length": 3, "area": 6.0}, {"length": 2, "area": 1.0}]}


def test_single_input_bare_and_named_and_columnar(toy_signatures):
    bare = {"instances": [[1, 2], [250, 5]]}
    named = {"signature_name": "serving_default", "instances": [{"image": [1, 2]}, {"image": [250, 5]}]}
    for body in (bare, named):
        name, fmt, inputs = serving.decode_request(json.dumps(body), toy_signatures)
        assert name == "serving_default" and inputs["image"].dtype == tf.uint8
        assert serving.encode_response(toy_signatures[name](**inputs), fmt) == {"predictions": [3, 255]}
    name, fmt, inputs = serving.decode_request({"inputs": [[1, 2], [3, 4]]}, toy_signatures)
    assert serving.encode_response(toy_signatures[name](**inputs), fmt) == {"outputs": [3, 7]}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"signature_name": "nope", "instances": [[1, 2]]}, "signature 'nope' not found"),
        ({"signature_name": "predict_image", "instances": [{"image": {"b64": "AA=="}}]}, "instance 0: needs the inputs"),
        ({"instances": [[1, 2, 3]]}, "does not match the signature"),
        ({"instances": [[1, 2]], "inputs": [[1, 2]]}, "exactly one of"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(toy_signatures, body, message):
    with pytest.raises(ValueError, match=message):
        serving.decode_request(body, toy_signatures)
