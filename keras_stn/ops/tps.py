"""Thin-plate-spline sampling grids: a smooth warp through a lattice of displaced control points."""

import functools

import keras
import numpy as np
from keras import ops

from keras_stn import _checks
from keras_stn._typing import Size2D, Tensor
from keras_stn.ops.grid import coordinate_dtype, linear_form, pixel_centres

__all__ = ["tps_grid", "TpsGrid"]


def radial_basis(squared_distance, xp):
    """The thin-plate kernel `U = r² log r²` of squared distances `r²`, 0 at `r = 0` (its limit).

    `xp` is `numpy` (the system matrix, in float64) or `keras.ops` (the output points).
    """
    positive = squared_distance > 0
    return xp.where(positive, squared_distance * xp.log(xp.where(positive, squared_distance, 1.0)), 0.0)


@functools.cache
def tps_solver(grid_size):
    """The control points and the linear map from values at them to spline coefficients.

    Returns float64 NumPy arrays, read-only: `controls` `(n, 2)` with `n = grid_size**2`, the
    `(x, y)` lattice on `[-1, 1]²` in row-major order (top row first, left to right), and
    `solver` `(n + 3, n)`, the first `n` columns of the inverse of the system matrix
    `[[U(|c_i - c_j|²), P], [P^T, 0]]` with `P = [x, y, 1]` of the controls. The spline through
    values `z` at the controls is `sum_k a_k U(|p - c_k|²) + b_x x + b_y y + b_1` with
    `(a, b_x, b_y, b_1) = solver @ z`. Solved once per lattice.
    """
    axis = np.linspace(-1.0, 1.0, grid_size)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    controls = np.stack([xs.ravel(), ys.ravel()], axis=-1)
    count = len(controls)
    polynomial = np.concatenate([controls, np.ones((count, 1))], axis=1)
    system = np.zeros((count + 3, count + 3))
    system[:count, :count] = radial_basis(((controls[:, None] - controls[None]) ** 2).sum(-1), np)
    system[:count, count:] = polynomial
    system[count:, :count] = polynomial.T
    solver = np.linalg.inv(system)[:, :count]
    controls.setflags(write=False)
    solver.setflags(write=False)
    return controls, solver


def solver_tensors(grid_size, dtype, like):
    """`tps_solver(grid_size)` as tensors of `dtype` on the device of the tensor `like`.

    On the torch backend, which runs eagerly, they are made once per lattice, dtype and device
    rather than copied from the host on every call; the compiled backends (JAX, TensorFlow)
    embed them in the graph as constants when they trace it.
    """
    if keras.config.backend() == "torch":
        return torch_solver_tensors(grid_size, dtype, like.device)
    controls, solver = tps_solver(grid_size)
    return ops.convert_to_tensor(controls, dtype), ops.convert_to_tensor(solver, dtype)


if keras.config.backend() == "torch":
    import torch

    # Evaluated when torch.compile traces the grid and taken as a constant: tracing the NumPy
    # solve itself would put it in the graph (where its read-only flags fail to trace).
    # (A plain function: dynamo traces into a `functools.cache` wrapper it is given directly.)
    @torch.compiler.assume_constant_result
    def constant_tps_solver(grid_size):
        return tps_solver(grid_size)

    TORCH_SOLVERS: dict = {}

    def torch_solver_tensors(grid_size, dtype, device):
        key = (grid_size, dtype, str(device))
        if key not in TORCH_SOLVERS:
            TORCH_SOLVERS[key] = tuple(
                torch.tensor(a, dtype=getattr(torch, dtype), device=device) for a in constant_tps_solver(grid_size)
            )
        return TORCH_SOLVERS[key]


def tps_grid_unchecked(offsets, grid_size, height, width, align_corners):
    """`tps_grid` for validated `(B, grid_size**2, 2)` offsets; sizes may be tensors."""
    dtype = _checks.dtype_name(offsets)
    work = coordinate_dtype(dtype)
    offsets = ops.cast(offsets, work)
    controls, solver = solver_tensors(grid_size, work, offsets)
    count = controls.shape[0]
    # A thin-plate spline reproduces affine maps exactly, so the spline through the displaced
    # controls is the identity plus the spline through the offsets alone: zero offsets give the
    # identity grid exactly, and rounding errors scale with the offsets, not the coordinates.
    coefficients = ops.einsum("kn,bnc->bkc", solver, offsets)
    xs, ys = pixel_centres((height, width), align_corners, work)
    squared = (ops.expand_dims(xs, -1) - controls[:, 0]) ** 2 + (ops.expand_dims(ys, -1) - controls[:, 1]) ** 2
    bend = ops.einsum("hwn,bnc->bhwc", radial_basis(squared[0], ops), coefficients[:, :count])

    def component(c, identity):
        affine = linear_form([coefficients[:, count + r, c] for r in range(3)], xs, ys)
        return identity + (bend[..., c] + affine)

    grid = ops.stack([component(0, xs), component(1, ys)], axis=-1)
    return ops.cast(grid, dtype)


def tps_grid(offsets: Tensor, size: Size2D, grid_size: int | None = None, align_corners: bool = False) -> Tensor:
    """Sampling grid of a batch of thin-plate-spline warps.

    Convention:
        A lattice of `K x K` control points `c` spans `[-1, 1]²` evenly (`K = grid_size`), in the
        normalised frame of `affine_grid`. The warp maps *output* coordinates to *input*
        coordinates: output point `c_k` reads the input at `c_k + offsets_k`, and every other
        output point follows the thin-plate spline through those pairs (kernel `r² log r²`),
        the smoothest interpolant in the sense of bending energy. Zero offsets give the
        identity grid, the same numbers as `affine_grid` of the identity; offsets that move
        the controls affinely give that affine grid (up to rounding). `offsets` of shape
        `(B, 2 * K * K)` are `(dx, dy)` pairs in the lattice's row-major order (top row first,
        left to right), i.e. a `(B, K, K, 2)` tensor flattened, which is also accepted.
        `align_corners` only places the output pixel centres (see `affine_grid`); the lattice
        always spans `[-1, 1]`. Half-precision offsets are evaluated in float32 and returned
        in their own dtype.

    Args:
        offsets: float tensor `(B, 2 * K * K)` or `(B, K, K, 2)`, the displacement of each
            control point in normalised units; the batch dimension may be dynamic.
        size: output `(height, width)`, positive Python ints.
        grid_size: `K`, an int `>= 2`; `None` infers it from the shape of `offsets`.
        align_corners: bool, see `affine_grid`.

    Returns:
        Tensor `(B, height, width, 2)` with the offsets' dtype, last axis `(x, y)`, ready for
        `grid_sample`.

    Raises:
        ValueError: `offsets` not of one of the shapes above (or not matching `grid_size`),
            `grid_size < 2`, or `size` not two positive integers.
        TypeError: `offsets` not floating point, `grid_size` or `size` not integers,
            `align_corners` not bool.

    Examples:
        >>> import numpy as np
        >>> offsets = np.zeros((1, 3, 3, 2), "float32")
        >>> offsets[0, 1, 1] = (0.2, 0.0)  # the centre of the output reads 0.1 of the width to its right
        >>> tuple(tps_grid(offsets, (28, 28)).shape)
        (1, 28, 28, 2)
    """
    if _checks.is_symbolic(offsets):  # the operation checks them (`compute_output_spec`)
        return TpsGrid(size, grid_size, align_corners)(offsets)
    offsets, grid_size, height, width = _checks.check_tps_grid(offsets, size, grid_size, align_corners)
    return tps_grid_unchecked(offsets, grid_size, height, width, align_corners)


@keras.saving.register_keras_serializable(package="keras_stn")
class TpsGrid(keras.Operation):
    """`tps_grid` as a Keras operation: what a functional model records for it."""

    def __init__(self, size, grid_size=None, align_corners=False, name=None):
        super().__init__(name=name)
        self.size, self.grid_size, self.align_corners = size, grid_size, align_corners

    def call(self, offsets):
        return tps_grid(offsets, self.size, self.grid_size, self.align_corners)

    def compute_output_spec(self, offsets):
        offsets, _, height, width = _checks.check_tps_grid(offsets, self.size, self.grid_size, self.align_corners)
        return keras.KerasTensor((offsets.shape[0], height, width, 2), dtype=offsets.dtype)
