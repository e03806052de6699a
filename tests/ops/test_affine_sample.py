"""`keras_stn.ops.affine_sample` (the fused `affine_grid` + `grid_sample`) of images and volumes:
outputs against the NumPy reference and PyTorch, the composed path, the default size, the data
formats and the exact affine invariants (the identity, whole-pixel shifts, a centre crop). Its
gradients are in test_ops_gradients.py, degenerate and huge thetas in test_ops_edge_cases.py."""

import itertools

import numpy as np
import pytest

from helpers import (
    IMAGE_SHAPE,
    IN_SIZE,
    IN_SIZES,
    OUT_SIZES,
    all_modes,
    all_paddings,
    all_ranks_and_modes,
    both_aligns,
    both_ranks,
    channels_first,
    channels_last,
    down,
    identity_theta,
    input_shape,
    interpolations,
    per_rank,
    random_images,
    random_theta,
    ranks_modes_and_shapes,
    sample_np,
    to_numpy,
)
from keras_stn.ops import affine_grid, affine_sample
from reference import affine_grid_ref, grid_sample_ref, torch_reference


@ranks_modes_and_shapes
@all_paddings
@both_aligns
def test_affine_sample_matches_reference(rank, interpolation, shape, padding_mode, align_corners, rng):
    image_shape, out_size = input_shape(rank), OUT_SIZES[rank][shape]
    images = random_images(rng, image_shape)
    theta = random_theta(rng, image_shape[0], IN_SIZES[rank], out_size, align_corners)
    out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
    assert tuple(out.shape) == (image_shape[0], *out_size, image_shape[-1])
    grid = affine_grid_ref(theta.astype(np.float64), out_size, align_corners)
    expected = grid_sample_ref(images.astype(np.float64), grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)


# (output size, theta layout): images are warped down with (B, 2, 3) thetas and up with flat
# (B, 6) ones; volumes with (B, 3, 4) and (B, 12) thetas.
TORCH_CASES = {2: [("down", "matrix"), ("up", "flat")], 3: [("down", "matrix"), ("down", "flat")]}


@per_rank(
    ("interpolation", "shape", "theta_layout"),
    lambda rank: [(mode, *case) for mode in interpolations(rank) for case in TORCH_CASES[rank]],
)
@all_paddings
@both_aligns
def test_affine_sample_matches_torch(rank, interpolation, shape, theta_layout, padding_mode, align_corners, rng):
    """The fused sampler and `grid_sample` of `affine_grid` (the composed path) against PyTorch's
    `grid_sample` of its `affine_grid`."""
    out_size = OUT_SIZES[rank][shape]
    images = random_images(rng, input_shape(rank))
    theta = random_theta(rng, 2, IN_SIZES[rank], out_size, align_corners)
    theta_in = theta if theta_layout == "matrix" else theta.reshape(2, -1)
    expected = torch_reference(
        images, None, interpolation, padding_mode, align_corners, theta=theta, size=out_size
    ).output
    fused = affine_sample(images, theta_in, out_size, interpolation, padding_mode, align_corners)
    assert tuple(fused.shape) == (2, *out_size, 2)
    np.testing.assert_allclose(to_numpy(fused), expected, rtol=1e-5, atol=1e-5)
    grid = affine_grid(theta_in, out_size, align_corners)
    composed = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(composed, expected, rtol=1e-5, atol=1e-5)


@both_ranks
def test_affine_sample_matches_reference_float64(rank, rng, x64):
    """float64 inputs are sampled in float64: the reference's numbers to ~1e-12."""
    images = random_images(rng, input_shape(rank), "float64")
    theta = random_theta(rng, 2, IN_SIZES[rank], down(rank), False, dtype="float64")
    out = to_numpy(affine_sample(images, theta, down(rank), "bilinear", "reflection"))
    expected = grid_sample_ref(images, affine_grid_ref(theta, down(rank)), "bilinear", "reflection")
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@both_ranks
def test_affine_sample_default_size_is_input_size(rank, rng):
    images = random_images(rng, input_shape(rank))
    theta = random_theta(rng, 2, IN_SIZES[rank], IN_SIZES[rank], False)
    out = affine_sample(images, theta)
    assert tuple(out.shape) == input_shape(rank)
    expected = to_numpy(affine_sample(images, theta, IN_SIZES[rank]))
    np.testing.assert_allclose(to_numpy(out), expected, rtol=0, atol=0)


@all_ranks_and_modes
@all_paddings
def test_affine_sample_channels_first_equals_channels_last(rank, interpolation, padding_mode, rng):
    images = random_images(rng, input_shape(rank))
    theta = random_theta(rng, 2, IN_SIZES[rank], down(rank), False)

    def run(x, data_format):
        return to_numpy(affine_sample(x, theta, down(rank), interpolation, padding_mode, data_format=data_format))

    last = run(images, "channels_last")
    first = run(channels_first(images), "channels_first")
    assert first.shape == (2, 2, *down(rank))
    np.testing.assert_allclose(channels_last(first), last, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Exact invariants of affine warps
# --------------------------------------------------------------------------------------------


@all_ranks_and_modes
@all_paddings
@both_aligns
def test_affine_sample_identity_is_exact(rank, interpolation, padding_mode, align_corners, rng):
    images = rng.normal(size=input_shape(rank)).astype("float32")
    theta = identity_theta(2, rank)
    for size, theta_in in ((None, theta), (IN_SIZES[rank], theta.reshape(2, -1))):
        out = to_numpy(affine_sample(images, theta_in, size, interpolation, padding_mode, align_corners))
        np.testing.assert_array_equal(out, images)


@all_ranks_and_modes
@both_aligns
def test_affine_sample_identity_is_exact_float64(rank, interpolation, align_corners, rng, x64):
    images = rng.normal(size=input_shape(rank))
    theta = identity_theta(2, rank, "float64")
    out = to_numpy(affine_sample(images, theta, None, interpolation, "zeros", align_corners))
    np.testing.assert_array_equal(out, images)


def shifted_reference(images, shifts, padding_mode, align_corners):
    """`out[:, i, j] = images[:, i + shifts[0], j + shifts[1]]` (for volumes, with a third
    index), with the padding mode's rule outside."""
    spatial = images.shape[1:-1]

    def index(m, size):
        if padding_mode == "border":
            return min(max(m, 0), size - 1)
        if padding_mode == "reflection" and not (0 <= m < size):
            if align_corners:
                return -m if m < 0 else 2 * (size - 1) - m
            return -m - 1 if m < 0 else 2 * size - 1 - m
        return m

    out = np.zeros_like(images)
    for position in itertools.product(*map(range, spatial)):
        source = tuple(index(p + s, n) for p, s, n in zip(position, shifts, spatial))
        if all(0 <= m < n for m, n in zip(source, spatial)):
            out[(slice(None), *position)] = images[(slice(None), *source)]
    return out


# Whole-pixel shifts along (H, W) and (D, H, W).
SHIFTS = {2: (-1, 2), 3: (1, -1, 2)}


@all_ranks_and_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("path", ["affine_sample", "affine_grid"])
def test_whole_pixel_translation_is_a_shift(rank, interpolation, padding_mode, align_corners, path, rng):
    """theta's translation (tx, ty[, tz]) moves the read position by whole pixels along W, H
    (and D)."""
    in_size, shifts = IN_SIZES[rank], SHIFTS[rank]
    images = random_images(rng, input_shape(rank))
    theta = identity_theta(2, rank)
    for coordinate in range(rank):  # x along W, y along H, z along D
        axis = rank - 1 - coordinate
        span = in_size[axis] - 1 if align_corners else in_size[axis]
        theta[:, coordinate, rank] = 2 * shifts[axis] / span
    if path == "affine_sample":
        out = to_numpy(affine_sample(images, theta, None, interpolation, padding_mode, align_corners))
    else:
        grid = affine_grid(theta, in_size, align_corners)
        out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    expected = shifted_reference(images, shifts, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, images, atol=0.05)


@all_modes
@all_paddings
@pytest.mark.parametrize("path", ["affine_sample", "affine_grid"])
def test_half_zoom_to_half_size_is_centre_crop(interpolation, padding_mode, path, rng):
    """With edges aligned (align_corners=False), theta = [[0.5, 0, 0], [0, 0.5, 0]] and an
    output of half the input size, output pixel i's centre (2i + 1) / H_out - 1 maps to input
    pixel coordinate ((0.5 x + 1) H - 1) / 2 = i + H / 4: an exact centre crop when 4 | H, W."""
    height, width = IN_SIZE
    images = random_images(rng, IMAGE_SHAPE)
    theta = np.tile(np.array([[0.5, 0, 0], [0, 0.5, 0]], "float32"), (2, 1, 1))
    size = (height // 2, width // 2)
    assert size == down(2)
    if path == "affine_sample":
        out = to_numpy(affine_sample(images, theta, size, interpolation, padding_mode, False))
    else:
        out = sample_np(images, affine_grid(theta, size, False), interpolation, padding_mode, False)
    expected = images[:, 2:6, 3:9]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
