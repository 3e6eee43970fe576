"""The `cfdrnn` command and the inference/training line: what loads, what answers, what it says when
the [train] extra is missing. Each check runs in a fresh subprocess, so what this test process has
imported (TensorFlow, for the other tests) cannot hide an import the plain install would pay for."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfdrnn_keras import __version__
from cfdrnn_keras.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "examples" / "astronaut.png"
HEAVY = ("tensorflow", "keras", "scipy", "matplotlib")


def _python(code: str, *args, timeout=300):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, CFDRNN_VERBOSE="0"))


# Prints the heavy top-level modules loaded by the time the snippet ends (also when it exits early).
_LOADED = """
import atexit, sys
atexit.register(lambda: print("LOADED", sorted({m.split('.')[0] for m in sys.modules} & set(%r))))
""" % (HEAVY,)


def _loaded(stdout: str) -> list:
    line = next(line for line in stdout.splitlines() if line.startswith("LOADED"))
    return eval(line[len("LOADED "):])  # a list literal printed above


def test_landmarks_on_a_photo_never_load_tensorflow_or_keras():
    result = _python(_LOADED + """
import cfdrnn_keras
from cfdrnn_keras import LandmarkDetector
faces = LandmarkDetector().detect(sys.argv[1])
print("FACES", len(faces), faces[0].points.shape)
""", ASTRONAUT)
    assert result.returncode == 0, result.stderr
    assert "FACES 1 (68, 2)" in result.stdout
    assert _loaded(result.stdout) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_help_answers_without_loading_tensorflow(command):
    result = _python(_LOADED + "from cfdrnn_keras.cli import main\nsys.exit(main([sys.argv[1], '--help']))", command)
    assert result.returncode == 0, result.stderr
    assert f"usage: cfdrnn {command}" in result.stdout
    assert _loaded(result.stdout) == []


def test_top_level_help_version_and_unknown_command():
    result = _python(_LOADED + "from cfdrnn_keras.cli import main\nsys.exit(main(['--help']))")
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    assert _loaded(result.stdout) == []
    version = _python("from cfdrnn_keras.cli import main\nmain(['--version'])")
    assert version.stdout.strip() == f"cfdrnn {__version__}"
    unknown = _python("import sys\nfrom cfdrnn_keras.cli import main\nsys.exit(main(['fly']))")
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0 and "unknown command 'fly'" in unknown.stderr


@pytest.mark.parametrize("command, argv", [("train", ["--data", "x"]), ("export", ["--out", "x"])])
def test_a_missing_extra_is_one_line_naming_the_install(command, argv):
    # sys.modules[name] = None is how an absent package looks to importlib.util.find_spec and to import
    result = _python("import sys\nsys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n"
                     "from cfdrnn_keras.cli import main\nsys.exit(main(sys.argv[1:]))", command, *argv)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cfdrnn {command}: needs TensorFlow: pip install 'cfdrnn-keras[train]'"


def test_a_keras_model_without_keras_installed_is_one_line(tmp_path):
    result = _python("import sys\nsys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n"
                     "from cfdrnn_keras.cli import main\nsys.exit(main(sys.argv[1:]))",
                     "predict", ASTRONAUT, "--model", "fast:keras", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "needs TensorFlow and Keras" in result.stderr and "cfdrnn-keras[train]" in result.stderr


def test_predict_is_quiet_and_names_the_packaged_model(tmp_path):
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-m", "cfdrnn_keras", "predict", str(ASTRONAUT), "--json", str(out),
                             "--threads", "1"], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env=dict(os.environ, CFDRNN_VERBOSE="0"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "1 of 1 inputs processed"  # no TensorFlow, absl, CUDA or LiteRT lines
    report = json.loads(out.read_text())
    assert report["model"] == "accurate" and len(report["inputs"][0]["faces"]) == 1


def test_the_keras_path_is_quiet_too(tmp_path):
    result = subprocess.run([sys.executable, "tools/predict.py", str(ASTRONAUT), "--model", "fast:keras",
                             "--json", str(tmp_path / "k.json")], capture_output=True, text=True, cwd=REPO,
                            timeout=300, env=dict(os.environ, CFDRNN_VERBOSE="0"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "1 of 1 inputs processed"
    verbose = subprocess.run([sys.executable, "-m", "cfdrnn_keras", "--verbose", "predict", str(ASTRONAUT),
                              "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "XNNPACK" in verbose.stderr  # --verbose shows LiteRT's own line


def test_benchmark_times_the_user_path_and_records_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "cfdrnn_keras", "benchmark", "--runs", "2", "--warmup", "1",
                             "--cold-runs", "1", "--threads", "1", "--models", "fast", "--json", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["model"] == "fast" and row["threads"] == 1 and row["faces"] == 1
    from cfdrnn_keras.runtime.packaged import packaged_model

    assert row["model_file_bytes"] == packaged_model("fast").tflite_path.stat().st_size
    for part in ("end_to_end_per_face", "face_detector", "network"):
        assert row[part]["median_ms"] > 0 and row[part]["runs"] == 2
    assert row["cold_start_api"]["median_s"] > 0 and row["cold_start_cli"]["median_s"] > 0
    assert {"cpu", "cpu_flags", "cpus", "load_average_start", "load_average_end"} <= set(report["machine"])
    assert "| fast | 1 |" in result.stdout


def test_benchmark_bad_options_are_one_line():
    from cfdrnn_keras.cli import benchmark

    assert benchmark.thread_counts("1,1,2") == [1, 2]
    with pytest.raises(ValueError):
        benchmark.thread_counts("0")
    result = _python("import sys\nfrom cfdrnn_keras.cli import main\nsys.exit(main(sys.argv[1:]))",
                     "benchmark", "--models", "nonesuch")
    assert result.returncode == 2 and "nonesuch: neither a packaged model" in result.stderr


def test_min_face_score_drops_faces_the_model_cannot_align(tmp_path):
    """The astronaut's face scores about 0.98 (docs/MODEL_CARD.md): kept at 0.5, dropped at 0.999."""
    counts = {}
    for threshold in ("0.5", "0.999"):
        out = tmp_path / f"{threshold}.json"
        result = subprocess.run([sys.executable, "-m", "cfdrnn_keras", "predict", str(ASTRONAUT), "--quiet",
                                 "--min-face-score", threshold, "--json", str(out)],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr
        (entry,) = json.loads(out.read_text())["inputs"]
        counts[threshold] = len(entry.get("faces", []))
        if counts[threshold]:
            assert entry["faces"][0]["face_score"] >= float(threshold)
    assert counts == {"0.5": 1, "0.999": 0}
