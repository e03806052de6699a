"""keras_stn.transforms: parameterisations, lookup, serialisation and a custom non-affine transform."""

import json

import keras
import numpy as np
import pytest

import keras_stn
from helpers import to_numpy
from keras_stn import transforms
from keras_stn._checks import sampling_options
from reference import grid_sample_ref

AFFINE_NAMES = ["affine", "attention", "translation", "similarity"]
NAMES = [*AFFINE_NAMES, "projective", "tps"]  # more in test_transforms_nonaffine.py
CLASSES = {
    "affine": transforms.Affine,
    "attention": transforms.Attention,
    "translation": transforms.Translation,
    "similarity": transforms.Similarity,
    "projective": transforms.Projective,
    "tps": transforms.ThinPlateSpline,
}
NUM_PARAMS = {"affine": 6, "attention": 3, "translation": 2, "similarity": 4, "projective": 8, "tps": 18}
IDENTITY_THETA = np.array([[1, 0, 0], [0, 1, 0]], "float32")


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


# --------------------------------------------------------------------------- affine family


@pytest.mark.parametrize("name", NAMES)
def test_num_params_name_and_class(name):
    transform = transforms.get(name)
    assert type(transform) is CLASSES[name]
    assert transform.name == name
    assert transform.num_params == NUM_PARAMS[name]
    assert isinstance(transform, transforms.Transform)


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


@pytest.mark.parametrize("name", NAMES)
def test_identity_grid_is_the_pixel_centres(name):
    # Independent of affine_grid: centres (2i + 1) / n - 1 with align_corners=False.
    transform = transforms.get(name)
    grid = to_numpy(transform.grid(transform.identity_params()[None], (3, 4)))
    ys, xs = (2 * np.arange(3) + 1) / 3 - 1, (2 * np.arange(4) + 1) / 4 - 1
    np.testing.assert_allclose(grid[0, ..., 0], np.broadcast_to(xs, (3, 4)), atol=1e-7)
    np.testing.assert_allclose(grid[0, ..., 1], np.broadcast_to(ys[:, None], (3, 4)), atol=1e-7)


# --------------------------------------------------------------------------- lookup and errors


def test_get_accepts_names_instances_and_configs():
    for name, cls in CLASSES.items():
        assert type(transforms.get(name)) is cls
        instance = cls()
        assert transforms.get(instance) is instance
        config = keras.saving.serialize_keras_object(instance)
        assert transforms.get(config) == instance and type(transforms.get(config)) is cls


@pytest.mark.parametrize("identifier", ["foo", "rotation", "", 3, None, ["affine"]])
def test_get_unknown_lists_every_valid_name(identifier):
    with pytest.raises(ValueError) as info:
        transforms.get(identifier)
    message = str(info.value)
    for name in NAMES:
        assert repr(name) in message, message
    assert "`transform`" in message
    assert f"Got transform={identifier!r}" in message, message


@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("Affine", transforms.Affine),
        ("ATTENTION", transforms.Attention),
        (" translation ", transforms.Translation),
        ("TPS", transforms.ThinPlateSpline),
        ("thin_plate_spline", transforms.ThinPlateSpline),
        ("Thin-Plate Spline", transforms.ThinPlateSpline),
        ("homography", transforms.Projective),
    ],
)
def test_names_are_case_insensitive_and_unambiguous_aliases_accepted(identifier, cls):
    transform = transforms.get(identifier)
    assert type(transform) is cls
    assert transforms.serialize(transform) == transforms.serialize(cls())  # saved as if by its own name


@pytest.mark.parametrize(
    "identifier, suggestion",
    [
        ("afine", "affine"),
        ("atention", "attention"),
        ("tsp", "tps"),
        ("thin_plate_splines", "tps"),
        ("thinplate", "tps"),
        ("projection", "projective"),
        ("rotation", "similarity"),
        ("rigid", "similarity"),
        ("zoom", "attention"),
    ],
)
def test_near_misses_suggest_the_closest_name(identifier, suggestion):
    with pytest.raises(ValueError) as info:
        transforms.get(identifier)
    message = str(info.value)
    assert f". Did you mean {suggestion!r}? Got" in message, message
    assert message.startswith("`transform` must be one of") and message.endswith(f"Got transform={identifier!r}")
    for name in NAMES:
        assert repr(name) in message, message


def test_unrelated_names_get_no_suggestion():
    with pytest.raises(ValueError) as info:
        transforms.get("foo")
    assert "Did you mean" not in str(info.value)


def test_3d_names_suggest_3d_transforms_only():
    assert type(transforms.get("Affine", spatial_rank=3)) is transforms.Affine3D
    with pytest.raises(ValueError, match=r"Did you mean 'attention'\? Got transform='atention'"):
        transforms.get("atention", spatial_rank=3)
    for name in ("tps", "thin_plate_spline", "Projective"):
        with pytest.raises(ValueError) as info:
            transforms.get(name, spatial_rank=3)
        message = str(info.value)
        assert "has no 3-D version" in message and "Did you mean" not in message, message
        assert message.endswith(f"Got transform={name!r}"), message


@pytest.mark.parametrize(
    "name, method", [(name, "grid") for name in NAMES] + [(name, "to_theta") for name in AFFINE_NAMES]
)
def test_wrong_params_shape_raises_naming_params(name, method):
    transform = transforms.get(name)
    n = NUM_PARAMS[name]
    for shape in [(2, n + 1), (2, n - 1), (n,), (1, 1, n)]:
        params = np.zeros(shape, "float32")
        with pytest.raises(ValueError) as info:
            if method == "grid":
                transform.grid(params, (4, 4))
            else:
                transform.to_theta(params)
        message = str(info.value)
        assert "`params`" in message and f"(batch, {n})" in message, message
        assert f"Got params with shape {shape}" in message, message


@pytest.mark.parametrize("name", NAMES)
def test_integer_params_raise_type_error(name):
    with pytest.raises(TypeError, match=r"`params`.*floating.*Got params with dtype int32"):
        transforms.get(name).grid(np.zeros((1, NUM_PARAMS[name]), "int32"), (4, 4))


def test_grid_rejects_bad_size_and_align_corners():
    params = np.zeros((1, 2), "float32")
    translation = transforms.get("translation")
    with pytest.raises(ValueError, match=r"`size`.*Got size=\(0, 4\)"):
        translation.grid(params, (0, 4))
    with pytest.raises(TypeError, match=r"`size`.*Got size=\(4.0, 4\)"):
        translation.grid(params, (4.0, 4))
    with pytest.raises(TypeError, match=r"`align_corners` must be a bool. Got align_corners=1"):
        translation.grid(params, (4, 4), align_corners=1)


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("name", NAMES)
def test_serialize_round_trip_of_built_in_transforms(name):
    transform = transforms.get(name)
    serialized = transforms.serialize(transform)
    if transform.get_config():  # options (the thin-plate spline's grid_size) need a config
        assert serialized == keras.saving.serialize_keras_object(transform)
    else:  # built-ins without options serialise as their name
        assert serialized == name
    again = transforms.get(json.loads(json.dumps(serialized)))
    assert again == transform and type(again) is type(transform)
    assert transforms.get(name) != transforms.get(NAMES[(NAMES.index(name) + 1) % len(NAMES)])


# --------------------------------------------------------------------------- custom non-affine


@keras.saving.register_keras_serializable(package="keras_stn_tests")
class Barrel(transforms.Transform):
    """Radial ("barrel") distortion with one parameter `k`: output point `p` reads the input
    at `p * (1 + k |p|^power)`. Not affine (no `to_theta`), so it exercises the generic grid path."""

    name = "barrel"
    num_params = 1

    def __init__(self, power=2):
        self.power = power

    def identity_params(self):
        return np.zeros(1, "float32")

    def grid_unchecked(self, params, size, align_corners):
        ops = keras.ops
        height, width = size

        def centres(n):  # n may be an int or a scalar tensor
            i = ops.cast(ops.arange(n), "float32")
            n = ops.cast(n, "float32")
            return (2 * i + 1 - n) / (ops.maximum(n - 1, 1) if align_corners else n)

        xs = ops.reshape(centres(width), (1, 1, -1))
        ys = ops.reshape(centres(height), (1, -1, 1))
        x, y = xs + 0 * ys, ys + 0 * xs
        radius = ops.sqrt(x * x + y * y)
        k = ops.reshape(ops.cast(params[:, 0], "float32"), (-1, 1, 1))
        scale = 1 + k * radius**self.power
        return ops.cast(ops.stack([x * scale, y * scale], axis=-1), keras.backend.standardize_dtype(params.dtype))

    def get_config(self):
        return {"power": self.power}


def barrel_grid_np(k, size, align_corners=False, power=2):
    height, width = size

    def centres(n):
        i = np.arange(n, dtype=np.float64)
        return (2 * i + 1 - n) / (max(n - 1, 1) if align_corners else n)

    y, x = np.meshgrid(centres(height), centres(width), indexing="ij")
    scale = 1 + np.reshape(k, (-1, 1, 1)) * np.sqrt(x * x + y * y) ** power
    return np.stack([x * scale, y * scale], axis=-1)


def test_custom_transform_grid_and_validation():
    barrel = Barrel()
    assert not hasattr(barrel, "to_theta")
    params = np.array([[0.0], [0.3], [-0.2]], "float32")
    for align_corners in (False, True):
        grid = to_numpy(barrel.grid(params, (5, 6), align_corners))
        np.testing.assert_allclose(grid, barrel_grid_np(params[:, 0], (5, 6), align_corners), atol=1e-6)
    with pytest.raises(ValueError, match=r"`params` of the 'barrel' transform must have shape \(batch, 1\). Got"):
        barrel.grid(np.zeros((2, 2), "float32"), (4, 4))


@pytest.mark.parametrize("align_corners", [False, True])
def test_custom_transform_warp(align_corners, rng):
    images = rng.random((3, 10, 12, 2)).astype("float32")
    params = np.array([[0.0], [0.3], [-0.25]], "float32")
    barrel = Barrel()
    options = sampling_options("bilinear", "zeros", align_corners, "channels_last")
    out = to_numpy(barrel.warp(images, params, None, options))
    assert out.shape == images.shape
    np.testing.assert_allclose(out[0], images[0], atol=1e-5)  # k = 0 is the identity
    grid = barrel_grid_np(params[:, 0], (10, 12), align_corners)
    np.testing.assert_allclose(out, grid_sample_ref(images, grid, align_corners=align_corners), atol=1e-5)
    assert not np.allclose(out[1], images[1], atol=1e-2)
    # An explicit size and channels_first go through the same generic path.
    options = sampling_options("bilinear", "border", align_corners, "channels_first")
    out = to_numpy(barrel.warp(images.transpose(0, 3, 1, 2), params, (7, 5), options))
    grid = barrel_grid_np(params[:, 0], (7, 5), align_corners)
    expected = grid_sample_ref(images, grid, padding_mode="border", align_corners=align_corners)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)


def barrel_model(out_dims=None):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="tanh")])
    inputs = keras.Input((12, 12, 2))
    warped, params = keras_stn.SpatialTransformer(
        out_dims=out_dims, transform=Barrel(), localization=localization, return_theta=True, name="st"
    )(inputs)
    return keras.Model(inputs, [warped, params])


def test_custom_transform_inside_spatial_transformer(rng):
    images = rng.random((3, 12, 12, 2)).astype("float32")
    model = barrel_model()
    layer = model.get_layer("st")
    warped, params = (to_numpy(t) for t in model(images))
    np.testing.assert_array_equal(params, np.zeros((3, 1), "float32"))
    np.testing.assert_allclose(warped, images, atol=1e-5)
    # Set the regressed k to 0.3 through the head bias: the layer must sample the barrel grid.
    layer.head.bias.assign(np.array([0.3], "float32"))
    warped, params = (to_numpy(t) for t in model(images))
    np.testing.assert_allclose(params, np.full((3, 1), 0.3), atol=1e-7)
    expected = grid_sample_ref(images, barrel_grid_np(np.full(3, 0.3), (12, 12)))
    np.testing.assert_allclose(warped, expected, atol=1e-5)
    # out_dims is honoured by the generic path too.
    small = barrel_model(out_dims=(5, 7))
    warped, _ = small(images)
    assert tuple(warped.shape) == (3, 5, 7, 2)
    expected = grid_sample_ref(images, barrel_grid_np(np.zeros(3), (5, 7)))
    np.testing.assert_allclose(to_numpy(warped), expected, atol=1e-5)


def test_custom_transform_trains_and_serialises(rng, tmp_path):
    images = rng.random((4, 12, 12, 2)).astype("float32")
    labels = rng.integers(0, 3, size=4)
    inputs = keras.Input((12, 12, 2))
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="tanh")])
    layer = keras_stn.SpatialTransformer(transform=Barrel(power=1), localization=localization, name="st")
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    assert abs(float(to_numpy(layer.head.bias)[0])) > 1e-6  # gradients reached k through the grid

    config = layer.get_config()
    assert config["transform"] == keras.saving.serialize_keras_object(Barrel(power=1))
    assert transforms.get(transforms.serialize(Barrel(power=1))) == Barrel(power=1)
    assert Barrel(power=1) != Barrel(power=2)
    json_config = json.loads(json.dumps(config))  # as stored in a .keras file (tuples become lists)
    clone = keras_stn.SpatialTransformer.from_config(json_config)
    assert clone.transform == Barrel(power=1)
    assert json.loads(json.dumps(clone.get_config())) == json_config

    path = str(tmp_path / "barrel.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("st").transform == Barrel(power=1)
    np.testing.assert_allclose(
        to_numpy(loaded.predict(images, verbose=0)), to_numpy(model.predict(images, verbose=0)), atol=1e-6
    )


# --------------------------------------------------------------------------- attention crops


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
