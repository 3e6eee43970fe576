"""Paired comparison of two evaluation reports: hand-computed intervals, pairing by file, the CLI table."""
import json

import numpy as np
import pytest

from cfdrnn_keras import paired_comparison as paired
from cfdrnn_keras.evaluation import Evaluation, FaceResult


def report(errors: dict[str, float], model: str = "m") -> dict:
    """A report in tools/evaluate.py's shape with the given per-face NME (percent), built by the package's
    own Evaluation: each face's prediction is its ground truth moved so that its NME is exactly that."""
    gt = np.zeros((68, 2))
    gt[36], gt[45] = (0.0, 0.0), (100.0, 0.0)  # inter-ocular distance 100 px: NME % = shift in px
    results = [FaceResult(file=file, subset="afw", gt=gt, pred=gt + [error, 0.0]) for file, error in errors.items()]
    return Evaluation(model=model, results=results).to_json()


def test_two_values_interval_is_the_extremes_of_their_resampled_means():
    # Differences (0, 1): a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles of 5000 resampled means are 0 and 1.
    mean, low, high = paired.bootstrap_mean_interval([0.0, 1.0])
    assert (mean, low, high) == (0.5, 0.0, 1.0)


def test_interval_width_matches_normal_theory_on_many_faces():
    values = np.random.default_rng(7).normal(0.1, 1.0, size=400)
    mean, low, high = paired.bootstrap_mean_interval(values)
    expected_half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert mean == pytest.approx(values.mean())
    assert (high - low) / 2 == pytest.approx(expected_half_width, rel=0.1)
    assert low < mean < high


def test_a_constant_gain_on_every_face_has_no_width_and_excludes_zero():
    a = report({"f1.png": 3.0, "f2.png": 4.0, "f3.png": 5.5})
    b = report({"f1.png": 2.75, "f2.png": 3.75, "f3.png": 5.25})
    row = paired.paired_difference(a, b)
    assert row.faces == 3 and row.only_a == row.only_b == 0
    assert row.mean_a == pytest.approx(12.5 / 3) and row.mean_b == pytest.approx(11.75 / 3)
    assert row.difference == pytest.approx(-0.25)
    assert row.low == pytest.approx(-0.25) and row.high == pytest.approx(-0.25)
    assert row.better_share == 1.0 and row.excludes_zero


def test_faces_pair_by_file_not_by_position_and_unpaired_ones_are_counted():
    a = report({"f1.png": 3.0, "f2.png": 4.0, "f3.png": 9.0})
    b = report({"f4.png": 1.0, "f2.png": 4.0, "f1.png": 3.0})  # another order, one face each of its own
    row = paired.paired_difference(a, b)
    assert row.faces == 2 and row.only_a == 1 and row.only_b == 1
    assert row.difference == 0.0 and row.low == row.high == 0.0
    assert row.better_share == 0.0 and not row.excludes_zero


def test_a_relative_and_an_absolute_name_of_one_file_pair_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = report({"faces/f1.png": 3.0, "faces/../faces/f2.png": 5.0})  # as evaluate writes a relative --data
    b = report({str(tmp_path / "faces" / "f1.png"): 2.0, str(tmp_path / "faces" / "f2.png"): 4.0})
    row = paired.paired_difference(a, b)
    assert row.faces == 2 and row.only_a == row.only_b == 0 and row.difference == pytest.approx(-1.0)


def test_reports_without_a_common_face_or_with_a_face_twice_are_refused():
    with pytest.raises(paired.ComparisonError, match="no face in common"):
        paired.paired_difference(report({"a.png": 1.0}), report({"b.png": 1.0}))
    twice = report({"a.png": 1.0})
    twice["per_image"] *= 2
    with pytest.raises(paired.ComparisonError, match="scored twice"):
        paired.paired_difference(twice, report({"a.png": 1.0}))
    with pytest.raises(paired.ComparisonError, match="confidence"):
        paired.bootstrap_mean_interval([1.0, 2.0], confidence=95)


def test_cli_compare_prints_the_paired_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from cfdrnn_keras.cli.evaluate import main

    base, better = tmp_path / "base.json", tmp_path / "better.json"
    base.write_text(json.dumps(report({"f1.png": 3.0, "f2.png": 4.0}, model="base")))
    better.write_text(json.dumps(report({"f1.png": 2.5, "f2.png": 3.5}, model="better")))
    assert main(["--compare", str(base), str(better), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "### Paired against base: base" in printed
    assert "| better: better | 2 | 3.500 | 3.000 | -0.500 | -0.500 … -0.500 | 100 % | 0 |" in printed

    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(report({"g.png": 3.0}, model="other faces")))
    assert main(["--compare", str(base), str(elsewhere), "--plots", str(tmp_path / "plots")]) == 2
    assert capsys.readouterr().err.strip() == "error: the two reports have no face in common"
