"""Sampling grids: where each output pixel reads from in the input.

A grid has shape `(B, H_out, W_out, 2)`; its last axis holds `(x, y)` in the normalised frame
where `-1` and `+1` are the left/top and right/bottom edges of the input (see `align_corners`).
A volumetric grid has shape `(B, D_out, H_out, W_out, 3)`, last axis `(x, y, z)`, with `z`
running along the depth axis in the same way.
"""

import keras
from keras import ops

from keras_stn import _checks
from keras_stn._typing import Size, Tensor
from keras_stn.ops._backend.xla import computed_once

__all__ = ["affine_grid", "AffineGrid"]

# Finite normalised coordinates are bounded to +-2**100 before they are scaled to pixels, so that
# none overflows to inf in float32 (and so reads nothing, the rule for non-finite ones): they
# stay far outside any image, where the padding mode decides what they read.
COORDINATE_BOUND = 2.0**100


def coordinate_dtype(dtype):
    """Half precision is too coarse for pixel coordinates (a 224-wide image needs ~1/8-pixel
    resolution at its right edge), so coordinates and weights are computed in float32 there."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


# Every `ops.arange` here names its dtype: Keras's torch backend otherwise infers it with
# `getattr(size, "dtype")`, on which torch._dynamo fails for a symbolic size (torch.compile
# with dynamic shapes, which it turns on by itself once a spatial size changes).


def base_coordinates(size, align_corners, dtype):
    """Normalised centres of `size` pixels along one axis, as `torch.nn.functional.affine_grid`.

    Both conventions share the numerator `2i + 1 - size`: with corners aligned the extreme
    centres sit at -1 and +1 (denominator `size - 1`; a single pixel sits at 0), otherwise the
    extreme *edges* do (denominator `size`). `size` may be a Python int or a scalar tensor.
    """
    i = ops.cast(ops.arange(size, dtype="int32"), dtype)
    size = ops.cast(size, dtype)
    denominator = ops.maximum(size - 1, 1) if align_corners else size
    return (2 * i + 1 - size) / denominator


def along_axes(vectors):
    """Reshapes per-axis vectors, `x` first, to broadcast against a `(1, [D,] H, W)` grid: the
    `x` vector along the last axis, `y` along the one before, `z` before that."""
    ndim = len(vectors)
    shaped = []
    for k, vector in enumerate(vectors):
        shape = [1] * (ndim + 1)
        shape[ndim - k] = -1
        shaped.append(ops.reshape(vector, shape))
    return shaped


def affine_pixel_coordinates(theta, in_size, out_size, align_corners, dtype):
    """Input *pixel* coordinates read by affine `theta`, one `(B, *out_size)` tensor per axis,
    `x` first: `[px, py]` for sizes `(height, width)`, `[px, py, pz]` for `(depth, height, width)`.

    The same points as unnormalising `affine_grid(theta, out_size)` for an input of `in_size`,
    but with the normalisation folded into theta's coefficients: along each axis, with
    `a = i + h` (`h = 0` with corners aligned, else `0.5`), `s = size - 1` or `size`, and
    `d = max(s_out, 1)`:
        x_norm_out = (2 a - s_out) / d,   px = s_in / 2 * (theta @ [x, y, (z,) 1] + 1) - h.
    Expanded, `px = t00 * (s_in/d_x) * a_x + t01 * (s_in/d_y) * a_y + ... + offset`, which is
    exact for the identity and for whole-pixel translations (the ratios are exactly 1), so an
    identity warp returns its input bit for bit. Sizes are ints or scalar tensors.
    """
    theta = ops.cast(theta, dtype)
    ndim = len(out_size)
    half = 0.0 if align_corners else 0.5
    # Index k runs over the coordinates x, y(, z), i.e. over the size axes from the last one.
    spans_in = [ops.cast(n, dtype) - (1 if align_corners else 0) for n in reversed(in_size)]
    spans_out = [ops.cast(n, dtype) - (1 if align_corners else 0) for n in reversed(out_size)]
    denominators = [ops.maximum(s, 1) for s in spans_out]
    positions = along_axes([ops.cast(ops.arange(n, dtype="int32"), dtype) + half for n in reversed(out_size)])

    rows = []
    for r in range(ndim):  # row r of theta gives the input coordinate x (r = 0), y, z
        t = [theta[:, r, c] for c in range(ndim + 1)]
        centred = t[ndim] + 1
        for k in range(ndim):
            centred = centred - t[k] * (spans_out[k] / denominators[k])
        scales = [t[k] * (spans_in[r] / denominators[k]) for k in range(ndim)]
        rows.append(ops.stack([*scales, spans_in[r] / 2 * centred - half], axis=-1))
    coefficients = computed_once(ops.stack(rows, axis=1))

    def axis(r):
        c = [ops.reshape(coefficients[:, r, k], (-1,) + (1,) * ndim) for k in range(ndim + 1)]
        linear = c[0] * positions[0]
        for k in range(1, ndim):
            linear = linear + c[k] * positions[k]
        return linear + c[ndim]

    return [axis(r) for r in range(ndim)]


def pixel_centres(size, align_corners, dtype):
    """Normalised output pixel centres, one tensor per axis of `size`, `x` first: for `(H, W)`,
    `x` of shape `(1, 1, W)` and `y` of shape `(1, H, 1)`; for `(D, H, W)` also `z` `(1, D, 1, 1)`."""
    return along_axes([base_coordinates(n, align_corners, dtype) for n in reversed(size)])


def linear_form(coefficients, *coordinates):
    """`a * x + b * y (+ c * z) + d` for coefficients `(a, b, (c,) d)`, each `(B,)`, broadcast to
    the coordinates' shape with a leading batch axis.

    Elementwise rather than a matmul: exact in float32 on every device (GPU matmuls may use
    reduced-precision TF32), and only one multiply-add per coordinate and output pixel.
    """
    *scales, constant = (ops.reshape(k, (-1,) + (1,) * len(coordinates)) for k in coefficients)
    out = scales[0] * coordinates[0]
    for scale, coordinate in zip(scales[1:], coordinates[1:]):
        out = out + scale * coordinate
    return out + constant


def affine_grid_unchecked(theta, size, align_corners):
    """`affine_grid` for an already validated `(B, n, n + 1)` theta and a `size` of `n` entries
    (`n` = 2 or 3), which may be tensors."""
    dtype = _checks.dtype_name(theta)
    work = coordinate_dtype(dtype)
    theta = ops.cast(theta, work)
    ndim = len(size)
    centres = pixel_centres(size, align_corners, work)
    rows = [linear_form([theta[:, r, c] for c in range(ndim + 1)], *centres) for r in range(ndim)]
    return ops.cast(ops.stack(rows, axis=-1), dtype)


# Output points whose homogeneous coordinate is at or below this are on or beyond the horizon.
HORIZON_EPSILON = 1e-6


def projective_grid_unchecked(homography, height, width, align_corners):
    """Sampling grid `(B, H, W, 2)` of validated `(B, 3, 3)` homographies; sizes may be tensors.

    Output point `(x, y)` reads the input at `(x_h / w, y_h / w)`, `(x_h, y_h, w) = H @ [x, y, 1]`, in
    the frame of `affine_grid` (an `H` whose last row is `(0, 0, 1)` gives its grid exactly).
    The line `w = 0` is the horizon: points on it map to infinity and points beyond it
    (`w < 0`) would read a mirrored copy of the input from the far side of the projective
    plane. Every point with `w <= HORIZON_EPSILON` therefore gets NaN coordinates, which
    `grid_sample` reads as nothing (output 0, gradient 0) in every padding mode. Which side is
    "beyond" is fixed by the sign of `H`: with `H[2, 2] = 1`, as in `transforms.Projective`,
    the centre of the output (`w = 1`) is always visible.
    """
    dtype = _checks.dtype_name(homography)
    work = coordinate_dtype(dtype)
    homography = ops.cast(homography, work)
    xs, ys = pixel_centres((height, width), align_corners, work)
    x_h, y_h, w = (linear_form([homography[:, r, c] for c in range(3)], xs, ys) for r in range(3))
    visible = w > HORIZON_EPSILON
    # Dividing by 1 where hidden keeps the discarded quotient finite: its zero gradient would
    # otherwise turn into 0 * inf = NaN in the backward pass.
    safe_w = ops.where(visible, w, ops.ones_like(w))
    hidden = ops.full_like(w, float("nan"))
    grid = ops.stack([ops.where(visible, x_h / safe_w, hidden), ops.where(visible, y_h / safe_w, hidden)], axis=-1)
    return ops.cast(grid, dtype)


def affine_grid(theta: Tensor, size: Size, align_corners: bool = False) -> Tensor:
    """Sampling grid of a batch of 2-D or 3-D affine transforms.

    Convention:
        `theta` maps *output* coordinates to *input* coordinates, both normalised to `[-1, 1]`:
        output pixel `(x, y)` reads the input at `theta @ [x, y, 1]`. The result holds the same
        numbers as `torch.nn.functional.affine_grid(theta, (B, C, H, W), align_corners)`, but
        the grid is returned with shape `(B, H, W, 2)` whose last axis is `(x, y)`, exactly
        what `grid_sample` takes. `align_corners=True` puts -1/+1 on the centres of the corner
        pixels (the convention of the original TF `stn` package); `False` puts them on the
        outer edges of the corner pixels, which makes the grid independent of resolution.
        Half-precision thetas are evaluated in float32 and returned in their own dtype.

        Volumes, as in PyTorch, use the same function: a `(B, 3, 4)` theta and a
        `size=(depth, height, width)` give the grid `(B, D, H, W, 3)` whose last axis is
        `(x, y, z)`, `z` running along the depth; output voxel `(x, y, z)` reads the input at
        `theta @ [x, y, z, 1]` (PyTorch's `affine_grid(theta, (B, C, D, H, W))`). The shape of
        `theta` says which kind of grid is meant, and `size` must have as many entries.

    Args:
        theta: float tensor `(B, 2, 3)` or `(B, 6)` (row-major) for images, `(B, 3, 4)` or
            `(B, 12)` for volumes; the batch dimension may be dynamic.
        size: output `(height, width)`, or `(depth, height, width)` for volumes, positive
            Python ints; independent of any input size.
        align_corners: bool, see Convention.

    Returns:
        Tensor `(B, height, width, 2)` (or `(B, depth, height, width, 3)`) with theta's dtype.

    Raises:
        ValueError: `theta` not of one of the shapes above, `size` not two (three) positive
            integers, or a 2-D theta with a 3-entry size (or the reverse).
        TypeError: `theta` not floating point, `size` not integers, `align_corners` not bool.

    Examples:
        >>> import numpy as np
        >>> identity = np.array([[1, 0, 0, 0, 1, 0]], "float32")
        >>> grid = affine_grid(identity, (2, 2), align_corners=True)
        >>> np.asarray(keras.ops.convert_to_numpy(grid[0, :, :, 0])).tolist()  # x: -1 then +1
        [[-1.0, 1.0], [-1.0, 1.0]]
        >>> identity_3d = np.eye(3, 4, dtype="float32")[None]
        >>> tuple(affine_grid(identity_3d, (2, 3, 4)).shape)
        (1, 2, 3, 4, 3)
    """
    if _checks.is_symbolic(theta):  # the operation checks them (`compute_output_spec`)
        return AffineGrid(size, align_corners)(theta)
    theta, size = _checks.check_affine_grid(theta, size, align_corners)
    return affine_grid_unchecked(theta, size, align_corners)


@keras.saving.register_keras_serializable(package="keras_stn")
class AffineGrid(keras.Operation):
    """`affine_grid` as a Keras operation: what a functional model records for it."""

    def __init__(self, size, align_corners=False, name=None):
        super().__init__(name=name)
        self.size, self.align_corners = size, align_corners

    def call(self, theta):
        return affine_grid(theta, self.size, self.align_corners)

    def compute_output_spec(self, theta):
        theta, size = _checks.check_affine_grid(theta, self.size, self.align_corners)
        return keras.KerasTensor((theta.shape[0], *size, len(size)), dtype=theta.dtype)
