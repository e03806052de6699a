"""Measures how closely keras_stn matches PyTorch, per mode, under the current KERAS_BACKEND.

    KERAS_BACKEND=jax python -m benchmarks.parity [--dtype float32] [--seed 0]

For every interpolation x padding x align_corners combination it samples random images with
random affine grids that reach outside the image (output larger than the input), and prints
the largest error, relative to max(1, largest reference value), of the output and of the
gradients with respect to the images and theta, against `torch.nn.functional.affine_grid` +
`grid_sample`. Values are in [0, 1]; gradients are of `sum(output * weights)` for random
weights. Output and image gradients are compared on torch's own grid: the two affine_grids
differ by an ulp, which can flip `nearest` at exact half-pixel ties and would hide the
sampler's agreement; the theta gradient goes through each library's own affine_grid.
"""

import argparse
import itertools

import keras
import numpy as np
import torch
import torch.nn.functional as F

from keras_stn import ops as stn_ops


def keras_outputs(images, theta, grid, weights, size, mode, padding, align_corners):
    """Output on `grid`, its gradient w.r.t. the images, and the gradient w.r.t. theta of the
    same loss through keras_stn's own affine_grid, under the current backend."""
    backend = keras.config.backend()
    weights = keras.ops.convert_to_tensor(weights)

    def loss(x, t):
        out = stn_ops.grid_sample(x, grid, mode, padding, align_corners)
        warped = stn_ops.grid_sample(images, stn_ops.affine_grid(t, size, align_corners), mode, padding, align_corners)
        return keras.ops.sum(out * weights) + keras.ops.sum(warped * weights), out

    if backend == "jax":
        import jax

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(images, theta)
    elif backend == "tensorflow":
        import tensorflow as tf

        x, t = tf.Variable(images), tf.Variable(theta)
        with tf.GradientTape() as tape:
            value, out = loss(x, t)
        grads = tape.gradient(value, [x, t])
    else:
        x = torch.tensor(images, requires_grad=True)
        t = torch.tensor(theta, requires_grad=True)
        value, out = loss(x, t)
        grads = torch.autograd.grad(value, [x, t], allow_unused=True)
    grads = [np.zeros_like(a) if g is None else keras.ops.convert_to_numpy(g) for a, g in zip((images, theta), grads)]
    return [keras.ops.convert_to_numpy(out), *grads]


def torch_outputs(images, theta, weights, size, mode, padding, align_corners):
    """The same three quantities from PyTorch; also returns its grid."""
    x = torch.tensor(images).permute(0, 3, 1, 2).requires_grad_(True)
    t = torch.tensor(theta, requires_grad=True)
    grid = F.affine_grid(t, (x.shape[0], x.shape[1], *size), align_corners=align_corners)
    out = F.grid_sample(x, grid, mode, padding, align_corners).permute(0, 2, 3, 1)
    gx, gt = torch.autograd.grad((out * torch.tensor(weights)).sum(), [x, t], allow_unused=True)
    gt = torch.zeros_like(t) if gt is None else gt
    return [a.detach().numpy() for a in (out, gx.permute(0, 2, 3, 1), gt)], grid.detach().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args()
    if args.dtype == "float64" and keras.config.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(args.seed)
    batch, height, width, channels, size = 4, 20, 24, 3, (27, 31)
    images = rng.random((batch, height, width, channels)).astype(args.dtype)
    theta = (np.array([[1, 0, 0], [0, 1, 0]]) * 1.2 + rng.normal(scale=0.3, size=(batch, 2, 3))).astype(args.dtype)
    weights = rng.normal(size=(batch, *size, channels)).astype(args.dtype)
    print(f"backend={keras.config.backend()} dtype={args.dtype} keras={keras.__version__} torch={torch.__version__}")
    print(f"{'interpolation':<14}{'padding':<12}{'align':<7}{'output':>10}{'d images':>10}{'d theta':>10}")
    for mode, padding, align in itertools.product(
        ("bilinear", "nearest", "bicubic"), ("zeros", "border", "reflection"), (False, True)
    ):
        theirs, grid = torch_outputs(images, theta, weights, size, mode, padding, align)
        ours = keras_outputs(images, theta, grid, weights, size, mode, padding, align)
        errors = [np.abs(a - b).max() / max(1.0, np.abs(b).max()) for a, b in zip(ours, theirs)]
        print(f"{mode:<14}{padding:<12}{str(align):<7}" + "".join(f"{e:>10.1e}" for e in errors))


if __name__ == "__main__":
    main()
