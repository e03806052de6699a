"""Localization networks: map the input feature map to the features the transform is regressed from."""

import keras


def default_localization(input_shape, data_format="channels_last", dtype=None, name="localization", units=50):
    """The small CNN used when `SpatialTransformer(localization=None)`.

    Follows the paper's ST-CNN localization net: the input downsampled 2x, two 5x5 convolutions
    with 20 filters each followed by 2x max-pooling, and a dense layer (50 units by default; the
    paper's distorted-MNIST nets use 20). Pooling uses
    "same" padding so even inputs of a few pixels work. Its flattened features grow with the
    input area (about 60k weights for 28x28, 3M for 224x224): for large inputs pass a network of
    your own to `SpatialTransformer(localization=...)`.

    Args:
        input_shape: the transformer's input shape, with or without the batch dimension.
        data_format: `"channels_last"` or `"channels_first"`.
        dtype: dtype policy of the layers (the transformer passes its own).
        name: name of the returned model.
        units: width of the final dense layer, i.e. of the features the head regresses from.

    Returns:
        A `keras.Sequential` mapping `(B, *input_shape)` to `(B, units)`.

    Raises:
        ValueError: when the height or width is not static (a dense layer needs to know them).
    """
    return convolutional_localization(2, 5, input_shape, data_format, dtype, name, units)


def default_localization_3d(input_shape, data_format="channels_last", dtype=None, name="localization", units=50):
    """The small 3-D CNN used when `SpatialTransformer3D(localization=None)`.

    The volumetric counterpart of `default_localization`: the input downsampled 2x, two
    convolutions with 20 filters each followed by 2x max-pooling, and a dense layer (50 units by
    default). The kernels are 3x3x3 rather than 5x5x5, which keeps the cost per voxel near that
    of the 2-D net's 5x5 (27 taps against 25, where 5x5x5 would be 125); the second convolution
    still sees 16 input voxels across. Its flattened features grow with the input volume
    (about 0.5M weights for 32x32x32): for large volumes pass a network of your own to
    `SpatialTransformer3D(localization=...)`.

    Args:
        input_shape: the transformer's input shape `(D, H, W, C)` or `(C, D, H, W)`, with or
            without the batch dimension.
        data_format: `"channels_last"` or `"channels_first"`.
        dtype: dtype policy of the layers (the transformer passes its own).
        name: name of the returned model.
        units: width of the final dense layer, i.e. of the features the head regresses from.

    Returns:
        A `keras.Sequential` mapping `(B, *input_shape)` to `(B, units)`.

    Raises:
        ValueError: when the depth, height or width is not static (a dense layer needs to
            know them), or `units` is not a positive integer.

    Example:
        >>> net = default_localization_3d((16, 32, 32, 1))
        >>> net.compute_output_shape((None, 16, 32, 32, 1))  # (None, 50)
    """
    return convolutional_localization(3, 3, input_shape, data_format, dtype, name, units)


def convolutional_localization(rank, kernel_size, input_shape, data_format, dtype, name, units):
    """pool, conv, pool, conv, flatten, dense: the default localization net for `rank` spatial axes."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"`units` must be a positive integer. Got units={units!r}")
    shape = tuple(input_shape)[-(rank + 1) :]
    spatial = shape[:rank] if data_format == "channels_last" else shape[1:]
    if None in spatial:
        axes = "height and width" if rank == 2 else "depth, height and width"
        raise ValueError(
            f"The default localization network needs a static {axes} (it ends in a "
            "dense layer); pass `localization=` a network that handles variable sizes, e.g. one "
            f"ending in GlobalAveragePooling{rank}D. Got input shape {tuple(input_shape)}"
        )
    conv = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    pool = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}[rank]
    common = dict(data_format=data_format, dtype=dtype)
    return keras.Sequential(
        [
            pool(2, padding="same", **common),
            conv(20, kernel_size, padding="same", activation="relu", **common),
            pool(2, padding="same", **common),
            conv(20, kernel_size, padding="same", activation="relu", **common),
            keras.layers.Flatten(**common),
            keras.layers.Dense(units, activation="relu", dtype=dtype),
        ],
        name=name,
    )
