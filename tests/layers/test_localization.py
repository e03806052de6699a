"""Localization nets (`keras_stn/layers/localization.py`): custom nets (Sequential and
functional, trained through the layer), the nets that are rejected, and the default net, the
paper's up to a working size (64 pixels for images, 32 voxels for volumes) and pooled down to it
beyond."""

import keras
import numpy as np
import pytest

import keras_stn
from helpers import (
    BATCH,
    LAYER_OUT,
    LAYER_SHAPES,
    PAPER_NET,
    classifier,
    compile_sgd,
    fit_one_step,
    functional_localization,
    layer_images,
    layer_types,
    per_rank,
    sequential_localization,
    spatial_transformer,
    to_numpy,
)

# The images' tests share one shape; the volumes' the other LAYER_SHAPES.
SHAPE, OUT = LAYER_SHAPES[2], LAYER_OUT[2]


# --------------------------------------------------------------------------------------------
# Custom nets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_custom_localization(kind, rng):
    x = layer_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    model = classifier(localization=localization, transform="similarity")
    layer = model.get_layer("st")
    assert layer.localization is localization
    np.testing.assert_array_equal(to_numpy(keras.Model(model.input, layer.output)(x)), x)
    assert tuple(layer.head.kernel.shape) == (8, 4)
    compile_sgd(model)
    weights0 = [to_numpy(w).copy() for w in localization.trainable_weights]
    fit_one_step(model, x, y)
    fit_one_step(model, x, y)
    assert all(np.abs(to_numpy(w) - w0).max() > 0 for w, w0 in zip(localization.trainable_weights, weights0))


@pytest.mark.parametrize(
    "localization",
    [
        lambda: keras.layers.Conv2D(2, 3),
        lambda: keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.MaxPooling2D()]),
        lambda: keras.layers.Permute((3, 1, 2)),
    ],
    ids=["conv", "sequential", "permute"],
)
def test_localization_with_rank_4_features_raises_at_build(localization):
    layer = keras_stn.SpatialTransformer(localization=localization())
    with pytest.raises(ValueError) as info:
        layer.build((None, *SHAPE))
    message = str(info.value)
    assert "`localization`" in message and "Got" in message, message
    # Called on data the error is the same.
    with pytest.raises(ValueError, match="`localization`"):
        keras_stn.SpatialTransformer(localization=localization())(np.zeros((BATCH, *SHAPE), "float32"))


@pytest.mark.parametrize("localization", [lambda x: x, "default", np.zeros(3), keras.layers.Dense])
def test_non_layer_localization_raises_type_error(localization):
    with pytest.raises(TypeError) as info:
        keras_stn.SpatialTransformer(localization=localization)
    message = str(info.value)
    assert "`localization`" in message and "Got" in message, message


def test_localization_with_dynamic_spatial_size_needs_a_custom_net(rng):
    with pytest.raises(ValueError, match="Got input shape"):
        keras_stn.SpatialTransformer()(keras.Input((None, None, 2)))
    localization = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, keras_stn.SpatialTransformer(localization=localization)(inputs))
    for shape in [SHAPE, (*OUT, 2)]:
        images = layer_images(rng, shape=shape)
        np.testing.assert_array_equal(to_numpy(model(images)), images)


# --------------------------------------------------------------------------------------------
# The default net
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", [50, 20])
def test_default_localization_units(units, rng):
    kwargs = {} if units == 50 else {"units": units}
    localization = keras_stn.layers.default_localization(SHAPE, **kwargs)
    assert tuple(localization(layer_images(rng)).shape) == (BATCH, units)


@pytest.mark.parametrize("units", [0, -3, 2.5, True, "20"])
def test_default_localization_rejects_bad_units(units):
    with pytest.raises(ValueError, match=rf"`units` must be a positive integer. Got units={units!r}"):
        keras_stn.layers.default_localization(SHAPE, units=units)


# The paper's net's parameter count with the head (6 affine, 12 3-D affine parameters) by
# input shape, as before its size was bounded.
PAPER_NET_PARAMS = {
    2: {(28, 28, 1): 59896, (40, 40, 1): 110896, (60, 60, 1): 235896, (64, 64, 3): 267896},
    3: {(32, 32, 32, 1): 524042, (16, 32, 32, 1): 268042, (*LAYER_SHAPES[3][:-1], 2): 16582},
}


def built(shape, **kwargs):
    """The spatial transformer of the shape's rank, built for inputs of `shape` (without the batch)."""
    layer = spatial_transformer(len(shape) - 1)(**kwargs)
    layer.build((None, *shape))
    return layer


def sublayer_configs(layer):
    """The localization net's layer configs, without the (unique, hence differing) names."""
    return [{k: c for k, c in sub.get_config().items() if k != "name"} for sub in layer.localization.layers]


@per_rank("shape", lambda rank: list(PAPER_NET_PARAMS[rank]))
def test_default_localization_is_the_papers_net_up_to_the_working_size(rank, shape):
    layer = built(shape)
    assert layer_types(layer) == PAPER_NET[rank]
    assert layer.count_params() == PAPER_NET_PARAMS[rank][shape]
    unbounded = built(shape, localization_max_size=None)
    assert unbounded.count_params() == layer.count_params()
    assert sublayer_configs(unbounded) == sublayer_configs(layer)


# Per rank: the working size, the most parameters of the bounded net for inputs of some number of
# channels, a round bound above that, and how many times larger the unbounded net is at least.
BOUNDS = {
    2: (64, lambda channels: PAPER_NET_PARAMS[2][(64, 64, 3)], 300_000, 3),
    3: (32, lambda channels: 524042 + 540 * (channels - 1), 600_000, 2),
}
LARGE_INPUTS = {
    2: [(512, 512, 3), (1024, 1024, 1), (65, 2000, 1), (224, 224, 3)],
    3: [(64, 64, 64, 1), (128, 128, 128, 1), (33, 200, 32, 2)],
}


@per_rank("shape", lambda rank: LARGE_INPUTS[rank])
def test_default_localization_size_is_bounded_for_large_inputs(rank, shape):
    working_size, most_params, bound, ratio = BOUNDS[rank]
    layer = built(shape)
    assert layer_types(layer) == [PAPER_NET[rank][0], *PAPER_NET[rank]]
    working = tuple(layer.localization.layers[0].compute_output_shape((None, *shape)))
    assert max(working[1 : rank + 1]) <= working_size and working[rank + 1] == shape[-1]
    # At most as many features reach the dense layer as for an input of the working size.
    assert layer.count_params() <= most_params(shape[-1]) < bound
    assert built(shape, localization_max_size=None).count_params() > ratio * layer.count_params()


def test_localization_max_size_sets_the_working_size(rng):
    layer = built((40, 40, 1), localization_max_size=20)
    assert layer_types(layer) == ["MaxPooling2D", *PAPER_NET[2]]
    assert layer.count_params() == built((20, 20, 1)).count_params()
    assert built((40, 40, 1), localization_max_size=40).count_params() == PAPER_NET_PARAMS[2][(40, 40, 1)]
    custom = keras_stn.SpatialTransformer(localization=keras.layers.Flatten(), localization_max_size=8)
    assert tuple(custom(layer_images(rng)).shape) == (BATCH, *SHAPE)  # a custom net is used as given


def test_large_input_is_the_identity_at_initialisation(rng):
    images = rng.random((1, 512, 512, 3)).astype("float32")
    np.testing.assert_array_equal(to_numpy(keras_stn.SpatialTransformer()(images)), images)


def test_default_localization_3d_needs_static_sizes():
    with pytest.raises(ValueError, match=r"static depth, height and width.*GlobalAveragePooling3D.*Got input shape"):
        keras_stn.layers.default_localization_3d((None, 5, 6, 2))
    net = keras_stn.layers.default_localization_3d(LAYER_SHAPES[3], units=7)
    assert tuple(net.compute_output_shape((None, *LAYER_SHAPES[3]))) == (None, 7)
