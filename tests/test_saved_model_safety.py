"""Issue 16, cases 1, 2 and 9: the SavedModel against hostile input.

1. `predict_image` reads each image's size from its header and refuses, before decoding, an image or
   a request over the limits set at export (a 20000² PNG bomb of a few hundred KB, generated here,
   is refused with the memory of a normal request);
2. `predict_image` refuses boxes that are not finite, inverted, tiny, huge or off the image;
9. a SavedModel given as a model is checked op by op before it is loaded: a crafted one that reads
   and writes files is refused by name (and nothing is written), and runs with `trust_model=True`.

Every model here is a tiny untrained network (width 1/16, 64² crops): seconds, not minutes.
"""
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from cfdrnn_keras import build_cfdrnn, get_preset
from cfdrnn_keras.model import ensemble as ensembles
from cfdrnn_keras.model import saved_model_check as checks
from cfdrnn_keras.runtime.backends import ModelLoadError, load_backend
from export import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, export_model
from export.saved_model import MAX_BOX_SCALE, MIN_BOX_SIDE, export_saved_model

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "examples" / "astronaut.png"  # 512 × 512
GOOD_BOX = (150.0, 40.0, 300.0, 210.0)
CROP = 64


@pytest.fixture(scope="module")
def network():
    keras.utils.set_random_seed(16)
    return build_cfdrnn(get_preset("mobile").replace(input_size=CROP, width=0.0625))


@pytest.fixture(scope="module")
def exported(network, tmp_path_factory):
    """A fresh export as tools/export.py writes it: the default ensemble, both signatures, default limits."""
    model = ensembles.for_inference(network, ensembles.EnsembleOptions())
    return export_saved_model(model, tmp_path_factory.mktemp("export") / "saved_model")


@pytest.fixture(scope="module")
def predict_image(exported):
    return tf.saved_model.load(exported).signatures["predict_image"]


def call(signature, images, boxes):
    """The signature's outputs, or the first line of its InvalidArgument error's assertion."""
    try:
        out = signature(image=tf.constant(images, tf.string), box=tf.constant(np.reshape(boxes, (-1, 4)), tf.float32))
    except tf.errors.InvalidArgumentError as error:
        return assertion_line(error.message)
    return {key: value.numpy() for key, value in out.items()}


def assertion_line(message: str) -> str:
    """The line of an InvalidArgument message that holds our assertion (TF adds node lines around it)."""
    lines = [line for line in message.splitlines() if "assertion failed" in line]
    assert len(lines) == 1, message
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Hostile images, made here (headers are enough: nothing past them is ever read when refused).
# ------------------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of zeros, compressed row block by row block (never held in memory)."""
    compressor = zlib.compressobj(9)
    block = (b"\x00" + bytes(width)) * 250
    with open(path, "wb") as handle:
        handle.write(png_header(width, height))
        parts = [compressor.compress(block) for _ in range(height // 250)]
        parts.append(compressor.compress((b"\x00" + bytes(width)) * (height % 250)))
        parts.append(compressor.flush())
        handle.write(png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b""))
    return path


def small_image(ext: str, params=()) -> bytes:
    ok, encoded = cv2.imencode(ext, np.full((32, 48, 3), 90, np.uint8), list(params))
    assert ok
    return encoded.tobytes()


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(small_image(".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(small_image(".bmp"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_lossless_claiming(width: int, height: int) -> bytes:
    data = bytearray(small_image(".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)))
    assert data[12:16] == b"VP8L"
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
    data[21:25] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def webp_lossy_claiming(width: int, height: int) -> bytes:
    data = bytearray(small_image(".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_extended(width: int, height: int, flags: int = 0) -> bytes:
    canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
    chunk = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) + canvas
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# ------------------------------------------------------------------------------------------------
# Case 1: sizes from headers, limits set at export.
# ------------------------------------------------------------------------------------------------
def test_normal_requests_still_work_in_every_accepted_format(predict_image):
    photo = ASTRONAUT.read_bytes()
    image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    encoded = [photo] + [cv2.imencode(ext, image)[1].tobytes() for ext in (".jpg", ".bmp", ".webp")]
    out = call(predict_image, encoded, [GOOD_BOX] * len(encoded))
    assert isinstance(out, dict), out
    assert out["landmarks"].shape == (4, 68, 2) and np.isfinite(out["landmarks"]).all()


@pytest.mark.parametrize("data, expected", [
    (png_header(20000, 20000), "image 0 is 20000x20000 = 400000000 pixels, over the limit of 50000000 pixels per image"),
    (jpeg_claiming(60000, 60000), "image 0 is 60000x60000 = 3600000000 pixels, over the limit of 50000000"),
    (bmp_claiming(30000, -30000), "image 0 is 30000x30000 = 900000000 pixels, over the limit"),
    (webp_lossless_claiming(16000, 16000), "image 0 is 16000x16000 = 256000000 pixels, over the limit"),
    (webp_lossy_claiming(16000, 9000), "image 0 is 16000x9000 = 144000000 pixels, over the limit"),
    (webp_extended(20000, 20000), "image 0 is 20000x20000 = 400000000 pixels, over the limit"),
    (webp_extended(64, 64, flags=0x02), "image 0 is an animated WebP: predict_image does not take animations"),
    (small_image(".gif"), "image 0 is a GIF: predict_image does not take GIFs"),
    (b"\xff\x0a" + bytes(40), "image 0 is a JPEG XL file: predict_image does not take JPEG XL"),
    (b"hello, not an image at all", "image 0 is not a PNG, JPEG, BMP or WebP file"),
    (b"\x89PNG\r\n\x1a\n", "image 0 is a PNG whose first chunk is not IHDR"),
], ids=["png", "jpeg", "bmp", "webp-vp8l", "webp-vp8", "webp-vp8x", "webp-animated", "gif", "jpeg-xl", "junk",
        "png-truncated"])
def test_images_over_the_limit_or_unsizable_are_refused_from_the_header(predict_image, data, expected):
    line = call(predict_image, [data], [GOOD_BOX])
    assert isinstance(line, str) and f"predict_image: {expected}" in line, line
    if "limit" in expected:
        assert "(max_image_pixels, set at export)" in line


def test_a_request_is_bounded_in_total_and_names_the_first_bad_image(predict_image):
    fine = ASTRONAUT.read_bytes()
    # Three 7000² images: each under the 50 MP limit, 147 MP together, over the 100 MP request limit.
    line = call(predict_image, [png_header(7000, 7000)] * 3, [GOOD_BOX] * 3)
    assert "predict_image: the request has 3 images of 147000000 pixels in all, over the limit of 100000000 " \
           "pixels per request (max_request_pixels, set at export)" in line
    line = call(predict_image, [fine, fine, png_header(9000, 9000)], [GOOD_BOX] * 3)
    assert "predict_image: image 2 is 9000x9000 = 81000000 pixels" in line
    assert "predict_image: 2 images but 1 boxes" in call(predict_image, [fine, fine], [GOOD_BOX])


def test_limits_are_set_at_export_and_recorded_in_the_manifest(network, tmp_path):
    manifest = export_model(network, tmp_path, ["saved_model"], max_image_pixels=200_000, max_request_pixels=300_000,
                            log=lambda line: None)
    limits = manifest["exports"]["saved_model"]["predict_image"]
    assert limits["max_image_pixels"] == 200_000 and limits["max_request_pixels"] == 300_000
    assert limits["min_box_side_px"] == MIN_BOX_SIDE
    assert json.loads((tmp_path / "manifest.json").read_text())["exports"]["saved_model"]["predict_image"] == limits
    signature = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["predict_image"]
    line = call(signature, [ASTRONAUT.read_bytes()], [GOOD_BOX])
    assert "image 0 is 512x512 = 262144 pixels, over the limit of 200000 pixels per image" in line
    assert DEFAULT_MAX_IMAGE_PIXELS == 50_000_000 and DEFAULT_MAX_REQUEST_PIXELS == 100_000_000


def test_export_command_line_takes_the_limits():
    from cfdrnn_keras.cli.export import parse_args

    args = parse_args(["--max-image-pixels", "20e6", "--max-request-pixels", "40_000_000"])
    assert (args.max_image_pixels, args.max_request_pixels) == (20_000_000, 40_000_000)
    assert parse_args([]).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(SystemExit):
        parse_args(["--max-image-pixels", "-5"])


# Runs in a fresh interpreter under MEASURE: load the SavedModel, serve a normal request, note the peak
# RSS so far, then send the hostile one; print both outcomes.
SERVE = '''
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures["predict_image"]
outcomes = []
for path, box in ((sys.argv[2], sys.argv[3]), (sys.argv[4], sys.argv[5])):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        out = signature(image=tf.constant([data]), box=tf.constant([json.loads(box)], tf.float32))
        outcomes.append({"refused": None, "finite": bool(tf.reduce_all(tf.math.is_finite(out["landmarks"])))})
    except tf.errors.InvalidArgumentError as error:
        outcomes.append({"refused": type(error).__name__, "message": error.message})
    if not outcomes[1:]:
        outcomes[0]["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(outcomes))
'''
# Runs the command it is given as its only child and prints that child's peak RSS (kB, Linux).
MEASURE = '''
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(result.stderr[-3000:])
print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "[]")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(result.returncode)
'''


def test_png_bomb_is_refused_before_decoding_with_bounded_memory(exported, tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png", 20000, 20000)  # 400 MP: 1144 MB as decoded RGB
    assert bomb.stat().st_size < 1_000_000
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", SERVE, str(exported), str(ASTRONAUT), json.dumps(GOOD_BOX), str(bomb),
               json.dumps([100.0, 100.0, 300.0, 300.0])]
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes, peak_kb = result.stdout.strip().splitlines()[-2:]
    normal, refused = json.loads(outcomes)
    assert normal["refused"] is None and normal["finite"], normal
    assert refused["refused"] == "InvalidArgumentError", refused
    assert "predict_image: image 0 is 20000x20000 = 400000000 pixels, over the limit of 50000000 pixels per image " \
           "(max_image_pixels, set at export)" in assertion_line(refused["message"])
    normal_mb, peak_mb = normal["peak_kb"] / 1024, int(peak_kb) / 1024  # RUSAGE_CHILDREN of MEASURE: the whole run
    print(f"peak RSS: after a normal 512² request {normal_mb:.0f} MB, after the refused 20000² bomb {peak_mb:.0f} MB")
    decoded_mb = 20000 * 20000 * 3 / 2 ** 20  # what decoding the bomb to RGB alone would add
    assert peak_mb - normal_mb < 100 < decoded_mb / 10, (normal_mb, peak_mb)


# ------------------------------------------------------------------------------------------------
# Case 2: boxes.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box, expected", [
    ((np.nan, 40, 300, 210), "box 0 [nan, 40, 300, 210] is not finite"),
    ((150, 40, np.inf, 210), "box 0 [150, 40, inf, 210] is not finite"),
    ((300, 40, 150, 210), "box 0 [300, 40, 150, 210] needs x0 < x1 and y0 < y1"),
    ((150, 40, 300, 40), "box 0 [150, 40, 300, 40] needs x0 < x1 and y0 < y1"),
    ((150, 40, 153, 210), f"box 0 [150, 40, 153, 210] is smaller than {MIN_BOX_SIDE:g} px a side"),
    ((600, 40, 700, 210), "box 0 [600, 40, 700, 210] does not overlap its image"),
    ((-300, -300, -1, -1), "box 0 [-300, -300, -1, -1] does not overlap its image"),
    ((1e30, 1e30, 2e30, 2e30), "box 0 [1e+30, 1e+30, 2e+30, 2e+30] does not overlap its image"),
    ((-1e30, -1e30, 1e30, 1e30), f"box 0 [-1e+30, -1e+30, 1e+30, 1e+30] has a side over {MAX_BOX_SCALE:g}x the longer side of its image"),
], ids=["nan", "inf", "x-inverted", "zero-height", "tiny", "right-of", "above-left", "far-away", "huge"])
def test_bad_boxes_are_refused(predict_image, box, expected):
    line = call(predict_image, [ASTRONAUT.read_bytes()], [box])
    assert isinstance(line, str) and f"predict_image: {expected}" in line, line


def test_a_box_partly_outside_the_photo_is_still_served(predict_image):
    out = call(predict_image, [ASTRONAUT.read_bytes()] * 2, [(400.0, 300.0, 560.0, 420.0), (-20, -20, 100, 100)])
    assert isinstance(out, dict), out
    assert np.isfinite(out["landmarks"]).all()


# ------------------------------------------------------------------------------------------------
# Case 9: a SavedModel is a program.
# ------------------------------------------------------------------------------------------------
class _FileToucher(tf.Module):
    """A SavedModel that looks like ours (uint8 crops → landmarks) and reads and writes files."""

    def __init__(self, read_path: str, write_path: str):
        super().__init__()
        self.read_path, self.write_path = read_path, write_path

    @tf.function(input_signature=[tf.TensorSpec([None, CROP, CROP, 3], tf.uint8, name="image")])
    def serve(self, image):
        secret = tf.io.read_file(self.read_path)
        tf.io.write_file(self.write_path, secret)
        count = tf.shape(image)[0]
        return {"landmarks": tf.zeros([count, 68, 2]) + tf.cast(tf.strings.length(secret), tf.float32) * 0.0,
                "confidence": tf.ones([count, 68])}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    secret = folder / "secret.txt"
    secret.write_text("not yours")
    written = folder / "written.txt"
    module = _FileToucher(str(secret), str(written))
    target = folder / "saved_model"
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target, written


def test_fresh_export_passes_the_check_and_the_allowlist_is_not_stale(exported, network, tmp_path):
    # The fixture's export (default ensemble, both signatures), and crops-only exports of the bare network
    # and of the last variant `derive_allowlists` covers (with the uncertainty outputs, where they exist).
    variants = list(checks._deployed_variants(network))
    folders = [exported] + [export_saved_model(variants[index], tmp_path / f"crops{index}", with_predict_image=False)
                            for index in sorted({1, len(variants) - 1})]
    for folder in folders:
        found = checks.saved_model_ops(folder)
        missing = (found["model"] - checks.MODEL_OPS) | (found["saver"] - checks.MODEL_OPS - checks.SAVER_OPS)
        assert not missing, (f"a fresh export uses ops outside the allowlist: {sorted(missing)}; regenerate "
                             "cfdrnn_keras/model/saved_model_check.py's constants (see its docstring)")
        assert checks.check_saved_model(folder)["ops"] > 20
    backend = load_backend(exported)  # checked, then loaded
    landmarks, _ = backend.predict_crops(np.zeros((2, CROP, CROP, 3), np.uint8))
    assert landmarks.shape == (2, 68, 2)


def test_crafted_saved_model_is_refused_by_name_and_runs_when_trusted(crafted):
    from cfdrnn_keras.runtime.landmarker import LandmarkDetector

    folder, written = crafted
    with pytest.raises(ModelLoadError) as caught:
        LandmarkDetector(model=folder)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{folder}: the SavedModel runs op 'ReadFile' (function ")
    assert "refused" in message and "trust_model=True" in message
    assert isinstance(caught.value, checks.UntrustedModelError)
    assert not written.exists(), "the refused model must not have run"

    detector = LandmarkDetector(model=folder, trust_model=True)
    detector.predict_crops(np.zeros((1, CROP, CROP, 3), np.uint8))
    assert written.read_text() == "not yours"  # the opt-out really runs it


def test_predict_and_evaluate_refuse_it_in_one_line_and_take_trust_model(crafted, tmp_path, capsys):
    from cfdrnn_keras.cli import evaluate, predict

    folder, _ = crafted
    photo = tmp_path / "photo.png"
    photo.write_bytes(ASTRONAUT.read_bytes())
    assert predict.main([str(photo), "--model", str(folder)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "the SavedModel runs op 'ReadFile'" in errors[0] and "--trust-model" in errors[0]
    assert evaluate.parse_args(["--data", str(tmp_path), "--model", str(folder), "--trust-model"]).trust_model
    assert predict.parse_args([str(photo), "--trust-model"]).trust_model


def test_write_file_and_py_func_are_refused_by_name(tmp_path):
    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def write(self, text):
            tf.io.write_file(str(tmp_path / "out.txt"), text)
            return text

    class Python(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def run(self, x):
            return tf.py_function(lambda v: v * 2, [x], tf.float32)

    for module, op in ((Writer(), "WriteFile"), (Python(), "EagerPyFunc")):
        target = tmp_path / op
        tf.saved_model.save(module, str(target))
        with pytest.raises(checks.UntrustedModelError, match=f"runs op '{op}'"):
            checks.check_saved_model(target)
        with pytest.raises(ModelLoadError, match=f"runs op '{op}'"):
            load_backend(target)


def test_ops_hidden_in_function_attributes_the_saver_and_tf1_models_are_caught(exported, tmp_path):
    """Edited copies of a real export's saved_model.pb: nothing is loaded, only the protobuf is read."""
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    def edited(name, edit):
        target = tmp_path / name
        shutil.copytree(exported, target)
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((target / "saved_model.pb").read_bytes())
        edit(proto.meta_graphs[0])
        (target / "saved_model.pb").write_bytes(proto.SerializeToString())
        return target

    def call_op_through_attribute(meta_graph):
        # TensorFlow runs an op named in a function attribute as a one-node function.
        serving = [f for f in meta_graph.graph_def.library.function if "signature_wrapper" in f.signature.name][0]
        node = [n for n in serving.node_def if n.op == "StatefulPartitionedCall"][0]
        node.attr["f"].func.name = "MatchingFiles"

    def saver_reads_files(meta_graph):
        restore = [f for f in meta_graph.graph_def.library.function if "traced_restore" in f.signature.name][0]
        restore.node_def.add(name="sneaky", op="ReadFile")

    def drop_object_graph(meta_graph):
        meta_graph.ClearField("object_graph_def")

    def unknown_op(meta_graph):
        meta_graph.graph_def.library.function[0].node_def.add(name="custom", op="MyCustomKernel")

    for name, edit, expected in (
        ("attr", call_op_through_attribute, "runs op 'MatchingFiles'"),
        ("saver", saver_reads_files, "saver uses op 'ReadFile'"),
        ("tf1", drop_object_graph, "a TensorFlow 1 SavedModel (no object graph)"),
        ("unknown", unknown_op, "runs op 'MyCustomKernel'"),
    ):
        with pytest.raises(checks.UntrustedModelError, match=re.escape(expected)):
            checks.check_saved_model(edited(name, edit))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(ModelLoadError, match="not a valid SavedModel protobuf"):
        checks.check_saved_model(tmp_path / "junk")
