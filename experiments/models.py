"""The compared models: one CNN classifier, with or without a spatial transformer in front.

Every arm of a comparison shares the classifier exactly (same layers, same sizes), so the only
difference between "none" and an ST-CNN is the transformer and its small localization net.

Architecture (the paper's distorted-MNIST ST-CNN, Jaderberg et al. 2015, appendix):
- transformer (ST-CNN arms only): `keras_stn.SpatialTransformer` with the paper's localization
  net (input max-pooled 2x, two 5x5 convolutions with 20 filters each after 2x max-pooling,
  a dense layer of 20 units), its head starting at the identity transform; the output keeps the
  input size;
- for the large canvases (`rts` 42x42, `t` and `cluttered` 60x60) a 2x average pooling, as the
  paper does after the transformer: the transformer can zoom in, the classifier sees fewer pixels
  (`downsample="auto"`; `"off"` leaves it out, for every arm alike);
- classifier: conv 9x9 (32 filters) -> max-pool 2 -> conv 7x7 (64 filters) -> max-pool 2 ->
  dense softmax layer (the paper's three weight layers, with the filter counts public
  re-implementations use).
"""

import keras

import keras_stn
from experiments.choices import DOWNSAMPLE, NO_TRANSFORM
from keras_stn.layers import default_localization

TRANSFORMER_NAME = "spatial_transformer"
LOCALIZATION_UNITS = 20
CLASSIFIER_FILTERS = (32, 64)
CLASSIFIER_KERNELS = (9, 7)
DOWNSAMPLE_FROM = 42  # canvases at least this wide are average-pooled 2x before the classifier


def transform_choices():
    """The `--transforms` values: "none" (the CNN baseline) and every transform keras_stn offers."""
    return (NO_TRANSFORM, *keras_stn.transforms.TRANSFORMS)


def build_model(transform, input_shape, num_classes=10, downsample="auto"):
    """Builds the CNN (`transform="none"`) or the ST-CNN with the given transform.

    Args:
        transform: `"none"` or a `keras_stn.transforms` name (`"affine"`, `"attention"`, ...).
        input_shape: `(H, W, C)` of the images (channels last).
        num_classes: number of output classes.
        downsample: `"auto"`: the 2x average pooling before the classifier on canvases at least
            `DOWNSAMPLE_FROM` pixels wide; `"off"`: never (the classifier sees every pixel, at four
            times the convolution cost).

    Returns:
        An uncompiled functional `keras.Model` named after the arm, mapping images to class
        probabilities. ST-CNN models contain a `SpatialTransformer` layer named
        `"spatial_transformer"` (see `transformer_output`).
    """
    if transform not in transform_choices():
        raise ValueError(f"`transform` must be one of {list(transform_choices())}. Got transform={transform!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels). Got input_shape={input_shape}")
    if downsample not in DOWNSAMPLE:
        raise ValueError(f"`downsample` must be one of {list(DOWNSAMPLE)}. Got downsample={downsample!r}")
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    if transform != NO_TRANSFORM:
        localization = default_localization(input_shape, units=LOCALIZATION_UNITS)
        x = keras_stn.SpatialTransformer(transform=transform, localization=localization, name=TRANSFORMER_NAME)(x)
    if downsample == "auto" and min(input_shape[:2]) >= DOWNSAMPLE_FROM:
        x = keras.layers.AveragePooling2D(2, name="downsample")(x)
    for index, (filters, kernel) in enumerate(zip(CLASSIFIER_FILTERS, CLASSIFIER_KERNELS)):
        x = keras.layers.Conv2D(filters, kernel, padding="same", activation="relu", name=f"conv{index + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    name = "cnn" if transform == NO_TRANSFORM else f"st_cnn_{transform}"
    return keras.Model(inputs, outputs, name=name)


def transformer_output(model):
    """A model sharing `model`'s weights that returns what its transformer outputs, or None for a CNN."""
    try:
        layer = model.get_layer(TRANSFORMER_NAME)
    except ValueError:
        return None
    return keras.Model(model.inputs[0], layer.output, name=f"{model.name}_transformer")
