"""`keras_stn.ops.grid_sample` of images and volumes: outputs against the float64 NumPy reference
(`tests/reference.py`) and PyTorch's own `grid_sample`, in float32 and float64, in every mode;
the data formats; the identity grid; exact pixel centres, edges and corners.

Random grids are generated in pixel units and moved at least `margin` away from integer and
half-integer pixel positions: there `floor`/`round`, the zero-padding bounds and the
reflection/clip folds switch, so float32 and float64 may legitimately take different branches.
Points exactly on those positions have their own tests. Its gradients are in
test_ops_gradients.py, non-finite and huge coordinates in test_ops_edge_cases.py.
"""

import keras
import numpy as np
import pytest

from helpers import (
    DOWN,
    EXACT_SIZES,
    IMAGE_SHAPE,
    IN_SIZE,
    IN_SIZES,
    OUT_SIZES,
    UP,
    all_modes,
    all_paddings,
    all_ranks_and_modes,
    both_aligns,
    channels_first,
    channels_last,
    down,
    dtype_of,
    exact_positions_grid,
    identity_theta,
    input_shape,
    random_grid,
    random_images,
    random_theta,
    ranks_modes_and_shapes,
    sample_np,
    to_numpy,
)
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from reference import grid_sample_ref, torch_reference


@ranks_modes_and_shapes
@all_paddings
@both_aligns
@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_grid_sample_matches_reference(rank, interpolation, shape, padding_mode, align_corners, reference, rng):
    image_shape, out_size = input_shape(rank), OUT_SIZES[rank][shape]
    images = random_images(rng, image_shape)
    grid = random_grid(rng, image_shape[0], out_size, IN_SIZES[rank], align_corners)
    out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
    assert tuple(out.shape) == (image_shape[0], *out_size, image_shape[-1])
    assert dtype_of(out) == "float32"
    if reference == "numpy":
        expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    else:
        expected = torch_reference(images, grid, interpolation, padding_mode, align_corners).output
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)


@ranks_modes_and_shapes
@all_paddings
@both_aligns
def test_grid_sample_matches_reference_float64(rank, interpolation, shape, padding_mode, align_corners, rng, x64):
    image_shape, out_size = input_shape(rank), OUT_SIZES[rank][shape]
    images = random_images(rng, image_shape, "float64")
    grid = random_grid(rng, image_shape[0], out_size, IN_SIZES[rank], align_corners, dtype="float64")
    out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
    assert dtype_of(out) == "float64"
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-12, atol=1e-12)


@all_modes
@both_aligns
def test_grid_sample_reflection_far_outside_matches_reference(interpolation, align_corners, rng):
    """Coordinates several image widths outside fold back more than once."""
    images = random_images(rng, IMAGE_SHAPE)
    grid = random_grid(rng, 2, UP, IN_SIZE, align_corners, low=-6, high=6)
    expected = grid_sample_ref(images, grid, interpolation, "reflection", align_corners)
    out = sample_np(images, grid, interpolation, "reflection", align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_grid_sample_pixel_centres_edges_and_corners(interpolation, padding_mode, align_corners, reference, rng):
    in_size = EXACT_SIZES[align_corners]
    images = random_images(rng, (1, *in_size, 2))
    grid = exact_positions_grid(in_size, align_corners)
    if reference == "numpy":
        expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    else:
        expected = torch_reference(images, grid, interpolation, padding_mode, align_corners).output
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # Pixel centres read the pixels themselves, in every mode.
    start = 2 if align_corners else 3  # the grid runs in half pixels from one pixel outside
    centres = out[0, start : start + 2 * in_size[0] : 2, start : start + 2 * in_size[1] : 2]
    np.testing.assert_allclose(centres, images[0], rtol=1e-6, atol=1e-6)


@all_ranks_and_modes
@all_paddings
@both_aligns
def test_grid_sample_of_the_identity_grid_reproduces_images(rank, interpolation, padding_mode, align_corners, rng):
    images = random_images(rng, input_shape(rank))
    grid = affine_grid(identity_theta(2, rank), IN_SIZES[rank], align_corners)
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, images, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Data formats
# --------------------------------------------------------------------------------------------


@all_ranks_and_modes
@all_paddings
def test_grid_sample_channels_first_equals_channels_last(rank, interpolation, padding_mode, rng):
    images = random_images(rng, input_shape(rank))
    grid = random_grid(rng, 2, down(rank), IN_SIZES[rank], False)
    last = sample_np(images, grid, interpolation, padding_mode, False, data_format="channels_last")
    first = sample_np(channels_first(images), grid, interpolation, padding_mode, False, data_format="channels_first")
    assert first.shape == (2, 2, *down(rank))
    np.testing.assert_allclose(channels_last(first), last, rtol=1e-6, atol=1e-7)


def test_data_format_defaults_to_keras_config(rng):
    """Both samplers read `keras.config.image_data_format()` when `data_format` is not given."""
    images = random_images(rng, (2, 3, *IN_SIZE))  # channels_first: C=3
    grid = random_grid(rng, 2, DOWN, IN_SIZE, False)
    theta = random_theta(rng, 2, IN_SIZE, IN_SIZE, False)
    expected_grid = sample_np(images, grid, "bilinear", "zeros", False, data_format="channels_first")
    expected_affine = to_numpy(affine_sample(images, theta, data_format="channels_first"))
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        np.testing.assert_array_equal(to_numpy(grid_sample(images, grid)), expected_grid)
        np.testing.assert_array_equal(to_numpy(affine_sample(images, theta)), expected_affine)
    finally:
        keras.config.set_image_data_format(previous)
    assert expected_affine.shape == (2, 3, *IN_SIZE)
