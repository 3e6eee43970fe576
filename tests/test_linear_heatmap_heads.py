"""Linear heat-map heads (`heatmap_activation="linear"`): built, recovered, started at the targets'
scale, never dead, and kept apart from ReLU networks when weights are loaded or a run resumes."""
import numpy as np
import pytest

import keras

import cfdrnn_keras.model  # noqa: F401  (registers the custom layers)
from cfdrnn_keras.config import CFDRNNConfig, get_preset
from cfdrnn_keras.model.network import build_cfdrnn, config_from_model
from cfdrnn_keras.training import dead_heatmaps as dh

TINY = get_preset("lite").replace(input_size=64, width=0.0625)
LINEAR = TINY.replace(heatmap_activation="linear")


@pytest.fixture(scope="module")
def linear():
    return build_cfdrnn(LINEAR)


def producer(model, name):
    """The layer whose output feeds layer `name`."""
    return model.get_layer(name)._inbound_nodes[0].input_tensors[0]._keras_history.operation.name


def test_the_config_checks_and_round_trips_the_activation():
    assert CFDRNNConfig.from_json(LINEAR.to_json()) == LINEAR
    assert CFDRNNConfig().heatmap_activation == "relu"  # the paper's
    with pytest.raises(ValueError, match="heatmap_activation must be one of relu, linear, got 'tanh'"):
        TINY.replace(heatmap_activation="tanh")


def test_every_heatmap_head_ends_at_its_batch_norm(linear):
    names = {layer.name for layer in linear.layers}
    assert not {name for name in names if name.endswith("conv1x1_H_relu")}
    assert producer(linear, "heatmaps_1") == "resizer0.conv1x1_H_bn"
    for j in (2, 3, 4):
        assert producer(linear, f"heatmaps_{j}") == f"hml{j - 1}.conv1x1_H_bn"
    # every other ReLU is still there: only the heads changed
    relus = sum(isinstance(layer, keras.layers.ReLU) for layer in linear.layers)
    assert relus == sum(isinstance(layer, keras.layers.ReLU) for layer in build_cfdrnn(TINY).layers) - 5
    assert linear.count_params() == build_cfdrnn(TINY).count_params()


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_the_activation_is_recovered_from_a_saved_network(tmp_path, activation):
    config = TINY.replace(heatmap_activation=activation)
    path = tmp_path / "net.keras"
    build_cfdrnn(config).save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert config_from_model(loaded) == config


def test_head_gamma_of_a_linear_head_gives_a_targets_energy():
    # Σ (γ·x̂)² over H×W pixels, x̂ ~ N(0, 1): γ²·H·W; with the head's γ that is πσ².
    size, sigma = 16, 1.3
    gamma = dh.head_gamma(size, sigma, "linear")
    assert gamma ** 2 * size * size == pytest.approx(np.pi * sigma ** 2)
    assert dh.head_gamma(size, sigma, "relu") == pytest.approx(gamma * np.sqrt(2))
    with pytest.raises(ValueError, match="unknown heat-map activation 'tanh'"):
        dh.head_gamma(size, sigma, "tanh")


def test_a_fresh_linear_network_starts_its_maps_at_a_targets_energy():
    from cfdrnn_keras.training.trainer import scale_output_heads

    network = build_cfdrnn(LINEAR)
    scale_output_heads(network, LINEAR)
    images = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 64, 64, 3)).astype("float32")
    maps = keras.ops.convert_to_numpy(network(images, training=True)["heatmaps_1"])
    energy = np.square(maps).sum(axis=(1, 2)).mean()  # per map; batch statistics make x̂ unit variance
    assert energy == pytest.approx(np.pi * 1.3 ** 2, rel=0.05)


def test_a_linear_head_far_below_zero_is_not_dead_and_still_learns(linear):
    network = build_cfdrnn(LINEAR)
    layer = network.get_layer("hml3.conv1x1_H_bn")
    beta = keras.ops.convert_to_numpy(layer.beta).copy()
    beta[7] = -1e3  # a ReLU head would be zero everywhere here, and pass no gradient
    layer.beta.assign(beta)
    assert dh.heatmap_batchnorms(network) == {}
    images = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 64, 64, 3)).astype("float32")
    assert dh.find_dead_heatmaps(network, images) == {}

    import tensorflow as tf

    with tf.GradientTape() as tape:
        maps = network(images, training=True)["heatmaps_4"]
        loss = tf.reduce_sum(tf.square(maps[..., 7]))  # target zero: pull the channel up
    gradient = tape.gradient(loss, layer.beta).numpy()
    assert gradient[7] < -1.0  # a real push upwards (d loss / d β = 2 Σ out < 0)


def test_relu_weights_do_not_load_into_a_linear_network(tmp_path, linear):
    from cfdrnn_keras.training.trainer import load_network_weights

    path = tmp_path / "relu.keras"
    build_cfdrnn(TINY).save(path)
    with pytest.raises(ValueError, match=r"relu\.keras: has relu heat-map heads, this network linear "
                                         r"\(--heatmap-head relu continues it\)"):
        load_network_weights(build_cfdrnn(LINEAR), str(path))


def test_a_run_with_linear_heads_trains_and_hands_on_linear_networks(capsys, shared_data, tmp_path):
    import json

    from cfdrnn_keras.cli import train as tool

    out = tmp_path / "run"
    status = tool.main([str(a) for a in (
        "--data", shared_data / "300w" / "afw", "--split", "all", "--limit", 4, "--val-fraction", 0.25,
        "--input-size", 64, "--width", 0.0625, "--epochs", 1, "--steps-per-epoch", 1, "--augment", "none",
        "--batch-size", 2, "--precision", "fp32", "--recipe", "paper", "--verbose", 0, "--no-tensorboard",
        "--heatmap-head", "linear", "--out", out)])
    keras.config.set_dtype_policy("float32")
    assert status == 0
    assert "dead heat-map" not in capsys.readouterr().out  # nothing to check: a linear head cannot die
    assert json.loads((out / "config.json").read_text())["model"]["heatmap_activation"] == "linear"
    for name in ("best.keras", "final.keras"):
        network = keras.saving.load_model(out / name, safe_mode=True, compile=False)
        assert config_from_model(network).heatmap_activation == "linear"
