"""TFLite exports (issue 6): builtin ops only, run in LiteRT, agree with the Keras model.

The files are written once per module by `tools/export.py` itself (its manifest is checked too).
The 0.3-point NME bound for int8 is meaningful only for a trained network: an untrained one has
near-flat heat-maps whose argmax flips under any quantisation (measured: several % NME), so that test
uses the packaged model and skips until it ships. For the untrained model, the continuous output
(`confidence`, the heat-map peaks) shows that quantisation kept the function.
"""
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfdrnn_keras import build_cfdrnn, get_preset
from export import FILE_NAMES, TFLITE_FORMATS, default_model_files
from export.saved_model import inference_model
from export.tflite import (
    TFLiteLandmarks,
    builtin_only_problems,
    convert,
    face_crops,
    keras_crop_landmarks,
    operator_names,
)

REPO = Path(__file__).resolve().parents[1]
COMPARE_FACES = 6


def _load_cli():
    import cfdrnn_keras.cli.export as module

    return module


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    keras.utils.set_random_seed(8)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_cfdrnn(get_preset("lite").replace(width=0.0625)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    return inference_model(keras.saving.load_model(tiny_model_path, safe_mode=True))


@pytest.fixture(scope="module")
def faces(shared_data):
    """Real face crops and their ground truth (crop pixels), spread over the shared 300-W faces."""
    return face_crops(shared_data / "300w", COMPARE_FACES)


@pytest.fixture(scope="module")
def exported(tiny_model_path, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    status = _load_cli().main([
        "--model", str(tiny_model_path), "--out", str(out), "--formats", ",".join(TFLITE_FORMATS),
        "--calibration-data", str(shared_data / "300w"), "--calibration-count", "8", "--compare-count", "4",
        "--no-flip-test", "--stages", "last", "--no-subpixel",  # the bare network; the ensemble is tested below
    ])
    return status, out


def test_cli_writes_every_file_and_an_honest_manifest(exported, capsys):
    status, out = exported
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failed"] == [] and set(manifest["exports"]) == set(TFLITE_FORMATS)
    assert manifest["comparison"] == "4 real face crops" and manifest["calibration"] == "8 real face crops"
    for fmt in TFLITE_FORMATS:
        entry = manifest["exports"][fmt]
        path = out / FILE_NAMES[fmt]
        assert entry["path"] == path.name and entry["size_bytes"] == path.stat().st_size
        assert 0 <= entry["mean_px"] <= entry["max_px"]
        assert "nme_percent" in entry and "nme_cost_points" in entry
    assert manifest["exports"]["tflite_fp32"]["max_px"] < 0.01
    sizes = {fmt: manifest["exports"][fmt]["size_bytes"] for fmt in TFLITE_FORMATS}
    assert sizes["tflite_fp16"] < 0.6 * sizes["tflite_fp32"] and sizes["tflite_int8"] < 0.4 * sizes["tflite_fp32"]


@pytest.mark.parametrize("fmt", TFLITE_FORMATS)
def test_runs_in_litert_with_builtin_ops_only(exported, faces, fmt):
    from ai_edge_litert.interpreter import Interpreter

    path = exported[1] / FILE_NAMES[fmt]
    content = path.read_bytes()
    assert builtin_only_problems(content) == []
    assert {"CONV_2D", "ARG_MAX"} <= set(operator_names(content))
    interpreter = Interpreter(model_path=str(path))  # the plain interpreter: no Flex delegate
    (details,) = interpreter.get_input_details()
    assert details["dtype"] == np.uint8 and list(details["shape_signature"]) == [-1, 256, 256, 3]
    crops, _ = faces
    out = TFLiteLandmarks(path)(crops[:2])  # a batch of two: the batch dimension is dynamic
    assert out["landmarks"].shape == (2, 68, 2) and out["confidence"].shape == (2, 68)
    assert out["landmarks"].dtype == np.float32 and np.isfinite(out["landmarks"]).all()


def test_float32_within_a_hundredth_of_a_pixel(exported, faces, tiny_model):
    crops, _ = faces
    expected = keras_crop_landmarks(tiny_model, crops)
    got = TFLiteLandmarks(exported[1] / FILE_NAMES["tflite_fp32"])(crops)["landmarks"]
    assert np.abs(got - expected).max() <= 0.01


def _operand_types(path, op_name):
    interpreter = TFLiteLandmarks(path).interpreter
    return [op["operand_types"] for op in interpreter._get_ops_details() if op["op_name"] == op_name]


def test_quantised_files_really_are_quantised(exported):
    out = exported[1]
    assert all(types[0] == np.float32 for types in _operand_types(out / FILE_NAMES["tflite_fp32"], "CONV_2D"))
    # fp16: weights stored as float16, expanded to float32 for the float kernels.
    assert any(types == [np.float16] for types in _operand_types(out / FILE_NAMES["tflite_fp16"], "DEQUANTIZE"))
    # dynamic range: float activations, int8 weights (the converter leaves kernels under 1024 weights float).
    convs = _operand_types(out / FILE_NAMES["tflite_int8"], "CONV_2D")
    assert all(types[0] == np.float32 for types in convs)
    assert sum(types[1] == np.int8 for types in convs) >= len(convs) // 3
    # full integer: int8 activations and weights (the uint8 input is cast and quantised once), except
    # the one 1×1 convolution that makes the final heat-maps (kept float so their argmax does not tie).
    convs = _operand_types(out / FILE_NAMES["tflite_int8_full"], "CONV_2D")
    integer = [types for types in convs if types[0] == np.int8 and types[1] == np.int8]
    assert len(convs) > 20 and len(integer) == len(convs) - 1


@pytest.mark.parametrize(
    "fmt, min_correlation", [("tflite_fp16", 0.999), ("tflite_int8", 0.99), ("tflite_int8_full", 0.95)]
)
def test_reduced_precision_keeps_the_heatmap_peaks(exported, faces, tiny_model, fmt, min_correlation):
    """Untrained-model check: the continuous output follows Keras's (a broken scale would not).

    (Landmarks are no measure here: an untrained network's argmax flips between near-equal peaks.)
    """
    crops, _ = faces
    expected = tiny_model.predict(crops.astype("float32") / 255.0 - 0.5, verbose=0)["confidence"]
    got = TFLiteLandmarks(exported[1] / FILE_NAMES[fmt])(crops)["confidence"]
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] >= min_correlation


def test_int8_costs_at_most_three_tenths_of_a_point_of_nme(shared_data, tmp_path):
    """Issue 6's bound, on real faces, for a trained packaged network (skips until it ships).

    `fast`'s one network: the bound is about what quantisation does to a network, and the two-network
    `accurate` (twice the conversion time) has its own LiteRT-against-Keras check in
    test_packaged_models.py."""
    (model_path,) = default_model_files("fast")
    if not model_path.exists():
        pytest.skip(f"needs the trained packaged model {model_path}: an untrained network's int8 NME is noise")
    import cfdrnn_keras.model  # noqa: F401
    from cfdrnn_keras.metrics import inter_ocular_distance

    model = inference_model(keras.saving.load_model(model_path, safe_mode=True))
    crops, truth = face_crops(shared_data / "300w", 72, size=int(model.input_shape[1]))
    calibration, test = crops[::3], np.delete(np.arange(len(crops)), np.arange(0, len(crops), 3))
    reference = keras_crop_landmarks(model, crops[test])
    iod = inter_ocular_distance(truth[test])

    def nme(points):  # percent, against the ground truth, as tools/evaluate.py reports it
        return 100.0 * float(np.mean(np.linalg.norm(points - truth[test], axis=-1).mean(axis=-1) / iod))

    float_nme = nme(reference)
    for fmt in ("tflite_int8", "tflite_int8_full"):
        path = tmp_path / f"{fmt}.tflite"
        path.write_bytes(convert(model, fmt, calibration))
        got = TFLiteLandmarks(path)(crops[test])["landmarks"]
        cost = nme(got) - float_nme
        assert cost <= 0.3, f"{fmt}: NME {nme(got):.3f} % against the float model's {float_nme:.3f} %"


def test_ensemble_exports_to_builtin_tflite_that_matches_keras(tiny_model_path, faces, tmp_path):
    """The default export (flip test + four-stage average) converts with builtin ops, agrees with the
    Keras ensemble in float32, and keeps all four heat-map heads float in the full-integer file."""
    from cfdrnn_keras.model.ensemble import for_inference
    from export.tflite import float_heatmap_head

    model = inference_model(for_inference(keras.saving.load_model(tiny_model_path, safe_mode=True)))
    patterns = float_heatmap_head(model)
    assert len(patterns) == 4 + 3 and {"decoder_", "stage_average_", "mirror_merge_"} <= set(patterns)
    content = convert(model, "tflite_fp32")
    assert builtin_only_problems(content) == []
    path = tmp_path / "ensemble.tflite"
    path.write_bytes(content)
    crops, _ = faces
    got = TFLiteLandmarks(path)(crops[:3])["landmarks"]
    assert got.shape == (3, 68, 2)
    assert np.abs(got - keras_crop_landmarks(model, crops[:3])).max() <= 0.01


def test_builtin_check_catches_flex_ops(tmp_path):
    """The checker can fail: `keras.ops.argmax` on floats needs FlexBitwiseAnd (DESIGN.md §4)."""

    class Flexy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 7)

    module = Flexy()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    content = converter.convert()
    assert builtin_only_problems(content) == ["CUSTOM:FlexBitwiseAnd"]
