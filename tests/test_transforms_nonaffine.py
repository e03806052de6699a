"""The non-affine built-in transforms, "projective" (homography) so far: numbers against NumPy
references, defining properties, gradients, the layer and argument checks."""

import re

import keras
import numpy as np
import pytest

import keras_stn
from helpers import to_numpy, value_and_grad
from keras_stn import transforms
from keras_stn.ops import affine_grid
from reference import affine_grid_ref, grid_sample_ref, projective_grid_ref

SHAPE = (16, 12, 2)
BATCH = 3
IDENTITY_THETA = np.array([[[1, 0, 0], [0, 1, 0]]], "float32")


def homography_params(rng, batch=BATCH, perspective=0.3):
    """Random 8-parameter homographies near the identity, visible everywhere on [-1, 1]²
    (|g| + |h| < 1 keeps w = g x + h y + 1 > 0 there)."""
    params = np.tile([1, 0, 0, 0, 1, 0, 0, 0], (batch, 1)) + rng.uniform(-0.3, 0.3, (batch, 8))
    params[:, 6:] = rng.uniform(-perspective, perspective, (batch, 2))
    return params


def homography(params):
    """The (B, 3, 3) matrix of the documented row-major layout with H[2, 2] = 1."""
    params = np.asarray(params)
    return np.concatenate([params, np.ones((len(params), 1))], axis=1).reshape(-1, 3, 3)


def warp(transform, images, params, size=None, interpolation="bilinear", padding_mode="zeros", align_corners=False):
    return transform.warp(images, params, size, interpolation, padding_mode, align_corners, "channels_last")


# --------------------------------------------------------------------------- projective


def test_projective_is_registered_with_eight_params():
    projective = transforms.get("projective")
    assert type(projective) is transforms.Projective and transforms.TRANSFORMS["projective"] is transforms.Projective
    assert projective.num_params == 8 and not hasattr(projective, "to_theta")
    identity = projective.identity_params()
    assert identity.dtype == np.float32
    np.testing.assert_array_equal(identity, [1, 0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (8, 8)])
def test_projective_with_an_affine_matrix_is_affine_grid(align_corners, size, rng):
    theta = rng.normal(size=(BATCH, 6)).astype("float32")
    params = np.concatenate([theta, np.zeros((BATCH, 2), "float32")], axis=1)
    grid = to_numpy(transforms.Projective().grid(params, size, align_corners))
    np.testing.assert_array_equal(grid, to_numpy(affine_grid(theta, size, align_corners)))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4)])
def test_projective_grid_matches_numpy(align_corners, size, rng):
    params = homography_params(rng).astype("float32")
    grid = to_numpy(transforms.Projective().grid(params, size, align_corners))
    assert grid.shape == (BATCH, *size, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, projective_grid_ref(homography(params), size, align_corners), rtol=1e-5, atol=1e-6)


def test_projective_points_beyond_the_horizon_get_nan():
    # w = 2 x + 1 with x the centres -5/6, -1/2, ..., 5/6 of 6 columns: w < 0 at the first
    # column, exactly 0 at the second, positive after.
    params = np.array([[1, 0, 0, 0, 1, 0, 2, 0]], "float32")
    grid = to_numpy(transforms.Projective().grid(params, (3, 6)))
    expected = projective_grid_ref(homography(params), (3, 6))
    assert np.isnan(grid[:, :, :2]).all() and np.isfinite(grid[:, :, 2:]).all()
    np.testing.assert_array_equal(np.isnan(grid), np.isnan(expected))
    np.testing.assert_allclose(grid[:, :, 2:], expected[:, :, 2:], rtol=1e-6)


@pytest.mark.parametrize(
    "interpolation, padding_mode",
    [("bilinear", "zeros"), ("bilinear", "border"), ("bilinear", "reflection"), ("bicubic", "zeros")],
)
@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_warp_matches_a_numpy_homography_warp(interpolation, padding_mode, align_corners, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    params = homography_params(rng, perspective=0.6).astype("float32")
    # In the first sample w = 2 x + 1 is negative on columns 0-2 of 11, which read nothing, and
    # 3/11 or more on the others: no point so close to the horizon that float32 rounding of w
    # moves its (huge) coordinate visibly, which reflection padding would show.
    params[0] = [1, 0, 0, 0, 1, 0, 2, 0]
    out = to_numpy(warp(transforms.Projective(), images, params, (9, 11), interpolation, padding_mode, align_corners))
    grid = projective_grid_ref(homography(params), (9, 11), align_corners)
    assert np.isnan(grid[0, :, :3]).all() and not np.isnan(grid[0, :, 3:]).any()
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_projective_gradients_stay_finite_across_the_horizon(padding_mode, interpolation, rng):
    images = rng.random((2, *SHAPE)).astype("float32")
    # In the first sample w = 4 x + 1 is exactly 0 on column 4 of 12 (x = -1/4) and negative
    # left of it.
    params = np.array([[1, 0, 0, 0, 1, 0, 4, 0], [0.9, 0.1, 0, -0.1, 1, 0.1, 0.3, -0.4]], "float32")
    weights = keras.ops.convert_to_tensor(rng.normal(size=(2, 16, 12, 2)).astype("float32"))

    def loss(images, params):
        out = warp(transforms.Projective(), images, params, None, interpolation, padding_mode)
        return keras.ops.sum(out * weights)

    value, (image_grad, param_grad) = value_and_grad(loss, images, params)
    assert np.isfinite(value) and np.isfinite(image_grad).all() and np.isfinite(param_grad).all()
    assert np.abs(param_grad).min() > 0  # every parameter of both samples gets a gradient
    out = to_numpy(warp(transforms.Projective(), images, params, None, interpolation, padding_mode))
    np.testing.assert_array_equal(out[0, :, :5], 0)
    assert np.abs(out[0, :, 5:]).max() > 0


def central_differences(fn, params, step=1e-6):
    gradient = np.zeros_like(params)
    for index in np.ndindex(params.shape):
        delta = np.zeros_like(params)
        delta[index] = step
        gradient[index] = (fn(params + delta) - fn(params - delta)) / (2 * step)
    return gradient


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_gradient_matches_finite_differences(align_corners, x64, rng):
    params = homography_params(rng, batch=2, perspective=0.4)
    weights = rng.normal(size=(2, 5, 7, 2))
    projective = transforms.Projective()

    def loss(params):
        return keras.ops.sum(projective.grid(params, (5, 7), align_corners) * keras.ops.convert_to_tensor(weights))

    value, (gradient,) = value_and_grad(loss, params)
    assert value.dtype == np.float64
    expected = central_differences(lambda p: float(to_numpy(loss(p))), params)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- in the layer


@pytest.mark.parametrize("transform", ["projective"])
def test_layer_warps_with_the_regressed_params(transform, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    layer = keras_stn.SpatialTransformer(
        out_dims=(9, 11), transform=transform, localization=keras.layers.Flatten(), return_theta=True
    )
    layer.build(images.shape)
    out, params = (to_numpy(t) for t in layer(images))
    np.testing.assert_array_equal(params, np.tile(layer.transform.identity_params(), (BATCH, 1)))
    identity = affine_grid_ref(np.tile(IDENTITY_THETA, (BATCH, 1, 1)), (9, 11))
    np.testing.assert_allclose(out, grid_sample_ref(images, identity), atol=1e-5)
    bias = layer.transform.identity_params() + rng.normal(scale=0.1, size=layer.transform.num_params)
    layer.head.bias.assign(bias.astype("float32"))
    out, params = (to_numpy(t) for t in layer(images))
    grid = projective_grid_ref(homography(params), (9, 11))
    np.testing.assert_allclose(out, grid_sample_ref(images, grid), atol=2e-5)


@pytest.mark.parametrize("transform", ["projective"])
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


@pytest.mark.parametrize("transform", ["projective"])
def test_layer_with_a_dynamic_spatial_size(transform, rng):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, keras_stn.SpatialTransformer(transform=transform, localization=localization)(inputs))
    for shape in [SHAPE, (7, 9, 2)]:
        images = rng.random((2, *shape)).astype("float32")
        np.testing.assert_allclose(to_numpy(model.predict(images, verbose=0)), images, atol=1e-5)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("transform, width", [("projective", 8)])
def test_wrong_params_width_or_dtype(transform, width):
    transform = transforms.get(transform)
    for shape in [(2, width - 1), (2, width + 2), (width,)]:
        with pytest.raises(
            ValueError, match=rf"`params`.*\(batch, {width}\)\. Got params with shape {re.escape(str(shape))}"
        ):
            transform.grid(np.zeros(shape, "float32"), (4, 4))
    with pytest.raises(TypeError, match=r"`params`.*floating.*Got params with dtype int32"):
        transform.grid(np.zeros((2, width), "int32"), (4, 4))
