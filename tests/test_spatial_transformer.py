"""SpatialTransformer layer, transforms and the stn-compatible functional API."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_stn
from helpers import BACKEND, to_numpy
from keras_stn import transforms
from reference import grid_sample_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFORMS = ["affine", "attention", "translation", "similarity"]


def small_model(transform="affine", out_dims=(12, 12), **kwargs):
    inputs = keras.Input((16, 16, 2))
    x = keras_stn.SpatialTransformer(out_dims=out_dims, transform=transform, name="st", **kwargs)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def train_steps(model, x, y, steps=2, lr=0.5):
    model.compile(keras.optimizers.SGD(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(steps):
        model.train_on_batch(x, y)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "name, params, theta",
    [
        ("affine", [1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]),
        ("attention", [0.5, 0.1, -0.2], [[0.5, 0, 0.1], [0, 0.5, -0.2]]),
        ("translation", [0.3, -0.4], [[1, 0, 0.3], [0, 1, -0.4]]),
        ("similarity", [0.6, 0.8, 0.1, 0.2], [[0.6, -0.8, 0.1], [0.8, 0.6, 0.2]]),
    ],
)
def test_transform_theta_and_grid(name, params, theta):
    transform = transforms.get(name)
    assert transform.num_params == len(params)
    params = np.array([params], "float32")
    np.testing.assert_allclose(to_numpy(transform.to_theta(params))[0], theta, rtol=1e-6)
    grid = to_numpy(transform.grid(params, (5, 7), align_corners=True))
    expected = to_numpy(keras_stn.ops.affine_grid(np.array([theta], "float32"), (5, 7), align_corners=True))
    np.testing.assert_allclose(grid, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_identity_params_give_the_identity_theta(name):
    transform = transforms.get(name)
    theta = to_numpy(transform.to_theta(transform.identity_params()[None]))
    np.testing.assert_array_equal(theta[0], [[1, 0, 0], [0, 1, 0]])


def test_transform_lookup_and_errors():
    instance = transforms.Similarity()
    assert transforms.get(instance) is instance
    assert transforms.get(transforms.serialize(instance)) == instance
    with pytest.raises(ValueError, match=r"'affine', 'attention', 'translation', 'similarity'.*Got transform='rotation'"):
        transforms.get("rotation")
    with pytest.raises(ValueError, match=r"`params`.*\(batch, 3\).*Got params with shape \(2, 6\)"):
        transforms.get("attention").grid(np.zeros((2, 6), "float32"), (4, 4))


def test_attention_half_scale_crops_the_centre(rng):
    # align_corners=True, input 2N-1 = 9 pixels, output N = 5: output pixel i sits at
    # normalised (i - 2) / 2, reads normalised (i - 2) / 4, i.e. input pixel 2 + i: the centre crop.
    images = rng.random((1, 9, 9, 2)).astype("float32")
    params = np.array([[0.5, 0, 0]], "float32")
    grid = transforms.get("attention").grid(params, (5, 5), align_corners=True)
    out = to_numpy(keras_stn.ops.grid_sample(images, grid, align_corners=True))
    np.testing.assert_allclose(out, images[:, 2:7, 2:7], atol=1e-6)


class Barrel(transforms.Transform):
    """A non-affine transform for the generic grid path: radial distortion x * (1 + k r^2)."""

    name = "barrel"
    num_params = 1

    def identity_params(self):
        return np.zeros(1, "float32")

    def grid_unchecked(self, params, height, width, align_corners):
        identity = np.array([[1, 0, 0, 0, 1, 0]], "float32")
        base = keras_stn.ops.affine_grid(identity, (height, width), align_corners)
        radius2 = keras.ops.sum(base**2, axis=-1, keepdims=True)
        return base * (1 + keras.ops.reshape(params, (-1, 1, 1, 1)) * radius2)


def test_custom_non_affine_transform(rng):
    images = rng.random((2, 10, 10, 1)).astype("float32")
    params = np.array([[0.0], [0.3]], "float32")
    out = to_numpy(Barrel().warp(images, params, None, "bilinear", "zeros", False, "channels_last"))
    np.testing.assert_allclose(out[0], images[0], atol=1e-5)
    grid = to_numpy(Barrel().grid(params, (10, 10)))
    np.testing.assert_allclose(out, grid_sample_ref(images, grid), atol=1e-5)
    layer = keras_stn.SpatialTransformer(transform=Barrel(), localization=keras.layers.Flatten())
    np.testing.assert_allclose(to_numpy(layer(images)), images, atol=1e-5)


# ---------------------------------------------------------------- layer


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_layer_is_identity_at_initialisation(transform, rng):
    images = rng.random((3, 16, 16, 2)).astype("float32")
    layer = keras_stn.SpatialTransformer(transform=transform, return_theta=True)
    out, theta = layer(images)
    np.testing.assert_array_equal(to_numpy(out), images)
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (3, 1)))


def test_layer_channels_first_and_output_shape(rng):
    images = rng.random((2, 3, 16, 12)).astype("float32")
    layer = keras_stn.SpatialTransformer(data_format="channels_first")
    np.testing.assert_array_equal(to_numpy(layer(images)), images)
    layer = keras_stn.SpatialTransformer(out_dims=(8, 5), data_format="channels_first", return_theta=True)
    out, theta = layer(images)
    assert tuple(out.shape) == (2, 3, 8, 5) == layer.compute_output_shape((2, 3, 16, 12))[0]
    assert tuple(theta.shape) == (2, 6) == layer.compute_output_shape((2, 3, 16, 12))[1]


def test_out_dims_resamples_like_the_reference(rng):
    images = rng.random((2, 16, 16, 2)).astype("float32")
    out = to_numpy(keras_stn.SpatialTransformer(out_dims=(7, 9))(images))
    identity = np.tile(np.array([[[1, 0, 0], [0, 1, 0]]], "float32"), (2, 1, 1))
    grid = to_numpy(keras_stn.ops.affine_grid(identity, (7, 9)))
    np.testing.assert_allclose(out, grid_sample_ref(images, grid), atol=1e-5)


def test_training_moves_theta_and_reaches_the_localization_net(rng):
    x = rng.random((8, 16, 16, 2)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model = small_model()
    layer = model.get_layer("st")
    head_before = to_numpy(layer.head.bias).copy()
    loc_before = [to_numpy(w).copy() for w in layer.localization.trainable_weights]
    train_steps(model, x, y, steps=3)
    assert np.abs(to_numpy(layer.head.bias) - head_before).max() > 1e-6
    assert np.abs(to_numpy(layer.head.kernel)).max() > 0
    changed = [np.abs(to_numpy(w) - b).max() > 0 for w, b in zip(layer.localization.trainable_weights, loc_before)]
    assert any(changed)


def test_custom_localization_and_dynamic_batch(rng):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="tanh")])
    inputs = keras.Input((16, 16, 2))
    outputs = keras_stn.SpatialTransformer(localization=localization, transform="attention")(inputs)
    model = keras.Model(inputs, outputs)
    for batch in (1, 5):
        images = rng.random((batch, 16, 16, 2)).astype("float32")
        np.testing.assert_array_equal(to_numpy(model.predict(images, verbose=0)), images)


def test_localization_must_produce_flat_features():
    layer = keras_stn.SpatialTransformer(localization=keras.layers.Conv2D(2, 3))
    with pytest.raises(ValueError, match=r"`localization` must map the input to a \(batch, features\).*Got"):
        layer.build((None, 16, 16, 2))
    with pytest.raises(TypeError, match=r"`localization` must be a Keras layer.*Got"):
        keras_stn.SpatialTransformer(localization=lambda x: x)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"out_dims": (0, 5)}, ValueError, r"`out_dims`.*positive.*Got out_dims=\(0, 5\)"),
        ({"out_dims": (5,)}, ValueError, r"`out_dims`.*Got out_dims=\(5,\)"),
        ({"out_dims": 3.5}, ValueError, r"`out_dims`.*Got out_dims=3.5"),
        ({"out_dims": (4.0, 5)}, TypeError, r"`out_dims`.*integers.*Got"),
        ({"out_dims": (True, 5)}, TypeError, r"`out_dims`.*integers.*Got"),
        ({"transform": "foo"}, ValueError, r"`transform` must be one of.*Got transform='foo'"),
        ({"interpolation": "linear"}, ValueError, r"`interpolation` must be one of 'bilinear', 'nearest', 'bicubic'. Got"),
        ({"padding_mode": "wrap"}, ValueError, r"`padding_mode` must be one of 'zeros', 'border', 'reflection'. Got"),
        ({"data_format": "NHWC"}, ValueError, r"`data_format` must be one of.*Got data_format='NHWC'"),
        ({"align_corners": "yes"}, TypeError, r"`align_corners` must be a bool. Got align_corners='yes'"),
    ],
)
def test_layer_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        keras_stn.SpatialTransformer(**kwargs)


def test_layer_rejects_wrong_rank():
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer()(np.zeros((2, 16, 16), "float32"))


def test_get_config_round_trip():
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    layer = keras_stn.SpatialTransformer(
        out_dims=(5, 6),
        transform="similarity",
        localization=localization,
        interpolation="bicubic",
        padding_mode="reflection",
        align_corners=True,
        return_theta=True,
    )
    config = layer.get_config()
    json.dumps(config)
    clone = keras_stn.SpatialTransformer.from_config(config)
    assert clone.get_config() == config
    assert clone.transform == transforms.Similarity() and clone.out_dims == (5, 6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_keras_file_round_trip(transform, rng, tmp_path):
    x = rng.random((6, 16, 16, 2)).astype("float32")
    model = small_model(transform, interpolation="bicubic", padding_mode="border")
    train_steps(model, x, rng.integers(0, 3, size=6))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)), atol=1e-6)


def test_keras_file_round_trip_with_custom_localization(rng, tmp_path):
    x = rng.random((4, 16, 16, 2)).astype("float32")
    localization = keras.Sequential([keras.layers.Conv2D(3, 3, strides=2), keras.layers.Flatten(), keras.layers.Dense(8)])
    inputs = keras.Input((16, 16, 2))
    warped = keras_stn.SpatialTransformer(localization=localization, out_dims=(8, 8), name="st")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(warped)))
    train_steps(model, x, rng.integers(0, 3, size=4))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    keras.config.set_dtype_policy(policy)
    try:
        layer = keras_stn.SpatialTransformer(out_dims=(8, 8), return_theta=True)
        images = rng.random((2, 16, 16, 2)).astype("float32")
        out, theta = layer(images)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(theta.dtype) == "float32"
    expected = to_numpy(keras_stn.SpatialTransformer(out_dims=(8, 8))(images))
    np.testing.assert_allclose(to_numpy(out).astype("float32"), expected, atol=2e-2)


@pytest.mark.slow
def test_model_saved_here_loads_under_the_other_backends(rng, tmp_path):
    x = rng.random((4, 16, 16, 2)).astype("float32")
    model = small_model("attention", out_dims=(10, 10))
    train_steps(model, x, rng.integers(0, 3, size=4))
    model.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", to_numpy(model.predict(x, verbose=0)))
    script = (
        "import sys, numpy as np, keras, keras_stn\n"
        "d = sys.argv[1]\n"
        "m = keras.models.load_model(d + '/model.keras')\n"
        "y = keras.ops.convert_to_numpy(m.predict(np.load(d + '/x.npy'), verbose=0))\n"
        "print(keras.config.backend(), float(np.abs(y - np.load(d + '/y.npy')).max()))\n"
    )
    for other in {"tensorflow", "jax", "torch"} - {BACKEND}:
        env = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        backend, error = result.stdout.strip().splitlines()[-1].split()
        assert backend == other and float(error) < 1e-5, result.stdout


# ---------------------------------------------------------------- stn-compatible functional API


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_functional_identity_is_exact_for_every_float_dtype(dtype, rng, x64):
    images = keras.ops.cast(rng.random((2, 9, 11, 3)), dtype)
    theta = keras.ops.cast(np.tile([[1, 0, 0, 0, 1, 0]], (2, 1)), dtype)
    out = keras_stn.spatial_transformer_network(images, theta)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_array_equal(to_numpy(keras.ops.cast(out, "float32")), to_numpy(keras.ops.cast(images, "float32")))


def test_functional_sanity_check_rotations(rng):
    """The original package's check: rotate images by 45 degrees (output size = input size)."""
    images = rng.random((4, 32, 32, 3)).astype("float32")
    angle = np.pi / 4
    theta = np.tile([[np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0]], (4, 1)).astype("float32")
    out = to_numpy(keras_stn.spatial_transformer_network(images, theta))
    # Independent check: pixel p <-> normalised 2p/(W-1) - 1 (corners aligned), rotate, bilinear.
    p = np.arange(32) * 2 / 31 - 1
    y, x = np.meshgrid(p, p, indexing="ij")
    src_x = (np.cos(angle) * x - np.sin(angle) * y + 1) * 31 / 2
    src_y = (np.sin(angle) * x + np.cos(angle) * y + 1) * 31 / 2
    x0, y0 = np.floor(src_x).astype(int), np.floor(src_y).astype(int)
    expected = np.zeros_like(out)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - np.abs(src_x - xi)) * (1 - np.abs(src_y - yi))
            ok = (xi >= 0) & (xi < 32) & (yi >= 0) & (yi < 32)
            expected += (w * ok)[None, :, :, None] * images[:, np.clip(yi, 0, 31), np.clip(xi, 0, 31)]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # A quarter turn maps pixels onto pixels: output (i, j) reads input (j, W-1-i) = rot90.
    quarter = np.tile([[0, -1, 0, 1, 0, 0]], (4, 1)).astype("float32")
    out = to_numpy(keras_stn.spatial_transformer_network(images, quarter))
    np.testing.assert_allclose(out, np.rot90(images, k=1, axes=(1, 2)), atol=1e-6)


def test_functional_out_dims_and_matrix_theta(rng):
    images = rng.random((2, 10, 12, 1)).astype("float32")
    theta = rng.normal(size=(2, 2, 3)).astype("float32")
    flat = to_numpy(keras_stn.spatial_transformer_network(images, theta.reshape(2, 6), out_dims=(7, 5)))
    matrix = to_numpy(keras_stn.spatial_transformer_network(images, theta, out_dims=(7, 5)))
    np.testing.assert_array_equal(flat, matrix)
    grid = to_numpy(keras_stn.ops.affine_grid(theta, (7, 5), align_corners=True))
    np.testing.assert_allclose(flat, grid_sample_ref(images, grid, align_corners=True), atol=1e-5)


@pytest.mark.parametrize(
    "images_shape, theta_shape, dtype, error, pattern",
    [
        ((2, 8, 8, 1), (2, 5), "float32", ValueError, r"`theta` must have shape \(batch, 2, 3\) or \(batch, 6\). Got theta with shape \(2, 5\)"),
        ((2, 8, 8, 1), (2, 3, 3), "float32", ValueError, r"`theta`.*Got theta with shape \(2, 3, 3\)"),
        ((2, 8, 8, 1), (6,), "float32", ValueError, r"`theta`.*Got theta with shape \(6,\)"),
        ((2, 8, 8, 1), (3, 6), "float32", ValueError, r"same batch size.*Got input_fmap with shape \(2, 8, 8, 1\)"),
        ((8, 8, 1), (2, 6), "float32", ValueError, r"`input_fmap` must be a rank-4.*Got input_fmap with shape \(8, 8, 1\)"),
        ((2, 8, 8, 1), (2, 6), "int32", TypeError, r"floating dtype.*Got"),
    ],
)
def test_functional_rejects_bad_inputs(images_shape, theta_shape, dtype, error, pattern):
    images = np.zeros(images_shape, dtype)
    with pytest.raises(error, match=pattern):
        keras_stn.spatial_transformer_network(images, np.zeros(theta_shape, "float32"))


def test_functional_rejects_bad_out_dims():
    with pytest.raises(ValueError, match=r"`out_dims`.*Got out_dims=\(3, -1\)"):
        keras_stn.spatial_transformer_network(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 6), "float32"), (3, -1))
