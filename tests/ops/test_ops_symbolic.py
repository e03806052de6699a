"""The public ops on symbolic inputs: each one builds a functional model on `keras.Input` (with
a dynamic batch), which predicts what the eager call returns, reports its output shape and
dtype before it runs, rejects bad inputs at construction with the eager call's message, and
saves and loads; a layer calling the ops inside a functional model with a dynamic batch."""

import keras
import numpy as np
import pytest

import keras_stn
from helpers import DOWN, IN_SIZE, random_grid, random_images, to_numpy
from helpers import random_theta as random_kink_free_theta
from keras_stn.ops import affine_grid, affine_sample, grid_sample, tps_grid

IMAGES = (9, 8, 2)
OUT = (5, 7)


def random_theta(rng, batch, rows=2):
    return (np.eye(rows, rows + 1) + rng.uniform(-0.2, 0.2, (batch, rows, rows + 1))).astype("float32")


def grid_of(theta):
    return to_numpy(affine_grid(theta, OUT))


# name: (inputs' shapes without the batch, the op on those inputs, the inputs for a batch of 3,
# the expected output shape without the batch)
CASES = {
    "affine_grid": ([(2, 3)], lambda t: affine_grid(t, OUT), lambda rng: [random_theta(rng, 3)], (*OUT, 2)),
    "affine_grid_3d": (
        [(12,)],
        lambda t: affine_grid(t, (3, 4, 5)),
        lambda rng: [random_theta(rng, 3, rows=3).reshape(3, 12)],
        (3, 4, 5, 3),
    ),
    "grid_sample": (
        [IMAGES, (*OUT, 2)],
        lambda x, g: grid_sample(x, g, "bicubic", "reflection"),
        lambda rng: [rng.random((3, *IMAGES), dtype="float32"), grid_of(random_theta(rng, 3))],
        (*OUT, 2),
    ),
    "affine_sample": (
        [IMAGES, (6,)],
        lambda x, t: affine_sample(x, t, OUT, padding_mode="border"),
        lambda rng: [rng.random((3, *IMAGES), dtype="float32"), random_theta(rng, 3).reshape(3, 6)],
        (*OUT, 2),
    ),
    "affine_sample_input_size": (
        [IMAGES, (2, 3)],
        lambda x, t: affine_sample(x, t),
        lambda rng: [rng.random((3, *IMAGES), dtype="float32"), random_theta(rng, 3)],
        IMAGES,
    ),
    "affine_sample_channels_first": (
        [(2, 9, 8), (2, 3)],
        lambda x, t: affine_sample(x, t, OUT, data_format="channels_first"),
        lambda rng: [rng.random((3, 2, 9, 8), dtype="float32"), random_theta(rng, 3)],
        (2, *OUT),
    ),
    "affine_sample_volumes": (
        [(4, 5, 6, 1), (3, 4)],
        lambda x, t: affine_sample(x, t, (3, 4, 5)),
        lambda rng: [rng.random((3, 4, 5, 6, 1), dtype="float32"), random_theta(rng, 3, rows=3)],
        (3, 4, 5, 1),
    ),
    "tps_grid": (
        [(18,)],
        lambda o: tps_grid(o, OUT),
        lambda rng: [rng.uniform(-0.1, 0.1, (3, 18)).astype("float32")],
        (*OUT, 2),
    ),
    "spatial_transformer_network": (
        [IMAGES, (6,)],
        lambda x, t: keras_stn.spatial_transformer_network(x, t, OUT),
        lambda rng: [rng.random((3, *IMAGES), dtype="float32"), random_theta(rng, 3).reshape(3, 6)],
        (*OUT, 2),
    ),
}


def functional_model(name):
    shapes, op, _, _ = CASES[name]
    inputs = [keras.Input(shape) for shape in shapes]
    return keras.Model(inputs, op(*inputs))


@pytest.mark.parametrize("name", list(CASES))
def test_a_functional_model_of_the_op_predicts_the_eager_result(name, rng):
    _, op, make_inputs, out_shape = CASES[name]
    model = functional_model(name)
    assert tuple(model.output.shape) == (None, *out_shape)
    assert model.output.dtype == "float32"
    inputs = make_inputs(rng)
    expected = to_numpy(op(*inputs))
    np.testing.assert_allclose(to_numpy(model.predict(inputs, verbose=0)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["grid_sample", "affine_sample", "tps_grid", "spatial_transformer_network"])
def test_a_functional_model_of_the_op_saves_and_loads(name, rng, tmp_path):
    model = functional_model(name)
    inputs = CASES[name][2](rng)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        to_numpy(loaded.predict(inputs, verbose=0)), to_numpy(model.predict(inputs, verbose=0))
    )


def test_symbolic_outputs_keep_the_images_dtype():
    images = keras.Input((9, 8, 2), dtype="float16")
    theta = keras.Input((2, 3), dtype="float32")
    assert affine_sample(images, theta, OUT).dtype == "float16"
    assert grid_sample(images, affine_grid(theta, OUT)).dtype == "float16"
    assert affine_grid(keras.Input((2, 3), dtype="float64"), OUT).dtype == "float64"


def test_a_static_batch_is_kept_and_known_from_either_input():
    images = keras.Input((9, 8, 2), batch_size=4)
    theta = keras.Input((2, 3))
    assert affine_sample(images, theta, OUT).shape == (4, *OUT, 2)
    assert grid_sample(keras.Input((9, 8, 2)), keras.Input((*OUT, 2), batch_size=5)).shape == (5, *OUT, 2)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: grid_sample(keras.Input((9, 8)), keras.Input((5, 7, 2))), ValueError, "`images` must be a rank-4"),
        (lambda: grid_sample(keras.Input(IMAGES), keras.Input((5, 7, 3))), ValueError, "last dimension of 2"),
        (
            lambda: grid_sample(keras.Input(IMAGES, dtype="int32"), keras.Input((5, 7, 2))),
            TypeError,
            "`images` must have a floating dtype",
        ),
        (lambda: affine_sample(keras.Input(IMAGES), keras.Input((7,))), ValueError, "`theta` must have shape"),
        (
            lambda: affine_sample(keras.Input(IMAGES, batch_size=2), keras.Input((6,), batch_size=3)),
            ValueError,
            "same batch size",
        ),
        (lambda: affine_grid(keras.Input((2, 3)), (5, 0)), ValueError, "`size` must be a pair"),
        (lambda: affine_sample(keras.Input(IMAGES), keras.Input((3, 4))), ValueError, "a 2-D warp"),
        (lambda: tps_grid(keras.Input((17,)), OUT), ValueError, "`offsets` must have shape"),
        (lambda: tps_grid(keras.Input((18,)), OUT, grid_size=1), ValueError, "`grid_size`"),
        (lambda: tps_grid(keras.Input((18,)), OUT, align_corners=1), TypeError, "`align_corners` must be a bool"),
        (
            lambda: keras_stn.spatial_transformer_network(keras.Input((9, 8)), keras.Input((6,))),
            ValueError,
            "`input_fmap` must be a rank-4",
        ),
    ],
)
def test_bad_symbolic_inputs_raise_the_eager_message_at_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


# --------------------------------------------------------------------------------------------
# A layer calling the ops
# --------------------------------------------------------------------------------------------


class AffineWarp(keras.layers.Layer):
    """Test-only layer: warps images by a theta input and samples them at a grid input."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, images, theta, grid):
        warped = affine_sample(images, theta, self.size, "bilinear", "border", False)
        sampled = grid_sample(images, grid, "nearest", "zeros", True)
        return warped, sampled


def test_functional_model_with_dynamic_batch(rng):
    images_in = keras.Input((*IN_SIZE, 2))
    theta_in = keras.Input((6,))
    grid_in = keras.Input((*DOWN, 2))
    warped, sampled = AffineWarp((4, 5))(images_in, theta_in, grid_in)
    assert tuple(warped.shape) == (None, 4, 5, 2)
    assert tuple(sampled.shape) == (None, *DOWN, 2)
    model = keras.Model([images_in, theta_in, grid_in], [warped, sampled])
    for batch in (1, 3):
        images = random_images(rng, (batch, *IN_SIZE, 2))
        grid = random_grid(rng, batch, DOWN, IN_SIZE, False, margin=0.01)
        theta = random_kink_free_theta(rng, batch, IN_SIZE, IN_SIZE, True, margin=1e-3).reshape(batch, 6)
        got = model.predict([images, theta, grid], batch_size=batch, verbose=0)
        expected = (
            affine_sample(images, theta, (4, 5), "bilinear", "border", False),
            grid_sample(images, grid, "nearest", "zeros", True),
        )
        assert got[0].shape == (batch, 4, 5, 2)
        assert len(got) == len(expected)
        for result, want in zip(got, expected):
            np.testing.assert_allclose(to_numpy(result), to_numpy(want), rtol=1e-5, atol=1e-5)
