"""The SpatialTransformer layer: identity at init, shapes, theta, training, localization nets,
configuration, saving (same backend and across backends), mixed precision, argument checks."""

import copy
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import keras_stn
from helpers import BACKEND, to_numpy
from keras_stn import transforms
from reference import affine_grid_ref, grid_sample_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFFINE_TRANSFORMS = ["affine", "attention", "translation", "similarity"]
TRANSFORMS = [*AFFINE_TRANSFORMS, "projective", "tps"]
NUM_PARAMS = {"affine": 6, "attention": 3, "translation": 2, "similarity": 4, "projective": 8, "tps": 18}
# One image size for (almost) every test, non-square so that a height/width mix-up shows; JAX
# compiles each op once per shape in eager mode, so few distinct shapes keep the suite fast.
SHAPE = (16, 12, 2)
SHAPE_CF = (2, 16, 12)
BATCH = 4
OUT = (7, 9)


def random_images(rng, shape=SHAPE, batch=BATCH):
    return rng.random((batch, *shape)).astype("float32")


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def classifier(input_shape=SHAPE, classes=3, **layer_kwargs):
    """Input -> SpatialTransformer (named "st") -> Flatten -> Dense: the smallest trainable model."""
    inputs = keras.Input(input_shape)
    warped = keras_stn.SpatialTransformer(name="st", **layer_kwargs)(inputs)
    outputs = keras.layers.Dense(classes)(keras.layers.Flatten()(warped))
    return keras.Model(inputs, outputs)


def compile_sgd(model, learning_rate=0.5):
    model.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def fit_one_step(model, x, y):
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)


def sequential_localization(units=8):
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="tanh"),
        ]
    )


def functional_localization(input_shape=SHAPE, units=8):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(units, activation="tanh")(x), name="functional_loc")


# --------------------------------------------------------------------------- identity at init


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_output_equals_input_at_initialisation(transform, data_format, rng):
    # The default localization CNN is used in both layouts: Keras runs channels_first
    # convolutions on CPU under every backend here (TensorFlow included), so no custom
    # network is needed for channels_first.
    images = random_images(rng, SHAPE if data_format == "channels_last" else SHAPE_CF)
    layer = keras_stn.SpatialTransformer(transform=transform, data_format=data_format)
    out = to_numpy(layer(images))
    assert out.dtype == np.float32
    if transform in AFFINE_TRANSFORMS:  # the fused affine sampler is exact
        np.testing.assert_array_equal(out, images)
    else:  # a normalised grid round-trips pixel centres up to float32 rounding
        np.testing.assert_allclose(out, images, rtol=0, atol=1e-6)
    assert layer.data_format == data_format
    assert isinstance(layer.localization, keras.layers.Layer)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
def test_identity_at_initialisation_for_every_mode(align_corners, interpolation, rng):
    images = random_images(rng)
    layer = keras_stn.SpatialTransformer(
        interpolation=interpolation,
        padding_mode="border",
        align_corners=align_corners,
        localization=keras.layers.Flatten(),
    )
    np.testing.assert_array_equal(to_numpy(layer(images)), images)


def test_data_format_defaults_to_keras_config(rng):
    images = random_images(rng, SHAPE_CF)
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        layer = keras_stn.SpatialTransformer(out_dims=OUT)
    finally:
        keras.config.set_image_data_format(previous)
    assert layer.data_format == "channels_first"
    assert tuple(layer(images).shape) == (BATCH, 2, *OUT)
    assert keras_stn.SpatialTransformer().data_format == previous


# --------------------------------------------------------------------------- out_dims, theta, shapes


def identity_resampled(images, out_dims):
    """NumPy: the identity warp of channels-last images to out_dims (align_corners=False)."""
    identity = np.tile(np.array([[[1, 0, 0], [0, 1, 0]]], "float64"), (len(images), 1, 1))
    return grid_sample_ref(images, affine_grid_ref(identity, out_dims))


@pytest.mark.parametrize("out_dims", [OUT, (20, 5), (1, 1)])
def test_out_dims_changes_the_output_size(out_dims, rng):
    images = random_images(rng)
    out = to_numpy(keras_stn.SpatialTransformer(out_dims=out_dims)(images))
    assert out.shape == (BATCH, *out_dims, 2)
    np.testing.assert_allclose(out, identity_resampled(images, out_dims), atol=1e-5)


def test_out_dims_channels_first(rng):
    images = random_images(rng, SHAPE_CF)
    out = to_numpy(keras_stn.SpatialTransformer(out_dims=OUT, data_format="channels_first")(images))
    assert out.shape == (BATCH, 2, *OUT)
    expected = identity_resampled(images.transpose(0, 2, 3, 1), OUT)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_return_theta_gives_identity_params_at_initialisation(transform, rng):
    images = random_images(rng)
    layer = keras_stn.SpatialTransformer(transform=transform, out_dims=OUT, return_theta=True)
    result = layer(images)
    assert isinstance(result, (tuple, list)) and len(result) == 2
    out, theta = result
    assert tuple(theta.shape) == (BATCH, NUM_PARAMS[transform]) and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (BATCH, 1)))
    plain = keras_stn.SpatialTransformer(transform=transform, out_dims=OUT)
    plain.build(images.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(out), to_numpy(plain(images)))


@pytest.mark.parametrize("transform", AFFINE_TRANSFORMS)  # the others: test_transforms_nonaffine.py
def test_returned_theta_is_the_one_that_warped_the_output(transform, rng):
    """Same forward pass: with a non-trivial head, the output is the warp by the returned theta."""
    images = random_images(rng)
    layer = keras_stn.SpatialTransformer(transform=transform, out_dims=OUT, return_theta=True)
    layer.build(images.shape)
    kernel = rng.normal(scale=0.02, size=tuple(layer.head.kernel.shape)).astype("float32")
    layer.head.kernel.assign(kernel)
    out, theta = (to_numpy(t) for t in layer(images))
    assert np.abs(theta - layer.transform.identity_params()).max() > 1e-3  # not the identity
    assert np.ptp(theta, axis=0).max() > 1e-5  # and different per sample
    matrices = to_numpy(layer.transform.to_theta(theta))
    expected = grid_sample_ref(images, affine_grid_ref(matrices.astype("float64"), OUT))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    plain = keras_stn.SpatialTransformer(transform=transform, out_dims=OUT)
    plain.build(images.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(plain(images)), out)


@pytest.mark.parametrize("return_theta", [False, True])
@pytest.mark.parametrize(
    "data_format, shape, out_dims, expected",
    [
        ("channels_last", SHAPE, None, SHAPE),
        ("channels_last", SHAPE, OUT, (*OUT, 2)),
        ("channels_first", SHAPE_CF, None, SHAPE_CF),
        ("channels_first", SHAPE_CF, OUT, (2, *OUT)),
    ],
)
def test_compute_output_shape_matches_the_output(return_theta, data_format, shape, out_dims, expected, rng):
    layer = keras_stn.SpatialTransformer(
        out_dims=out_dims, transform="attention", data_format=data_format, return_theta=return_theta
    )
    images = random_images(rng, shape)
    declared = layer.compute_output_shape((BATCH, *shape))
    declared_symbolic = layer.compute_output_shape((None, *shape))
    result = layer(images)
    symbolic = layer(keras.Input(shape))
    if return_theta:
        out, theta = result
        sym_out, sym_theta = symbolic
        assert tuple(declared[0]) == tuple(out.shape) == (BATCH, *expected)
        assert tuple(declared[1]) == tuple(theta.shape) == (BATCH, 3)
        assert tuple(declared_symbolic[0]) == tuple(sym_out.shape) == (None, *expected)
        assert tuple(declared_symbolic[1]) == tuple(sym_theta.shape) == (None, 3)
    else:
        assert tuple(declared) == tuple(result.shape) == (BATCH, *expected)
        assert tuple(declared_symbolic) == tuple(symbolic.shape) == (None, *expected)


# --------------------------------------------------------------------------- training


def test_training_moves_theta_then_reaches_the_localization_net(rng):
    x = random_images(rng, batch=8)
    y = rng.integers(0, 3, size=8)
    model = classifier()
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
    x = random_images(rng, batch=batch)
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
    x = random_images(rng)
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


# --------------------------------------------------------------------------- localization nets


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_custom_localization(kind, rng):
    x = random_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    model = classifier(localization=localization, transform="similarity")
    layer = model.get_layer("st")
    assert layer.localization is localization
    np.testing.assert_array_equal(to_numpy(keras.Model(model.input, layer.output)(x)), x)
    assert tuple(layer.head.kernel.shape) == (8, 4)
    compile_sgd(model)
    weights0 = [to_numpy(w).copy() for w in localization.trainable_weights]
    fit_one_step(model, x, y)
    fit_one_step(model, x, y)
    assert all(np.abs(to_numpy(w) - w0).max() > 0 for w, w0 in zip(localization.trainable_weights, weights0))


@pytest.mark.parametrize(
    "localization",
    [
        lambda: keras.layers.Conv2D(2, 3),
        lambda: keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.MaxPooling2D()]),
        lambda: keras.layers.Permute((3, 1, 2)),
    ],
    ids=["conv", "sequential", "permute"],
)
def test_localization_with_rank_4_features_raises_at_build(localization):
    layer = keras_stn.SpatialTransformer(localization=localization())
    with pytest.raises(ValueError) as info:
        layer.build((None, *SHAPE))
    message = str(info.value)
    assert "`localization`" in message and "Got" in message, message
    # Called on data the error is the same.
    with pytest.raises(ValueError, match="`localization`"):
        keras_stn.SpatialTransformer(localization=localization())(np.zeros((BATCH, *SHAPE), "float32"))


@pytest.mark.parametrize("localization", [lambda x: x, "default", np.zeros(3), keras.layers.Dense])
def test_non_layer_localization_raises_type_error(localization):
    with pytest.raises(TypeError) as info:
        keras_stn.SpatialTransformer(localization=localization)
    message = str(info.value)
    assert "`localization`" in message and "Got" in message, message


def test_localization_with_dynamic_spatial_size_needs_a_custom_net(rng):
    with pytest.raises(ValueError, match="Got input shape"):
        keras_stn.SpatialTransformer()(keras.Input((None, None, 2)))
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, keras_stn.SpatialTransformer(localization=localization)(inputs))
    for shape in [SHAPE, (*OUT, 2)]:
        images = random_images(rng, shape)
        np.testing.assert_array_equal(to_numpy(model(images)), images)


@pytest.mark.parametrize("units", [50, 20])
def test_default_localization_units(units, rng):
    kwargs = {} if units == 50 else {"units": units}
    localization = keras_stn.layers.default_localization(SHAPE, **kwargs)
    assert tuple(localization(random_images(rng)).shape) == (BATCH, units)


@pytest.mark.parametrize("units", [0, -3, 2.5, True, "20"])
def test_default_localization_rejects_bad_units(units):
    with pytest.raises(ValueError, match=rf"`units` must be a positive integer. Got units={units!r}"):
        keras_stn.layers.default_localization(SHAPE, units=units)


# The paper's net (pool, conv, pool, conv, flatten, dense 50) and its parameter count with the
# head (6 affine parameters) for MNIST-sized inputs, as before its size was bounded.
PAPER_NET = ["MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense"]
PAPER_NET_PARAMS = {(28, 28, 1): 59896, (40, 40, 1): 110896, (60, 60, 1): 235896, (64, 64, 3): 267896}


def built(shape, **kwargs):
    layer = keras_stn.SpatialTransformer(**kwargs)
    layer.build((None, *shape))
    return layer


def sublayer_configs(layer):
    """The localization net's layer configs, without the (unique, hence differing) names."""
    return [{k: c for k, c in sub.get_config().items() if k != "name"} for sub in layer.localization.layers]


def layer_types(layer):
    return [type(sub).__name__ for sub in layer.localization.layers]


@pytest.mark.parametrize("shape", list(PAPER_NET_PARAMS))
def test_default_localization_is_the_papers_net_up_to_64_pixels(shape):
    layer = built(shape)
    assert layer_types(layer) == PAPER_NET
    assert layer.count_params() == PAPER_NET_PARAMS[shape]
    unbounded = built(shape, localization_max_size=None)
    assert sublayer_configs(unbounded) == sublayer_configs(layer)


@pytest.mark.parametrize("shape", [(512, 512, 3), (1024, 1024, 1), (65, 2000, 1), (224, 224, 3)])
def test_default_localization_size_is_bounded_for_large_inputs(shape):
    layer = built(shape)
    assert layer_types(layer) == ["MaxPooling2D", *PAPER_NET]
    working = tuple(layer.localization.layers[0].compute_output_shape((None, *shape)))
    assert max(working[1:3]) <= 64 and working[3] == shape[-1]
    # At most 16 x 16 x 20 features reach the dense layer, as for a 64x64 input.
    assert layer.count_params() <= PAPER_NET_PARAMS[(64, 64, 3)] < 300_000
    assert built(shape, localization_max_size=None).count_params() > 3 * layer.count_params()


def test_localization_max_size_sets_the_working_size(rng):
    layer = built((40, 40, 1), localization_max_size=20)
    assert layer_types(layer) == ["MaxPooling2D", *PAPER_NET]
    assert layer.count_params() == built((20, 20, 1)).count_params()
    assert built((40, 40, 1), localization_max_size=40).count_params() == PAPER_NET_PARAMS[(40, 40, 1)]
    custom = keras_stn.SpatialTransformer(localization=keras.layers.Flatten(), localization_max_size=8)
    assert tuple(custom(random_images(rng)).shape) == (BATCH, *SHAPE)  # a custom net is used as given


def test_large_input_is_the_identity_at_initialisation(rng):
    images = rng.random((1, 512, 512, 3)).astype("float32")
    np.testing.assert_array_equal(to_numpy(keras_stn.SpatialTransformer()(images)), images)


def test_keras_file_round_trip_of_a_bounded_localization(rng, tmp_path):
    shape = (130, 70, 1)  # pooled by 3 along the height, 2 along the width
    x = rng.random((2, *shape)).astype("float32")
    model = classifier(shape, out_dims=OUT, localization_max_size=50)
    compile_sgd(model, learning_rate=0.05)
    fit_one_step(model, x, np.array([0, 1]))
    assert layer_types(model.get_layer("st")) == ["MaxPooling2D", *PAPER_NET]
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("st").localization_max_size == 50
    assert loaded.get_layer("st").count_params() == model.get_layer("st").count_params()
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


def saved_without_config_keys(model, keys, tmp_path):
    """Saves `model` and returns the path of a copy whose "st" layer config lacks `keys`: a file
    saved before those options existed."""
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    layer_config = next(layer["config"] for layer in config["config"]["layers"] if layer["config"]["name"] == "st")
    for key in keys:
        del layer_config[key]
    entries["config.json"] = json.dumps(config).encode()
    older = tmp_path / "older.keras"
    with zipfile.ZipFile(older, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return older


def test_keras_file_saved_before_the_bound_loads_its_unbounded_net(rng, tmp_path):
    """A file whose layer config has no `localization_max_size` was saved when the default net
    had no bound: it loads with that net, whose weights it holds."""
    shape = (72, 72, 1)
    x = rng.random((2, *shape)).astype("float32")
    model = classifier(shape, out_dims=OUT, localization_max_size=None)
    loaded = keras.models.load_model(saved_without_config_keys(model, ["localization_max_size"], tmp_path))
    restored = loaded.get_layer("st")
    assert restored.localization_max_size is None and layer_types(restored) == PAPER_NET
    assert restored.count_params() == model.get_layer("st").count_params()
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


# --------------------------------------------------------------------------- configuration


def tps_config(grid_size):
    """How a thin-plate spline is stored in a layer config: it has an option, so not by name."""
    return {
        "module": "keras_stn.transforms",
        "class_name": "ThinPlateSpline",
        "config": {"grid_size": grid_size},
        "registered_name": "keras_stn>ThinPlateSpline",
    }


@pytest.mark.parametrize(
    "transform, serialized",
    [(name, name) for name in TRANSFORMS if name != "tps"]
    + [
        (transforms.Similarity(), "similarity"),
        ("tps", tps_config(3)),
        (transforms.ThinPlateSpline(grid_size=4), tps_config(4)),
    ],
)
def test_get_config_round_trip_default_localization(transform, serialized):
    layer = keras_stn.SpatialTransformer(
        out_dims=(5, 6),
        transform=transform,
        interpolation="bicubic",
        padding_mode="reflection",
        align_corners=True,
        data_format="channels_first",
        return_theta=True,
        localization_gradient_scale=0.25,
        name="st",
    )
    config = layer.get_config()
    json_config = json.loads(json.dumps(config))
    expected = {
        "out_dims": [5, 6],
        "transform": serialized,
        "localization": None,
        "interpolation": "bicubic",
        "padding_mode": "reflection",
        "align_corners": True,
        "data_format": "channels_first",
        "return_theta": True,
        "localization_gradient_scale": 0.25,
        "name": "st",
    }
    assert {key: json_config[key] for key in expected} == expected
    clone = keras_stn.SpatialTransformer.from_config(json_config)
    assert clone.get_config() == config
    assert clone.transform == transforms.get(transform) and clone.out_dims == (5, 6)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_get_config_round_trip_custom_localization(kind, rng):
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    layer = keras_stn.SpatialTransformer(out_dims=OUT, transform="attention", localization=localization)
    config = layer.get_config()
    assert config["localization"] == keras.saving.serialize_keras_object(localization)
    json_config = json.loads(json.dumps(config))
    clone = keras_stn.SpatialTransformer.from_config(copy.deepcopy(json_config))
    assert json.loads(json.dumps(clone.get_config())) == json_config
    assert type(clone.localization) is type(localization) and clone.localization is not localization
    assert clone.transform == transforms.Attention()
    assert tuple(clone(random_images(rng)).shape) == (BATCH, *OUT, 2)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_from_config_leaves_its_argument_unchanged(kind):
    """A config is data: building a layer from it must not consume it (a second from_config of
    the same dict, as when one config is used to build several layers, must work)."""
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    config = keras_stn.SpatialTransformer(localization=localization).get_config()
    pristine = copy.deepcopy(config)
    first = keras_stn.SpatialTransformer.from_config(config)
    assert config == pristine
    second = keras_stn.SpatialTransformer.from_config(config)
    assert first.get_config() == second.get_config() == pristine


def test_keras_file_round_trip(rng, tmp_path):
    """One model, one branch per case: every transform with the default localization, and the
    affine transform with a Sequential and with a functional localization. Trained two steps
    (so the head kernel and the localization weights are non-trivial), saved, loaded."""
    x = random_images(rng, batch=6)
    y = rng.integers(0, 3, size=6)
    cases = {f"st_{name}": {"transform": name} for name in TRANSFORMS}
    cases["st_tps_4"] = {"transform": transforms.ThinPlateSpline(grid_size=4)}
    cases["st_sequential_loc"] = {"localization": sequential_localization()}
    cases["st_functional_loc"] = {"localization": functional_localization()}
    inputs = keras.Input(SHAPE)
    logits = []
    for name, kwargs in cases.items():
        layer = keras_stn.SpatialTransformer(
            out_dims=OUT, interpolation="bicubic", padding_mode="border", name=name, **kwargs
        )
        logits.append(keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    model = keras.Model(inputs, keras.layers.Add()(logits))
    compile_sgd(model)
    fit_one_step(model, x, y)
    fit_one_step(model, x, y)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))
    for name in cases:
        saved, restored = model.get_layer(name), loaded.get_layer(name)
        assert isinstance(restored, keras_stn.SpatialTransformer), name
        assert np.abs(to_numpy(saved.head.kernel)).max() > 0, name  # trained, non-trivial
        assert restored.transform == saved.transform and restored.out_dims == OUT, name
        assert (restored.interpolation, restored.padding_mode) == ("bicubic", "border"), name
        assert type(restored.localization) is type(saved.localization), name
        assert len(restored.weights) == len(saved.weights), name
        for weight, restored_weight in zip(saved.weights, restored.weights):
            np.testing.assert_array_equal(to_numpy(restored_weight), to_numpy(weight), err_msg=name)
        warped = keras.Model(model.inputs[0], saved.output)
        warped_loaded = keras.Model(loaded.inputs[0], restored.output)
        np.testing.assert_array_equal(to_numpy(warped_loaded(x)), to_numpy(warped(x)), err_msg=name)


def test_keras_file_from_an_older_config_loads(rng, tmp_path):
    """A model saved before options were added has a layer config without their keys; it loads
    with their defaults. Simulated by deleting every key with a default from a saved file."""
    x = random_images(rng)
    model = classifier(out_dims=OUT)
    compile_sgd(model)
    fit_one_step(model, x, rng.integers(0, 3, size=BATCH))
    optional = ("transform", "localization", "interpolation", "padding_mode", "align_corners", "data_format")
    optional += ("return_theta", "localization_gradient_scale")
    loaded = keras.models.load_model(saved_without_config_keys(model, optional, tmp_path))
    restored = loaded.get_layer("st")
    assert restored.transform == transforms.Affine() and restored.out_dims == OUT
    assert (restored.interpolation, restored.padding_mode, restored.align_corners) == ("bilinear", "zeros", False)
    assert restored.data_format == keras.config.image_data_format() and not restored.return_theta
    assert restored.localization_gradient_scale == 1.0
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


# --------------------------------------------------------------------------- mixed precision


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    """Sets a mixed policy for one test; yields the compute dtype (float16 or bfloat16)."""
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield request.param.split("_")[1]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("transform", ["affine", "attention"])
def test_mixed_precision(transform, mixed_policy, rng):
    images = random_images(rng)
    layer = keras_stn.SpatialTransformer(transform=transform, return_theta=True)
    out, theta = layer(images)
    assert layer.compute_dtype == mixed_policy
    assert dtype_of(out) == mixed_policy
    assert dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (BATCH, 1)))
    # The identity is exact in the compute dtype: the output is the input rounded to it.
    rounded = to_numpy(ops.cast(ops.cast(images, mixed_policy), "float32"))
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), rounded)
    # Resampling is computed from float32 coordinates: close to the float32 result, within the
    # compute dtype's rounding (8 bits of mantissa for bfloat16, 11 for float16).
    resized = keras_stn.SpatialTransformer(transform=transform, out_dims=OUT)(images)
    assert dtype_of(resized) == mixed_policy
    atol = 2e-3 if mixed_policy == "float16" else 1.6e-2
    np.testing.assert_allclose(to_numpy(ops.cast(resized, "float32")), identity_resampled(images, OUT), atol=atol)


def test_mixed_precision_in_a_model(mixed_policy, rng):
    images = random_images(rng)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(out_dims=OUT, return_theta=True)(inputs)
    model = keras.Model(inputs, [warped, theta])
    out, theta = model.predict(images, verbose=0)
    assert dtype_of(out) == mixed_policy and dtype_of(theta) == "float32"
    assert out.shape == (BATCH, *OUT, 2) and theta.shape == (BATCH, 6)


# --------------------------------------------------------------------------- integer images


def integer_images(rng, dtype, shape=SHAPE):
    """Images of `dtype` and the float32 images of the same values."""
    high = 2 if dtype == "bool" else 256
    values = rng.integers(0, high, size=(BATCH, *shape))
    return values.astype(dtype), values.astype("float32")


def zooming_out(layer, images, rng):
    """Builds `layer` (attention) with a random head kernel and a zoom-out bias (scale 2), so the
    localization net matters and the output's corners lie outside the input."""
    layer.build(images.shape)
    layer.head.kernel.assign(rng.normal(scale=1e-3, size=tuple(layer.head.kernel.shape)).astype("float32"))
    layer.head.bias.assign(np.array([2, 0, 0], "float32"))
    return layer


@pytest.mark.parametrize("dtype", ["uint8", "int32", "bool"])
def test_integer_images_are_cast_to_the_compute_dtype(dtype, rng):
    images, floats = integer_images(rng, dtype)
    layer = keras_stn.SpatialTransformer(return_theta=True)
    out, theta = layer(images)
    assert dtype_of(out) == "float32" and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(out), floats)  # identity at initialisation
    sym_out, sym_theta = layer(keras.Input(SHAPE, dtype=dtype))
    assert (sym_out.dtype, sym_theta.dtype) == (dtype_of(out), dtype_of(theta))

    # A warp that reads the zero padding: the same numbers as for float32 images.
    layer = zooming_out(keras_stn.SpatialTransformer(transform="attention", out_dims=OUT), images, rng)
    warped, expected = to_numpy(layer(images)), to_numpy(layer(floats))
    assert warped.dtype == np.float32
    np.testing.assert_array_equal(warped, expected)
    np.testing.assert_array_equal(warped[:, 0, 0], 0)
    assert np.abs(warped).max() > 0


def test_integer_images_in_a_model_and_under_mixed_precision(mixed_policy, rng):
    images, floats = integer_images(rng, "uint8")
    inputs = keras.Input(SHAPE, dtype="uint8")
    warped, theta = keras_stn.SpatialTransformer(return_theta=True)(inputs)
    assert (warped.dtype, theta.dtype) == (mixed_policy, "float32")
    model = keras.Model(inputs, [warped, theta])
    out, theta = model(images)
    assert (dtype_of(out), dtype_of(theta)) == (mixed_policy, "float32")
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), floats)  # 0..255 are exact in both


# --------------------------------------------------------------------------- models and batches


def test_dynamic_batch(rng):
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras_stn.SpatialTransformer()(inputs))
    for batch in (1, 5):
        images = rng.random((batch, 28, 28, 1)).astype("float32")
        np.testing.assert_array_equal(to_numpy(model.predict(images, verbose=0)), images)


def test_inside_a_sequential_model(rng):
    images = random_images(rng)
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras_stn.SpatialTransformer(out_dims=OUT, transform="translation", name="st"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    assert model.output_shape == (None, 3)
    assert tuple(model.predict(images, verbose=0).shape) == (BATCH, 3)
    warped = keras.Model(model.inputs[0], model.get_layer("st").output)
    np.testing.assert_allclose(to_numpy(warped(images)), identity_resampled(images, OUT), atol=1e-5)
    # Deferred build: no Input, built on the first call.
    deferred = keras.Sequential([keras_stn.SpatialTransformer(out_dims=OUT), keras.layers.Flatten()])
    assert tuple(deferred(images).shape) == (BATCH, OUT[0] * OUT[1] * 2)


def test_inside_a_functional_model_with_theta_output(rng):
    images = random_images(rng)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(transform="attention", return_theta=True)(inputs)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(warped))
    model = keras.Model(inputs, [logits, theta, warped])
    logits, theta, warped = model.predict(images, verbose=0)
    assert logits.shape == (BATCH, 3)
    np.testing.assert_array_equal(theta, np.tile([1, 0, 0], (BATCH, 1)).astype("float32"))
    np.testing.assert_array_equal(warped, images)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "name, value, errors",
    [
        ("out_dims", (0, 5), ValueError),
        ("out_dims", (5, -1), ValueError),
        ("out_dims", (5,), ValueError),
        ("out_dims", (5, 5, 5), ValueError),
        ("out_dims", 3.5, (ValueError, TypeError)),
        ("out_dims", ("a", 2), TypeError),
        ("out_dims", (4.0, 5), TypeError),
        ("out_dims", True, (ValueError, TypeError)),
        ("out_dims", (True, 5), TypeError),
        ("out_dims", "ab", (ValueError, TypeError)),
        ("transform", "foo", ValueError),
        ("transform", 3, ValueError),
        ("interpolation", "linear", ValueError),
        ("interpolation", None, ValueError),
        ("padding_mode", "wrap", ValueError),
        ("data_format", "NHWC", ValueError),
        ("align_corners", "yes", TypeError),
        ("align_corners", 1, TypeError),
        ("return_theta", "yes", TypeError),
        ("localization_gradient_scale", 0, ValueError),
        ("localization_gradient_scale", -0.5, ValueError),
        ("localization_gradient_scale", float("inf"), ValueError),
        ("localization_gradient_scale", float("nan"), ValueError),
        ("localization_gradient_scale", "0.1", TypeError),
        ("localization_gradient_scale", True, TypeError),
        ("localization_max_size", 0, ValueError),
        ("localization_max_size", 2.5, TypeError),
        ("localization_max_size", "big", TypeError),
        ("localization_max_size", True, TypeError),
    ],
)
def test_bad_constructor_arguments(name, value, errors):
    with pytest.raises(errors) as info:
        keras_stn.SpatialTransformer(**{name: value})
    message = str(info.value)
    assert f"`{name}`" in message, message
    assert f"Got {name}={value!r}" in message, message


@pytest.mark.parametrize(
    "name, value, valid",
    [
        ("interpolation", "linear", ["bilinear", "nearest", "bicubic"]),
        ("padding_mode", "wrap", ["zeros", "border", "reflection"]),
        ("data_format", "NHWC", ["channels_last", "channels_first"]),
        ("transform", "foo", TRANSFORMS),
    ],
)
def test_bad_choices_list_the_valid_ones(name, value, valid):
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer(**{name: value})
    for choice in valid:
        assert repr(choice) in str(info.value)


def test_wrong_input_rank_raises():
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer()(np.zeros((BATCH, 16, 12), "float32"))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("symbolic", [False, True])
def test_a_single_image_is_told_to_add_a_batch_axis(data_format, symbolic):
    image = np.zeros(SHAPE if data_format == "channels_last" else SHAPE_CF, "float32")
    layer = keras_stn.SpatialTransformer(data_format=data_format)
    inputs = keras.Input(batch_shape=image.shape) if symbolic else image
    with pytest.raises(ValueError) as info:
        layer(inputs)
    message = str(info.value)
    layout = "(batch, height, width, channels)" if data_format == "channels_last" else "(batch, channels, height,"
    assert message.startswith("`inputs` of SpatialTransformer must be a rank-4") and layout in message, message
    assert "add a batch axis" in message and "x[None]" in message and "keras.ops.expand_dims(x, 0)" in message
    assert message.endswith(f"Got inputs with shape {image.shape}"), message
    # The layer is still usable once given a batch.
    assert tuple(layer(image[None]).shape) == (1, *image.shape)


@pytest.mark.parametrize("shape", [(BATCH, 16, 12), (BATCH, 3, 16, 12, 2), (16,)])
def test_other_input_ranks_name_the_expected_layout(shape):
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer()(np.zeros(shape, "float32"))
    message = str(info.value)
    assert message.startswith("`inputs` of SpatialTransformer must be a rank-4"), message
    assert message.endswith(f"Got inputs with shape {shape}"), message
    if len(shape) == 5:
        assert "use `SpatialTransformer3D`" in message, message


def test_symbolic_images_without_a_channel_axis_are_told_to_add_one():
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer()(keras.Input((16, 12)))
    message = str(info.value)
    assert "add a channel axis, e.g. `x[..., None]`" in message and "batch axis" not in message, message
    assert message.endswith("Got inputs with shape (None, 16, 12)"), message


# --------------------------------------------------------------------------- cross-backend load

LOAD_AND_PREDICT = """
import sys
import numpy as np
import keras
from keras import ops
import keras_stn  # registers the serialisable classes

directory, backend = sys.argv[1], sys.argv[2]
assert keras.config.backend() == backend, keras.config.backend()
model = keras.models.load_model(directory + "/model.keras")
outputs = model.predict(np.load(directory + "/x.npy"), verbose=0)
for index, output in enumerate(outputs):
    np.save(f"{directory}/{backend}_{index}.npy", keras.ops.convert_to_numpy(output))
"""


def run_under(backend, script, *args):
    """Runs `script` with `args` in a Python process under `backend`, with this checkout importable."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, check=False, text=True, timeout=300
    )


@pytest.mark.slow
def test_model_saved_here_loads_and_predicts_under_the_other_backends(rng, tmp_path):
    x = random_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(out_dims=OUT, transform="attention", return_theta=True)(inputs)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(warped))
    trained = keras.Model(inputs, logits)
    compile_sgd(trained, learning_rate=0.05)  # small enough to keep the logits O(1)
    trained.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    model = keras.Model(inputs, [logits, theta, warped])  # the same layers, more outputs
    expected = [to_numpy(t) for t in model.predict(x, verbose=0)]
    assert np.abs(expected[0]).max() < 10
    assert np.abs(expected[1] - [1, 0, 0]).max() > 1e-6  # trained: theta is no longer the identity
    model.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)

    for other in sorted({"tensorflow", "jax", "torch"} - {BACKEND}):
        result = run_under(other, LOAD_AND_PREDICT, str(tmp_path), other)
        assert result.returncode == 0, f"{other}:\n{result.stderr[-3000:]}"
        for index, want in enumerate(expected):
            got = np.load(tmp_path / f"{other}_{index}.npy")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"saved by {BACKEND}, loaded by {other}")


# A compiled model's optimizer is saved under the class Keras made for the saving backend:
# under torch `keras.src.backend.torch.optimizers.torch_adam.Adam`, which cannot be imported
# where torch is not installed, so `load_model(path)` fails there. The subprocess hides the
# saving backend's framework from every import finder, as if it were not installed
# (`sys.modules[name] = None` is not enough: scipy and torch probe `sys.modules` and
# `importlib.util.find_spec` for the frameworks they can hand arrays to).
LOAD_WITHOUT_THE_SAVING_FRAMEWORK = """
import sys
directory, backend, hidden = sys.argv[1], sys.argv[2], sys.argv[3]


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == hidden:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
import importlib.util
assert importlib.util.find_spec(hidden) is None

import numpy as np
import keras
import keras_stn  # registers the serialisable classes

assert keras.config.backend() == backend, keras.config.backend()
x, y = np.load(directory + "/x.npy"), np.load(directory + "/y.npy")
model = keras.saving.load_model(directory + "/model.keras", compile=False)
np.save(f"{directory}/{backend}.npy", keras.ops.convert_to_numpy(model.predict(x, verbose=0)))
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=1, verbose=0)  # recompiled here, it trains (from a fresh optimizer state)
assert hidden not in sys.modules, hidden
"""


@pytest.mark.slow
def test_compiled_model_loads_under_another_backend_without_the_saving_framework(rng, tmp_path):
    x = random_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    model = classifier(out_dims=OUT, transform="attention")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_one_step(model, x, y)
    expected = to_numpy(model.predict(x, verbose=0))
    model.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)

    for other in sorted({"tensorflow", "jax", "torch"} - {BACKEND}):
        result = run_under(other, LOAD_WITHOUT_THE_SAVING_FRAMEWORK, str(tmp_path), other, BACKEND)
        assert result.returncode == 0, f"saved by {BACKEND}, loaded by {other}:\n{result.stderr[-3000:]}"
        got = np.load(tmp_path / f"{other}.npy")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"saved by {BACKEND}, loaded by {other}")
