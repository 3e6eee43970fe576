"""Dead heat-map channels (zero on every face) are found, revived, and revived by training itself."""
import numpy as np
import pytest

import keras

import cfdrnn_keras.model  # noqa: F401  (registers the custom layers)
from cfdrnn_keras.config import get_preset
from cfdrnn_keras.model.network import build_cfdrnn
from cfdrnn_keras.training import dead_heatmaps as dh

TINY = get_preset("lite").replace(input_size=64, width=0.0625)


def kill(network, bn_name, channels):
    """β far below anything γ·x̂ reaches: the channel's ReLU is zero everywhere (as in a dead unit)."""
    layer = network.get_layer(bn_name)
    beta = keras.ops.convert_to_numpy(layer.beta).copy()
    beta[list(channels)] = -1e4
    layer.beta.assign(beta)


def settled(network, images):
    """The network with moving statistics equal to these images' batch statistics, as after training
    (a fresh network's are mean 0, variance 1, which leave some channels all-negative)."""
    batchnorms = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batchnorms:
        layer.momentum = 0.0
    network(images, training=True)
    for layer in batchnorms:
        layer.momentum = 0.99
    return network


def random_images(count=4, size=64, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (count, size, size, 3)).astype(np.float32)


def test_a_channel_is_dead_when_batch_norm_with_this_batchs_statistics_leaves_nothing_positive():
    # one call, 4 pixels, the same values 1..4 in each of 3 channels: μ 2.5, σ² 1.25, largest x̂ ±1.5/√1.251
    x = np.tile(np.arange(1.0, 5.0).reshape(1, 2, 2, 1), (1, 1, 1, 3))
    top = 1.5 / np.sqrt(1.25 + 1e-3)  # 1.341
    gamma = np.array([1.0, 1.0, -1.0])
    beta = np.array([-top - 0.01, -top + 0.01, -top - 0.01])  # just dead, just alive, dead with γ < 0
    assert dh.dead_channels([x], gamma, beta, epsilon=1e-3) == [0, 2]
    beta[2] = -top + 0.01  # γ < 0: the smallest input gives the largest output
    assert dh.dead_channels([x], gamma, beta, epsilon=1e-3) == [0]


def test_a_shared_branch_is_dead_only_where_every_call_is():
    low = np.tile(np.arange(1.0, 5.0).reshape(1, 2, 2, 1), (1, 1, 1, 2))
    skewed = low.copy()
    skewed[0, 1, 1, 0] = 40.0  # call 2: channel 0 has one outlier, x̂ up to about 1.7
    gamma, beta = np.ones(2), np.full(2, -1.5)
    assert dh.dead_channels([low], gamma, beta) == [0, 1]
    assert dh.dead_channels([low, skewed], gamma, beta) == [1]


def test_the_heads_with_a_loss_are_mapped_to_their_outputs():
    assert dh.heatmap_batchnorms(build_cfdrnn(TINY)) == {
        "resizer0.conv1x1_H_bn": ["heatmaps_1"], "hml1.conv1x1_H_bn": ["heatmaps_2"],
        "hml2.conv1x1_H_bn": ["heatmaps_3"], "hml3.conv1x1_H_bn": ["heatmaps_4"]}
    shared = dh.heatmap_batchnorms(build_cfdrnn(TINY.replace(share_hml_weights=True)))
    assert shared["hml.conv1x1_H_bn"] == ["heatmaps_2", "heatmaps_3", "heatmaps_4"]


def test_killed_channels_are_found_exactly_and_revived():
    images = random_images()
    network = build_cfdrnn(TINY)
    # A fresh network: β = 0, so every channel is half positive in training mode (at inference its
    # moving averages, mean 0 and variance 1, leave some all-negative: that is not death)
    assert dh.find_dead_heatmaps(network, images) == {}
    assert dh.find_dead_heatmaps(settled(network, images), images) == {}
    kill(network, "hml3.conv1x1_H_bn", [5, 40])
    kill(network, "resizer0.conv1x1_H_bn", [0])
    layer = network.get_layer("hml3.conv1x1_H_bn")
    gamma = keras.ops.convert_to_numpy(layer.gamma).copy()
    gamma[40] = -1e-4  # a tiny negative γ: revived at the head's scale, sign kept
    layer.gamma.assign(gamma)
    dead = dh.find_dead_heatmaps(network, images)
    assert dead == {"hml3.conv1x1_H_bn": [5, 40], "resizer0.conv1x1_H_bn": [0]}
    assert dh.describe(dead, dh.heatmap_batchnorms(network)) == "heatmaps_1: 0; heatmaps_4: 5, 40"

    assert dh.revive(network, dead, gamma=0.07) == 3
    assert dh.find_dead_heatmaps(network, images) == {}
    beta = keras.ops.convert_to_numpy(layer.beta)
    revived_gamma = keras.ops.convert_to_numpy(layer.gamma)
    assert beta[5] == 0 and beta[40] == 0
    assert revived_gamma[5] == pytest.approx(1.0) and revived_gamma[40] == pytest.approx(-0.07)
    untouched = [c for c in range(68) if c not in (5, 40)]
    np.testing.assert_array_equal(revived_gamma[untouched], gamma[untouched])
    # half alive again: the revived map is positive on a good share of its pixels
    maps = network.predict(images, verbose=0)["heatmaps_4"][..., 5]
    assert 0.2 < float(np.mean(maps > 0)) < 0.8


def test_head_gamma_gives_a_revived_map_about_a_targets_energy():
    # Σ relu(γ·x̂)² over H×W pixels, x̂ ~ N(0, 1): γ²·H·W/2; with the head's γ that is πσ².
    size, sigma = 64, 1.3
    gamma = dh.head_gamma(size, sigma)
    assert gamma ** 2 * size * size / 2 == pytest.approx(np.pi * sigma ** 2)


def tiny_run(shared_data, out, start, *extra):
    from cfdrnn_keras.cli import train as tool

    status = tool.main([str(a) for a in (
        "--data", shared_data / "300w" / "afw", "--split", "all", "--limit", 4, "--val-fraction", 0.25,
        "--input-size", 64, "--width", 0.0625, "--epochs", 1, "--steps-per-epoch", 1, "--augment", "none",
        "--batch-size", 2, "--precision", "fp32", "--recipe", "paper", "--verbose", 0, "--no-tensorboard",
        "--init-weights", start, "--out", out, *extra)])
    keras.config.set_dtype_policy("float32")
    assert status == 0
    return keras.models.load_model(out / "final.keras", safe_mode=True)


@pytest.fixture(scope="module")
def start_with_a_dead_channel(tmp_path_factory):
    start = settled(build_cfdrnn(TINY), random_images(3))
    kill(start, "hml3.conv1x1_H_bn", [9])
    path = tmp_path_factory.mktemp("start") / "start.keras"
    start.save(path)
    return path


def test_training_with_always_revives_a_dead_channel_of_its_initial_weights(capsys, shared_data, tmp_path,
                                                                           start_with_a_dead_channel):
    final = tiny_run(shared_data, tmp_path / "run", start_with_a_dead_channel, "--revive-dead-heatmaps", "always")
    assert "train.py: epoch 1: revived 1 dead heat-map channel(s) (heatmaps_4: 9)" in capsys.readouterr().out
    assert keras.ops.convert_to_numpy(final.get_layer("hml3.conv1x1_H_bn").beta)[9] > -1.0
    assert 9 not in dh.find_dead_heatmaps(final, random_images(3)).get("hml3.conv1x1_H_bn", [])


def test_auto_only_reports_the_dead_channels_of_trained_weights(capsys, shared_data, tmp_path, start_with_a_dead_channel):
    final = tiny_run(shared_data, tmp_path / "run", start_with_a_dead_channel)
    printed = capsys.readouterr().out
    assert ("train.py: epoch 1: 1 dead heat-map channel(s), not revived: the run started from trained weights; "
            "--revive-dead-heatmaps always revives them (heatmaps_4: 9)") in printed
    assert "revived 1" not in printed
    assert keras.ops.convert_to_numpy(final.get_layer("hml3.conv1x1_H_bn").beta)[9] < -100

def test_recentring_leaves_the_revived_points_unbiased_on_the_probe_and_the_rest_untouched():
    from cfdrnn_keras.model.codec import heatmap_peaks_numpy

    images = random_images(6, seed=1)
    network = settled(build_cfdrnn(TINY), images)
    kill(network, "hml3.conv1x1_H_bn", [7])
    dead = dh.find_dead_heatmaps(network, images)
    dh.revive(network, dead, gamma=dh.head_gamma(16, 1.3))
    truth = np.random.default_rng(2).uniform(0.2, 0.8, (6, 68, 2)).astype(np.float32)
    before = network.predict(images, verbose=0)
    dh.recentre_offsets(network, dead, images, truth, stride=4, input_size=64)
    after = network.predict(images, verbose=0)
    coarse, _ = heatmap_peaks_numpy(after["heatmaps_4"], 4, 64)
    bias = (truth - coarse - after["delta_4"]).mean(axis=0)
    assert np.abs(bias[7]).max() < 1e-4  # the revived point: no mean error left on these faces
    assert np.abs((truth - coarse - before["delta_4"]).mean(axis=0)[7]).max() > 1e-3  # there was one
    others = [k for k in range(68) if k != 7]
    np.testing.assert_allclose(after["delta_4"][:, others], before["delta_4"][:, others], atol=1e-6)
    np.testing.assert_allclose(after["delta_3"], before["delta_3"], atol=1e-6)  # other stages untouched
    np.testing.assert_array_equal(after["heatmaps_4"], before["heatmaps_4"])


def test_revival_stops_after_revive_epochs_and_reports_instead():
    from cfdrnn_keras.cli.train import auto_revival_epochs

    assert [auto_revival_epochs(n) for n in (1, 2, 10, 50, 60)] == [1, 1, 4, 20, 24]
    images = random_images()
    network = build_cfdrnn(TINY)
    lines = []
    callback = dh.ReviveDeadHeatmaps(images, network, TINY.heatmap_size, TINY.heatmap_sigma, revive_epochs=2,
                                     log=lines.append)
    kill(network, "hml3.conv1x1_H_bn", [7])
    callback.on_epoch_begin(1)  # the second epoch (0-based 1): still within the first two
    assert callback.revived == {1: {"hml3.conv1x1_H_bn": [7]}}
    kill(network, "hml3.conv1x1_H_bn", [7])
    callback.on_epoch_begin(2)
    callback.on_epoch_begin(3)  # the same set: reported once
    assert list(callback.revived) == [1]
    assert dh.find_dead_heatmaps(network, images) == {"hml3.conv1x1_H_bn": [7]}
    assert len(lines) == 2 and "revived 1" in lines[0]
    assert "not revived: past the first 2 epoch(s)" in lines[1] and "heatmaps_4: 7" in lines[1]
