#!/usr/bin/env python3
"""Train a CFDRNN landmark network on folders of annotated faces (300-W layout or image + .pts pairs).

    python tools/train.py --data ../shared/data/300w --preset lite --out runs/lite

RUN_DIR receives: config.json (model config, recipe, every option), split.json (which faces train
and which validate), history.csv (every metric per epoch), curves.png, tensorboard/, checkpoints/
(the last complete epoch: weights + optimizer state), best.keras (lowest validation NME) and
final.keras — both plain CFDRNN networks that load with `keras.saving.load_model(safe_mode=True)`.
Stop it at any moment; `--out RUN_DIR --resume` continues from the last complete epoch with the
same optimizer state and learning-rate curve. docs/TRAINING.md has the recipes and the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on
# an AVX2-only CPU training is 3-4x slower without them (docs/TRAINING.md). Respect an explicit
# setting; this must happen before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install

EXIT_ERROR, EXIT_NAN = 2, 3


def default_data_dir() -> str:
    root = os.environ.get("CFDRNN_DATA")
    return str(Path(root) / "300w" if root else REPO_ROOT.parent / "shared" / "data" / "300w")


class TrainingError(Exception):
    """A problem with the options or the data, reported as one line without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", nargs="+", default=[default_data_dir()], metavar="DIR",
                      help="folders (or .pts files) with the training faces; 300-W folders at any depth")
    data.add_argument("--split", default="train",
                      help="which faces of --data train: a 300-W split (train = afw + lfpw/trainset + "
                           "helen/trainset), a 300-W part (e.g. afw), or 'all' (every face found; use it "
                           "for folders outside the 300-W layout)")
    data.add_argument("--val-data", nargs="+", default=None, metavar="DIR",
                      help="folders of validation faces (all faces in them); default: hold out --val-fraction")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="fraction of the training faces held out for validation (random, --seed); "
                           "0 = no validation (best.keras then follows the training NME)")
    data.add_argument("--limit", type=int, default=0,
                      help="use at most this many faces (a seeded random subset, before the split); 0 = all")
    data.add_argument("--augment", choices=("default", "none"), default="default",
                      help="training augmentation: rotation, scaling, shift, mirroring, colour (data_pipelines."
                           "augment.AugmentConfig defaults) or none")
    data.add_argument("--cache", choices=("memory", "none"), default="memory",
                      help="decode every photo once and keep the crops in memory, or re-read them each epoch")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="lite",
                       help="network configuration: paper (width 1, 256²), lite (width 0.25, 256²) or mobile "
                            "(width 0.25, 128², the packaged model)")
    model.add_argument("--width", type=float, default=None, help="override the preset's width multiplier")
    model.add_argument("--input-size", type=int, default=None,
                       help="override the crop side (a multiple of 64; the paper uses 256)")
    model.add_argument("--batchnorm", choices=("fused", "keras"), default=None,
                       help="batch-norm layer: TensorFlow's fused kernel or Keras's layer (same weights); "
                            "default: the preset's (fused). Which is faster depends on the CPU and the network "
                            "(docs/PERFORMANCE.md)")
    model.add_argument("--init-weights", default=None, metavar="PATH",
                       help="start from a saved network (.keras or .weights.h5 of the same configuration)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--recipe", choices=("practical", "paper"), default="practical",
                       help="paper: SGD momentum 0.9, L2 5e-4, batch 2, lr 1e-5 / 5e-6 (epoch 31) / 1e-6 (36), "
                            "1000 epochs; practical: AdamW, warm-up + cosine, batch 8 (docs/TRAINING.md)")
    optim.add_argument("--epochs", type=int, default=None, help="override the recipe's number of epochs")
    optim.add_argument("--batch-size", type=int, default=None,
                       help="override the recipe's batch size PER REPLICA (global = this × replicas)")
    optim.add_argument("--learning-rate", type=float, default=None, help="override the recipe's (peak) learning rate")
    optim.add_argument("--weight-decay", type=float, default=None, help="override the recipe's weight decay")
    optim.add_argument("--steps-per-epoch", type=int, default=0,
                       help="batches per epoch; 0 = one pass over the training faces")
    optim.add_argument("--heatmap-loss-weight", default=None,
                       help="weight of the heat-map L2 terms: one number, or four comma-separated (H1..H4); "
                            "default: the recipe's (1)")
    optim.add_argument("--delta-loss-weight", default=None,
                       help="weight of the offset L2 terms: one number, or four comma-separated (ΔL1..ΔL4); "
                            "default: the recipe's (paper 1, practical 0.05)")
    optim.add_argument("--bn-momentum", type=float, default=None,
                       help="moving-average momentum of every batch norm (default: Keras's 0.99); lower it "
                            "(e.g. 0.9) for runs of a few hundred steps, so inference-mode statistics settle")
    optim.add_argument("--no-head-init", action="store_true",
                       help="keep γ = 1 in the output heads' last batch norms instead of starting them at "
                            "the targets' scale (training.scale_output_heads)")
    optim.add_argument("--seed", type=int, default=0, help="seeds the split, weights, shuffling and augmentation")

    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None, metavar="RUN_DIR",
                     help="run folder (default: runs/<preset>-<recipe>-<date-time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last complete epoch (its saved options are "
                          "the defaults; options given now override them, e.g. a larger --epochs)")
    run.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                     help="bf16 = Keras mixed_bfloat16; auto = bf16 on a GPU or a CPU with AMX/AVX512-BF16, "
                          "else fp32 (a CPU without them emulates bf16 several times slower)")
    run.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
                     help="tf.distribute strategy: one device, MirroredStrategy over local GPUs, or "
                          "MultiWorkerMirroredStrategy across machines from TF_CONFIG")
    run.add_argument("--shard-policy", choices=("data", "file", "auto", "off"), default="data",
                     help="how each worker's input is sharded under a multi-replica strategy")
    run.add_argument("--verbose", choices=("auto", "0", "1", "2"), default="auto",
                     help="0 silent, 1 progress bar, 2 one line per epoch; auto = 1 on a terminal, else 2")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    return parser


# Options that describe the run itself: on --resume, the saved values are used unless given again.
RESUMABLE = ("data", "split", "val_data", "val_fraction", "limit", "augment", "cache", "preset", "width",
             "input_size", "batchnorm",
             "recipe", "epochs", "batch_size", "learning_rate", "weight_decay", "steps_per_epoch",
             "heatmap_loss_weight", "delta_loss_weight", "bn_momentum", "no_head_init", "seed", "precision", "shard_policy")


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if not args.out:
            parser.error("--resume needs --out RUN_DIR")
        saved = Path(args.out) / "config.json"
        if saved.is_file():
            options = json.loads(saved.read_text()).get("options", {})
            parser.set_defaults(**{key: options[key] for key in RESUMABLE if key in options})
            args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(Path("runs") / f"{args.preset}-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


# ----------------------------------------------------------------------------------------------
def select_faces(args):
    """(training faces, validation faces) as the options ask; a clear error when there are none."""
    from data_pipelines.discovery import find_faces, load_split

    try:
        report = load_split(args.split, args.data)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    faces = list(report.faces)
    if not faces:
        found = find_faces(args.data, check=False)
        hint = (f" ({len(found)} faces found in other parts; --split all takes every face)" if found else "")
        raise TrainingError(f"no faces of split {args.split!r} found under {' '.join(args.data)}{hint}")
    rng = random.Random(args.seed)
    if args.limit and args.limit < len(faces):
        faces = sorted(rng.sample(faces, args.limit), key=lambda face: face.pts_path)
    if args.val_data:
        validation = find_faces(args.val_data)
        if not validation:
            raise TrainingError(f"no validation faces found under {' '.join(args.val_data)}")
        if args.limit:
            validation = validation[: max(1, args.limit)]
        return faces, validation
    if not 0 <= args.val_fraction < 1:
        raise TrainingError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    count = int(round(len(faces) * args.val_fraction))
    if args.val_fraction > 0:
        count = max(1, count)
    if count >= len(faces):
        raise TrainingError(f"only {len(faces)} faces: too few to hold out {args.val_fraction:.0%} for validation")
    order = list(range(len(faces)))
    random.Random(args.seed + 1).shuffle(order)
    held = set(order[:count])
    return ([f for i, f in enumerate(faces) if i not in held], [f for i, f in enumerate(faces) if i in held])


def model_config(args):
    from cfdrnn_keras.config import get_preset

    config = get_preset(args.preset)
    changes = {}
    if args.width is not None:
        changes["width"] = args.width
    if args.input_size is not None:
        changes["input_size"] = args.input_size
    if args.batchnorm is not None:
        changes["fused_batchnorm"] = args.batchnorm == "fused"
    return config.replace(**changes) if changes else config


def recipe_for(args):
    from cfdrnn_keras.training import get_recipe

    recipe = get_recipe(args.recipe)
    changes = {}
    for option, field in (("epochs", "epochs"), ("batch_size", "batch_size"), ("learning_rate", "learning_rate"),
                          ("weight_decay", "weight_decay")):
        value = getattr(args, option)
        if value is not None:
            changes[field] = value
    if changes.get("epochs", 1) <= 0 or changes.get("batch_size", 1) <= 0:
        raise TrainingError("--epochs and --batch-size must be positive")
    return recipe.replace(**changes)


class RunResult:
    """What `run` leaves behind, for callers that script training (tests, notebooks)."""

    def __init__(self, trainer, history, run_dir, stopped_message=None):
        self.trainer = trainer
        self.network = trainer.network
        self.history = history
        self.run_dir = run_dir
        self.stopped_message = stopped_message


def run(args, extra_callbacks=()) -> RunResult:
    """Train as `args` (from `parse_args`) says; raises TrainingError for bad options or data.

    `extra_callbacks` run after the run's own (scripts and tests use them to watch or interrupt).
    """
    run_dir = Path(args.out)
    # Cheap checks first, before TensorFlow loads: a wrong path costs a second, not twenty.
    if args.init_weights and not Path(args.init_weights).is_file():
        raise TrainingError(f"{args.init_weights}: initial weights not found")
    for folder in args.data + (args.val_data or []):
        if not Path(folder).exists():
            raise TrainingError(f"{folder}: data folder not found")
    if args.resume and not (run_dir / "checkpoints" / "state.json").is_file():
        raise TrainingError(f"{run_dir}: no checkpoint to resume from (checkpoints/state.json is missing)")
    train_faces, val_faces = select_faces(args)

    from cfdrnn_keras.training import distribute

    try:
        strategy = distribute.make_strategy(args.strategy)  # before other TF ops (MultiWorkerMirroredStrategy)
    except distribute.DistributionError as error:
        raise TrainingError(str(error)) from None

    import keras

    from cfdrnn_keras.training import callbacks as cb
    from cfdrnn_keras.training.losses import LossWeights
    from cfdrnn_keras.training import (build_trainer, resolve_precision, save_network_atomically,
                                       set_precision, steps_for)

    try:
        config = model_config(args)
        recipe = recipe_for(args)
        loss_weights = LossWeights.parse(
            recipe.heatmap_loss_weight if args.heatmap_loss_weight is None else args.heatmap_loss_weight,
            recipe.delta_loss_weight if args.delta_loss_weight is None else args.delta_loss_weight)
        precision = resolve_precision(args.precision)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    state = cb.read_state(str(run_dir)) if args.resume else None
    initial_epoch = int(state["epoch"]) if state else 0
    if initial_epoch >= recipe.epochs:
        raise TrainingError(f"{run_dir}: already trained for {initial_epoch} of {recipe.epochs} epochs "
                            "(pass a larger --epochs to go on)")
    chief = distribute.is_chief(strategy)
    if not args.resume and chief and (run_dir / cb.CHECKPOINT_DIR / cb.STATE_FILE).is_file():
        raise TrainingError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    global_batch = distribute.global_batch_size(recipe.batch_size, strategy)
    steps = args.steps_per_epoch or steps_for(len(train_faces), global_batch)

    keras.utils.set_random_seed(args.seed)
    set_precision(precision)
    start_batch = int(state["iterations"]) if state else 0  # batches already trained on
    datasets = make_datasets(args, config, train_faces, val_faces, global_batch, start_batch)
    with strategy.scope():
        try:
            trainer = build_trainer(config, recipe, steps, loss_weights,
                                    init_weights=None if state else args.init_weights,
                                    head_init=not args.no_head_init, bn_momentum=args.bn_momentum)
        except (ValueError, FileNotFoundError) as error:
            raise TrainingError(str(error)) from None
        if state:
            trainer.load_weights(state["weights_path"])
            cb.restore_seed_states(trainer, state.get("seed_states"))

    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_description(run_dir, args, config, recipe, precision, strategy, global_batch, steps,
                              train_faces, val_faces, loss_weights)
    monitor = "val_nme" if val_faces else "nme"
    print(f"training {len(train_faces)} faces, validating {len(val_faces)}; {config.width:g}-width network, "
          f"{precision}, {strategy.num_replicas_in_sync} replica(s), global batch {global_batch}, "
          f"{steps} steps/epoch, epochs {initial_epoch + 1}..{recipe.epochs} → {run_dir}", flush=True)

    def save_best():
        # Network weights are mirrored (reading them is local, no collective): only the chief saves.
        if chief:
            save_network_atomically(trainer.network, config, str(run_dir / "best.keras"))

    best = cb.BestNetworkSaver(save_best, monitor=monitor,
                               best=(state or {}).get("best"), best_epoch=(state or {}).get("best_epoch"))
    nan_stop = cb.StopOnNaN()
    history_csv = cb.HistoryCSV(str(run_dir / "history.csv"), initial_epoch=initial_epoch, enabled=chief)
    callbacks = [
        nan_stop,
        cb.SyncBatchNormStatistics(),  # first: later callbacks read the statistics
        cb.LearningRateLogger(),
        best,
        cb.EpochCheckpoint(str(run_dir), is_chief=chief, extra_state=best.state),
        history_csv,
        cb.CurvePlotter(history_csv, str(run_dir / "curves.png"), enabled=chief),
    ]
    if chief and not args.no_tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                                     update_freq="epoch", profile_batch=0))
    callbacks.extend(extra_callbacks)
    verbose = (1 if sys.stdout.isatty() else 2) if args.verbose == "auto" else int(args.verbose)
    history = trainer.fit(datasets[0], validation_data=datasets[1], epochs=recipe.epochs,
                          initial_epoch=initial_epoch, steps_per_epoch=steps, callbacks=callbacks,
                          verbose=verbose, shuffle=False)  # the pipeline shuffles
    if nan_stop.message:
        return RunResult(trainer, history, run_dir, nan_stop.message)
    if chief:
        save_network_atomically(trainer.network, config, str(run_dir / "final.keras"))
    if best.best is None:  # no finite metric ever: best = final
        save_best()
    return RunResult(trainer, history, run_dir)


def tensorboard_available() -> bool:
    """TensorFlow writes summaries only with the `tensorboard` package installed; say so once."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("note: the tensorboard package is not installed; no TensorBoard events (pip install tensorboard)",
              file=sys.stderr)
        return False
    return True


def make_datasets(args, config, train_faces, val_faces, global_batch, start_batch):
    """(training, validation or None) tf.data pipelines, sharded for the strategy.

    With the cache in memory the training stream continues at batch `start_batch` in the order
    an uninterrupted run would have used (`training.resumable_training_dataset`).
    """
    from cfdrnn_keras.training import distribute
    from cfdrnn_keras.training import resumable_training_dataset
    from data_pipelines.augment import AugmentConfig
    from data_pipelines.dataset import make_dataset

    augment = AugmentConfig() if args.augment == "default" else AugmentConfig.none()
    problems = []
    try:
        if args.cache == "memory":
            train = resumable_training_dataset(train_faces, config, batch_size=global_batch, augment_config=augment,
                                               seed=args.seed, start_batch=start_batch, problems=problems)
        else:  # streamed from disk: a resumed run draws a fresh order
            train = make_dataset(train_faces, config, training=True, batch_size=global_batch,
                                 augment_config=augment, cache=False, repeat=True, seed=args.seed + start_batch,
                                 problems=problems)
        val = None
        if val_faces:
            val = make_dataset(val_faces, config, training=False, batch_size=global_batch,
                               cache=args.cache == "memory", problems=problems)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    train = distribute.shard_dataset(train, args.shard_policy)
    val = distribute.shard_dataset(val, args.shard_policy) if val is not None else None
    return train, val


def write_run_description(run_dir, args, config, recipe, precision, strategy, global_batch, steps, train, val,
                          loss_weights):
    import keras
    import tensorflow as tf

    from cfdrnn_keras.training.callbacks import write_text_atomically

    description = {
        "model": config.to_dict(),
        "recipe": recipe.to_dict(),
        "loss_weights": loss_weights.by_head(),
        "options": {key: value for key, value in vars(args).items()},
        "precision": precision,
        "strategy": args.strategy,
        "replicas": int(strategy.num_replicas_in_sync),
        "global_batch_size": global_batch,
        "steps_per_epoch": steps,
        "faces": {"train": len(train), "validation": len(val)},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "environment": {key: os.environ.get(key) for key in ("TF_ENABLE_ONEDNN_OPTS", "TF_CONFIG")},
    }
    write_text_atomically(str(run_dir / "config.json"), json.dumps(description, indent=2, sort_keys=True))
    split = {"train": [f.pts_path for f in train], "validation": [f.pts_path for f in val]}
    write_text_atomically(str(run_dir / "split.json"), json.dumps(split, indent=1))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except TrainingError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"train.py: interrupted; continue with: --out {args.out} --resume", file=sys.stderr)
        return 130
    if result.stopped_message:
        print(f"train.py: error: {result.stopped_message}", file=sys.stderr)
        return EXIT_NAN
    print(f"done: {result.run_dir / 'final.keras'}, best: {result.run_dir / 'best.keras'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
