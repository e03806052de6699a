"""The affine transforms ("affine", "attention", "translation", "similarity", and the 3-D
"affine" and "attention"): their identity, the documented theta of their parameters, their grid
(`affine_grid` of that theta) and the attention transform's exact crops."""

import keras
import numpy as np
import pytest

import keras_stn
from helpers import AFFINE_NAMES, NUM_PARAMS, to_numpy
from keras_stn import transforms
from keras_stn._checks import sampling_options
from reference import affine_grid_3d_ref

IDENTITY_THETA = np.array([[1, 0, 0], [0, 1, 0]], "float32")
OUT_3D = (3, 4, 5)


def theta_np(name, params):
    """The documented (B, 2, 3) matrix of each transform, built in NumPy."""
    params = np.asarray(params, "float64")
    zero, one = np.zeros(len(params)), np.ones(len(params))
    if name == "affine":
        return params.reshape(-1, 2, 3)
    if name == "attention":
        s, tx, ty = params.T
        rows = [[s, zero, tx], [zero, s, ty]]
    elif name == "translation":
        tx, ty = params.T
        rows = [[one, zero, tx], [zero, one, ty]]
    else:
        a, b, tx, ty = params.T
        rows = [[a, -b, tx], [b, a, ty]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=1)


# --------------------------------------------------------------------------------------------
# 2-D
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AFFINE_NAMES)
def test_identity_params_give_the_identity_theta(name):
    transform = transforms.get(name)
    identity = transform.identity_params()
    assert isinstance(identity, np.ndarray)
    assert identity.shape == (NUM_PARAMS[name],) and identity.dtype == np.float32
    theta = to_numpy(transform.to_theta(np.stack([identity, identity])))
    np.testing.assert_array_equal(theta, np.stack([IDENTITY_THETA, IDENTITY_THETA]))


@pytest.mark.parametrize(
    "name, params, theta",
    [
        ("affine", [1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]),
        ("affine", [0.5, -0.25, 0.1, 0.2, 0.75, -0.3], [[0.5, -0.25, 0.1], [0.2, 0.75, -0.3]]),
        ("attention", [0.5, 0.25, -0.125], [[0.5, 0, 0.25], [0, 0.5, -0.125]]),
        ("attention", [2.0, 0, 0], [[2, 0, 0], [0, 2, 0]]),
        ("translation", [0.25, -0.5], [[1, 0, 0.25], [0, 1, -0.5]]),
        ("similarity", [0.5, 0.25, 0.125, -0.75], [[0.5, -0.25, 0.125], [0.25, 0.5, -0.75]]),
        ("similarity", [0, 1, 0, 0], [[0, -1, 0], [1, 0, 0]]),  # quarter turn
    ],
)
def test_to_theta_numbers(name, params, theta):
    # Dyadic numbers: the matrix must hold them exactly.
    out = to_numpy(transforms.get(name).to_theta(np.array([params], "float32")))
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0], np.array(theta, "float32"))


@pytest.mark.parametrize("name", AFFINE_NAMES)
def test_to_theta_batch_matches_numpy(name, rng):
    params = rng.normal(size=(5, NUM_PARAMS[name])).astype("float32")
    out = to_numpy(transforms.get(name).to_theta(params))
    assert out.shape == (5, 2, 3)
    np.testing.assert_allclose(out, theta_np(name, params), rtol=0, atol=0)


@pytest.mark.parametrize("name", AFFINE_NAMES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (8, 8)])
def test_grid_equals_affine_grid_of_to_theta(name, align_corners, size, rng):
    transform = transforms.get(name)
    params = rng.normal(size=(3, NUM_PARAMS[name])).astype("float32")
    grid = to_numpy(transform.grid(params, size, align_corners=align_corners))
    assert grid.shape == (3, *size, 2)
    expected = to_numpy(keras_stn.ops.affine_grid(transform.to_theta(params), size, align_corners=align_corners))
    np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize("name", AFFINE_NAMES)
def test_grid_default_align_corners_is_false(name, rng):
    transform = transforms.get(name)
    params = rng.normal(size=(2, NUM_PARAMS[name])).astype("float32")
    expected = to_numpy(keras_stn.ops.affine_grid(transform.to_theta(params), (4, 6), align_corners=False))
    np.testing.assert_array_equal(to_numpy(transform.grid(params, (4, 6))), expected)


# --------------------------------------------------------------------------------------------
# 3-D
# --------------------------------------------------------------------------------------------


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
    grid = transforms.Affine3D().grid(params, OUT_3D)
    np.testing.assert_allclose(to_numpy(grid), affine_grid_3d_ref(params.reshape(2, 3, 4), OUT_3D), atol=1e-6)
    for cls in (transforms.Affine3D, transforms.Attention3D):
        identity = cls().identity_params()[None]
        np.testing.assert_array_equal(to_numpy(cls().to_theta(identity))[0], np.eye(3, 4))
    with pytest.raises(ValueError, match=r"`params` of the 3-D 'affine' transform must have shape \(batch, 12\)"):
        transforms.Affine3D().grid(np.zeros((2, 6), "float32"), OUT_3D)
    with pytest.raises(ValueError, match=r"`size` must be a triple \(depth, height, width\)"):
        transforms.Attention3D().grid(np.zeros((2, 4), "float32"), (4, 5))


# --------------------------------------------------------------------------------------------
# Attention crops
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("portable_sampler")
def test_attention_half_scale_crops_the_centre_exactly_align_corners_true(rng):
    """align_corners=True, input 2N-1 = 9, output N = 5: output pixel i is at normalised
    2i/(N-1) - 1, reads 0.5 of that = i/(N-1) - 0.5, i.e. input pixel (x+1)/2*(2N-2) = i + (N-1)/2.
    Every sample lands on a pixel centre: the output is exactly the centre crop [2:7]."""
    images = rng.random((2, 9, 9, 3)).astype("float32")
    params = np.array([[0.5, 0, 0]] * 2, "float32")
    attention = transforms.get("attention")
    crop = images[:, 2:7, 2:7]
    options = sampling_options("bilinear", "zeros", True, "channels_last")
    fused = to_numpy(attention.warp(images, params, (5, 5), options))
    np.testing.assert_array_equal(fused, crop)
    via_grid = to_numpy(keras_stn.ops.grid_sample(images, attention.grid(params, (5, 5), True), align_corners=True))
    np.testing.assert_allclose(via_grid, crop, atol=1e-6)


@pytest.mark.usefixtures("portable_sampler")
@pytest.mark.parametrize("n", [4, 5])
def test_attention_half_scale_reads_the_centre_align_corners_false(n, rng):
    """align_corners=False, input 2N, output N: x_out = (2i+1)/N - 1, x_in = x_out / 2, pixel
    ((x_in + 1) * 2N - 1) / 2 = i + N/2. For even N every sample is a pixel centre (the exact
    centre crop [N/2, 3N/2)); for odd N every sample falls midway between two pixels on each
    axis, so the output is the mean of the 2x2 pixels around it, still inside the centre."""
    images = rng.random((2, 2 * n, 2 * n, 3)).astype("float32")
    params = np.array([[0.5, 0, 0]] * 2, "float32")
    attention = transforms.get("attention")
    if n % 2 == 0:
        lo = n // 2
        expected = images[:, lo : lo + n, lo : lo + n]
    else:
        lo = (n - 1) // 2  # pixel i + N/2 = (lo + i) + 0.5
        expected = 0.25 * (
            images[:, lo : lo + n, lo : lo + n]
            + images[:, lo + 1 : lo + n + 1, lo : lo + n]
            + images[:, lo : lo + n, lo + 1 : lo + n + 1]
            + images[:, lo + 1 : lo + n + 1, lo + 1 : lo + n + 1]
        )
    options = sampling_options("bilinear", "zeros", False, "channels_last")
    fused = to_numpy(attention.warp(images, params, (n, n), options))
    np.testing.assert_allclose(fused, expected, rtol=1e-6, atol=1e-6)
    via_grid = to_numpy(keras_stn.ops.grid_sample(images, attention.grid(params, (n, n)), align_corners=False))
    np.testing.assert_allclose(via_grid, expected, rtol=1e-6, atol=1e-6)


def test_attention_inside_the_layer_zooms_on_the_centre(rng):
    """The same crop through SpatialTransformer(transform="attention") with s = 0.5 in the head bias."""
    images = rng.random((2, 8, 8, 1)).astype("float32")
    layer = keras_stn.SpatialTransformer(out_dims=(4, 4), transform="attention", localization=keras.layers.Flatten())
    layer.build(images.shape)
    layer.head.bias.assign(np.array([0.5, 0, 0], "float32"))
    np.testing.assert_allclose(to_numpy(layer(images)), images[:, 2:6, 2:6], rtol=1e-6, atol=1e-6)
