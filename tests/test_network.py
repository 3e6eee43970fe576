"""The built graph against DESIGN.md §1 (paper Tables 2–4), layer by layer, by walking the graph."""
import json

import keras
import numpy as np
import pytest

from cfdrnn_keras import OUTPUT_NAMES, CFDRNNConfig, build_cfdrnn, config_from_model, get_preset
from cfdrnn_keras.model.layers import FusedBatchNormalization
from cfdrnn_keras.model.model_stats import model_stats, total_flops

# (suffix, kind, kernel, filters, stride, relu, output spatial size) — transcribed from the tables.
RESIZER = [
    ("conv3x3_1", "conv", 3, 64, 1, True, 256),
    ("conv3x3_2", "conv", 3, 64, 1, True, 256),
    ("pool_1", "pool", 2, None, 2, False, 128),
    ("conv3x3_3", "conv", 3, 64, 1, True, 128),
    ("conv3x3_4", "conv", 3, 128, 1, True, 128),
    ("pool_2", "pool", 2, None, 2, False, 64),
    ("conv3x3_5", "conv", 3, 128, 1, True, 64),
    ("conv3x3_6", "conv", 3, 128, 1, True, 64),  # T
    # conv1x1_D branches off T (checked separately); the H path continues from T:
    ("conv9x9_1", "conv", 9, 128, 1, True, 64),
    ("conv9x9_2", "conv", 9, 128, 1, True, 64),
    ("conv1x1_1", "conv", 1, 256, 1, True, 64),
    ("conv1x1_2", "conv", 1, 256, 1, True, 64),
    ("dropout", "dropout", None, None, None, False, 64),
    ("conv1x1_H", "conv", 1, 68, 1, True, 64),
]
HML = [
    ("conv7x7", "conv", 7, 64, 1, True, 64),
    ("conv13x13", "conv", 13, 64, 1, True, 64),
    ("conv1x1_128", "conv", 1, 128, 1, True, 64),
    ("conv1x1_H", "conv", 1, 68, 1, True, 64),
]
LML_BEFORE_E = [
    ("conv7x7", "conv", 7, 64, 2, True, 32),
    ("pool_1", "pool", 2, None, 1, False, 32),
    ("conv5x5", "conv", 5, 128, 2, True, 16),
    ("pool_2", "pool", 2, None, 1, False, 16),
    ("conv3x3_256", "conv", 3, 256, 2, True, 8),
    ("pool_3_E", "pool", 2, None, 1, False, 8),
]
LML_AFTER_E = [
    ("conv3x3_512", "conv", 3, 512, 2, True, 4),
    ("pool_4", "pool", 2, None, 1, False, 4),
    ("conv3x3_1024", "conv", 3, 1024, 2, True, 2),
    ("pool_5", "pool", 2, None, 1, False, 2),
    ("conv1x1_delta", "conv", 1, 136, 2, False, 1),
]


@pytest.fixture(scope="module")
def paper():
    return build_cfdrnn(get_preset("paper"))


def producers(model, layer_name):
    """Names of the layers whose outputs feed `layer_name`, in input order."""
    node = model.get_layer(layer_name)._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def last_of(prefix, row):
    """Name of the tensor a table row ends in: conv → BN (→ ReLU); other layers stand alone."""
    suffix, kind, *_, relu, _ = row
    name = f"{prefix}.{suffix}"
    if kind != "conv":
        return name
    return f"{name}_relu" if relu else f"{name}_bn"


def check_chain(model, prefix, rows, first_input):
    """Each row's layer exists with the table's kind/kernel/filters/stride/shape and takes the previous row's output."""
    previous = first_input
    for row in rows:
        suffix, kind, kernel, filters, stride, relu, size = row
        name = f"{prefix}.{suffix}"
        layer = model.get_layer(name)
        assert producers(model, name) == [previous], name
        if kind == "conv":
            assert isinstance(layer, keras.layers.Conv2D), name
            assert layer.kernel_size == (kernel, kernel), name
            assert layer.filters == filters, name
            assert layer.strides == (stride, stride), name
            assert layer.padding == "same"
            bn = model.get_layer(f"{name}_bn")
            assert isinstance(bn, FusedBatchNormalization), f"{name}: every conv is followed by batch norm"
            assert producers(model, f"{name}_bn") == [name]
            if relu:
                assert isinstance(model.get_layer(f"{name}_relu"), keras.layers.ReLU)
                assert producers(model, f"{name}_relu") == [f"{name}_bn"]
            else:
                assert f"{name}_relu" not in {l.name for l in model.layers}, f"{name} has no ReLU"
        elif kind == "pool":
            assert isinstance(layer, keras.layers.MaxPooling2D), name
            assert layer.pool_size == (kernel, kernel) and layer.strides == (stride, stride), name
        else:
            assert isinstance(layer, keras.layers.Dropout) and layer.rate == 0.5
        out = model.get_layer(last_of(prefix, row)).output
        assert tuple(out.shape[1:3]) == (size, size), name
        if filters is not None:
            assert out.shape[-1] == filters, name
        previous = last_of(prefix, row)
    return previous


@pytest.mark.parametrize("prefix", ["resizer0", "resizer_r"])
def test_resizer_blocks_follow_table_2(paper, prefix):
    h_end = check_chain(paper, prefix, RESIZER, first_input="image")
    # D comes from T (conv 13–14) through a 1×1×68 conv without ReLU.
    assert producers(paper, f"{prefix}.conv1x1_D") == [f"{prefix}.conv3x3_6_relu"]
    d = paper.get_layer(f"{prefix}.conv1x1_D")
    assert d.kernel_size == (1, 1) and d.filters == 68
    assert f"{prefix}.conv1x1_D_relu" not in {l.name for l in paper.layers}
    assert tuple(paper.get_layer(f"{prefix}.conv1x1_D_bn").output.shape[1:]) == (64, 64, 68)
    assert h_end == f"{prefix}.conv1x1_H_relu"


def test_hml_branches_follow_table_3(paper):
    h_inputs = ["resizer0.conv1x1_H_relu", "hml1.conv1x1_H_relu", "hml2.conv1x1_H_relu"]
    for j in (1, 2, 3):
        concat = f"hml{j}.concat_D0_H{j}"
        assert producers(paper, concat) == ["resizer0.conv1x1_D_bn", h_inputs[j - 1]]
        assert tuple(paper.get_layer(concat).output.shape[1:]) == (64, 64, 136)
        check_chain(paper, f"hml{j}", HML, first_input=concat)
    assert producers(paper, "heatmaps_1") == ["resizer0.conv1x1_H_relu"]
    for j in (2, 3, 4):
        assert producers(paper, f"heatmaps_{j}") == [f"hml{j - 1}.conv1x1_H_relu"]


def test_lml_branches_follow_table_4(paper):
    heatmap_sources = ["resizer0.conv1x1_H_relu", "hml1.conv1x1_H_relu", "hml2.conv1x1_H_relu", "hml3.conv1x1_H_relu"]
    for j in (1, 2, 3, 4):
        concat = f"lml{j}.concat_D0_H{j}_Dr_Hr"
        assert producers(paper, concat) == [
            "resizer0.conv1x1_D_bn",
            heatmap_sources[j - 1],
            "resizer_r.conv1x1_D_bn",
            "resizer_r.conv1x1_H_relu",
        ]
        assert tuple(paper.get_layer(concat).output.shape[1:]) == (64, 64, 272)
        e = check_chain(paper, f"lml{j}", LML_BEFORE_E, first_input=concat)
        if j == 1:
            first = e  # branch 1 takes E_1 alone
        else:
            first = f"lml{j}.concat_E{j}_E{j - 1}"
            assert producers(paper, first) == [e, f"lml{j - 1}.pool_3_E"]
            assert paper.get_layer(first).output.shape[-1] == 512
        check_chain(paper, f"lml{j}", LML_AFTER_E, first_input=first)
        assert producers(paper, f"delta_{j}") == [f"lml{j}.conv1x1_delta_bn"]


def test_outputs_are_named_and_shaped(paper):
    shapes = {name: tuple(t.shape[1:]) for name, t in zip(paper.output_names, paper.outputs)}
    expected = {f"heatmaps_{j}": (64, 64, 68) for j in range(1, 5)}
    expected.update({f"delta_{j}": (68, 2) for j in range(1, 5)})
    expected.update(landmarks=(68, 2), confidence=(68,))
    assert shapes == expected
    assert set(OUTPUT_NAMES) == set(expected)
    assert producers(paper, "decoder") == ["heatmaps_4", "delta_4"]


def test_paper_size_matches_design(paper):
    # DESIGN.md §1: 43.0 M parameters, 103.7 GFLOPs per face (multiply-add = 2), within 2 %.
    assert paper.count_params() == pytest.approx(43.0e6, rel=0.02)
    assert total_flops(paper) == pytest.approx(103.7e9, rel=0.02)
    assert sum(b.params for b in model_stats(paper)) == paper.count_params()


def test_shared_hml_weights_use_one_branch():
    config = CFDRNNConfig(input_size=64, width=0.0625, share_hml_weights=True)
    model = build_cfdrnn(config)
    names = {l.name for l in model.layers}
    assert "hml.conv7x7" in names and "hml1.conv7x7" not in names
    assert len(model.get_layer("hml.conv7x7")._inbound_nodes) == 3
    assert config_from_model(model) == config


def test_config_round_trips_and_rejects_bad_values():
    config = get_preset("lite")
    assert CFDRNNConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["width"] == 0.25
    with pytest.raises(ValueError, match="input_size"):
        CFDRNNConfig(input_size=100)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown CFDRNNConfig fields"):
        CFDRNNConfig.from_dict({"depth": 3})


def test_model_config_round_trip_and_safe_keras_file(tmp_path):
    config = CFDRNNConfig(input_size=64, width=0.0625)
    model = build_cfdrnn(config)
    assert config_from_model(model) == config
    clone = keras.Model.from_config(model.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]

    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 64, 64, 3)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    before, after = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(before[name], after[name])


def test_tiny_model_trains_one_step_on_cpu():
    config = CFDRNNConfig(input_size=64, width=0.0625)
    model = build_cfdrnn(config)
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (4, 64, 64, 3)).astype("float32")
    y = {f"heatmaps_{j}": rng.uniform(0, 1, (4, 16, 16, 68)).astype("float32") for j in range(1, 5)}
    y.update({f"delta_{j}": rng.normal(0, 0.02, (4, 68, 2)).astype("float32") for j in range(1, 5)})
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={k: "mse" for k in y})
    watched = ["resizer0.conv3x3_1", "resizer_r.conv3x3_1", "hml3.conv7x7", "lml1.conv7x7", "lml4.conv1x1_delta"]
    before = [model.get_layer(n).get_weights()[0].copy() for n in watched]
    loss0 = model.train_on_batch(x, y, return_dict=True)["loss"]
    loss1 = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss0) and np.isfinite(loss1)
    for name, old in zip(watched, before):
        assert not np.allclose(old, model.get_layer(name).get_weights()[0]), f"{name} was not updated"
    assert loss1 < loss0
