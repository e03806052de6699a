"""A custom non-affine transform (radial "barrel" distortion) written against the `Transform`
protocol: its grid, its warp through the generic grid path, inside `SpatialTransformer`, trained
and saved."""

import json

import keras
import numpy as np
import pytest

import keras_stn
from helpers import to_numpy
from keras_stn import transforms
from keras_stn._checks import sampling_options
from reference import grid_sample_ref


@keras.saving.register_keras_serializable(package="keras_stn_tests")
class Barrel(transforms.Transform):
    """Radial ("barrel") distortion with one parameter `k`: output point `p` reads the input
    at `p * (1 + k |p|^power)`. Not affine (no `to_theta`), so it exercises the generic grid path."""

    name = "barrel"
    num_params = 1

    def __init__(self, power=2):
        self.power = power

    def identity_params(self):
        return np.zeros(1, "float32")

    def grid_unchecked(self, params, size, align_corners):
        ops = keras.ops
        height, width = size

        def centres(n):  # n may be an int or a scalar tensor
            i = ops.cast(ops.arange(n), "float32")
            n = ops.cast(n, "float32")
            return (2 * i + 1 - n) / (ops.maximum(n - 1, 1) if align_corners else n)

        xs = ops.reshape(centres(width), (1, 1, -1))
        ys = ops.reshape(centres(height), (1, -1, 1))
        x, y = xs + 0 * ys, ys + 0 * xs
        radius = ops.sqrt(x * x + y * y)
        k = ops.reshape(ops.cast(params[:, 0], "float32"), (-1, 1, 1))
        scale = 1 + k * radius**self.power
        return ops.cast(ops.stack([x * scale, y * scale], axis=-1), keras.backend.standardize_dtype(params.dtype))

    def get_config(self):
        return {"power": self.power}


def barrel_grid_np(k, size, align_corners=False, power=2):
    height, width = size

    def centres(n):
        i = np.arange(n, dtype=np.float64)
        return (2 * i + 1 - n) / (max(n - 1, 1) if align_corners else n)

    y, x = np.meshgrid(centres(height), centres(width), indexing="ij")
    scale = 1 + np.reshape(k, (-1, 1, 1)) * np.sqrt(x * x + y * y) ** power
    return np.stack([x * scale, y * scale], axis=-1)


def test_custom_transform_grid_and_validation():
    barrel = Barrel()
    assert not hasattr(barrel, "to_theta")
    params = np.array([[0.0], [0.3], [-0.2]], "float32")
    for align_corners in (False, True):
        grid = to_numpy(barrel.grid(params, (5, 6), align_corners))
        np.testing.assert_allclose(grid, barrel_grid_np(params[:, 0], (5, 6), align_corners), atol=1e-6)
    with pytest.raises(ValueError, match=r"`params` of the 'barrel' transform must have shape \(batch, 1\). Got"):
        barrel.grid(np.zeros((2, 2), "float32"), (4, 4))


@pytest.mark.parametrize("align_corners", [False, True])
def test_custom_transform_warp(align_corners, rng):
    images = rng.random((3, 10, 12, 2)).astype("float32")
    params = np.array([[0.0], [0.3], [-0.25]], "float32")
    barrel = Barrel()
    options = sampling_options("bilinear", "zeros", align_corners, "channels_last")
    out = to_numpy(barrel.warp(images, params, None, options))
    assert out.shape == images.shape
    np.testing.assert_allclose(out[0], images[0], atol=1e-5)  # k = 0 is the identity
    grid = barrel_grid_np(params[:, 0], (10, 12), align_corners)
    np.testing.assert_allclose(out, grid_sample_ref(images, grid, align_corners=align_corners), atol=1e-5)
    assert not np.allclose(out[1], images[1], atol=1e-2)
    # An explicit size and channels_first go through the same generic path.
    options = sampling_options("bilinear", "border", align_corners, "channels_first")
    out = to_numpy(barrel.warp(images.transpose(0, 3, 1, 2), params, (7, 5), options))
    grid = barrel_grid_np(params[:, 0], (7, 5), align_corners)
    expected = grid_sample_ref(images, grid, padding_mode="border", align_corners=align_corners)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)


def barrel_model(out_dims=None):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="tanh")])
    inputs = keras.Input((12, 12, 2))
    warped, params = keras_stn.SpatialTransformer(
        out_dims=out_dims, transform=Barrel(), localization=localization, return_theta=True, name="st"
    )(inputs)
    return keras.Model(inputs, [warped, params])


def test_custom_transform_inside_spatial_transformer(rng):
    images = rng.random((3, 12, 12, 2)).astype("float32")
    model = barrel_model()
    layer = model.get_layer("st")
    warped, params = (to_numpy(t) for t in model(images))
    np.testing.assert_array_equal(params, np.zeros((3, 1), "float32"))
    np.testing.assert_allclose(warped, images, atol=1e-5)
    # Set the regressed k to 0.3 through the head bias: the layer must sample the barrel grid.
    layer.head.bias.assign(np.array([0.3], "float32"))
    warped, params = (to_numpy(t) for t in model(images))
    np.testing.assert_allclose(params, np.full((3, 1), 0.3), atol=1e-7)
    expected = grid_sample_ref(images, barrel_grid_np(np.full(3, 0.3), (12, 12)))
    np.testing.assert_allclose(warped, expected, atol=1e-5)
    # out_dims is honoured by the generic path too.
    small = barrel_model(out_dims=(5, 7))
    warped, _ = small(images)
    assert tuple(warped.shape) == (3, 5, 7, 2)
    expected = grid_sample_ref(images, barrel_grid_np(np.zeros(3), (5, 7)))
    np.testing.assert_allclose(to_numpy(warped), expected, atol=1e-5)


def test_custom_transform_trains_and_serialises(rng, tmp_path):
    images = rng.random((4, 12, 12, 2)).astype("float32")
    labels = rng.integers(0, 3, size=4)
    inputs = keras.Input((12, 12, 2))
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="tanh")])
    layer = keras_stn.SpatialTransformer(transform=Barrel(power=1), localization=localization, name="st")
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    assert abs(float(to_numpy(layer.head.bias)[0])) > 1e-6  # gradients reached k through the grid

    config = layer.get_config()
    assert config["transform"] == keras.saving.serialize_keras_object(Barrel(power=1))
    assert transforms.get(transforms.serialize(Barrel(power=1))) == Barrel(power=1)
    assert Barrel(power=1) != Barrel(power=2)
    json_config = json.loads(json.dumps(config))  # as stored in a .keras file (tuples become lists)
    clone = keras_stn.SpatialTransformer.from_config(json_config)
    assert clone.transform == Barrel(power=1)
    assert json.loads(json.dumps(clone.get_config())) == json_config

    path = str(tmp_path / "barrel.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("st").transform == Barrel(power=1)
    np.testing.assert_allclose(
        to_numpy(loaded.predict(images, verbose=0)), to_numpy(model.predict(images, verbose=0)), atol=1e-6
    )
