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
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"`units` must be a positive integer. Got units={units!r}")
    shape = tuple(input_shape)[-3:]
    spatial = shape[:2] if data_format == "channels_last" else shape[1:]
    if None in spatial:
        raise ValueError(
            "The default localization network needs a static height and width (it ends in a "
            "dense layer); pass `localization=` a network that handles variable sizes, e.g. one "
            f"ending in GlobalAveragePooling2D. Got input shape {tuple(input_shape)}"
        )
    common = dict(data_format=data_format, dtype=dtype)
    return keras.Sequential(
        [
            keras.layers.MaxPooling2D(2, padding="same", **common),
            keras.layers.Conv2D(20, 5, padding="same", activation="relu", **common),
            keras.layers.MaxPooling2D(2, padding="same", **common),
            keras.layers.Conv2D(20, 5, padding="same", activation="relu", **common),
            keras.layers.Flatten(**common),
            keras.layers.Dense(units, activation="relu", dtype=dtype),
        ],
        name=name,
    )
