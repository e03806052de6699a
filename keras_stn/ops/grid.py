"""Sampling grids: where each output pixel reads from in the input.

A grid has shape `(B, H_out, W_out, 2)`; its last axis holds `(x, y)` in the normalised frame
where `-1` and `+1` are the left/top and right/bottom edges of the input (see `align_corners`).
"""

from keras import ops

from keras_stn import _validation as v


def compute_dtype(dtype):
    """Half precision is too coarse for pixel coordinates (a 224-wide image needs ~1/8-pixel
    resolution at its right edge), so coordinates and weights are computed in float32 there."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def check_theta(theta, name="theta", rows=2):
    """Returns `theta` as a `(B, rows, rows + 1)` tensor; accepts that shape or `(B, rows*(rows+1))`."""
    theta = ops.convert_to_tensor(theta)
    cols = rows + 1
    shape = tuple(theta.shape)
    flat_ok = len(shape) == 2 and shape[1] == rows * cols
    matrix_ok = len(shape) == 3 and shape[1:] == (rows, cols)
    if not (flat_ok or matrix_ok):
        raise ValueError(
            f"`{name}` must have shape (batch, {rows}, {cols}) or (batch, {rows * cols}). Got {name} with shape {shape}"
        )
    v.check_floating(name, theta)
    if flat_ok:
        theta = ops.reshape(theta, (-1, rows, cols))
    return theta


def base_coordinates(size, align_corners, dtype):
    """Normalised centres of `size` pixels along one axis, as `torch.nn.functional.affine_grid`.

    Both conventions share the numerator `2i + 1 - size`: with corners aligned the extreme
    centres sit at -1 and +1 (denominator `size - 1`; a single pixel sits at 0), otherwise the
    extreme *edges* do (denominator `size`). `size` may be a Python int or a scalar tensor.
    """
    i = ops.cast(ops.arange(size), dtype)
    size = ops.cast(size, dtype)
    denominator = ops.maximum(size - 1, 1) if align_corners else size
    return (2 * i + 1 - size) / denominator


def affine_pixel_coordinates(theta, in_size, out_size, align_corners, dtype):
    """Input *pixel* coordinates `(px, py)`, each `(B, H_out, W_out)`, read by affine `theta`.

    The same points as unnormalising `affine_grid(theta, out_size)` for an input of `in_size`,
    but with the normalisation folded into theta's coefficients: along each axis, with
    `a = i + h` (`h = 0` with corners aligned, else `0.5`), `s = size - 1` or `size`, and
    `d = max(s_out, 1)`:
        x_norm_out = (2 a - s_out) / d,   px = s_in / 2 * (theta @ [x, y, 1] + 1) - h.
    Expanded, `px = t00 * (s_in/d_x) * a_x + t01 * (s_in/d_y) * a_y + offset`, which is exact
    for the identity and for whole-pixel translations (the ratios are exactly 1), so an
    identity warp returns its input bit for bit. Sizes are `(height, width)`, ints or tensors.
    """
    theta = ops.cast(theta, dtype)
    half = 0.0 if align_corners else 0.5
    spans_in = [ops.cast(n, dtype) - (1 if align_corners else 0) for n in in_size]
    spans_out = [ops.cast(n, dtype) - (1 if align_corners else 0) for n in out_size]
    denominators = [ops.maximum(s, 1) for s in spans_out]
    height_out, width_out = out_size
    a_y = ops.reshape(ops.cast(ops.arange(height_out), dtype) + half, (1, -1, 1))
    a_x = ops.reshape(ops.cast(ops.arange(width_out), dtype) + half, (1, 1, -1))

    def axis(r):  # r = 0 for x (uses width), 1 for y (uses height)
        span_in = spans_in[1 - r]
        t = [ops.reshape(theta[:, r, c], (-1, 1, 1)) for c in range(3)]
        scale_x = span_in / denominators[1]
        scale_y = span_in / denominators[0]
        offset = (
            span_in / 2 * (t[2] + 1 - t[0] * (spans_out[1] / denominators[1]) - t[1] * (spans_out[0] / denominators[0]))
            - half
        )
        return t[0] * scale_x * a_x + t[1] * scale_y * a_y + offset

    return axis(0), axis(1)


def pixel_centres(height, width, align_corners, dtype):
    """Normalised output pixel centres: `x` of shape `(1, 1, W)` and `y` of shape `(1, H, 1)`."""
    xs = ops.reshape(base_coordinates(width, align_corners, dtype), (1, 1, -1))
    ys = ops.reshape(base_coordinates(height, align_corners, dtype), (1, -1, 1))
    return xs, ys


def linear_form(coefficients, xs, ys):
    """`a * x + b * y + c` for coefficients `(a, b, c)`, each `(B,)`, broadcast to `(B, H, W)`.

    Elementwise rather than a matmul: exact in float32 on every device (GPU matmuls may use
    reduced-precision TF32), and only 2 multiply-adds per output pixel.
    """
    a, b, c = (ops.reshape(k, (-1, 1, 1)) for k in coefficients)
    return a * xs + b * ys + c


def affine_grid_unchecked(theta, height, width, align_corners):
    """`affine_grid` for an already validated `(B, 2, 3)` theta; sizes may be tensors."""
    dtype = v.dtype_name(theta)
    work = compute_dtype(dtype)
    theta = ops.cast(theta, work)
    xs, ys = pixel_centres(height, width, align_corners, work)
    grid = ops.stack([linear_form([theta[:, r, c] for c in range(3)], xs, ys) for r in range(2)], axis=-1)
    return ops.cast(grid, dtype)


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
    dtype = v.dtype_name(homography)
    work = compute_dtype(dtype)
    homography = ops.cast(homography, work)
    xs, ys = pixel_centres(height, width, align_corners, work)
    x_h, y_h, w = (linear_form([homography[:, r, c] for c in range(3)], xs, ys) for r in range(3))
    visible = w > HORIZON_EPSILON
    # Dividing by 1 where hidden keeps the discarded quotient finite: its zero gradient would
    # otherwise turn into 0 * inf = NaN in the backward pass.
    safe_w = ops.where(visible, w, ops.ones_like(w))
    hidden = ops.full_like(w, float("nan"))
    grid = ops.stack([ops.where(visible, x_h / safe_w, hidden), ops.where(visible, y_h / safe_w, hidden)], axis=-1)
    return ops.cast(grid, dtype)


def affine_grid(theta, size, align_corners=False):
    """Sampling grid of a batch of 2-D affine transforms.

    Convention:
        `theta` maps *output* coordinates to *input* coordinates, both normalised to `[-1, 1]`:
        output pixel `(x, y)` reads the input at `theta @ [x, y, 1]`. The result holds the same
        numbers as `torch.nn.functional.affine_grid(theta, (B, C, H, W), align_corners)`, but
        the grid is returned with shape `(B, H, W, 2)` whose last axis is `(x, y)`, exactly
        what `grid_sample` takes. `align_corners=True` puts -1/+1 on the centres of the corner
        pixels (the convention of the original TF `stn` package); `False` puts them on the
        outer edges of the corner pixels, which makes the grid independent of resolution.
        Half-precision thetas are evaluated in float32 and returned in their own dtype.

    Args:
        theta: float tensor `(B, 2, 3)` or `(B, 6)` (row-major), the batch dimension may be
            dynamic.
        size: output `(height, width)`, positive Python ints; independent of any input size.
        align_corners: bool, see Convention.

    Returns:
        Tensor `(B, height, width, 2)` with theta's dtype.

    Raises:
        ValueError: `theta` not `(B, 2, 3)`/`(B, 6)`, or `size` not two positive integers.
        TypeError: `theta` not floating point, `size` not integers, `align_corners` not bool.

    Example:
        >>> import numpy as np
        >>> identity = np.array([[1, 0, 0, 0, 1, 0]], "float32")
        >>> affine_grid(identity, (2, 2), align_corners=True)[0, :, :, 0]  # x: -1 then +1
    """
    theta = check_theta(theta)
    height, width = v.check_size("size", size)
    v.check_bool("align_corners", align_corners)
    return affine_grid_unchecked(theta, height, width, align_corners)
