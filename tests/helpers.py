"""Backend-agnostic test helpers: conversion to NumPy and gradients under every backend."""

import keras
import numpy as np

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
