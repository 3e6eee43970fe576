"""FusedBatchNormalization (issue 8) against Keras's own BatchNormalization.

The fused layer exists for speed only, so every observable must match Keras's layer: outputs in both
modes, gradients, the moving statistics (the fused op's variance is the unbiased one: a trap), the
`.keras` round trip, and the fall-back path where the fused kernel does not apply.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfdrnn_keras import FusedBatchNormalization, build_cfdrnn, get_preset

CHANNELS = 6


def _pair(dtype="float32", **kwargs):
    """A fused and a Keras layer built on the same shape with the same non-trivial weights."""
    rng = np.random.default_rng(0)
    fused = FusedBatchNormalization(dtype=dtype, **kwargs)
    plain = keras.layers.BatchNormalization(dtype=dtype, **kwargs)
    return fused, plain, rng


def _build_same(fused, plain, shape, rng):
    fused.build(shape)
    plain.build(shape)
    channels = shape[fused.axis]
    weights = [
        rng.uniform(0.5, 1.5, channels).astype("float32"),  # gamma
        rng.normal(0, 0.5, channels).astype("float32"),  # beta
        rng.normal(0, 1.0, channels).astype("float32"),  # moving mean
        rng.uniform(0.5, 2.0, channels).astype("float32"),  # moving variance
    ]
    fused.set_weights(weights)
    plain.set_weights(weights)


def _batch(rng, shape, scale=3.0, shift=1.5):
    return (rng.normal(shift, scale, shape)).astype("float32")


@pytest.mark.parametrize("training", [True, False])
def test_outputs_match_fp32(training):
    fused, plain, rng = _pair()
    shape = (4, 7, 5, CHANNELS)
    _build_same(fused, plain, shape, rng)
    x = _batch(rng, shape)
    y_fused = fused(x, training=training).numpy()
    y_plain = plain(x, training=training).numpy()
    assert y_fused.dtype == np.float32
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    if training:  # really normalised by the batch: mean beta, std gamma per channel
        gamma, beta = fused.get_weights()[:2]
        np.testing.assert_allclose(y_fused.mean(axis=(0, 1, 2)), beta, atol=1e-4)
        np.testing.assert_allclose(y_fused.std(axis=(0, 1, 2)), gamma, rtol=1e-3)


@pytest.mark.parametrize("training", [True, False])
def test_outputs_match_mixed_bfloat16(training):
    fused, plain, rng = _pair(dtype="mixed_bfloat16")
    shape = (4, 8, 8, CHANNELS)
    _build_same(fused, plain, shape, rng)
    x = tf.cast(_batch(rng, shape), tf.bfloat16)
    y_fused = fused(x, training=training)
    y_plain = plain(x, training=training)
    assert y_fused.dtype == tf.bfloat16 == y_plain.dtype
    # bf16 has an 8-bit mantissa: outputs of magnitude ~3 agree to a few bf16 ulps.
    np.testing.assert_allclose(
        tf.cast(y_fused, tf.float32).numpy(), tf.cast(y_plain, tf.float32).numpy(), rtol=2e-2, atol=3e-2
    )


def test_gradients_match():
    fused, plain, rng = _pair()
    shape = (3, 6, 6, CHANNELS)
    _build_same(fused, plain, shape, rng)
    x = tf.constant(_batch(rng, shape))
    upstream = tf.constant(rng.normal(0, 1, shape).astype("float32"))  # a non-uniform loss weighting

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * upstream)
        return tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])

    names = ("input", "gamma", "beta")
    for name, g_fused, g_plain in zip(names, grads(fused), grads(plain)):
        assert g_fused is not None, name
        np.testing.assert_allclose(g_fused.numpy(), g_plain.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
        assert np.abs(g_plain.numpy()).max() > 1e-2, f"{name} gradient is trivially zero"


def test_moving_statistics_match_after_steps():
    fused, plain, rng = _pair(momentum=0.8)
    shape = (2, 3, 4, CHANNELS)  # 24 values per channel: biased and unbiased variance differ by 4 %
    _build_same(fused, plain, shape, rng)
    for step in range(4):
        x = _batch(rng, shape, scale=1.0 + step, shift=step)
        fused(x, training=True)
        plain(x, training=True)
    for name, a, b in zip(("moving_mean", "moving_variance"), fused.get_weights()[2:], plain.get_weights()[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    # Hand check of the biased-variance update on one more step.
    x = _batch(rng, shape, scale=2.0, shift=-1.0)
    before = fused.get_weights()[3]
    fused(x, training=True)
    expected = before * 0.8 + x.reshape(-1, CHANNELS).var(axis=0) * 0.2  # numpy var is the biased one
    np.testing.assert_allclose(fused.get_weights()[3], expected, rtol=1e-5)


def test_not_trainable_layer_uses_moving_statistics_in_training_mode():
    """Keras semantics: a frozen BN layer normalises with its moving statistics even when training."""
    fused, plain, rng = _pair()
    shape = (2, 4, 4, CHANNELS)
    _build_same(fused, plain, shape, rng)
    fused.trainable = plain.trainable = False
    x = _batch(rng, shape)
    before = fused.get_weights()
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-5)
    for a, b in zip(before, fused.get_weights()):
        np.testing.assert_array_equal(a, b)


def _small_model(fused: bool):
    norm = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = norm(name="conv_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def test_keras_file_round_trip_safe_mode(tmp_path):
    model = _small_model(fused=True)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (8, 12, 12, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, rng.normal(0, 1, (8, 2)).astype("float32"), epochs=2, batch_size=4, verbose=0)
    bn = model.get_layer("conv_bn")
    assert not np.allclose(bn.moving_mean.numpy(), 0.0), "training did not move the statistics"

    path = tmp_path / "fused.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("conv_bn")) is FusedBatchNormalization
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_are_interchangeable_with_keras_layer():
    """Same weight names and order: a fused model's weights run unchanged in a Keras-BN model."""
    fused_model, plain_model = _small_model(True), _small_model(False)
    rng = np.random.default_rng(2)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in fused_model.get_weights()]
    fused_model.set_weights(weights)
    plain_model.set_weights(weights)
    assert [w.path for w in fused_model.weights] == [w.path for w in plain_model.weights]
    x = rng.normal(0, 1, (3, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(fused_model(x, training=False), plain_model(x, training=False), rtol=1e-5, atol=1e-5)


def test_cfdrnn_fused_and_keras_batchnorm_agree():
    """The whole network: fused_batchnorm=True and False give the same outputs with the same weights."""
    config = get_preset("lite").replace(width=0.0625)
    fused_model = build_cfdrnn(config)
    plain_model = build_cfdrnn(config.replace(fused_batchnorm=False))
    assert isinstance(fused_model.get_layer("hml2.conv13x13_bn"), FusedBatchNormalization)
    assert type(plain_model.get_layer("hml2.conv13x13_bn")) is keras.layers.BatchNormalization
    plain_model.set_weights(fused_model.get_weights())
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (1, 256, 256, 3)).astype("float32")
    a, b = fused_model(x, training=False), plain_model(x, training=False)
    np.testing.assert_allclose(a["heatmaps_4"], b["heatmaps_4"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a["delta_4"], b["delta_4"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Fall-back: where the fused kernel does not apply, the layer is exactly Keras's.
# ------------------------------------------------------------------------------------------------
def test_can_fuse_only_4d_channels_last_without_mask():
    layer = FusedBatchNormalization()
    four_d = tf.zeros((2, 3, 3, 4))
    assert layer._can_fuse(four_d, None)
    assert not layer._can_fuse(tf.zeros((2, 4)), None)
    assert not layer._can_fuse(tf.zeros((2, 5, 4)), None)
    assert not layer._can_fuse(four_d, tf.ones((2, 3, 3), tf.bool))
    assert not FusedBatchNormalization(axis=1)._can_fuse(four_d, None)


@pytest.mark.parametrize(
    "shape, axis",
    [((6, CHANNELS), -1), ((3, 5, CHANNELS), -1), ((2, CHANNELS, 4, 4), 1)],
    ids=["2d", "3d", "channels_first"],
)
@pytest.mark.parametrize("training", [True, False])
def test_fallback_matches_keras(shape, axis, training):
    fused, plain, rng = _pair(axis=axis)
    _build_same(fused, plain, shape, rng)
    x = _batch(rng, shape)
    np.testing.assert_allclose(fused(x, training=training), plain(x, training=training), rtol=1e-5, atol=1e-5)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_fallback_with_mask_matches_keras(training):
    """A 4-D input that would fuse but carries a mask: Keras's masked moments, not the fused op's."""
    fused, plain, rng = _pair()
    shape = (2, 3, 4, CHANNELS)
    _build_same(fused, plain, shape, rng)
    x = _batch(rng, shape)
    mask = tf.constant(rng.uniform(size=shape[:-1]) < 0.5)
    y_fused = fused(x, training=training, mask=mask)
    y_plain = plain(x, training=training, mask=mask)
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    if training:  # the mask really mattered: unmasked moments would give another output
        y_unmasked = plain(x, training=True)
        assert np.abs(y_unmasked.numpy() - y_plain.numpy()).max() > 1e-2
