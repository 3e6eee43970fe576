"""tf.distribute: strategy selection, TF_CONFIG roles, and two real MultiWorkerMirroredStrategy workers."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cfdrnn_keras.training import distribute

REPO = Path(__file__).resolve().parents[1]

WORKER_SCRIPT = """
import importlib.util, sys
import numpy as np
import cfdrnn_keras.cli.train as tool
import keras
initial = {{}}
remember = keras.callbacks.LambdaCallback(
    on_train_begin=lambda logs: initial.update(kernel=result_network()[0].numpy().copy()))
holder = {{}}
result_network = lambda: holder["trainer"].network.weights
class Hold(keras.callbacks.Callback):
    def set_model(self, model):
        holder["trainer"] = model
result = tool.run(tool.parse_args({arguments!r}), extra_callbacks=[Hold(), remember])
strategy = result.trainer.distribute_strategy
np.savez({output!r}, replicas=strategy.num_replicas_in_sync, initial_kernel=initial["kernel"],
         losses=np.array(result.history.history["loss"]),
         iterations=int(result.trainer.optimizer.iterations.numpy()),
         **{{f"w{{i}}": w.numpy() for i, w in enumerate(result.network.weights)}})
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_roles_come_from_tf_config(monkeypatch):
    cluster = {"worker": ["host-a:1", "host-b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief() and distribute.task_of() == ("worker", 0)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief()
    with_chief = {"chief": ["host-c:3"], **cluster}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert distribute.is_chief()
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.is_chief()
    with pytest.raises(distribute.DistributionError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributionError, match="not valid JSON"):
        distribute.read_tf_config()
    with pytest.raises(distribute.DistributionError, match="unknown strategy"):
        distribute.make_strategy("horovod")


def test_global_batch_and_shard_policy():
    import tensorflow as tf

    strategy = distribute.make_strategy("mirrored")
    assert distribute.global_batch_size(4, strategy) == 4 * strategy.num_replicas_in_sync
    dataset = distribute.shard_dataset(tf.data.Dataset.range(4), "data")
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    with pytest.raises(distribute.DistributionError):
        distribute.shard_dataset(dataset, "rows")


@pytest.mark.slow
def test_two_multiworker_processes_train_together_to_identical_weights(shared_data, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    arguments = ["--data", str(shared_data / "300w" / "afw"), "--split", "all", "--limit", "8",
                 "--val-fraction", "0", "--input-size", "64", "--width", "0.0625", "--recipe", "paper",
                 "--learning-rate", "3e-3", "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2",
                 "--precision", "fp32", "--strategy", "multiworker", "--out", str(tmp_path / "run"),
                 "--no-tensorboard", "--verbose", "0"]
    processes, outputs = [], []
    for index in range(2):
        output = str(tmp_path / f"worker{index}.npz")
        outputs.append(output)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        script = WORKER_SCRIPT.format(tool=str(REPO / "tools" / "train.py"), arguments=arguments, output=output)
        processes.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    first, second = (np.load(path) for path in outputs)
    assert int(first["replicas"]) == 2 and int(second["replicas"]) == 2
    assert int(first["iterations"]) == 3 and int(second["iterations"]) == 3
    weights = [key for key in first.files if key.startswith("w")]
    assert weights and set(weights) == {key for key in second.files if key.startswith("w")}
    for key in weights:
        np.testing.assert_array_equal(first[key], second[key])
    # They really trained: finite losses, and the first kernel moved away from its initial value.
    assert np.isfinite(first["losses"]).all()
    assert not np.allclose(first["initial_kernel"], first["w0"])
    np.testing.assert_array_equal(first["initial_kernel"], second["initial_kernel"])
    # Only the chief writes the run's files.
    assert (tmp_path / "run" / "final.keras").is_file()
    assert (tmp_path / "run" / "config.json").is_file()
    description = json.loads((tmp_path / "run" / "config.json").read_text())
    assert description["replicas"] == 2 and description["global_batch_size"] == 4
