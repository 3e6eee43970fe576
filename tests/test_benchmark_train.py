"""tools/benchmark_train.py: options, the table, and one real worker run on synthetic and real faces."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_train", REPO_ROOT / "tools" / "benchmark_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_tool()


def test_batch_sizes_parse_and_bad_values_are_rejected():
    assert bench._positive_integers("4,8, 16", "batch-size") == [4, 8, 16]
    for text in ("0", "8,x", ""):
        with pytest.raises(ValueError, match="--batch-size"):
            bench._positive_integers(text, "batch-size")


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "8,0"], "--batch-size"),
    (["--preset", "huge"], "--preset"),
    (["--data", "/no/such/folder"], "no such folder: /no/such/folder"),
])
def test_bad_options_give_one_line_and_exit_status_2(argv, message, capsys, tmp_path):
    assert bench.main([*argv, "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "b.json").exists()


def test_table_has_one_line_per_row_with_its_input_and_ratio():
    rows = [
        {"preset": "mobile", "precision": "fp32", "batchnorm": "keras", "batch_size": 8, "onednn_enabled": True,
         "input": "synthetic", "train_ms_per_face": 80.0, "faces_per_second": 12.5, "forward_ms_per_face": 20.0,
         "train_to_forward": 4.0},
        {"preset": "mobile", "precision": "fp32", "batchnorm": "keras", "batch_size": 8, "onednn": "on",
         "input": "real", "error": "ValueError: 3 training faces"},
    ]
    lines = bench.markdown_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| mobile | fp32 | keras | on | 8 | synthetic | 80 | 12.50 | 20 | 4.0 |"
    assert lines[3].startswith("| mobile | fp32 | keras | on | 8 | real | failed: ValueError: 3 training faces")


def test_worker_times_training_on_synthetic_and_real_faces(shared_data):
    """A tiny network, in this process: both inputs give a steady-state time from the batches asked for
    (the paper recipe's SGD traces in a third of AdamW's time; the recipe does not change what is timed)."""
    common = {"preset": "mobile", "precision": "fp32", "batchnorm": "keras", "onednn": "default", "batch_size": 2,
              "batches": 2, "warmup_batches": 1, "forward_runs": 1, "recipe": "paper", "width": 1 / 16,
              "input_size": 64}
    synthetic = bench.run_worker({**common, "input": "synthetic"})
    real = bench.run_worker({**common, "input": "real", "data": [str(shared_data / "300w")], "faces": 6})
    for row in (synthetic, real):
        assert row["width"] == 1 / 16 and row["input_size"] == 64
        assert len(row["step_ms"]) == 1 + 1 + 2 and row["measured_batches"] == 2
        assert row["train_ms_per_face"] > 0 and row["forward_ms_per_face"] > 0
        assert row["faces_per_second"] == pytest.approx(1000.0 / row["train_ms_per_face"])
        assert row["final_loss"] is not None
        json.dumps(row)  # the report is JSON
    assert synthetic["input"] == "synthetic" and real["input"] == "real"


def test_worker_refuses_fewer_faces_than_a_batch(shared_data):
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        bench.real_training_stream([str(shared_data / "300w")], 3, None, 8)
