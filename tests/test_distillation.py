"""Distillation (training.distillation): the blended targets against hand-made ones, the teacher kept
out of the trainer's variables and untouched by training, and the refusals."""
import keras
import numpy as np
import pytest

from cfdrnn_keras.config import CFDRNNConfig
from cfdrnn_keras.model.network import build_cfdrnn
from cfdrnn_keras.model.network_average import average_networks
from cfdrnn_keras.training import CFDRNNTrainer, build_trainer, get_recipe
from cfdrnn_keras.training.distillation import teacher_heatmap_keys

TINY = CFDRNNConfig(input_size=64, width=0.0625)


def _batch(seed=0, count=2):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-0.5, 0.5, (count, 64, 64, 3)).astype(np.float32)
    maps = rng.uniform(0.0, 1.0, (count, 16, 16, 68)).astype(np.float32)
    y = {f"heatmaps_{j}": maps for j in range(1, 5)}
    y["landmarks"] = rng.uniform(0.3, 0.7, (count, 68, 2)).astype(np.float32)
    return image, y


def _network(seed):
    keras.utils.set_random_seed(seed)
    return build_cfdrnn(TINY)


def test_training_loss_is_the_plain_loss_of_hand_blended_targets_and_validation_is_unchanged():
    student, teacher = _network(1), _network(2)
    image, y = _batch()
    y_pred = student(image, training=False)
    distilled = CFDRNNTrainer(student, teacher=teacher, distill_weight=0.3)
    plain = CFDRNNTrainer(student)
    teacher_maps = np.asarray(teacher(image, training=False)["heatmaps_4"])
    blended = dict(y)
    for j in range(1, 5):
        blended[f"heatmaps_{j}"] = 0.7 * y[f"heatmaps_{j}"] + 0.3 * teacher_maps
    expected = float(plain.compute_loss(image, blended, y_pred, training=True))
    assert float(distilled.compute_loss(image, y, y_pred, training=True)) == pytest.approx(expected, rel=1e-5)
    ground_truth = float(plain.compute_loss(image, y, y_pred, training=False))
    assert float(distilled.compute_loss(image, y, y_pred, training=False)) == pytest.approx(ground_truth, rel=1e-6)
    assert abs(expected - ground_truth) > 1e-3 * abs(ground_truth)  # the teacher really moved the targets


def test_an_averaged_teacher_gives_the_mean_of_its_members_last_maps():
    first, second = _network(3), _network(4)
    teacher = average_networks([first, second])
    assert teacher_heatmap_keys(teacher) == ["heatmaps_4", "heatmaps_4_m2"]
    student = _network(5)
    image, y = _batch(1)
    y_pred = student(image, training=False)
    mean = 0.5 * (np.asarray(first(image, training=False)["heatmaps_4"])
                  + np.asarray(second(image, training=False)["heatmaps_4"]))
    blended = {key: (0.5 * value + 0.5 * mean if key.startswith("heatmaps") else value) for key, value in y.items()}
    expected = float(CFDRNNTrainer(student).compute_loss(image, blended, y_pred, training=True))
    got = float(CFDRNNTrainer(student, teacher=teacher).compute_loss(image, y, y_pred, training=True))
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_teacher_adds_no_variables_and_training_leaves_it_as_it_was():
    teacher = _network(6)
    before = [w.numpy().copy() for w in teacher.weights]
    keras.utils.set_random_seed(7)
    plain = build_trainer(TINY, get_recipe("practical"), steps_per_epoch=2)
    keras.utils.set_random_seed(7)
    distilled = build_trainer(TINY, get_recipe("practical"), steps_per_epoch=2, teacher=teacher, distill_weight=0.5)
    assert len(distilled.weights) == len(plain.weights)
    assert len(distilled.trainable_weights) == len(plain.trainable_weights)
    student_before = [w.numpy().copy() for w in distilled.network.trainable_weights]
    image, y = _batch(2, count=4)
    distilled.fit(image, y, batch_size=2, epochs=1, verbose=0)  # 2 steps: the warm-up starts at 0
    for value, weight in zip(before, teacher.weights):
        np.testing.assert_array_equal(value, weight.numpy())
    changed = [not np.array_equal(a, w.numpy()) for a, w in zip(student_before, distilled.network.trainable_weights)]
    assert sum(changed) > len(changed) // 2


def test_a_teacher_of_another_input_size_or_a_weight_out_of_range_is_refused():
    student = _network(8)
    keras.utils.set_random_seed(9)
    other = build_cfdrnn(CFDRNNConfig(input_size=128, width=0.0625))
    with pytest.raises(ValueError, match="same input size"):
        CFDRNNTrainer(student, teacher=other)
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            CFDRNNTrainer(student, teacher=_network(10), distill_weight=weight)
    plain = keras.Model(student.input, {"landmarks": student.output["landmarks"]})
    with pytest.raises(ValueError, match="not a CFDRNN"):
        CFDRNNTrainer(student, teacher=plain)
