"""The spatial transformer layers' contract, `SpatialTransformer` for images and
`SpatialTransformer3D` for volumes: the identity at initialisation, `out_dims`, the returned
parameters and the warp they make, the declared output shapes, the non-affine transforms in the
layer, mixed precision, integer inputs, and the layer inside Sequential and functional models."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_stn
from helpers import (
    BACKEND,
    BATCH,
    LAYER_OUT,
    LAYER_SHAPES,
    dtype_of,
    homography,
    identity_resampled,
    interpolations,
    layer_images,
    layer_shape,
    per_rank,
    small_localization_3d,
    spatial_transformer,
    to_numpy,
)
from keras_stn import transforms
from reference import affine_grid_ref, grid_sample_ref, projective_grid_ref, tps_grid_ref

AFFINE_TRANSFORMS = ["affine", "attention", "translation", "similarity"]
# The built-in transforms of each rank.
TRANSFORMS = {2: [*AFFINE_TRANSFORMS, "projective", "tps"], 3: ["affine", "attention"]}
NUM_PARAMS = {
    2: {"affine": 6, "attention": 3, "translation": 2, "similarity": 4, "projective": 8, "tps": 18},
    3: {"affine": 12, "attention": 4},
}
IDENTITY_THETA = np.array([[1, 0, 0], [0, 1, 0]], "float32")

# The images' tests share one shape; the volumes' the other LAYER_SHAPES.
SHAPE, OUT = LAYER_SHAPES[2], LAYER_OUT[2]
SHAPE_CF = layer_shape(2, "channels_first")


# --------------------------------------------------------------------------------------------
# Identity at initialisation
# --------------------------------------------------------------------------------------------


@per_rank("transform", lambda rank: TRANSFORMS[rank])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_output_equals_input_at_initialisation(rank, transform, data_format, rng):
    # The default localization CNN is used in both layouts: Keras runs channels_first
    # convolutions on CPU under every backend here (TensorFlow included), so no custom
    # network is needed for channels_first.
    images = layer_images(rng, rank, data_format)
    layer = spatial_transformer(rank)(transform=transform, data_format=data_format)
    out = to_numpy(layer(images))
    assert out.dtype == np.float32
    if transform in AFFINE_TRANSFORMS:  # the fused affine sampler is exact
        np.testing.assert_array_equal(out, images)
    else:  # a normalised grid round-trips pixel centres up to float32 rounding
        np.testing.assert_allclose(out, images, rtol=0, atol=1e-6)
    assert layer.data_format == data_format
    assert isinstance(layer.localization, keras.layers.Layer)
    assert layer.transform == transforms.get(transform, spatial_rank=rank)
    conv = [sub for sub in layer.localization.layers if isinstance(sub, (keras.layers.Conv2D, keras.layers.Conv3D))]
    assert len(conv) == 2 and all(sub.data_format == data_format for sub in conv)


@per_rank("interpolation", interpolations)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_at_initialisation_for_every_mode(rank, interpolation, align_corners, rng):
    images = layer_images(rng, rank)
    layer = spatial_transformer(rank)(
        interpolation=interpolation,
        padding_mode="border",
        align_corners=align_corners,
        localization=keras.layers.Flatten(),
    )
    np.testing.assert_array_equal(to_numpy(layer(images)), images)


def test_data_format_defaults_to_keras_config(rng):
    images = layer_images(rng, shape=SHAPE_CF)
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        layer = keras_stn.SpatialTransformer(out_dims=OUT)
    finally:
        keras.config.set_image_data_format(previous)
    assert layer.data_format == "channels_first"
    assert tuple(layer(images).shape) == (BATCH, 2, *OUT)
    assert keras_stn.SpatialTransformer().data_format == previous


# --------------------------------------------------------------------------------------------
# out_dims, theta, shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_dims", [OUT, (20, 5), (1, 1)])
def test_out_dims_changes_the_output_size(out_dims, rng):
    images = layer_images(rng)
    out = to_numpy(keras_stn.SpatialTransformer(out_dims=out_dims)(images))
    assert out.shape == (BATCH, *out_dims, 2)
    np.testing.assert_allclose(out, identity_resampled(images, out_dims), atol=1e-5)


def test_out_dims_channels_first(rng):
    images = layer_images(rng, shape=SHAPE_CF)
    out = to_numpy(keras_stn.SpatialTransformer(out_dims=OUT, data_format="channels_first")(images))
    assert out.shape == (BATCH, 2, *OUT)
    expected = identity_resampled(images.transpose(0, 2, 3, 1), OUT)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)


@per_rank("transform", lambda rank: TRANSFORMS[rank])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_return_theta_gives_identity_params_at_initialisation(rank, transform, data_format, rng):
    images = layer_images(rng, rank, data_format)
    kwargs = {"transform": transform, "out_dims": LAYER_OUT[rank], "data_format": data_format}
    layer = spatial_transformer(rank)(return_theta=True, **kwargs)
    result = layer(images)
    assert isinstance(result, (tuple, list)) and len(result) == 2
    out, theta = result
    assert tuple(theta.shape) == (BATCH, NUM_PARAMS[rank][transform]) and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (BATCH, 1)))
    plain = spatial_transformer(rank)(**kwargs)
    plain.build(images.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(out), to_numpy(plain(images)))


@per_rank("transform", lambda rank: AFFINE_TRANSFORMS if rank == 2 else ["affine"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_returned_theta_is_the_one_that_warped_the_output(rank, transform, padding_mode, rng):
    """Same forward pass: with a non-trivial head, the output is the warp by the returned theta.
    (The non-affine transforms: test_layer_warps_with_the_regressed_params.)"""
    images = layer_images(rng, rank)
    out_dims = LAYER_OUT[rank]
    kwargs = {"transform": transform, "out_dims": out_dims, "padding_mode": padding_mode}
    layer = spatial_transformer(rank)(return_theta=True, **kwargs)
    layer.build(images.shape)
    kernel = rng.normal(scale=0.02, size=tuple(layer.head.kernel.shape)).astype("float32")
    layer.head.kernel.assign(kernel)
    out, theta = (to_numpy(t) for t in layer(images))
    assert np.abs(theta - layer.transform.identity_params()).max() > 1e-3  # not the identity
    assert np.ptp(theta, axis=0).max() > 1e-5  # and different per sample
    matrices = to_numpy(layer.transform.to_theta(theta))
    grid = affine_grid_ref(matrices.astype("float64"), out_dims)
    np.testing.assert_allclose(out, grid_sample_ref(images, grid, padding_mode=padding_mode), atol=1e-4)
    plain = spatial_transformer(rank)(**kwargs)
    plain.build(images.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(plain(images)), out)


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


def output_shape_cases(rank):
    """(data_format, input shape, out_dims, output shape), without the batch."""
    last, first, out = layer_shape(rank), layer_shape(rank, "channels_first"), LAYER_OUT[rank]
    channels = last[-1]
    return [
        ("channels_last", last, None, last),
        ("channels_last", last, out, (*out, channels)),
        ("channels_first", first, None, first),
        ("channels_first", first, out, (channels, *out)),
    ]


@pytest.mark.parametrize("return_theta", [False, True])
@per_rank(("data_format", "shape", "out_dims", "expected"), output_shape_cases)
def test_compute_output_shape_matches_the_output(rank, data_format, shape, out_dims, expected, return_theta, rng):
    layer = spatial_transformer(rank)(
        out_dims=out_dims, transform="attention", data_format=data_format, return_theta=return_theta
    )
    images = rng.random((BATCH, *shape)).astype("float32")
    num_params = NUM_PARAMS[rank]["attention"]
    declared = layer.compute_output_shape((BATCH, *shape))
    declared_symbolic = layer.compute_output_shape((None, *shape))
    result = layer(images)
    symbolic = layer(keras.Input(shape))
    if return_theta:
        out, theta = result
        sym_out, sym_theta = symbolic
        assert tuple(declared[0]) == tuple(out.shape) == (BATCH, *expected)
        assert tuple(declared[1]) == tuple(theta.shape) == (BATCH, num_params)
        assert tuple(declared_symbolic[0]) == tuple(sym_out.shape) == (None, *expected)
        assert tuple(declared_symbolic[1]) == tuple(sym_theta.shape) == (None, num_params)
    else:
        assert tuple(declared) == tuple(result.shape) == (BATCH, *expected)
        assert tuple(declared_symbolic) == tuple(symbolic.shape) == (None, *expected)


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_layer_with_a_dynamic_spatial_size(transform, rng):
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, keras_stn.SpatialTransformer(transform=transform, localization=localization)(inputs))
    for shape in [SHAPE, (7, 9, 2)]:
        images = rng.random((2, *shape)).astype("float32")
        np.testing.assert_allclose(to_numpy(model.predict(images, verbose=0)), images, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    """Sets a mixed policy for one test; yields the compute dtype (float16 or bfloat16)."""
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield request.param.split("_")[1]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@per_rank("transform", lambda rank: ["affine", "attention"] if rank == 2 else ["affine"])
def test_mixed_precision(rank, transform, mixed_policy, rng):
    images = layer_images(rng, rank)
    # TensorFlow has no float16 CPU kernel for 3-D pooling (MaxPool3D, AvgPool3D), which the
    # default localization net uses; the layer's own dtype handling is tested with a conv net.
    custom = rank == 3 and BACKEND == "tensorflow" and mixed_policy == "float16"

    def localization():
        return small_localization_3d() if custom else None

    layer = spatial_transformer(rank)(transform=transform, return_theta=True, localization=localization())
    out, theta = layer(images)
    assert layer.compute_dtype == mixed_policy
    assert dtype_of(out) == mixed_policy
    assert dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(theta), np.tile(layer.transform.identity_params(), (BATCH, 1)))
    # The identity is exact in the compute dtype: the output is the input rounded to it.
    rounded = to_numpy(ops.cast(ops.cast(images, mixed_policy), "float32"))
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), rounded)
    # Resampling is computed from float32 coordinates: close to the float32 result, within the
    # compute dtype's rounding (8 bits of mantissa for bfloat16, 11 for float16).
    out_dims = LAYER_OUT[rank]
    resized = spatial_transformer(rank)(transform=transform, out_dims=out_dims, localization=localization())(images)
    assert dtype_of(resized) == mixed_policy
    atol = 2e-3 if mixed_policy == "float16" else 1.6e-2
    np.testing.assert_allclose(to_numpy(ops.cast(resized, "float32")), identity_resampled(images, out_dims), atol=atol)


def test_mixed_precision_in_a_model(mixed_policy, rng):
    images = layer_images(rng)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(out_dims=OUT, return_theta=True)(inputs)
    model = keras.Model(inputs, [warped, theta])
    out, theta = model.predict(images, verbose=0)
    assert dtype_of(out) == mixed_policy and dtype_of(theta) == "float32"
    assert out.shape == (BATCH, *OUT, 2) and theta.shape == (BATCH, 6)


# --------------------------------------------------------------------------------------------
# Integer images
# --------------------------------------------------------------------------------------------


def integer_images(rng, dtype, shape=SHAPE):
    """Images of `dtype` and the float32 images of the same values."""
    high = 2 if dtype == "bool" else 256
    values = rng.integers(0, high, size=(BATCH, *shape))
    return values.astype(dtype), values.astype("float32")


def zooming_out(layer, images, rng):
    """Builds `layer` (attention) with a random head kernel and a zoom-out bias (scale 2), so the
    localization net matters and the output's corners lie outside the input."""
    layer.build(images.shape)
    layer.head.kernel.assign(rng.normal(scale=1e-3, size=tuple(layer.head.kernel.shape)).astype("float32"))
    layer.head.bias.assign(np.array([2] + [0] * (images.ndim - 2), "float32"))
    return layer


@per_rank("dtype", lambda rank: ["uint8", "int32", "bool"])
def test_integer_images_are_cast_to_the_compute_dtype(rank, dtype, rng):
    images, floats = integer_images(rng, dtype, LAYER_SHAPES[rank])
    layer = spatial_transformer(rank)(return_theta=True)
    out, theta = layer(images)
    assert dtype_of(out) == "float32" and dtype_of(theta) == "float32"
    np.testing.assert_array_equal(to_numpy(out), floats)  # identity at initialisation
    sym_out, sym_theta = layer(keras.Input(LAYER_SHAPES[rank], dtype=dtype))
    assert (sym_out.dtype, sym_theta.dtype) == (dtype_of(out), dtype_of(theta))

    # A warp that reads the zero padding: the same numbers as for float32 images.
    layer = spatial_transformer(rank)(transform="attention", out_dims=LAYER_OUT[rank])
    layer = zooming_out(layer, images, rng)
    warped, expected = to_numpy(layer(images)), to_numpy(layer(floats))
    assert warped.dtype == np.float32
    np.testing.assert_array_equal(warped, expected)
    np.testing.assert_array_equal(warped[(slice(None), *(0,) * rank)], 0)  # the first corner
    assert np.abs(warped).max() > 0


def test_integer_images_in_a_model_and_under_mixed_precision(mixed_policy, rng):
    images, floats = integer_images(rng, "uint8")
    inputs = keras.Input(SHAPE, dtype="uint8")
    warped, theta = keras_stn.SpatialTransformer(return_theta=True)(inputs)
    assert (warped.dtype, theta.dtype) == (mixed_policy, "float32")
    model = keras.Model(inputs, [warped, theta])
    out, theta = model(images)
    assert (dtype_of(out), dtype_of(theta)) == (mixed_policy, "float32")
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), floats)  # 0..255 are exact in both


# --------------------------------------------------------------------------------------------
# Models and batches
# --------------------------------------------------------------------------------------------


def test_dynamic_batch(rng):
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras_stn.SpatialTransformer()(inputs))
    for batch in (1, 5):
        images = rng.random((batch, 28, 28, 1)).astype("float32")
        np.testing.assert_array_equal(to_numpy(model.predict(images, verbose=0)), images)


def test_inside_a_sequential_model(rng):
    images = layer_images(rng)
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras_stn.SpatialTransformer(out_dims=OUT, transform="translation", name="st"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    assert model.output_shape == (None, 3)
    assert tuple(model.predict(images, verbose=0).shape) == (BATCH, 3)
    warped = keras.Model(model.inputs[0], model.get_layer("st").output)
    np.testing.assert_allclose(to_numpy(warped(images)), identity_resampled(images, OUT), atol=1e-5)
    # Deferred build: no Input, built on the first call.
    deferred = keras.Sequential([keras_stn.SpatialTransformer(out_dims=OUT), keras.layers.Flatten()])
    assert tuple(deferred(images).shape) == (BATCH, OUT[0] * OUT[1] * 2)


def test_inside_a_functional_model_with_theta_output(rng):
    images = layer_images(rng)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(transform="attention", return_theta=True)(inputs)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(warped))
    model = keras.Model(inputs, [logits, theta, warped])
    logits, theta, warped = model.predict(images, verbose=0)
    assert logits.shape == (BATCH, 3)
    np.testing.assert_array_equal(theta, np.tile([1, 0, 0], (BATCH, 1)).astype("float32"))
    np.testing.assert_array_equal(warped, images)
