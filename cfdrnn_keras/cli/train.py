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
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from data_pipelines.augment import AUGMENT_CHOICES

from ..errors import describe_os_error, read_json_object

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
    data.add_argument("--augment", choices=AUGMENT_CHOICES, default="default",
                      help="training augmentation: rotation, scaling, shift, mirroring, colour (default: "
                           "data_pipelines.augment.AugmentConfig's ±15° / ±10 %%; strong: HRNet's ±30° / ±25 %%; "
                           "occlusion: the default + one random rectangle over half the crops; degrade: the default + a "
                           "Gaussian blur and JPEG compression, each in 30 %% of the crops) or none")
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
    model.add_argument("--heatmap-head", choices=("relu", "linear"), default=None,
                       help="what ends each heat-map head: relu (the paper's; a channel can die on some faces) "
                            "or linear (as HRNet's heads; cannot die); default: the preset's (relu). "
                            "docs/TRAINING.md, \"Linear heat-map heads\"")
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
    optim.add_argument("--delta-loss-weight-end", default=None,
                       help="schedule the offset weight: from --delta-loss-weight at the first step to this at "
                            "the last, by half a cosine (one number or four); default: constant")
    optim.add_argument("--delta-loss", choices=("l2", "l1", "wing"), default="l2",
                       help="the offset (Δ) loss on the error in heat-map pixels: l2 (squared, the paper's), l1 "
                            "(the distance) or wing (Feng et al. 2018, w 2.5, ε 0.5 heat-map px); docs/TRAINING.md")
    optim.add_argument("--bn-momentum", type=float, default=None,
                       help="moving-average momentum of every batch norm (default: Keras's 0.99); lower it "
                            "(e.g. 0.9) for runs of a few hundred steps, so inference-mode statistics settle")
    optim.add_argument("--no-head-init", action="store_true",
                       help="keep γ = 1 in the output heads' last batch norms instead of starting them at "
                            "the targets' scale (training.scale_output_heads)")
    optim.add_argument("--swa-epochs", type=int, default=0, metavar="K",
                       help="stochastic weight averaging: run the last K epochs at --swa-learning-rate and write "
                            "the mean of their weights, batch-norm statistics measured again on the training "
                            "faces, as swa.keras (default 0: off)")
    optim.add_argument("--swa-learning-rate", type=float, default=None, metavar="LR",
                       help="the averaged epochs' constant learning rate, which the cosine before them anneals to "
                            "(default: 0.2 × the peak learning rate)")
    optim.add_argument("--select-best", choices=("default-inference", "last-stage"), default="default-inference",
                       help="which validation NME picks best.keras: the packaged models' (four stages averaged, "
                            "sub-pixel peaks, flip test; logged as val_nme_default) or the paper's last stage "
                            "(val_nme); runs from before this option resume with last-stage")
    optim.add_argument("--revive-dead-heatmaps", choices=("auto", "always", "never"), default="auto",
                       help="before every epoch, find heat-map channels that are zero on every probe face (16 "
                            "training crops) and revive them (training.dead_heatmaps): always; never (no check); "
                            "auto = revive in the first 40 %% of a run from fresh weights and report after, "
                            "only report them in one from --init-weights (reviving a trained network's "
                            "channels costs epochs: docs/TRAINING.md)")
    optim.add_argument("--distill-from", default=None, metavar="MODEL",
                       help="a teacher: a packaged model's name (accurate, fast) or a .keras CFDRNN of the same "
                            "input size; its last-stage heat-maps on the same augmented crops take "
                            "--distill-weight of every heat-map target (training.distillation, docs/TRAINING.md); "
                            "default: no teacher")
    optim.add_argument("--distill-weight", type=float, default=0.5,
                       help="the teacher's share of the heat-map targets, in (0, 1] (default: 0.5, as Zhang "
                            "et al. 2019); only with --distill-from")
    optim.add_argument("--seed", type=int, default=0, help="seeds the split, weights, shuffling and augmentation")
    optim.add_argument("--split-seed", type=int, default=None,
                       help="seeds only which faces --limit and --val-fraction take (default: --seed): another "
                            "--seed with the same --split-seed trains a different network on the same split, "
                            "e.g. an independent ensemble member")

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
             "input_size", "batchnorm", "heatmap_head", "init_weights",
             "recipe", "epochs", "batch_size", "learning_rate", "weight_decay", "steps_per_epoch",
             "heatmap_loss_weight", "delta_loss_weight", "delta_loss", "bn_momentum", "no_head_init",
             "revive_dead_heatmaps", "select_best", "distill_from", "distill_weight", "delta_loss_weight_end",
             "swa_epochs", "swa_learning_rate", "seed", "split_seed", "precision", "shard_policy")

# What --resume refuses to change, and what it lets through (docs/TRAINING.md, "What --resume refuses").
# Every option is in exactly one of the three groups (tests/test_train_run_folder.py checks it).
RESUME_FIXED = {
    # the faces and the order they come in: the split, the validation set and the training stream
    "data": "--data", "split": "--split", "val_data": "--val-data", "val_fraction": "--val-fraction",
    "limit": "--limit", "seed": "--seed", "split_seed": "--split-seed", "augment": "--augment", "shard_policy": "--shard-policy",
    # the network (compared as the resolved model configuration, see MODEL_OPTIONS)
    "preset": "--preset", "width": "--width", "input_size": "--input-size", "batchnorm": "--batchnorm",
    "heatmap_head": "--heatmap-head", "bn_momentum": "--bn-momentum", "no_head_init": "--no-head-init", "init_weights": "--init-weights",
    # the objective and the optimiser (resolved: the recipe without its epochs and learning rate)
    "recipe": "--recipe", "batch_size": "--batch-size", "weight_decay": "--weight-decay",
    "heatmap_loss_weight": "--heatmap-loss-weight", "delta_loss_weight": "--delta-loss-weight",
    "delta_loss": "--delta-loss", "delta_loss_weight_end": "--delta-loss-weight-end", "distill_from": "--distill-from", "distill_weight": "--distill-weight",
    "steps_per_epoch": "--steps-per-epoch",
    # weight averaging: the trainer's variables and the schedule's end
    "swa_epochs": "--swa-epochs", "swa_learning_rate": "--swa-learning-rate",
    # which network best.keras holds: its record of the best value is on one yardstick
    "select_best": "--select-best",
    # numerics (compared resolved: auto may pick either)
    "precision": "--precision",
}
RESUME_FREE = {
    "epochs": "more (or fewer, but more than done) epochs; the cosine is recomputed for the new length",
    "learning_rate": "the remedy for a run that diverged; the schedule keeps its shape, scaled",
    "cache": "memory or disk; from disk the resumed order is a fresh draw",
    "revive_dead_heatmaps": "a repair, not a setting of the objective: a run resumed with `always` revives "
                            "its dead heat-map channels from that epoch",
    "strategy": "any, as long as the global batch (per-replica batch × replicas) stays the same",
    "verbose": "output only", "no_tensorboard": "output only",
}
RUN_CONTROL = ("out", "resume")
MODEL_OPTIONS = ("preset", "width", "input_size", "batchnorm", "heatmap_head")
MODEL_FIELD_NAMES = {"input_size": "input size", "width": "width multiplier", "fused_batchnorm": "batch-norm layer",
                     "heatmap_activation": "heat-map heads"}
# Compared in `check_resumed_run` as resolved values rather than as the options typed.
RESOLVED_LATER = ("batch_size", "weight_decay", "heatmap_loss_weight", "delta_loss_weight", "precision",
                  "steps_per_epoch")


def read_json_file(path: Path, what: str) -> dict:
    """A run's JSON file as a dict; TrainingError naming the file if it cannot be read or parsed."""
    return read_json_object(path, what, TrainingError)


def read_run_description(run_dir: Path) -> dict | None:
    """config.json of a run folder (checked enough to resume from), or None if there is none."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    description = read_json_file(path, "run description")
    if not isinstance(description.get("options"), dict):
        raise TrainingError(f"{path}: corrupt run description: no 'options' object (the settings of the run)")
    for key in ("model", "recipe", "loss_weights"):
        if key in description and not isinstance(description[key], dict):
            raise TrainingError(f"{path}: corrupt run description: {key!r} must be a JSON object")
    return description


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if not args.out:
            parser.error("--resume needs --out RUN_DIR")
        description = read_run_description(Path(args.out))
        if description is not None:
            options = description["options"]
            defaults = {key: options[key] for key in RESUMABLE if key in options}
            defaults.setdefault("select_best", "last-stage")  # what runs chose on before the option
            parser.set_defaults(**defaults)
            args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(Path("runs") / f"{args.preset}-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def _show(value) -> str:
    if value is None:
        return "none (the default)"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def _refuse(run_dir, setting: str, old, new) -> TrainingError:
    return TrainingError(f"{run_dir}: --resume cannot change {setting}: the run has {_show(old)}, this command "
                         f"{_show(new)}; give the run's value or start a new run (another --out)")


def _same_paths(old, new) -> bool:
    """Folders (or lists of them) that name the same places: equal, or equal once resolved."""
    if old == new or old is None or new is None:
        return old == new
    old_list, new_list = ([old] if isinstance(old, str) else list(old)), ([new] if isinstance(new, str) else list(new))
    return len(old_list) == len(new_list) and all(
        a == b or os.path.realpath(a) == os.path.realpath(b) for a, b in zip(old_list, new_list))


def check_resume_options(args, description: dict, run_dir) -> None:
    """Refuse (TrainingError, one line) a --resume whose options change what the run depends on.

    Options missing from the saved ones (a run written before the option existed) are not checked.
    Runs before TensorFlow loads; `check_resumed_run` compares the resolved values later.
    """
    saved = description.get("options", {})
    for option, flag in RESUME_FIXED.items():
        if option not in saved or option in MODEL_OPTIONS or option in RESOLVED_LATER:
            continue
        old, new = saved[option], getattr(args, option)
        same = _same_paths(old, new) if option in ("data", "val_data", "init_weights") else old == new
        if option == "init_weights" and new is None:
            same = True  # not given: the run continues from its checkpoint either way
        if not same:
            raise _refuse(run_dir, flag, old, new)
    if isinstance(description.get("model"), dict):
        try:
            config = model_config(args).to_dict()
        except (KeyError, ValueError, TypeError) as error:
            raise TrainingError(f"--preset: {error}") from None
        # every run written before the option had ReLU heads; a missing field is not "anything goes"
        saved_model = {"heatmap_activation": "relu", **description["model"]}
        for field, old in sorted(saved_model.items()):
            if field in config and config[field] != old:
                name = MODEL_FIELD_NAMES.get(field, field.replace("_", " "))
                if field == "fused_batchnorm":
                    old, new = ("fused" if old else "keras"), ("fused" if config[field] else "keras")
                else:
                    new = config[field]
                flags = "/".join(RESUME_FIXED[o] for o in MODEL_OPTIONS if getattr(args, o) != saved.get(o))
                raise _refuse(run_dir, f"the network's {name}" + (f" ({flags})" if flags else ""), old, new)


def check_resumed_run(args, description: dict, run_dir, *, recipe, loss_weights, precision, global_batch,
                      steps) -> None:
    """The resolved half of the --resume check (after TensorFlow loads, before any data is decoded)."""
    saved_recipe = description.get("recipe")
    if isinstance(saved_recipe, dict):
        for field, new in sorted(recipe.to_dict().items()):
            if field in ("epochs", "learning_rate") or field not in saved_recipe:
                continue
            old = saved_recipe[field]
            if isinstance(new, tuple):
                new = list(new)
            if old != new:
                flag = {"batch_size": "--batch-size", "weight_decay": "--weight-decay", "name": "--recipe"}.get(field)
                raise _refuse(run_dir, flag or f"the recipe's {field} (--recipe)", old, new)
    saved_weights = description.get("loss_weights")
    if isinstance(saved_weights, dict):
        for head, new in sorted(loss_weights.by_head().items()):
            old = saved_weights.get(head)
            if old is not None and abs(float(old) - float(new)) > 1e-12 * max(1.0, abs(float(old))):
                flag = "--heatmap-loss-weight" if head.startswith("heatmaps") else "--delta-loss-weight"
                raise _refuse(run_dir, f"the loss weight of {head} ({flag})", old, new)
    if "precision" in description and description["precision"] != precision:
        raise _refuse(run_dir, "the precision (--precision)", description["precision"], precision)
    if "global_batch_size" in description and description["global_batch_size"] != global_batch:
        raise _refuse(run_dir, "the global batch (--batch-size × replicas of --strategy)",
                      description["global_batch_size"], global_batch)
    if "steps_per_epoch" in description and description["steps_per_epoch"] != steps:
        raise _refuse(run_dir, "the steps per epoch (--steps-per-epoch, or the number of training faces)",
                      description["steps_per_epoch"], steps)


def check_split(run_dir, train_faces, val_faces) -> None:
    """A resumed run must train and validate on the faces of its split.json (if it has one)."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        return
    split = read_json_file(path, "split")
    for part, faces in (("train", train_faces), ("validation", val_faces)):
        saved = split.get(part)
        if not isinstance(saved, list) or not all(isinstance(item, str) for item in saved):
            raise TrainingError(f"{path}: corrupt split: {part!r} must be a list of .pts paths")
        now = [face.pts_path for face in faces]
        if saved == now or (len(saved) == len(now) and all(
                os.path.realpath(a) == os.path.realpath(b) for a, b in zip(saved, now))):
            continue
        known = {os.path.realpath(item) for item in saved}
        extra = [f for f in now if os.path.realpath(f) not in known]
        example = f", e.g. {extra[0]} is new" if extra else ""
        raise TrainingError(f"{path}: --resume cannot change the {part} faces: the run has {len(saved)}, the data "
                            f"now gives {len(now)}{example}; resume with the run's data or start a new run "
                            "(another --out)")


def chief_by_tf_config() -> bool:
    """Whether this process writes the run folder (distribute.is_chief without importing TensorFlow)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        return True  # make_strategy reports the bad TF_CONFIG
    if not isinstance(config, dict):
        return True
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    kind, index = str(task.get("type", "worker")), int(task.get("index", 0) or 0)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def check_out_folder(run_dir: Path) -> None:
    """Create the run folder, write and remove a probe file in it, and remove the folders that this
    created (the run creates them again when it writes); one line if any of that fails."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == run_dir:
            raise TrainingError(f"{run_dir}: --out is a file, not a run folder")
        raise TrainingError(f"{run_dir}: cannot create the run folder: {probe} is a file, not a folder")
    folder = run_dir / "checkpoints"
    created = []
    try:
        for missing in reversed([folder, *folder.parents]):
            if not missing.exists():
                missing.mkdir()
                created.append(missing)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-write-test-", dir=folder)
        os.close(handle)
        os.remove(temporary)
    except OSError as error:
        raise TrainingError(f"{run_dir}: cannot write the run folder: {describe_os_error(error)}") from None
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                pass


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
    split_seed = args.seed if args.split_seed is None else args.split_seed
    rng = random.Random(split_seed)
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
    random.Random(split_seed + 1).shuffle(order)
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
    if args.heatmap_head is not None:
        changes["heatmap_activation"] = args.heatmap_head
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
    check_averaging_options(args, changes.get("epochs", recipe.epochs))
    return recipe.replace(**changes, swa_epochs=args.swa_epochs, swa_learning_rate=args.swa_learning_rate)


def check_averaging_options(args, epochs: int | None) -> None:
    """--swa-epochs and --swa-learning-rate (TrainingError, one line); `epochs` None: not known yet."""
    if args.swa_epochs < 0 or (epochs is not None and args.swa_epochs > epochs):
        bound = f"the run's {epochs} epochs" if epochs is not None else "the run's epochs"
        raise TrainingError(f"--swa-epochs must be between 0 and {bound}, got {args.swa_epochs}")
    if args.swa_learning_rate is not None:
        if not args.swa_learning_rate > 0:
            raise TrainingError(f"--swa-learning-rate must be positive, got {args.swa_learning_rate:g}")
        if not args.swa_epochs:
            raise TrainingError("--swa-learning-rate needs --swa-epochs (the epochs it is for)")


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
    chief_here = chief_by_tf_config()
    # Cheap checks first, before TensorFlow loads: a wrong path costs a second, not twenty.
    description = None
    if args.resume:
        if not (run_dir / "checkpoints" / "state.json").is_file():
            raise TrainingError(f"{run_dir}: no checkpoint to resume from (checkpoints/state.json is missing)")
        description = read_run_description(run_dir)
        if description is None:
            raise TrainingError(f"{run_dir / 'config.json'}: missing; without it the run's settings are unknown "
                                "and --resume cannot check them")
        check_resume_options(args, description, run_dir)
    elif args.init_weights and not Path(args.init_weights).is_file():
        raise TrainingError(f"{args.init_weights}: initial weights not found")
    check_averaging_options(args, args.epochs)  # the recipe's own number of epochs is checked with the recipe
    teacher_path = teacher_file(args)
    delta_weight_end = final_delta_weights(args)
    for folder in args.data + (args.val_data or []):
        if not Path(folder).exists():
            raise TrainingError(f"{folder}: data folder not found")
    if chief_here:
        if run_dir.exists() and not run_dir.is_dir():
            raise TrainingError(f"{run_dir}: --out is a file, not a run folder")
        if not args.resume and (run_dir / "checkpoints" / "state.json").is_file():
            raise TrainingError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    if chief_here:
        check_out_folder(run_dir)
    train_faces, val_faces = select_faces(args)
    if args.resume:
        check_split(run_dir, train_faces, val_faces)

    from cfdrnn_keras.training import distribute

    try:
        strategy = distribute.make_strategy(args.strategy)  # before other TF ops (MultiWorkerMirroredStrategy)
    except distribute.DistributionError as error:
        raise TrainingError(str(error)) from None

    import keras

    from cfdrnn_keras.training import callbacks as cb
    from cfdrnn_keras.training.weight_averaging import AverageWeightsEachEpoch
    from cfdrnn_keras.training.losses import LossWeights
    from cfdrnn_keras.training import build_trainer, resolve_precision, save_network_atomically, set_precision, steps_for

    try:
        config = model_config(args)
        recipe = recipe_for(args)
        loss_weights = LossWeights.parse(
            recipe.heatmap_loss_weight if args.heatmap_loss_weight is None else args.heatmap_loss_weight,
            recipe.delta_loss_weight if args.delta_loss_weight is None else args.delta_loss_weight)
        precision = resolve_precision(args.precision)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    try:
        state = cb.read_state(str(run_dir)) if args.resume else None
        if state:
            cb.choose_checkpoint(str(run_dir), state)  # a damaged or diverged checkpoint: before the build
    except cb.RunFileError as error:
        raise TrainingError(str(error)) from None
    chief = distribute.is_chief(strategy)
    global_batch = distribute.global_batch_size(recipe.batch_size, strategy)
    steps = args.steps_per_epoch or steps_for(len(train_faces), global_batch)
    if description is not None:
        check_resumed_run(args, description, run_dir, recipe=recipe, loss_weights=loss_weights,
                          precision=precision, global_batch=global_batch, steps=steps)
    initial_epoch = int(state["epoch"]) if state else 0
    # a run killed after its last epoch but before swa.keras was written only writes it
    averaging_left = bool(recipe.swa_epochs) and chief and not (run_dir / SWA_FILE).is_file()
    if initial_epoch >= recipe.epochs and not averaging_left:
        raise TrainingError(f"{run_dir}: already trained for {initial_epoch} of {recipe.epochs} epochs "
                            "(pass a larger --epochs to go on)")

    keras.utils.set_random_seed(args.seed)
    set_precision(precision)
    with strategy.scope():
        try:
            teacher = load_teacher(teacher_path) if teacher_path else None
            trainer = build_trainer(config, recipe, steps, loss_weights,
                                    init_weights=None if state else args.init_weights,
                                    head_init=not args.no_head_init, bn_momentum=args.bn_momentum,
                                    delta_loss=args.delta_loss, teacher=teacher, distill_weight=args.distill_weight,
                                    delta_weight_end=delta_weight_end)
        except (ValueError, FileNotFoundError) as error:
            raise TrainingError(str(error)) from None
        if state:
            try:
                state, note = cb.load_checkpoint(trainer, str(run_dir), state)
            except cb.RunFileError as error:
                raise TrainingError(str(error)) from None
            if note:
                print(f"train.py: warning: {note}", file=sys.stderr, flush=True)
            cb.restore_seed_states(trainer, state.get("seed_states"))
            initial_epoch = int(state["epoch"])
    start_batch = int(state["iterations"]) if state else 0  # batches already trained on
    datasets = make_datasets(args, config, train_faces, val_faces, global_batch, start_batch)

    try:
        if chief:
            write_run_description(run_dir, args, config, recipe, precision, strategy, global_batch, steps,
                                  train_faces, val_faces, loss_weights, previous=description, resumed_at=initial_epoch)
    except cb.RunFileError as error:
        raise TrainingError(str(error)) from None
    monitor = ("val_nme_default" if args.select_best == "default-inference" else "val_nme") if val_faces else "nme"
    print(f"training {len(train_faces)} faces, validating {len(val_faces)}; {config.width:g}-width network, "
          f"{precision}, {strategy.num_replicas_in_sync} replica(s), global batch {global_batch}, "
          f"{steps} steps/epoch, epochs {initial_epoch + 1}..{recipe.epochs} → {run_dir}", flush=True)

    def save_best():
        # Network weights are mirrored (reading them is local, no collective): only the chief saves.
        if chief:
            save_network_atomically(trainer.network, config, str(run_dir / "best.keras"))

    # a best value on another yardstick (a run from before --select-best, resumed with it) is no record
    previous_best = state if state and state.get("monitor", "val_nme") == monitor else {}
    best = cb.BestNetworkSaver(save_best, monitor=monitor,
                               best=previous_best.get("best"), best_epoch=previous_best.get("best_epoch"))
    checkpoint = cb.EpochCheckpoint(str(run_dir), is_chief=chief, extra_state=best.state, previous=state)

    nan_stop = cb.StopOnNaN(advice=lambda: divergence_advice(run_dir, recipe.learning_rate, checkpoint))
    history_csv = cb.HistoryCSV(str(run_dir / "history.csv"), initial_epoch=initial_epoch, enabled=chief)
    default_nme = default_inference_callback(trainer.network, config, val_faces) if val_faces else None
    callbacks = [
        nan_stop,
        cb.SyncBatchNormStatistics(),  # first: later callbacks read the statistics
        *([default_nme] if default_nme is not None else []),  # before `best`
        cb.LearningRateLogger(),
        best,
        *([AverageWeightsEachEpoch(trainer.weight_average, recipe.epochs - recipe.swa_epochs)]
          if trainer.weight_average is not None else []),  # before the checkpoint, which then holds the mean
        checkpoint,
        history_csv,
        cb.CurvePlotter(history_csv, str(run_dir / "curves.png"), enabled=chief),
    ]
    if chief and not args.no_tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                                     update_freq="epoch", profile_batch=0))
    if args.revive_dead_heatmaps != "never" and config.heatmap_activation == "relu":  # linear heads cannot die
        # first of all: the epoch then trains (and its checkpoint holds) the revived channels
        started_from_weights = bool((description or {}).get("options", {}).get("init_weights") or args.init_weights)
        revive = args.revive_dead_heatmaps == "always" or not started_from_weights
        until = None if args.revive_dead_heatmaps == "always" else auto_revival_epochs(recipe.epochs)
        callbacks.insert(0, revival_callback(trainer.network, config, train_faces, revive=revive, revive_epochs=until))
    callbacks.extend(extra_callbacks)
    verbose = (1 if sys.stdout.isatty() else 2) if args.verbose == "auto" else int(args.verbose)
    try:
        history = None
        if initial_epoch < recipe.epochs:
            history = trainer.fit(datasets[0], validation_data=datasets[1], epochs=recipe.epochs,
                                  initial_epoch=initial_epoch, steps_per_epoch=steps, callbacks=callbacks,
                                  verbose=verbose, shuffle=False)  # the pipeline shuffles
            if nan_stop.message or checkpoint.message:
                message = nan_stop.message or (
                    f"{checkpoint.message}; {divergence_advice(run_dir, recipe.learning_rate, checkpoint)}")
                return RunResult(trainer, history, run_dir, message)
            if chief:
                save_network_atomically(trainer.network, config, str(run_dir / "final.keras"))
            if best.best is None:  # no finite metric ever: best = final
                save_best()
        if trainer.weight_average is not None and chief:
            write_averaged_network(trainer, config, datasets[0].take(steps), default_nme, run_dir)
    except cb.RunFileError as error:
        remedy = "free some space" if "no space" in str(error) else "make it writable"
        raise TrainingError(f"{error}; {remedy} and continue with --out {run_dir} --resume") from None
    return RunResult(trainer, history, run_dir)


SWA_FILE = "swa.keras"


def write_averaged_network(trainer, config, batches, default_nme, run_dir) -> None:
    """`swa.keras`: the mean of the averaged epochs' weights, its batch-norm statistics measured again on
    `batches` (an epoch of the training stream), and its validation NME with the default inference on
    the crops of the run's `DefaultInferenceNME` callback `default_nme` (None: no validation faces)."""
    from cfdrnn_keras.training import plain_network_copy, save_network_atomically
    from cfdrnn_keras.training.validation import DefaultInferenceNME
    from cfdrnn_keras.training.weight_averaging import recompute_batchnorm_statistics

    average = trainer.weight_average
    if average.epochs < 1:
        print("train.py: no epoch was averaged (--swa-epochs): swa.keras not written", flush=True)
        return
    network = plain_network_copy(trainer.network, config)  # float32, outside any strategy
    network.set_weights(average.values())
    count = recompute_batchnorm_statistics(network, batches)
    save_network_atomically(network, config, str(run_dir / SWA_FILE))
    measured = ""
    if default_nme is not None:
        nme = DefaultInferenceNME(network, default_nme.images, default_nme.landmarks).measure()
        measured = f"; validation NME {100 * nme:.3f} % (default inference)"
    print(f"{run_dir / SWA_FILE}: the mean of the last {average.epochs} epochs' weights, batch-norm statistics "
          f"from {count} training batches{measured}", flush=True)


def teacher_file(args) -> str | None:
    """What `--distill-from` names, a packaged model (its networks, averaged where it has several) or
    a .keras path, with its files checked before TensorFlow loads; None without distillation."""
    from cfdrnn_keras.runtime.packaged import PACKAGED_MODELS, network_files

    if args.distill_from is None:
        if args.distill_weight != 0.5:
            raise TrainingError("--distill-weight needs --distill-from (a teacher)")
        return None
    if not 0.0 < args.distill_weight <= 1.0:
        raise TrainingError(f"--distill-weight must be in (0, 1] (the teacher's share of the heat-map targets), "
                            f"got {args.distill_weight:g}")
    name = args.distill_from.removesuffix(":keras")
    for path in network_files(args.distill_from):
        if not path.is_file():
            raise TrainingError(f"{path}: teacher not found (--distill-from takes accurate, fast or a .keras file)")
    return name if name in PACKAGED_MODELS else args.distill_from


def final_delta_weights(args) -> tuple | None:
    """`--delta-loss-weight-end` as four weights (one number is all four), checked before TensorFlow loads."""
    text = args.delta_loss_weight_end
    if text is None:
        return None
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 4
    if len(values) != 4 or any(not v >= 0 for v in values):
        raise TrainingError(f"--delta-loss-weight-end must be one non-negative number or four, comma-separated; "
                            f"got {text!r}")
    return tuple(values)


def load_teacher(source: str):
    """The teacher network (a packaged model's name or a .keras path), loaded in safe mode;
    TrainingError naming the file when it is not one."""
    from cfdrnn_keras.errors import one_line
    from cfdrnn_keras.model import loading

    try:
        return loading.load_network(source, compile=False)
    except Exception as error:  # noqa: BLE001  (truncated, corrupt, not Keras: one line)
        raise TrainingError(f"{source}: cannot be loaded as a teacher network ({one_line(error)[:200]})") from None


AUTO_REVIVAL_FRACTION = 0.4


def auto_revival_epochs(epochs: int) -> int:
    """How many epochs `--revive-dead-heatmaps auto` revives in (a run from fresh weights): the first
    40 % of the schedule, its high-learning-rate part. Measured (docs/TRAINING.md, the second `mobile`
    network): revivals at epochs 9 and 11 of 50 cost nothing, one at epoch 26 took the validation NME
    from 5.38 to 6.91 %."""
    return max(1, math.ceil(AUTO_REVIVAL_FRACTION * epochs))


def face_crops(faces, config, count: int | None = None):
    """(images, points) of the first `count` (None: all) readable faces, unaugmented and normalised as
    the pipeline feeds them: images (B, S, S, 3) in [-0.5, 0.5], points (B, N, 2) in crop units."""
    import numpy as np

    from data_pipelines.dataset import crop_face

    size = config.input_size
    crops = []
    for face in faces:
        if count is not None and len(crops) == count:
            break
        try:
            crops.append(crop_face(face, size))
        except ValueError:  # unreadable: the pipeline reports it; here it is just left out
            continue
    images = np.zeros((len(crops), size, size, 3), np.float32)
    points = np.zeros((len(crops), config.num_landmarks, 2), np.float32)
    for i, crop in enumerate(crops):
        images[i] = crop.image.astype(np.float32) / 255.0 - 0.5
        points[i] = crop.points / float(size)  # normalised as the pipeline's `landmarks` target
    return images, points


def default_inference_callback(network, config, val_faces):
    """`DefaultInferenceNME` on every readable validation face (`val_nme_default`, the packaged models'
    yardstick; docs/TRAINING.md, "Which epoch is best")."""
    from cfdrnn_keras.training.validation import DefaultInferenceNME

    images, points = face_crops(val_faces, config)
    return DefaultInferenceNME(network, images, points)


def revival_callback(network, config, train_faces, count: int = 16, revive: bool = True, revive_epochs=None):
    """`ReviveDeadHeatmaps` on the crops of the first `count` readable training faces (unaugmented,
    as the pipeline normalises them); the validation faces play no part. revive=False: report only;
    revive_epochs: revive only before that epoch (0-based), report after."""
    from cfdrnn_keras.training.dead_heatmaps import ReviveDeadHeatmaps

    images, points = face_crops(train_faces, config, count)
    return ReviveDeadHeatmaps(images, network, config.heatmap_size, config.heatmap_sigma, landmarks=points,
                              stride=config.stride, revive=revive, revive_epochs=revive_epochs,
                              log=lambda line: print(f"train.py: {line}", flush=True))


def divergence_advice(run_dir, learning_rate: float, checkpoint) -> str:
    """What to do after the loss or the weights became non-finite: continue from the last finite
    checkpoint (`checkpoint.last`, which is what --resume loads) with half the learning rate."""
    lower = f"{learning_rate / 2:.3g}"
    if checkpoint.last is None:
        return (f"no checkpoint was saved yet: start again with a lower --learning-rate (e.g. {lower}, now "
                f"{learning_rate:g}) or check the data")
    return (f"the last finite checkpoint is epoch {checkpoint.last['epoch']} ({checkpoint.last_path}); continue "
            f"from it with a lower learning rate: --out {run_dir} --resume --learning-rate {lower} "
            f"(now {learning_rate:g}), or check the data")


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

    augment = AugmentConfig.named(args.augment)
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
                          loss_weights, previous=None, resumed_at=0):
    """config.json (and split.json for a new run). A resumed run keeps the saved description's history:
    `resumes` lists, per resume, the epoch it continued from and the options that it changed."""
    import keras
    import tensorflow as tf

    from cfdrnn_keras.training.callbacks import write_text_atomically

    resumes = []
    if previous is not None:
        resumes = list(previous.get("resumes") or [])
        saved = previous.get("options", {})
        changed = {key: [saved[key], value] for key, value in sorted(vars(args).items())
                   if key in saved and key not in RUN_CONTROL and saved[key] != value}
        resumes.append({"epoch": int(resumed_at), "changed": changed})
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
    if resumes:
        description["resumes"] = resumes
    write_text_atomically(str(run_dir / "config.json"), json.dumps(description, indent=2, sort_keys=True),
                          "run description")
    if previous is None or not (run_dir / "split.json").is_file():  # a resumed run's split was checked equal
        split = {"train": [f.pts_path for f in train], "validation": [f.pts_path for f in val]}
        write_text_atomically(str(run_dir / "split.json"), json.dumps(split, indent=1), "split")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except TrainingError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_ERROR
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
    averaged = result.run_dir / SWA_FILE
    print(f"done: {result.run_dir / 'final.keras'}, best: {result.run_dir / 'best.keras'}"
          + (f", averaged: {averaged}" if averaged.is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
