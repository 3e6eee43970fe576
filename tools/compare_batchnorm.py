"""Is the fused batch norm as good a training layer as Keras's? Its gradients against Keras's, and both
against an fp32 reference, on real faces, with the same weights (docs/TRAINING.md, "Fused or Keras
batch norm, separated").

One training-mode pass of the whole CFDRNN network (dropout off, so every pass sees the same
network) and its loss's gradient with respect to every trainable weight, for four arms: Keras's
layer in fp32 (the reference), the fused layer in fp32, and both in the lower precision. A layer that
trained worse would show here as a gradient farther from the reference than the other layer's.

    python tools/compare_batchnorm.py                                  # fresh weights, 16 faces, bf16
    python tools/compare_batchnorm.py --weights cfdrnn_keras/assets/cfdrnn_mobile.keras

Prints, per arm: the loss, the cosine between its whole gradient and the reference's, their norm
ratio, and the median over weights of the relative gradient error. `--json F` writes the same.
"""
from __future__ import annotations

import argparse
import json
import sys

import _front  # noqa: F401  (puts the checkout, not tools/, on the import path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=None,
                        help="folders of annotated faces (default: ../shared/data/300w beside the checkout)")
    parser.add_argument("--faces", type=int, default=16, help="faces in the one batch (default 16)")
    parser.add_argument("--preset", default="mobile", help="network preset (default mobile)")
    parser.add_argument("--weights", default=None,
                        help="a .keras network to take the weights from (default: fresh weights, seed 0, "
                             "output heads scaled as a fresh training run has them)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"),
                        help="the lower precision the two layers are compared in (default bf16)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def gradient(config, policy: str, weights, images, targets):
    """(loss, flat float64 gradient, weight paths) of one training-mode pass under a dtype policy."""
    import keras
    import numpy as np
    import tensorflow as tf

    from cfdrnn_keras.model import build_cfdrnn
    from cfdrnn_keras.training.losses import cfdrnn_losses, total_loss

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        network = build_cfdrnn(config)
        network.set_weights(weights)
        with tf.GradientTape() as tape:
            predictions = network(images, training=True)
            loss = tf.cast(total_loss(cfdrnn_losses(targets, predictions, config.stride, config.input_size)),
                           tf.float32)
        grads = tape.gradient(loss, network.trainable_weights)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    parts = [np.asarray(g, np.float64) for g in grads]
    return float(loss), parts, [w.path for w in network.trainable_weights]


def compare(config, weights, images, targets, precision: str = "bf16") -> list[dict]:
    """One row per arm; the reference is Keras's layer in fp32, the same weights and batch."""
    import numpy as np

    low = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    keras_config, fused_config = config.replace(fused_batchnorm=False), config.replace(fused_batchnorm=True)
    ref_loss, ref, _ = gradient(keras_config, "float32", weights, images, targets)
    ref_flat = np.concatenate([g.ravel() for g in ref])
    rows = [{"arm": "Keras, fp32 (reference)", "loss": ref_loss, "cosine": 1.0, "norm_ratio": 1.0,
             "median_relative_error": 0.0}]
    for name, arm_config, policy in (("fused, fp32", fused_config, "float32"),
                                     (f"Keras, {precision}", keras_config, low),
                                     (f"fused, {precision}", fused_config, low)):
        loss, parts, _ = gradient(arm_config, policy, weights, images, targets)
        flat = np.concatenate([g.ravel() for g in parts])
        relative = [np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30) for a, b in zip(parts, ref)]
        rows.append({"arm": name, "loss": loss,
                     "cosine": float(flat @ ref_flat / (np.linalg.norm(flat) * np.linalg.norm(ref_flat))),
                     "norm_ratio": float(np.linalg.norm(flat) / np.linalg.norm(ref_flat)),
                     "median_relative_error": float(np.median(relative))})
    return rows


def start_weights(config, path: str | None):
    """The weights every arm starts from: a saved network's, or a fresh network's (seed 0)."""
    import keras

    from cfdrnn_keras.model import build_cfdrnn
    from cfdrnn_keras.training.trainer import load_network_weights, scale_output_heads

    keras.utils.set_random_seed(0)
    network = build_cfdrnn(config)
    if path:
        load_network_weights(network, path)
    else:
        scale_output_heads(network, config)
    return network.get_weights()


def main(argv=None) -> int:
    args = parse_args(argv)
    from cfdrnn_keras import quiet

    quiet.quiet_mode()
    from cfdrnn_keras.cli.train import default_data_dir
    from cfdrnn_keras.config import get_preset
    from data_pipelines.dataset import make_dataset
    from data_pipelines.discovery import find_faces

    if args.faces < 2:
        print("compare_batchnorm: --faces must be at least 2 (batch statistics need a batch)", file=sys.stderr)
        return 2
    roots = args.data or [default_data_dir()]
    faces = sorted(find_faces(roots), key=lambda face: face.pts_path)[: args.faces]
    if len(faces) < 2:
        print(f"compare_batchnorm: fewer than 2 annotated faces under {' '.join(roots)}", file=sys.stderr)
        return 2
    config = get_preset(args.preset).replace(dropout=0.0)  # dropout would draw other masks in every pass
    try:
        weights = start_weights(config, args.weights)
    except (ValueError, OSError) as error:  # the message names the file
        print(f"compare_batchnorm: {error}", file=sys.stderr)
        return 2
    images, targets = next(iter(make_dataset(faces, config, training=False, batch_size=len(faces), cache=False)))
    rows = compare(config, weights, images, targets, args.precision)
    print(f"{args.preset}, {len(faces)} faces, weights: {args.weights or 'fresh (seed 0)'}")
    print(f"{'arm':<26} {'loss':>10} {'cosine':>8} {'norm ratio':>10} {'median rel. error':>17}")
    for row in rows:
        print(f"{row['arm']:<26} {row['loss']:>10.4f} {row['cosine']:>8.5f} {row['norm_ratio']:>10.4f} "
              f"{row['median_relative_error']:>17.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"preset": args.preset, "faces": len(faces), "weights": args.weights, "rows": rows}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
