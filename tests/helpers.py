"""Backend-agnostic test helpers: conversion to NumPy, gradients under every backend, and the
pixel-coordinate arithmetic that test data is built with."""

import keras
import numpy as np

from reference import affine_grid_ref

BACKEND = keras.config.backend()


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
    """Smallest distance, in pixels, of any grid coordinate to an integer or half-integer."""
    distances = []
    for axis, size in ((0, in_size[1]), (1, in_size[0])):
        if align_corners and size == 1:
            continue
        pixel = to_pixels(grid[..., axis], size, align_corners)
        distances.append(np.abs(pixel * 2 - np.round(pixel * 2)).min() / 2)
    return min(distances) if distances else np.inf


def random_theta(rng, batch, in_size, out_size, align_corners, margin=1e-4, dtype="float32", scale=0.3):
    """Random `(batch, 2, 3)` thetas near the identity (rotation, shear, zoom, shift) whose grid
    of `out_size` stays `margin` pixels away from kinks of an input of `in_size`."""
    for _ in range(1000):
        theta = (np.eye(2, 3) + rng.uniform(-scale, scale, (batch, 2, 3))).astype(dtype)
        grid = affine_grid_ref(theta.astype(np.float64), out_size, align_corners)
        if kink_distance(grid, in_size, align_corners) >= margin:
            return theta
    raise AssertionError("could not draw a theta away from pixel kinks")
