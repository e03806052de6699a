"""The fusion barrier for XLA (JAX and TensorFlow's `jit_compile`)."""

import keras
from keras import ops


def computed_once(x, backends=("jax", "tensorflow")):
    """`x` itself, made to be computed once where XLA compiles it (under `backends`).

    XLA fuses cheap elementwise producers into each of their consumers. The sampler has many
    consumers of the same coordinates (every tap's gather, every scatter of the backward
    pass), so each recomputes them, and the per-image affine coefficients, for every output
    pixel (what that costs: docs/performance.md, "Implementation choices"). XLA does not fuse a reduction into its
    consumers, so a sum with zeros (exact: `x + 0 == x`, up to the sign of a zero) is computed
    once and read by all of them. Elsewhere (eager torch) `x` is returned as it is.
    """
    if keras.config.backend() not in backends:
        return x
    return ops.sum(ops.stack([x, ops.zeros_like(x)]), axis=0)
