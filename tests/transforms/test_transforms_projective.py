"""The "projective" transform (a homography of 8 parameters): its registration, its grid against
a NumPy reference, points beyond the horizon, its warp, and its gradients."""

import keras
import numpy as np
import pytest

from helpers import central_differences, homography, homography_params, to_numpy, value_and_grad
from helpers import transform_warp as warp
from keras_stn import transforms
from keras_stn.ops import affine_grid
from reference import grid_sample_ref, projective_grid_ref

SHAPE = (16, 12, 2)
BATCH = 3


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
