"""The distorted-MNIST generators: shapes, ranges, determinism, and that each warp does its job."""

import numpy as np
import pytest
from conftest import synthetic_digits

import keras_stn
from experiments import data
from helpers import to_numpy


def bar_digit():
    """A 28x28 horizontal bar through the centre: its ink orientation is measurable after a warp."""
    image = np.zeros((28, 28), "uint8")
    image[12:16, 4:24] = 255
    return image


def orientation_degrees(images):
    """Principal-axis angle of each image's ink in pixel coordinates (y down), in (-90, 90]."""
    height, width = images.shape[1:3]
    ys, xs = np.mgrid[:height, :width]
    mass = images.sum(axis=(1, 2))
    mx = (images * xs).sum(axis=(1, 2)) / mass
    my = (images * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - mx[:, None, None], ys[None] - my[:, None, None]
    mu20 = (images * dx**2).sum(axis=(1, 2))
    mu02 = (images * dy**2).sum(axis=(1, 2))
    mu11 = (images * dx * dy).sum(axis=(1, 2))
    return np.rad2deg(0.5 * np.arctan2(2 * mu11, mu20 - mu02))


def centroid(images):
    height, width = images.shape[1:3]
    ys, xs = np.mgrid[:height, :width]
    mass = images.sum(axis=(1, 2))
    return np.stack([(images * xs).sum(axis=(1, 2)) / mass, (images * ys).sum(axis=(1, 2)) / mass], -1)


@pytest.fixture
def digits(rng):
    return synthetic_digits(rng, 24)


@pytest.mark.parametrize("distortion", data.DISTORTIONS)
def test_shape_dtype_range_and_seed(distortion, digits):
    canvas = data.CANVAS[distortion]
    first = data.distort(digits, distortion, np.random.default_rng(3), batch_size=8)
    again = data.distort(digits, distortion, np.random.default_rng(3), batch_size=24)
    other = data.distort(digits, distortion, np.random.default_rng(4))
    assert first.shape == (24, canvas, canvas, 1) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert first.max() > 0.3, "the digits' ink must survive the warp"
    np.testing.assert_array_equal(np.round(first * 255) / 255, first.astype("float64"), strict=False)
    np.testing.assert_array_equal(first, again)  # same seed, different batching
    assert not np.array_equal(first, other)


def test_rotation_is_uniform_within_ninety_degrees_and_really_rotates():
    bars = np.repeat(bar_digit()[None], 200, axis=0)
    out, params = data.distort(bars, "r", np.random.default_rng(0), return_params=True)
    angles = params["angle"]
    assert angles.min() >= -90 and angles.max() <= 90
    assert angles.min() < -80 and angles.max() > 80, "the range must be used, not only its centre"
    measured = orientation_degrees(out[..., 0].astype("float64"))
    difference = (measured - angles + 90) % 180 - 90  # orientation is defined modulo 180 degrees
    assert np.abs(difference).max() < 2.0


def test_rts_rotates_scales_and_moves_within_the_canvas():
    bars = np.repeat(bar_digit()[None], 100, axis=0)
    out, params = data.distort(bars, "rts", np.random.default_rng(1), return_params=True)
    assert np.abs(params["angle"]).max() <= 45 and np.abs(params["angle"]).max() > 40
    assert params["scale"].min() >= 0.7 and params["scale"].max() <= 1.2
    measured = orientation_degrees(out[..., 0].astype("float64"))
    np.testing.assert_allclose(measured, params["angle"], atol=2.0)
    # The bar's centre (the digit's centre) lands at the drawn centre; pixel i spans [i, i + 1).
    np.testing.assert_allclose(centroid(out[..., 0].astype("float64")) + 0.5, params["centre"], atol=0.3)
    ink_length = np.sqrt(12 * orientation_variance(out[..., 0].astype("float64")))
    np.testing.assert_allclose(ink_length, 20 * params["scale"], rtol=0.1)


def orientation_variance(images):
    """Variance of the ink along its principal axis."""
    height, width = images.shape[1:3]
    ys, xs = np.mgrid[:height, :width]
    centre = centroid(images)
    dx, dy = xs[None] - centre[:, 0, None, None], ys[None] - centre[:, 1, None, None]
    mass = images.sum(axis=(1, 2))
    mu20 = (images * dx**2).sum(axis=(1, 2)) / mass
    mu02 = (images * dy**2).sum(axis=(1, 2)) / mass
    mu11 = (images * dx * dy).sum(axis=(1, 2)) / mass
    return (mu20 + mu02) / 2 + np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)


@pytest.mark.parametrize("distortion", ["t", "cluttered"])
def test_translation_keeps_the_whole_digit(distortion, digits):
    out, params = data.distort(digits, distortion, np.random.default_rng(5), return_params=True)
    centre = params["centre"]
    assert centre.min() >= 14 and centre.max() <= 60 - 14
    # The whole-pixel offset of a digit in the canvas: the digit appears unchanged at that offset.
    offsets = np.floor(centre - 14 + 1e-9).astype(int)
    whole = np.all(np.abs(centre - 14 - offsets) < 1e-9, axis=1)
    for image, digit, (left, top), exact in zip(out[..., 0], digits, offsets, whole):
        if distortion == "t":
            assert image.sum() == pytest.approx(digit.sum() / 255.0, rel=1e-3)  # bilinear keeps the ink
        if exact:
            window = image[top : top + 28, left : left + 28]
            np.testing.assert_allclose(window >= digit / 255.0 - 1e-6, True)


def test_clutter_adds_six_patches_of_other_digits(digits):
    clean = data.distort(digits, "t", np.random.default_rng(6))
    cluttered, params = data.distort(digits, "cluttered", np.random.default_rng(6), return_params=True)
    assert params["clutter_to"].shape == (24, 6, 2)
    assert np.all(cluttered >= clean), "clutter combines by maximum, never erases the digit"
    assert (cluttered > clean).any(axis=(1, 2, 3)).mean() > 0.5
    # A patch's pixels are those of its source digit window (where no other patch overlaps).
    first = params["clutter_from"][0, 0]
    to = params["clutter_to"][0, 0]
    source = digits[params["clutter_source"][0, 0]] / 255.0
    patch = source[first[1] : first[1] + 6, first[0] : first[0] + 6]
    pasted = cluttered[0, to[1] : to[1] + 6, to[0] : to[0] + 6, 0]
    assert np.all(pasted >= patch - 1e-6)


def test_projective_and_elastic_are_the_identity_without_noise(digits, monkeypatch):
    for distortion, noise in (("p", "PROJECTIVE_SIGMA_PX"), ("e", "TPS_SIGMA_PX")):
        monkeypatch.setitem(data.SCALE_RANGE, distortion, (1.0, 1.0))
        monkeypatch.setattr(data, noise, 0.0)
        out = data.distort(digits, distortion, np.random.default_rng(0))
        np.testing.assert_allclose(out[..., 0], digits / 255.0, atol=1e-6)


def test_homographies_send_the_moved_corners_onto_the_square_corners():
    scale = np.array([0.75, 0.9, 1.0])
    shift = np.random.default_rng(2).normal(0, 5, (3, 4, 2))
    moved = data.SQUARE_CORNERS * scale[:, None, None] + shift / 14
    homogeneous = np.concatenate([moved, np.ones((3, 4, 1))], -1)
    mapped = np.einsum("nij,nkj->nki", data.homographies(scale, shift, 28), homogeneous)
    np.testing.assert_allclose(
        mapped[..., :2] / mapped[..., 2:], np.broadcast_to(data.SQUARE_CORNERS, (3, 4, 2)), atol=1e-9
    )


def identity_grid(size):
    return to_numpy(keras_stn.ops.affine_grid(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (size, size)))[0]


def test_projective_grid_is_the_homography_at_pixel_centres():
    scale, shift = np.array([0.8]), np.random.default_rng(3).normal(0, 5, (1, 4, 2))
    h = data.homographies(scale, shift, 28)[0]
    grid = to_numpy(data.projective_grid(scale, shift, 28))[0]
    x, y = (np.array([3, 20]) + 0.5) / 14 - 1  # pixel (row 20, column 3)
    expected = h @ [x, y, 1.0]
    np.testing.assert_allclose(grid[20, 3], expected[:2] / expected[2], rtol=1e-5)


def test_elastic_shift_is_in_canvas_pixels_and_scale_zooms_about_the_centre():
    # A thin-plate spline reproduces affine maps: moving every control point by the same
    # (2, -1) pixels shifts the whole grid by that much.
    shift = np.broadcast_to(np.array([2.0, -1.0]), (1, 16, 2))
    grid = to_numpy(data.tps_grid(np.array([0.8]), shift, 28))[0]
    expected = (identity_grid(28) + np.array([2.0, -1.0]) / 14) / 0.8
    np.testing.assert_allclose(grid, expected, atol=1e-5)


def test_elastic_displacement_is_smooth_and_about_the_documented_strength():
    shift = np.random.default_rng(4).normal(0, data.TPS_SIGMA_PX, (64, 16, 2))
    grid = to_numpy(data.tps_grid(np.ones(64), shift, 28))
    displacement_px = (grid - identity_grid(28)) * 14
    rms = np.sqrt((displacement_px**2).mean())
    assert 0.5 < rms < 2.5
    step = np.abs(np.diff(displacement_px, axis=1))
    # Neighbouring pixels move together (a smooth field), unlike independent per-pixel noise.
    assert np.median(step) < 0.25 * rms and step.max() < 1.5


def test_load_distorted_caches_by_parameters(synthetic_mnist, tmp_path, monkeypatch):
    first = data.load_distorted("rts", data=synthetic_mnist, seed=1, num_train=40, num_test=16, cache_dir=tmp_path)
    assert first["x_train"].shape == (40, 42, 42, 1) and first["x_test"].shape == (16, 42, 42, 1)
    assert first["y_train"].dtype == np.int64
    assert len(list(tmp_path.glob("rts-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("a cached dataset must not be regenerated")

    monkeypatch.setattr(data, "distort", fail)
    cached = data.load_distorted("rts", data=synthetic_mnist, seed=1, num_train=40, num_test=16, cache_dir=tmp_path)
    for name in first:
        np.testing.assert_array_equal(cached[name], first[name])
    monkeypatch.undo()
    data.load_distorted("rts", data=synthetic_mnist, seed=2, num_train=40, num_test=16, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("rts-*.npz"))) == 2, "another seed is another dataset"


def test_load_mnist_reads_the_environment_variable(synthetic_mnist, monkeypatch):
    monkeypatch.setenv("KERAS_STN_MNIST", synthetic_mnist)
    (x_train, _), (x_test, _) = data.load_mnist()
    assert x_train.shape == (600, 28, 28) and x_test.shape == (200, 28, 28)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"distortion": "rotate"}, ValueError, "`distortion` must be one of"),
        ({"seed": -1}, ValueError, "`seed` must be a non-negative integer. Got seed=-1"),
        ({"num_train": 0}, ValueError, "`num_train` must be a positive integer or None. Got num_train=0"),
        ({"data": "/nonexistent/mnist.npz"}, FileNotFoundError, "Got data='/nonexistent/mnist.npz'"),
    ],
)
def test_load_distorted_rejects_bad_arguments(kwargs, error, message, synthetic_mnist, tmp_path):
    arguments = {"distortion": "r", "data": synthetic_mnist, "num_train": 4, "num_test": 4, "cache_dir": tmp_path}
    with pytest.raises(error, match=message):
        data.load_distorted(**{**arguments, **kwargs})


def test_distort_rejects_bad_images():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"`images` must have shape \(N, 28, 28\). Got shape \(2, 28, 27\)"):
        data.distort(np.zeros((2, 28, 27), "uint8"), "r", rng)
    with pytest.raises(TypeError, match="`images` must be uint8 .* Got dtype int32"):
        data.distort(np.zeros((2, 28, 28), "int32"), "r", rng)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer. Got batch_size=0"):
        data.distort(np.zeros((2, 28, 28), "uint8"), "r", rng, batch_size=0)
