"""Edge cases of the samplers, for images and volumes: non-finite and huge coordinates, huge and
NaN thetas, degenerate transforms, single-pixel rows and columns, empty batches and grids, zero
channels, and the int32 pixel limit of the portable sampler.

The tests marked with `sampler` run on the portable `keras.ops` sampler of every backend and, on
the torch backend, on PyTorch's kernel too (`keras_stn/ops/_backend/torch_kernel.py`)."""

import numpy as np
import pytest
from keras import ops

from helpers import (
    BACKEND,
    DOWN,
    IMAGE_SHAPE,
    IN_SIZE,
    IN_SIZES,
    all_modes,
    all_paddings,
    all_ranks_and_modes,
    both_aligns,
    both_ranks,
    down,
    identity_theta,
    input_shape,
    loss_weights,
    random_grid,
    random_images,
    random_theta,
    sample_np,
    samplers,
    to_numpy,
    using,
    value_and_grad,
)
from keras_stn.ops import affine_grid, affine_sample, grid_sample, sampling
from reference import affine_grid_ref, grid_sample_ref, torch_reference


def sampled_loss(weights, interpolation, padding_mode, align_corners):
    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    return loss


# --------------------------------------------------------------------------------------------
# Non-finite and huge coordinates
# --------------------------------------------------------------------------------------------

# Output point (b, i, j) or (b, d, h, w) -> coordinates (x, y) or (x, y, z): NaN and inf first,
# then huge ones (padded, never out of bounds).
SPECIAL_POINTS = {
    2: {
        (0, 0, 0): (np.nan, 0.1),
        (0, 0, 1): (0.2, np.inf),
        (0, 1, 2): (-np.inf, -np.inf),
        (1, 2, 3): (np.nan, np.nan),
        (1, 3, 4): (np.inf, -0.3),
        (1, 0, 2): (np.nan, -np.inf),
        (0, 2, 0): (1e30, 0.1),
        (0, 3, 1): (-1e30, 0.2),
        (1, 0, 0): (0.3, 1e30),
        (1, 1, 1): (-1e30, -1e30),
        (1, 1, 4): (1e30, -1e30),
        (0, 3, 4): (1e30, 1e30),
    },
    3: {
        (0, 0, 0, 0): (np.nan, 0.1, 0.2),
        (0, 1, 2, 3): (0.2, 0.1, np.inf),
        (1, 2, 3, 4): (-np.inf, np.nan, -np.inf),
        (1, 0, 1, 2): (0.3, -np.inf, 0.1),
        (0, 2, 0, 1): (1e30, 0.1, -1e30),
        (1, 1, 3, 0): (0.2, 1e30, 1e30),
    },
}


def special_grid(rng, rank, align_corners):
    """A random grid of the rank's `down` size with the `SPECIAL_POINTS`, and the masks of its
    non-finite and its huge points."""
    grid = random_grid(rng, 2, down(rank), IN_SIZES[rank], align_corners, margin=0.02)
    for index, point in SPECIAL_POINTS[rank].items():
        grid[index] = point
    non_finite = ~np.isfinite(grid).all(axis=-1)
    huge = (np.abs(grid) > 1e20).any(axis=-1) & ~non_finite
    assert non_finite.sum() + huge.sum() == len(SPECIAL_POINTS[rank])
    return grid, non_finite, huge


@all_ranks_and_modes
@all_paddings
@both_aligns
def test_grid_sample_non_finite_and_huge_coordinates(rank, interpolation, padding_mode, align_corners, rng):
    images = random_images(rng, input_shape(rank)) + 0.5  # no zeros in the images
    grid, non_finite, huge = special_grid(rng, rank, align_corners)
    normal = ~(non_finite | huge)
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[non_finite], 0)
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out[normal], expected[normal], rtol=1e-5, atol=1e-5)
    # The same points in a grid without the special ones give the same values.
    clean = np.where((non_finite | huge)[..., None], 0, grid).astype("float32")
    alone = sample_np(images, clean, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out[normal], alone[normal], rtol=1e-6, atol=1e-7)
    if padding_mode == "zeros":
        np.testing.assert_array_equal(out[huge], 0)
    elif padding_mode == "border":  # clamped to the edge pixels
        np.testing.assert_allclose(out[huge], expected[huge], rtol=1e-5, atol=1e-5)
    else:  # folded back somewhere into the image: the exact point is rounding noise
        assert np.abs(out[huge]).max() <= 1.5 * images.max()
        assert np.abs(out[huge]).min() > 0 or interpolation == "bicubic"


@all_ranks_and_modes
@all_paddings
@both_aligns
def test_grid_sample_gradients_finite_with_non_finite_and_huge_coordinates(
    rank, interpolation, padding_mode, align_corners, rng
):
    images = random_images(rng, input_shape(rank))
    grid, non_finite, huge = special_grid(rng, rank, align_corners)
    weights = loss_weights(rng, (2, *down(rank), 2), "float32")
    _, (d_images, d_grid) = value_and_grad(
        sampled_loss(weights, interpolation, padding_mode, align_corners), images, grid
    )
    assert np.isfinite(d_images).all()
    assert np.isfinite(d_grid).all()
    np.testing.assert_array_equal(d_grid[non_finite], 0)
    # Gradients of the other points are those of the grid without the special points.
    normal = ~(non_finite | huge)
    clean = np.where((non_finite | huge)[..., None], 0, grid).astype("float32")
    _, (_, d_clean) = value_and_grad(sampled_loss(weights, interpolation, padding_mode, align_corners), images, clean)
    np.testing.assert_allclose(d_grid[normal], d_clean[normal], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Huge, NaN and degenerate thetas
# --------------------------------------------------------------------------------------------


@all_paddings
@both_aligns
@pytest.mark.parametrize("shift", [3e38, -3e38, 1e30])
def test_affine_sample_with_huge_theta_reads_the_padding(shift, padding_mode, align_corners, rng):
    """Theta entries near float32's maximum once overflowed the pixel coordinates to inf, which
    read 0 even under border padding. They are bounded like grid coordinates: a translation
    that far right reads the padding there, i.e. 0 or the right (left) edge column."""
    images = random_images(rng, (2, 5, 6, 2)) + 0.5
    theta = np.tile(np.array([[1, 0, shift], [0, 1, 0]], "float32"), (2, 1, 1))
    out = to_numpy(affine_sample(images, theta, padding_mode=padding_mode, align_corners=align_corners))
    _, (d_images, d_theta) = value_and_grad(
        lambda x, t: ops.sum(affine_sample(x, t, padding_mode=padding_mode, align_corners=align_corners)),
        images,
        theta,
    )
    assert np.isfinite(d_images).all() and np.isfinite(d_theta).all()
    if padding_mode == "zeros":
        np.testing.assert_array_equal(out, 0)
    elif padding_mode == "border":
        edge = images[:, :, -1:] if shift > 0 else images[:, :, :1]
        np.testing.assert_allclose(out, np.broadcast_to(edge, out.shape), rtol=1e-6)
    else:  # folded back into the image somewhere: the exact point is rounding noise
        assert np.isfinite(out).all() and out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6


@all_modes
@all_paddings
def test_affine_sample_nan_theta_zeroes_its_own_image_only(interpolation, padding_mode, rng):
    """A NaN anywhere in an image's theta makes all its coordinates NaN: that image reads 0 with
    zero gradients, and the other images of the batch are untouched."""
    images = random_images(rng, (3, *IN_SIZE, 2)) + 0.5
    theta = identity_theta(3)
    theta[1, 1, 0] = np.nan
    theta[2, 0, 2] = 0.3

    def loss(images, theta):
        return ops.sum(affine_sample(images, theta, DOWN, interpolation, padding_mode))

    out = to_numpy(affine_sample(images, theta, DOWN, interpolation, padding_mode))
    _, (d_images, d_theta) = value_and_grad(loss, images, theta)
    np.testing.assert_array_equal(out[1], 0)
    assert np.isfinite(d_images).all() and np.isfinite(d_theta).all()
    np.testing.assert_array_equal(d_images[1], 0)
    np.testing.assert_array_equal(d_theta[1], 0)
    for b in (0, 2):
        alone = to_numpy(affine_sample(images[b : b + 1], theta[b : b + 1], DOWN, interpolation, padding_mode))
        np.testing.assert_allclose(out[b : b + 1], alone, rtol=1e-6, atol=1e-7)
        assert np.abs(out[b]).min() > 0 or padding_mode == "zeros" or interpolation == "bicubic"


@all_modes
@all_paddings
def test_affine_sample_zero_scale_reads_one_point(interpolation, padding_mode, rng):
    """A degenerate transform (attention with s = 0) maps the whole output to the one point
    (tx, ty): every output pixel is the sample there, with finite gradients."""
    images = random_images(rng, IMAGE_SHAPE)
    theta = np.array([[[0, 0, 0.23], [0, 0, -0.41]], [[0, 0, -0.6], [0, 0, 0.35]]], "float32")
    out = to_numpy(affine_sample(images, theta, DOWN, interpolation, padding_mode))
    point = theta[:, :, 2].reshape(2, 1, 1, 2)
    expected = to_numpy(grid_sample(images, point, interpolation, padding_mode))  # (2, 1, 1, C)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6, atol=1e-6)
    _, grads = value_and_grad(
        lambda x, t: ops.sum(affine_sample(x, t, DOWN, interpolation, padding_mode)), images, theta
    )
    assert all(np.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------------------------
# Degenerate shapes
# --------------------------------------------------------------------------------------------


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("in_size", [(1, 1), (1, 6)], ids=str)
def test_single_pixel_rows_and_columns(interpolation, padding_mode, align_corners, in_size, rng):
    images = random_images(rng, (2, *in_size, 2))
    grid = random_grid(rng, 2, DOWN, in_size, align_corners)
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    expected = torch_reference(images, grid, interpolation, padding_mode, align_corners).output
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    theta = random_theta(rng, 2, in_size, DOWN, align_corners)
    fused = to_numpy(affine_sample(images, theta, DOWN, interpolation, padding_mode, align_corners))
    grid = affine_grid_ref(theta.astype(np.float64), DOWN, align_corners)
    reference = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)
    identity = identity_theta(2)
    out = affine_sample(images, identity, None, interpolation, padding_mode, align_corners)
    np.testing.assert_array_equal(to_numpy(out), images)


@both_ranks
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_empty_batch_and_empty_grid(rank, op):
    """An empty batch (as PyTorch's grid_sample allows) or an empty grid gives an empty output."""
    interpolation = "bicubic" if rank == 2 else "bilinear"
    images = np.zeros((0, *IN_SIZES[rank], 2), "float32")
    if op == "grid_sample":
        out = grid_sample(images, np.zeros((0, *down(rank), rank), "float32"), interpolation, "reflection")
        empty_grid = grid_sample(
            np.ones(input_shape(rank), "float32"), np.zeros((2, 0, *(3,) * (rank - 1), rank), "float32")
        )
        assert tuple(empty_grid.shape) == (2, 0, *(3,) * (rank - 1), 2)
    else:
        out = affine_sample(
            images, np.zeros((0, rank * (rank + 1)), "float32"), down(rank), interpolation, "reflection"
        )
    assert tuple(out.shape) == (0, *down(rank), 2)
    assert to_numpy(out).shape == (0, *down(rank), 2)


@samplers
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@both_ranks
def test_zero_channels(sampler, data_format, rank):
    """As in PyTorch, images without channels give an output without channels."""
    spatial, out = ((5, 6), (3, 4)) if rank == 2 else ((3, 5, 6), (2, 3, 4))
    shape = (2, *spatial, 0) if data_format == "channels_last" else (2, 0, *spatial)
    expected = (2, *out, 0) if data_format == "channels_last" else (2, 0, *out)
    images = np.zeros(shape, "float32")
    theta = identity_theta(2, rank)
    with using(sampler):
        for interpolation in ("bilinear", "nearest"):
            grid = affine_grid(theta, out)
            assert tuple(grid_sample(images, grid, interpolation, data_format=data_format).shape) == expected
            assert tuple(affine_sample(images, theta, out, interpolation, data_format=data_format).shape) == expected


@samplers
@both_ranks
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_empty_batch_stays_differentiable(sampler, rank, op):
    """A batch of 0 is connected to the images and the grid (or theta), with empty gradients:
    on torch, `backward()` through it must work, as through PyTorch's `grid_sample`."""
    spatial, out = ((5, 6), (3, 4)) if rank == 2 else ((3, 5, 6), (2, 3, 4))
    images = np.zeros((0, *spatial, 2), "float32")
    theta = np.zeros((0, rank, rank + 1), "float32")
    grid = np.zeros((0, *out, rank), "float32")

    def loss(images, warp):
        if op == "grid_sample":
            return ops.sum(grid_sample(images, warp, "bilinear", "border"))
        return ops.sum(affine_sample(images, warp, out, "bilinear", "border"))

    with using(sampler):
        value, (d_images, d_warp) = value_and_grad(loss, images, grid if op == "grid_sample" else theta)
    assert float(value) == 0
    assert d_images.shape == images.shape
    assert d_warp.shape == (grid if op == "grid_sample" else theta).shape


# --------------------------------------------------------------------------------------------
# The portable sampler's indexes
# --------------------------------------------------------------------------------------------


def test_the_portable_sampler_gathers_within_each_image(monkeypatch, rng):
    """The gather's rows are image-local: no index grows with the batch (the global index of a
    flattened batch overflowed int32 past 2**31 pixels and made sharded batches all-gather)."""
    seen = []
    gather = sampling.gather_pixels

    def spy(pixels, rows):
        seen.append((tuple(pixels.shape), int(to_numpy(ops.max(rows)))))
        return gather(pixels, rows)

    monkeypatch.setattr(sampling, "gather_pixels", spy)
    images = rng.uniform(0, 1, (6, 5, 7, 2)).astype("float32")
    with using("portable"):
        affine_sample(images, np.tile([[1.0, 0, 0.5, 0, 1, 0.5]], (6, 1)).astype("float32"), None, "bicubic", "border")
    assert seen and all(shape == (6, 35, 2) and highest < 35 for shape, highest in seen)


def test_more_pixels_per_image_than_int32_indexes_raise():
    """The portable sampler indexes pixels with int32 per image: one image of more than 2**31
    pixels raises a ValueError naming the limit (zero channels: nothing is allocated)."""
    huge = np.zeros((1, 32769, 65536, 0), "float32")
    if BACKEND == "jax":
        import jax

        # jnp.asarray (hence keras.ops.convert_to_tensor) of this shape compiles for minutes.
        huge = jax.device_put(huge)
    grid = np.zeros((1, 1, 1, 2), "float32")
    with using("portable"), pytest.raises(ValueError, match=r"at most 2\*\*31 = 2147483648 pixels per image.*Got"):
        grid_sample(huge, grid)
