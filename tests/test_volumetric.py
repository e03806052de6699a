"""Volumetric (3-D) spatial transformers: `affine_grid`, `grid_sample` and `affine_sample` on
rank-5 inputs, the 3-D transforms and `SpatialTransformer3D`.

References: PyTorch's 5-D `affine_grid` / `grid_sample` (outputs and autograd gradients) and the
float64 NumPy trilinear sampler in `tests/reference.py`. Random grids keep every coordinate away
from the pixel kinks, as in `test_ops.py`. Every op test uses one volume shape and one output
size, so that JAX compiles each primitive only a few times.
"""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_stn
from helpers import BACKEND, away_from_kinks, loss_weights, to_normalized, to_numpy, to_pixels, value_and_grad
from keras_stn import transforms
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from reference import affine_grid_3d_ref, grid_sample_3d_ref

INTERPOLATIONS = ("bilinear", "nearest")  # bicubic is 2-D only
PADDING_MODES = ("zeros", "border", "reflection")

all_modes = pytest.mark.parametrize("interpolation", INTERPOLATIONS)
all_paddings = pytest.mark.parametrize("padding_mode", PADDING_MODES)
both_aligns = pytest.mark.parametrize("align_corners", (False, True), ids=["edges", "corners"])

IN_SIZE = (4, 5, 6)  # (D, H, W), all different so that an axis mix-up shows
VOLUME_SHAPE = (2, *IN_SIZE, 2)
OUT = (3, 4, 5)


# --------------------------------------------------------------------------------------------
# Test data and PyTorch references
# --------------------------------------------------------------------------------------------


def random_volumes(rng, shape=VOLUME_SHAPE, dtype="float32"):
    return rng.uniform(0, 1, shape).astype(dtype)


def random_grid(rng, batch=2, out_size=OUT, in_size=IN_SIZE, align_corners=False, margin=1e-3, dtype="float32"):
    """A `(batch, *out_size, 3)` grid in [-1.5, 1.5] (reaching outside), away from voxel kinks."""
    grid = rng.uniform(-1.5, 1.5, (batch, *out_size, 3))
    for axis, size in enumerate(reversed(in_size)):  # x along W, y along H, z along D
        pixel = away_from_kinks(to_pixels(grid[..., axis], size, align_corners), margin)
        grid[..., axis] = to_normalized(pixel, size, align_corners)
    return grid.astype(dtype)


def random_theta(rng, batch=2, align_corners=False, margin=1e-4, dtype="float32", scale=0.3):
    """Random `(batch, 3, 4)` thetas near the identity whose grid of `OUT` stays away from kinks."""
    for _ in range(1000):
        theta = (np.eye(3, 4) + rng.uniform(-scale, scale, (batch, 3, 4))).astype(dtype)
        grid = affine_grid_3d_ref(theta.astype(np.float64), OUT, align_corners)
        distance = min(
            np.abs(2 * p - np.round(2 * p)).min() / 2
            for p in (to_pixels(grid[..., k], n, align_corners) for k, n in enumerate(reversed(IN_SIZE)))
        )
        if distance >= margin:
            return theta
    raise AssertionError("could not draw a theta away from voxel kinks")


def to_torch_layout(volumes):
    return np.ascontiguousarray(volumes.transpose(0, 4, 1, 2, 3))


def torch_affine_grid(theta, size, align_corners):
    torch = pytest.importorskip("torch")
    theta = torch.from_numpy(np.ascontiguousarray(theta.reshape(-1, 3, 4)))
    return torch.nn.functional.affine_grid(theta, (theta.shape[0], 1, *size), align_corners=align_corners).numpy()


def torch_sample(volumes, grid, interpolation, padding_mode, align_corners, weights=None, theta=None):
    """PyTorch's 5-D grid_sample of channels-last `volumes`; with `weights`, also the gradients
    of `sum(output * weights)` w.r.t. the volumes and the grid (or `theta`, which then makes
    the grid of size OUT)."""
    torch = pytest.importorskip("torch")
    volumes_t = torch.tensor(to_torch_layout(volumes), requires_grad=True)
    if theta is not None:
        source = torch.tensor(theta, requires_grad=True)
        grid_t = torch.nn.functional.affine_grid(source, (len(theta), 1, *OUT), align_corners=align_corners)
    else:
        source = grid_t = torch.tensor(grid, requires_grad=True)
    out = torch.nn.functional.grid_sample(
        volumes_t, grid_t, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    result = out.detach().numpy().transpose(0, 2, 3, 4, 1)
    if weights is None:
        return result
    loss = (out * torch.from_numpy(to_torch_layout(weights))).sum()
    d_volumes, d_source = torch.autograd.grad(loss, (volumes_t, source))
    return result, d_volumes.numpy().transpose(0, 2, 3, 4, 1), d_source.numpy()


def sample_np(volumes, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False, **kwargs):
    return to_numpy(grid_sample(volumes, grid, interpolation, padding_mode, align_corners, **kwargs))


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


# --------------------------------------------------------------------------------------------
# affine_grid
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed:UserWarning")
@both_aligns
@pytest.mark.parametrize("theta_shape", [(2, 3, 4), (2, 12)], ids=["matrix", "flat"])
@pytest.mark.parametrize("size", [OUT, (1, 4, 1)], ids=str)
def test_affine_grid_matches_torch_and_reference(align_corners, theta_shape, size, rng):
    theta = rng.uniform(-2, 2, (2, 3, 4)).astype("float32")
    out = affine_grid(theta.reshape(theta_shape), size, align_corners)
    assert tuple(out.shape) == (2, *size, 3) and dtype_of(out) == "float32"
    np.testing.assert_allclose(to_numpy(out), torch_affine_grid(theta, size, align_corners), rtol=1e-6, atol=1e-6)
    expected = affine_grid_3d_ref(theta.astype(np.float64), size, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6, atol=1e-6)


def test_affine_grid_float64(rng, x64):
    theta = rng.uniform(-2, 2, (2, 3, 4))
    out = affine_grid(theta, OUT, True)
    assert dtype_of(out) == "float64"
    np.testing.assert_allclose(to_numpy(out), affine_grid_3d_ref(theta, OUT, True), rtol=1e-14, atol=1e-14)


def test_affine_grid_axes_are_x_y_z():
    """The last axis is (x, y, z): x runs along W, y along H and z along D (the depth)."""
    grid = to_numpy(affine_grid(np.eye(3, 4, dtype="float32")[None], (2, 3, 4), align_corners=True))
    np.testing.assert_allclose(grid[0, 0, 0, :, 0], np.linspace(-1, 1, 4), rtol=1e-7)
    np.testing.assert_array_equal(grid[0, 0, :, 0, 1], np.linspace(-1, 1, 3))
    np.testing.assert_array_equal(grid[0, :, 0, 0, 2], [-1, 1])


# --------------------------------------------------------------------------------------------
# grid_sample and affine_sample: forward
# --------------------------------------------------------------------------------------------


@all_modes
@all_paddings
@both_aligns
def test_grid_sample_matches_torch_and_reference(interpolation, padding_mode, align_corners, rng):
    volumes = random_volumes(rng)
    grid = random_grid(rng, align_corners=align_corners)
    out = grid_sample(volumes, grid, interpolation, padding_mode, align_corners)
    assert tuple(out.shape) == (2, *OUT, 2) and dtype_of(out) == "float32"
    expected = torch_sample(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)
    reference = grid_sample_3d_ref(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), reference, rtol=1e-5, atol=1e-5)


@all_modes
@all_paddings
@both_aligns
def test_grid_sample_float64_matches_reference(interpolation, padding_mode, align_corners, rng, x64):
    volumes = random_volumes(rng, dtype="float64")
    grid = random_grid(rng, align_corners=align_corners, dtype="float64")
    out = grid_sample(volumes, grid, interpolation, padding_mode, align_corners)
    assert dtype_of(out) == "float64"
    expected = grid_sample_3d_ref(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-12, atol=1e-12)


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("theta_shape", [(2, 3, 4), (2, 12)], ids=["matrix", "flat"])
def test_affine_sample_matches_torch(interpolation, padding_mode, align_corners, theta_shape, rng):
    volumes = random_volumes(rng)
    theta = random_theta(rng, align_corners=align_corners)
    expected = torch_sample(
        volumes, torch_affine_grid(theta, OUT, align_corners), interpolation, padding_mode, align_corners
    )
    fused = affine_sample(volumes, theta.reshape(theta_shape), OUT, interpolation, padding_mode, align_corners)
    assert tuple(fused.shape) == (2, *OUT, 2)
    np.testing.assert_allclose(to_numpy(fused), expected, rtol=1e-5, atol=1e-5)
    grid = affine_grid(theta.reshape(theta_shape), OUT, align_corners)
    composed = sample_np(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(composed, expected, rtol=1e-5, atol=1e-5)


@all_modes
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_channels_first_equals_channels_last(interpolation, op, rng):
    volumes = random_volumes(rng)
    if op == "grid_sample":
        grid = random_grid(rng)

        def run(x, data_format):
            return sample_np(x, grid, interpolation, "reflection", data_format=data_format)

    else:
        theta = random_theta(rng)

        def run(x, data_format):
            return to_numpy(affine_sample(x, theta, OUT, interpolation, "border", data_format=data_format))

    last = run(volumes, "channels_last")
    first = run(to_torch_layout(volumes), "channels_first")
    assert first.shape == (2, 2, *OUT)
    np.testing.assert_allclose(first.transpose(0, 2, 3, 4, 1), last, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def weighted(fn, weights):
    return lambda *args: ops.sum(fn(*args) * ops.convert_to_tensor(weights))


@all_modes
@all_paddings
@both_aligns
def test_gradients_match_torch(interpolation, padding_mode, align_corners, rng, x64):
    volumes = random_volumes(rng, dtype="float64")
    grid = random_grid(rng, align_corners=align_corners, margin=0.02, dtype="float64")
    weights = loss_weights(rng, (2, *OUT, 2))
    loss = weighted(lambda x, g: grid_sample(x, g, interpolation, padding_mode, align_corners), weights)
    value, (d_volumes, d_grid) = value_and_grad(loss, volumes, grid)
    out, expected_volumes, expected_grid = torch_sample(
        volumes, grid, interpolation, padding_mode, align_corners, weights
    )
    np.testing.assert_allclose(value, np.sum(out * weights), rtol=1e-10)
    np.testing.assert_allclose(d_volumes, expected_volumes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_grid, expected_grid, rtol=1e-10, atol=1e-10)
    if interpolation == "nearest":
        np.testing.assert_array_equal(d_grid, 0)
    else:
        assert np.abs(d_grid).max() > 0.1  # the comparison above is not between zeros


@all_paddings
@both_aligns
def test_theta_gradients_match_torch(padding_mode, align_corners, rng, x64):
    volumes = random_volumes(rng, dtype="float64")
    theta = random_theta(rng, align_corners=align_corners, margin=1e-3, dtype="float64")
    weights = loss_weights(rng, (2, *OUT, 2))
    _, expected_volumes, expected_theta = torch_sample(
        volumes, None, "bilinear", padding_mode, align_corners, weights, theta=theta
    )
    assert np.abs(expected_theta).max() > 0.1
    composed = weighted(
        lambda x, t: grid_sample(x, affine_grid(t, OUT, align_corners), "bilinear", padding_mode, align_corners),
        weights,
    )
    fused = weighted(lambda x, t: affine_sample(x, t, OUT, "bilinear", padding_mode, align_corners), weights)
    for fn, theta_in in ((composed, theta), (fused, theta), (fused, theta.reshape(2, 12))):
        _, (d_volumes, d_theta) = value_and_grad(fn, volumes, theta_in)
        np.testing.assert_allclose(d_theta.reshape(2, 3, 4), expected_theta, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(d_volumes, expected_volumes, rtol=1e-10, atol=1e-12)


@all_paddings
def test_gradients_match_central_differences(padding_mode, rng, x64):
    """Directional derivatives in float64, a reference independent of PyTorch."""
    volumes = random_volumes(rng, dtype="float64")
    grid = random_grid(rng, margin=0.05, dtype="float64")
    weights = loss_weights(rng, (2, *OUT, 2))
    loss = weighted(lambda x, g: grid_sample(x, g, "bilinear", padding_mode, False), weights)

    def f(x, g):
        return float(to_numpy(loss(ops.convert_to_tensor(x), ops.convert_to_tensor(g))))

    _, (d_volumes, d_grid) = value_and_grad(loss, volumes, grid)
    h = 1e-6
    for array, gradient, shift in ((volumes, d_volumes, 0), (grid, d_grid, 1)):
        direction = rng.uniform(-1, 1, array.shape)
        step = [np.zeros_like(volumes), np.zeros_like(grid)]
        step[shift] = h * direction
        numeric = (f(volumes + step[0], grid + step[1]) - f(volumes - step[0], grid - step[1])) / (2 * h)
        np.testing.assert_allclose(np.sum(gradient * direction), numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(d_grid).max() > 0.1


# --------------------------------------------------------------------------------------------
# Edge cases, dtypes and properties
# --------------------------------------------------------------------------------------------

SPECIAL = {  # (b, d, h, w) -> (x, y, z)
    (0, 0, 0, 0): (np.nan, 0.1, 0.2),
    (0, 1, 2, 3): (0.2, 0.1, np.inf),
    (1, 2, 3, 4): (-np.inf, np.nan, -np.inf),
    (1, 0, 1, 2): (0.3, -np.inf, 0.1),
    (0, 2, 0, 1): (1e30, 0.1, -1e30),  # huge: padded, never out of bounds
    (1, 1, 3, 0): (0.2, 1e30, 1e30),
}


@all_modes
@all_paddings
@both_aligns
def test_non_finite_and_huge_coordinates(interpolation, padding_mode, align_corners, rng):
    volumes = random_volumes(rng) + 0.5  # no zeros in the volumes
    grid = random_grid(rng, align_corners=align_corners, margin=0.02)
    for index, point in SPECIAL.items():
        grid[index] = point
    non_finite = ~np.isfinite(grid).all(axis=-1)
    huge = (np.abs(grid) > 1e20).any(axis=-1) & ~non_finite
    normal = ~(non_finite | huge)
    out = sample_np(volumes, grid, interpolation, padding_mode, align_corners)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[non_finite], 0)
    expected = grid_sample_3d_ref(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out[normal], expected[normal], rtol=1e-5, atol=1e-5)
    if padding_mode == "zeros":
        np.testing.assert_array_equal(out[huge], 0)
    else:  # clamped or folded back into the volume
        assert 0 < np.abs(out[huge]).min() and np.abs(out[huge]).max() <= 1.5 * volumes.max()

    weights = loss_weights(rng, (2, *OUT, 2), "float32")
    loss = weighted(lambda x, g: grid_sample(x, g, interpolation, padding_mode, align_corners), weights)
    _, (d_volumes, d_grid) = value_and_grad(loss, volumes, grid)
    assert np.isfinite(d_volumes).all() and np.isfinite(d_grid).all()
    np.testing.assert_array_equal(d_grid[non_finite], 0)


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 1e-2), ("float32", 1e-6), ("float64", 1e-6)])
def test_dtypes_are_kept_and_half_precision_is_computed_in_float32(dtype, tol, rng, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    volumes = ops.cast(random_volumes(rng), dtype)
    as_float32 = lambda x: to_numpy(ops.cast(x, "float32"))  # noqa: E731
    grid = random_grid(rng, margin=0.02)
    theta = random_theta(rng)
    out = grid_sample(volumes, grid, "bilinear", "reflection")
    assert dtype_of(out) == dtype
    expected = sample_np(as_float32(volumes), grid, "bilinear", "reflection")
    np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    out = affine_sample(volumes, ops.cast(theta, dtype), OUT, "bilinear", "border")
    assert dtype_of(out) == dtype
    rounded_theta = as_float32(ops.cast(theta, dtype))
    expected = to_numpy(affine_sample(as_float32(volumes), rounded_theta, OUT, "bilinear", "border"))
    np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    assert dtype_of(affine_grid(ops.cast(theta, dtype), OUT)) == dtype


def test_float64_volumes_are_sampled_in_float64(rng, x64):
    volumes = random_volumes(rng, dtype="float64")
    theta = random_theta(rng, dtype="float64")
    out = to_numpy(affine_sample(volumes, theta, OUT, "bilinear", "reflection"))
    expected = grid_sample_3d_ref(volumes, affine_grid_3d_ref(theta, OUT), "bilinear", "reflection")
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_non_floating_volumes_raise_type_error(dtype):
    volumes = np.zeros(VOLUME_SHAPE, dtype)
    grid = np.zeros((2, *OUT, 3), "float32")
    for call in (lambda: grid_sample(volumes, grid), lambda: affine_sample(volumes, np.eye(3, 4)[None])):
        with pytest.raises(TypeError, match=r"`images` must have a floating dtype.*Got images with dtype"):
            call()


@all_modes
@all_paddings
@both_aligns
def test_identity_is_exact(interpolation, padding_mode, align_corners, rng):
    volumes = rng.normal(size=VOLUME_SHAPE).astype("float32")
    identity = np.tile(np.eye(3, 4, dtype="float32"), (2, 1, 1))
    out = affine_sample(volumes, identity, None, interpolation, padding_mode, align_corners)
    np.testing.assert_array_equal(to_numpy(out), volumes)
    grid = affine_grid(identity, IN_SIZE, align_corners)
    out = sample_np(volumes, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, volumes, rtol=1e-5, atol=1e-5)


@all_modes
@pytest.mark.parametrize("path", ["affine_sample", "affine_grid"])
def test_whole_voxel_translation_is_a_shift_along_each_axis(interpolation, path, rng):
    """theta's translation (tx, ty, tz) moves the read position by whole voxels along W, H, D."""
    volumes = random_volumes(rng)
    shift = {"x": 2, "y": -1, "z": 1}  # voxels, along W, H, D
    depth, height, width = IN_SIZE
    theta = np.tile(np.eye(3, 4, dtype="float32"), (2, 1, 1))
    theta[:, :, 3] = [2 * shift["x"] / width, 2 * shift["y"] / height, 2 * shift["z"] / depth]
    if path == "affine_sample":
        out = to_numpy(affine_sample(volumes, theta, None, interpolation, "zeros"))
    else:
        out = sample_np(volumes, affine_grid(theta, IN_SIZE), interpolation, "zeros")
    expected = np.zeros_like(volumes)
    expected[:, : depth - 1, 1:, : width - 2] = volumes[:, 1:, : height - 1, 2:]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_empty_batch():
    volumes = np.zeros((0, *IN_SIZE, 2), "float32")
    assert tuple(grid_sample(volumes, np.zeros((0, *OUT, 3), "float32")).shape) == (0, *OUT, 2)
    assert tuple(affine_sample(volumes, np.zeros((0, 12), "float32"), OUT).shape) == (0, *OUT, 2)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

VOLUMES = np.zeros(VOLUME_SHAPE, "float32")
IMAGES = np.zeros((2, 5, 6, 2), "float32")
GRID = np.zeros((2, *OUT, 3), "float32")
THETA = np.zeros((2, 3, 4), "float32")
THETA_2D = np.zeros((2, 2, 3), "float32")

# name: (call, exception, arguments named in the message, other words the message must contain)
INVALID_CALLS = {
    "grid_sample bicubic": (
        lambda: grid_sample(VOLUMES, GRID, "bicubic"),
        ValueError,
        ["interpolation"],
        ["'bilinear'", "'nearest'", "Got interpolation='bicubic'", str(VOLUME_SHAPE)],
    ),
    "affine_sample bicubic": (
        lambda: affine_sample(VOLUMES, THETA, interpolation="bicubic"),
        ValueError,
        ["interpolation"],
        [],
    ),
    "affine_grid 2-D theta, 3-D size": (
        lambda: affine_grid(THETA_2D, OUT),
        ValueError,
        ["size", "theta"],
        ["(batch, 3, 4) or (batch, 12)", "size=(3, 4, 5)", "(2, 2, 3)"],
    ),
    "affine_grid flat 2-D theta, 3-D size": (
        lambda: affine_grid(np.zeros((2, 6), "float32"), OUT),
        ValueError,
        ["size", "theta"],
        [],
    ),
    "affine_grid 3-D theta, 2-D size": (
        lambda: affine_grid(THETA, (4, 5)),
        ValueError,
        ["size", "theta"],
        ["(batch, 2, 3) or (batch, 6)", "size=(4, 5)", "(2, 3, 4)"],
    ),
    "affine_grid theta (B,3,3), 3-D size": (
        lambda: affine_grid(np.zeros((2, 3, 3), "float32"), OUT),
        ValueError,
        ["theta"],
        ["(batch, 3, 4) or (batch, 12)", "(2, 3, 3)"],
    ),
    "affine_grid theta (B,11)": (
        lambda: affine_grid(np.zeros((2, 11), "float32"), OUT),
        ValueError,
        ["theta"],
        ["(2, 11)"],
    ),
    "affine_grid 3-D theta, size of 4": (
        lambda: affine_grid(THETA, (3, 4, 5, 6)),
        ValueError,
        ["size"],
        ["(depth, height, width)"],
    ),
    "affine_grid 3-D theta, float size": (lambda: affine_grid(THETA, (3, 4.0, 5)), TypeError, ["size"], []),
    "affine_sample 2-D theta for volumes": (
        lambda: affine_sample(VOLUMES, THETA_2D),
        ValueError,
        ["theta"],
        ["(batch, 3, 4) or (batch, 12)", str(VOLUME_SHAPE)],
    ),
    "affine_sample 3-D theta for images": (
        lambda: affine_sample(IMAGES, THETA),
        ValueError,
        ["theta"],
        ["(batch, 2, 3) or (batch, 6)", "(2, 3, 4)"],
    ),
    "affine_sample 2-D size for volumes": (
        lambda: affine_sample(VOLUMES, THETA, (4, 5)),
        ValueError,
        ["size"],
        ["(depth, height, width)", "size=(4, 5)"],
    ),
    "grid_sample rank-4 grid for volumes": (
        lambda: grid_sample(VOLUMES, np.zeros((2, 4, 5, 2), "float32")),
        ValueError,
        ["images", "grid"],
        [str(VOLUME_SHAPE), "(2, 4, 5, 2)"],
    ),
    "grid_sample rank-5 grid for images": (lambda: grid_sample(IMAGES, GRID), ValueError, ["images", "grid"], []),
    "grid_sample grid last dim 2 for volumes": (
        lambda: grid_sample(VOLUMES, np.zeros((2, *OUT, 2), "float32")),
        ValueError,
        ["grid"],
        ["last dimension of 3 (x, y, z)"],
    ),
    "grid_sample rank-6 images": (lambda: grid_sample(VOLUMES[None], GRID), ValueError, ["images"], ["rank-5"]),
    "grid_sample empty volume": (
        lambda: grid_sample(np.zeros((2, 4, 0, 6, 2), "float32"), GRID),
        ValueError,
        ["images"],
        [],
    ),
    "grid_sample batch mismatch": (lambda: grid_sample(VOLUMES, GRID[:1]), ValueError, ["grid"], []),
}


@pytest.mark.parametrize("case", list(INVALID_CALLS), ids=list(INVALID_CALLS))
def test_invalid_arguments_raise_with_a_clear_message(case):
    call, error, names, words = INVALID_CALLS[case]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in names:
        assert f"`{name}`" in message, message
    assert "Got" in message, message
    for word in words:
        assert word in message, (word, message)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def test_3d_transforms_have_their_own_registry():
    assert type(transforms.get("affine", spatial_rank=3)) is transforms.Affine3D
    assert type(transforms.get("attention", spatial_rank=3)) is transforms.Attention3D
    assert type(transforms.get("affine")) is transforms.Affine  # the 2-D default is unchanged
    for rank, instance in ((2, transforms.Affine3D()), (3, transforms.Affine())):
        with pytest.raises(ValueError, match=rf"`transform`.*spatial_rank={rank}. Got transform="):
            transforms.get(instance, spatial_rank=rank)
    with pytest.raises(ValueError, match=r"the 3-D transforms 'affine', 'attention'.*Got transform='tps'"):
        transforms.get("tps", spatial_rank=3)
    for cls in (transforms.Affine3D, transforms.Attention3D):
        assert transforms.serialize(cls()) == cls.name
        config = keras.saving.serialize_keras_object(cls())
        assert type(transforms.get(json.loads(json.dumps(config)), spatial_rank=3)) is cls


def test_3d_transforms_build_the_documented_theta(rng):
    params = rng.normal(size=(2, 4)).astype("float32")
    s, tx, ty, tz = params.T
    zero = np.zeros(2, "float32")
    expected = np.stack(
        [np.stack(row, -1) for row in ([s, zero, zero, tx], [zero, s, zero, ty], [zero, zero, s, tz])], axis=1
    )
    np.testing.assert_array_equal(to_numpy(transforms.Attention3D().to_theta(params)), expected)
    params = rng.normal(size=(2, 12)).astype("float32")
    np.testing.assert_array_equal(to_numpy(transforms.Affine3D().to_theta(params)), params.reshape(2, 3, 4))
    grid = transforms.Affine3D().grid(params, OUT)
    np.testing.assert_allclose(to_numpy(grid), affine_grid_3d_ref(params.reshape(2, 3, 4), OUT), atol=1e-6)
    for cls in (transforms.Affine3D, transforms.Attention3D):
        identity = cls().identity_params()[None]
        np.testing.assert_array_equal(to_numpy(cls().to_theta(identity))[0], np.eye(3, 4))
    with pytest.raises(ValueError, match=r"`params` of the 3-D 'affine' transform must have shape \(batch, 12\)"):
        transforms.Affine3D().grid(np.zeros((2, 6), "float32"), OUT)
    with pytest.raises(ValueError, match=r"`size` must be a triple \(depth, height, width\)"):
        transforms.Attention3D().grid(np.zeros((2, 4), "float32"), (4, 5))


# --------------------------------------------------------------------------------------------
# SpatialTransformer3D
# --------------------------------------------------------------------------------------------

BATCH = 4


def layer_volumes(rng, data_format="channels_last"):
    volumes = random_volumes(rng, (BATCH, *IN_SIZE, 2))
    return volumes if data_format == "channels_last" else to_torch_layout(volumes)


def small_localization(units=8):
    return keras.Sequential(
        [keras.layers.Conv3D(4, 3, strides=2, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(units)]
    )


@pytest.mark.parametrize("transform, num_params", [("affine", 12), ("attention", 4)])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_layer_is_the_identity_at_initialisation(transform, num_params, data_format, rng):
    volumes = layer_volumes(rng, data_format)
    layer = keras_stn.SpatialTransformer3D(transform=transform, data_format=data_format, return_theta=True)
    out, theta = layer(volumes)
    np.testing.assert_array_equal(to_numpy(out), volumes)
    assert tuple(theta.shape) == (BATCH, num_params) and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (BATCH, 1)))
    assert layer.transform == transforms.get(transform, spatial_rank=3)
    conv = [sub for sub in layer.localization.layers if isinstance(sub, keras.layers.Conv3D)]
    assert len(conv) == 2 and all(sub.data_format == data_format for sub in conv)


def test_layer_output_is_the_warp_by_the_returned_theta(rng):
    volumes = layer_volumes(rng)
    layer = keras_stn.SpatialTransformer3D(out_dims=OUT, padding_mode="border", return_theta=True)
    layer.build(volumes.shape)
    layer.head.kernel.assign(rng.normal(scale=0.02, size=tuple(layer.head.kernel.shape)).astype("float32"))
    out, theta = (to_numpy(t) for t in layer(volumes))
    assert np.abs(theta - layer.transform.identity_params()).max() > 1e-3
    grid = affine_grid_3d_ref(theta.reshape(-1, 3, 4).astype(np.float64), OUT)
    np.testing.assert_allclose(out, grid_sample_3d_ref(volumes, grid, padding_mode="border"), atol=1e-4)


@pytest.mark.parametrize("return_theta", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("out_dims", [None, OUT])
def test_layer_compute_output_shape_matches_the_output(return_theta, data_format, out_dims, rng):
    volumes = layer_volumes(rng, data_format)
    layer = keras_stn.SpatialTransformer3D(
        out_dims=out_dims, transform="attention", data_format=data_format, return_theta=return_theta
    )
    dims = out_dims or IN_SIZE
    expected = (*dims, 2) if data_format == "channels_last" else (2, *dims)
    declared = layer.compute_output_shape((None, *volumes.shape[1:]))
    result = layer(volumes)
    symbolic = layer(keras.Input(volumes.shape[1:]))
    if return_theta:
        assert tuple(declared[0]) == tuple(symbolic[0].shape) == (None, *expected)
        assert tuple(declared[1]) == tuple(symbolic[1].shape) == (None, 4)
        assert tuple(result[0].shape) == (BATCH, *expected)
    else:
        assert tuple(declared) == tuple(symbolic.shape) == (None, *expected)
        assert tuple(result.shape) == (BATCH, *expected)


def classifier(**layer_kwargs):
    inputs = keras.Input((*IN_SIZE, 2))
    warped = keras_stn.SpatialTransformer3D(name="st", **layer_kwargs)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(warped)))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_a_tiny_model_trains(rng):
    x = layer_volumes(rng)
    y = rng.integers(0, 3, size=BATCH)
    model = classifier(out_dims=OUT)
    layer = model.get_layer("st")
    bias0 = to_numpy(layer.head.bias).copy()
    loc0 = [to_numpy(w).copy() for w in layer.localization.trainable_weights]
    assert len(loc0) == 6
    for _ in range(2):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert np.abs(to_numpy(layer.head.bias) - bias0).max() > 1e-6, "theta did not move"
    assert np.abs(to_numpy(layer.head.kernel)).max() > 0, "the head kernel got no gradient"
    for before, after in zip(loc0, layer.localization.trainable_weights):
        assert np.abs(to_numpy(after) - before).max() > 0, "the localization net did not train"


def test_get_config_round_trip():
    layer = keras_stn.SpatialTransformer3D(
        out_dims=OUT,
        transform="attention",
        interpolation="nearest",
        padding_mode="reflection",
        align_corners=True,
        data_format="channels_first",
        return_theta=True,
        name="st3d",
    )
    config = json.loads(json.dumps(layer.get_config()))
    expected = {
        "out_dims": list(OUT),
        "transform": "attention",
        "localization": None,
        "interpolation": "nearest",
        "padding_mode": "reflection",
        "align_corners": True,
        "data_format": "channels_first",
        "return_theta": True,
        "name": "st3d",
    }
    assert {key: config[key] for key in expected} == expected
    clone = keras_stn.SpatialTransformer3D.from_config(config)
    assert clone.get_config() == layer.get_config()
    assert clone.transform == transforms.Attention3D() and clone.out_dims == OUT


def test_keras_file_round_trip(rng, tmp_path):
    x = layer_volumes(rng)
    y = rng.integers(0, 3, size=BATCH)
    inputs = keras.Input((*IN_SIZE, 2))
    logits = []
    cases = {
        "st_affine": {},
        "st_attention": {"transform": "attention"},
        "st_loc": {"localization": small_localization()},
    }
    for name, kwargs in cases.items():
        layer = keras_stn.SpatialTransformer3D(out_dims=OUT, padding_mode="border", name=name, **kwargs)
        logits.append(keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    model = keras.Model(inputs, keras.layers.Add()(logits))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(2):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))
    for name in cases:
        saved, restored = model.get_layer(name), loaded.get_layer(name)
        assert isinstance(restored, keras_stn.SpatialTransformer3D), name
        assert np.abs(to_numpy(saved.head.kernel)).max() > 0, name
        assert restored.transform == saved.transform and restored.out_dims == OUT, name
        for weight, restored_weight in zip(saved.weights, restored.weights):
            np.testing.assert_array_equal(to_numpy(restored_weight), to_numpy(weight), err_msg=name)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    compute = policy.split("_")[1]
    volumes = layer_volumes(rng)
    # TensorFlow has no float16 CPU kernel for 3-D pooling (MaxPool3D, AvgPool3D), which the
    # default localization net uses; the layer's own dtype handling is tested with a conv net.
    localization = None
    if BACKEND == "tensorflow" and compute == "float16":
        localization = small_localization
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        layer = keras_stn.SpatialTransformer3D(return_theta=True, localization=localization and localization())
        out, theta = layer(volumes)
        resized = keras_stn.SpatialTransformer3D(out_dims=OUT, localization=localization and localization())(volumes)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert layer.compute_dtype == compute and dtype_of(out) == compute and dtype_of(theta) == "float32"
    rounded = to_numpy(ops.cast(ops.cast(volumes, compute), "float32"))
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), rounded)
    assert dtype_of(resized) == compute
    identity = np.tile(np.eye(3, 4), (BATCH, 1, 1))
    expected = grid_sample_3d_ref(volumes, affine_grid_3d_ref(identity, OUT))
    atol = 2e-3 if compute == "float16" else 1.6e-2
    np.testing.assert_allclose(to_numpy(ops.cast(resized, "float32")), expected, atol=atol)


@pytest.mark.parametrize("dtype", ["uint8", "bool"])
def test_layer_casts_integer_volumes_to_the_compute_dtype(dtype, rng):
    values = rng.integers(0, 2 if dtype == "bool" else 256, size=(BATCH, *IN_SIZE, 2))
    volumes, floats = values.astype(dtype), values.astype("float32")
    layer = keras_stn.SpatialTransformer3D(return_theta=True)
    out, theta = layer(volumes)
    assert dtype_of(out) == "float32" and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(out), floats)
    sym_out, sym_theta = layer(keras.Input((*IN_SIZE, 2), dtype=dtype))
    assert (sym_out.dtype, sym_theta.dtype) == (dtype_of(out), dtype_of(theta))

    # Zoomed out by 2 with a random head kernel: the corners read the zero padding.
    layer = keras_stn.SpatialTransformer3D(transform="attention", out_dims=OUT)
    layer.build(volumes.shape)
    layer.head.kernel.assign(rng.normal(scale=1e-3, size=tuple(layer.head.kernel.shape)).astype("float32"))
    layer.head.bias.assign(np.array([2, 0, 0, 0], "float32"))
    warped = to_numpy(layer(volumes))
    assert warped.dtype == np.float32
    np.testing.assert_array_equal(warped, to_numpy(layer(floats)))
    np.testing.assert_array_equal(warped[:, 0, 0, 0], 0)
    assert np.abs(warped).max() > 0


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("out_dims", (4, 5), ValueError),
        ("out_dims", (4, 5, 0), ValueError),
        ("out_dims", (4, 5.0, 6), TypeError),
        ("transform", "tps", ValueError),
        ("transform", transforms.Affine(), ValueError),
        ("interpolation", "bicubic", ValueError),
        ("padding_mode", "wrap", ValueError),
        ("data_format", "NDHWC", ValueError),
        ("align_corners", 1, TypeError),
    ],
)
def test_layer_bad_constructor_arguments(name, value, error):
    with pytest.raises(error) as info:
        keras_stn.SpatialTransformer3D(**{name: value})
    message = str(info.value)
    assert f"`{name}`" in message and f"Got {name}={value!r}" in message, message


def test_layer_rejects_inputs_of_the_wrong_rank():
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer3D()(np.zeros((BATCH, 5, 6, 2), "float32"))
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer()(np.zeros((BATCH, *IN_SIZE, 2), "float32"))
    with pytest.raises(ValueError, match=r"`transform`.*spatial_rank=2. Got transform=Affine3D\(\)"):
        keras_stn.SpatialTransformer(transform=transforms.Affine3D())


def test_layer_tells_a_single_volume_to_add_a_batch_axis():
    volume = np.zeros((*IN_SIZE, 2), "float32")
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer3D()(volume)
    message = str(info.value)
    assert message.startswith("`inputs` of SpatialTransformer3D must be a rank-5"), message
    assert "(batch, depth, height, width, channels)" in message and "x[None]" in message, message
    assert "use `SpatialTransformer`" in message, message  # or it was a batch of images
    assert message.endswith(f"Got inputs with shape {volume.shape}"), message


def built_3d(shape, **kwargs):
    layer = keras_stn.SpatialTransformer3D(**kwargs)
    layer.build((None, *shape))
    return layer


PAPER_NET_3D = ["MaxPooling3D", "Conv3D", "MaxPooling3D", "Conv3D", "Flatten", "Dense"]


@pytest.mark.parametrize(
    "shape, params", [((32, 32, 32, 1), 524042), ((16, 32, 32, 1), 268042), ((*IN_SIZE, 2), 16582)]
)
def test_default_localization_3d_is_unchanged_up_to_32_voxels(shape, params):
    layer = built_3d(shape)
    assert [type(sub).__name__ for sub in layer.localization.layers] == PAPER_NET_3D
    assert layer.count_params() == params == built_3d(shape, localization_max_size=None).count_params()


@pytest.mark.parametrize("shape", [(64, 64, 64, 1), (128, 128, 128, 1), (33, 200, 32, 2)])
def test_default_localization_3d_size_is_bounded_for_large_volumes(shape):
    layer = built_3d(shape)
    assert [type(sub).__name__ for sub in layer.localization.layers] == ["MaxPooling3D", *PAPER_NET_3D]
    working = tuple(layer.localization.layers[0].compute_output_shape((None, *shape)))
    assert max(working[1:4]) <= 32
    assert layer.count_params() <= 524042 + 540 * (shape[-1] - 1) < 600_000
    assert built_3d(shape, localization_max_size=None).count_params() > 2 * layer.count_params()


def test_bounded_3d_localization_is_the_identity_and_round_trips(rng, tmp_path):
    shape = (40, 6, 5, 2)  # pooled by 2 along the depth only
    volumes = rng.random((2, *shape)).astype("float32")
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras_stn.SpatialTransformer3D(name="st")(inputs))
    assert type(model.get_layer("st").localization.layers[0]).__name__ == "MaxPooling3D"
    assert len(model.get_layer("st").localization.layers) == 7
    np.testing.assert_array_equal(to_numpy(model(volumes)), volumes)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("st").localization_max_size == 32
    assert loaded.get_layer("st").count_params() == model.get_layer("st").count_params()


def test_default_localization_3d_needs_static_sizes():
    with pytest.raises(ValueError, match=r"static depth, height and width.*GlobalAveragePooling3D.*Got input shape"):
        keras_stn.layers.default_localization_3d((None, 5, 6, 2))
    net = keras_stn.layers.default_localization_3d((*IN_SIZE, 2), units=7)
    assert tuple(net.compute_output_shape((None, *IN_SIZE, 2))) == (None, 7)
