"""Dtypes of the ops, for images and volumes: the output keeps the images' dtype (half precision
is computed in float32, float64 in float64), float64 coordinates are used in float64, and
non-floating inputs raise. The thin-plate spline's grid keeps its offsets' dtype."""

import re

import keras
import numpy as np
import pytest
from keras import ops

from helpers import (
    IN_SIZES,
    OUT_SIZES,
    all_ranks_and_modes,
    both_ranks,
    down,
    dtype_of,
    identity_theta,
    input_shape,
    per_rank,
    random_grid,
    random_images,
    random_theta,
    sample_np,
    to_numpy,
)
from keras_stn.ops import affine_grid, affine_sample, grid_sample, tps_grid
from reference import affine_grid_ref, grid_sample_ref, tps_grid_ref

DTYPE_TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-6}


def cast(x, dtype):
    return ops.cast(ops.convert_to_tensor(x), dtype)


def as_float32(x):
    return to_numpy(ops.cast(x, "float32"))


@all_ranks_and_modes
@pytest.mark.parametrize("grid_dtype", ["float32", "same"])
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
def test_grid_sample_keeps_images_dtype(rank, interpolation, grid_dtype, dtype, rng, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    grid_dtype = dtype if grid_dtype == "same" else grid_dtype
    images = cast(random_images(rng, input_shape(rank)), dtype)
    grid = cast(random_grid(rng, 2, down(rank), IN_SIZES[rank], False, margin=0.02), grid_dtype)
    out = grid_sample(images, grid, interpolation, "reflection")
    assert dtype_of(out) == dtype
    # float32 computation on the same (rounded) values: only the final rounding differs.
    expected = sample_np(as_float32(images), as_float32(grid), interpolation, "reflection", False)
    tol = DTYPE_TOLERANCE[dtype]
    np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    if dtype == "float64":
        # float64 images are sampled in float64, so they match the reference closely.
        reference = grid_sample_ref(to_numpy(images), as_float32(grid).astype(np.float64), interpolation, "reflection")
        np.testing.assert_allclose(to_numpy(out), reference, rtol=1e-12, atol=1e-12)


@both_ranks
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
def test_affine_sample_and_affine_grid_keep_dtype(rank, dtype, rng, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    images = cast(random_images(rng, input_shape(rank)), dtype)
    # As far from the pixel kinks as random thetas of each rank get in a few draws.
    theta = random_theta(rng, 2, IN_SIZES[rank], down(rank), False, margin={2: 1e-2, 3: 1e-4}[rank])
    tol = DTYPE_TOLERANCE[dtype]
    for theta_dtype in ("float32", dtype):
        out = affine_sample(images, cast(theta, theta_dtype), down(rank), "bilinear", "border")
        assert dtype_of(out) == dtype
        rounded_theta = as_float32(cast(theta, theta_dtype))
        expected = to_numpy(affine_sample(as_float32(images), rounded_theta, down(rank), "bilinear", "border"))
        np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    grid = affine_grid(cast(theta, dtype), down(rank))
    assert dtype_of(grid) == dtype
    expected = to_numpy(affine_grid(as_float32(cast(theta, dtype)), down(rank)))
    np.testing.assert_allclose(as_float32(grid), expected, rtol=tol, atol=tol)


@all_ranks_and_modes
def test_float64_coordinates_are_used_in_float64(rank, interpolation, rng, x64):
    """float32 images with a float64 grid (or theta) are sampled at the float64 coordinates:
    the only error left is the final rounding to float32. Rounding the coordinates to float32
    instead would move them by up to ~1e-7 of the width, visible on a steep image."""
    images = np.zeros(input_shape(rank), "float32")
    images[..., 1::2, :] = 1000  # +-1000 per pixel along the width: slopes that show any coordinate error
    out_size = OUT_SIZES[rank].get("up", down(rank))  # up-sampling where there is one
    grid = random_grid(rng, 2, out_size, IN_SIZES[rank], False, margin=0.05, dtype="float64")
    out = grid_sample(images, grid, interpolation, "reflection")
    assert dtype_of(out) == "float32"
    expected = grid_sample_ref(images, grid, interpolation, "reflection")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=2e-7, atol=1e-9)
    theta = random_theta(rng, 2, IN_SIZES[rank], out_size, False, dtype="float64")
    out = affine_sample(images, theta, out_size, interpolation, "reflection")
    assert dtype_of(out) == "float32"
    expected = grid_sample_ref(images, affine_grid_ref(theta, out_size), interpolation, "reflection")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=2e-7, atol=1e-9)


@per_rank("dtype", lambda rank: ["int32", "uint8", "int64", "bool"])
def test_non_floating_inputs_raise_type_error(rank, dtype, rng):
    images = random_images(rng, (1, *(4,) * rank, 1))
    grid = random_grid(rng, 1, (2,) * rank, (4,) * rank, False)
    theta = identity_theta(1, rank)
    bad = lambda x: np.zeros(x.shape, dtype)  # noqa: E731
    cases = [
        ("images", lambda: grid_sample(bad(images), grid)),
        ("grid", lambda: grid_sample(images, bad(grid))),
        ("images", lambda: affine_sample(bad(images), theta)),
        ("theta", lambda: affine_sample(images, bad(theta))),
        ("theta", lambda: affine_grid(bad(theta), (3,) * rank)),
    ]
    for name, call in cases:
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert f"`{name}`" in message and "Got" in message and "float" in message, message
        assert re.search(rf"`{name}` must have a floating dtype.*Got {name} with dtype", message), message


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_tps_grid_keeps_the_offsets_dtype(dtype, x64, rng):
    offsets = keras.ops.convert_to_tensor(rng.normal(scale=0.1, size=(2, 18)), dtype)
    grid = tps_grid(offsets, (4, 5))
    assert dtype_of(grid) == dtype
    reference = tps_grid_ref(to_numpy(keras.ops.cast(offsets, "float64")).reshape(2, 3, 3, 2), (4, 5))
    atol = 1e-12 if dtype == "float64" else 1e-2
    np.testing.assert_allclose(to_numpy(keras.ops.cast(grid, "float64")), reference, atol=atol)
