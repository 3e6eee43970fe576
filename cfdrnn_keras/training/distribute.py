"""Choosing a `tf.distribute` strategy and preparing input for it (no home-made distribution).

* `default`: one device (the CPU, or the first GPU).
* `mirrored`: `MirroredStrategy` over the local GPUs (all-reduce between them; one CPU replica
  where there is no GPU).
* `multiworker`: `MultiWorkerMirroredStrategy` across machines; the cluster and this process's
  role come from the `TF_CONFIG` environment variable (docs/TRAINING.md has examples). It must be
  created before any other TensorFlow operation runs, so `make_strategy` is the first thing a
  training script calls.

Batches are global: per-replica batch × replicas. Each worker's input is sharded with
`auto_shard_policy` (DATA by default: every worker reads the same seeded order and keeps its
share of each global batch, so nothing is read twice per step and the workers never need files).
"""
from __future__ import annotations

import json
import os

STRATEGIES = ("default", "mirrored", "multiworker")
SHARD_POLICIES = ("data", "file", "auto", "off")


class DistributionError(ValueError):
    """A strategy that cannot start here (e.g. multiworker without TF_CONFIG); one-line message."""


def read_tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributionError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise DistributionError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return value


def make_strategy(name: str = "default"):
    """The `tf.distribute.Strategy` called `name` (see the module docstring)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        config = read_tf_config()
        if not config.get("cluster") or not config.get("task"):
            raise DistributionError(
                "--strategy multiworker needs TF_CONFIG with 'cluster' and 'task' (see docs/TRAINING.md)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise DistributionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def task_of(strategy=None) -> tuple[str, int]:
    """(task type, index) of this process: ("worker", 0) when there is no cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        return str(resolver.task_type), int(resolver.task_id or 0)
    task = read_tf_config().get("task") or {}
    return str(task.get("type", "worker")), int(task.get("index", 0))


def is_chief(strategy=None) -> bool:
    """Whether this process writes the run's files: the `chief` task, or worker 0 if there is none."""
    task_type, index = task_of(strategy)
    if task_type == "chief":
        return True
    cluster = read_tf_config().get("cluster") or {}
    return task_type == "worker" and index == 0 and "chief" not in cluster


def global_batch_size(per_replica_batch: int, strategy) -> int:
    return int(per_replica_batch) * int(strategy.num_replicas_in_sync)


def shard_dataset(dataset, policy: str = "data"):
    """`dataset` with the auto-shard policy that `strategy.experimental_distribute_dataset` applies."""
    import tensorflow as tf

    policies = {
        "data": tf.data.experimental.AutoShardPolicy.DATA,
        "file": tf.data.experimental.AutoShardPolicy.FILE,
        "auto": tf.data.experimental.AutoShardPolicy.AUTO,
        "off": tf.data.experimental.AutoShardPolicy.OFF,
    }
    if policy not in policies:
        raise DistributionError(f"unknown shard policy {policy!r}; choose one of {', '.join(SHARD_POLICIES)}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(options)
