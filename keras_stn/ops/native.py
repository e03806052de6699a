"""PyTorch's own `grid_sample` kernel, used for sampling on the torch backend.

The portable sampler in `sampling.py` is written in `keras.ops` and computes the same numbers
as `torch.nn.functional.grid_sample`. Under the torch backend it runs eagerly, one small
kernel per operation, which makes it several times slower than PyTorch's fused kernel (see
`benchmarks/`). On that backend `grid_sample` and `affine_sample` therefore call the native
kernel instead, wrapped so that the library's documented rules still hold:

- non-finite grid coordinates read nothing (output 0, gradient 0) in every padding mode,
  where PyTorch would clamp `inf` under border padding or return NaN for bicubic;
- finite coordinates are bounded to `+-COORDINATE_BOUND` first, as in the portable path;
- half-precision images are sampled in float32 and returned in their own dtype;
- channels-last tensors are passed as permuted views, without a copy.

Each call reads one number back from the device (the grid's largest magnitude, and for
`affine_sample` whether any theta is exactly the identity) to take the plain kernel call in
the common case; grids with non-finite or huge coordinates take a masked path.

This is the one dispatch point: set the environment variable `KERAS_STN_NATIVE=0` to use the
portable sampler on the torch backend too (it is read at each call; `switched(False)` does the
same for a block of code). The two agree to float rounding (`tests/test_native.py`). An exact
identity theta returns the images bit for bit on both; other warps that the portable sampler
computes exactly (quarter turns, whole-pixel crops) are exact to rounding, about 1e-7 of the
values, on the native one.
"""

import contextlib
import os
import warnings

import keras

# Read at call time: `sampling` imports this module while it is itself being imported.
from keras_stn.ops import sampling

ENVIRONMENT_VARIABLE = "KERAS_STN_NATIVE"
OFF = ("0", "false", "no", "off")


def enabled(images):
    """Whether `images` are sampled with PyTorch's kernel: on the torch backend unless switched
    off, for a non-empty batch (PyTorch's `affine_grid` rejects an empty one)."""
    if keras.config.backend() != "torch" or images.shape[0] == 0:
        return False
    return os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() not in OFF


@contextlib.contextmanager
def switched(on):
    """Within the block, sample with PyTorch's kernel on the torch backend (`on=True`) or with the
    portable sampler (`on=False`), whatever `KERAS_STN_NATIVE` says outside it."""
    before = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENVIRONMENT_VARIABLE]
        else:
            os.environ[ENVIRONMENT_VARIABLE] = before


def to_channels_first(images, data_format):
    """A channels-first view of `images` (no copy) for PyTorch's kernel."""
    if data_format == "channels_first":
        return images
    return images.permute(sampling.channels_first_axes(images.dim()))


def from_channels_first(output, data_format):
    if data_format == "channels_first":
        return output
    return output.permute(sampling.channels_last_axes(output.dim()))


def sample(images, grid, interpolation, padding_mode, align_corners, data_format, work):
    """`torch.nn.functional.grid_sample` on validated torch tensors, under the library's rules.

    `work` is the dtype coordinates and weights are computed in (see `sampling.working_dtype`);
    images and grid are cast to it and the result back to the images' dtype.
    """
    import torch
    import torch.nn.functional as F

    bound = sampling.COORDINATE_BOUND
    dtype = getattr(torch, work)
    grid = grid.to(dtype)
    source = to_channels_first(images, data_format).to(dtype)
    if within_bound(grid):  # the common case: the kernel alone, with nothing around it
        output = F.grid_sample(source, grid, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners)
    else:
        finite = torch.isfinite(grid).all(dim=-1)
        safe = torch.where(finite.unsqueeze(-1), grid.clamp(-bound, bound), 0.0)
        output = F.grid_sample(source, safe, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners)
        output = torch.where(finite.unsqueeze(1), output, 0.0)
    return from_channels_first(output, data_format).to(images.dtype)


def within_bound(grid):
    """Whether every coordinate is finite and within `COORDINATE_BOUND` (NaN compares false).
    One reduction and one read of its result; symbolic (meta) tensors have no values and take
    the plain path, whose output shape is the same."""
    if grid.device.type == "meta" or grid.numel() == 0:
        return True
    return bool(grid.detach().abs().amax() <= sampling.COORDINATE_BOUND)


def affine_sample(images, theta, size, interpolation, padding_mode, align_corners, data_format, work):
    """`grid_sample(images, affine_grid(theta, size))` with PyTorch's own kernels; `size` is
    the output's spatial size (`None`: the input's), `theta` a validated `(B, n, n + 1)` tensor."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, work)
    theta = theta.to(dtype)
    first = data_format == "channels_first"
    channels = images.shape[1] if first else images.shape[-1]
    in_size = tuple(images.shape[2:] if first else images.shape[1:-1])
    size = in_size if size is None else tuple(int(n) for n in size)
    with warnings.catch_warnings():
        # PyTorch warns that unit-size grids with align_corners=True changed in its 1.3; they
        # read the centre (normalised 0), which is this library's convention too.
        warnings.filterwarnings("ignore", "Since version 1.3.0, affine_grid behavior", UserWarning)
        grid = F.affine_grid(theta, (theta.shape[0], channels, *size), align_corners=align_corners)
    output = sample(images, grid, interpolation, padding_mode, align_corners, data_format, work)
    if size != in_size:
        return output
    # PyTorch's kernel reads an identity warp's pixels at coordinates a rounding away from
    # whole pixels. Where theta is exactly the identity the images are returned bit for bit, as
    # on the portable path, with the kernel's gradients (which are the identity's, to rounding).
    rows = theta.shape[1]
    identity = torch.eye(rows, rows + 1, dtype=dtype, device=theta.device)
    exact = (theta.detach() == identity).flatten(1).all(dim=1)
    if theta.device.type == "meta" or not bool(exact.any()):
        return output
    exact = exact.view(-1, *([1] * (images.dim() - 1)))
    return torch.where(exact, images.detach() + (output - output.detach()), output)
