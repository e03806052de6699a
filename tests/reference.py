"""The tests' two references for `affine_grid` / `grid_sample`, channels-last, for images and
volumes.

- A pure-NumPy reference of PyTorch's semantics (bilinear, nearest and, for images, bicubic),
  written independently of keras_stn, in float64, one tap at a time. Non-finite grid points
  follow keras_stn's documented rule: they produce 0. `affine_grid_ref` and `grid_sample_ref`
  take images or volumes alike.
- PyTorch's own `affine_grid` / `grid_sample` and their autograd gradients, through the one
  helper `torch_reference`.
"""

from typing import NamedTuple

import numpy as np


def _centres(n, align_corners):
    i = np.arange(n, dtype=np.float64)
    if align_corners:
        return np.zeros(1) if n == 1 else -1 + 2 * i / (n - 1)
    return (2 * i + 1) / n - 1


def _homogeneous_points(size, align_corners):
    """`(H, W, 3)` output pixel centres `(x, y, 1)`."""
    y, x = np.meshgrid(_centres(size[0], align_corners), _centres(size[1], align_corners), indexing="ij")
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def affine_grid_ref(theta, size, align_corners=False):
    """`(B, *size, rank)` grid of `(B, rank, rank + 1)` thetas; `size` is `(H, W)` or `(D, H, W)`."""
    if len(size) == 3:
        return affine_grid_3d_ref(theta, size, align_corners)
    theta = np.asarray(theta)
    points = _homogeneous_points(size, align_corners)
    grid = np.einsum("hwk,bjk->bhwj", points, theta.astype(np.float64))
    return grid.astype(theta.dtype)


def projective_grid_ref(homography, size, align_corners=False, horizon=1e-6):
    """`(B, H, W, 2)` float64 grid of `(B, 3, 3)` homographies; NaN where `w <= horizon`."""
    points = _homogeneous_points(size, align_corners)
    mapped = np.einsum("hwk,bjk->bhwj", points, np.asarray(homography, np.float64))
    w = mapped[..., 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w > horizon, mapped[..., :2] / w, np.nan)


def _thin_plate_kernel(squared_distance):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(squared_distance * np.log(squared_distance))  # 0 log 0 = 0


def tps_grid_ref(offsets, size, align_corners=False):
    """`(B, H, W, 2)` float64 grid of thin-plate splines through `K x K` control points on
    `[-1, 1]²` (row-major, x fastest) displaced by `offsets` `(B, K, K, 2)`: solves the
    interpolation system of each sample directly."""
    offsets = np.asarray(offsets, np.float64)
    k = offsets.shape[1]
    axis = -1 + 2 * np.arange(k) / (k - 1)
    controls = np.array([(x, y) for y in axis for x in axis])
    n = len(controls)
    p = np.hstack([np.ones((n, 1)), controls])
    system = np.block(
        [[_thin_plate_kernel(((controls[:, None] - controls[None]) ** 2).sum(-1)), p], [p.T, np.zeros((3, 3))]]
    )
    points = _homogeneous_points(size, align_corners)[..., :2].reshape(-1, 2)
    basis = np.hstack(
        [_thin_plate_kernel(((points[:, None] - controls[None]) ** 2).sum(-1)), np.ones((len(points), 1)), points]
    )
    grids = []
    for displaced in controls + offsets.reshape(-1, n, 2):
        coefficients = np.linalg.solve(system, np.vstack([displaced, np.zeros((3, 2))]))
        grids.append((basis @ coefficients).reshape(*size, 2))
    return np.stack(grids)


def _unnormalize(c, n, align_corners):
    return (c + 1) / 2 * (n - 1) if align_corners else ((c + 1) * n - 1) / 2


def _reflect(c, n, align_corners):
    lo, hi = (0.0, n - 1.0) if align_corners else (-0.5, n - 0.5)
    span = hi - lo
    if span <= 0:
        return np.zeros_like(c)
    d = np.abs(c - lo)
    flips = np.floor(d / span)
    extra = d - flips * span
    return np.where(flips % 2 == 0, lo + extra, hi - extra)


def _pad(c, n, padding_mode, align_corners):
    if padding_mode == "border":
        return np.clip(c, 0, n - 1)
    if padding_mode == "reflection":
        return np.clip(_reflect(c, n, align_corners), 0, n - 1)
    return c


def _read(images, b, yi, xi):
    """Pixel values at integer positions; zero where outside the image."""
    _, height, width, _ = images.shape
    inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
    yc = np.clip(yi, 0, height - 1).astype(np.int64)
    xc = np.clip(xi, 0, width - 1).astype(np.int64)
    return images[b, yc, xc] * inside[..., None]


def _cubic(t):
    a = -0.75
    d = np.stack([t + 1, t, 1 - t, 2 - t])
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(np.abs(d) <= 1, near, far)


def grid_sample_ref(images, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False):
    """Sampling of `(B, H, W, C)` images at a `(B, Ho, Wo, 2)` grid, or of `(B, D, H, W, C)`
    volumes at a `(B, Do, Ho, Wo, 3)` grid (`grid_sample_3d_ref`), float64."""
    if np.ndim(images) == 5:
        return grid_sample_3d_ref(images, grid, interpolation, padding_mode, align_corners)
    images = np.asarray(images, np.float64)
    grid = np.asarray(grid, np.float64)
    batch, height, width, channels = images.shape
    gx, gy = grid[..., 0], grid[..., 1]
    finite = np.isfinite(gx) & np.isfinite(gy)
    gx, gy = np.where(finite, gx, 0.0), np.where(finite, gy, 0.0)
    x = _unnormalize(gx, width, align_corners)
    y = _unnormalize(gy, height, align_corners)
    b = np.arange(batch).reshape(-1, 1, 1) * np.ones_like(x, dtype=np.int64)
    out = np.zeros(x.shape + (channels,))
    if interpolation == "bicubic":
        x0, y0 = np.floor(x), np.floor(y)
        wx, wy = _cubic(x - x0), _cubic(y - y0)
        for j in range(4):
            yj = _pad(y0 - 1 + j, height, padding_mode, align_corners)
            for i in range(4):
                xi = _pad(x0 - 1 + i, width, padding_mode, align_corners)
                out += (wx[i] * wy[j])[..., None] * _read(images, b, yj, xi)
    else:
        x = _pad(x, width, padding_mode, align_corners)
        y = _pad(y, height, padding_mode, align_corners)
        if interpolation == "nearest":
            out = _read(images, b, np.rint(y), np.rint(x))
        else:
            x0, y0 = np.floor(x), np.floor(y)
            fx, fy = x - x0, y - y0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    out += (wx * wy)[..., None] * _read(images, b, y0 + dy, x0 + dx)
    return out * finite[..., None]


def affine_grid_3d_ref(theta, size, align_corners=False):
    """`(B, D, H, W, 3)` grid of `(B, 3, 4)` thetas; output voxel `(x, y, z)` reads `theta @ [x, y, z, 1]`."""
    theta = np.asarray(theta)
    z, y, x = np.meshgrid(*(_centres(n, align_corners) for n in size), indexing="ij")
    points = np.stack([x, y, z, np.ones_like(x)], axis=-1)
    return np.einsum("dhwk,bjk->bdhwj", points, theta.astype(np.float64)).astype(theta.dtype)


def _read_3d(volumes, b, zi, yi, xi):
    """Voxel values at integer positions; zero where outside the volume."""
    _, depth, height, width, _ = volumes.shape
    inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1) & (zi >= 0) & (zi <= depth - 1)
    zc, yc, xc = (np.clip(i, 0, n - 1).astype(np.int64) for i, n in ((zi, depth), (yi, height), (xi, width)))
    return volumes[b, zc, yc, xc] * inside[..., None]


def grid_sample_3d_ref(volumes, grid, interpolation="bilinear", padding_mode="zeros", align_corners=False):
    """Trilinear (`"bilinear"`) or nearest sampling of `(B, D, H, W, C)` volumes at a
    `(B, Do, Ho, Wo, 3)` grid of `(x, y, z)`, float64, one corner at a time."""
    volumes = np.asarray(volumes, np.float64)
    grid = np.asarray(grid, np.float64)
    batch, depth, height, width, channels = volumes.shape
    finite = np.isfinite(grid).all(axis=-1)
    grid = np.where(finite[..., None], grid, 0.0)
    x, y, z = (
        _pad(_unnormalize(grid[..., k], n, align_corners), n, padding_mode, align_corners)
        for k, n in enumerate((width, height, depth))
    )
    b = np.arange(batch).reshape(-1, 1, 1, 1) * np.ones_like(x, dtype=np.int64)
    if interpolation == "nearest":
        out = _read_3d(volumes, b, np.rint(z), np.rint(y), np.rint(x))
    else:
        x0, y0, z0 = np.floor(x), np.floor(y), np.floor(z)
        fx, fy, fz = x - x0, y - y0, z - z0
        out = np.zeros(x.shape + (channels,))
        for dz, wz in ((0, 1 - fz), (1, fz)):
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    out += (wx * wy * wz)[..., None] * _read_3d(volumes, b, z0 + dz, y0 + dy, x0 + dx)
    return out * finite[..., None]


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


class TorchResult(NamedTuple):
    """What `torch_reference` computed, as NumPy; `None` where it was not asked for."""

    output: np.ndarray | None  # the sampled images, in the layout of the inputs
    grid: np.ndarray  # the sampling grid (the given one, or `affine_grid` of theta)
    d_images: np.ndarray | None  # gradients of `sum(output * weights)`
    d_grid: np.ndarray | None
    d_theta: np.ndarray | None


def torch_reference(
    images=None,
    grid=None,
    interpolation="bilinear",
    padding_mode="zeros",
    align_corners=False,
    *,
    theta=None,
    size=None,
    weights=None,
    data_format="channels_last",
):
    """PyTorch's `grid_sample` of `images` (`(B, H, W, C)` images or `(B, D, H, W, C)` volumes,
    channels-first with `data_format="channels_first"`) at `grid`, or at `affine_grid(theta)` of
    `size` (by default the input's spatial size); theta is `(B, 2, 3)` / `(B, 6)` for images,
    `(B, 3, 4)` / `(B, 12)` for volumes. Without `images`, only the grid. With `weights` (in the
    output's layout), also the gradients of `sum(output * weights)` with respect to the images
    and to the grid or theta (`d_theta` with theta's shape as given). The arrays are used in
    their own dtype, on the CPU; skips the test where PyTorch is not installed."""
    import pytest

    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    if (grid is None) == (theta is None):
        raise ValueError("torch_reference: pass exactly one of `grid` and `theta`")
    channels_last = data_format == "channels_last"

    def to_torch(array):
        array = np.asarray(array)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1) if channels_last else array))

    def from_torch(tensor):
        array = tensor.detach().numpy()
        return np.moveaxis(array, 1, -1) if channels_last else array

    gradients = weights is not None
    images_t = None if images is None else to_torch(images).requires_grad_(gradients)
    if theta is not None:
        theta = np.asarray(theta)
        if size is None:
            size = images_t.shape[2:]
        rank = len(size)
        theta_t = torch.from_numpy(np.ascontiguousarray(theta.reshape(-1, rank, rank + 1))).requires_grad_(gradients)
        channels = 1 if images_t is None else images_t.shape[1]
        grid_t = functional.affine_grid(theta_t, (theta_t.shape[0], channels, *size), align_corners=align_corners)
        source = theta_t
    else:
        grid_t = source = torch.from_numpy(np.ascontiguousarray(grid)).requires_grad_(gradients)
    if images_t is None:
        return TorchResult(None, grid_t.detach().numpy(), None, None, None)
    out = functional.grid_sample(
        images_t, grid_t, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    output = from_torch(out)
    if not gradients:
        return TorchResult(output, grid_t.detach().numpy(), None, None, None)
    d_images, d_source = torch.autograd.grad((out * to_torch(weights)).sum(), (images_t, source))
    d_source = d_source.numpy()
    d_grid, d_theta = (None, d_source.reshape(theta.shape)) if theta is not None else (d_source, None)
    return TorchResult(output, grid_t.detach().numpy(), from_torch(d_images), d_grid, d_theta)
