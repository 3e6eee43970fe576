"""Callbacks of a training run: checkpoints that survive a kill, the best network, logs and plots.

Every file a reader might open while training runs (checkpoint, state, best/final network, CSV,
plot) is written to a temporary name in the same folder and moved into place with `os.replace`,
which is atomic on POSIX: a run killed at any moment leaves the previous complete file.

Under a multi-worker strategy every worker runs the callbacks that read variables (a read may be
a collective operation), but only the chief writes where people look; the others write into a
scratch folder that is deleted (the pattern TensorFlow's multi-worker guide prescribes).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"


def write_text_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# Checkpoints and resuming
# ----------------------------------------------------------------------------------------------
def read_state(run_dir: str) -> dict | None:
    """The last complete checkpoint's state (`epoch` = epochs done, `weights` = file), or None."""
    path = os.path.join(run_dir, CHECKPOINT_DIR, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        state = json.load(handle)
    weights = os.path.join(run_dir, CHECKPOINT_DIR, state["weights"])
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: checkpoint named in {path} is missing")
    state["weights_path"] = weights
    return state


def seed_state_variables(model) -> list:
    """The random-number states of the model's layers (dropout), which `save_weights` leaves out."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def restore_seed_states(model, states) -> None:
    """Put back the dropout random states a checkpoint recorded, so masks continue, not replay."""
    variables = seed_state_variables(model)
    if states is None or len(states) != len(variables):
        return
    for variable, value in zip(variables, states):
        variable.assign(np.asarray(value, dtype=variable.dtype))


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the trainer's weights and optimizer state, then a state file naming them.

    The weights go to `checkpoints/epoch-NNNN.weights.h5` (new name each epoch), and only after the
    file is complete does `state.json` (replaced atomically) point at it; the older file is then
    removed. A kill at any moment leaves a state file that names a complete checkpoint, so a
    resumed run loses at most the epoch in progress.
    """

    def __init__(self, run_dir: str, is_chief: bool = True, extra_state=None):
        super().__init__()
        self.run_dir = run_dir
        self.is_chief = is_chief
        self.extra_state = extra_state or (lambda: {})

    def _directory(self) -> str:
        if self.is_chief:
            return os.path.join(self.run_dir, CHECKPOINT_DIR)
        return tempfile.mkdtemp(prefix="cfdrnn-worker-checkpoint-")

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            return  # never overwrite the last good checkpoint with diverged weights
        directory = self._directory()
        os.makedirs(directory, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        temporary = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
        self.model.save_weights(temporary)  # includes the optimizer's variables (iterations, moments)
        os.replace(temporary, os.path.join(directory, name))
        state = {
            "epoch": epoch + 1,
            "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "weights": name,
            "seed_states": [np.asarray(v.numpy()).tolist() for v in seed_state_variables(self.model)],
            **self.extra_state(),
        }
        state_path = os.path.join(directory, STATE_FILE)
        previous = None
        if os.path.isfile(state_path):
            with open(state_path) as handle:
                previous = json.load(handle).get("weights")
        write_text_atomically(state_path, json.dumps(state, indent=2, sort_keys=True))
        if previous and previous != name:
            try:
                os.remove(os.path.join(directory, previous))
            except FileNotFoundError:
                pass
        if not self.is_chief:
            shutil.rmtree(directory, ignore_errors=True)


class BestNetworkSaver(keras.callbacks.Callback):
    """Keeps the plain network with the best `monitor` value so far (e.g. lowest `val_nme`)."""

    def __init__(self, save_fn, monitor: str = "val_nme", mode: str = "min", best: float | None = None,
                 best_epoch: int | None = None):
        super().__init__()
        self.save_fn = save_fn  # save_fn(scratch: bool) writes the network; scratch for non-chiefs
        self.monitor = monitor
        self.better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
        self.best = best
        self.best_epoch = best_epoch

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is None or self.better(value, self.best):
            self.best, self.best_epoch = value, epoch + 1
            self.save_fn()
        if logs is not None:
            logs[f"best_{self.monitor}"] = self.best

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "monitor": self.monitor}


class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Averages every batch norm's moving mean and variance over the replicas.

    Keras 3 normalises each replica's batch with its own statistics and updates each replica's
    moving averages from them, so under MirroredStrategy / MultiWorkerMirroredStrategy the
    copies drift apart (the trainable weights stay equal: their gradients are all-reduced). Before
    validation and at the end of every epoch (before checkpoints and saved networks read them)
    this all-reduces the moving statistics, so every worker holds the same network and the
    averages use the whole global batch. Does nothing with one replica.
    """

    def __init__(self):
        super().__init__()
        self._sync = None

    def _build(self):
        import tensorflow as tf

        strategy = self.model.distribute_strategy
        if strategy is None or strategy.num_replicas_in_sync <= 1:
            return None
        moving = [v for layer in self.model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
                  for v in (layer.moving_mean, layer.moving_variance)]
        if not moving:
            return None
        tf_variables = [v.value if hasattr(v, "_value") else v for v in moving]

        def replica_mean():
            context = tf.distribute.get_replica_context()
            return context.all_reduce("MEAN", [tf.identity(v) for v in tf_variables])

        @tf.function
        def sync():
            means = strategy.run(replica_mean)
            for variable, mean in zip(moving, means):
                variable.assign(strategy.experimental_local_results(mean)[0])

        return sync

    def _run(self):
        if self._sync is None:
            self._sync = self._build() or (lambda: None)
        self._sync()

    def on_test_begin(self, logs=None):
        self._run()

    def on_epoch_end(self, epoch, logs=None):
        self._run()


# ----------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------
class LearningRateLogger(keras.callbacks.Callback):
    """Adds the learning rate in force at the end of each epoch to the logs (CSV, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class HistoryCSV(keras.callbacks.Callback):
    """`history.csv`: one row per epoch, a column per metric; rewritten atomically every epoch.

    On resume the rows of epochs that the checkpoint does not cover are dropped, so an epoch that
    was logged but not checkpointed before a kill appears once, from the resumed run.
    """

    def __init__(self, path: str, initial_epoch: int = 0, enabled: bool = True):
        super().__init__()
        self.path = path
        self.initial_epoch = int(initial_epoch)
        self.enabled = enabled
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = [row for row in read_history(self.path) if int(row["epoch"]) <= self.initial_epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            row[key] = float(np.asarray(value))
        self.rows.append(row)
        if self.enabled:
            self._write()

    def _write(self):
        columns = ["epoch"]
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        lines = [",".join(columns)]
        for row in self.rows:
            lines.append(",".join("" if row.get(c) is None else repr(row[c]) if c != "epoch" else str(row[c])
                                  for c in columns))
        write_text_atomically(self.path, "\n".join(lines) + "\n")


def read_history(path: str) -> list[dict]:
    """Rows of a `history.csv` as dicts of floats (missing cells left out); [] if there is none."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            row = {}
            for key, value in record.items():
                if value not in (None, ""):
                    row[key] = int(float(value)) if key == "epoch" else float(value)
            rows.append(row)
    return rows


def plot_history(rows: list[dict], path: str) -> None:
    """`curves.png`: total, heat-map and offset losses (log scale; training solid, validation dashed)
    and the NME in %. The heat-map and offset curves are the means over the four levels; every
    level's own loss is in history.csv and TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = [row["epoch"] for row in rows]

    def series(row, prefix, group):
        if group == "loss":
            return row.get(prefix + "loss", np.nan)
        values = [row.get(f"{prefix}{group}_{j}_loss") for j in range(1, 5)]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else np.nan

    figure, (losses, nme) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = {"loss": "total (weighted)", "heatmaps": "heat-maps (mean of 4)", "delta": "offsets (mean of 4)"}
    for color, group in zip(("black", "tab:blue", "tab:red"), labels):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [series(row, prefix, group) for row in rows]
            if np.isfinite(values).any():
                losses.plot(epochs, values, style, color=color, marker="o", markersize=3,
                            label=("validation " if prefix else "training ") + labels[group])
    losses.set_yscale("log")
    losses.set_xlabel("epoch")
    losses.set_title("losses")
    losses.grid(alpha=0.3, which="both")
    losses.legend(fontsize=7)
    for key, style in (("nme", "-"), ("val_nme", "--")):
        values = [100.0 * row.get(key, np.nan) for row in rows]
        if np.isfinite(values).any():
            nme.plot(epochs, values, style, marker="o", markersize=3,
                     label="validation" if key.startswith("val_") else "training (augmented, train mode)")
    nme.set_xlabel("epoch")
    nme.set_ylabel("inter-ocular NME (%)")
    nme.set_title("NME")
    nme.grid(alpha=0.3)
    nme.legend(fontsize=8)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(handle)
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


class CurvePlotter(keras.callbacks.Callback):
    """Redraws `curves.png` from the history after every epoch."""

    def __init__(self, history: HistoryCSV, path: str, enabled: bool = True):
        super().__init__()
        self.history = history
        self.path = path
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled:
            plot_history(self.history.rows, self.path)


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops at the first non-finite loss and says so in words the user can act on."""

    def __init__(self):
        super().__init__()
        self.message = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            self.message = (
                f"training stopped: the loss became {float(np.asarray(loss))} at epoch {self._epoch + 1}, "
                f"batch {batch + 1}; lower the learning rate (--learning-rate), check the data, or resume "
                "from the last checkpoint (--resume)"
            )
            print(self.message, flush=True)
            self.model.stop_training = True
