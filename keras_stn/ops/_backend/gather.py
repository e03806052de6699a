"""Each backend's gather of pixels, image by image."""

import math

import keras
from keras import ops


def gather_pixels(pixels, rows):
    """`pixels[b, rows[b]]`: `(B, V, C)` pixels (each image's flattened), int32 `rows` `(B, *out)`
    of in-range image-local indices; returns `(B, *out, C)`.

    Each image gathers from its own pixels only, so that with the batch sharded over devices
    every device gathers locally (one global `(B*V, C)` table with global indices made XLA's
    partitioner all-gather the whole batch and all-reduce its gradient), and no index grows with
    the batch. Under JAX the gather is vmapped per image, in `take`'s "clip" mode: the rows are
    in range already, which the default "fill" mode would check again (measured:
    docs/performance.md, "Implementation choices").
    """
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return jax.vmap(lambda p, r: jnp.take(p, r, axis=0, mode="clip"))(pixels, rows)
    if backend == "tensorflow":
        import tensorflow as tf

        # Per image, as fast as from the flattened batch (docs/performance.md, "Implementation
        # choices"); `keras.ops.take_along_axis` would broadcast the indices over the channels here.
        return tf.gather(pixels, rows, axis=1, batch_dims=1)
    batch, *out = ops.shape(rows)
    flat = ops.reshape(rows, (batch, math.prod(out), 1))
    return ops.reshape(ops.take_along_axis(pixels, flat, axis=1), (batch, *out, ops.shape(pixels)[-1]))
