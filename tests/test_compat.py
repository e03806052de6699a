"""keras_stn.spatial_transformer_network: the original TensorFlow `stn` package's call.

Convention under test: channels-last input, theta (B, 6) or (B, 2, 3) mapping output to input
coordinates, a corners-aligned grid (pixel p <-> normalised 2p/(n-1) - 1) and zeros outside.
The NumPy references here are written from that convention alone.
"""

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_stn import spatial_transformer_network

IDENTITY = np.array([1, 0, 0, 0, 1, 0], "float32")
# Few distinct shapes (JAX compiles each op once per shape in eager mode): a non-square batch
# and a square one for the rotations.
SHAPE = (2, 10, 12, 3)
SQUARE = 32


def tile(theta, batch):
    return np.tile(np.asarray(theta, "float32").reshape(1, -1), (batch, 1))


def bilinear_np(images, px, py):
    """Bilinear read of `images` (B, H, W, C) at pixel coordinates px, py (Ho, Wo) shared by the
    batch, in float64; taps outside the image read 0."""
    images = np.asarray(images, np.float64)
    _, height, width, _ = images.shape
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    out = np.zeros((images.shape[0], *px.shape, images.shape[3]))
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            values = images[:, np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]
            out += (weight * inside)[None, :, :, None] * values
    return out


def affine_np(images, theta, out_size):
    """The stn convention in NumPy: normalise output pixels (corners aligned), apply the 2x3
    theta, unnormalise against the input size, read bilinearly."""
    _, height, width, _ = images.shape
    out_h, out_w = out_size
    ys = np.linspace(-1, 1, out_h) if out_h > 1 else np.zeros(1)
    xs = np.linspace(-1, 1, out_w) if out_w > 1 else np.zeros(1)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    theta = np.asarray(theta, np.float64).reshape(2, 3)
    src_x = theta[0, 0] * x + theta[0, 1] * y + theta[0, 2]
    src_y = theta[1, 0] * x + theta[1, 1] * y + theta[1, 2]
    return bilinear_np(images, (src_x + 1) * (width - 1) / 2, (src_y + 1) * (height - 1) / 2)


def pattern(size, batch=2):
    """Smooth, asymmetric synthetic images (B, size, size, 3): rings, a diagonal ramp, a blob."""
    p = np.arange(size) / (size - 1)
    y, x = np.meshgrid(p, p, indexing="ij")
    channels = [
        0.5 + 0.5 * np.cos(12 * np.hypot(x - 0.3, y - 0.6)),
        0.7 * x + 0.3 * y**2,
        np.exp(-((x - 0.7) ** 2 + (y - 0.25) ** 2) / 0.02),
    ]
    image = np.stack(channels, axis=-1)
    return np.stack([image, image[::-1, :] * 0.8]).astype("float32")[:batch]


# --------------------------------------------------------------------------- identity and dtypes


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("theta_dtype", ["float32", "same"])
def test_identity_returns_the_input_exactly(dtype, theta_dtype, rng, x64):
    images = keras.ops.cast(rng.random(SHAPE), dtype)
    theta = keras.ops.cast(tile(IDENTITY, 2), dtype if theta_dtype == "same" else "float32")
    out = spatial_transformer_network(images, theta)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert tuple(out.shape) == SHAPE
    np.testing.assert_array_equal(to_numpy(keras.ops.cast(out, "float32")), to_numpy(keras.ops.cast(images, "float32")))


def test_accepts_numpy_inputs_and_keeps_float32(rng):
    images = rng.random(SHAPE).astype("float32")
    out = to_numpy(spatial_transformer_network(images, tile(IDENTITY, 2)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images)


# --------------------------------------------------------------------------- out_dims and theta layouts


@pytest.mark.parametrize("out_dims", [(7, 5), (20, 3), (10, 12), (1, 1)])
def test_out_dims_resamples(out_dims, rng):
    images = rng.random(SHAPE).astype("float32")
    out = to_numpy(spatial_transformer_network(images, tile(IDENTITY, 2), out_dims))
    assert out.shape == (2, *out_dims, 3)
    np.testing.assert_allclose(out, affine_np(images, IDENTITY, out_dims), atol=1e-5)


def test_out_dims_with_a_general_theta(rng):
    images = rng.random(SHAPE).astype("float32")
    theta = np.array([0.8, -0.3, 0.1, 0.2, 1.1, -0.15], "float32")
    out = to_numpy(spatial_transformer_network(images, tile(theta, 2), out_dims=(7, 5)))
    np.testing.assert_allclose(out, affine_np(images, theta, (7, 5)), atol=1e-5)


def test_corners_are_aligned(rng):
    """Corner output pixels read exactly the corner input pixels, for any output size."""
    images = rng.random(SHAPE).astype("float32")
    out = to_numpy(spatial_transformer_network(images, tile(IDENTITY, 2), out_dims=(7, 5)))
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(out[:, i, j], images[:, i, j], atol=1e-6)


def test_matrix_theta_equals_flat_theta(rng):
    images = rng.random(SHAPE).astype("float32")
    theta = rng.normal(scale=0.5, size=(2, 2, 3)).astype("float32")
    flat = to_numpy(spatial_transformer_network(images, theta.reshape(2, 6), out_dims=(7, 5)))
    matrix = to_numpy(spatial_transformer_network(images, theta, out_dims=(7, 5)))
    np.testing.assert_array_equal(flat, matrix)
    for b in range(2):  # and each image uses its own theta
        np.testing.assert_allclose(flat[b : b + 1], affine_np(images[b : b + 1], theta[b], (7, 5)), atol=1e-5)


def test_zeros_outside_the_input(rng):
    images = rng.random(SHAPE).astype("float32") + 1  # no zero pixels
    shifted_away = tile([1, 0, 3, 0, 1, 0], 2)  # every sample lands at x >= 2: outside
    np.testing.assert_array_equal(to_numpy(spatial_transformer_network(images, shifted_away)), 0)
    # Width 12: tx = 1 is half the frame, 5.5 pixels: output column j reads input column
    # j + 5.5, so columns 0-6 read at least one pixel (column 6 half of column 11), 7-11 nothing.
    half = to_numpy(spatial_transformer_network(images, tile([1, 0, 1, 0, 1, 0], 2)))
    np.testing.assert_allclose(half, affine_np(images, [1, 0, 1, 0, 1, 0], (10, 12)), atol=1e-5)
    assert (half[:, :, 7:] == 0).all() and (half[:, :, :7] > 0).all()


# --------------------------------------------------------------------------- the original sanity check


def test_45_degree_rotation_matches_numpy(rng):
    """The original package's sanity check (rotating images by 45 degrees), on small synthetic
    images, against an independent NumPy bilinear rotation in the corners-aligned frame."""
    images = pattern(SQUARE)
    angle = np.pi / 4
    c, s = np.cos(angle), np.sin(angle)
    theta = np.array([c, -s, 0, s, c, 0], "float32")
    out = to_numpy(spatial_transformer_network(images, tile(theta, 2)))
    assert out.shape == images.shape
    expected = affine_np(images, theta, (SQUARE, SQUARE))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Points rotated out of the frame read 0 (the output's corners); the centre stays put.
    np.testing.assert_array_equal(out[:, 0, 0], 0)
    np.testing.assert_array_equal(out[:, -1, -1], 0)
    assert np.abs(out[:, 10:22, 10:22]).max() > 0.1


@pytest.mark.usefixtures("portable_sampler")
@pytest.mark.parametrize(
    "theta, k",
    [
        ([0, -1, 0, 1, 0, 0], 1),  # x_in = -y_out, y_in = x_out: out[i, j] = in[j, n-1-i]
        ([0, 1, 0, -1, 0, 0], -1),  # x_in = y_out, y_in = -x_out: out[i, j] = in[n-1-j, i]
        ([-1, 0, 0, 0, -1, 0], 2),  # half turn: out[i, j] = in[n-1-i, n-1-j]
    ],
)
def test_quarter_turns_are_exact_rot90(theta, k, rng):
    """Output pixel (i, j) sits at (x, y) = (2j/(n-1) - 1, 2i/(n-1) - 1). With theta
    [[0, -1, 0], [1, 0, 0]] it reads the input at (-y, x), i.e. column n-1-i, row j:
    out[i, j] = in[j, n-1-i], which is np.rot90(in, k=1) (counter-clockwise) over (H, W).
    Every sample lands on a pixel centre, so the result is exact."""
    images = rng.random((2, SQUARE, SQUARE, 3)).astype("float32")
    out = to_numpy(spatial_transformer_network(images, tile(theta, 2)))
    np.testing.assert_array_equal(out, np.rot90(images, k=k, axes=(1, 2)))
    n = SQUARE
    # The direction spelled out for output pixel (1, 2), independently of np.rot90.
    source = {1: (2, n - 1 - 1), -1: (n - 1 - 2, 1), 2: (n - 1 - 1, n - 1 - 2)}[k]
    assert out[0, 1, 2, 0] == images[0, source[0], source[1], 0]


@pytest.mark.usefixtures("portable_sampler")
def test_quarter_turn_of_a_pattern_image():
    images = pattern(SQUARE)
    out = to_numpy(spatial_transformer_network(images, tile([0, -1, 0, 1, 0, 0], 2)))
    np.testing.assert_array_equal(out, np.rot90(images, k=1, axes=(1, 2)))


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("theta_shape", [(2, 5), (2, 3, 3), (5,), (6,), (2, 2, 2), (2, 6, 1)])
def test_bad_theta_shape_raises_naming_theta(theta_shape):
    with pytest.raises(ValueError) as info:
        spatial_transformer_network(np.zeros((2, 8, 8, 1), "float32"), np.zeros(theta_shape, "float32"))
    message = str(info.value)
    assert "`theta`" in message and f"Got theta with shape {theta_shape}" in message, message


def test_batch_mismatch_raises():
    with pytest.raises(ValueError) as info:
        spatial_transformer_network(np.zeros((2, 8, 8, 1), "float32"), np.zeros((3, 6), "float32"))
    message = str(info.value)
    assert "batch" in message and "`input_fmap`" in message and "`theta`" in message, message
    assert "Got input_fmap with shape (2, 8, 8, 1) and theta with shape (3, 6)" in message, message


@pytest.mark.parametrize("shape", [(8, 8, 1), (2, 8, 8), (1, 2, 8, 8, 1)])
def test_input_fmap_must_be_rank_4(shape):
    with pytest.raises(ValueError) as info:
        spatial_transformer_network(np.zeros(shape, "float32"), np.zeros((2, 6), "float32"))
    message = str(info.value)
    assert "`input_fmap`" in message and f"Got input_fmap with shape {shape}" in message, message


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_input_raises_type_error(dtype):
    with pytest.raises(TypeError) as info:
        spatial_transformer_network(np.zeros((2, 8, 8, 1), dtype), np.zeros((2, 6), "float32"))
    message = str(info.value)
    assert "`input_fmap`" in message and "floating" in message and f"Got input_fmap with dtype {dtype}" in message


def test_integer_theta_raises_type_error():
    with pytest.raises(TypeError, match=r"`theta`.*floating.*Got"):
        spatial_transformer_network(np.zeros((2, 8, 8, 1), "float32"), np.zeros((2, 6), "int32"))


@pytest.mark.parametrize(
    "out_dims, errors",
    [
        ((0, 5), ValueError),
        ((3, -1), ValueError),
        ((5,), ValueError),
        ((2, 3, 4), ValueError),
        (3.5, (ValueError, TypeError)),
        (7, (ValueError, TypeError)),
        (("a", 2), TypeError),
        ((4.0, 4), TypeError),
        ((True, 4), TypeError),
    ],
)
def test_bad_out_dims_raise(out_dims, errors):
    with pytest.raises(errors) as info:
        spatial_transformer_network(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 6), "float32"), out_dims)
    message = str(info.value)
    assert "`out_dims`" in message and f"Got out_dims={out_dims!r}" in message, message


def test_out_dims_accepts_numpy_integers(rng):
    images = rng.random(SHAPE).astype("float32")
    out = spatial_transformer_network(images, tile(IDENTITY, 2), (np.int64(7), np.int32(5)))
    assert tuple(out.shape) == (2, 7, 5, 3)
