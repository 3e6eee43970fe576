"""Registered custom layers of the network.

`FusedBatchNormalization` exists for speed: Keras 3's BatchNormalization computes its moments with
a dozen small fp32 ops per layer and takes half of a CPU training step (DESIGN.md §1, "Size").
On the TensorFlow backend this layer runs TensorFlow's fused kernel (one oneDNN kernel forward,
one backward) while keeping Keras's weights, names, moving-statistics semantics and `.keras`
format; on any other backend it is exactly Keras's layer.
"""
from __future__ import annotations

import keras
from keras import ops


def _tensorflow_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="cfdrnn")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, computed by TensorFlow's fused kernel where it can be.

    The fused path applies to 4-D channels-last inputs without masks or renormalisation, on the
    TensorFlow backend. Two details keep it identical to Keras's layer:
    - the fused op returns the *unbiased* batch variance; Keras's moving variance averages the
      *biased* one, so the batch variance is rescaled by (n - 1) / n before the update;
    - the moving averages are updated by Keras's own formula with `assign`, so checkpoints and
      `.keras` files are interchangeable with `keras.layers.BatchNormalization`.
    """

    def _can_fuse(self, inputs, mask) -> bool:
        return (
            _tensorflow_backend()
            and mask is None
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        x = inputs
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        scale = self.gamma if self.scale else tf.ones((channels,), tf.float32)
        offset = self.beta if self.center else tf.zeros((channels,), tf.float32)
        scale = tf.convert_to_tensor(scale, tf.float32)
        offset = tf.convert_to_tensor(offset, tf.float32)

        if training and self.trainable:
            y, batch_mean, batch_var_unbiased = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            shape = tf.shape(x)
            count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            batch_var = batch_var_unbiased * ((count - 1.0) / tf.maximum(count, 1.0))
            self.moving_mean.assign(self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + batch_var * (1.0 - self.momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                scale,
                offset,
                mean=tf.convert_to_tensor(self.moving_mean, tf.float32),
                variance=tf.convert_to_tensor(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return ops.cast(y, self.compute_dtype)


def batch_norm(config_fused: bool, name: str) -> keras.layers.Layer:
    """The batch-norm layer the network uses after every convolution."""
    layer_cls = FusedBatchNormalization if config_fused else keras.layers.BatchNormalization
    return layer_cls(name=name)
