"""best.keras is chosen on the packaged models' yardstick: `val_nme_default`, the validation NME of the
test-time ensemble, measured every epoch (`training.validation`), agrees with `tools/evaluate.py`."""
import csv
import json

import keras
import numpy as np
import pytest

TINY = ("--split", "all", "--limit", 6, "--val-fraction", 0.34, "--input-size", 64, "--width", 0.0625,
        "--steps-per-epoch", 2, "--augment", "none", "--batch-size", 2, "--precision", "fp32",
        "--verbose", 0, "--no-tensorboard")


def train(shared_data, out, *extra):
    from cfdrnn_keras.cli import train as tool

    status = tool.main([str(a) for a in ("--data", shared_data / "300w" / "afw", *TINY, "--out", out, *extra)])
    keras.config.set_dtype_policy("float32")
    assert status == 0
    rows = list(csv.DictReader((out / "history.csv").open()))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    return rows, state


@pytest.fixture(scope="module")
def default_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "run"
    return out, *train(shared_data, out, "--epochs", 3)


def test_best_keras_is_the_epoch_with_the_lowest_default_inference_nme(default_run):
    _, rows, state = default_run
    values = [float(row["val_nme_default"]) for row in rows]
    assert state["monitor"] == "val_nme_default"
    assert state["best_epoch"] == int(np.argmin(values)) + 1 and state["best"] == pytest.approx(min(values))
    assert all(np.isfinite(float(row["val_nme"])) for row in rows)  # the last stage is still logged


def test_the_logged_figure_is_what_evaluate_reports_for_the_same_network(default_run, tmp_path):
    from cfdrnn_keras.cli.evaluate import main

    out, rows, _ = default_run
    report = tmp_path / "final.json"
    assert main(["--held-out", str(out / "split.json"), "--model", str(out / "final.keras"), "--json", str(report),
                 "--quiet"]) == 0
    per_face = [entry["nme_io"] / 100.0 for entry in json.loads(report.read_text())["per_image"]]
    assert len(per_face) == 2
    # the photo and its crop give one ratio of distances: the last epoch's figure is evaluate's
    assert float(rows[-1]["val_nme_default"]) == pytest.approx(np.mean(per_face), rel=1e-3)


def test_last_stage_selection_keeps_the_papers_yardstick(shared_data, tmp_path):
    rows, state = train(shared_data, tmp_path / "run", "--epochs", 2, "--select-best", "last-stage")
    values = [float(row["val_nme"]) for row in rows]
    assert state["monitor"] == "val_nme" and state["best_epoch"] == int(np.argmin(values)) + 1


def test_the_callback_refuses_crops_without_their_points():
    from cfdrnn_keras.training.validation import DefaultInferenceNME

    with pytest.raises(ValueError, match="need as many ground truths as crops"):
        DefaultInferenceNME(None, np.zeros((2, 64, 64, 3)), np.zeros((1, 68, 2)))


def test_the_ensemble_decodes_in_float32_while_the_network_trains_in_bf16():
    """A bf16 run's `val_nme_default`: the network's layers compute in bf16 as trained, the ensemble's own
    (mirror, stage average, sub-pixel peaks) in float32, as `tools/evaluate.py` runs them."""
    from cfdrnn_keras.config import CFDRNNConfig
    from cfdrnn_keras.model.network import build_cfdrnn
    from cfdrnn_keras.training.validation import DefaultInferenceNME

    rng = np.random.default_rng(0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        network = build_cfdrnn(CFDRNNConfig(width=0.0625, input_size=64))
        callback = DefaultInferenceNME(network, rng.uniform(-0.5, 0.5, (2, 64, 64, 3)), rng.uniform(0.3, 0.7, (2, 68, 2)))
        assert np.isfinite(callback.measure())
    finally:
        keras.config.set_dtype_policy("float32")
    own = {id(layer) for layer in network.layers} | {id(network)}
    added = [layer for layer in callback._test_time_model.layers
             if id(layer) not in own and not isinstance(layer, keras.layers.InputLayer)]
    assert added and all(layer.compute_dtype == "float32" for layer in added), [
        (layer.name, layer.compute_dtype) for layer in added]
    assert any(layer.compute_dtype == "bfloat16" for layer in network.layers)
