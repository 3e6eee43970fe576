"""Training the CFDRNN with `model.fit`: the trainer model, the recipes, schedules and optimizers.

The network's losses need two of its outputs at once (a delta head's target comes from the heat-map
head of the same level, DESIGN.md §1–2), which a per-output Keras loss cannot see. `CFDRNNTrainer`
wraps the plain functional network and overrides `compute_loss`, so `fit`, `evaluate`, callbacks and
`tf.distribute` work unchanged, and the artefact saved for inference stays the plain network.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import keras
from keras import ops

from ..config import CFDRNNConfig
from ..machine import cpu_has_bf16  # noqa: F401  (re-exported; picks the precision)
from . import distillation
from .dead_heatmaps import head_gamma
from .losses import HEADS, LossWeights, cfdrnn_losses, delta_loss_function, interocular_nme, total_loss
from .weight_averaging import WeightAverage
from ..model.network import build_cfdrnn


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------
class CFDRNNTrainer(keras.Model):
    """Training wrapper around a CFDRNN functional network (shares its variables).

    `compute_loss` sums the weighted per-head losses of `losses.cfdrnn_losses` (plus an optional
    coupled L2 weight decay on the convolution kernels, the way MatConvNet applies `weightDecay`)
    and tracks each head's loss and the inter-ocular NME as metrics, so the progress bar, the CSV
    and `val_*` show them. Never saved as `.keras`: checkpoints hold its weights and optimizer
    state (`save_weights`), and inference gets `self.network`.
    """

    def __init__(self, network: keras.Model, loss_weights: LossWeights | None = None, l2_decay: float = 0.0,
                 stride: int = 4, delta_loss: str = "l2", teacher: keras.Model | None = None,
                 distill_weight: float = 0.5, delta_weight_end: tuple | None = None, schedule_steps: int = 0,
                 weight_average: bool = False, **kwargs):
        super().__init__(**kwargs)
        delta_loss_function(delta_loss)  # an unknown name fails here, not in the first step
        self.delta_loss = delta_loss
        self.network = network
        self._teacher = None  # distillation (training.distillation): frozen, outside Keras's tracking
        if teacher is not None:
            distillation.check_teacher(teacher, network)
            self.distill_weight = distillation.check_weight(distill_weight)
            self._teacher = distillation.freeze(teacher)
        self.loss_weights_ = loss_weights or LossWeights()
        self.l2_decay = float(l2_decay)
        self.stride = int(stride)
        self.input_size = int(network.input_shape[1])
        self.head_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in HEADS}
        for name, tracker in self.head_trackers.items():
            setattr(self, f"_{name}_tracker", tracker)  # attribute assignment makes Keras track it
        self.nme_tracker = keras.metrics.Mean(name="nme")
        # The offset heads' weight over training (None: constant): from `loss_weights.deltas` at step 0
        # to `delta_weight_end` at `schedule_steps`, by half a cosine of the optimizer's step count, so a
        # resumed run continues the schedule with no state of its own.
        self.delta_weight_end = None
        if delta_weight_end is not None:
            end = tuple(float(v) for v in delta_weight_end)
            if len(end) != 4 or any(v < 0 for v in end):
                raise ValueError(f"the final offset loss weights must be 4 non-negative numbers, got {end}")
            if schedule_steps < 1:
                raise ValueError("a scheduled offset loss weight needs the run's number of steps (schedule_steps)")
            self.delta_weight_end, self.schedule_steps = end, int(schedule_steps)
            self.delta_weight_tracker = keras.metrics.Mean(name="delta_weight")
        self.l2_tracker = keras.metrics.Mean(name="l2_loss") if self.l2_decay > 0 else None
        self._decayed_kernels = [w for w in network.trainable_weights if w.path.endswith("kernel")]
        # SWA's running mean of the network's weights (`weight_averaging`): part of every checkpoint
        self.weight_average = WeightAverage(network, name="weight_average") if weight_average else None

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._teacher is not None and training:  # validation compares with the ground truth only
            maps = distillation.teacher_heatmaps(self._teacher.model, x)
            y = distillation.distilled_targets(y, maps, self.distill_weight)
        terms = cfdrnn_losses(y, y_pred, self.stride, self.input_size, self.delta_loss)
        if self.delta_weight_end is None:
            loss = total_loss(terms, self.loss_weights_)
        else:
            loss = self._scheduled_total(terms)
        for name, tracker in self.head_trackers.items():
            tracker.update_state(terms[name])
        self.nme_tracker.update_state(interocular_nme(y["landmarks"], y_pred["landmarks"]))
        if self.l2_tracker is not None:
            l2 = 0.5 * self.l2_decay * ops.sum(ops.stack([ops.sum(ops.square(w)) for w in self._decayed_kernels]))
            self.l2_tracker.update_state(l2)
            loss = loss + l2
        for extra in self.losses:  # none in the CFDRNN graph, kept for subclasses
            loss = loss + ops.sum(ops.cast(extra, "float32"))
        # Gradients are summed over replicas: each replica's loss carries 1 / replicas.
        return keras.src.losses.loss.scale_loss_for_distribution(loss)

    def delta_weights_now(self):
        """(4,) the offset heads' weights at the optimizer's current step (the scheduled case)."""
        progress = ops.minimum(ops.cast(self.optimizer.iterations, "float32") / float(self.schedule_steps), 1.0)
        ramp = 0.5 * (1.0 - ops.cos(math.pi * progress))
        start = ops.convert_to_tensor(self.loss_weights_.deltas, "float32")
        end = ops.convert_to_tensor(self.delta_weight_end, "float32")
        return start + (end - start) * ramp

    def _scheduled_total(self, terms):
        weights = self.delta_weights_now()
        self.delta_weight_tracker.update_state(ops.mean(weights))
        heatmaps = total_loss(terms, LossWeights(self.loss_weights_.heatmaps, (0.0,) * 4))
        used = [j for j in range(4) if self.loss_weights_.deltas[j] or self.delta_weight_end[j]]
        return heatmaps + sum(weights[j] * terms[f"delta_{j + 1}"] for j in used)

    def train_step(self, data):
        return self._vector_logs_for_multi_worker(super().train_step(data))

    def test_step(self, data):
        return self._vector_logs_for_multi_worker(super().test_step(data))

    def _vector_logs_for_multi_worker(self, logs):
        """Shape (1,) logs under MultiWorkerMirroredStrategy, scalars elsewhere.

        Keras 3 reduces each replica's logs across workers with `strategy.reduce("MEAN", v, axis=0)`,
        which fails for the scalar metric values ("Invalid reduction dimension 0 for input with 0
        dimensions", tensorflow/tensorflow#72388); one-element vectors reduce to the same scalar.
        """
        if not _multi_worker(self.distribute_strategy):
            return logs
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras's pre-fit symbolic build when everything is built already (`build_for_training`).

        Under a strategy, Keras 3.15 otherwise pulls one batch and `strategy.reduce`s it, which
        MultiWorkerMirroredStrategy cannot do for dict targets ("unsupported type PerReplica"),
        and it would also consume a batch of the epoch for nothing.
        """
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def build_for_training(self) -> None:
        """Create the trainer's and the optimizer's variables, so `load_weights` can fill them."""
        size = self.input_size
        self.build((None, size, size, 3))
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)


def _multi_worker(strategy) -> bool:
    if strategy is None or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


# ----------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """Everything about optimisation that is not the network.

    schedule "steps": `learning_rate` until epoch `boundaries[0]`, then `values[0]`, ... (epochs
    1-based as in the paper: boundaries (30, 35) mean epochs 1–30, 31–35, 36+).
    schedule "warmup_cosine": linear warm-up from 0 over `warmup_epochs`, then cosine decay to
    `final_fraction` × `learning_rate` at the last epoch.
    weight_decay_mode "l2": coupled, gradient += wd·w before momentum (MatConvNet's `weightDecay`),
    on convolution kernels; "decoupled": AdamW-style w -= lr·wd·w, batch-norm γ/β excluded.
    heatmap_loss_weight / delta_loss_weight: default weights of the two kinds of head (the CLI can
    override them per level).
    swa_epochs: the last epochs whose weights are averaged (`training.weight_averaging`); they run at
    the constant `swa_learning_rate` (None: `SWA_DEFAULT_FRACTION` × `learning_rate`), which the
    cosine of the epochs before them anneals to (other schedules jump to it).
    """

    name: str
    optimizer: str  # "sgd" | "adamw"
    learning_rate: float
    batch_size: int
    epochs: int
    weight_decay: float
    weight_decay_mode: str  # "l2" | "decoupled"
    momentum: float = 0.9
    schedule: str = "steps"  # "steps" | "warmup_cosine" | "constant"
    boundaries: tuple = ()
    values: tuple = ()
    warmup_epochs: float = 0.0
    final_fraction: float = 0.0
    clipnorm: float | None = None
    heatmap_loss_weight: float = 1.0
    delta_loss_weight: float = 1.0
    swa_epochs: int = 0
    swa_learning_rate: float | None = None

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES = {
    # DESIGN.md §2: SGD momentum 0.9, weight decay 5e-4, batch 2, 1e-5 → 5e-6 (epoch 31) → 1e-6 (36), 1000 epochs.
    "paper": Recipe(
        name="paper", optimizer="sgd", learning_rate=1e-5, batch_size=2, epochs=1000, weight_decay=5e-4,
        weight_decay_mode="l2", momentum=0.9, schedule="steps", boundaries=(30, 35), values=(5e-6, 1e-6),
    ),
    # Converges in tens of epochs on a CPU (evidence in docs/TRAINING.md). The offsets' loss is
    # weighted 0.05: far from convergence it is 30–200× the heat-map loss and would otherwise steer
    # the shared layers alone, so the heat-maps (and with them the coarse points) learn late; with
    # Adam the weight does not slow the landmark-level branches, whose only gradient it is.
    "practical": Recipe(
        name="practical", optimizer="adamw", learning_rate=1e-3, batch_size=8, epochs=60, weight_decay=1e-4,
        weight_decay_mode="decoupled", schedule="warmup_cosine", warmup_epochs=1.0, final_fraction=0.01,
        delta_loss_weight=0.05,
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}") from None


# The SWA epochs' learning rate when the recipe names none, as a fraction of the peak: the rate at
# which the fine-tuning of the packaged network was measured (2e-4 for AdamW's 1e-3; docs/TRAINING.md).
SWA_DEFAULT_FRACTION = 0.2


def swa_learning_rate(recipe: Recipe) -> float:
    """The constant learning rate of the averaged epochs (`Recipe.swa_epochs`)."""
    if recipe.swa_learning_rate is not None:
        return float(recipe.swa_learning_rate)
    return SWA_DEFAULT_FRACTION * float(recipe.learning_rate)


@keras.saving.register_keras_serializable(package="cfdrnn")
class ConstantAfter(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step)` before step `start`, `value` from it on (the averaged epochs of a run)."""

    def __init__(self, schedule, start: int, value: float):
        self.schedule = schedule
        self.start = int(start)
        self.value = float(value)

    def __call__(self, step):
        before = self.schedule(step) if callable(self.schedule) else self.schedule
        return ops.where(ops.cast(step, "float32") < float(self.start), ops.cast(before, "float32"), self.value)

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "start": self.start, "value": self.value}

    @classmethod
    def from_config(cls, config):
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["start"], config["value"])


def make_schedule(recipe: Recipe, steps_per_epoch: int):
    """The recipe's learning rate as a function of the optimizer's iteration count.

    Being a function of `optimizer.iterations` (saved in every checkpoint) is what makes a resumed
    run continue on exactly the same learning-rate curve.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if recipe.swa_epochs:
        return _schedule_with_averaged_epochs(recipe, steps_per_epoch)
    schedules = keras.optimizers.schedules
    if recipe.schedule == "constant":
        return recipe.learning_rate
    if recipe.schedule == "steps":
        if len(recipe.boundaries) != len(recipe.values):
            raise ValueError("a 'steps' schedule needs as many values as boundaries")
        if not recipe.boundaries:
            return recipe.learning_rate
        # PiecewiseConstantDecay switches AFTER step == boundary; the update of 0-based step
        # e·steps (the first of epoch e + 1) must already use the next value.
        boundaries = [int(epoch * steps_per_epoch) - 1 for epoch in recipe.boundaries]
        return schedules.PiecewiseConstantDecay(boundaries, [recipe.learning_rate, *recipe.values])
    if recipe.schedule == "warmup_cosine":
        total = max(1, int(round(recipe.epochs * steps_per_epoch)))
        warmup = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total - 1)
        return schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else recipe.learning_rate,
            decay_steps=max(1, total - warmup),
            alpha=recipe.final_fraction,
            warmup_target=recipe.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def _schedule_with_averaged_epochs(recipe: Recipe, steps_per_epoch: int):
    """The recipe's schedule over the epochs before the last `swa_epochs`, then `swa_learning_rate`."""
    averaged = int(recipe.swa_epochs)
    if not 0 < averaged <= recipe.epochs:
        raise ValueError(f"the averaged epochs must be between 1 and the run's {recipe.epochs}, got {averaged}")
    constant = swa_learning_rate(recipe)
    if not constant > 0:
        raise ValueError(f"the averaged epochs' learning rate must be positive, got {constant:g}")
    lead = recipe.epochs - averaged
    if lead == 0:
        return constant
    plain = recipe.replace(swa_epochs=0, epochs=lead)
    if recipe.schedule == "warmup_cosine":  # anneal to the constant rate instead of to final_fraction
        return make_schedule(plain.replace(final_fraction=constant / float(recipe.learning_rate)), steps_per_epoch)
    return ConstantAfter(make_schedule(plain, steps_per_epoch), lead * steps_per_epoch, constant)


def make_optimizer(recipe: Recipe, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    learning_rate = make_schedule(recipe, steps_per_epoch)
    common = {"clipnorm": recipe.clipnorm} if recipe.clipnorm else {}
    decoupled = recipe.weight_decay if recipe.weight_decay_mode == "decoupled" else None
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=recipe.momentum, weight_decay=decoupled, **common)
    elif recipe.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=decoupled or 0.0, **common)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; use sgd or adamw")
    if decoupled:
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return optimizer


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


# ----------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------
def resolve_precision(precision: str) -> str:
    """"auto" → "bf16" on a GPU or a CPU with native bf16, else "fp32"; others pass through."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    try:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "bf16"
    except ImportError:
        pass
    return "bf16" if cpu_has_bf16() else "fp32"


def set_precision(precision: str) -> None:
    """Global Keras dtype policy for models built from now on."""
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")


# ----------------------------------------------------------------------------------------------
# Assembling and exporting
# ----------------------------------------------------------------------------------------------
def scale_output_heads(network: keras.Model, config: CFDRNNConfig) -> None:
    """Start the output heads at the scale of their targets (a fresh network only).

    Every convolution of the paper's network is followed by batch normalisation, the outputs too,
    so at initialisation a heat-map is relu(x̂) with x̂ ~ N(0, 1): Σ over the H×W pixels of its
    square is about 0.5·H·W (2048 at 64×64) against πσ² ≈ 5.3 for a target, and every offset Δ
    has a standard deviation of 1 normalised unit (the whole crop). With γ = 1 the optimiser first
    spends hundreds of steps shrinking those γ (Adam moves γ about one learning rate per step).
    Setting the γ of the heads' last batch norm so that the first outputs have the targets' scale
    removes that phase: heat-maps γ = √(2π)·σ / H (Σ out² ≈ πσ²; √π·σ / H for linear heads, which
    keep all of x̂'s energy), offsets γ = 1 / H (one heat-map pixel). Measured effect in docs/TRAINING.md.
    """
    size = config.heatmap_size
    heatmap_gamma = head_gamma(size, config.heatmap_sigma, config.heatmap_activation)
    delta_gamma = 1.0 / size
    for layer in network.layers:
        if layer.name.startswith("resizer_r."):
            continue  # Hr has no loss: a feature of the landmark level, not an output
        if layer.name.endswith("conv1x1_H_bn"):
            gamma = heatmap_gamma
        elif layer.name.endswith("conv1x1_delta_bn"):
            gamma = delta_gamma
        else:
            continue
        layer.gamma.assign(ops.full(layer.gamma.shape, gamma, dtype=layer.gamma.dtype))


def build_trainer(config: CFDRNNConfig, recipe: Recipe, steps_per_epoch: int,
                  loss_weights: LossWeights | None = None, init_weights: str | None = None,
                  head_init: bool = True, bn_momentum: float | None = None,
                  delta_loss: str = "l2", teacher: keras.Model | None = None,
                  distill_weight: float = 0.5, delta_weight_end: tuple | None = None) -> CFDRNNTrainer:
    """Network + trainer + optimizer, compiled and built (call inside `strategy.scope()`).

    A fresh network gets `scale_output_heads` (unless `head_init` is False); one started from
    `init_weights` keeps them. `bn_momentum` replaces the batch norms' moving-average momentum
    (Keras: 0.99, i.e. ~300 steps before inference-mode statistics settle; lower it for runs of
    only a few hundred steps). `teacher`: a frozen CFDRNN whose last-stage maps take
    `distill_weight` of every heat-map target (`training.distillation`). `delta_weight_end`: the
    offset heads' weights at the end of `recipe.epochs`, reached from `loss_weights.deltas` by half a
    cosine (None: constant). A recipe with `swa_epochs` gives the trainer a `weight_average` (the
    running mean of the network's weights, saved with every checkpoint).
    """
    network = build_cfdrnn(config)
    if bn_momentum is not None:
        if not 0 <= bn_momentum < 1:
            raise ValueError(f"batch-norm momentum must be in [0, 1), got {bn_momentum}")
        for layer in network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    if init_weights:
        load_network_weights(network, init_weights)
    elif head_init:
        scale_output_heads(network, config)
    l2 = recipe.weight_decay if recipe.weight_decay_mode == "l2" else 0.0
    trainer = CFDRNNTrainer(network, loss_weights=loss_weights, l2_decay=l2, stride=config.stride,
                            delta_loss=delta_loss, teacher=teacher, distill_weight=distill_weight,
                            delta_weight_end=delta_weight_end, schedule_steps=recipe.epochs * steps_per_epoch,
                            weight_average=recipe.swa_epochs > 0)
    trainer.compile(optimizer=make_optimizer(recipe, steps_per_epoch))
    trainer.build_for_training()
    return trainer


def load_network_weights(network: keras.Model, path: str) -> None:
    """Fill `network` from a saved CFDRNN (`.keras`) or its weights (`.weights.h5`), by layer name.

    Fine-tuning may change precision or dropout; layers are matched by name, shapes must agree.
    """
    from .callbacks import non_finite_variables

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: initial weights not found")
    if path.endswith(".weights.h5"):
        try:
            network.load_weights(path)
        except Exception as error:  # noqa: BLE001  (truncated, corrupt, another network: one line)
            raise ValueError(f"{path}: does not load into this network ({_first_line(error)})") from None
        _refuse_non_finite(path, non_finite_variables(network.weights))
        return
    try:
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path}: cannot be loaded as a Keras network ({_first_line(error)})") from None
    _refuse_non_finite(path, non_finite_variables(source.weights))
    _refuse_other_heatmap_heads(path, source, network)
    for layer in network.layers:
        if not layer.weights:
            continue
        try:
            other = source.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"{path}: has no layer {layer.name!r}; not a CFDRNN of this configuration") from None
        values = other.get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(f"{path}: layer {layer.name!r} has weights of other shapes (another width or size?)")
        layer.set_weights(values)


def _refuse_other_heatmap_heads(path: str, source: keras.Model, network: keras.Model) -> None:
    """The heads' activation has no weights, so a name-by-name copy would silently turn a ReLU network
    into a linear one (or back), with channels whose β was learnt behind a ReLU."""
    from ..model.network import heatmap_activation

    theirs, ours = heatmap_activation(source), heatmap_activation(network)
    if theirs != ours:
        raise ValueError(f"{path}: has {theirs} heat-map heads, this network {ours} (--heatmap-head {theirs} continues it)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _refuse_non_finite(path: str, bad: list) -> None:
    if bad:
        raise ValueError(
            f"{path}: holds non-finite weights (NaN or infinity in {len(bad)} variables, e.g. {bad[0]}); "
            "start from a network saved before its run diverged (that run's best.keras or an earlier checkpoint)")


def plain_network_copy(network: keras.Model, config: CFDRNNConfig) -> keras.Model:
    """A float32 copy of the network with the same weights: the inference artefact.

    Saving a float32 graph keeps the `.keras` file free of the training precision, so loading it
    does not impose bf16 on a CPU that emulates it.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_cfdrnn(config, name=network.name)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights([ops.convert_to_numpy(w) for w in network.weights])
    return copy


def save_network_atomically(network: keras.Model, config: CFDRNNConfig, path: str) -> None:
    """`path` (.keras) gets the plain float32 network; a reader never sees a half-written file.

    The file is serialised in memory and written by `callbacks.write_bytes_atomically`: a full disk
    raises `callbacks.RunFileError` (one line), removes the temporary file and leaves `path` as it was.
    """
    from .callbacks import model_bytes, write_bytes_atomically

    write_bytes_atomically(path, model_bytes(plain_network_copy(network, config)), "network")


def steps_for(count: int, global_batch: int) -> int:
    """Batches in one pass over `count` faces: whole batches, at least 1.

    Training datasets repeat before batching, so a batch may straddle two passes and the count
    never needs to divide evenly.
    """
    return max(1, count // global_batch)


# ----------------------------------------------------------------------------------------------
# A training stream that a resumed run can continue
# ----------------------------------------------------------------------------------------------
def resumable_training_dataset(faces, config: CFDRNNConfig, *, batch_size: int, augment_config=None, seed: int = 0,
                               start_batch: int = 0, workers: int | None = None, problems: list | None = None):
    """Endless training batches whose ORDER is a pure function of (seed, position in the stream).

    `data_pipelines.dataset.make_dataset(repeat=True)` reshuffles with a stateful shuffle, so a
    restarted process would replay epoch 1's order. Here sample number p of the stream (counting
    from the start of training) is face `index_shuffle(p mod n, seed=(seed, p div n))`: a new
    permutation per pass over the faces, stateless, so a run resumed at batch k continues with
    exactly the faces the uninterrupted run would have seen. The cached loose crops and the
    per-batch augmentation are `data_pipelines`' own (`load_examples`, `batches_from_crops`);
    the augmentation draws are re-seeded with the start batch (random either way), so without
    augmentation a resumed run is bit-for-bit the uninterrupted one.
    """
    import tensorflow as tf

    from data_pipelines.dataset import (DEFAULT_LOOSE_FACTOR, DEFAULT_MARGIN, batches_from_crops, load_examples,
                                        loose_geometry)

    faces = list(faces)
    if not faces:
        raise ValueError("no training faces given")
    crop_size, crop_margin = loose_geometry(config.input_size, DEFAULT_MARGIN, DEFAULT_LOOSE_FACTOR)
    examples = load_examples(faces, crop_size, crop_margin, workers=workers, num_points=config.num_landmarks,
                             problems=problems)
    count = len(examples)
    if count == 0:
        raise ValueError(f"none of the {len(faces)} training faces could be read (see the warnings above)")
    images = tf.convert_to_tensor(examples.images)
    if not tf.distribute.has_strategy():
        # A resource, not a constant: auto-sharding rewrites serialise the dataset graph (2 GB limit).
        images = tf.Variable(images, trainable=False, name="training_crop_cache")
    points = tf.convert_to_tensor(examples.points)
    del examples

    def crop_at(position):
        pass_index = position // count
        index = tf.random.experimental.index_shuffle(
            position % count, seed=tf.stack([tf.constant(seed, tf.int64), pass_index]), max_index=count - 1)
        return tf.gather(images, index), tf.gather(points, index)

    positions = tf.data.Dataset.range(int(start_batch) * int(batch_size), 2**62)
    crops = positions.map(crop_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batches_from_crops(crops, config=config, training=True, batch_size=batch_size,
                              augment_config=augment_config, seed=seed + int(start_batch), drop_remainder=True)
