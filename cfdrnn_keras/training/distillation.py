"""Distillation: a frozen teacher's heat-maps blended into the student's heat-map targets (issue 14).

The teacher is any CFDRNN graph with the student's input size and heat-map grid: one network, or
several averaged (`model.network_average`, whose member k's stages are `heatmaps_j_mk`). It runs in
inference mode on the same augmented crops as the student, inside the training step, so every
augmentation the student sees the teacher sees too. Its target is the mean of its members' LAST
stage maps (the best each member has); every student stage j is trained towards

    (1 − w) · Gaussian(ground truth) + w · teacher maps

(Zhang et al. 2019, "Fast Human Pose Estimation", used w = 0.5). The offset heads keep their
ground-truth targets: the teacher's maps carry its knowledge of where a point is ambiguous (a
jaw line, an occluded contour) as shape and spread, the offsets carry the exact position.
Validation compares with the ground truth only.

The teacher is held outside Keras's tracking (`_Untracked`), so it adds no variables to the
trainer: checkpoints and the saved network are the student's alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import ops

from ..model.ensemble import member_suffixes, stage_count
from .losses import HEATMAP_HEADS


@dataclass(frozen=True)
class _Untracked:
    """A box Keras does not look into, so the teacher's weights stay out of the trainer's."""

    model: keras.Model


def teacher_heatmap_keys(teacher: keras.Model) -> list[str]:
    """The outputs the targets come from: each member's last-stage heat-maps."""
    stages = stage_count(teacher)
    if stages == 0:
        raise ValueError("the teacher is not a CFDRNN network (no heatmaps_j / delta_j outputs)")
    return [f"heatmaps_{stages}{suffix}" for suffix in member_suffixes(teacher)]


def check_teacher(teacher: keras.Model, student: keras.Model) -> None:
    """Refuse a teacher whose input or heat-map grid differs from the student's (a clear one-line error)."""
    keys = teacher_heatmap_keys(teacher)
    if tuple(teacher.input_shape[1:]) != tuple(student.input_shape[1:]):
        raise ValueError(f"the teacher takes {tuple(teacher.input_shape[1:])} crops, the student "
                         f"{tuple(student.input_shape[1:])}: distillation needs the same input size")
    teacher_grid = tuple(teacher.output[keys[0]].shape[1:])
    student_grid = tuple(student.output[HEATMAP_HEADS[-1]].shape[1:])
    if teacher_grid != student_grid:
        raise ValueError(f"the teacher's heat-maps are {teacher_grid}, the student's {student_grid}: "
                         "distillation needs the same grid and number of points")


def freeze(teacher: keras.Model) -> _Untracked:
    teacher.trainable = False
    return _Untracked(teacher)


def teacher_heatmaps(teacher: keras.Model, images):
    """(B, H, W, N) float32: the mean of the teacher members' last-stage maps, no gradient."""
    outputs = teacher(images, training=False)
    maps = [ops.cast(outputs[key], "float32") for key in teacher_heatmap_keys(teacher)]
    mean = maps[0] if len(maps) == 1 else ops.mean(ops.stack(maps, axis=0), axis=0)
    return ops.stop_gradient(mean)


def distilled_targets(targets: dict, teacher_maps, weight: float) -> dict:
    """`targets` with every heat-map target replaced by (1 − weight) · target + weight · teacher_maps."""
    blended = dict(targets)
    for key in HEATMAP_HEADS:
        if key in blended:
            blended[key] = (1.0 - weight) * ops.cast(blended[key], "float32") + weight * teacher_maps
    return blended


def check_weight(weight: float) -> float:
    weight = float(weight)
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"distillation weight must be in (0, 1] (the teacher's share of the heat-map target), "
                         f"got {weight:g}")
    return weight
