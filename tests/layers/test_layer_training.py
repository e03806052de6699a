"""Training the spatial transformer layers: the first steps move theta and then the
localization net (images and volumes), training from a bad initialisation does not diverge, the
localization gradient scale, and the non-affine transforms' parameters train."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_stn
from helpers import (
    BACKEND,
    BATCH,
    LAYER_OUT,
    LAYER_SHAPES,
    both_ranks,
    classifier,
    compile_sgd,
    fit_one_step,
    layer_images,
    to_numpy,
)

# The images' tests share one shape; the volumes' the other LAYER_SHAPES.
SHAPE, OUT = LAYER_SHAPES[2], LAYER_OUT[2]


@both_ranks
def test_training_moves_theta_then_reaches_the_localization_net(rank, rng):
    x = layer_images(rng, rank, batch=8)
    y = rng.integers(0, 3, size=8)
    model = classifier(LAYER_SHAPES[rank])
    compile_sgd(model)
    layer = model.get_layer("st")
    bias0 = to_numpy(layer.head.bias).copy()
    kernel0 = to_numpy(layer.head.kernel).copy()
    loc0 = [to_numpy(w).copy() for w in layer.localization.trainable_weights]
    assert not kernel0.any()  # zero kernel: the localization net gets no gradient on step 1
    assert len(loc0) == 6  # 2 convolutions and 1 dense layer, kernel + bias each

    fit_one_step(model, x, y)
    bias1, kernel1 = to_numpy(layer.head.bias), to_numpy(layer.head.kernel)
    loc1 = [to_numpy(w) for w in layer.localization.trainable_weights]
    assert np.abs(bias1 - bias0).max() > 1e-6, "theta did not move"
    assert np.abs(kernel1).max() > 0, "the head kernel got no gradient"
    for before, after in zip(loc0, loc1):
        np.testing.assert_array_equal(after, before)  # exactly: its gradient was kernel0 = 0

    fit_one_step(model, x, y)
    loc2 = [to_numpy(w) for w in layer.localization.trainable_weights]
    for index, (before, after) in enumerate(zip(loc1, loc2)):
        assert np.abs(after - before).max() > 0, f"localization weight {index} did not change on step 2"
    # The regressed theta has moved away from the identity.
    theta = to_numpy(layer.head(layer.localization(x)))
    assert np.abs(theta - layer.transform.identity_params()).max() > 1e-6


def separable_task(rng, batch=32):
    """Random images whose class (0 or 1) adds 1 to the first channel: easy for the classifier
    as long as the transformer shows it some of the image."""
    x = layer_images(rng, batch=batch)
    y = rng.integers(0, 2, size=batch).astype("int32")
    x[y == 1, ..., 0] += 1.0
    return x, y


@pytest.mark.parametrize("transform", ["affine", "attention", "projective"])
def test_training_from_a_bad_initialisation_does_not_diverge(transform, rng):
    """The head starts at the identity for a reason. A user who overrides it with random, large
    weights (theta far from the identity, the images warped mostly off the canvas, where zero
    padding gives no gradient) may get a transformer that never recovers, but never NaN, inf or
    a loss that grows: losses, weights and predictions stay finite and the loss ends no worse
    than where it started or than chance."""
    x, y = separable_task(rng)
    model = classifier(classes=2, transform=transform)
    layer = model.get_layer("st")
    head_rng = np.random.default_rng(7)
    layer.head.kernel.assign(head_rng.normal(scale=0.5, size=layer.head.kernel.shape).astype("float32"))
    bias = layer.transform.identity_params() + head_rng.normal(scale=0.5, size=layer.head.bias.shape)
    layer.head.bias.assign(bias.astype("float32"))
    compile_sgd(model, learning_rate=0.05)
    history = model.fit(x, y, batch_size=8, epochs=8, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(history).all(), history
    assert history[-1] <= max(history[0], np.log(2)) + 0.01, history
    assert all(np.isfinite(to_numpy(w)).all() for w in model.weights)
    assert np.isfinite(to_numpy(model.predict(x, verbose=0))).all()


@pytest.mark.parametrize("transform", ["affine", "attention", "projective"])
def test_localization_gradient_scale_keeps_training_stable(transform, rng):
    """From the identity, SGD at 0.05 can throw theta off the canvas in its first steps (a
    transformer that then reads only padding); a localization gradient scale of 0.1, i.e. a
    10x lower learning rate for the head and the localization net, trains on every backend."""
    x, y = separable_task(rng)
    model = classifier(classes=2, transform=transform, localization_gradient_scale=0.1)
    compile_sgd(model, learning_rate=0.05)
    history = model.fit(x, y, batch_size=8, epochs=8, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < 0.2, history


def layer_gradients(layer, x, weights):
    """Gradients of `sum(layer(x) * weights)` with respect to `x` and the layer's trainable
    variables, as NumPy, under the current backend."""
    variables = layer.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        images = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = ops.sum(layer(images) * weights)
        grads = tape.gradient(value, [images, *variables])
    elif BACKEND == "jax":
        import jax

        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(images, values):
            return ops.sum(layer.stateless_call(values, frozen, images)[0] * weights)

        g_images, g_values = jax.grad(loss, argnums=(0, 1))(ops.convert_to_tensor(x), [v.value for v in variables])
        grads = [g_images, *g_values]
    else:
        import torch

        images = torch.tensor(x, requires_grad=True)
        grads = torch.autograd.grad(ops.sum(layer(images) * weights), [images, *[v.value for v in variables]])
    return [to_numpy(g) for g in grads]


def test_localization_gradient_scale_scales_the_gradient_only(rng):
    """The forward pass is the same bit for bit; every gradient into the head and the
    localization net is multiplied by the scale. (The images' gradient mixes the sampler's
    path with the localization net's, so it is neither scaled nor unchanged.)"""
    x = layer_images(rng)
    weights = ops.convert_to_tensor(rng.normal(size=(BATCH, *OUT, 2)).astype("float32"))
    results = []
    for scale in (1.0, 0.25):
        keras.utils.set_random_seed(3)
        layer = keras_stn.SpatialTransformer(OUT, localization_gradient_scale=scale)
        layer.build((None, *SHAPE))
        head_rng = np.random.default_rng(5)  # a non-zero kernel, so the localization net gets gradients
        layer.head.kernel.assign(head_rng.normal(scale=0.01, size=layer.head.kernel.shape).astype("float32"))
        results.append((to_numpy(layer(x)), layer_gradients(layer, x, weights)))
    (out_1, grads_1), (out_s, grads_s) = results
    np.testing.assert_array_equal(out_s, out_1)
    assert len(grads_1) == 9  # the images, the head's kernel and bias, 6 localization weights
    for g_1, g_s in zip(grads_1[1:], grads_s[1:]):
        assert np.abs(g_1).max() > 0
        # 1 - 0.75 rounds once per element: close to the largest entry, not to each one.
        np.testing.assert_allclose(g_s, 0.25 * g_1, rtol=1e-5, atol=1e-5 * np.abs(g_1).max())


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_layer_trains_the_params(transform, rng):
    x = rng.random((4, *SHAPE)).astype("float32")
    y = rng.integers(0, 3, size=4)
    inputs = keras.Input(SHAPE)
    layer = keras_stn.SpatialTransformer(transform=transform, localization=keras.layers.Flatten(), name="st")
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    bias = to_numpy(layer.head.bias)
    assert np.isfinite(bias).all() and np.abs(bias - layer.transform.identity_params()).max() > 1e-6
