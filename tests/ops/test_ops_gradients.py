"""Gradients of `grid_sample` and `affine_sample`, for images and volumes: against PyTorch's
autograd and central differences in float64, exactly on the border (where each framework's own
gradient of `clip` and `abs` differs), at the identity across backends, and nearest's zero
gradient with respect to the grid.

The thin-plate spline's grid is differentiated through the sampler at the end. The tests
marked with `sampler` run on the portable `keras.ops` sampler of every backend and, on
the torch backend, on PyTorch's kernel too (`keras_stn/ops/_backend/torch_kernel.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from keras import ops

from helpers import (
    BACKEND,
    EXACT_SIZES,
    IN_SIZES,
    all_modes,
    all_paddings,
    all_ranks_and_modes,
    both_aligns,
    down,
    exact_positions_grid,
    input_shape,
    interpolations,
    loss_weights,
    per_rank,
    random_grid,
    random_images,
    random_theta,
    samplers,
    to_numpy,
    using,
    value_and_grad,
)
from keras_stn.ops import affine_grid, affine_sample, grid_sample, tps_grid
from reference import torch_reference

TESTS = Path(__file__).resolve().parents[1]
TPS_SHAPE = (16, 12, 2)

# The smooth modes (nearest has no gradient with respect to the coordinates).
ranks_and_smooth_modes = per_rank("interpolation", lambda rank: [m for m in interpolations(rank) if m != "nearest"])


def sampled_loss(weights, interpolation, padding_mode, align_corners):
    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    return loss


# --------------------------------------------------------------------------------------------
# Against PyTorch and central differences
# --------------------------------------------------------------------------------------------


@all_ranks_and_modes
@all_paddings
@both_aligns
def test_grid_sample_gradients_match_torch(rank, interpolation, padding_mode, align_corners, rng, x64):
    images = random_images(rng, input_shape(rank), "float64")
    grid = random_grid(rng, 2, down(rank), IN_SIZES[rank], align_corners, margin=0.02, dtype="float64")
    weights = loss_weights(rng, (2, *down(rank), 2))
    loss = sampled_loss(weights, interpolation, padding_mode, align_corners)
    value, (d_images, d_grid) = value_and_grad(loss, images, grid)
    expected = torch_reference(images, grid, interpolation, padding_mode, align_corners, weights=weights)
    np.testing.assert_allclose(value, np.sum(expected.output * weights), rtol=1e-10)
    np.testing.assert_allclose(d_images, expected.d_images, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_grid, expected.d_grid, rtol=1e-10, atol=1e-10)
    if interpolation == "nearest":
        np.testing.assert_array_equal(d_grid, 0)
    else:
        assert np.abs(d_grid).max() > 0.1  # the comparison above is not between zeros


@ranks_and_smooth_modes
@all_paddings
@both_aligns
def test_theta_gradients_match_torch(rank, interpolation, padding_mode, align_corners, rng, x64):
    """Through the composed path and the fused sampler (theta as a matrix and flat): the
    gradients with respect to theta and to the images are PyTorch's."""
    in_size, out_size = IN_SIZES[rank], down(rank)
    images = random_images(rng, input_shape(rank), "float64")
    theta = random_theta(rng, 2, in_size, out_size, align_corners, margin=1e-3, dtype="float64")
    weights = loss_weights(rng, (2, *out_size, 2))
    expected = torch_reference(
        images, None, interpolation, padding_mode, align_corners, theta=theta, size=out_size, weights=weights
    )
    assert np.abs(expected.d_theta).max() > 0.1

    def composed(images, theta):
        grid = affine_grid(theta, out_size, align_corners)
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    def fused(images, theta):
        out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    for fn, theta_in in ((composed, theta), (fused, theta), (fused, theta.reshape(2, -1))):
        _, (d_images, d_theta) = value_and_grad(fn, images, theta_in)
        np.testing.assert_allclose(d_theta.reshape(theta.shape), expected.d_theta, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(d_images, expected.d_images, rtol=1e-10, atol=1e-12)


@ranks_and_smooth_modes
@all_paddings
@both_aligns
def test_grid_sample_gradients_match_central_differences(rank, interpolation, padding_mode, align_corners, rng, x64):
    """Directional derivatives from central differences in float64: a reference independent
    of PyTorch (the loss is smooth within `margin` pixels of every grid point)."""
    images = random_images(rng, input_shape(rank), "float64")
    grid = random_grid(rng, 2, down(rank), IN_SIZES[rank], align_corners, margin=0.05, dtype="float64")
    weights = loss_weights(rng, (2, *down(rank), 2))
    loss = sampled_loss(weights, interpolation, padding_mode, align_corners)

    def f(images, grid):
        return float(to_numpy(loss(ops.convert_to_tensor(images), ops.convert_to_tensor(grid))))

    value, (d_images, d_grid) = value_and_grad(loss, images, grid)
    np.testing.assert_allclose(value, f(images, grid), rtol=1e-12)
    h = 1e-6
    for _ in range(2):
        v = rng.uniform(-1, 1, images.shape)
        numeric = (f(images + h * v, grid) - f(images - h * v, grid)) / (2 * h)
        np.testing.assert_allclose(np.sum(d_images * v), numeric, rtol=1e-6, atol=1e-8)
        v = rng.uniform(-1, 1, grid.shape)
        numeric = (f(images, grid + h * v) - f(images, grid - h * v)) / (2 * h)
        np.testing.assert_allclose(np.sum(d_grid * v), numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(d_grid).max() > 0.1


# --------------------------------------------------------------------------------------------
# Exactly on the border
# --------------------------------------------------------------------------------------------


@samplers
@all_modes
@all_paddings
@both_aligns
def test_grid_sample_gradients_exactly_on_the_border_match_torch(
    sampler, interpolation, padding_mode, align_corners, rng, x64
):
    """Every pixel centre, edge and corner and points one pixel outside: the gradients are
    PyTorch's, whose clip has zero gradient at and beyond the border and whose reflection
    flips the sign per fold (before, TensorFlow's clip gave 2 and JAX's 1 on a 5x5 ramp)."""
    in_size = EXACT_SIZES[align_corners]
    images = rng.uniform(0, 1, (1, *in_size, 2))
    grid = exact_positions_grid(in_size, align_corners).astype("float64")
    weights = rng.normal(size=(1, *grid.shape[1:3], 2))
    expected = torch_reference(images, grid, interpolation, padding_mode, align_corners, weights=weights)

    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    with using(sampler):
        _, (d_images, d_grid) = value_and_grad(loss, images, grid)
    np.testing.assert_allclose(d_images, expected.d_images, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_grid, expected.d_grid, rtol=1e-12, atol=1e-12)


@samplers
@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
def test_grid_sample_ramp_gradient_at_the_corner_is_zero(sampler, padding_mode):
    """The case of the report: a 5x5 horizontal ramp read at `(-1, -1)` with corners aligned."""
    ramp = np.tile(np.arange(5, dtype="float32"), (5, 1))[None, :, :, None]
    corner = np.full((1, 1, 1, 2), -1.0, "float32")

    def read(grid):
        return ops.sum(grid_sample(ramp, grid, "bilinear", padding_mode, align_corners=True))

    with using(sampler):
        _, (d_grid,) = value_and_grad(read, corner)
    np.testing.assert_array_equal(d_grid, 0)


def gradients_at_the_identity():
    """Bilinear gradients at the identity theta under this process's backend, per padding mode
    and `align_corners`: `[d_theta, d_images, d_grid]` as flat lists."""
    rng = np.random.default_rng(8)
    images = rng.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    weights = ops.convert_to_tensor(rng.normal(size=(2, 8, 8, 3)).astype("float32"))
    theta = np.tile(np.eye(2, 3, dtype="float32"), (2, 1, 1))
    grid = {align: to_numpy(affine_grid(theta, (8, 8), align)) for align in (False, True)}

    def gradients(padding_mode, align_corners):
        def loss(images, theta):
            return ops.sum(affine_sample(images, theta, None, "bilinear", padding_mode, align_corners) * weights)

        def grid_loss(grid):
            return ops.sum(grid_sample(images, grid, "bilinear", padding_mode, align_corners) * weights)

        _, (d_images, d_theta) = value_and_grad(loss, images, theta)
        _, (d_grid,) = value_and_grad(grid_loss, grid[align_corners])
        return [g.ravel().tolist() for g in (d_theta, d_images, d_grid)]

    results = {}
    for padding_mode in ("zeros", "border", "reflection"):
        for align_corners in (False, True):
            results[f"{padding_mode}-{align_corners}"] = gradients(padding_mode, align_corners)
    return results


def identity_gradients(backend):
    """`gradients_at_the_identity()` under `backend`'s portable sampler: computed here for this
    process's backend, in a subprocess (bounded in time) for another."""
    if backend == BACKEND:
        with using("portable"):
            return gradients_at_the_identity()
    script = (
        f"import json, sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS / 'ops')!r}]\n"
        "from test_ops_gradients import gradients_at_the_identity\n"
        "print(json.dumps(gradients_at_the_identity()))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_STN_NATIVE": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_affine_sample_gradients_at_the_identity_agree_across_backends():
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
@all_paddings
def test_grid_sample_nearest_is_connected_to_the_grid_alone(sampler, padding_mode, rng):
    """Nearest has zero gradient with respect to the grid, but its output depends on it: with
    only the grid requiring gradients, `backward()` works on torch and gives zeros."""
    images = rng.uniform(0, 1, (2, 5, 6, 3)).astype("float32")
    grid = rng.uniform(-1.2, 1.2, (2, 3, 4, 2)).astype("float32")

    def loss(grid):
        return ops.sum(grid_sample(images, grid, "nearest", padding_mode))

    with using(sampler):
        _, (d_grid,) = value_and_grad(loss, grid)
    np.testing.assert_array_equal(d_grid, 0)


# --------------------------------------------------------------------------------------------
# tps_grid through the sampler
# --------------------------------------------------------------------------------------------


def test_tps_gradient_through_the_sampler_is_finite_and_reaches_every_offset(rng):
    images = rng.random((2, *TPS_SHAPE)).astype("float32")
    offsets = rng.normal(scale=0.1, size=(2, 18)).astype("float32")

    def loss(offsets):
        return ops.sum(grid_sample(images, tps_grid(offsets, TPS_SHAPE[:2])) ** 2)

    _, (gradient,) = value_and_grad(loss, offsets)
    assert np.isfinite(gradient).all() and np.abs(gradient).min() > 0
