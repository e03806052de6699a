"""Argument checks of the spatial transformer layers: bad constructor arguments (images and
volumes), inputs of the wrong rank, a single image or volume without its batch axis, images
without a channel axis; each error names the argument and what it got."""

import keras
import numpy as np
import pytest

import keras_stn
from helpers import BATCH, LAYER_SHAPES, layer_shape, per_rank, spatial_transformer
from keras_stn import transforms

TRANSFORMS = ["affine", "attention", "translation", "similarity", "projective", "tps"]
IN_SIZE_3D = LAYER_SHAPES[3][:-1]

# (argument, bad value, the exception or exceptions it may raise) per rank.
BAD_ARGUMENTS = {
    2: [
        ("out_dims", (0, 5), ValueError),
        ("out_dims", (5, -1), ValueError),
        ("out_dims", (5,), ValueError),
        ("out_dims", (5, 5, 5), ValueError),
        ("out_dims", 3.5, (ValueError, TypeError)),
        ("out_dims", ("a", 2), TypeError),
        ("out_dims", (4.0, 5), TypeError),
        ("out_dims", True, (ValueError, TypeError)),
        ("out_dims", (True, 5), TypeError),
        ("out_dims", "ab", (ValueError, TypeError)),
        ("transform", "foo", ValueError),
        ("transform", 3, ValueError),
        ("interpolation", "linear", ValueError),
        ("interpolation", None, ValueError),
        ("padding_mode", "wrap", ValueError),
        ("data_format", "NHWC", ValueError),
        ("align_corners", "yes", TypeError),
        ("align_corners", 1, TypeError),
        ("return_theta", "yes", TypeError),
        ("localization_gradient_scale", 0, ValueError),
        ("localization_gradient_scale", -0.5, ValueError),
        ("localization_gradient_scale", float("inf"), ValueError),
        ("localization_gradient_scale", float("nan"), ValueError),
        ("localization_gradient_scale", "0.1", TypeError),
        ("localization_gradient_scale", True, TypeError),
        ("localization_max_size", 0, ValueError),
        ("localization_max_size", 2.5, TypeError),
        ("localization_max_size", "big", TypeError),
        ("localization_max_size", True, TypeError),
    ],
    3: [
        ("out_dims", (4, 5), ValueError),
        ("out_dims", (4, 5, 0), ValueError),
        ("out_dims", (4, 5.0, 6), TypeError),
        ("transform", "tps", ValueError),
        ("transform", transforms.Affine(), ValueError),
        ("interpolation", "bicubic", ValueError),
        ("padding_mode", "wrap", ValueError),
        ("data_format", "NDHWC", ValueError),
        ("align_corners", 1, TypeError),
    ],
}


@per_rank(
    ("name", "value", "errors"), lambda rank: BAD_ARGUMENTS[rank], ids=lambda name, value, errors: f"{name}={value!r}"
)
def test_bad_constructor_arguments(rank, name, value, errors):
    with pytest.raises(errors) as info:
        spatial_transformer(rank)(**{name: value})
    message = str(info.value)
    assert f"`{name}`" in message, message
    assert f"Got {name}={value!r}" in message, message


@pytest.mark.parametrize(
    "name, value, valid",
    [
        ("interpolation", "linear", ["bilinear", "nearest", "bicubic"]),
        ("padding_mode", "wrap", ["zeros", "border", "reflection"]),
        ("data_format", "NHWC", ["channels_last", "channels_first"]),
        ("transform", "foo", TRANSFORMS),
    ],
)
def test_bad_choices_list_the_valid_ones(name, value, valid):
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer(**{name: value})
    for choice in valid:
        assert repr(choice) in str(info.value)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_wrong_input_rank_raises():
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer()(np.zeros((BATCH, 16, 12), "float32"))


def test_layer_rejects_inputs_of_the_wrong_rank():
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer3D()(np.zeros((BATCH, 5, 6, 2), "float32"))
    with pytest.raises(ValueError):
        keras_stn.SpatialTransformer()(np.zeros((BATCH, *IN_SIZE_3D, 2), "float32"))
    with pytest.raises(ValueError, match=r"`transform`.*spatial_rank=2. Got transform=Affine3D\(\)"):
        keras_stn.SpatialTransformer(transform=transforms.Affine3D())


@per_rank("data_format", lambda rank: ["channels_last", "channels_first"])
@pytest.mark.parametrize("symbolic", [False, True])
def test_a_single_image_is_told_to_add_a_batch_axis(rank, data_format, symbolic):
    image = np.zeros(layer_shape(rank, data_format), "float32")
    layer = spatial_transformer(rank)(data_format=data_format)
    inputs = keras.Input(batch_shape=image.shape) if symbolic else image
    with pytest.raises(ValueError) as info:
        layer(inputs)
    message = str(info.value)
    spatial = "height, width" if rank == 2 else "depth, height, width"
    layout = f"(batch, {spatial}, channels)" if data_format == "channels_last" else f"(batch, channels, {spatial}"
    name, kind = ("SpatialTransformer", "rank-4") if rank == 2 else ("SpatialTransformer3D", "rank-5")
    assert message.startswith(f"`inputs` of {name} must be a {kind}") and layout in message, message
    assert "add a batch axis" in message and "x[None]" in message and "keras.ops.expand_dims(x, 0)" in message
    if rank == 3:
        assert "use `SpatialTransformer`" in message, message  # or it was a batch of images
    assert message.endswith(f"Got inputs with shape {image.shape}"), message
    # The layer is still usable once given a batch.
    assert tuple(layer(image[None]).shape) == (1, *image.shape)


@pytest.mark.parametrize("shape", [(BATCH, 16, 12), (BATCH, 3, 16, 12, 2), (16,)])
def test_other_input_ranks_name_the_expected_layout(shape):
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer()(np.zeros(shape, "float32"))
    message = str(info.value)
    assert message.startswith("`inputs` of SpatialTransformer must be a rank-4"), message
    assert message.endswith(f"Got inputs with shape {shape}"), message
    if len(shape) == 5:
        assert "use `SpatialTransformer3D`" in message, message


def test_symbolic_images_without_a_channel_axis_are_told_to_add_one():
    with pytest.raises(ValueError) as info:
        keras_stn.SpatialTransformer()(keras.Input((16, 12)))
    message = str(info.value)
    assert "add a channel axis, e.g. `x[..., None]`" in message and "batch axis" not in message, message
    assert message.endswith("Got inputs with shape (None, 16, 12)"), message
