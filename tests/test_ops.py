"""Tests of `keras_stn.ops`: `affine_grid`, `grid_sample` and `affine_sample`.

Every test runs under the backend that `KERAS_BACKEND` selects. The numerical references are
the float64 NumPy implementation in `tests/reference.py` and PyTorch's own `affine_grid` /
`grid_sample` (through the `torch_*` helpers below, which import it with `importorskip`).

Random grids are generated in pixel units and moved at least `margin` away from integer and
half-integer pixel positions: there `floor`/`round`, the zero-padding bounds and the
reflection/clip folds switch, so float32 and float64 may legitimately take different branches
and derivatives are not unique. Points exactly on those positions have their own tests.
"""

import keras
import numpy as np
import pytest
from keras import ops

from helpers import (
    BACKEND,
    away_from_kinks,
    loss_weights,
    random_theta,
    to_normalized,
    to_numpy,
    to_pixels,
    value_and_grad,
)
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from keras_stn.ops._backend.xla import computed_once
from reference import affine_grid_ref, grid_sample_ref

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
ALIGN = (False, True)

all_modes = pytest.mark.parametrize("interpolation", INTERPOLATIONS)
all_paddings = pytest.mark.parametrize("padding_mode", PADDING_MODES)
both_aligns = pytest.mark.parametrize("align_corners", ALIGN, ids=["edges", "corners"])

# Most tests share one image shape and two output sizes: under JAX every new shape compiles
# every primitive again, which would dominate the run time.
IN_SIZE = (8, 12)  # H != W, both divisible by 4 (see the centre-crop test)
IMAGE_SHAPE = (2, *IN_SIZE, 2)
DOWN, UP = (4, 6), (11, 13)
# (images shape (B, H, W, C), output size (H_out, W_out)): down- and up-sampling.
SHAPES = {"down": (IMAGE_SHAPE, DOWN), "up": (IMAGE_SHAPE, UP)}
shapes = pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def random_grid(rng, batch, out_size, in_size, align_corners, low=-1.5, high=1.5, margin=1e-3, dtype="float32"):
    """A `(batch, *out_size, 2)` grid, uniform in [low, high], away from pixel kinks."""
    grid = rng.uniform(low, high, (batch, *out_size, 2))
    for axis, size in ((0, in_size[1]), (1, in_size[0])):
        if align_corners and size == 1:
            continue  # every coordinate reads the single pixel
        pixel = away_from_kinks(to_pixels(grid[..., axis], size, align_corners), margin)
        grid[..., axis] = to_normalized(pixel, size, align_corners)
    return grid.astype(dtype)


def random_images(rng, shape, dtype="float32"):
    return rng.uniform(0, 1, shape).astype(dtype)


def exact_positions_grid(in_size, align_corners):
    """Grid through every pixel centre, every pixel edge, the corners and one pixel outside.

    Sizes are chosen by the callers so that all these coordinates, and the arithmetic that
    unnormalises them, are exact in float32 (the spans are powers of two).
    """

    def axis(size):
        span = size - 1 if align_corners else size
        pixel = np.arange(-2, 2 * span + 3) / 2  # halves from one pixel before to one after
        if not align_corners:
            pixel = pixel - 0.5  # edges at -0.5, ..., size - 0.5; centres at integers
        return to_normalized(pixel, size, align_corners)

    xs, ys = axis(in_size[1]), axis(in_size[0])
    x, y = np.meshgrid(xs, ys)
    return np.stack([x, y], axis=-1)[None].astype("float32")


# --------------------------------------------------------------------------------------------
# PyTorch references
# --------------------------------------------------------------------------------------------


def torch_grid_sample(images, grid, interpolation, padding_mode, align_corners):
    torch = pytest.importorskip("torch")
    out = torch.nn.functional.grid_sample(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        torch.from_numpy(np.ascontiguousarray(grid)),
        mode=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    return out.detach().numpy().transpose(0, 2, 3, 1)


def torch_affine_grid(theta, size, align_corners, channels=1):
    torch = pytest.importorskip("torch")
    theta = torch.from_numpy(np.ascontiguousarray(theta.reshape(-1, 2, 3)))
    grid = torch.nn.functional.affine_grid(theta, (theta.shape[0], channels, *size), align_corners=align_corners)
    return grid.detach().numpy()


def torch_grads(images, grid, weights, interpolation, padding_mode, align_corners):
    """Gradients of `sum(grid_sample(images, grid) * weights)` w.r.t. images and grid."""
    torch = pytest.importorskip("torch")
    images_t = torch.tensor(images.transpose(0, 3, 1, 2), requires_grad=True)
    grid_t = torch.tensor(grid, requires_grad=True)
    out = torch.nn.functional.grid_sample(
        images_t, grid_t, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    loss = (out * torch.from_numpy(weights.transpose(0, 3, 1, 2).copy())).sum()
    d_images, d_grid = torch.autograd.grad(loss, (images_t, grid_t))
    return d_images.numpy().transpose(0, 2, 3, 1), d_grid.numpy()


def torch_theta_grad(images, theta, size, weights, interpolation, padding_mode, align_corners):
    torch = pytest.importorskip("torch")
    theta_t = torch.tensor(theta, requires_grad=True)
    images_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    grid = torch.nn.functional.affine_grid(
        theta_t, (images.shape[0], images.shape[3], *size), align_corners=align_corners
    )
    out = torch.nn.functional.grid_sample(
        images_t, grid, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    loss = (out * torch.from_numpy(weights.transpose(0, 3, 1, 2).copy())).sum()
    (d_theta,) = torch.autograd.grad(loss, (theta_t,))
    return d_theta.numpy()


def sample_np(images, grid, interpolation, padding_mode, align_corners, **kwargs):
    return to_numpy(grid_sample(images, grid, interpolation, padding_mode, align_corners, **kwargs))


# --------------------------------------------------------------------------------------------
# 1. Forward parity with the NumPy reference
# --------------------------------------------------------------------------------------------


@all_modes
@all_paddings
@both_aligns
@shapes
@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_grid_sample_matches_references_float32(interpolation, padding_mode, align_corners, shape, reference, rng):
    image_shape, out_size = SHAPES[shape]
    images = random_images(rng, image_shape)
    grid = random_grid(rng, image_shape[0], out_size, image_shape[1:3], align_corners)
    out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
    assert tuple(out.shape) == (image_shape[0], *out_size, image_shape[3])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    sample_ref = grid_sample_ref if reference == "numpy" else torch_grid_sample
    expected = sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)


@all_modes
@all_paddings
@both_aligns
@shapes
def test_grid_sample_matches_reference_float64(interpolation, padding_mode, align_corners, shape, rng, x64):
    image_shape, out_size = SHAPES[shape]
    images = random_images(rng, image_shape, "float64")
    grid = random_grid(rng, image_shape[0], out_size, image_shape[1:3], align_corners, dtype="float64")
    out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-12, atol=1e-12)


@all_modes
@both_aligns
def test_reflection_far_outside_matches_reference(interpolation, align_corners, rng):
    """Coordinates several image widths outside fold back more than once."""
    images = random_images(rng, IMAGE_SHAPE)
    grid = random_grid(rng, 2, UP, IN_SIZE, align_corners, low=-6, high=6)
    expected = grid_sample_ref(images, grid, interpolation, "reflection", align_corners)
    out = sample_np(images, grid, interpolation, "reflection", align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@both_aligns
@pytest.mark.parametrize("theta_shape", [(2, 2, 3), (2, 6)], ids=["matrix", "flat"])
@pytest.mark.parametrize("size", [(5, 7), (1, 1), (1, 6), (4, 1)], ids=str)
def test_affine_grid_matches_reference(align_corners, theta_shape, size, rng):
    theta = rng.uniform(-2, 2, (2, 2, 3)).astype("float32")
    out = affine_grid(theta.reshape(theta_shape), size, align_corners)
    assert tuple(out.shape) == (2, *size, 2)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = affine_grid_ref(theta.astype(np.float64), size, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6, atol=1e-6)


@both_aligns
def test_affine_grid_matches_reference_float64(align_corners, rng, x64):
    theta = rng.uniform(-2, 2, (2, 2, 3))
    out = affine_grid(theta, (6, 9), align_corners)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    np.testing.assert_allclose(to_numpy(out), affine_grid_ref(theta, (6, 9), align_corners), rtol=1e-14, atol=1e-14)


@all_modes
@all_paddings
@both_aligns
@shapes
def test_affine_sample_matches_reference(interpolation, padding_mode, align_corners, shape, rng):
    image_shape, out_size = SHAPES[shape]
    images = random_images(rng, image_shape)
    theta = random_theta(rng, image_shape[0], image_shape[1:3], out_size, align_corners)
    out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
    assert tuple(out.shape) == (image_shape[0], *out_size, image_shape[3])
    grid = affine_grid_ref(theta.astype(np.float64), out_size, align_corners)
    expected = grid_sample_ref(images.astype(np.float64), grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 2. Forward parity with PyTorch
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed:UserWarning")
@both_aligns
@pytest.mark.parametrize("theta_shape", [(2, 2, 3), (2, 6)], ids=["matrix", "flat"])
@pytest.mark.parametrize("size", [(5, 7), (8, 3), (1, 1), (1, 4)], ids=str)
def test_affine_grid_matches_torch(align_corners, theta_shape, size, rng):
    theta = rng.uniform(-2, 2, (2, 2, 3)).astype("float32")
    out = to_numpy(affine_grid(theta.reshape(theta_shape), size, align_corners))
    np.testing.assert_allclose(out, torch_affine_grid(theta, size, align_corners), rtol=1e-6, atol=1e-6)


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize(("out_size", "theta_shape"), [(DOWN, (2, 2, 3)), (UP, (2, 6))], ids=["down-matrix", "up-flat"])
def test_affine_sample_matches_torch(interpolation, padding_mode, align_corners, out_size, theta_shape, rng):
    images = random_images(rng, IMAGE_SHAPE)
    theta = random_theta(rng, 2, IN_SIZE, out_size, align_corners)
    grid = torch_affine_grid(theta, out_size, align_corners)
    expected = torch_grid_sample(images, grid, interpolation, padding_mode, align_corners)
    fused = affine_sample(images, theta.reshape(theta_shape), out_size, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(to_numpy(fused), expected, rtol=1e-5, atol=1e-5)
    grid = affine_grid(theta.reshape(theta_shape), out_size, align_corners)
    composed = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(composed, expected, rtol=1e-5, atol=1e-5)


def test_affine_sample_default_size_is_input_size(rng):
    images = random_images(rng, IMAGE_SHAPE)
    theta = random_theta(rng, 2, IN_SIZE, IN_SIZE, False)
    out = affine_sample(images, theta)
    assert tuple(out.shape) == IMAGE_SHAPE
    np.testing.assert_allclose(to_numpy(out), to_numpy(affine_sample(images, theta, IN_SIZE)), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# 3. Data formats
# --------------------------------------------------------------------------------------------


@all_modes
@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_channels_first_equals_channels_last(interpolation, padding_mode, rng):
    images = random_images(rng, IMAGE_SHAPE)
    images_cf = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    grid = random_grid(rng, 2, DOWN, IN_SIZE, False)
    theta = random_theta(rng, 2, IN_SIZE, DOWN, False)
    last = sample_np(images, grid, interpolation, padding_mode, False, data_format="channels_last")
    first = sample_np(images_cf, grid, interpolation, padding_mode, False, data_format="channels_first")
    assert first.shape == (2, 2, *DOWN)
    np.testing.assert_allclose(first.transpose(0, 2, 3, 1), last, rtol=1e-6, atol=1e-7)
    last = to_numpy(affine_sample(images, theta, DOWN, interpolation, padding_mode, data_format="channels_last"))
    first = to_numpy(affine_sample(images_cf, theta, DOWN, interpolation, padding_mode, data_format="channels_first"))
    assert first.shape == (2, 2, *DOWN)
    np.testing.assert_allclose(first.transpose(0, 2, 3, 1), last, rtol=1e-6, atol=1e-7)


def test_data_format_defaults_to_keras_config(rng):
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


# --------------------------------------------------------------------------------------------
# 4. Gradients
# --------------------------------------------------------------------------------------------


def sampled_loss(weights, interpolation, padding_mode, align_corners):
    def loss(images, grid):
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    return loss


@all_modes
@all_paddings
@both_aligns
def test_gradients_match_torch(interpolation, padding_mode, align_corners, rng, x64):
    images = random_images(rng, IMAGE_SHAPE, "float64")
    grid = random_grid(rng, 2, DOWN, IN_SIZE, align_corners, margin=0.02, dtype="float64")
    weights = loss_weights(rng, (2, *DOWN, 2))
    loss = sampled_loss(weights, interpolation, padding_mode, align_corners)
    value, (d_images, d_grid) = value_and_grad(loss, images, grid)
    expected_images, expected_grid = torch_grads(images, grid, weights, interpolation, padding_mode, align_corners)
    expected_value = np.sum(torch_grid_sample(images, grid, interpolation, padding_mode, align_corners) * weights)
    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    np.testing.assert_allclose(d_images, expected_images, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_grid, expected_grid, rtol=1e-10, atol=1e-10)
    if interpolation == "nearest":
        np.testing.assert_array_equal(d_grid, 0)
    else:
        assert np.abs(d_grid).max() > 0.1  # the comparison above is not between zeros


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@all_paddings
@both_aligns
def test_theta_gradients_match_torch(interpolation, padding_mode, align_corners, rng, x64):
    in_size, out_size = IN_SIZE, DOWN
    images = random_images(rng, IMAGE_SHAPE, "float64")
    theta = random_theta(rng, 2, in_size, out_size, align_corners, margin=1e-3, dtype="float64")
    weights = loss_weights(rng, (2, *out_size, 2))
    expected = torch_theta_grad(images, theta, out_size, weights, interpolation, padding_mode, align_corners)
    assert np.abs(expected).max() > 0.1

    def composed(images, theta):
        grid = affine_grid(theta, out_size, align_corners)
        out = grid_sample(images, grid, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    def fused(images, theta):
        out = affine_sample(images, theta, out_size, interpolation, padding_mode, align_corners)
        return ops.sum(out * ops.convert_to_tensor(weights))

    for fn, theta_in in ((composed, theta), (fused, theta), (fused, theta.reshape(2, 6))):
        _, (_, d_theta) = value_and_grad(fn, images, theta_in)
        np.testing.assert_allclose(d_theta.reshape(2, 2, 3), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@all_paddings
@both_aligns
def test_gradients_match_central_differences(interpolation, padding_mode, align_corners, rng, x64):
    """Directional derivatives from central differences in float64: a reference independent
    of PyTorch (the loss is smooth within `margin` pixels of every grid point)."""
    images = random_images(rng, IMAGE_SHAPE, "float64")
    grid = random_grid(rng, 2, DOWN, IN_SIZE, align_corners, margin=0.05, dtype="float64")
    weights = loss_weights(rng, (2, *DOWN, 2))
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
# 5. Compilation and use inside Keras models
# --------------------------------------------------------------------------------------------


def two_samplers(images, grid, theta):
    """One function that exercises both samplers in several modes."""
    return (
        grid_sample(images, grid, "bicubic", "reflection", False),
        grid_sample(images, grid, "nearest", "border", True),
        affine_sample(images, theta, (5, 4), "bilinear", "zeros", False),
        affine_sample(images, theta, None, "bicubic", "border", True),
    )


def compilation_inputs(rng, batch, in_size=IN_SIZE):
    images = random_images(rng, (batch, *in_size, 2))
    grid = random_grid(rng, batch, DOWN, in_size, False, margin=0.01)
    theta = random_theta(rng, batch, in_size, in_size, True, margin=1e-3)
    return images, grid, theta


def assert_all_close(results, expected, rtol=1e-5, atol=1e-5):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=rtol, atol=atol)


def test_computed_once_passes_values_and_gradients_through(rng):
    """`computed_once` only changes how XLA schedules the per-image affine coefficients: the
    values (NaN, inf and float32's extremes included) and the gradients are unchanged."""
    special = np.array([[1.5, -2.0, np.inf], [-np.inf, np.nan, 3.4e38]], "float32")
    np.testing.assert_array_equal(to_numpy(computed_once(ops.convert_to_tensor(special))), special)
    values = rng.normal(size=(4, 2, 3)).astype("float32")
    weights = rng.normal(size=(4, 2, 3)).astype("float32")
    value, (grad,) = value_and_grad(lambda t: ops.sum(computed_once(t) * ops.convert_to_tensor(weights)), values)
    np.testing.assert_allclose(value, np.sum(values * weights), rtol=1e-5)
    np.testing.assert_array_equal(grad, weights)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit")
def test_jax_jit_matches_eager(rng):
    import jax

    args = compilation_inputs(rng, 2)
    assert_all_close(jax.jit(two_samplers)(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_jit_compile_matches_eager(rng):
    import tensorflow as tf

    compiled = tf.function(two_samplers, jit_compile=True)
    args = compilation_inputs(rng, 2)
    assert_all_close(compiled(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_with_unknown_batch(rng):
    import tensorflow as tf

    compiled = tf.function(
        two_samplers,
        input_signature=[
            tf.TensorSpec((None, *IN_SIZE, 2), tf.float32),
            tf.TensorSpec((None, *DOWN, 2), tf.float32),
            tf.TensorSpec((None, 2, 3), tf.float32),
        ],
    )
    for batch in (1, 2):
        args = compilation_inputs(rng, batch)
        assert_all_close(compiled(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_with_unknown_height_and_width(rng):
    import tensorflow as tf

    def fn(images, grid, theta):
        return (
            grid_sample(images, grid, "bicubic", "reflection", False),
            affine_sample(images, theta, None, "bilinear", "border", True),
            affine_sample(images, theta, (4, 3), "nearest", "zeros", False),
        )

    compiled = tf.function(
        fn,
        input_signature=[
            tf.TensorSpec((None, None, None, 2), tf.float32),
            tf.TensorSpec((None, None, None, 2), tf.float32),
            tf.TensorSpec((None, 6), tf.float32),
        ],
    )
    for batch, in_size in ((1, IN_SIZE), (2, (5, 9))):
        images, grid, theta = compilation_inputs(rng, batch, in_size)
        args = (images, grid, theta.reshape(batch, 6))
        results = compiled(*args)
        assert tuple(results[1].shape) == (batch, *in_size, 2)
        assert_all_close(results, fn(*args))


class AffineWarp(keras.layers.Layer):
    """Test-only layer: warps images by a theta input and samples them at a grid input."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, images, theta, grid):
        warped = affine_sample(images, theta, self.size, "bilinear", "border", False)
        sampled = grid_sample(images, grid, "nearest", "zeros", True)
        return warped, sampled


def test_functional_model_with_dynamic_batch(rng):
    images_in = keras.Input((*IN_SIZE, 2))
    theta_in = keras.Input((6,))
    grid_in = keras.Input((*DOWN, 2))
    warped, sampled = AffineWarp((4, 5))(images_in, theta_in, grid_in)
    assert tuple(warped.shape) == (None, 4, 5, 2)
    assert tuple(sampled.shape) == (None, *DOWN, 2)
    model = keras.Model([images_in, theta_in, grid_in], [warped, sampled])
    for batch in (1, 3):
        images, grid, theta = compilation_inputs(rng, batch)
        theta = theta.reshape(batch, 6)
        got = model.predict([images, theta, grid], batch_size=batch, verbose=0)
        expected = (
            affine_sample(images, theta, (4, 5), "bilinear", "border", False),
            grid_sample(images, grid, "nearest", "zeros", True),
        )
        assert got[0].shape == (batch, 4, 5, 2)
        assert_all_close(got, expected)


# --------------------------------------------------------------------------------------------
# 6. Dtypes
# --------------------------------------------------------------------------------------------

DTYPE_TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-6}


def cast(x, dtype):
    return ops.cast(ops.convert_to_tensor(x), dtype)


def as_float32(x):
    return to_numpy(ops.cast(x, "float32"))


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
@pytest.mark.parametrize("grid_dtype", ["float32", "same"])
@all_modes
def test_grid_sample_keeps_images_dtype(dtype, grid_dtype, interpolation, rng, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    grid_dtype = dtype if grid_dtype == "same" else grid_dtype
    images = cast(random_images(rng, IMAGE_SHAPE), dtype)
    grid = cast(random_grid(rng, 2, DOWN, IN_SIZE, False, margin=0.02), grid_dtype)
    out = grid_sample(images, grid, interpolation, "reflection")
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    # float32 computation on the same (rounded) values: only the final rounding differs.
    expected = sample_np(as_float32(images), as_float32(grid), interpolation, "reflection", False)
    tol = DTYPE_TOLERANCE[dtype]
    np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    if dtype == "float64":
        # float64 images are sampled in float64, so they match the reference closely.
        reference = grid_sample_ref(to_numpy(images), as_float32(grid).astype(np.float64), interpolation, "reflection")
        np.testing.assert_allclose(to_numpy(out), reference, rtol=1e-12, atol=1e-12)


@all_modes
def test_float64_coordinates_are_used_in_float64(interpolation, rng, x64):
    """float32 images with a float64 grid (or theta) are sampled at the float64 coordinates:
    the only error left is the final rounding to float32. Rounding the coordinates to float32
    instead would move them by up to ~1e-7 of the width, visible on a steep image."""
    images = np.zeros(IMAGE_SHAPE, "float32")
    images[:, :, 1::2] = 1000  # +-1000 per pixel: slopes that show any coordinate error
    grid = random_grid(rng, 2, UP, IN_SIZE, False, margin=0.05, dtype="float64")
    out = grid_sample(images, grid, interpolation, "reflection")
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = grid_sample_ref(images, grid, interpolation, "reflection")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=2e-7, atol=1e-9)
    theta = random_theta(rng, 2, IN_SIZE, UP, False, dtype="float64")
    out = affine_sample(images, theta, UP, interpolation, "reflection")
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = grid_sample_ref(images, affine_grid_ref(theta, UP), interpolation, "reflection")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=2e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
def test_affine_sample_and_affine_grid_keep_dtype(dtype, rng, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    images = cast(random_images(rng, IMAGE_SHAPE), dtype)
    theta = random_theta(rng, 2, IN_SIZE, DOWN, False, margin=1e-2)
    tol = DTYPE_TOLERANCE[dtype]
    for theta_dtype in ("float32", dtype):
        out = affine_sample(images, cast(theta, theta_dtype), DOWN, "bilinear", "border")
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        rounded_theta = as_float32(cast(theta, theta_dtype))
        expected = to_numpy(affine_sample(as_float32(images), rounded_theta, DOWN, "bilinear", "border"))
        np.testing.assert_allclose(as_float32(out), expected, rtol=tol, atol=tol)
    grid = affine_grid(cast(theta, dtype), DOWN)
    assert keras.backend.standardize_dtype(grid.dtype) == dtype
    expected = to_numpy(affine_grid(as_float32(cast(theta, dtype)), DOWN))
    np.testing.assert_allclose(as_float32(grid), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int64", "bool"])
def test_non_floating_inputs_raise_type_error(dtype, rng):
    images = random_images(rng, (1, 4, 4, 1))
    grid = random_grid(rng, 1, (2, 2), (4, 4), False)
    theta = np.eye(2, 3, dtype="float32")[None]
    bad = lambda x: np.zeros(x.shape, dtype)  # noqa: E731
    cases = [
        ("images", lambda: grid_sample(bad(images), grid)),
        ("grid", lambda: grid_sample(images, bad(grid))),
        ("images", lambda: affine_sample(bad(images), theta)),
        ("theta", lambda: affine_sample(images, bad(theta))),
        ("theta", lambda: affine_grid(bad(theta), (3, 3))),
    ]
    for name, call in cases:
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert f"`{name}`" in message and "Got" in message and "float" in message, message


# --------------------------------------------------------------------------------------------
# 7. Edge cases
# --------------------------------------------------------------------------------------------

NON_FINITE = [  # (b, i, j, x, y)
    (0, 0, 0, np.nan, 0.1),
    (0, 0, 1, 0.2, np.inf),
    (0, 1, 2, -np.inf, -np.inf),
    (1, 2, 3, np.nan, np.nan),
    (1, 3, 4, np.inf, -0.3),
    (1, 0, 2, np.nan, -np.inf),
]
HUGE = [
    (0, 2, 0, 1e30, 0.1),
    (0, 3, 1, -1e30, 0.2),
    (1, 0, 0, 0.3, 1e30),
    (1, 1, 1, -1e30, -1e30),
    (1, 1, 4, 1e30, -1e30),
    (0, 3, 4, 1e30, 1e30),
]


def special_grid(rng, align_corners):
    grid = random_grid(rng, 2, DOWN, IN_SIZE, align_corners, margin=0.02)
    for b, i, j, x, y in NON_FINITE + HUGE:
        grid[b, i, j] = (x, y)
    non_finite = np.zeros(grid.shape[:3], bool)
    huge = np.zeros(grid.shape[:3], bool)
    for b, i, j, *_ in NON_FINITE:
        non_finite[b, i, j] = True
    for b, i, j, *_ in HUGE:
        huge[b, i, j] = True
    return grid, non_finite, huge


@all_modes
@all_paddings
@both_aligns
def test_non_finite_and_huge_coordinates(interpolation, padding_mode, align_corners, rng):
    images = random_images(rng, IMAGE_SHAPE) + 0.5  # no zeros in the images
    grid, non_finite, huge = special_grid(rng, align_corners)
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


@all_modes
@all_paddings
@both_aligns
def test_gradients_finite_with_non_finite_and_huge_coordinates(interpolation, padding_mode, align_corners, rng):
    images = random_images(rng, IMAGE_SHAPE)
    grid, non_finite, huge = special_grid(rng, align_corners)
    weights = loss_weights(rng, (2, *DOWN, 2), "float32")
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
def test_nan_theta_zeroes_its_own_image_only(interpolation, padding_mode, rng):
    """A NaN anywhere in an image's theta makes all its coordinates NaN: that image reads 0 with
    zero gradients, and the other images of the batch are untouched."""
    images = random_images(rng, (3, *IN_SIZE, 2)) + 0.5
    theta = np.tile(np.eye(2, 3, dtype="float32"), (3, 1, 1))
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
def test_zero_scale_reads_one_point(interpolation, padding_mode, rng):
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


# Spans that are powers of two keep every centre/edge coordinate exact in float32.
EXACT_SIZES = {False: (4, 8), True: (5, 9)}


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_pixel_centres_edges_and_corners(interpolation, padding_mode, align_corners, reference, rng):
    in_size = EXACT_SIZES[align_corners]
    images = random_images(rng, (1, *in_size, 2))
    grid = exact_positions_grid(in_size, align_corners)
    sample_ref = grid_sample_ref if reference == "numpy" else torch_grid_sample
    expected = sample_ref(images, grid, interpolation, padding_mode, align_corners)
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # Pixel centres read the pixels themselves, in every mode.
    start = 2 if align_corners else 3  # the grid runs in half pixels from one pixel outside
    centres = out[0, start : start + 2 * in_size[0] : 2, start : start + 2 * in_size[1] : 2]
    np.testing.assert_allclose(centres, images[0], rtol=1e-6, atol=1e-6)


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
    expected = torch_grid_sample(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    theta = random_theta(rng, 2, in_size, DOWN, align_corners)
    fused = to_numpy(affine_sample(images, theta, DOWN, interpolation, padding_mode, align_corners))
    grid = affine_grid_ref(theta.astype(np.float64), DOWN, align_corners)
    reference = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)
    identity = np.tile(np.eye(2, 3, dtype="float32"), (2, 1, 1))
    out = affine_sample(images, identity, None, interpolation, padding_mode, align_corners)
    np.testing.assert_array_equal(to_numpy(out), images)


@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_empty_batch_and_empty_grid(op):
    """An empty batch (as PyTorch's grid_sample allows) or an empty grid gives an empty output."""
    images = np.zeros((0, *IN_SIZE, 2), "float32")
    if op == "grid_sample":
        out = grid_sample(images, np.zeros((0, *DOWN, 2), "float32"), "bicubic", "reflection")
        empty_grid = grid_sample(np.ones(IMAGE_SHAPE, "float32"), np.zeros((2, 0, 3, 2), "float32"))
        assert tuple(empty_grid.shape) == (2, 0, 3, 2)
    else:
        out = affine_sample(images, np.zeros((0, 6), "float32"), DOWN, "bicubic", "reflection")
    assert tuple(out.shape) == (0, *DOWN, 2)
    assert to_numpy(out).shape == (0, *DOWN, 2)


# --------------------------------------------------------------------------------------------
# 8. Properties
# --------------------------------------------------------------------------------------------


def identity_theta(batch, dtype="float32"):
    return np.tile(np.eye(2, 3, dtype=dtype), (batch, 1, 1))


@all_modes
@all_paddings
@both_aligns
def test_affine_sample_identity_is_exact(interpolation, padding_mode, align_corners, rng):
    images = rng.normal(size=IMAGE_SHAPE).astype("float32")
    theta = identity_theta(2)
    for size, theta_in in ((None, theta), (IN_SIZE, theta.reshape(2, 6))):
        out = to_numpy(affine_sample(images, theta_in, size, interpolation, padding_mode, align_corners))
        np.testing.assert_array_equal(out, images)


@all_modes
@both_aligns
def test_affine_sample_identity_is_exact_float64(interpolation, align_corners, rng, x64):
    images = rng.normal(size=IMAGE_SHAPE)
    out = to_numpy(affine_sample(images, identity_theta(2, "float64"), None, interpolation, "zeros", align_corners))
    np.testing.assert_array_equal(out, images)


@all_modes
@all_paddings
@both_aligns
def test_identity_grid_reproduces_images(interpolation, padding_mode, align_corners, rng):
    images = random_images(rng, IMAGE_SHAPE)
    grid = affine_grid(identity_theta(2), IN_SIZE, align_corners)
    out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, images, rtol=1e-5, atol=1e-5)


def shifted_reference(images, dy, dx, padding_mode, align_corners):
    """`out[:, i, j] = images[:, i + dy, j + dx]`, with the padding mode's rule outside."""
    _, height, width, _ = images.shape

    def index(m, size):
        if padding_mode == "border":
            return min(max(m, 0), size - 1)
        if padding_mode == "reflection" and not (0 <= m < size):
            if align_corners:
                return -m if m < 0 else 2 * (size - 1) - m
            return -m - 1 if m < 0 else 2 * size - 1 - m
        return m

    out = np.zeros_like(images)
    for i in range(height):
        for j in range(width):
            y, x = index(i + dy, height), index(j + dx, width)
            if 0 <= y < height and 0 <= x < width:
                out[:, i, j] = images[:, y, x]
    return out


@all_modes
@all_paddings
@both_aligns
@pytest.mark.parametrize("path", ["affine_sample", "affine_grid"])
def test_whole_pixel_translation_is_a_shift(interpolation, padding_mode, align_corners, path, rng):
    (height, width), dy, dx = IN_SIZE, -1, 2
    images = random_images(rng, IMAGE_SHAPE)
    span_y, span_x = (height - 1, width - 1) if align_corners else (height, width)
    theta = np.tile(np.array([[1, 0, 2 * dx / span_x], [0, 1, 2 * dy / span_y]], "float32"), (2, 1, 1))
    if path == "affine_sample":
        out = to_numpy(affine_sample(images, theta, None, interpolation, padding_mode, align_corners))
    else:
        grid = affine_grid(theta, (height, width), align_corners)
        out = sample_np(images, grid, interpolation, padding_mode, align_corners)
    expected = shifted_reference(images, dy, dx, padding_mode, align_corners)
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
    assert size == DOWN
    if path == "affine_sample":
        out = to_numpy(affine_sample(images, theta, size, interpolation, padding_mode, False))
    else:
        out = sample_np(images, affine_grid(theta, size, False), interpolation, padding_mode, False)
    expected = images[:, 2:6, 3:9]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 9. Input validation
# --------------------------------------------------------------------------------------------

IMAGES = np.zeros((2, *IN_SIZE, 3), "float32")
GRID = np.zeros((2, 4, 4, 2), "float32")
THETA = identity_theta(2)
MODES = [*map(repr, INTERPOLATIONS)]
PADDINGS = [*map(repr, PADDING_MODES)]
FORMATS = ["'channels_last'", "'channels_first'"]


def zeros(*shape):
    return np.zeros(shape, "float32")


# name: (call, exception, argument named in the message, other words the message must contain)
INVALID_CALLS = {
    "affine_grid theta (B,3,3)": (lambda: affine_grid(zeros(2, 3, 3), (4, 4)), ValueError, "theta", ["(2, 3, 3)"]),
    "affine_grid theta (B,5)": (lambda: affine_grid(zeros(2, 5), (4, 4)), ValueError, "theta", ["(2, 5)"]),
    "affine_grid theta rank 1": (lambda: affine_grid(zeros(6), (4, 4)), ValueError, "theta", ["(6,)"]),
    "affine_grid theta rank 4": (lambda: affine_grid(zeros(1, 1, 2, 3), (4, 4)), ValueError, "theta", []),
    "affine_sample theta (B,3,3)": (lambda: affine_sample(IMAGES, zeros(2, 3, 3)), ValueError, "theta", []),
    "affine_sample theta (B,5)": (lambda: affine_sample(IMAGES, zeros(2, 5)), ValueError, "theta", []),
    "affine_sample theta rank 1": (lambda: affine_sample(IMAGES, zeros(6)), ValueError, "theta", []),
    "grid_sample images rank 3": (lambda: grid_sample(IMAGES[0], GRID), ValueError, "images", ["(8, 12, 3)"]),
    "grid_sample images rank 5": (lambda: grid_sample(IMAGES[None], GRID), ValueError, "images", []),
    "affine_sample images rank 3": (lambda: affine_sample(IMAGES[0], THETA), ValueError, "images", []),
    "grid_sample empty images": (lambda: grid_sample(zeros(2, 0, 6, 3), GRID), ValueError, "images", ["(2, 0, 6, 3)"]),
    "grid last dim 3": (lambda: grid_sample(IMAGES, zeros(2, 4, 4, 3)), ValueError, "grid", ["(2, 4, 4, 3)"]),
    "grid last dim 1": (lambda: grid_sample(IMAGES, zeros(2, 4, 4, 1)), ValueError, "grid", []),
    "grid rank 3": (lambda: grid_sample(IMAGES, zeros(2, 16, 2)), ValueError, "grid", ["(2, 16, 2)"]),
    "grid batch mismatch": (
        lambda: grid_sample(IMAGES, GRID[:1]),
        ValueError,
        "grid",
        ["(1, 4, 4, 2)", "(2, 8, 12, 3)"],
    ),
    "theta batch mismatch": (lambda: affine_sample(IMAGES, zeros(3, 2, 3)), ValueError, "theta", ["(3, 2, 3)"]),
    "grid_sample interpolation": (
        lambda: grid_sample(IMAGES, GRID, interpolation="linear"),
        ValueError,
        "interpolation",
        ["'linear'", *MODES],
    ),
    "affine_sample interpolation": (
        lambda: affine_sample(IMAGES, THETA, interpolation="Bilinear"),
        ValueError,
        "interpolation",
        ["'Bilinear'", *MODES],
    ),
    "grid_sample padding_mode": (
        lambda: grid_sample(IMAGES, GRID, padding_mode="constant"),
        ValueError,
        "padding_mode",
        ["'constant'", *PADDINGS],
    ),
    "affine_sample padding_mode": (
        lambda: affine_sample(IMAGES, THETA, padding_mode=None),
        ValueError,
        "padding_mode",
        ["None", *PADDINGS],
    ),
    "grid_sample data_format": (
        lambda: grid_sample(IMAGES, GRID, data_format="NHWC"),
        ValueError,
        "data_format",
        ["'NHWC'", *FORMATS],
    ),
    "affine_sample data_format": (
        lambda: affine_sample(IMAGES, THETA, data_format="channels-last"),
        ValueError,
        "data_format",
        FORMATS,
    ),
    "grid_sample align_corners int": (
        lambda: grid_sample(IMAGES, GRID, align_corners=1),
        TypeError,
        "align_corners",
        ["1"],
    ),
    "grid_sample align_corners str": (
        lambda: grid_sample(IMAGES, GRID, align_corners="True"),
        TypeError,
        "align_corners",
        ["'True'"],
    ),
    "affine_sample align_corners None": (
        lambda: affine_sample(IMAGES, THETA, align_corners=None),
        TypeError,
        "align_corners",
        ["None"],
    ),
    "affine_grid align_corners int": (
        lambda: affine_grid(THETA, (4, 4), align_corners=0),
        TypeError,
        "align_corners",
        [],
    ),
}
SIZE_OPS = {
    "affine_grid": lambda size: affine_grid(THETA, size),
    "affine_sample": lambda size: affine_sample(IMAGES, THETA, size),
}
BAD_SIZES = [
    ("zero", (0, 4), ValueError),
    ("negative", (4, -2), ValueError),
    ("float", (4.0, 4), TypeError),
    ("fractional", (4, 2.5), TypeError),
    ("bool", (True, 4), TypeError),
    ("string entry", ("4", 4), TypeError),
    ("length 1", (4,), ValueError),
    ("length 3", (4, 4, 4), ValueError),
    ("scalar", 4, ValueError),
    ("string", "44", ValueError),
]
for fn_name, fn in SIZE_OPS.items():
    for label, size, error in BAD_SIZES:
        INVALID_CALLS[f"{fn_name} size {label}"] = ((lambda fn=fn, size=size: fn(size)), error, "size", [])


@pytest.mark.parametrize("case", list(INVALID_CALLS), ids=list(INVALID_CALLS))
def test_invalid_arguments_raise_with_a_clear_message(case):
    call, error, name, words = INVALID_CALLS[case]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert f"`{name}`" in message, message
    assert "Got" in message, message
    for word in words:
        assert word in message, (word, message)


def test_valid_sizes_accept_numpy_integers():
    grid = affine_grid(THETA, (np.int64(DOWN[0]), np.int32(DOWN[1])))
    assert tuple(grid.shape) == (2, *DOWN, 2)
    out = affine_sample(IMAGES, THETA, [np.int64(DOWN[0]), DOWN[1]])
    assert tuple(out.shape) == (2, *DOWN, 3)
