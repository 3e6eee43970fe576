"""The training run folder under stress: --resume that would mix runs, broken run files, unwritable
or full disks, non-finite weights. Each case: one line (`train.py: error: ...`), exit status 2, and
nothing already written lost.

Most cases fail before any training and take a second or two in-process. A module fixture trains
one tiny run (2 epochs of 1 step); three tests resume a copy of it (slow: each traces a training
step). One subprocess checks that the error is the only line on stderr.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfdrnn_keras.model  # noqa: F401  (registers the custom layers)
from cfdrnn_keras.cli import train as tool
from cfdrnn_keras.training import callbacks as cb

REPO = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_run"


def tiny_options(shared_data, epochs=2):
    return [str(a) for a in (
        "--data", shared_data / "300w" / "afw", "--split", "all", "--limit", 4, "--val-fraction", 0.25,
        "--input-size", 64, "--width", 0.0625, "--epochs", epochs, "--steps-per-epoch", 1, "--augment", "none",
        "--batch-size", 2, "--precision", "fp32", "--recipe", "paper", "--verbose", 0, "--no-tensorboard")]


def main(capsys, argv):
    """tools/train.py's main in this process: (exit status, our stderr lines, stdout)."""
    status = tool.main([str(a) for a in argv])
    keras.config.set_dtype_policy("float32")
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("train.py:")]
    assert "Traceback" not in captured.err
    return status, lines, captured.out


def one_error(capsys, argv) -> str:
    status, lines, _ = main(capsys, argv)
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` and its bytes (temporary files included: none may be left)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_TRAINER = {}


def tiny_trainer():
    """The legacy run's trainer, fresh weights (built once: a build costs seconds on 2 busy cores)."""
    from cfdrnn_keras.config import get_preset
    from cfdrnn_keras.training import build_trainer, get_recipe

    if "trainer" not in _TRAINER:
        config = get_preset("lite").replace(input_size=64, width=0.0625)
        trainer = build_trainer(config, get_recipe("paper").replace(batch_size=2, epochs=1), 1)
        _TRAINER.update(trainer=trainer, values=[v.numpy() for v in trainer.variables])
    trainer = _TRAINER["trainer"]
    for variable, value in zip(trainer.variables, _TRAINER["values"]):
        variable.assign(value)
    return trainer


@pytest.fixture
def legacy_run(shared_data, tmp_path):
    """A run folder as the code before these checks wrote it (tests/fixtures/legacy_run), with weights."""
    run = tmp_path / "legacy"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "split.json", "history.csv", "state.json"):
        text = (LEGACY / name).read_text().replace("{DATA}", str(shared_data)).replace("{OUT}", str(run))
        (run / ("checkpoints/" + name if name == "state.json" else name)).write_text(text)
    (run / "checkpoints" / "epoch-0001.weights.h5").write_bytes(_fresh_weights(tmp_path))
    return run


_WEIGHTS = {}


def _fresh_weights(tmp_path) -> bytes:
    """The checkpoint of a fresh tiny trainer (built once: a build costs seconds)."""
    if "bytes" not in _WEIGHTS:
        path = tmp_path / "fresh.weights.h5"
        tiny_trainer().save_weights(str(path))
        _WEIGHTS["bytes"] = path.read_bytes()
        path.unlink()
    return _WEIGHTS["bytes"]


@pytest.fixture(scope="module")
def trained_run(shared_data, tmp_path_factory):
    """A finished 2-epoch tiny run written by the current code (copy it before changing anything)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert tool.main(tiny_options(shared_data) + ["--out", str(run)]) == 0
    keras.config.set_dtype_policy("float32")
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


# ----------------------------------------------------------------------------------------------
# 5. --resume refuses to change what the run depends on
# ----------------------------------------------------------------------------------------------
def test_every_option_is_deliberately_fixed_or_free_on_resume():
    options = {action.dest for action in tool.build_parser()._actions if action.dest != "help"}
    groups = [set(tool.RESUME_FIXED), set(tool.RESUME_FREE), set(tool.RUN_CONTROL)]
    assert set.union(*groups) == options
    assert sum(len(group) for group in groups) == len(options)  # no option in two groups
    for option, flag in tool.RESUME_FIXED.items():
        assert flag == "--" + option.replace("_", "-")


@pytest.mark.parametrize("change, setting, old, new", [
    (["--input-size", "128"], "the network's input size (--input-size)", "64", "128"),
    (["--width", "0.125"], "the network's width multiplier (--width)", "0.0625", "0.125"),
    (["--batchnorm", "keras"], "the network's batch-norm layer (--batchnorm)", "'fused'", "'keras'"),
    (["--heatmap-head", "linear"], "the network's heat-map heads (--heatmap-head)", "'relu'", "'linear'"),
    (["--data", "{DATA}/300w"], "--data", "{DATA}/300w/afw", "{DATA}/300w"),
    (["--split", "afw"], "--split", "'all'", "'afw'"),
    (["--val-fraction", "0.5"], "--val-fraction", "0.25", "0.5"),
    (["--limit", "3"], "--limit", "4", "3"),
    (["--seed", "1"], "--seed", "0", "1"),
    (["--augment", "default"], "--augment", "'none'", "'default'"),
    (["--recipe", "practical"], "--recipe", "'paper'", "'practical'"),
    (["--batch-size", "4"], "--batch-size", "2", "4"),
    (["--weight-decay", "1e-3"], "--weight-decay", "0.0005", "0.001"),
    (["--delta-loss-weight", "0.5"], "the loss weight of delta_1 (--delta-loss-weight)", "1.0", "0.5"),
    (["--precision", "bf16"], "the precision (--precision)", "'fp32'", "'bf16'"),
    (["--steps-per-epoch", "3"], "the steps per epoch (--steps-per-epoch, or the number of training faces)", "1", "3"),
    (["--init-weights", "other.keras"], "--init-weights", "none (the default)", "'other.keras'"),
])
def test_resume_refuses_a_change_to_what_the_run_depends_on(capsys, shared_data, legacy_run, change, setting, old,
                                                            new):
    change = [c.replace("{DATA}", str(shared_data)) for c in change]
    old, new = old.replace("{DATA}", str(shared_data)), new.replace("{DATA}", str(shared_data))
    before = snapshot(legacy_run)
    line = one_error(capsys, ["--out", legacy_run, "--resume", *change])
    assert f"{legacy_run}: --resume cannot change {setting}: the run has {old}, this command {new};" in line
    assert snapshot(legacy_run) == before  # config.json, split.json, checkpoint untouched


def test_resume_refuses_another_preset(capsys, legacy_run):
    # The fixture overrides the preset's size and width (any preset then builds the same network):
    # make it a plain lite run, as `--preset lite` alone writes it.
    from cfdrnn_keras.config import get_preset

    description = json.loads((legacy_run / "config.json").read_text())
    description["options"].update(input_size=None, width=None)
    description["model"] = get_preset("lite").to_dict()
    (legacy_run / "config.json").write_text(json.dumps(description))
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--preset", "mobile"])
    assert line.endswith(f"{legacy_run}: --resume cannot change the network's input size (--preset): the run has "
                         "256, this command 128; give the run's value or start a new run (another --out)")


def test_resume_refuses_faces_that_changed_on_disk(capsys, legacy_run):
    split = json.loads((legacy_run / "split.json").read_text())
    split["train"][0] = split["train"][0].replace("_1.pts", "_9.pts")
    (legacy_run / "split.json").write_text(json.dumps(split))
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--epochs", "5"])
    assert f"{legacy_run / 'split.json'}: --resume cannot change the train faces: the run has 3" in line


def test_resume_options_that_are_safe_to_change_pass_the_checks(legacy_run):
    args = tool.parse_args(["--out", str(legacy_run), "--resume", "--epochs", "40", "--learning-rate", "1e-4",
                            "--verbose", "2", "--no-tensorboard", "--cache", "none", "--batch-size", "2",
                            "--preset", "paper", "--input-size", "64", "--width", "0.0625"])  # same network
    tool.check_resume_options(args, tool.read_run_description(legacy_run), legacy_run)


@pytest.mark.slow
def test_a_run_written_before_the_checks_resumes_with_more_epochs(capsys, legacy_run):
    status, lines, out = main(capsys, ["--out", legacy_run, "--resume", "--epochs", "2"])
    assert status == 0 and lines == [], lines
    state = json.loads((legacy_run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["previous"]["weights"] == "epoch-0001.weights.h5"
    assert state["monitor"] == "val_nme"  # it chose best.keras on the last stage, and still does
    assert sorted(p.name for p in (legacy_run / "checkpoints").iterdir()) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5", "state.json"]
    description = json.loads((legacy_run / "config.json").read_text())
    assert description["options"]["epochs"] == 2
    [resume] = description["resumes"]  # what this resume changed (verbose and TensorBoard are not kept)
    assert resume["epoch"] == 1 and resume["changed"]["epochs"] == [1, 2]
    assert set(resume["changed"]) <= {"epochs", "verbose", "no_tensorboard"}
    assert len((legacy_run / "history.csv").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------------------------
# 6. Broken run files: one line naming the file; a damaged last checkpoint falls back one epoch
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("file, content, message", [
    ("config.json", '{"model": {"width": 0.06', "config.json: corrupt run description: not valid JSON"),
    ("config.json", '["not", "an", "object"]', "config.json: corrupt run description: expected a JSON object"),
    ("config.json", '{"model": {}}', "config.json: corrupt run description: no 'options' object"),
    ("checkpoints/state.json", "", "state.json: corrupt: not valid JSON"),
    ("checkpoints/state.json", '{"epoch": "one", "iterations": 1, "weights": "epoch-0001.weights.h5"}',
     "state.json: corrupt: 'epoch' must be a whole number >= 0, found 'one'"),
    ("checkpoints/state.json", '{"epoch": 1, "iterations": 1, "weights": "../../config.json"}',
     "state.json: corrupt: 'weights' must name a file in checkpoints/"),
    ("split.json", '{"train": 3}', "split.json: corrupt split: 'train' must be a list of .pts paths"),
])
def test_a_corrupt_run_file_is_named_in_one_line(capsys, legacy_run, file, content, message):
    (legacy_run / file).write_text(content)
    before = snapshot(legacy_run)
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--epochs", "2"])
    assert f"{legacy_run / file.split('/')[0]}" in line and message in line
    assert snapshot(legacy_run) == before


def test_a_truncated_checkpoint_without_a_previous_one_is_named_in_one_line(capsys, legacy_run):
    weights = legacy_run / "checkpoints" / "epoch-0001.weights.h5"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    before = snapshot(legacy_run)
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--epochs", "2"])
    assert f"{weights}: truncated ({size // 2} of {size} bytes); there is no previous checkpoint" in line
    assert snapshot(legacy_run) == before


def test_a_missing_or_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    trainer = tiny_trainer()
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    trainer.save_weights(str(directory / "epoch-0001.weights.h5"))
    state = {"epoch": 2, "iterations": 2, "weights": "epoch-0002.weights.h5", "best": 0.5, "best_epoch": 2,
             "previous": {"epoch": 1, "iterations": 1, "weights": "epoch-0001.weights.h5", "seed_states": None}}
    (directory / "state.json").write_text(json.dumps(state))
    used, note = cb.load_checkpoint(trainer, str(tmp_path), cb.read_state(str(tmp_path)))
    assert (used["epoch"], used["iterations"], used["best"]) == (1, 1, 0.5)
    assert note == (f"{directory / 'epoch-0002.weights.h5'}: missing; resuming from the previous checkpoint "
                    "epoch-0001.weights.h5 (epoch 1: one epoch lost)")
    (directory / "epoch-0002.weights.h5").write_bytes(b"\x89HDF junk")
    used, note = cb.load_checkpoint(trainer, str(tmp_path), cb.read_state(str(tmp_path)))
    assert used["epoch"] == 1 and "not an HDF5 weights file (corrupt); resuming from the previous" in note


@pytest.mark.slow
def test_a_truncated_last_checkpoint_loses_one_epoch(capsys, trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    last = run / "checkpoints" / "epoch-0002.weights.h5"
    previous = (run / "checkpoints" / "epoch-0001.weights.h5").read_bytes()
    last.write_bytes(last.read_bytes()[:1000])
    status, lines, _ = main(capsys, ["--out", run, "--resume", "--epochs", "3"])
    assert status == 0
    assert lines == [f"train.py: warning: {last}: truncated (1000 of {len(previous)} bytes); resuming from the "
                     "previous checkpoint epoch-0001.weights.h5 (epoch 1: one epoch lost)"]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 3 and state["iterations"] == 3 and state["previous"]["weights"] == "epoch-0002.weights.h5"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5", "state.json"]
    assert [row["epoch"] for row in cb.read_history(str(run / "history.csv"))] == [1, 2, 3]


# ----------------------------------------------------------------------------------------------
# 7. Disks: an unwritable --out before any work; a full disk while a checkpoint is written
# ----------------------------------------------------------------------------------------------
def test_out_under_a_file_is_one_line_before_tensorflow_loads(shared_data, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    code = ("import sys, cfdrnn_keras.cli.train as t; status = t.main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was loaded'; sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, *tiny_options(shared_data), "--out",
                             str(tmp_path / "a-file" / "run")], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"train.py: error: {tmp_path / 'a-file' / 'run'}: cannot create the run folder: {tmp_path / 'a-file'} is a "
        "file, not a folder"]
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_the_out_check_leaves_no_folder_behind(tmp_path):
    tool.check_out_folder(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_one_line(capsys, shared_data, tmp_path):
    (tmp_path / "a-file").write_text("x")
    line = one_error(capsys, tiny_options(shared_data) + ["--out", tmp_path / "a-file"])
    assert line == f"train.py: error: {tmp_path / 'a-file'}: --out is a file, not a run folder"


def test_a_read_only_out_is_one_line(capsys, shared_data, tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        expected = "permission denied"
    else:  # root writes through permission bits: a read-only file system, as a mount would report it
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(tool.tempfile, "mkstemp", read_only)
        expected = "read-only file system"
    try:
        line = one_error(capsys, tiny_options(shared_data) + ["--out", folder / "run"])
    finally:
        folder.chmod(0o755)
    assert line == f"train.py: error: {folder / 'run'}: cannot write the run folder: {expected}"
    assert list(folder.iterdir()) == []  # nothing created, nothing left


class _FullDisk:
    """A stream that writes `limit` bytes, then fails as a full disk does."""

    def __init__(self, stream, limit):
        self.stream, self.limit, self.written = stream, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            room = self.limit - self.written
            self.stream.write(bytes(data[:room]))
            self.written = self.limit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


def fill_disk_while_writing(monkeypatch, which="epoch-"):
    """Make every write of a file whose name contains `which` fail half-way with ENOSPC."""
    real_fdopen = os.fdopen
    real_mkstemp = cb.tempfile.mkstemp
    doomed = set()

    def mkstemp(*args, **kwargs):
        handle, path = real_mkstemp(*args, **kwargs)
        if which in os.path.basename(path):
            doomed.add(handle)
        return handle, path

    def fdopen(handle, *args, **kwargs):
        stream = real_fdopen(handle, *args, **kwargs)
        return _FullDisk(stream, 4096) if handle in doomed else stream

    monkeypatch.setattr(cb.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(cb.os, "fdopen", fdopen)


def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(100)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.ones((4, 3), np.float32), np.ones((4, 100), np.float32)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb.EpochCheckpoint(str(tmp_path))])
    before = snapshot(tmp_path)
    fill_disk_while_writing(monkeypatch)
    with pytest.raises(cb.RunFileError) as error:
        model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[cb.EpochCheckpoint(str(tmp_path))])
    checkpoints = tmp_path / "checkpoints"
    assert str(error.value) == (f"{checkpoints / 'epoch-0002.weights.h5'}: cannot write the checkpoint: no space "
                                f"left on device; the previous checkpoint {checkpoints / 'epoch-0001.weights.h5'} "
                                "is intact")
    assert snapshot(tmp_path) == before  # no temporary file, checkpoint and state.json as they were


def test_a_nearly_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    target = tmp_path / "big.weights.h5"
    target.write_bytes(b"old")
    monkeypatch.setattr(cb.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(cb.RunFileError, match=r"big.weights.h5: cannot write the checkpoint: no space left on "
                                              r"device \(needs 2.0 MB, 0.0 MB free\)"):
        cb.write_bytes_atomically(str(target), b"x" * 2_000_000, "checkpoint")
    assert [p.name for p in tmp_path.iterdir()] == ["big.weights.h5"] and target.read_bytes() == b"old"


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_loses_nothing(capsys, trained_run, tmp_path, monkeypatch):
    run = copy_of(trained_run, tmp_path)
    before = snapshot(run / "checkpoints")
    fill_disk_while_writing(monkeypatch)
    line = one_error(capsys, ["--out", run, "--resume", "--epochs", "3"])
    checkpoints = run / "checkpoints"
    assert line == (f"train.py: error: {checkpoints / 'epoch-0003.weights.h5'}: cannot write the checkpoint: no "
                    f"space left on device; the previous checkpoint {checkpoints / 'epoch-0002.weights.h5'} is "
                    f"intact; free some space and continue with --out {run} --resume")
    assert snapshot(checkpoints) == before
    assert not [p for p in run.rglob(".tmp-*")]


# ----------------------------------------------------------------------------------------------
# 8. Non-finite weights are refused when loaded, and the NaN guard's advice works
# ----------------------------------------------------------------------------------------------
def poison(trainer):
    variable = trainer.network.trainable_weights[0]
    value = variable.numpy()
    value.flat[0] = np.nan
    variable.assign(value)
    return variable.path


def test_resume_refuses_a_non_finite_checkpoint_and_names_the_last_finite_one(capsys, legacy_run):
    directory = legacy_run / "checkpoints"
    trainer = tiny_trainer()
    trainer.save_weights(str(directory / "epoch-0002.weights.h5"))  # finite: becomes the previous one
    os.replace(directory / "epoch-0002.weights.h5", directory / "epoch-0001.weights.h5")
    poison(trainer)
    trainer.save_weights(str(directory / "epoch-0002.weights.h5"))
    state = json.loads((directory / "state.json").read_text())
    state.update(epoch=2, iterations=2, weights="epoch-0002.weights.h5",
                 previous={"epoch": 1, "iterations": 1, "weights": "epoch-0001.weights.h5"})
    (directory / "state.json").write_text(json.dumps(state))
    before = snapshot(legacy_run)
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--epochs", "3"])
    assert f"{directory / 'epoch-0002.weights.h5'}: holds non-finite weights (NaN or infinity in " in line
    assert line.endswith(f"the last finite checkpoint is {directory / 'epoch-0001.weights.h5'} (epoch 1): delete "
                         "epoch-0002.weights.h5 and --resume continues from it (with a lower --learning-rate)")
    assert snapshot(legacy_run) == before
    # ... and with no finite checkpoint left, it says what is left to do
    os.replace(directory / "epoch-0002.weights.h5", directory / "epoch-0001.weights.h5")
    (directory / "state.json").write_text((LEGACY / "state.json").read_text())
    line = one_error(capsys, ["--out", legacy_run, "--resume", "--epochs", "3"])
    assert line.endswith(f"no finite checkpoint is left in {directory}: start a new run with a lower --learning-rate")


def test_init_weights_with_nan_are_refused(capsys, shared_data, tmp_path):
    trainer = tiny_trainer()
    path = poison(trainer)
    trainer.network.save(tmp_path / "diverged.keras")
    line = one_error(capsys, tiny_options(shared_data) + ["--init-weights", tmp_path / "diverged.keras",
                                                          "--out", tmp_path / "run"])
    assert f"{tmp_path / 'diverged.keras'}: holds non-finite weights (NaN or infinity in 1 variables, e.g. " in line
    assert path.split("/")[0] in line
    assert not (tmp_path / "run" / "checkpoints" / "state.json").exists()


def test_non_finite_weights_after_a_finite_loss_are_not_checkpointed(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)

    class Poison(keras.callbacks.Callback):  # the last update of epoch 2 overflows; its loss was finite
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                self.model.layers[0].kernel.assign(np.full((3, 1), np.inf, np.float32))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[Poison(), checkpoint])
    assert model.stop_training and checkpoint.message.startswith(
        "training stopped: the weights became non-finite in epoch 2 although its loss was finite")
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and checkpoint.last["epoch"] == 1
    assert cb.checkpoint_problem(str(tmp_path / "checkpoints" / "epoch-0001.weights.h5")) is None


def test_the_nan_guard_advice_names_the_checkpoint_that_resume_loads(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    y[5] = np.nan  # batches of 2, 2 per epoch: in the first batch of epoch 2
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    stop = cb.StopOnNaN(advice=lambda: tool.divergence_advice(tmp_path, 0.01, checkpoint))
    model.fit(dataset, epochs=5, steps_per_epoch=2, verbose=0, callbacks=[stop, checkpoint], shuffle=False)
    last = tmp_path / "checkpoints" / "epoch-0001.weights.h5"
    assert stop.message == (
        f"training stopped: the loss became nan at epoch 2, batch 1; the last finite checkpoint is epoch 1 ({last}); "
        f"continue from it with a lower learning rate: --out {tmp_path} --resume --learning-rate 0.005 (now 0.01), "
        "or check the data")
    assert json.loads((tmp_path / "checkpoints" / "state.json").read_text())["weights"] == last.name
    assert cb.checkpoint_problem(str(last)) is None  # what --resume loads is finite
