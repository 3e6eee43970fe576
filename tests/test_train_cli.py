"""tools/train.py: help, one-line errors, the files of a run, and resuming after a kill mid-epoch."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import keras

import cfdrnn_keras.model  # noqa: F401  (registers the custom layers for load_model)
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "train.py"


def _load_tool():
    import cfdrnn_keras.cli.train as module

    return module


def _run_cli(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_help_documents_every_option():
    result = _run_cli("--help")
    assert result.returncode == 0
    parser = _load_tool().build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, action.dest
        for option in action.option_strings:
            assert option in result.stdout
        if action.default is None:  # "None" must mean "the preset's / recipe's / a generated" value
            assert any(word in action.help for word in ("override", "default", "start from")), action.dest


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data", "/no/such/folder"], "/no/such/folder: data folder not found"),
        (["--init-weights", "/no/such.keras"], "/no/such.keras: initial weights not found"),
        (["--resume", "--out", "{tmp}/empty"], "no checkpoint to resume from"),
        (["--data", "{tmp}", "--split", "all"], "no faces of split 'all' found"),
    ],
)
def test_bad_input_gives_one_line_error_without_traceback(tmp_path, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    result = _run_cli(*arguments)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("train.py: error:") and message in lines[0]


class _Interrupt(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch` (1-based), as a kill would stop the process."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 0:
            raise KeyboardInterrupt("simulated kill")


class _Snapshot(keras.callbacks.Callback):
    """Copies every trainer and optimizer variable at the end of epoch 1 / at the start of training."""

    def __init__(self):
        super().__init__()
        self.after_epoch_1 = self.at_start = None

    def _values(self):
        return [np.array(v.numpy()) for v in self.model.variables + self.model.optimizer.variables]

    def on_train_begin(self, logs=None):
        self.at_start = self._values()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.after_epoch_1 = self._values()


@pytest.mark.parametrize("arguments, message", [
    (["--distill-from", "/no/such.keras"], "/no/such.keras: teacher not found"),
    (["--distill-weight", "0.3"], "--distill-weight needs --distill-from"),
    (["--distill-from", "fast", "--distill-weight", "0"], "--distill-weight must be in (0, 1]"),
    (["--delta-loss-weight-end", "0.5,x"], "--delta-loss-weight-end must be one non-negative number or four"),
])
def test_bad_teacher_and_schedule_options_give_one_line_in_process(tmp_path, capsys, arguments, message):
    """The same one-line contract as above, in process (a subprocess costs 10 s of imports each)."""
    data = tmp_path / "faces"
    data.mkdir()
    status = _load_tool().main([*arguments, "--data", str(data), "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("train.py: error:") and message in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_split_seed_keeps_the_split_while_seed_changes_it(shared_data):
    """--split-seed alone decides the held-out faces: seed 1 with split seed 0 validates on seed 0's faces."""
    tool = _load_tool()

    def split(*options):
        args = tool.build_parser().parse_args(["--data", str(shared_data / "300w"), "--limit", "60", *options])
        train, validation = tool.select_faces(args)
        return [f.pts_path for f in train], [f.pts_path for f in validation]

    seed0 = split("--seed", "0")
    assert len(seed0[1]) == 6 and not set(seed0[0]) & set(seed0[1])  # 10 % of 60, disjoint
    assert split("--seed", "1", "--split-seed", "0") == seed0
    assert split("--seed", "0", "--split-seed", "1") == split("--seed", "1")
    assert split("--seed", "1")[1] != seed0[1]


@pytest.mark.slow
def test_run_files_and_resume_after_a_kill_match_an_uninterrupted_run(shared_data, tmp_path):
    # Without augmentation a resumed run sees exactly the batches of the uninterrupted one.
    common = ["--data", shared_data / "300w" / "afw", "--split", "all", "--limit", "10", "--val-fraction", "0.2",
              "--input-size", "64", "--width", "0.0625", "--epochs", "2", "--steps-per-epoch", "2",
              "--augment", "none", "--batch-size", "4", "--learning-rate", "3e-3", "--precision", "fp32",
              "--recipe", "paper"]  # SGD: a third of AdamW's tracing time (the optimizer state is momentum)
    common = [str(a) for a in common]

    # Uninterrupted, through the command-line entry point (in this process, so that all three runs
    # share TensorFlow's kernel settings): every file a run promises.
    tool = _load_tool()
    straight = tmp_path / "straight"
    assert tool.main(common + ["--out", str(straight)]) == 0
    for name in ("config.json", "split.json", "history.csv", "curves.png", "best.keras", "final.keras",
                 "checkpoints/state.json", "checkpoints/epoch-0002.weights.h5"):
        assert (straight / name).is_file(), name
    # the last epoch's checkpoint and the one before (the fallback if the last is damaged), nothing older
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5", "state.json"]
    assert list((straight / "tensorboard").rglob("events.out.tfevents.*"))
    description = json.loads((straight / "config.json").read_text())
    assert description["model"]["width"] == 0.0625 and description["steps_per_epoch"] == 2
    assert description["faces"] == {"train": 8, "validation": 2}
    header = (straight / "history.csv").read_text().splitlines()[0].split(",")
    for column in ("epoch", "loss", "heatmaps_1_loss", "delta_4_loss", "nme", "val_loss", "val_nme", "val_nme_default",
                   "learning_rate"):
        assert column in header
    assert len((straight / "history.csv").read_text().splitlines()) == 3
    state = json.loads((straight / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["iterations"] == 4
    final = keras.saving.load_model(straight / "final.keras", safe_mode=True)
    best = keras.saving.load_model(straight / "best.keras", safe_mode=True)
    assert final.__class__.__name__ == "Functional" and best.__class__.__name__ == "Functional"
    assert set(final.output) >= {"heatmaps_1", "delta_4", "landmarks", "confidence"}

    # Interrupted in the middle of epoch 2, then resumed.
    interrupted = tmp_path / "interrupted"
    snapshot = _Snapshot()
    with pytest.raises(KeyboardInterrupt):
        tool.run(tool.parse_args(common + ["--out", str(interrupted)]), extra_callbacks=[snapshot, _Interrupt(2)])
    assert json.loads((interrupted / "checkpoints" / "state.json").read_text())["epoch"] == 1
    resumed_snapshot = _Snapshot()
    result = tool.run(tool.parse_args(["--out", str(interrupted), "--resume"]), extra_callbacks=[resumed_snapshot])
    keras.config.set_dtype_policy("float32")

    # The resumed run started from exactly the state saved after epoch 1 ...
    assert len(resumed_snapshot.at_start) == len(snapshot.after_epoch_1)
    for restored, saved in zip(resumed_snapshot.at_start, snapshot.after_epoch_1):
        np.testing.assert_array_equal(restored, saved)
    # ... and ended where the uninterrupted run ended: epoch, iterations, learning rate, weights.
    optimizer = result.trainer.optimizer
    assert int(optimizer.iterations.numpy()) == 4
    straight_rows = (straight / "history.csv").read_text().splitlines()
    resumed_rows = (interrupted / "history.csv").read_text().splitlines()
    assert len(resumed_rows) == 3 and resumed_rows[0] == straight_rows[0]
    column = straight_rows[0].split(",").index("learning_rate")
    assert float(resumed_rows[2].split(",")[column]) == pytest.approx(float(straight_rows[2].split(",")[column]))
    for resumed, uninterrupted in zip(result.network.weights, final.weights):
        np.testing.assert_allclose(resumed.numpy(), uninterrupted.numpy(), rtol=1e-4, atol=1e-5)
