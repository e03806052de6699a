"""Differentiable sampling of images (and volumes) at arbitrary (normalised) grid coordinates."""

import math

import keras
from keras import ops

from keras_stn import _checks
from keras_stn._layout import channels_first_axes, channels_last_axes, spatial_shape_of, with_spatial_shape
from keras_stn._typing import DataFormat, Interpolation, PaddingMode, Size, Tensor
from keras_stn.ops._backend import torch_kernel as native
from keras_stn.ops._backend.gather import gather_pixels
from keras_stn.ops._backend.xla import computed_once
from keras_stn.ops.grid import COORDINATE_BOUND, affine_pixel_coordinates, coordinate_dtype

__all__ = ["grid_sample", "affine_sample", "GridSample", "AffineSample"]

# Keys' cubic convolution constant used by PyTorch (and OpenCV) for bicubic sampling.
CUBIC_A = -0.75


def unnormalize(coord, size, align_corners):
    """Maps normalised `[-1, 1]` coordinates to pixel indices along an axis of `size` pixels."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def bound_finite(coord):
    """Clips finite normalised coordinates into +-`COORDINATE_BOUND`; NaN and inf pass through."""
    return ops.where(ops.isfinite(coord), ops.clip(coord, -COORDINATE_BOUND, COORDINATE_BOUND), coord)


def clip_to_image(coord, size):
    """`clip(coord, 0, size - 1)` with PyTorch's gradient: 1 strictly inside, 0 at or beyond the
    border. Each backend's own `clip` has its own gradient exactly on the border (1 under
    TensorFlow, 1/2 under JAX), where the identity warp puts the edge pixels, so without this
    the backends would train differently from the first step."""
    inside = (coord > 0) & (coord < size - 1)
    return ops.where(inside, coord, ops.stop_gradient(ops.clip(coord, 0, size - 1)))


def reflect(coord, size, align_corners):
    """Folds a pixel coordinate back into the image by mirroring at its borders.

    The mirror lines are the centres of the outer pixels with `align_corners=True` (period
    `2*(size-1)`) and their outer edges otherwise (period `2*size`). A single pixel wide axis
    with corners aligned has no extent to reflect over and maps everything to 0. The gradient
    is PyTorch's: +1 or -1 by the number of folds, +1 on a mirror line itself (where the
    backends' own gradients of `abs` differ).
    """
    low = 0.0 if align_corners else -0.5
    span = size - 1 if align_corners else size
    safe_span = ops.maximum(span, 1)
    offset = coord - low
    # `offset * sign` is `abs(offset)` exactly, with the gradient's sign fixed at 0.
    sign = ops.where(offset < 0, -ops.ones_like(offset), ops.ones_like(offset))
    distance = offset * sign
    extra = ops.mod(distance, safe_span)
    flips = ops.floor(distance / safe_span)
    reflected = ops.where(ops.mod(flips, 2) == 0, low + extra, low + span - extra)
    return ops.where(span > 0, reflected, ops.zeros_like(reflected))


def pad_coordinate(coord, size, padding_mode, align_corners):
    """Applies the padding mode to a pixel coordinate (zeros: unchanged, out-of-range reads 0)."""
    if padding_mode == "border":
        return clip_to_image(coord, size)
    if padding_mode == "reflection":
        return clip_to_image(reflect(coord, size, align_corners), size)
    return coord


def cubic_weights(t):
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position `t` in [0, 1)."""

    def near(d):  # |d| <= 1
        return ((CUBIC_A + 2) * d - (CUBIC_A + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((CUBIC_A * d - 5 * CUBIC_A) * d + 8 * CUBIC_A) * d - 4 * CUBIC_A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def axis_taps(coord, size, options):
    """The pixels one axis reads for each grid point: a list of `(index, weight)` pairs.

    `coord` is in pixels (0 is the centre of the first pixel). `index` is an int32 tensor
    clipped into `[0, size)` so that every gather stays in bounds whatever the coordinate;
    a tap that falls outside the image under zero padding gets weight 0 instead. Weights are
    `None` where they are identically 1.
    """
    interpolation, padding_mode, align_corners = options.interpolation, options.padding_mode, options.align_corners
    if interpolation == "bicubic":
        # As in PyTorch, bicubic pads each integer tap rather than the continuous coordinate.
        start = ops.floor(coord)
        positions = [pad_coordinate(start + k, size, padding_mode, align_corners) for k in (-1, 0, 1, 2)]
        weights = cubic_weights(coord - start)
    else:
        coord = pad_coordinate(coord, size, padding_mode, align_corners)
        if interpolation == "nearest":
            positions, weights = [ops.round(coord)], [None]  # round half to even, like nearbyint
        else:
            start = ops.floor(coord)
            fraction = coord - start
            positions, weights = [start, start + 1], [1 - fraction, fraction]

    taps = []
    for position, weight in zip(positions, weights):
        index = ops.cast(ops.clip(position, 0, size - 1), "int32")
        if padding_mode == "zeros":
            inside = ops.cast((position >= 0) & (position <= size - 1), position.dtype)
            weight = inside if weight is None else weight * inside
        taps.append((index, weight))
    return taps


def working_dtype(images_dtype, coordinates_dtype):
    """Dtype of coordinates and weights: float64 if either input is, float32 for half inputs."""
    if "float64" in (images_dtype, coordinates_dtype):
        return "float64"
    return coordinate_dtype(images_dtype)


def tap_products(axes, offset, weight):
    """Yields `(row, weight)` for every combination of one tap per axis.

    `axes` lists `(taps, stride)` from the slowest axis to the fastest (whose stride is `None`,
    i.e. 1); a row is `offset` (`None`: 0) plus each tap's index times its axis' stride, and its weight is
    `weight` times the taps' weights. Partial sums and products are shared between the
    combinations that have them in common, and each combination is produced only when the
    caller asks for it, so at most one row tensor per axis is alive at a time.
    """
    (taps, stride), *rest = axes
    for index, factor in taps:
        row = index if stride is None else index * stride
        row = row if offset is None else offset + row
        product = weight if factor is None else weight * factor
        if rest:
            yield from tap_products(rest, row, product)
        else:
            yield row, product


def sample_pixels(images, coordinates, options):
    """The sampler proper: channels-last `(B, *spatial, C)` images (2 or 3 spatial axes) read at
    pixel coordinates `coordinates`, one `(B, *out)` tensor per axis in the working dtype, `x`
    first (`[px, py]` or `[px, py, pz]`), as `options` (a `SamplingOptions`) say; returns
    `(B, *out, C)` in the images' dtype."""
    work = _checks.dtype_name(coordinates[0])
    batch, *spatial, channels = ops.shape(images)
    # Non-finite coordinates sample nothing (documented); replacing them first keeps NaN out
    # of the weights and of the gradients of every other grid point.
    finite = ops.isfinite(coordinates[0])
    for coordinate in coordinates[1:]:
        finite = ops.logical_and(finite, ops.isfinite(coordinate))
    coordinates = [ops.where(finite, c, ops.zeros_like(c)) for c in coordinates]
    finite = ops.cast(finite, work)
    if options.interpolation == "nearest":
        # Nearest has zero gradient with respect to the grid, but as in PyTorch its output is
        # connected to the grid, so that `backward()` from the grid alone works on torch.
        # `0 * c` is exactly 0 here (the coordinates are finite by now).
        for c in coordinates:
            finite = finite + 0 * c
    # Every tap's gather, weight and (backward) scatter derives from these: TensorFlow's XLA would
    # recompute them in each of those fusions, JAX's recomputes them cheaply (measured:
    # docs/performance.md, "Implementation choices").
    coordinates = [computed_once(c, backends=("tensorflow",)) for c in coordinates]
    finite = computed_once(finite, backends=("tensorflow",))

    taps = [axis_taps(c, ops.cast(size, work), options) for c, size in zip(coordinates, reversed(spatial))]

    # Gathering whole pixels (rows of each image's (H*W, C) view) keeps the index tensors at the
    # size of the grid instead of the size of the output times C. The shape is spelled out, not
    # inferred with -1, so that zero channels (or an empty batch) reshape too.
    pixels = ops.reshape(images, (batch, math.prod(spatial), channels))
    strides = [None]  # per coordinate, x first: 1, W, H * W
    for size in reversed(spatial[1:]):
        strides.append(size if strides[-1] is None else strides[-1] * size)
    output = None
    for rows, weight in tap_products(list(zip(taps, strides))[::-1], None, finite):
        values = ops.cast(gather_pixels(pixels, rows), work)
        term = values * ops.expand_dims(weight, -1)
        output = term if output is None else output + term
    return ops.cast(output, _checks.dtype_name(images))


def sample_in_layout(images, data_format, sample):
    """Runs `sample(channels_last_images)` and returns the result in `data_format`."""
    if data_format == "channels_first":
        rank = len(images.shape)
        return ops.transpose(sample(ops.transpose(images, channels_last_axes(rank))), channels_first_axes(rank))
    return sample(images)


def spatial_shape(channels_last):
    """The spatial sizes of a channels-last tensor: static ints where known, else scalar tensors."""
    static = tuple(channels_last.shape[1:-1])
    return tuple(s if s is not None else d for s, d in zip(static, ops.shape(channels_last)[1:-1]))


def grid_sample(
    images: Tensor,
    grid: Tensor,
    interpolation: Interpolation = "bilinear",
    padding_mode: PaddingMode = "zeros",
    align_corners: bool = False,
    data_format: DataFormat | None = None,
) -> Tensor:
    """Samples `images` (or volumes) at the normalised coordinates of `grid`, differentiably.

    Convention:
        `grid[b, i, j] = (x, y)` says where output pixel `(i, j)` of image `b` reads from, with
        `(-1, -1)` the top-left and `(1, 1)` the bottom-right of the input: the centres of the
        corner pixels with `align_corners=True`, their outer edges with `False`. The result is
        numerically the same as `torch.nn.functional.grid_sample` (images in channels-last by
        default, though), for every interpolation and padding mode. Gradients flow to both
        `images` and `grid`; `nearest` has zero gradient with respect to `grid`.

        Volumes work the same way with one more axis, as PyTorch's 5-D `grid_sample`: images
        `(B, D, H, W, C)`, grid `(B, D_out, H_out, W_out, 3)` whose last axis is `(x, y, z)`,
        `z` running along the depth. `"bilinear"` then interpolates trilinearly (8 voxels) and
        `"nearest"` picks the nearest voxel; `"bicubic"` is 2-D only and raises.

        Border behaviour (`padding_mode`): `"zeros"` reads 0 outside the image; `"border"`
        clamps coordinates to the edge pixels; `"reflection"` mirrors them back into the image.
        For `bicubic` the padding applies to each of the 16 taps, as in PyTorch.

        Coordinates far outside the image are handled by the padding mode and never read out
        of bounds. A grid point with a NaN or infinite coordinate samples nothing: its output
        is 0 in every mode and its gradients are 0 (PyTorch instead clamps `inf` under border
        padding and can return NaN for bicubic). Finite coordinates beyond `+-2**100`
        (about 1.3e30) are clipped to it first, so that none overflows when scaled to pixels:
        border padding reads the edge there as PyTorch does, and reflection (whose result that
        far out is set by float rounding anyway) reads some pixel of the image.

        Dtypes: images may be float16, bfloat16, float32 or float64 and the output keeps their
        dtype. Coordinates and interpolation weights are computed in float32 for half-precision
        inputs and in float64 when either input is float64. Integer images are rejected (cast
        them, e.g. `keras.ops.cast(images, "float32")`): implicit rounding of interpolated
        values back to integers would silently lose information and gradients.

    Args:
        images: `(B, H, W, C)` (channels_last) or `(B, C, H, W)` (channels_first) floats; for
            volumes `(B, D, H, W, C)` or `(B, C, D, H, W)`.
        grid: `(B, H_out, W_out, 2)` floats (`(B, D_out, H_out, W_out, 3)` for volumes); the
            output size is the grid's, independent of the input size.
        interpolation: `"bilinear"` (default; trilinear for volumes), `"nearest"` or
            `"bicubic"` (images only).
        padding_mode: `"zeros"` (default), `"border"` or `"reflection"`.
        align_corners: bool, see Convention.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(B, H_out, W_out, C)` (or `(B, C, H_out, W_out)` for channels_first) with the images'
        dtype; for volumes `(B, D_out, H_out, W_out, C)` (or `(B, C, D_out, H_out, W_out)`).

    Raises:
        ValueError: wrong ranks (images of rank 4 or 5 and a grid of the same rank), grid last
            dimension not 2 (3 for volumes), batch sizes that differ, an empty image, an
            unknown interpolation, padding mode or data format, or `"bicubic"` for volumes.
        TypeError: non-floating images or grid, non-bool align_corners.

    Examples:
        >>> import numpy as np
        >>> from keras_stn.ops import affine_grid
        >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
        >>> theta = np.tile(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (2, 1))
        >>> out = grid_sample(images, affine_grid(theta, (8, 8)))  # the identity warp
        >>> bool(np.allclose(keras.ops.convert_to_numpy(out), images, atol=1e-6))
        True
        >>> volumes = np.random.rand(2, 4, 8, 8, 1).astype("float32")
        >>> theta_3d = np.tile(np.eye(3, 4, dtype="float32"), (2, 1, 1))
        >>> out = grid_sample(volumes, affine_grid(theta_3d, (4, 8, 8)))
        >>> bool(np.allclose(keras.ops.convert_to_numpy(out), volumes, atol=1e-6))
        True
    """
    if _checks.is_symbolic(images, grid):  # the operation checks them (`compute_output_spec`)
        return GridSample(interpolation, padding_mode, align_corners, data_format)(images, grid)
    return sample_grid(images, grid, _checks.sampling_options(interpolation, padding_mode, align_corners, data_format))


def sample_grid(images: Tensor, grid: Tensor, options: _checks.SamplingOptions) -> Tensor:
    """`grid_sample` with validated `options` (a `SamplingOptions`): checks the tensors, samples."""
    images, image_shape, grid, _ = _checks.check_grid_sample(images, grid, options)
    if native.enabled(images):
        work = working_dtype(_checks.dtype_name(images), _checks.dtype_name(grid))
        return native.sample(images, grid, options, work)
    _checks.check_pixel_count(image_shape, options.data_format)

    def sample(channels_last):
        spatial = ops.shape(channels_last)[1:-1]
        work = working_dtype(_checks.dtype_name(channels_last), _checks.dtype_name(grid))
        coordinates = [
            unnormalize(bound_finite(ops.cast(grid[..., k], work)), ops.cast(size, work), options.align_corners)
            for k, size in enumerate(reversed(spatial))
        ]
        return sample_pixels(channels_last, coordinates, options)

    return sample_in_layout(images, options.data_format, sample)


def affine_sample(
    images: Tensor,
    theta: Tensor,
    size: Size | None = None,
    interpolation: Interpolation = "bilinear",
    padding_mode: PaddingMode = "zeros",
    align_corners: bool = False,
    data_format: DataFormat | None = None,
) -> Tensor:
    """Warps `images` (or volumes) by affine `theta`: `grid_sample(images, affine_grid(theta, size))`, fused.

    Convention:
        The same coordinate frame, modes, dtype rules and border behaviour as `affine_grid` and
        `grid_sample`. Instead of materialising the normalised grid, theta is turned into input
        pixel coordinates directly, which saves work and is exact where it matters: the identity
        theta returns the images bit for bit (for either `align_corners`), and translations
        by whole pixels are exact shifts up to one rounding of theta itself. Theta entries
        beyond `+-2**100` are clipped to it first, as grid coordinates are, so that none
        overflows the pixel coordinates: such a warp reads the padding far outside. Volumes
        (rank-5 images) take a `(B, 3, 4)` theta and a `(depth, height, width)` size.

    Args:
        images: `(B, H, W, C)` (channels_last) or `(B, C, H, W)` (channels_first) floats, or
            volumes `(B, D, H, W, C)` / `(B, C, D, H, W)`.
        theta: `(B, 2, 3)` or `(B, 6)` floats mapping output to input normalised coordinates;
            `(B, 3, 4)` or `(B, 12)` for volumes.
        size: output `(height, width)` (`(depth, height, width)` for volumes), positive ints;
            `None` keeps the input's.
        interpolation: `"bilinear"` (default; trilinear for volumes), `"nearest"` or
            `"bicubic"` (images only), as in `grid_sample`.
        padding_mode: `"zeros"` (default), `"border"` or `"reflection"`, as in `grid_sample`.
        align_corners: bool, as in `affine_grid` and `grid_sample`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(B, height, width, C)` (or `(B, depth, height, width, C)`; channels first if so
        asked) with the images' dtype.

    Raises:
        ValueError, TypeError: as `affine_grid` and `grid_sample` for the same arguments; a
            theta whose dimensionality is not the images' raises `ValueError`.

    Examples:
        >>> import numpy as np
        >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
        >>> shift_right = np.array([[1, 0, -0.25, 0, 1, 0]] * 2, "float32")  # 1 pixel of 8
        >>> out = keras.ops.convert_to_numpy(affine_sample(images, shift_right))
        >>> bool(np.allclose(out[:, :, 1:], images[:, :, :-1], atol=1e-6)), bool((out[:, :, 0] == 0).all())
        (True, True)
        >>> volumes = np.random.rand(2, 4, 8, 8, 1).astype("float32")
        >>> zoom_in = np.tile(np.diag([0.5, 0.5, 0.5, 1])[:3].astype("float32"), (2, 1, 1))
        >>> tuple(affine_sample(volumes, zoom_in, (2, 4, 4)).shape)  # the central half of each axis
        (2, 2, 4, 4, 1)
    """
    if _checks.is_symbolic(images, theta):  # the operation checks them (`compute_output_spec`)
        return AffineSample(size, interpolation, padding_mode, align_corners, data_format)(images, theta)
    options = _checks.sampling_options(interpolation, padding_mode, align_corners, data_format)
    images, _, theta, _, size = _checks.check_affine_sample(images, theta, size, options)
    return affine_sample_unchecked(images, theta, size, options)


def affine_sample_unchecked(
    images: Tensor, theta: Tensor, size: tuple | None, options: _checks.SamplingOptions
) -> Tensor:
    """`affine_sample` on validated arguments; `size` entries may be tensors, `None` = input's."""
    # Bounded like grid coordinates, so that a huge finite theta cannot overflow the pixel
    # coordinates to inf (which would read nothing instead of the padding).
    theta = bound_finite(theta)
    if native.enabled(images):
        work = working_dtype(_checks.dtype_name(images), _checks.dtype_name(theta))
        return native.affine_sample(images, theta, size, options, work)
    _checks.check_pixel_count(tuple(images.shape), options.data_format)

    def sample(channels_last):
        in_size = spatial_shape(channels_last)
        out_size = in_size if size is None else size
        work = working_dtype(_checks.dtype_name(channels_last), _checks.dtype_name(theta))
        coordinates = affine_pixel_coordinates(theta, in_size, out_size, options.align_corners, work)
        return sample_pixels(channels_last, coordinates, options)

    return sample_in_layout(images, options.data_format, sample)


def output_spec(images_shape, other_shape, out_spatial, data_format, dtype):
    """The `KerasTensor` a sampling op returns for symbolic inputs: `images`' channels and
    dtype, the batch of whichever input knows it, the spatial size `out_spatial`."""
    batch = images_shape[0] if images_shape[0] is not None else other_shape[0]
    return keras.KerasTensor(with_spatial_shape((batch, *images_shape[1:]), out_spatial, data_format), dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_stn")
class GridSample(keras.Operation):
    """`grid_sample` as a Keras operation: what a functional model records for it."""

    def __init__(
        self, interpolation="bilinear", padding_mode="zeros", align_corners=False, data_format=None, name=None
    ):
        super().__init__(name=name)
        self.options = _checks.sampling_options(interpolation, padding_mode, align_corners, data_format)

    def call(self, images, grid):
        return sample_grid(images, grid, self.options)

    def compute_output_spec(self, images, grid):
        images, image_shape, _, grid_shape = _checks.check_grid_sample(images, grid, self.options)
        return output_spec(image_shape, grid_shape, grid_shape[1:-1], self.options.data_format, images.dtype)


@keras.saving.register_keras_serializable(package="keras_stn")
class AffineSample(keras.Operation):
    """`affine_sample` as a Keras operation: what a functional model records for it."""

    def __init__(
        self,
        size=None,
        interpolation="bilinear",
        padding_mode="zeros",
        align_corners=False,
        data_format=None,
        name=None,
    ):
        super().__init__(name=name)
        self.size = None if size is None else tuple(size)
        self.options = _checks.sampling_options(interpolation, padding_mode, align_corners, data_format)

    def call(self, images, theta):
        images, _, theta, _, size = _checks.check_affine_sample(images, theta, self.size, self.options)
        return affine_sample_unchecked(images, theta, size, self.options)

    def compute_output_spec(self, images, theta):
        images, image_shape, _, theta_shape, size = _checks.check_affine_sample(images, theta, self.size, self.options)
        data_format = self.options.data_format
        out_spatial = spatial_shape_of(image_shape, data_format) if size is None else size
        return output_spec(image_shape, theta_shape, out_spatial, data_format, images.dtype)
