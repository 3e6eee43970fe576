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
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from ..errors import describe_os_error, read_json_object  # noqa: F401  (describe_os_error: re-exported)
from ..file_mode import match_plain_open

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
CHECKPOINT_PATTERN = re.compile(r"^epoch-\d{4,}\.weights\.h5$")


class RunFileError(Exception):
    """A run file that cannot be read or written; the message is one line naming the file."""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_bytes_atomically(path: str, data: bytes, what: str = "file") -> None:
    """`path` gets `data` or stays as it was: written to a temporary name, then `os.replace`d.

    A full disk (checked before writing, and caught while writing) or any other OSError removes the
    temporary file and raises RunFileError naming `path`; an existing `path` is never touched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        free = shutil.disk_usage(directory).free
        if free < len(data) + (1 << 20):
            raise OSError(errno.ENOSPC, f"needs {len(data) / 1e6:.1f} MB, {free / 1e6:.1f} MB free")
        handle, temporary = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix="-" + os.path.basename(path),
                                             dir=directory)
        match_plain_open(handle, path)  # readable as a plain open() would leave it, not mkstemp's 0600
        with os.fdopen(handle, "wb") as stream:
            view = memoryview(data)
            while view:
                view = view[stream.write(view):]
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            _remove_quietly(temporary)
        detail = describe_os_error(error)
        if getattr(error, "errno", None) == errno.ENOSPC and error.strerror and "needs" in error.strerror:
            detail += f" ({error.strerror})"
        raise RunFileError(f"{path}: cannot write the {what}: {detail}") from None
    except BaseException:
        if temporary is not None:
            _remove_quietly(temporary)
        raise


def write_text_atomically(path: str, text: str, what: str = "file") -> None:
    write_bytes_atomically(path, text.encode("utf-8"), what)


def weights_bytes(model) -> bytes:
    """What `model.save_weights` writes (weights and optimizer state, `.weights.h5`), in memory.

    HDF5 writing straight to a full disk fails half-way through and then crashes the interpreter
    at exit (a segmentation fault); serialising in memory first leaves the disk write to
    `write_bytes_atomically`, which fails cleanly.
    """
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    return buffer.getvalue()


def model_bytes(model) -> bytes:
    """What `model.save("x.keras")` writes, in memory (see `weights_bytes`)."""
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    return buffer.getvalue()


def non_finite_variables(variables) -> list[str]:
    """Paths of the floating-point variables holding a NaN or an infinity."""
    bad = []
    for variable in variables:
        if "float" not in keras.backend.standardize_dtype(variable.dtype):
            continue
        value = np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)
        if not np.isfinite(value).all():
            bad.append(variable.path)
    return bad


def checkpoint_problem(path: str) -> tuple[str, str] | None:
    """None if `path` is a readable `.weights.h5` whose arrays are all finite, else (kind, words).

    kind is "missing", "unreadable" or "non-finite". Reads the file with h5py, without a model.
    """
    import h5py

    if not os.path.isfile(path):
        return "missing", "missing"
    arrays, bad = [0], []
    try:
        with h5py.File(path, "r") as handle:
            def visit(name, item):
                if isinstance(item, h5py.Dataset) and item.dtype.kind == "f":
                    arrays[0] += 1
                    if not np.isfinite(item[()]).all():
                        bad.append(name)
            handle.visititems(visit)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        text = str(error)
        truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
        if truncated:
            return "unreadable", f"truncated ({truncated.group(1)} of {truncated.group(2)} bytes)"
        if "signature not found" in text:
            return "unreadable", "not an HDF5 weights file (corrupt)"
        return "unreadable", f"unreadable ({text.splitlines()[0][:160]})"
    if bad:
        return "non-finite", f"holds non-finite weights (NaN or infinity in {len(bad)} of {arrays[0]} arrays, e.g. {bad[0]})"
    return None


# ----------------------------------------------------------------------------------------------
# Checkpoints and resuming
# ----------------------------------------------------------------------------------------------
def _checkpoint_entry(value, path: str, required: bool) -> dict | None:
    """The checkpoint fields of a state (or of its `previous`), checked; None if absent and optional."""
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: corrupt: expected a JSON object, found {type(value).__name__}")
    entry = {}
    for key in ("epoch", "iterations"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise RunFileError(f"{path}: corrupt: {key!r} must be a whole number >= 0, found {number!r}")
        entry[key] = number
    name = value.get("weights")
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name.startswith("."):
        raise RunFileError(f"{path}: corrupt: 'weights' must name a file in {CHECKPOINT_DIR}/, found {name!r}")
    entry["weights"] = name
    seeds = value.get("seed_states")
    if seeds is not None and not isinstance(seeds, list):
        raise RunFileError(f"{path}: corrupt: 'seed_states' must be a list, found {type(seeds).__name__}")
    entry["seed_states"] = seeds
    return entry


def read_state(run_dir: str) -> dict | None:
    """The last complete checkpoint's state (`epoch` = epochs done, `weights` = file), or None.

    `previous` is the checkpoint of the epoch before (runs written before it was kept lack it).
    A state file that is not valid JSON or lacks a field raises RunFileError (one line, naming it).
    """
    path = os.path.join(run_dir, CHECKPOINT_DIR, STATE_FILE)
    if not os.path.isfile(path):
        return None
    state = read_json_object(path, error_type=RunFileError)
    entry = _checkpoint_entry(state, path, required=True)
    best = state.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise RunFileError(f"{path}: corrupt: 'best' must be a number or null, found {best!r}")
    try:
        previous = _checkpoint_entry(state.get("previous"), path, required=False)
    except RunFileError:
        previous = None  # only ever a fallback: a damaged one is no worse than none
    state = {**state, **entry, "previous": previous}
    state["weights_path"] = os.path.join(run_dir, CHECKPOINT_DIR, entry["weights"])
    return state


def choose_checkpoint(run_dir: str, state: dict) -> tuple[dict, str | None]:
    """The checkpoint to resume from, judged from the files alone (no model): (state, note).

    The one `state` names if it is readable and finite. A missing, truncated or unreadable one falls
    back to `previous` (one epoch lost; the note says so). One with non-finite weights is refused:
    RunFileError names the last finite checkpoint. RunFileError too when nothing is left.
    """
    directory = os.path.join(run_dir, CHECKPOINT_DIR)
    current = os.path.join(directory, state["weights"])
    problem = checkpoint_problem(current)
    if problem is None:
        return state, None
    return _fall_back(run_dir, state, problem)


def _fall_back(run_dir: str, state: dict, problem: tuple[str, str]) -> tuple[dict, str]:
    directory = os.path.join(run_dir, CHECKPOINT_DIR)
    current = os.path.join(directory, state["weights"])
    kind, words = problem
    previous = state.get("previous")
    previous_path = os.path.join(directory, previous["weights"]) if previous else None
    previous_problem = checkpoint_problem(previous_path) if previous else ("missing", "missing")
    if kind == "non-finite":
        if previous_problem is None:
            raise RunFileError(
                f"{current}: {words}; the last finite checkpoint is {previous_path} (epoch {previous['epoch']}): "
                f"delete {state['weights']} and --resume continues from it (with a lower --learning-rate)")
        best = os.path.join(run_dir, "best.keras")
        hint = (f"start a new run from {best} with --init-weights and a lower --learning-rate"
                if os.path.isfile(best) else "start a new run with a lower --learning-rate")
        raise RunFileError(f"{current}: {words}; no finite checkpoint is left in {directory}: {hint}")
    if previous is None:
        raise RunFileError(f"{current}: {words}; there is no previous checkpoint to fall back to")
    if previous_problem is not None:
        raise RunFileError(f"{current}: {words}, and the previous checkpoint {previous_path} is "
                           f"{previous_problem[1]}: nothing left to resume from")
    # Epoch, iterations, file and dropout states are the previous checkpoint's. The best NME stays
    # the newer state's: best.keras on disk is the network it describes.
    fallback = {**state, **previous, "previous": None, "weights_path": previous_path}
    note = (f"{current}: {words}; resuming from the previous checkpoint {previous['weights']} "
            f"(epoch {previous['epoch']}: one epoch lost)")
    return fallback, note


def load_checkpoint(model, run_dir: str, state: dict) -> tuple[dict, str | None]:
    """Fill `model` (trainer + optimizer) from the checkpoint `choose_checkpoint` picks; (state used, note).

    A file that passes the checks but does not load into `model` falls back like a damaged one.
    """
    chosen, note = choose_checkpoint(run_dir, state)
    problem = _load_weights(model, chosen["weights_path"])
    if problem is None:
        return chosen, note
    if note is None:  # the last checkpoint itself failed to load: try the previous one
        chosen, note = _fall_back(run_dir, state, problem)
        problem = _load_weights(model, chosen["weights_path"])
        if problem is None:
            return chosen, note
    raise RunFileError(f"{chosen['weights_path']}: {problem[1]}; nothing left to resume from")


def _load_weights(model, path: str) -> tuple[str, str] | None:
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001  (whatever Keras or h5py raise: one line, not a traceback)
        text = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        return "unreadable", f"does not load into this network ({text})"
    bad = non_finite_variables(list(model.variables) + list(getattr(model.optimizer, "variables", []) or []))
    if bad:
        return "non-finite", f"holds non-finite weights (NaN or infinity in {len(bad)} variables, e.g. {bad[0]})"
    return None


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
    file is complete does `state.json` (replaced atomically) point at it, and at the checkpoint of
    the epoch before as `previous`; older files are then removed. A kill at any moment leaves a
    state file that names a complete checkpoint, so a resumed run loses at most the epoch in
    progress; a last checkpoint damaged later falls back to the previous one (`load_checkpoint`).

    Never saved: an epoch whose loss is not finite, or weights that are not (then `message` says
    so and training stops). A failed write (a full disk) removes its temporary file, leaves the
    previous checkpoint and state as they were, and raises RunFileError.
    `previous`: the state a resumed run started from (the last finite checkpoint until one is saved).
    """

    def __init__(self, run_dir: str, is_chief: bool = True, extra_state=None, previous: dict | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.is_chief = is_chief
        self.extra_state = extra_state or (lambda: {})
        self.last = ({key: previous.get(key) for key in ("epoch", "iterations", "weights", "seed_states")}
                     if previous else None)
        self.message = None

    @property
    def last_path(self) -> str | None:
        """The last finite checkpoint of this run (saved or resumed from), or None."""
        return os.path.join(self.run_dir, CHECKPOINT_DIR, self.last["weights"]) if self.last else None

    def _directory(self) -> str:
        if self.is_chief:
            return os.path.join(self.run_dir, CHECKPOINT_DIR)
        return tempfile.mkdtemp(prefix="cfdrnn-worker-checkpoint-")

    def on_train_begin(self, logs=None):
        directory = os.path.join(self.run_dir, CHECKPOINT_DIR)
        if self.is_chief and os.path.isdir(directory):  # temporaries of a process killed mid-write
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    _remove_quietly(os.path.join(directory, name))

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            return  # never overwrite the last good checkpoint with diverged weights
        optimizer_variables = list(getattr(self.model.optimizer, "variables", []) or [])
        bad = non_finite_variables(list(self.model.weights) + optimizer_variables)
        if bad:
            self.message = (f"training stopped: the weights became non-finite in epoch {epoch + 1} although its "
                            f"loss was finite ({len(bad)} variables, e.g. {bad[0]}); the epoch was not saved")
            print(self.message, flush=True)
            self.model.stop_training = True
            return
        directory = self._directory()
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        path = os.path.join(directory, name)
        state_path = os.path.join(directory, STATE_FILE)
        on_disk = self._state_on_disk(state_path)
        kept = f"; the previous checkpoint {os.path.join(directory, on_disk)} is intact" if on_disk else ""
        try:
            data = weights_bytes(self.model)  # includes the optimizer's variables (iterations, moments)
        except (ImportError, AttributeError, TypeError):  # another Keras: its own writer, same format
            data = None
        try:
            if data is None:
                temporary = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
                try:
                    os.makedirs(directory, exist_ok=True)
                    self.model.save_weights(temporary)
                    os.replace(temporary, path)
                except OSError as error:
                    _remove_quietly(temporary)
                    raise RunFileError(f"{path}: cannot write the checkpoint: {describe_os_error(error)}") from None
            else:
                write_bytes_atomically(path, data, "checkpoint")
        except RunFileError as error:
            raise RunFileError(f"{error}{kept}") from None
        entry = {
            "epoch": epoch + 1,
            "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "weights": name,
            "seed_states": [np.asarray(v.numpy()).tolist() for v in seed_state_variables(self.model)],
        }
        previous = self.last if self.last and self.last["weights"] != name else None
        state = {**entry, **self.extra_state(), "previous": previous}
        try:
            write_text_atomically(state_path, json.dumps(state, indent=2, sort_keys=True), "checkpoint state")
        except RunFileError as error:
            if name != on_disk:
                _remove_quietly(path)  # state.json still names the older checkpoint
            raise RunFileError(f"{error}{kept}") from None
        self.last = entry
        if self.is_chief:
            keep = {name, previous["weights"] if previous else None}
            for other in os.listdir(directory):
                if CHECKPOINT_PATTERN.match(other) and other not in keep:
                    _remove_quietly(os.path.join(directory, other))
        else:
            shutil.rmtree(directory, ignore_errors=True)

    @staticmethod
    def _state_on_disk(state_path: str) -> str | None:
        """The checkpoint file the state on disk names (None if there is none or it is unreadable)."""
        try:
            with open(state_path) as handle:
                name = json.load(handle).get("weights")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) else None


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
    nme_labels = {"nme": "training (augmented, train mode)", "val_nme": "validation, last stage",
                  "val_nme_default": "validation, default inference"}
    for key, style in (("nme", "-"), ("val_nme", "--"), ("val_nme_default", ":")):
        values = [100.0 * row.get(key, np.nan) for row in rows]
        if np.isfinite(values).any():
            nme.plot(epochs, values, style, marker="o", markersize=3, label=nme_labels[key])
    nme.set_xlabel("epoch")
    nme.set_ylabel("inter-ocular NME (%)")
    nme.set_title("NME")
    nme.grid(alpha=0.3)
    nme.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    write_bytes_atomically(path, buffer.getvalue(), "plot")


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


DEFAULT_NAN_ADVICE = ("lower the learning rate (--learning-rate), check the data, or resume from the last "
                      "checkpoint (--resume; it holds the last epoch that ended with finite weights)")


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops at the first non-finite loss and says so in words the user can act on.

    `advice()`, if given, returns what to do (the training command names the last finite
    checkpoint and the exact options to continue from it).
    """

    def __init__(self, advice=None):
        super().__init__()
        self.message = None
        self.advice = advice
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            self.message = (
                f"training stopped: the loss became {float(np.asarray(loss))} at epoch {self._epoch + 1}, "
                f"batch {batch + 1}; {self.advice() if self.advice else DEFAULT_NAN_ADVICE}"
            )
            print(self.message, flush=True)
            self.model.stop_training = True
