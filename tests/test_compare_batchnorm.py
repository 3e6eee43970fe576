"""tools/compare_batchnorm.py: the fused and Keras batch norms' gradients on real faces.

In fp32 the two layers are the same function, so their whole-network gradients must agree almost
exactly; in bf16 both are rounded, and the fused layer must be no farther from the fp32 reference
than Keras's own layer (the check behind docs/TRAINING.md's "Fused or Keras batch norm, separated").
"""
import importlib.util
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_batchnorm.py"


def _tool():
    sys.path.insert(0, str(TOOL.parent))  # for its `_front`, which takes tools/ off the path again
    spec = importlib.util.spec_from_file_location("compare_batchnorm", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(shared_data):
    from cfdrnn_keras.config import get_preset
    from data_pipelines.dataset import make_dataset
    from data_pipelines.discovery import find_faces

    tool = _tool()
    faces = sorted(find_faces([shared_data / "300w"]), key=lambda face: face.pts_path)[:6]
    config = get_preset("mobile").replace(width=0.0625, dropout=0.0)
    weights = tool.start_weights(config, None)
    images, targets = next(iter(make_dataset(faces, config, training=False, batch_size=6, cache=False)))
    return {row["arm"]: row for row in tool.compare(config, weights, images, targets, "bf16")}


def test_fp32_layers_give_the_same_gradient(rows):
    fused = rows["fused, fp32"]
    assert fused["cosine"] > 0.999
    assert abs(fused["norm_ratio"] - 1) < 0.01
    assert math.isclose(fused["loss"], rows["Keras, fp32 (reference)"]["loss"], rel_tol=1e-4)


def test_bf16_fused_layer_is_no_worse_than_keras(rows):
    keras_bf16, fused_bf16 = rows["Keras, bf16"], rows["fused, bf16"]
    for row in (keras_bf16, fused_bf16):
        assert math.isfinite(row["loss"]) and 0.2 < row["norm_ratio"] < 5, row
        assert row["cosine"] < 0.99999  # rounded for real: bf16 is not silently running in fp32
    assert fused_bf16["cosine"] > keras_bf16["cosine"] - 0.1


def test_missing_weights_file_is_one_line(capsys):
    assert _tool().main(["--weights", "no-such-network.keras", "--faces", "2"]) == 2
    assert "no-such-network.keras" in capsys.readouterr().err
