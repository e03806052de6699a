"""Edge cases of the samplers found by test cases derived from PyTorch's and kornia's suites.

Each runs on the portable `keras.ops` sampler of every backend and, on the torch backend, on
PyTorch's kernel too (`keras_stn/ops/_backend/torch_kernel.py`): coordinates exactly on the border (where
each backend's own gradient of `clip` and `abs` differs), zero channels, empty batches,
outputs that must stay connected to autograd, and the int32 pixel limit of the portable
sampler.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from keras import ops
from test_ops import exact_positions_grid, torch_grads

from helpers import BACKEND, to_numpy, value_and_grad
from keras_stn.ops import affine_grid, affine_sample, grid_sample, sampling
from keras_stn.ops._backend import torch_kernel as native

SAMPLERS = ["native", "portable"] if BACKEND == "torch" else ["portable"]
samplers = pytest.mark.parametrize("sampler", SAMPLERS)
all_modes = pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
all_paddings = pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
both_aligns = pytest.mark.parametrize("align_corners", [False, True], ids=["edges", "corners"])
TESTS = Path(__file__).resolve().parent


def using(sampler):
    return native.switched(sampler == "native")


# Spans that are powers of two, so that every half-pixel position and its unnormalisation are
# exact in float32, in the portable sampler and in PyTorch's kernel alike.
EXACT_SIZES = {False: (4, 8), True: (5, 9)}


@samplers
@all_modes
@all_paddings
@both_aligns
def test_gradients_exactly_on_the_border_match_torch(sampler, interpolation, padding_mode, align_corners, rng, x64):
    """Every pixel centre, edge and corner and points one pixel outside: the gradients are
    PyTorch's, whose clip has zero gradient at and beyond the border and whose reflection
    flips the sign per fold (before, TensorFlow's clip gave 2 and JAX's 1 on a 5x5 ramp)."""
    in_size = EXACT_SIZES[align_corners]
    images = rng.uniform(0, 1, (1, *in_size, 2))
    grid = exact_positions_grid(in_size, align_corners).astype("float64")
    weights = rng.normal(size=(1, *grid.shape[1:3], 2))
    expected_images, expected_grid = torch_grads(images, grid, weights, interpolation, padding_mode, align_corners)

    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    with using(sampler):
        _, (d_images, d_grid) = value_and_grad(loss, images, grid)
    np.testing.assert_allclose(d_images, expected_images, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_grid, expected_grid, rtol=1e-12, atol=1e-12)


@samplers
@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
def test_ramp_gradient_at_the_corner_is_zero(sampler, padding_mode):
    """The case of the report: a 5x5 horizontal ramp read at `(-1, -1)` with corners aligned."""
    ramp = np.tile(np.arange(5, dtype="float32"), (5, 1))[None, :, :, None]
    corner = np.full((1, 1, 1, 2), -1.0, "float32")

    def read(grid):
        return ops.sum(grid_sample(ramp, grid, "bilinear", padding_mode, align_corners=True))

    with using(sampler):
        _, (d_grid,) = value_and_grad(read, corner)
    np.testing.assert_array_equal(d_grid, 0)


IDENTITY_GRADIENT_SCRIPT = """
import json, sys
import numpy as np
from keras import ops
sys.path.insert(0, {tests!r})
from helpers import value_and_grad
from keras_stn.ops import affine_grid, affine_sample, grid_sample

rng = np.random.default_rng(8)
images = rng.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
weights = ops.convert_to_tensor(rng.normal(size=(2, 8, 8, 3)).astype("float32"))
theta = np.tile(np.eye(2, 3, dtype="float32"), (2, 1, 1))
results = {{}}
for padding_mode in ("zeros", "border", "reflection"):
    for align_corners in (False, True):
        def loss(images, theta):
            return ops.sum(affine_sample(images, theta, None, "bilinear", padding_mode, align_corners) * weights)

        def grid_loss(grid):
            return ops.sum(grid_sample(images, grid, "bilinear", padding_mode, align_corners) * weights)

        _, (d_images, d_theta) = value_and_grad(loss, images, theta)
        grid = ops.convert_to_numpy(affine_grid(theta, (8, 8), align_corners))
        _, (d_grid,) = value_and_grad(grid_loss, grid)
        results[f"{{padding_mode}}-{{align_corners}}"] = [g.ravel().tolist() for g in (d_theta, d_images, d_grid)]
print(json.dumps(results))
"""


def identity_gradients(backend):
    """The theta and image gradients at the identity under `backend`'s portable sampler."""
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_STN_NATIVE": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", IDENTITY_GRADIENT_SCRIPT.format(tests=str(TESTS))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_gradients_at_the_identity_agree_across_backends():
    """Training starts at the identity, which puts the edge pixels exactly on the border:
    the first step must be the same on every backend. Bilinear gradients with respect to the
    images and the grid are bit for bit the same; theta's, a sum over every pixel in each
    framework's own order, agree to float32 rounding (before, border padding gave tensorflow
    `[-1.26, 1.84, ...]`, jax `[0.32, ...]`)."""
    results = {backend: identity_gradients(backend) for backend in ("jax", "tensorflow", "torch")}
    reference = results.pop("jax")
    for backend, result in results.items():
        for case, (d_theta, d_images, d_grid) in result.items():
            np.testing.assert_array_equal(d_images, reference[case][1], err_msg=f"{backend} {case}")
            np.testing.assert_array_equal(d_grid, reference[case][2], err_msg=f"{backend} {case}")
            np.testing.assert_allclose(d_theta, reference[case][0], rtol=2e-6, atol=2e-5, err_msg=f"{backend} {case}")
            assert np.abs(d_theta).max() > 1, "the comparison is not between zeros"


@samplers
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [4, 5])
def test_zero_channels(sampler, data_format, rank):
    """As in PyTorch, images without channels give an output without channels."""
    spatial, out = ((5, 6), (3, 4)) if rank == 4 else ((3, 5, 6), (2, 3, 4))
    shape = (2, *spatial, 0) if data_format == "channels_last" else (2, 0, *spatial)
    expected = (2, *out, 0) if data_format == "channels_last" else (2, 0, *out)
    images = np.zeros(shape, "float32")
    theta = np.tile(np.eye(rank - 2, rank - 1, dtype="float32"), (2, 1, 1))
    with using(sampler):
        for interpolation in ("bilinear", "nearest"):
            grid = affine_grid(theta, out)
            assert tuple(grid_sample(images, grid, interpolation, data_format=data_format).shape) == expected
            assert tuple(affine_sample(images, theta, out, interpolation, data_format=data_format).shape) == expected


@samplers
@pytest.mark.parametrize("rank", [4, 5])
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_empty_batch_stays_differentiable(sampler, rank, op):
    """A batch of 0 is connected to the images and the grid (or theta), with empty gradients:
    on torch, `backward()` through it must work, as through PyTorch's `grid_sample`."""
    spatial, out = ((5, 6), (3, 4)) if rank == 4 else ((3, 5, 6), (2, 3, 4))
    images = np.zeros((0, *spatial, 2), "float32")
    theta = np.zeros((0, rank - 2, rank - 1), "float32")
    grid = np.zeros((0, *out, rank - 2), "float32")

    def loss(images, warp):
        if op == "grid_sample":
            return ops.sum(grid_sample(images, warp, "bilinear", "border"))
        return ops.sum(affine_sample(images, warp, out, "bilinear", "border"))

    with using(sampler):
        value, (d_images, d_warp) = value_and_grad(loss, images, grid if op == "grid_sample" else theta)
    assert float(value) == 0
    assert d_images.shape == images.shape
    assert d_warp.shape == (grid if op == "grid_sample" else theta).shape


@samplers
@all_paddings
def test_nearest_is_connected_to_the_grid_alone(sampler, padding_mode, rng):
    """Nearest has zero gradient with respect to the grid, but its output depends on it: with
    only the grid requiring gradients, `backward()` works on torch and gives zeros."""
    images = rng.uniform(0, 1, (2, 5, 6, 3)).astype("float32")
    grid = rng.uniform(-1.2, 1.2, (2, 3, 4, 2)).astype("float32")

    def loss(grid):
        return ops.sum(grid_sample(images, grid, "nearest", padding_mode))

    with using(sampler):
        _, (d_grid,) = value_and_grad(loss, grid)
    np.testing.assert_array_equal(d_grid, 0)


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
