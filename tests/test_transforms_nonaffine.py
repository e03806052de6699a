"""The non-affine built-in transforms, "projective" (homography) and "tps" (thin-plate spline),
and the `keras_stn.ops.tps_grid` op: numbers against NumPy references, their defining
properties, gradients, the layer, serialisation and argument checks."""

import json
import re

import keras
import numpy as np
import pytest

import keras_stn
from helpers import BACKEND, to_numpy, value_and_grad
from keras_stn import transforms
from keras_stn._checks import sampling_options
from keras_stn.ops import affine_grid, grid_sample, tps_grid
from reference import affine_grid_ref, grid_sample_ref, projective_grid_ref, tps_grid_ref

SHAPE = (16, 12, 2)
BATCH = 3
IDENTITY_THETA = np.array([[[1, 0, 0], [0, 1, 0]]], "float32")


def homography_params(rng, batch=BATCH, perspective=0.3):
    """Random 8-parameter homographies near the identity, visible everywhere on [-1, 1]²
    (|g| + |h| < 1 keeps w = g x + h y + 1 > 0 there)."""
    params = np.tile([1, 0, 0, 0, 1, 0, 0, 0], (batch, 1)) + rng.uniform(-0.3, 0.3, (batch, 8))
    params[:, 6:] = rng.uniform(-perspective, perspective, (batch, 2))
    return params


def homography(params):
    """The (B, 3, 3) matrix of the documented row-major layout with H[2, 2] = 1."""
    params = np.asarray(params)
    return np.concatenate([params, np.ones((len(params), 1))], axis=1).reshape(-1, 3, 3)


def warp(transform, images, params, size=None, interpolation="bilinear", padding_mode="zeros", align_corners=False):
    options = sampling_options(interpolation, padding_mode, align_corners, "channels_last")
    return transform.warp(images, params, size, options)


# --------------------------------------------------------------------------- projective


def test_projective_is_registered_with_eight_params():
    projective = transforms.get("projective")
    assert type(projective) is transforms.Projective and transforms.TRANSFORMS["projective"] is transforms.Projective
    assert projective.num_params == 8 and not hasattr(projective, "to_theta")
    identity = projective.identity_params()
    assert identity.dtype == np.float32
    np.testing.assert_array_equal(identity, [1, 0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (8, 8)])
def test_projective_with_an_affine_matrix_is_affine_grid(align_corners, size, rng):
    theta = rng.normal(size=(BATCH, 6)).astype("float32")
    params = np.concatenate([theta, np.zeros((BATCH, 2), "float32")], axis=1)
    grid = to_numpy(transforms.Projective().grid(params, size, align_corners))
    np.testing.assert_array_equal(grid, to_numpy(affine_grid(theta, size, align_corners)))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4)])
def test_projective_grid_matches_numpy(align_corners, size, rng):
    params = homography_params(rng).astype("float32")
    grid = to_numpy(transforms.Projective().grid(params, size, align_corners))
    assert grid.shape == (BATCH, *size, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, projective_grid_ref(homography(params), size, align_corners), rtol=1e-5, atol=1e-6)


def test_projective_points_beyond_the_horizon_get_nan():
    # w = 2 x + 1 with x the centres -5/6, -1/2, ..., 5/6 of 6 columns: w < 0 at the first
    # column, exactly 0 at the second, positive after.
    params = np.array([[1, 0, 0, 0, 1, 0, 2, 0]], "float32")
    grid = to_numpy(transforms.Projective().grid(params, (3, 6)))
    expected = projective_grid_ref(homography(params), (3, 6))
    assert np.isnan(grid[:, :, :2]).all() and np.isfinite(grid[:, :, 2:]).all()
    np.testing.assert_array_equal(np.isnan(grid), np.isnan(expected))
    np.testing.assert_allclose(grid[:, :, 2:], expected[:, :, 2:], rtol=1e-6)


@pytest.mark.parametrize(
    "interpolation, padding_mode",
    [("bilinear", "zeros"), ("bilinear", "border"), ("bilinear", "reflection"), ("bicubic", "zeros")],
)
@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_warp_matches_a_numpy_homography_warp(interpolation, padding_mode, align_corners, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    params = homography_params(rng, perspective=0.6).astype("float32")
    # In the first sample w = 2 x + 1 is negative on columns 0-2 of 11, which read nothing, and
    # 3/11 or more on the others: no point so close to the horizon that float32 rounding of w
    # moves its (huge) coordinate visibly, which reflection padding would show.
    params[0] = [1, 0, 0, 0, 1, 0, 2, 0]
    out = to_numpy(warp(transforms.Projective(), images, params, (9, 11), interpolation, padding_mode, align_corners))
    grid = projective_grid_ref(homography(params), (9, 11), align_corners)
    assert np.isnan(grid[0, :, :3]).all() and not np.isnan(grid[0, :, 3:]).any()
    expected = grid_sample_ref(images, grid, interpolation, padding_mode, align_corners)
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_projective_gradients_stay_finite_across_the_horizon(padding_mode, interpolation, rng):
    images = rng.random((2, *SHAPE)).astype("float32")
    # In the first sample w = 4 x + 1 is exactly 0 on column 4 of 12 (x = -1/4) and negative
    # left of it.
    params = np.array([[1, 0, 0, 0, 1, 0, 4, 0], [0.9, 0.1, 0, -0.1, 1, 0.1, 0.3, -0.4]], "float32")
    weights = keras.ops.convert_to_tensor(rng.normal(size=(2, 16, 12, 2)).astype("float32"))

    def loss(images, params):
        out = warp(transforms.Projective(), images, params, None, interpolation, padding_mode)
        return keras.ops.sum(out * weights)

    value, (image_grad, param_grad) = value_and_grad(loss, images, params)
    assert np.isfinite(value) and np.isfinite(image_grad).all() and np.isfinite(param_grad).all()
    assert np.abs(param_grad).min() > 0  # every parameter of both samples gets a gradient
    out = to_numpy(warp(transforms.Projective(), images, params, None, interpolation, padding_mode))
    np.testing.assert_array_equal(out[0, :, :5], 0)
    assert np.abs(out[0, :, 5:]).max() > 0


def central_differences(fn, params, step=1e-6):
    gradient = np.zeros_like(params)
    for index in np.ndindex(params.shape):
        delta = np.zeros_like(params)
        delta[index] = step
        gradient[index] = (fn(params + delta) - fn(params - delta)) / (2 * step)
    return gradient


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_gradient_matches_finite_differences(align_corners, x64, rng):
    params = homography_params(rng, batch=2, perspective=0.4)
    weights = rng.normal(size=(2, 5, 7, 2))
    projective = transforms.Projective()

    def loss(params):
        return keras.ops.sum(projective.grid(params, (5, 7), align_corners) * keras.ops.convert_to_tensor(weights))

    value, (gradient,) = value_and_grad(loss, params)
    assert value.dtype == np.float64
    expected = central_differences(lambda p: float(to_numpy(loss(p))), params)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- thin-plate spline


def test_tps_is_registered_with_two_params_per_control_point():
    tps = transforms.get("tps")
    assert type(tps) is transforms.ThinPlateSpline and transforms.TRANSFORMS["tps"] is transforms.ThinPlateSpline
    assert tps.grid_size == 3 and tps.num_params == 18 and not hasattr(tps, "to_theta")
    assert tps == transforms.ThinPlateSpline(grid_size=3) != transforms.ThinPlateSpline(grid_size=4)
    assert transforms.ThinPlateSpline(grid_size=5).num_params == 50
    assert repr(transforms.ThinPlateSpline(4)) == "ThinPlateSpline(grid_size=4)"
    identity = tps.identity_params()
    assert identity.dtype == np.float32
    np.testing.assert_array_equal(identity, np.zeros(18))


@pytest.mark.parametrize("grid_size", [2, 3, 5])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_zero_offsets_give_the_identity_grid_exactly(grid_size, align_corners):
    identity = to_numpy(affine_grid(IDENTITY_THETA, (5, 7), align_corners))
    offsets = np.zeros((1, 2 * grid_size**2), "float32")
    np.testing.assert_array_equal(to_numpy(tps_grid(offsets, (5, 7), align_corners=align_corners)), identity)
    tps = transforms.ThinPlateSpline(grid_size)
    np.testing.assert_array_equal(to_numpy(tps.grid(offsets, (5, 7), align_corners)), identity)


@pytest.mark.parametrize("grid_size", [2, 3, 4])
def test_tps_passes_through_the_displaced_control_points(grid_size, rng):
    """With corners aligned, K rows put a pixel centre on every control row and 2K - 1 columns
    one on every other column: there the grid must be control + offset."""
    offsets = rng.normal(scale=0.2, size=(BATCH, grid_size, grid_size, 2)).astype("float32")
    grid = to_numpy(tps_grid(offsets, (grid_size, 2 * grid_size - 1), align_corners=True))
    axis = np.linspace(-1, 1, grid_size)
    controls = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)  # [i, j] = (x_j, y_i)
    np.testing.assert_allclose(grid[:, :, ::2], controls + offsets, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (9, 9)])
@pytest.mark.parametrize("grid_size", [2, 3, 4])
def test_tps_grid_matches_numpy(align_corners, size, grid_size, rng):
    offsets = rng.normal(scale=0.2, size=(BATCH, grid_size, grid_size, 2)).astype("float32")
    grid = to_numpy(tps_grid(offsets, size, align_corners=align_corners))
    assert grid.shape == (BATCH, *size, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, tps_grid_ref(offsets, size, align_corners), atol=5e-6)


def test_tps_of_an_affine_displacement_is_that_affine_grid(rng):
    """The spline reproduces affine maps: moving every control point by theta gives theta's grid."""
    theta = np.array([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.2]]])
    axis = np.linspace(-1, 1, 4)
    controls = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)
    moved = controls @ theta[0, :, :2].T + theta[0, :, 2]
    grid = to_numpy(tps_grid((moved - controls)[None].astype("float32"), (6, 5)))
    np.testing.assert_allclose(grid, affine_grid_ref(theta, (6, 5)), atol=2e-6)


def test_tps_layouts_grid_size_and_the_transform_agree(rng):
    offsets = rng.normal(scale=0.2, size=(BATCH, 3, 3, 2)).astype("float32")
    flat = offsets.reshape(BATCH, 18)
    expected = to_numpy(tps_grid(offsets, (6, 5)))
    np.testing.assert_array_equal(to_numpy(tps_grid(flat, (6, 5))), expected)
    np.testing.assert_array_equal(to_numpy(tps_grid(flat, (6, 5), grid_size=3)), expected)
    np.testing.assert_array_equal(to_numpy(transforms.get("tps").grid(flat, (6, 5))), expected)
    # The offsets are (dx, dy) pairs: moving only the centre control point right moves the
    # centre of the output right, not down.
    centre = np.zeros((1, 18), "float32")
    centre[0, 8] = 0.5  # x of control point 4, the middle of the 3 x 3 lattice
    grid = to_numpy(tps_grid(centre, (5, 5), align_corners=True))
    np.testing.assert_allclose(grid[0, 2, 2], [0.5, 0], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_tps_grid_keeps_the_offsets_dtype(dtype, x64, rng):
    offsets = keras.ops.convert_to_tensor(rng.normal(scale=0.1, size=(2, 18)), dtype)
    grid = tps_grid(offsets, (4, 5))
    assert keras.backend.standardize_dtype(grid.dtype) == dtype
    reference = tps_grid_ref(to_numpy(keras.ops.cast(offsets, "float64")).reshape(2, 3, 3, 2), (4, 5))
    atol = 1e-12 if dtype == "float64" else 1e-2
    np.testing.assert_allclose(to_numpy(keras.ops.cast(grid, "float64")), reference, atol=atol)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_warp_matches_numpy(padding_mode, align_corners, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    params = rng.normal(scale=0.2, size=(BATCH, 32)).astype("float32")
    out = to_numpy(
        warp(transforms.ThinPlateSpline(4), images, params, (9, 11), "bilinear", padding_mode, align_corners)
    )
    grid = tps_grid_ref(params.reshape(BATCH, 4, 4, 2), (9, 11), align_corners)
    expected = grid_sample_ref(images, grid, padding_mode=padding_mode, align_corners=align_corners)
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_gradient_matches_finite_differences(align_corners, x64, rng):
    offsets = rng.normal(scale=0.2, size=(2, 18))
    weights = rng.normal(size=(2, 5, 7, 2))
    tps = transforms.ThinPlateSpline()

    def loss(params):
        return keras.ops.sum(tps.grid(params, (5, 7), align_corners) * keras.ops.convert_to_tensor(weights))

    value, (gradient,) = value_and_grad(loss, offsets)
    assert value.dtype == np.float64
    expected = central_differences(lambda p: float(to_numpy(loss(p))), offsets)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-7)


def test_tps_gradient_through_the_sampler_is_finite_and_reaches_every_offset(rng):
    images = rng.random((2, *SHAPE)).astype("float32")
    offsets = rng.normal(scale=0.1, size=(2, 18)).astype("float32")

    def loss(offsets):
        return keras.ops.sum(grid_sample(images, tps_grid(offsets, SHAPE[:2])) ** 2)

    _, (gradient,) = value_and_grad(loss, offsets)
    assert np.isfinite(gradient).all() and np.abs(gradient).min() > 0


def both_warps(images, projective_params, tps_params):
    return (
        warp(transforms.Projective(), images, projective_params, (9, 11), "bilinear", "reflection"),
        warp(transforms.ThinPlateSpline(), images, tps_params, None, "bicubic", "border", True),
    )


@pytest.mark.skipif(BACKEND == "torch", reason="jax.jit / tf.function(jit_compile=True)")
def test_compiled_warps_match_eager(rng):
    images = rng.random((2, *SHAPE)).astype("float32")
    projective_params = np.array([[1, 0, 0, 0, 1, 0, 2, 0], [0.9, 0.1, 0, -0.1, 1, 0.1, 0.3, -0.4]], "float32")
    tps_params = rng.normal(scale=0.1, size=(2, 18)).astype("float32")
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(both_warps)
    else:
        import tensorflow as tf

        specs = [tf.TensorSpec((None, *SHAPE)), tf.TensorSpec((None, 8)), tf.TensorSpec((None, 18))]
        compiled = tf.function(both_warps, jit_compile=True, input_signature=specs)
    for got, want in zip(
        compiled(images, projective_params, tps_params), both_warps(images, projective_params, tps_params)
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- in the layer


@pytest.mark.parametrize("transform", ["projective", "tps", transforms.ThinPlateSpline(grid_size=2)])
def test_layer_warps_with_the_regressed_params(transform, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    layer = keras_stn.SpatialTransformer(
        out_dims=(9, 11), transform=transform, localization=keras.layers.Flatten(), return_theta=True
    )
    layer.build(images.shape)
    out, params = (to_numpy(t) for t in layer(images))
    np.testing.assert_array_equal(params, np.tile(layer.transform.identity_params(), (BATCH, 1)))
    identity = affine_grid_ref(np.tile(IDENTITY_THETA, (BATCH, 1, 1)), (9, 11))
    np.testing.assert_allclose(out, grid_sample_ref(images, identity), atol=1e-5)
    bias = layer.transform.identity_params() + rng.normal(scale=0.1, size=layer.transform.num_params)
    layer.head.bias.assign(bias.astype("float32"))
    out, params = (to_numpy(t) for t in layer(images))
    if isinstance(layer.transform, transforms.Projective):
        grid = projective_grid_ref(homography(params), (9, 11))
    else:
        k = layer.transform.grid_size
        grid = tps_grid_ref(params.reshape(BATCH, k, k, 2), (9, 11))
    np.testing.assert_allclose(out, grid_sample_ref(images, grid), atol=2e-5)


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_layer_trains_the_params(transform, rng):
    x = rng.random((4, *SHAPE)).astype("float32")
    y = rng.integers(0, 3, size=4)
    inputs = keras.Input(SHAPE)
    layer = keras_stn.SpatialTransformer(transform=transform, localization=keras.layers.Flatten(), name="st")
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    bias = to_numpy(layer.head.bias)
    assert np.isfinite(bias).all() and np.abs(bias - layer.transform.identity_params()).max() > 1e-6


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_layer_with_a_dynamic_spatial_size(transform, rng):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, keras_stn.SpatialTransformer(transform=transform, localization=localization)(inputs))
    for shape in [SHAPE, (7, 9, 2)]:
        images = rng.random((2, *shape)).astype("float32")
        np.testing.assert_allclose(to_numpy(model.predict(images, verbose=0)), images, atol=1e-5)


def test_tps_grid_size_survives_the_layer_config(rng):
    layer = keras_stn.SpatialTransformer(transform=transforms.ThinPlateSpline(grid_size=4), name="st")
    config = json.loads(json.dumps(layer.get_config()))
    assert config["transform"]["config"] == {"grid_size": 4}
    clone = keras_stn.SpatialTransformer.from_config(config)
    assert clone.transform == transforms.ThinPlateSpline(grid_size=4)
    assert transforms.serialize(transforms.get("projective")) == "projective"
    images = rng.random((2, *SHAPE)).astype("float32")
    np.testing.assert_allclose(to_numpy(clone(images)), images, atol=1e-5)
    assert tuple(clone.head.kernel.shape)[-1] == 32


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("transform, width", [("projective", 8), ("tps", 18)])
def test_wrong_params_width_or_dtype(transform, width):
    transform = transforms.get(transform)
    for shape in [(2, width - 1), (2, width + 2), (width,)]:
        with pytest.raises(
            ValueError, match=rf"`params`.*\(batch, {width}\)\. Got params with shape {re.escape(str(shape))}"
        ):
            transform.grid(np.zeros(shape, "float32"), (4, 4))
    with pytest.raises(TypeError, match=r"`params`.*floating.*Got params with dtype int32"):
        transform.grid(np.zeros((2, width), "int32"), (4, 4))


@pytest.mark.parametrize(
    "grid_size, error",
    [
        (1, ValueError),
        (0, ValueError),
        (-3, ValueError),
        (2.0, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_bad_grid_size(grid_size, error):
    message = rf"`grid_size` must be an integer >= 2\. Got grid_size={re.escape(repr(grid_size))}$"
    with pytest.raises(error, match=message):
        transforms.ThinPlateSpline(grid_size=grid_size)
    if grid_size is not None:
        with pytest.raises(error, match=message):
            tps_grid(np.zeros((1, 18), "float32"), (4, 4), grid_size=grid_size)
    with pytest.raises(error, match=message):
        keras_stn.SpatialTransformer(transform=transforms.ThinPlateSpline(grid_size=grid_size))


@pytest.mark.parametrize("shape", [(2, 17), (2, 2), (2, 0), (18,), (2, 3, 3), (2, 3, 4, 2), (2, 3, 3, 3), (2, 1, 1, 2)])
def test_tps_grid_rejects_offsets_of_no_lattice(shape):
    with pytest.raises(
        ValueError, match=rf"`offsets` must have shape .*K >= 2.*Got offsets with shape {re.escape(str(shape))}"
    ):
        tps_grid(np.zeros(shape, "float32"), (4, 4))


def test_tps_grid_rejects_offsets_that_do_not_match_grid_size():
    with pytest.raises(ValueError) as info:
        tps_grid(np.zeros((1, 18), "float32"), (4, 4), grid_size=4)
    message = str(info.value)
    assert "(batch, 32) or (batch, 4, 4, 2) for grid_size=4" in message and message.endswith(
        "Got offsets with shape (1, 18)"
    )


def test_tps_grid_rejects_integer_offsets_and_bad_size():
    with pytest.raises(TypeError, match=r"`offsets` must have a floating dtype.*Got offsets with dtype int32"):
        tps_grid(np.zeros((1, 18), "int32"), (4, 4))
    with pytest.raises(ValueError, match=r"`size`.*Got size=\(0, 4\)"):
        tps_grid(np.zeros((1, 18), "float32"), (0, 4))
    with pytest.raises(TypeError, match=r"`size`.*Got size=\(4.0, 4\)"):
        tps_grid(np.zeros((1, 18), "float32"), (4.0, 4))
    with pytest.raises(TypeError, match=r"`align_corners` must be a bool. Got align_corners=1"):
        tps_grid(np.zeros((1, 18), "float32"), (4, 4), align_corners=1)
