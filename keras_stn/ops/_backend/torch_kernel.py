"""PyTorch's own `grid_sample` kernel, used for sampling on the torch backend.

The portable sampler in `sampling.py` is written in `keras.ops` and computes the same numbers
as `torch.nn.functional.grid_sample`. Under the torch backend it runs eagerly, one small
kernel per operation, which makes it several times slower than PyTorch's fused kernel (see
`benchmarks/`). On that backend `grid_sample` and `affine_sample` therefore call the native
kernel instead, wrapped so that the library's documented rules still hold:

- non-finite grid coordinates read nothing (output 0, gradient 0) in every padding mode,
  where PyTorch would clamp `inf` under border padding or return NaN for bicubic;
- finite coordinates are bounded to `+-COORDINATE_BOUND` first, as in the portable path
  (`affine_sample` bounds theta instead, which bounds its coordinates to 3 times that);
- half-precision images are sampled in float32 and returned in their own dtype;
- channels-last tensors are passed as permuted views, without a copy.

These rules are tensor operations, the same on every call: nothing is read back from the
device and no Python branch depends on values, so `torch.compile(fullgraph=True)` traces the
sampler without a graph break and a CUDA forward never waits for the device. The one exception
is eager CPU tensors, where reading a value back costs no device sync: there `affine_sample`
skips its exact-identity pass over the output when no theta of the batch is the identity.

This is the one dispatch point: set the environment variable `KERAS_STN_NATIVE=0` to use the
portable sampler on the torch backend too (it is read at each call; `switched(False)` does the
same for a block of code in one thread). The two agree to float rounding
(`tests/ops/test_ops_native_kernel.py`). An exact identity theta returns the images bit for
bit on both; other warps that the portable sampler computes exactly (quarter turns, whole-pixel
crops) are exact to rounding, about 1e-7 of the values, on the native one.
"""

import contextlib
import os
import threading

import keras

from keras_stn._layout import channels_first_axes, channels_last_axes, spatial_shape_of
from keras_stn.ops.grid import COORDINATE_BOUND, affine_grid_unchecked

ENVIRONMENT_VARIABLE = "KERAS_STN_NATIVE"
OFF = ("0", "false", "no", "off")


# `switched` overrides the environment variable in the thread that entered it, and no other.
# A thread-local rather than a `contextvars.ContextVar`: torch.compile traces (and guards on)
# an attribute read of it, but graph-breaks on `ContextVar.get`.
_switch = threading.local()


def enabled(images):
    """Whether `images` are sampled with PyTorch's kernel: on the torch backend unless switched
    off (`switched`, else `KERAS_STN_NATIVE`), for a non-empty batch (PyTorch's `affine_grid`
    rejects an empty one)."""
    if keras.config.backend() != "torch" or images.shape[0] == 0:
        return False
    forced = getattr(_switch, "on", None)
    if forced is not None:
        return forced
    return os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() not in OFF


@contextlib.contextmanager
def switched(on):
    """Within the block, sample with PyTorch's kernel on the torch backend (`on=True`) or with the
    portable sampler (`on=False`), whatever `KERAS_STN_NATIVE` says, in this thread only; the
    process' environment is left alone. Blocks nest."""
    before = getattr(_switch, "on", None)
    _switch.on = bool(on)
    try:
        yield
    finally:
        _switch.on = before


def to_channels_first(images, data_format):
    """A channels-first view of `images` (no copy) for PyTorch's kernel."""
    if data_format == "channels_first":
        return images
    return images.permute(channels_first_axes(images.dim()))


def from_channels_first(output, data_format):
    if data_format == "channels_first":
        return output
    return output.permute(channels_last_axes(output.dim()))


def sample(images, grid, options, work):
    """`torch.nn.functional.grid_sample` on validated torch tensors, under the library's rules,
    with the validated `options` (a `SamplingOptions`).

    `work` is the dtype coordinates and weights are computed in (see `sampling.working_dtype`);
    images and grid are cast to it and the result back to the images' dtype. The rules are
    tensor operations on every call, with no branch on values: a graph without breaks for
    `torch.compile` and no device sync on CUDA.
    """
    bound = COORDINATE_BOUND
    dtype = getattr(torch, work)
    grid = grid.to(dtype)
    source = to_channels_first(images, options.data_format).to(dtype)
    kernel = dict(mode=options.interpolation, padding_mode=options.padding_mode, align_corners=options.align_corners)
    if options.padding_mode == "zeros":
        # Far outside, zero padding reads 0 with zero gradient: there non-finite coordinates
        # can simply be moved (`nan_to_num` passes no gradient to them) and nothing is masked.
        safe = torch.nan_to_num(grid, nan=bound, posinf=bound, neginf=-bound).clamp(-bound, bound)
        output = F.grid_sample(source, safe, **kernel)
    else:
        # Border and reflection padding read the image from anywhere, so the points with a
        # non-finite coordinate are zeroed after sampling (at a finite stand-in position).
        finite = torch.isfinite(grid).all(dim=-1)
        safe = torch.where(finite.unsqueeze(-1), grid.clamp(-bound, bound), 0.0)
        output = F.grid_sample(source, safe, **kernel)
        output = torch.where(finite.unsqueeze(1), output, 0.0)
    return from_channels_first(output, options.data_format).to(images.dtype)


def affine_sample(images, theta, size, options, work):
    """`grid_sample(images, affine_grid(theta, size))` with PyTorch's own kernels; `size` is
    the output's spatial size (`None`: the input's), `theta` a validated `(B, n, n + 1)` tensor
    whose finite entries are bounded (`sampling.bound_finite`).

    The library's rules hold per image here, which spares the passes over the grid that
    `sample` makes: a grid coordinate is `theta`'s row times `(x, y, 1)` with `|x|, |y| <= 1`,
    so it is finite for every pixel when the row is finite (and at most 3 * 2**100, which the
    kernel scales to pixels without overflow in float32) and non-finite for every pixel when
    it is not (`inf * 0` is NaN). An image with a non-finite theta therefore reads nothing:
    its theta is swapped for a translation far outside the image, which reads 0 with zero
    gradients under zero padding, and under border or reflection padding its output is zeroed.
    """
    align_corners, data_format = options.align_corners, options.data_format
    dtype = getattr(torch, work)
    theta = theta.to(dtype)
    in_size = spatial_shape_of(images.shape, data_format)
    size = in_size if size is None else tuple(size)
    batch, rows = theta.shape[0], theta.shape[1]
    finite = torch.isfinite(theta.detach()).flatten(1).all(dim=1).view(-1, 1, 1)
    far = torch.zeros(rows, rows + 1, dtype=dtype, device=theta.device)
    far[:, -1] = COORDINATE_BOUND
    theta = torch.where(finite, theta, far)
    if torch.compiler.is_compiling() or (align_corners and min(size) == 1):
        # grid.py's own grid (the same points, to rounding) where PyTorch's affine_grid fails or
        # warns. Compiled, its backward fails once a size is symbolic ("SymIntArrayRef expected
        # to contain only concrete integers"), as torch.compile makes the batch size as soon as
        # it changes between calls. With corners aligned, it warns on every call that its
        # unit-size grids changed in its 1.3; they read the centre (normalised 0), this
        # library's convention.
        grid = affine_grid_unchecked(theta, size, align_corners)
    else:
        # The grid does not depend on the channels; affine_grid rejects a size with none.
        grid = F.affine_grid(theta, [batch, 1, *size], align_corners=align_corners)
    source = to_channels_first(images, data_format).to(dtype)
    output = F.grid_sample(
        source, grid, mode=options.interpolation, padding_mode=options.padding_mode, align_corners=align_corners
    )
    if options.padding_mode != "zeros":
        output = torch.where(finite.view(-1, *([1] * (output.dim() - 1))), output, 0.0)
    if size == in_size:
        # PyTorch's kernel reads an identity warp's pixels at coordinates a rounding away from
        # whole pixels. Where theta is exactly the identity the images are returned bit for bit,
        # as on the portable path, with the kernel's gradients (the identity's, to rounding). In
        # the kernel's layout, where the output is contiguous: about twice as fast as in the
        # permuted channels-last view for many channels.
        identity = torch.eye(rows, rows + 1, dtype=dtype, device=theta.device)
        exact = (theta.detach() == identity).flatten(1).all(dim=1).view(-1, *([1] * (images.dim() - 1)))
        if not skips_exact_pass(exact):
            output = ExactWhere.apply(exact, source.detach(), output)
    return from_channels_first(output, data_format).to(images.dtype)


def skips_exact_pass(exact):
    """Whether the exact-identity pass can be left out: only for eager CPU tensors (where
    `bool` reads no device and breaks no graph) none of which is exactly the identity. The pass
    reads the images and the output once more (what that costs: docs/performance.md); compiled
    or on an accelerator it always runs."""
    if exact.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not bool(exact.any())


if keras.config.backend() == "torch":
    import torch
    import torch.nn.functional as F

    class ExactWhere(torch.autograd.Function):
        """`where(exact, images, output)` in value and the gradient of `output` everywhere: an
        identity warp returns its pixels bit for bit, with the kernel's gradients, in one pass over
        the output and none in the backward pass."""

        @staticmethod
        def forward(exact, images, output):
            return torch.where(exact, images, output)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            return None, None, grad
