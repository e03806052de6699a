"""Localization networks: map the input feature map to the features the transform is regressed from."""

import keras

from keras_stn import _checks
from keras_stn._layout import spatial_shape_of
from keras_stn._typing import DataFormat

__all__ = ["default_localization", "default_localization_3d", "MAX_SIZE_2D", "MAX_SIZE_3D"]

# The largest size, per spatial axis, the default nets run the paper's layers at: larger inputs
# are max-pooled down to it first. 64 keeps the paper's 28, 40 and 60 pixel inputs unpooled;
# 32 keeps the 3-D net's dense layer at its 32x32x32 size (about 0.5M weights).
MAX_SIZE_2D = 64
MAX_SIZE_3D = 32


def default_localization(
    input_shape: tuple,
    data_format: DataFormat = "channels_last",
    dtype: str | None = None,
    name: str = "localization",
    units: int = 50,
    max_size: int | None = MAX_SIZE_2D,
) -> keras.Sequential:
    """The small CNN used when `SpatialTransformer(localization=None)`.

    Follows the paper's ST-CNN localization net: 2x max-pooling, a 5x5 convolution with 20
    filters, 2x max-pooling, another 5x5 convolution with 20 filters, then a dense layer on
    the flattened features (50 units by default; the paper's distorted-MNIST nets use 20).
    Pooling and convolutions use "same" padding, so even inputs of a few pixels work.

    The dense layer sees `20 * ceil(H / 4) * ceil(W / 4)` features, which would grow with the
    input area. So an input larger than `max_size` along an axis is first max-pooled by
    `ceil(size / max_size)` along it (an extra first layer, "same" padding), which brings it to
    at most `max_size` pixels there: with the default 64, inputs up to 64x64 (MNIST's 28, 40
    and 60 pixels included) get exactly the paper's net (about 60k weights at 28x28, 236k at
    60x60) and no input gets more than 16x16x20 features (about 270k weights at 512x512x3,
    where the unbounded net had 16.4M). `max_size=None` removes the bound.

    Args:
        input_shape: the transformer's input shape, with or without the batch dimension.
        data_format: `"channels_last"` or `"channels_first"`.
        dtype: dtype policy of the layers (the transformer passes its own).
        name: name of the returned model.
        units: width of the final dense layer, i.e. of the features the head regresses from.
        max_size: positive int (default 64), the largest height and width the paper's layers
            run at; `None` for no bound.

    Returns:
        A `keras.Sequential` mapping `(B, *input_shape)` to `(B, units)`.

    Raises:
        ValueError: when the height or width is not static (a dense layer needs to know them),
            or `units` or `max_size` is not a positive integer.

    Examples:
        >>> net = default_localization((512, 512, 3))
        >>> [type(layer).__name__ for layer in net.layers][:2]
        ['MaxPooling2D', 'MaxPooling2D']
        >>> net.compute_output_shape((None, 512, 512, 3))
        (None, 50)
    """
    return convolutional_localization(2, 5, input_shape, data_format, dtype, name, units, max_size)


def default_localization_3d(
    input_shape: tuple,
    data_format: DataFormat = "channels_last",
    dtype: str | None = None,
    name: str = "localization",
    units: int = 50,
    max_size: int | None = MAX_SIZE_3D,
) -> keras.Sequential:
    """The small 3-D CNN used when `SpatialTransformer3D(localization=None)`.

    The volumetric counterpart of `default_localization`: 2x max-pooling, a convolution with 20
    filters, 2x max-pooling, another convolution with 20 filters, then a dense layer on the
    flattened features (50 units by default). The kernels are 3x3x3 rather than 5x5x5, which
    keeps the cost per voxel near that of the 2-D net's 5x5 (27 taps against 25, where 5x5x5
    would be 125); the second convolution still sees 16 input voxels across.

    As in 2-D, a volume larger than `max_size` along an axis is first max-pooled by
    `ceil(size / max_size)` along it, so the dense layer never sees more than 8x8x8x20
    features with the default 32 (about 0.5M weights, the count at 32x32x32; the unbounded
    net has 4.1M at 64x64x64). Volumes up to 32 voxels along every axis get the net unchanged;
    `max_size=None` removes the bound.

    Args:
        input_shape: the transformer's input shape `(D, H, W, C)` or `(C, D, H, W)`, with or
            without the batch dimension.
        data_format: `"channels_last"` or `"channels_first"`.
        dtype: dtype policy of the layers (the transformer passes its own).
        name: name of the returned model.
        units: width of the final dense layer, i.e. of the features the head regresses from.
        max_size: positive int (default 32), the largest depth, height and width the net's
            convolutions run at; `None` for no bound.

    Returns:
        A `keras.Sequential` mapping `(B, *input_shape)` to `(B, units)`.

    Raises:
        ValueError: when the depth, height or width is not static (a dense layer needs to
            know them), or `units` or `max_size` is not a positive integer.

    Examples:
        >>> net = default_localization_3d((16, 32, 32, 1))
        >>> net.compute_output_shape((None, 16, 32, 32, 1))
        (None, 50)
    """
    return convolutional_localization(3, 3, input_shape, data_format, dtype, name, units, max_size)


def convolutional_localization(rank, kernel_size, input_shape, data_format, dtype, name, units, max_size):
    """[pool to max_size,] pool, conv, pool, conv, flatten, dense: the default localization net."""
    _checks.check_units(units)
    max_size = _checks.check_optional_integer("max_size", max_size, minimum=1)
    shape = tuple(input_shape)[-(rank + 1) :]
    spatial = spatial_shape_of((None, *shape), data_format)
    _checks.check_static_spatial(spatial, input_shape, rank)
    conv = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    pool = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}[rank]
    common = dict(data_format=data_format, dtype=dtype)
    layers = [
        pool(2, padding="same", **common),
        conv(20, kernel_size, padding="same", activation="relu", **common),
        pool(2, padding="same", **common),
        conv(20, kernel_size, padding="same", activation="relu", **common),
        keras.layers.Flatten(**common),
        keras.layers.Dense(units, activation="relu", dtype=dtype),
    ]
    factors = tuple(1 if max_size is None else -(-size // max_size) for size in spatial)
    if max(factors) > 1:
        # Max rather than average pooling: with "same" padding it gives the same numbers on
        # every backend (torch pads average pooling by replication, the others exclude the
        # padding), so a model saved under one backend predicts the same under another.
        layers.insert(0, pool(factors, padding="same", **common))
    return keras.Sequential(layers, name=name)
