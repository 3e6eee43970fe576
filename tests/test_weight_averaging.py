"""Stochastic weight averaging: the running mean, the batch-norm statistics measured again, the learning
rate of the averaged epochs, and `tools/train.py --swa-epochs` (swa.keras, resumed after a kill)."""
import json

import keras
import numpy as np
import pytest

import cfdrnn_keras.model  # noqa: F401  (registers the custom layers for load_model)
from cfdrnn_keras.model.layers import FusedBatchNormalization
from cfdrnn_keras.training import get_recipe, make_schedule
from cfdrnn_keras.training.weight_averaging import (AverageWeightsEachEpoch, WeightAverage,
                                                    recompute_batchnorm_statistics)
from tests.test_train_cli import _Interrupt  # a kill in the middle of an epoch


def _dense(units=3):
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(units)(inputs))


def test_the_running_mean_is_the_mean_of_the_epochs_added():
    network = _dense()
    average = WeightAverage(network)
    kernels = [np.full((2, 3), v, np.float32) for v in (1.0, 2.0, 6.0)]
    for i, kernel in enumerate(kernels):
        network.set_weights([kernel, np.full((3,), 10.0 * i, np.float32)])
        average.update()
    mean_kernel, mean_bias = average.values()
    np.testing.assert_allclose(mean_kernel, 3.0)  # (1 + 2 + 6) / 3
    np.testing.assert_allclose(mean_bias, 10.0)  # (0 + 10 + 20) / 3
    assert average.epochs == 3
    assert len(average.weights) == 3  # two means and the count; the network's own weights are not its own


def test_no_epoch_averaged_is_an_error_not_zeros():
    with pytest.raises(ValueError, match="no epoch"):
        WeightAverage(_dense()).values()


def test_the_callback_adds_only_the_epochs_after_the_start():
    network = _dense()
    average = WeightAverage(network)
    callback = AverageWeightsEachEpoch(average, start_epoch=2)
    for epoch in range(4):  # Keras's 0-based epochs 0..3 are the run's epochs 1..4
        network.set_weights([np.full((2, 3), epoch + 1.0, np.float32), np.zeros(3, np.float32)])
        callback.on_epoch_end(epoch)
    assert average.epochs == 2
    np.testing.assert_allclose(average.values()[0], 3.5)  # epochs 3 and 4
    with pytest.raises(ValueError):
        AverageWeightsEachEpoch(average, start_epoch=-1)


@pytest.mark.parametrize("layer_class", [keras.layers.BatchNormalization, FusedBatchNormalization])
def test_batchnorm_statistics_become_the_mean_of_the_batch_statistics(layer_class):
    inputs = keras.Input((4, 4, 2))
    layer = layer_class(momentum=0.9)
    network = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0 * i, scale=1.0 + i, size=(5, 4, 4, 2)).astype(np.float32) for i in range(3)]
    count = recompute_batchnorm_statistics(network, ((b, None) for b in batches))  # (inputs, targets) pairs
    assert count == 3 and layer.momentum == 0.9  # the momentum is put back
    means = [b.mean(axis=(0, 1, 2)) for b in batches]
    variances = [b.var(axis=(0, 1, 2)) for b in batches]  # what one training step measures
    np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-3, atol=1e-4)


def test_no_batches_leave_the_statistics_as_they_were():
    inputs = keras.Input((3,))
    layer = keras.layers.BatchNormalization()
    network = keras.Model(inputs, layer(inputs))
    layer.moving_mean.assign([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no batches"):
        recompute_batchnorm_statistics(network, [])
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [1.0, 2.0, 3.0])


def _rates(recipe, steps, at):
    schedule = make_schedule(recipe, steps)
    return [float(schedule(step)) if callable(schedule) else float(schedule) for step in at]


def test_the_cosine_anneals_to_the_averaged_epochs_rate_then_stays():
    # 10 epochs of 4 steps, the last 4 averaged at 2e-4: warm-up (epoch 1), cosine to 2e-4 by step 24
    recipe = get_recipe("practical").replace(epochs=10, learning_rate=1e-3, swa_epochs=4, swa_learning_rate=2e-4)
    before, peak, middle, end, after, last = _rates(recipe, 4, [0, 4, 14, 24, 30, 39])
    assert before == 0.0 and peak == pytest.approx(1e-3)
    assert middle == pytest.approx(2e-4 + 0.5 * (1e-3 - 2e-4), rel=1e-5)  # halfway through the cosine
    assert end == after == last == pytest.approx(2e-4)


def test_the_averaged_epochs_rate_defaults_to_a_fifth_of_the_peak_and_other_schedules_jump_to_it():
    practical = get_recipe("practical").replace(epochs=3, learning_rate=5e-4, swa_epochs=3)
    assert _rates(practical, 4, [0, 11]) == pytest.approx([1e-4, 1e-4])  # every epoch averaged: constant
    paper = get_recipe("paper").replace(epochs=40, swa_epochs=5, swa_learning_rate=3e-6)
    # epochs 1–30 at 1e-5, 31–35 at the first step down (steps 60–69), the averaged 36–40 at 3e-6
    assert _rates(paper, 2, [0, 69, 70, 79]) == pytest.approx([1e-5, paper.values[0], 3e-6, 3e-6])
    with pytest.raises(ValueError, match="between 1 and the run's 3"):
        make_schedule(practical.replace(swa_epochs=4), 4)


class _EpochWeights(keras.callbacks.Callback):
    """The network's weights at the end of every epoch."""

    def __init__(self, network):
        super().__init__()
        self.network, self.epochs = network, []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([np.array(w.numpy()) for w in self.network.weights])


def _statistic(weight) -> bool:
    return weight.path.endswith(("moving_mean", "moving_variance"))


@pytest.mark.slow
def test_swa_keras_is_the_mean_of_the_last_epochs_and_survives_a_kill(shared_data, tmp_path, capsys):
    import cfdrnn_keras.cli.train as tool

    common = [str(a) for a in [
        "--data", shared_data / "300w" / "afw", "--split", "all", "--limit", "10", "--val-fraction", "0.2",
        "--input-size", "64", "--width", "0.0625", "--epochs", "3", "--steps-per-epoch", "2", "--augment", "none",
        "--batch-size", "4", "--learning-rate", "3e-3", "--precision", "fp32", "--recipe", "paper",
        "--swa-epochs", "2", "--swa-learning-rate", "1e-3", "--no-tensorboard"]]
    straight = tmp_path / "straight"
    args = tool.parse_args(common + ["--out", str(straight)])
    watcher = _EpochWeights(None)

    class _Attach(keras.callbacks.Callback):  # the network exists only inside run()
        def set_model(self, model):
            watcher.network = model.network

    result = tool.run(args, extra_callbacks=[_Attach(), watcher])
    assert f"{straight / 'swa.keras'}: the mean of the last 2 epochs' weights" in capsys.readouterr().out
    averaged = keras.saving.load_model(straight / "swa.keras", safe_mode=True)
    assert len(watcher.epochs) == 3
    for i, (weight, saved) in enumerate(zip(result.network.weights, averaged.weights)):
        if _statistic(weight):
            assert np.all(np.isfinite(saved.numpy()))
            continue
        np.testing.assert_allclose(saved.numpy(), (watcher.epochs[1][i] + watcher.epochs[2][i]) / 2,
                                   rtol=1e-5, atol=1e-6)
    # the statistics were measured on the averaged network, not averaged: some differ from the mean
    statistics = [i for i, w in enumerate(result.network.weights) if _statistic(w)]
    assert any(not np.allclose(averaged.weights[i].numpy(), (watcher.epochs[1][i] + watcher.epochs[2][i]) / 2)
               for i in statistics)
    assert json.loads((straight / "config.json").read_text())["recipe"]["swa_epochs"] == 2

    # Killed in epoch 3, resumed: the mean continues from the checkpoint (epoch 2 in it, not twice)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        tool.run(tool.parse_args(common + ["--out", str(interrupted)]), extra_callbacks=[_Interrupt(3)])
    assert not (interrupted / "swa.keras").exists()
    resumed = tool.run(tool.parse_args(["--out", str(interrupted), "--resume"]))
    assert resumed.trainer.weight_average.epochs == 2
    again = keras.saving.load_model(interrupted / "swa.keras", safe_mode=True)
    for weight, first, second in zip(result.network.weights, averaged.weights, again.weights):
        if not _statistic(weight):
            np.testing.assert_allclose(second.numpy(), first.numpy(), rtol=1e-4, atol=1e-5)

    # Killed after the last epoch but before swa.keras: --resume writes it and trains nothing
    (interrupted / "swa.keras").unlink()
    finished = tool.run(tool.parse_args(["--out", str(interrupted), "--resume"]))
    assert finished.history is None and (interrupted / "swa.keras").is_file()
    keras.config.set_dtype_policy("float32")
    with pytest.raises(tool.TrainingError, match="already trained for 3 of 3 epochs"):
        tool.run(tool.parse_args(["--out", str(interrupted), "--resume"]))
    with pytest.raises(tool.TrainingError, match="--swa-epochs"):
        tool.run(tool.parse_args(["--out", str(interrupted), "--resume", "--epochs", "4", "--swa-epochs", "3"]))


@pytest.mark.parametrize("arguments, message", [
    (["--epochs", "3", "--swa-epochs", "4"], "--swa-epochs must be between 0 and the run's 3 epochs"),
    (["--swa-learning-rate", "1e-4"], "--swa-learning-rate needs --swa-epochs"),
    (["--swa-epochs", "2", "--swa-learning-rate", "0"], "--swa-learning-rate must be positive"),
])
def test_bad_averaging_options_give_one_line(tmp_path, capsys, arguments, message):
    import cfdrnn_keras.cli.train as tool

    data = tmp_path / "faces"
    data.mkdir()
    status = tool.main([*arguments, "--data", str(data), "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
