"""tools/benchmark_formats.py (every format): bad options, the table, and what each test-time ensemble costs in
FLOPs, counted from the graphs it exports (no timing: timings are never asserted)."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


from cfdrnn_keras.cli import benchmark_formats as bench  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--ensembles", "plain,bogus"], "unknown --ensembles bogus"),
    (["--presets", "huge"], "unknown preset"),
    (["--runs", "0"], "--runs"),
])
def test_bad_options_give_one_line_and_exit_status_2(argv, message, capsys, tmp_path):
    assert bench.main([*argv, "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "b.json").exists()


def test_table_names_the_ensemble_of_each_row():
    report = {"threads": [1, 2], "rows": [
        {"preset": "mobile", "ensemble": "default", "backend": "tflite_fp32", "gflops": 4.98, "size_bytes": 14.8e6,
         "timings": {"1": {"median_ms": 66.9}, "2": {"error": "worker failed"}}},
        {"preset": "dlib ERT (peer)", "ensemble": None, "backend": "dlib_68", "gflops": None, "size_bytes": None,
         "timings": {"1": {"median_ms": 1.9}, "2": {"median_ms": 2.7}}},
    ]}
    lines = bench.markdown_table(report).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| preset | test time | backend |")
    assert lines[2] == "| mobile | default | tflite_fp32 | 5.0 | 14.8 | 66.9 | failed |"
    assert lines[3] == "| dlib ERT (peer) | — | dlib_68 | — | — | 1.9 | 2.7 |"


def test_each_ensemble_is_saved_loadable_and_counted(tmp_path):
    """The flip test runs the network twice a face; the stage average adds the offset tails of stages
    1-3. Hand-checkable against the bare network: flip = 2 × plain, default = 2 × stages."""
    import keras

    skip = {"keras_bf16", "saved_model", *bench.TFLITE_ROWS}
    facts = {}
    for ensemble in bench.ENSEMBLES:
        rows, static = bench.prepare_preset("mobile", tmp_path, None, skip, lambda message: None, ensemble)
        assert [row["name"] for row in rows] == ["keras_fp32"]
        keras.saving.load_model(rows[0]["path"], safe_mode=True)  # what the worker will load
        facts[ensemble] = static["facts"]
    gflops = {name: fact["gflops"] for name, fact in facts.items()}
    assert gflops["plain"] == pytest.approx(2.26, abs=0.01)  # docs/PERFORMANCE.md
    assert gflops["flip"] == pytest.approx(2 * gflops["plain"])
    assert gflops["default"] == pytest.approx(2 * gflops["stages"])
    assert gflops["plain"] < gflops["stages"] < 1.15 * gflops["plain"]
    assert facts["stages"]["params"] > facts["plain"]["params"] == facts["flip"]["params"]
    assert len({fact["gflops_training_graph"] for fact in facts.values()}) == 1


def test_the_worker_loads_an_ensemble_file_in_a_fresh_process(tmp_path):
    """The worker is a new process: it must register the ensemble's layers itself before loading (a
    bare `import cfdrnn_keras` registers nothing, so the keras_fp32 row of `stages` once failed)."""
    import subprocess
    import sys

    skip = {"keras_bf16", "saved_model", *bench.TFLITE_ROWS}
    rows, _ = bench.prepare_preset("mobile", tmp_path, None, skip, lambda message: None, "stages")
    script = ("import sys, numpy as np\n"
              "from cfdrnn_keras.cli.benchmark_formats import _keras_call\n"
              "call = _keras_call(sys.argv[1], np.full((128, 128, 3), 100, np.uint8), False)\n"
              "print(call().shape)\n")
    result = subprocess.run([sys.executable, "-c", script, rows[0]["path"]], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(1, 68, 2)"
