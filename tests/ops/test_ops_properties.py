"""Property-based tests of `keras_stn.ops` with hypothesis.

The interpolation modes, and the padding modes where a test covers all of them together, are
parametrized, so that every combination runs on every backend; hypothesis draws the rest of the
configuration (batch size, input and output sizes, channels, `align_corners`, data format) and
a seed. The arrays are then made from the seed with NumPy, mixing the coordinates where sampling
switches branch (whole and half pixels, the exact borders, points several widths outside) with
arbitrary ones. Where hypothesis itself should search for nasty numbers (huge coordinates and
thetas) it draws the arrays directly.

The budget is fixed: every test runs a bounded number of derandomised examples (`PROPERTY`), so
each run sees the same examples and the file stays fast. Under JAX every new shape compiles every
primitive again (seconds per shape on a small CPU), so there the shapes come from a small pool
that keeps the interesting cases (a single pixel, one row, one column, odd sizes, more outputs
than inputs); under TensorFlow and PyTorch they are drawn freely.

Nearest sampling switches pixel at exact half-pixel positions, where float32 and the float64
reference may legitimately round to different sides: for it, coordinates are kept `TIE_MARGIN`
pixels away from those ties. Bilinear and bicubic sampling are continuous there, so they are
tested on the exact positions too.
"""

from typing import NamedTuple

import keras
import numpy as np
import pytest
from conftest import float64_enabled
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from helpers import BACKEND, away_from_kinks, random_theta, to_normalized, to_numpy, to_pixels, value_and_grad
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from reference import affine_grid_ref, grid_sample_ref

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
DATA_FORMATS = ("channels_last", "channels_first")
TIE_MARGIN = 1e-4  # pixels; float32 coordinate error on these sizes is ~1e-6 pixel
# grid_sample bounds finite coordinates to +-2**100 (see
# test_border_padding_reads_the_border_at_overflowing_coordinates); random draws stay inside.
FINITE_LIMIT = 2.0**100  # ~1.3e30, exact in float32

PROPERTY = settings(
    max_examples=25,
    deadline=None,  # the first example of each shape includes JAX compilation
    derandomize=True,
    database=None,
)


class Geometry(NamedTuple):
    batch: int
    in_size: tuple  # (height, width)
    channels: int
    out_size: tuple


# The last two keep their input size, as the identity and translation tests do, to share compilations.
JAX_GEOMETRIES = (
    Geometry(2, (5, 7), 4, (6, 9)),  # odd sizes, more outputs than inputs
    Geometry(1, (1, 1), 2, (2, 3)),  # a single pixel, read at many points
    Geometry(2, (1, 5), 3, (1, 5)),  # one row
    Geometry(3, (6, 1), 1, (6, 1)),  # one column
)


def geometries(jax_pool=JAX_GEOMETRIES):
    if BACKEND == "jax":
        return st.sampled_from(jax_pool)
    side = st.integers(1, 7)
    out_side = st.integers(1, 9)
    return st.builds(
        Geometry, st.integers(1, 3), st.tuples(side, side), st.integers(1, 4), st.tuples(out_side, out_side)
    )


# The modes are parametrized rather than drawn, so that every combination runs on every backend.
all_modes = pytest.mark.parametrize("interpolation", INTERPOLATIONS)
all_paddings = pytest.mark.parametrize("padding_mode", PADDING_MODES)
padding_modes = st.sampled_from(PADDING_MODES)
data_formats = st.sampled_from(DATA_FORMATS)
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def pixel_coordinates(rng, shape, size, align_corners):
    """Pixel coordinates along an axis of `size` pixels: arbitrary ones, whole pixels, half
    pixels, the exact borders of the image (-1 and +1 once normalised) and points several
    widths outside, where reflection folds more than once."""
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    candidates = [
        rng.uniform(low - 2, high + 2, shape),
        rng.integers(-2, size + 2, shape).astype(np.float64),
        rng.integers(-2, size + 2, shape) + 0.5,
        np.where(rng.random(shape) < 0.5, low, high),
        rng.uniform(-3 * size - 4, 3 * size + 4, shape),
    ]
    return np.choose(rng.integers(0, len(candidates), shape), candidates)


def sampling_grid(rng, batch, out_size, in_size, align_corners, avoid_ties, dtype="float32"):
    """A `(batch, *out_size, 2)` grid of `pixel_coordinates`, normalised for an input of `in_size`."""
    axes = []
    for size in (in_size[1], in_size[0]):  # x runs along the width, y along the height
        if align_corners and size == 1:
            axes.append(rng.uniform(-3, 3, (batch, *out_size)))  # every coordinate reads the one pixel
            continue
        pixel = pixel_coordinates(rng, (batch, *out_size), size, align_corners)
        if avoid_ties:
            pixel = away_from_kinks(pixel, TIE_MARGIN)
        axes.append(to_normalized(pixel, size, align_corners))
    return np.stack(axes, axis=-1).astype(dtype)


def to_layout(images, data_format):
    """Channels-last NumPy images in `data_format`."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)) if data_format == "channels_first" else images


def from_layout(out, data_format):
    """A sampler's output in `data_format`, as channels-last NumPy."""
    out = to_numpy(out)
    return out.transpose(0, 2, 3, 1) if data_format == "channels_first" else out


def homogeneous(theta):
    """`(B, 2, 3)` -> `(B, 3, 3)` with the row `[0, 0, 1]`, so that thetas compose by matmul."""
    bottom = np.broadcast_to([0.0, 0.0, 1.0], (theta.shape[0], 1, 3))
    return np.concatenate([theta, bottom], axis=1)


# --------------------------------------------------------------------------------------------
# Agreement with the NumPy reference
# --------------------------------------------------------------------------------------------


@all_modes
@all_paddings
@settings(PROPERTY, max_examples=6)
@given(geometry=geometries(), align_corners=st.booleans(), data_format=data_formats, seed=seeds)
def test_grid_sample_matches_reference(geometry, interpolation, padding_mode, align_corners, data_format, seed):
    rng = np.random.default_rng(seed)
    batch, in_size, channels, out_size = geometry
    images = rng.uniform(-1, 1, (batch, *in_size, channels)).astype("float32")
    grid = sampling_grid(rng, batch, out_size, in_size, align_corners, avoid_ties=interpolation == "nearest")
    out = grid_sample(to_layout(images, data_format), grid, interpolation, padding_mode, align_corners, data_format)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = from_layout(out, data_format)
    assert out.shape == (batch, *out_size, channels)
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@all_modes
@all_paddings
@settings(PROPERTY, max_examples=6)
@given(geometry=geometries(), align_corners=st.booleans(), data_format=data_formats, seed=seeds)
def test_affine_sample_matches_reference(geometry, interpolation, padding_mode, align_corners, data_format, seed):
    rng = np.random.default_rng(seed)
    batch, in_size, channels, out_size = geometry
    images = rng.uniform(-1, 1, (batch, *in_size, channels)).astype("float32")
    margin = TIE_MARGIN if interpolation == "nearest" else 0.0
    scale = rng.choice([0.3, 1.5])  # near the identity, or anything up to flips and zoom-outs
    theta = random_theta(rng, batch, in_size, out_size, align_corners, margin=margin, scale=scale)
    out = affine_sample(
        to_layout(images, data_format), theta, out_size, interpolation, padding_mode, align_corners, data_format
    )
    out = from_layout(out, data_format)
    assert out.shape == (batch, *out_size, channels)
    grid = affine_grid_ref(theta.astype(np.float64), out_size, align_corners)
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@all_modes
@settings(PROPERTY, max_examples=8)
@given(
    geometry=geometries(JAX_GEOMETRIES[:1]),  # under JAX, x64 compiles everything once more
    op=st.sampled_from(["grid_sample", "affine_sample"]),
    padding_mode=padding_modes,
    align_corners=st.booleans(),
    seed=seeds,
)
def test_samplers_match_reference_float64(geometry, op, interpolation, padding_mode, align_corners, seed):
    """float64 inputs are sampled in float64: the reference's numbers to ~1e-12. (The exact
    float64 identity is in test_affine_sample.py, at one shape: here it would compile more
    shapes under JAX.)"""
    rng = np.random.default_rng(seed)
    batch, in_size, channels, out_size = geometry
    images = rng.uniform(-1, 1, (batch, *in_size, channels))
    nearest = interpolation == "nearest"
    if op == "grid_sample":
        grid = sampling_grid(rng, batch, out_size, in_size, align_corners, avoid_ties=nearest, dtype="float64")
    else:
        theta = random_theta(rng, batch, in_size, out_size, align_corners, TIE_MARGIN if nearest else 0.0, "float64")
        grid = affine_grid_ref(theta, out_size, align_corners)
    with float64_enabled():
        if op == "grid_sample":
            out = grid_sample(images, grid, interpolation, padding_mode, align_corners, "channels_last")
        else:
            out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners, "channels_last")
        assert keras.backend.standardize_dtype(out.dtype) == "float64"
        out = to_numpy(out)
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Invariants of affine warps
# --------------------------------------------------------------------------------------------


@all_modes
@settings(PROPERTY, max_examples=8)
@given(
    geometry=geometries(),
    padding_mode=padding_modes,
    align_corners=st.booleans(),
    data_format=data_formats,
    flat_theta=st.booleans(),
    explicit_size=st.booleans(),
    seed=seeds,
)
def test_identity_theta_returns_the_input_exactly(
    geometry, interpolation, padding_mode, align_corners, data_format, flat_theta, explicit_size, seed
):
    batch, in_size, channels, _ = geometry
    images = np.random.default_rng(seed).normal(size=(batch, *in_size, channels)).astype("float32")
    theta = np.tile(np.eye(2, 3, dtype="float32"), (batch, 1, 1))
    if flat_theta:
        theta = theta.reshape(batch, 6)
    size = in_size if explicit_size else None
    images_in = to_layout(images, data_format)
    out = affine_sample(images_in, theta, size, interpolation, padding_mode, align_corners, data_format)
    np.testing.assert_array_equal(from_layout(out, data_format), images)


@st.composite
def whole_pixel_shifts(draw):
    """A geometry and a shift `(dy, dx)` in whole pixels that keeps part of the image in view."""
    geometry = draw(geometries())
    height, width = geometry.in_size
    return geometry, draw(st.integers(-(height - 1), height - 1)), draw(st.integers(-(width - 1), width - 1))


@all_modes
@all_paddings
@settings(PROPERTY, max_examples=4)
@given(
    case=whole_pixel_shifts(),
    align_corners=st.booleans(),
    path=st.sampled_from(["affine_sample", "affine_grid"]),
    seed=seeds,
)
def test_whole_pixel_translation_is_a_shift(case, interpolation, padding_mode, align_corners, path, seed):
    """Output pixel (i, j) reads input pixel (i + dy, j + dx) wherever that pixel exists; with
    zero padding the rest reads nothing."""
    (batch, (height, width), channels, _), dy, dx = case
    images = np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, channels)).astype("float32")
    span_y, span_x = (height - 1, width - 1) if align_corners else (height, width)
    # With corners aligned a single pixel has no extent: every coordinate reads it, shift or not.
    ty = 2 * dy / span_y if span_y else 0.0
    tx = 2 * dx / span_x if span_x else 0.0
    theta = np.tile(np.array([[1, 0, tx], [0, 1, ty]], "float32"), (batch, 1, 1))
    if path == "affine_sample":
        out = affine_sample(images, theta, None, interpolation, padding_mode, align_corners, "channels_last")
    else:
        grid = affine_grid(theta, (height, width), align_corners)
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners, "channels_last")
    out = to_numpy(out)
    rows, cols = np.arange(height) + dy, np.arange(width) + dx
    in_rows, in_cols = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
    inside = in_rows[:, None] & in_cols[None, :]
    expected = images[:, np.clip(rows, 0, height - 1)][:, :, np.clip(cols, 0, width - 1)]
    if interpolation == "nearest":
        np.testing.assert_array_equal(out[:, inside], expected[:, inside])
    else:
        np.testing.assert_allclose(out[:, inside], expected[:, inside], rtol=1e-5, atol=1e-5)
    if padding_mode == "zeros":
        np.testing.assert_allclose(out[:, ~inside], 0, atol=1e-5)


class Composition(NamedTuple):
    batch: int
    channels: int
    in_size: tuple
    mid_size: tuple  # output of the first warp, input of the second
    out_size: tuple


def compositions():
    if BACKEND == "jax":
        # The first warp and the one-step warp have shapes of JAX_GEOMETRIES[0] and its identity.
        return st.just(Composition(2, 4, (5, 7), (6, 9), (5, 7)))
    return st.builds(
        Composition,
        st.integers(1, 3),
        st.integers(1, 3),
        st.tuples(st.integers(4, 9), st.integers(4, 9)),
        st.tuples(st.integers(2, 8), st.integers(2, 8)),
        st.tuples(st.integers(2, 6), st.integers(2, 6)),
    )


def zoom_in_theta(rng, batch):
    """Rotation by up to 0.3 rad, zoom by a factor 0.4-0.9 per axis, shift by up to 0.1: most
    outputs read inside the input, those near the corners of the stronger zooms do not."""
    angle = rng.uniform(-0.3, 0.3, batch)
    sx, sy = rng.uniform(0.4, 0.9, (2, batch))
    tx, ty = rng.uniform(-0.1, 0.1, (2, batch))
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([sx * cos, -sy * sin, tx], -1), np.stack([sx * sin, sy * cos, ty], -1)], 1)


def reads_inside(grid, size, align_corners, margin=1e-3):
    """Whether bilinear sampling at each point of `grid` reads only pixels of an image of `size`."""
    x = to_pixels(grid[..., 0], size[1], align_corners)
    y = to_pixels(grid[..., 1], size[0], align_corners)
    return (x >= margin) & (x <= size[1] - 1 - margin) & (y >= margin) & (y <= size[0] - 1 - margin)


@PROPERTY
@given(
    case=compositions(),
    padding_mode=padding_modes,
    align_corners=st.booleans(),
    seed=seeds,
)
def test_two_warps_equal_one_warp_by_the_product(case, padding_mode, align_corners, seed):
    """theta maps output to input coordinates: warping by theta1 and then by theta2 reads the
    input at theta1 @ theta2 @ p. Bilinear interpolation is exact on a linear ramp, so wherever
    both warps read only real pixels the two-step result is the ramp at that point, as is the
    one-step warp by the product; elsewhere the padding (and the resampling) make them differ."""
    rng = np.random.default_rng(seed)
    batch, channels, in_size, mid_size, out_size = case
    coefficients = rng.uniform(-1, 1, (3, channels))
    y, x = np.meshgrid(np.arange(in_size[0]), np.arange(in_size[1]), indexing="ij")
    ramp = coefficients[0] + x[..., None] * coefficients[1] + y[..., None] * coefficients[2]
    images = np.broadcast_to(ramp, (batch, *in_size, channels)).astype("float32")
    theta1, theta2 = zoom_in_theta(rng, batch), zoom_in_theta(rng, batch)
    product = (homogeneous(theta1) @ homogeneous(theta2))[:, :2]
    theta1, theta2, product = (t.astype("float32") for t in (theta1, theta2, product))

    def warp(images, theta, size):
        return affine_sample(images, theta, size, "bilinear", padding_mode, align_corners, "channels_last")

    two_steps = to_numpy(warp(warp(images, theta1, mid_size), theta2, out_size))
    one_step = to_numpy(warp(images, product, out_size))

    # Where the second warp reads only pixels of the first warp's output, each of those read
    # only pixels of the input, and so the ramp.
    grid2 = affine_grid_ref(theta2.astype(np.float64), out_size, align_corners)
    mid_reads_inside = reads_inside(
        affine_grid_ref(theta1.astype(np.float64), mid_size, align_corners), in_size, align_corners
    )
    valid = reads_inside(grid2, mid_size, align_corners)
    mid_x = to_pixels(grid2[..., 0], mid_size[1], align_corners)
    mid_y = to_pixels(grid2[..., 1], mid_size[0], align_corners)
    b = np.arange(batch)[:, None, None]
    for dy in (0, 1):
        for dx in (0, 1):
            row = np.clip(np.floor(mid_y).astype(int) + dy, 0, mid_size[0] - 1)
            col = np.clip(np.floor(mid_x).astype(int) + dx, 0, mid_size[1] - 1)
            valid &= mid_reads_inside[b, row, col]
    assume(valid.any())  # all but ~1 in 500 draws

    point = affine_grid_ref(product.astype(np.float64), out_size, align_corners)
    px = to_pixels(point[..., 0], in_size[1], align_corners)[..., None]
    py = to_pixels(point[..., 1], in_size[0], align_corners)[..., None]
    expected = coefficients[0] + px * coefficients[1] + py * coefficients[2]
    np.testing.assert_allclose(two_steps[valid], expected[valid], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one_step[valid], expected[valid], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Padding modes
# --------------------------------------------------------------------------------------------


@all_modes
@settings(PROPERTY, max_examples=8)
@given(geometry=geometries(), align_corners=st.booleans(), seed=seeds)
def test_reflection_padding_is_symmetric_about_the_borders(geometry, interpolation, align_corners, seed):
    """The mirror lines are the normalised coordinates -1 and +1 with either `align_corners`, and
    mirroring twice shifts by a whole period of 4: a coordinate mirrored about a border, or moved
    by a period, reads the same value. For bicubic this holds tap by tap, since the kernel is even."""
    rng = np.random.default_rng(seed)
    batch, in_size, channels, out_size = geometry
    images = rng.uniform(-1, 1, (batch, *in_size, channels)).astype("float32")
    nearest = interpolation == "nearest"
    grid = sampling_grid(rng, batch, out_size, in_size, align_corners, avoid_ties=nearest, dtype="float64")
    moves = [-2 - grid, 2 - grid, grid + 4, grid - 4]
    moved = np.choose(rng.integers(0, len(moves), grid.shape), moves)
    grid, moved = grid.astype("float32"), moved.astype("float32")
    out = to_numpy(grid_sample(images, grid, interpolation, "reflection", align_corners, "channels_last"))
    out_moved = to_numpy(grid_sample(images, moved, interpolation, "reflection", align_corners, "channels_last"))
    np.testing.assert_allclose(out_moved, out, rtol=1e-5, atol=1e-5)
    expected = grid_sample_ref(images, grid, interpolation, "reflection", align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@st.composite
def wild_inputs(draw):
    """A geometry with a grid and a theta of arbitrary finite numbers, up to `FINITE_LIMIT`."""
    geometry = draw(geometries())
    number = st.one_of(
        st.floats(-3, 3, width=32),
        st.floats(-FINITE_LIMIT, FINITE_LIMIT, width=32),
        st.sampled_from([-1.0, 1.0, 0.0]),
    )
    grid = draw(hnp.arrays(np.float32, (geometry.batch, *geometry.out_size, 2), elements=number))
    theta = draw(hnp.arrays(np.float32, (geometry.batch, 2, 3), elements=number))
    return geometry, grid, theta


@PROPERTY
@given(
    case=wild_inputs(),
    op=st.sampled_from(["grid_sample", "affine_sample"]),
    interpolation=st.sampled_from(["bilinear", "nearest"]),
    padding_mode=st.sampled_from(["border", "reflection"]),
    align_corners=st.booleans(),
    seed=seeds,
)
def test_border_and_reflection_padding_stay_within_the_image_range(
    case, op, interpolation, padding_mode, align_corners, seed
):
    """Bilinear and nearest sampling average pixels with non-negative weights that sum to one,
    and these paddings never read outside the image: each output lies between the smallest and
    the largest value of its image and channel, wherever the grid points."""
    (batch, in_size, channels, out_size), grid, theta = case
    # Values of one sign, so that an output of 0 ("sampled nothing") is out of range too.
    images = np.random.default_rng(seed).uniform(1, 2, (batch, *in_size, channels)).astype("float32")
    if op == "grid_sample":
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners, "channels_last")
    else:
        out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners, "channels_last")
    out = to_numpy(out)
    low = images.min(axis=(1, 2))[:, None, None]
    high = images.max(axis=(1, 2))[:, None, None]
    tolerance = 1e-6 * np.abs(images).max()
    assert (out >= low - tolerance).all() and (out <= high + tolerance).all()


@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
def test_border_padding_reads_the_border_at_overflowing_coordinates(padding_mode):
    """Finite coordinates that would overflow in pixel units still read the image, as in
    PyTorch, rather than counting as non-finite. (Shapes of JAX_GEOMETRIES[2], to reuse its
    compilations.)"""
    images = np.full((2, 1, 5, 3), 5.0, "float32")
    grid = np.zeros((2, 1, 5, 2), "float32")
    grid[:, 0, :, 0] = [3e38, -3e38, 1e38, -1e38, 3.4e38]  # times the width 5: beyond float32
    out = to_numpy(grid_sample(images, grid, "bilinear", padding_mode, False, "channels_last"))
    np.testing.assert_array_equal(out, 5.0)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def exact_thetas(rng, batch, in_size, align_corners):
    """Thetas that put grid points on exact pixel positions: the identity, whole-pixel shifts,
    an exact 2x zoom-in and mirror images, mixed with arbitrary ones."""
    spans = [n - 1 if align_corners else n for n in in_size]
    shift = [2 * rng.integers(-2, 3) / s if s else 0.0 for s in spans]
    candidates = [
        np.eye(2, 3),
        np.array([[1, 0, shift[1]], [0, 1, shift[0]]]),
        np.array([[0.5, 0, 0], [0, 0.5, 0]]),
        np.array([[-1, 0, 0], [0, -1, 0]]),
        np.eye(2, 3) + rng.uniform(-1, 1, (2, 3)),
    ]
    return np.stack([candidates[i] for i in rng.integers(0, len(candidates), batch)]).astype("float32")


@all_modes
@all_paddings
@settings(PROPERTY, max_examples=3)
@given(
    geometry=geometries(JAX_GEOMETRIES[:1]),  # under JAX, each shape compiles the backward pass too
    op=st.sampled_from(["grid_sample", "affine_sample"]),
    align_corners=st.booleans(),
    seed=seeds,
)
def test_gradients_are_finite_on_exact_positions(geometry, op, interpolation, padding_mode, align_corners, seed):
    """Gradients of `sum(output)` are finite for grids through whole pixels, half pixels, the
    borders and far outside (where floor, round, clip and the reflection folds switch branch).
    The images gradient holds each input pixel's total interpolation weight: non-negative
    except for bicubic, and summing to one per output point where the padding reads only pixels."""
    rng = np.random.default_rng(seed)
    batch, in_size, channels, out_size = geometry
    images = rng.uniform(-1, 1, (batch, *in_size, channels)).astype("float32")
    if op == "grid_sample":
        coordinates = sampling_grid(rng, batch, out_size, in_size, align_corners, avoid_ties=False)
        far = rng.random(coordinates.shape) < 0.1
        coordinates[far] = FINITE_LIMIT * rng.choice([-1, 1], far.sum())

        def loss(images, grid):
            return ops.sum(grid_sample(images, grid, interpolation, padding_mode, align_corners, "channels_last"))
    else:
        coordinates = exact_thetas(rng, batch, in_size, align_corners)

        def loss(images, theta):
            out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners, "channels_last")
            return ops.sum(out)

    _, (d_images, d_coordinates) = value_and_grad(loss, images, coordinates)
    assert np.isfinite(d_images).all()
    assert np.isfinite(d_coordinates).all()
    if interpolation == "nearest":
        np.testing.assert_array_equal(d_coordinates, 0)
    if interpolation != "bicubic":
        assert (d_images >= -1e-6).all()
    if padding_mode != "zeros":
        total = np.full((batch, channels), float(out_size[0] * out_size[1]))
        np.testing.assert_allclose(d_images.sum(axis=(1, 2)), total, rtol=1e-5)
