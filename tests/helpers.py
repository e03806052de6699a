"""Backend-agnostic test helpers: conversion to NumPy, gradients under every backend, the
pixel-coordinate arithmetic that test data is built with, and the shapes, parametrisations and
random data that the ops tests share, for images (spatial rank 2) and volumes (rank 3)."""

import keras
import numpy as np
import pytest

from reference import affine_grid_ref

BACKEND = keras.config.backend()
# The CPU devices conftest.py simulates (before the framework starts), which
# tests/test_multi_device.py trains on.
SIMULATED_CPU_DEVICES = 2


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def value_and_grad(fn, *args):
    """`fn(*args)` (a scalar) and its gradients with respect to every argument, as NumPy.

    `args` are NumPy arrays; they are converted to tensors of the same dtype first.
    """
    if BACKEND == "jax":
        import jax

        tensors = [keras.ops.convert_to_tensor(a) for a in args]
        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*tensors)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
    elif BACKEND == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        value = fn(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
    else:
        raise RuntimeError(f"unsupported backend {BACKEND}")
    grads = [np.zeros_like(a) if g is None else to_numpy(g) for a, g in zip(args, grads)]
    return to_numpy(value), grads


def to_pixels(coord, size, align_corners):
    """Normalised coordinate -> pixel coordinate (0 = centre of the first pixel), float64."""
    coord = np.asarray(coord, np.float64)
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def to_normalized(pixel, size, align_corners):
    if align_corners:
        return 2 * pixel / (size - 1) - 1
    return (2 * pixel + 1) / size - 1


def away_from_kinks(pixel, margin):
    """Maps the fractional part of `pixel` into [m, 0.5 - m] U [0.5 + m, 1 - m]."""
    whole = np.floor(pixel)
    frac = pixel - whole
    squeeze = (0.5 - 2 * margin) / 0.5
    frac = np.where(frac < 0.5, margin + frac * squeeze, 0.5 + margin + (frac - 0.5) * squeeze)
    return whole + frac


def loss_weights(rng, shape, dtype="float64"):
    """Random cotangent, so that gradients are not mere sums."""
    return rng.normal(size=shape).astype(dtype)


def kink_distance(grid, in_size, align_corners):
    """Smallest distance, in pixels, of any grid coordinate to an integer or half-integer.

    `grid` is `(..., rank)` with `(x, y[, z])` last, `in_size` `(H, W)` or `(D, H, W)`."""
    distances = []
    for axis, size in enumerate(reversed(in_size)):  # x along W, y along H, z along D
        if align_corners and size == 1:
            continue
        pixel = to_pixels(grid[..., axis], size, align_corners)
        distances.append(np.abs(pixel * 2 - np.round(pixel * 2)).min() / 2)
    return min(distances) if distances else np.inf


def random_theta(rng, batch, in_size, out_size, align_corners, margin=1e-4, dtype="float32", scale=0.3):
    """Random thetas near the identity (rotation, shear, zoom, shift) whose grid of `out_size`
    stays `margin` pixels away from kinks of an input of `in_size`: `(batch, 2, 3)` for images
    (`in_size` `(H, W)`), `(batch, 3, 4)` for volumes (`(D, H, W)`)."""
    rank = len(in_size)
    for _ in range(1000):
        theta = (np.eye(rank, rank + 1) + rng.uniform(-scale, scale, (batch, rank, rank + 1))).astype(dtype)
        grid = affine_grid_ref(theta.astype(np.float64), out_size, align_corners)
        if kink_distance(grid, in_size, align_corners) >= margin:
            return theta
    raise AssertionError("could not draw a theta away from pixel kinks")


# --------------------------------------------------------------------------------------------
# What the ops tests share: spatial ranks, modes, shapes and random data
# --------------------------------------------------------------------------------------------

SPATIAL_RANKS = (2, 3)  # images (B, H, W, C) and volumes (B, D, H, W, C)
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")


def interpolations(rank):
    """The interpolation modes of a spatial rank: bicubic is 2-D only."""
    return INTERPOLATIONS if rank == 2 else INTERPOLATIONS[:2]


all_modes = pytest.mark.parametrize("interpolation", INTERPOLATIONS)
all_paddings = pytest.mark.parametrize("padding_mode", PADDING_MODES)
both_aligns = pytest.mark.parametrize("align_corners", (False, True), ids=["edges", "corners"])
both_ranks = pytest.mark.parametrize("rank", SPATIAL_RANKS, ids=[f"{rank}d" for rank in SPATIAL_RANKS])


def per_rank(names, cases, ranks=SPATIAL_RANKS, ids=None):
    """`pytest.mark.parametrize` over `("rank", *names)`: for each spatial rank, the cases that
    `cases(rank)` lists (a value, or a tuple of one value per name). The ids read `2d-...`,
    followed by the case's values or by `ids(*case)`."""
    names = [names] if isinstance(names, str) else list(names)
    params = []
    for rank in ranks:
        for case in cases(rank):
            case = case if isinstance(case, tuple) and len(names) > 1 else (case,)
            label = [ids(*case)] if ids else [str(value) for value in case]
            params.append(pytest.param(rank, *case, id="-".join([f"{rank}d", *label])))
    return pytest.mark.parametrize(["rank", *names], params)


# Every mode of each rank: bicubic for images only.
all_ranks_and_modes = per_rank("interpolation", interpolations)

# Most tests share one input shape per rank and few output sizes: under JAX every new shape
# compiles every primitive again, which would dominate the run time.
IN_SIZES = {
    2: (8, 12),  # H != W, both divisible by 4 (see the centre-crop test)
    3: (4, 5, 6),  # (D, H, W), all different so that an axis mix-up shows
}
# Output sizes: down- and up-sampling for images, a smaller volume.
OUT_SIZES = {2: {"down": (4, 6), "up": (11, 13)}, 3: {"down": (3, 4, 5)}}
IN_SIZE = IN_SIZES[2]
IMAGE_SHAPE = (2, *IN_SIZE, 2)
DOWN, UP = OUT_SIZES[2]["down"], OUT_SIZES[2]["up"]


def input_shape(rank, batch=2, channels=2):
    """The shared `(batch, *IN_SIZES[rank], channels)` input shape of a rank."""
    return (batch, *IN_SIZES[rank], channels)


def down(rank):
    """The shared smaller output size of a rank."""
    return OUT_SIZES[rank]["down"]


def random_images(rng, shape, dtype="float32"):
    """Images or volumes (any shape) uniform in [0, 1]."""
    return rng.uniform(0, 1, shape).astype(dtype)


def random_grid(rng, batch, out_size, in_size, align_corners, low=-1.5, high=1.5, margin=1e-3, dtype="float32"):
    """A `(batch, *out_size, rank)` grid, uniform in [low, high], away from pixel kinks of an
    input of `in_size` (`(H, W)` or `(D, H, W)`)."""
    grid = rng.uniform(low, high, (batch, *out_size, len(in_size)))
    for axis, size in enumerate(reversed(in_size)):  # x along W, y along H, z along D
        if align_corners and size == 1:
            continue  # every coordinate reads the single pixel
        pixel = away_from_kinks(to_pixels(grid[..., axis], size, align_corners), margin)
        grid[..., axis] = to_normalized(pixel, size, align_corners)
    return grid.astype(dtype)


def identity_theta(batch, rank=2, dtype="float32"):
    return np.tile(np.eye(rank, rank + 1, dtype=dtype), (batch, 1, 1))


# Spans that are powers of two keep every centre/edge coordinate exact in float32.
EXACT_SIZES = {False: (4, 8), True: (5, 9)}


def exact_positions_grid(in_size, align_corners):
    """Grid through every pixel centre, every pixel edge, the corners and one pixel outside.

    Sizes are chosen by the callers (`EXACT_SIZES`) so that all these coordinates, and the
    arithmetic that unnormalises them, are exact in float32 (the spans are powers of two).
    """

    def axis(size):
        span = size - 1 if align_corners else size
        pixel = np.arange(-2, 2 * span + 3) / 2  # halves from one pixel before to one after
        if not align_corners:
            pixel = pixel - 0.5  # edges at -0.5, ..., size - 0.5; centres at integers
        return to_normalized(pixel, size, align_corners)

    xs, ys = axis(in_size[1]), axis(in_size[0])
    x, y = np.meshgrid(xs, ys)
    return np.stack([x, y], axis=-1)[None].astype("float32")


def channels_first(x):
    """Channels-last NumPy images or volumes, channels-first."""
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def channels_last(x):
    """Channels-first NumPy images or volumes, channels-last."""
    return np.moveaxis(x, 1, -1)


def sample_np(images, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False, **kwargs):
    """`keras_stn.ops.grid_sample`, as NumPy."""
    from keras_stn.ops import grid_sample

    return to_numpy(grid_sample(images, grid, interpolation, padding_mode, align_corners, **kwargs))


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def transform_warp(
    transform, images, params, size=None, interpolation="bilinear", padding_mode="zeros", align_corners=False
):
    """`transform.warp` of channels-last images with the given sampling options."""
    from keras_stn._checks import sampling_options

    options = sampling_options(interpolation, padding_mode, align_corners, "channels_last")
    return transform.warp(images, params, size, options)


def homography_params(rng, batch=3, perspective=0.3):
    """Random 8-parameter homographies near the identity, visible everywhere on [-1, 1]²
    (|g| + |h| < 1 keeps w = g x + h y + 1 > 0 there)."""
    params = np.tile([1, 0, 0, 0, 1, 0, 0, 0], (batch, 1)) + rng.uniform(-0.3, 0.3, (batch, 8))
    params[:, 6:] = rng.uniform(-perspective, perspective, (batch, 2))
    return params


def homography(params):
    """The (B, 3, 3) matrix of the documented row-major layout with H[2, 2] = 1."""
    params = np.asarray(params)
    return np.concatenate([params, np.ones((len(params), 1))], axis=1).reshape(-1, 3, 3)


def central_differences(fn, params, step=1e-6):
    """The gradient of the scalar `fn` at `params`, entry by entry, from central differences."""
    gradient = np.zeros_like(params)
    for index in np.ndindex(params.shape):
        delta = np.zeros_like(params)
        delta[index] = step
        gradient[index] = (fn(params + delta) - fn(params - delta)) / (2 * step)
    return gradient


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

# One input shape per rank for (almost) every layer test, with no two spatial sizes equal so
# that an axis mix-up shows; JAX compiles each op once per shape in eager mode, so few distinct
# shapes keep the suite fast. Channels-last, without the batch.
LAYER_SHAPES = {2: (16, 12, 2), 3: (4, 5, 6, 2)}
LAYER_OUT = {2: (7, 9), 3: (3, 4, 5)}  # an out_dims per rank
BATCH = 4


def spatial_transformer(rank):
    """The layer class of a spatial rank: `SpatialTransformer` or `SpatialTransformer3D`."""
    import keras_stn

    return {2: keras_stn.SpatialTransformer, 3: keras_stn.SpatialTransformer3D}[rank]


def layer_shape(rank, data_format="channels_last"):
    shape = LAYER_SHAPES[rank]
    return shape if data_format == "channels_last" else (shape[-1], *shape[:-1])


def layer_images(rng, rank=2, data_format="channels_last", batch=BATCH, shape=None):
    """A batch of random float32 images (or volumes) of the rank's `LAYER_SHAPES` (or `shape`,
    channels-last), in `data_format`."""
    images = rng.random((batch, *(shape or LAYER_SHAPES[rank]))).astype("float32")
    return images if data_format == "channels_last" else channels_first(images)


def identity_resampled(images, out_dims):
    """NumPy: the identity warp of channels-last images or volumes to out_dims (align_corners=False)."""
    from reference import grid_sample_ref

    identity = identity_theta(len(images), len(out_dims), "float64")
    return grid_sample_ref(images, affine_grid_ref(identity, out_dims))


def classifier(input_shape=LAYER_SHAPES[2], classes=3, **layer_kwargs):
    """Input -> the spatial transformer of the input's rank (named "st") -> Flatten -> Dense: the
    smallest trainable model."""
    inputs = keras.Input(input_shape)
    warped = spatial_transformer(len(input_shape) - 1)(name="st", **layer_kwargs)(inputs)
    outputs = keras.layers.Dense(classes)(keras.layers.Flatten()(warped))
    return keras.Model(inputs, outputs)


def compile_sgd(model, learning_rate=0.5):
    model.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def fit_one_step(model, x, y):
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)


def sequential_localization(units=8):
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="tanh"),
        ]
    )


def functional_localization(input_shape=LAYER_SHAPES[2], units=8):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(units, activation="tanh")(x), name="functional_loc")


def small_localization_3d(units=8):
    return keras.Sequential(
        [keras.layers.Conv3D(4, 3, strides=2, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(units)]
    )


# The paper's localization net (pool, conv, pool, conv, flatten, dense 50), the default one for
# inputs up to the working size (64 pixels, 32 voxels), as the types of its layers.
PAPER_NET = {
    2: ["MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense"],
    3: ["MaxPooling3D", "Conv3D", "MaxPooling3D", "Conv3D", "Flatten", "Dense"],
}


def layer_types(layer):
    """The types of the layers of `layer`'s localization net."""
    return [type(sub).__name__ for sub in layer.localization.layers]


# Every mode of each rank at each of its output sizes ("down", and for images "up").
ranks_modes_and_shapes = per_rank(
    ("interpolation", "shape"),
    lambda rank: [(mode, shape) for mode in interpolations(rank) for shape in OUT_SIZES[rank]],
)

# The torch backend samples with PyTorch's kernel or the portable sampler; the others have one.
SAMPLERS = ["native", "portable"] if BACKEND == "torch" else ["portable"]
samplers = pytest.mark.parametrize("sampler", SAMPLERS)


def using(sampler):
    """The block samples with `sampler` ("native" or "portable")."""
    from keras_stn.ops._backend import torch_kernel

    return torch_kernel.switched(sampler == "native")


# The built-in 2-D transforms: names, classes and parameter counts.
AFFINE_NAMES = ["affine", "attention", "translation", "similarity"]
TRANSFORM_NAMES = [*AFFINE_NAMES, "projective", "tps"]
NUM_PARAMS = {"affine": 6, "attention": 3, "translation": 2, "similarity": 4, "projective": 8, "tps": 18}


def transform_classes():
    from keras_stn import transforms

    return {
        "affine": transforms.Affine,
        "attention": transforms.Attention,
        "translation": transforms.Translation,
        "similarity": transforms.Similarity,
        "projective": transforms.Projective,
        "tps": transforms.ThinPlateSpline,
    }
