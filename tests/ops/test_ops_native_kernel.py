"""The torch backend's dispatch to PyTorch's own `grid_sample` kernel (`keras_stn/ops/_backend/torch_kernel.py`).

Under the torch backend the rest of the suite runs through the native kernel; here it is
compared with the portable `keras.ops` sampler (which the other backends run and which is
itself tested against the NumPy reference), in every mode, for outputs and for gradients, and
the rules the wrapper adds (non-finite and huge coordinates, dtypes, the exact identity) are
checked. On the other backends there is no native path, and the dispatch must say so.
"""

import os
import threading

import keras
import numpy as np
import pytest

import keras_stn
from helpers import BACKEND, all_ranks_and_modes, random_theta, to_numpy, value_and_grad
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from keras_stn.ops._backend import torch_kernel as native

tensor = keras.ops.convert_to_tensor
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the native kernel is PyTorch's")

INTERPOLATIONS = ["bilinear", "nearest", "bicubic"]
PADDINGS = ["zeros", "border", "reflection"]


def sampler(kind):
    """Runs a block with the native kernel (`"native"`) or the portable sampler."""
    return native.switched(kind == "native")


def both_samplers(fn, *args):
    """`value_and_grad(fn, *args)` on the native kernel and on the portable sampler."""
    results = []
    for kind in ("native", "portable"):
        with sampler(kind):
            results.append(value_and_grad(fn, *args))
    return results


def assert_same(native_result, portable_result, rtol=1e-9, atol=1e-9):
    (value_n, grads_n), (value_p, grads_p) = native_result, portable_result
    np.testing.assert_allclose(value_n, value_p, rtol=rtol, atol=atol)
    for g_n, g_p in zip(grads_n, grads_p):
        np.testing.assert_allclose(g_n, g_p, rtol=rtol, atol=atol)


def test_dispatch_is_torch_only_and_can_be_switched_off(monkeypatch):
    images = np.zeros((2, 4, 4, 1), "float32")
    assert native.enabled(images) == (BACKEND == "torch")
    for off in ("0", "false", "Off", "no"):
        monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, off)
        assert not native.enabled(images)
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "1")
    assert native.enabled(images) == (BACKEND == "torch")
    assert not native.enabled(np.zeros((0, 4, 4, 1), "float32")), "an empty batch takes the portable path"


def test_switched_holds_for_its_thread_and_leaves_the_environment_alone(monkeypatch):
    """`switched` overrides `KERAS_STN_NATIVE` in its own thread only, nested blocks restore what
    was before them, and the process' environment (which other threads and subprocesses see)
    is never written."""
    monkeypatch.delenv(native.ENVIRONMENT_VARIABLE, raising=False)
    images = np.zeros((2, 4, 4, 1), "float32")
    on_torch = BACKEND == "torch"
    seen = {}
    with native.switched(False):
        assert native.ENVIRONMENT_VARIABLE not in os.environ
        other = threading.Thread(target=lambda: seen.update(other=native.enabled(images)))
        other.start()
        other.join(timeout=60)
        with native.switched(True):
            seen["inner"] = native.enabled(images)
        seen["outer"] = native.enabled(images)
    assert seen == {"other": on_torch, "inner": on_torch, "outer": False}
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "0")
    with native.switched(True):
        assert native.enabled(images) == on_torch
    assert not native.enabled(images) and os.environ[native.ENVIRONMENT_VARIABLE] == "0"


@torch_only
def test_the_ops_and_the_layer_call_the_native_kernel(monkeypatch, rng):
    import torch.nn.functional as F

    calls = []
    original = F.grid_sample

    def spy(*args, **kwargs):
        calls.append(kwargs["mode"])
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", spy)
    images = rng.random((2, 6, 6, 1)).astype("float32")
    theta = np.tile(np.eye(2, 3, dtype="float32").reshape(1, 6), (2, 1))
    grid_sample(images, affine_grid(theta, (6, 6)), interpolation="nearest")
    affine_sample(images, theta, interpolation="bicubic")
    keras_stn.SpatialTransformer((6, 6))(images)
    assert calls == ["nearest", "bicubic", "bilinear"]
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "0")
    affine_sample(images, theta)
    assert len(calls) == 3, "KERAS_STN_NATIVE=0 must bypass the native kernel"


@torch_only
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_native_grid_sample_matches_portable(interpolation, padding_mode, align_corners, data_format, rng):
    in_size, out_size = (5, 7), (6, 9)  # the output is larger than the input, odd sizes
    theta = random_theta(rng, 2, in_size, out_size, align_corners, margin=1e-3, dtype="float64", scale=0.6)
    theta[:, :, :2] *= 1.4  # zoomed out: the grid reaches outside the image on every side
    grid = to_numpy(affine_grid(theta, out_size, align_corners))
    images = rng.random((2, *in_size, 3))
    weights = rng.normal(size=(2, *out_size, 3))
    if data_format == "channels_first":
        images, weights = images.transpose(0, 3, 1, 2), weights.transpose(0, 3, 1, 2)

    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners, data_format)
        return keras.ops.sum(out * tensor(weights))

    assert_same(*both_samplers(loss, images, grid))


# Input and output sizes (the output larger along some axes) per spatial rank.
AFFINE_SIZES = {2: ((6, 5), (4, 7)), 3: ((3, 4, 5), (4, 3, 6))}


@torch_only
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@all_ranks_and_modes
def test_native_affine_sample_matches_portable(rank, interpolation, padding_mode, align_corners, rng):
    """Through theta as well: PyTorch's affine_grid against the portable pixel arithmetic."""
    in_size, out_size = AFFINE_SIZES[rank]
    theta = random_theta(rng, 3, in_size, out_size, align_corners, margin=1e-3, dtype="float64", scale=0.5)
    images = rng.random((3, *in_size, 2))
    weights = tensor(rng.normal(size=(3, *out_size, 2)))

    def loss(images, theta):
        out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
        return keras.ops.sum(out * weights)

    assert_same(*both_samplers(loss, images, theta), rtol=1e-7, atol=1e-9)


@torch_only
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_native_non_finite_coordinates_read_nothing(interpolation, padding_mode, rng):
    """NaN and inf grid points give 0 and zero gradients, whatever PyTorch's kernel does with them;
    the other points are untouched."""
    images = rng.random((1, 4, 4, 1))
    grid = rng.uniform(-0.9, 0.9, (1, 3, 3, 2))
    grid[0, 0, 0, 0] = np.nan
    grid[0, 1, 1, 1] = np.inf
    grid[0, 2, 2, 0] = -np.inf
    bad = np.zeros((1, 3, 3), bool)
    bad[0, 0, 0] = bad[0, 1, 1] = bad[0, 2, 2] = True

    def loss(images, grid):
        return keras.ops.sum(grid_sample(images, grid, interpolation, padding_mode))

    (value, (grad_images, grad_grid)), portable = both_samplers(loss, images, grid)
    assert np.all(np.isfinite(grad_images)) and np.all(np.isfinite(grad_grid))
    assert np.all(grad_grid[bad] == 0)
    with sampler("native"):
        out = to_numpy(grid_sample(images, grid, interpolation, padding_mode))
    assert np.all(out[bad] == 0) and np.all(out[~bad] != 0)
    assert_same((value, (grad_images, grad_grid)), portable)


@torch_only
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_native_affine_sample_non_finite_and_huge_thetas(interpolation, padding_mode, align_corners, rng):
    """`affine_sample` applies the grid rules per image (native.affine_sample): an image whose
    theta has a NaN or inf reads nothing, with zero gradients, a huge theta reads the padding,
    and the other images are untouched; the output size 1 takes the unit-size grid path."""
    for out_size in [(4, 5), (1, 3)]:
        theta = random_theta(rng, 6, (5, 6), out_size, align_corners, margin=1e-3, dtype="float64", scale=0.5)
        theta[1, 0, 0] = np.nan
        theta[2, 1, 2] = np.inf
        theta[3, 0, 1] = -np.inf
        theta[4, 0, 2] = 1e35  # clipped to 2**100: far to the right
        images = rng.random((6, 5, 6, 2)) + 0.5
        weights = tensor(rng.normal(size=(6, *out_size, 2)))

        def loss(images, theta, out_size=out_size, weights=weights):
            out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
            return keras.ops.sum(out * weights)

        native_result, portable_result = both_samplers(loss, images, theta)
        assert_same(native_result, portable_result, rtol=1e-7, atol=1e-9)
        _, (grad_images, grad_theta) = native_result
        assert np.all(grad_images[1:4] == 0) and np.all(grad_theta[1:4] == 0)
        with sampler("native"):
            out = to_numpy(affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners))
        assert np.all(out[1:4] == 0)
        assert np.all(out[4] == 0) if padding_mode == "zeros" else np.all(out[4] != 0)
        assert np.any(out[0] != 0) and np.any(out[5] != 0)


@torch_only
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_native_huge_coordinates_agree(interpolation, padding_mode, rng):
    """Far outside the image (up to float32's maximum) both read the padding: 0, or the edge."""
    images = rng.random((1, 3, 4, 1)).astype("float32")
    big = np.array([1e30, -1e30, 3e38, -3e38, 2.0**100, 1e6], "float32")
    grid = np.stack([big, np.zeros_like(big)], axis=-1)[None, None]
    grid = np.concatenate([grid, grid[..., ::-1]], axis=1)  # the same along y
    outputs = []
    for kind in ("native", "portable"):
        with sampler(kind):
            outputs.append(to_numpy(grid_sample(images, grid, interpolation, padding_mode)))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    if padding_mode == "zeros":
        assert np.all(outputs[0] == 0)


@torch_only
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_half_precision_keeps_the_dtype(dtype, rng):
    import torch

    images = torch.tensor(rng.random((2, 5, 5, 3)), dtype=getattr(torch, dtype))
    theta = random_theta(rng, 2, (5, 5), (5, 5), False, dtype="float32")
    outputs = []
    for kind in ("native", "portable"):
        with sampler(kind):
            out = affine_sample(images, theta)
            assert keras.backend.standardize_dtype(out.dtype) == dtype
            outputs.append(to_numpy(out.float()))
    tolerance = 1e-2 if dtype == "bfloat16" else 1e-3  # one rounding to the half dtype
    np.testing.assert_allclose(outputs[0], outputs[1], atol=tolerance)


@torch_only
@pytest.mark.parametrize("channels_first", [False, True])
def test_native_identity_is_exact_with_the_kernels_gradient(channels_first, rng):
    """An exact identity theta returns the images bit for bit (PyTorch's kernel alone is off
    by a rounding); the gradients are still the kernel's. At the identity every pixel sits on
    a kink of bilinear interpolation, where the gradient with respect to theta is one-sided:
    the portable sampler takes the forward difference, the kernel whichever side its rounding
    lands on, so only the images' gradient and the x row of the shifted image's theta gradient are compared."""
    images = rng.random((3, 7, 5, 2)).astype("float32")
    if channels_first:
        images = images.transpose(0, 3, 1, 2)
    theta = np.tile(np.eye(2, 3, dtype="float32"), (3, 1, 1))
    theta[2, 0, 2] = 0.1  # not the identity: no exactness promised for that image
    data_format = "channels_first" if channels_first else "channels_last"
    weights = tensor(rng.normal(size=images.shape).astype("float32"))

    def loss(images, theta):
        return keras.ops.sum(affine_sample(images, theta, data_format=data_format) * weights)

    with sampler("native"):
        out = to_numpy(affine_sample(images, theta, data_format=data_format))
    np.testing.assert_array_equal(out[:2], images[:2])
    (value_n, (images_n, theta_n)), (value_p, (images_p, theta_p)) = both_samplers(loss, images, theta)
    np.testing.assert_allclose(value_n, value_p, rtol=1e-5)
    np.testing.assert_allclose(images_n, images_p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(theta_n[2, 0], theta_p[2, 0], rtol=1e-4, atol=1e-4)  # its y: still on kinks
    assert np.all(np.isfinite(theta_n))


@torch_only
@pytest.mark.xdist_group("compilation")  # with the other torch.compile tests, on one worker
def test_the_exact_identity_pass_runs_only_where_it_can_matter(monkeypatch, rng):
    """Eager on the CPU, the pass over the output that returns an identity warp's pixels bit for
    bit is left out when no theta of the batch is the identity (reading that costs no device
    sync there); compiled, it is always in the graph (a branch on a value would break it), and
    the identity stays exact."""
    import torch

    calls = []
    kept = native.ExactWhere.apply
    monkeypatch.setattr(native.ExactWhere, "apply", lambda *args: calls.append(1) or kept(*args))
    images = torch.tensor(rng.random((2, 6, 5, 3)).astype("float32"))
    warped = torch.tensor(random_theta(rng, 2, (6, 5), (6, 5), False))
    identity = warped.clone()
    identity[1] = torch.eye(2, 3)
    with native.switched(True):
        affine_sample(images, warped)
        assert calls == []
        assert torch.equal(affine_sample(images, identity)[1], images[1])
        assert calls == [1]
        torch._dynamo.reset()
        compiled = torch.compile(lambda x, t: affine_sample(x, t), fullgraph=True)
        compiled(images, warped)  # traced on a batch without the identity, in one graph:
        assert torch.equal(compiled(images, identity)[1], images[1])  # the pass is in it
    # Off the CPU the flags are not read (a meta tensor has no values: reading one raises).
    assert not native.skips_exact_pass(torch.zeros((2, 1, 1, 1), dtype=torch.bool, device="meta"))


@torch_only
def test_tps_constants_are_made_once_per_dtype_and_device():
    """On torch (eager) the spline's solver is not copied from the host on every call."""
    from keras_stn.ops import tps

    like = keras.ops.zeros((1, 18))
    first, second = tps.solver_tensors(3, "float32", like), tps.solver_tensors(3, "float32", like)
    assert all(a is b for a, b in zip(first, second))
    assert tps.solver_tensors(3, "float64", like)[1].dtype != first[1].dtype


@torch_only
def test_the_portable_sampler_trains_under_deterministic_algorithms(rng):
    """PyTorch's CUDA grid_sample backward has no deterministic implementation; the way out
    is `KERAS_STN_NATIVE=0`, whose ops must all run under `use_deterministic_algorithms`."""
    import torch

    images = rng.random((2, 6, 6, 2)).astype("float32")
    theta = random_theta(rng, 2, (6, 6), (5, 4), False)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with native.switched(False):
            for interpolation in INTERPOLATIONS:

                def loss(x, t, interpolation=interpolation):
                    return keras.ops.sum(affine_sample(x, t, (5, 4), interpolation, "reflection"))

                _, grads = value_and_grad(loss, images, theta)
                assert all(np.isfinite(g).all() for g in grads)
    finally:
        torch.use_deterministic_algorithms(previous)
