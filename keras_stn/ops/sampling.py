"""Differentiable sampling of images at arbitrary (normalised) grid coordinates."""

from keras import ops

from keras_stn import _validation as v
from keras_stn.ops.grid import affine_pixel_coordinates, check_theta, compute_dtype

# Keys' cubic convolution constant used by PyTorch (and OpenCV) for bicubic sampling.
CUBIC_A = -0.75


def unnormalize(coord, size, align_corners):
    """Maps normalised `[-1, 1]` coordinates to pixel indices along an axis of `size` pixels."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def reflect(coord, size, align_corners):
    """Folds a pixel coordinate back into the image by mirroring at its borders.

    The mirror lines are the centres of the outer pixels with `align_corners=True` (period
    `2*(size-1)`) and their outer edges otherwise (period `2*size`). A single pixel wide axis
    with corners aligned has no extent to reflect over and maps everything to 0.
    """
    low = 0.0 if align_corners else -0.5
    span = size - 1 if align_corners else size
    safe_span = ops.maximum(span, 1)
    distance = ops.abs(coord - low)
    extra = ops.mod(distance, safe_span)
    flips = ops.floor(distance / safe_span)
    reflected = ops.where(ops.mod(flips, 2) == 0, low + extra, low + span - extra)
    return ops.where(span > 0, reflected, ops.zeros_like(reflected))


def pad_coordinate(coord, size, padding_mode, align_corners):
    """Applies the padding mode to a pixel coordinate (zeros: unchanged, out-of-range reads 0)."""
    if padding_mode == "border":
        return ops.clip(coord, 0, size - 1)
    if padding_mode == "reflection":
        return ops.clip(reflect(coord, size, align_corners), 0, size - 1)
    return coord


def cubic_weights(t):
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position `t` in [0, 1)."""

    def near(d):  # |d| <= 1
        return ((CUBIC_A + 2) * d - (CUBIC_A + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((CUBIC_A * d - 5 * CUBIC_A) * d + 8 * CUBIC_A) * d - 4 * CUBIC_A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def axis_taps(coord, size, interpolation, padding_mode, align_corners):
    """The pixels one axis reads for each grid point: a list of `(index, weight)` pairs.

    `coord` is in pixels (0 is the centre of the first pixel). `index` is an int32 tensor
    clipped into `[0, size)` so that every gather stays in bounds whatever the coordinate;
    a tap that falls outside the image under zero padding gets weight 0 instead. Weights are
    `None` where they are identically 1.
    """
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
    return compute_dtype(images_dtype)


def sample_pixels(images, px, py, interpolation, padding_mode, align_corners):
    """The sampler proper: `(B, H, W, C)` images read at pixel coordinates `px`, `py`
    (each `(B, Ho, Wo)`, in the working dtype); returns `(B, Ho, Wo, C)` in the images' dtype."""
    work = v.dtype_name(px)
    batch, height, width, channels = ops.shape(images)
    if isinstance(batch, int) and batch == 0:
        # jnp.take on an empty source drops the index shape; an empty batch has nothing to read.
        return ops.zeros((0, *px.shape[1:], channels), v.dtype_name(images))
    # Non-finite coordinates sample nothing (documented); replacing them first keeps NaN out
    # of the weights and of the gradients of every other grid point.
    finite = ops.logical_and(ops.isfinite(px), ops.isfinite(py))
    px = ops.where(finite, px, ops.zeros_like(px))
    py = ops.where(finite, py, ops.zeros_like(py))
    finite = ops.cast(finite, work)

    x_taps = axis_taps(px, ops.cast(width, work), interpolation, padding_mode, align_corners)
    y_taps = axis_taps(py, ops.cast(height, work), interpolation, padding_mode, align_corners)

    # Gathering whole pixels (rows of a (B*H*W, C) view) keeps the index tensors at the size
    # of the grid instead of the size of the output times C.
    pixels = ops.reshape(images, (-1, channels))
    batch_offset = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    output = None
    for y_index, y_weight in y_taps:
        row_offset = batch_offset + y_index * width
        for x_index, x_weight in x_taps:
            weight = finite
            for factor in (y_weight, x_weight):
                if factor is not None:
                    weight = weight * factor
            values = ops.cast(ops.take(pixels, row_offset + x_index, axis=0), work)
            term = values * ops.expand_dims(weight, -1)
            output = term if output is None else output + term
    return ops.cast(output, v.dtype_name(images))


def check_images(images, data_format):
    """Validates an image batch; returns it as a tensor plus its shape."""
    images = ops.convert_to_tensor(images)
    layout = "(B, H, W, C)" if data_format == "channels_last" else "(B, C, H, W)"
    shape = v.check_rank("images", images, 4, f"{layout} for data_format={data_format!r}")
    v.check_floating("images", images)
    spatial = shape[1:3] if data_format == "channels_last" else shape[2:4]
    if 0 in spatial:
        raise ValueError(f"`images` must have at least one pixel to sample from. Got images with shape {shape}")
    return images, shape


def check_batch(images_shape, other_name, other_shape):
    if None not in (images_shape[0], other_shape[0]) and images_shape[0] != other_shape[0]:
        raise ValueError(
            f"`images` and `{other_name}` must have the same batch size. "
            f"Got images with shape {images_shape} and {other_name} with shape {other_shape}"
        )


def check_modes(interpolation, padding_mode, align_corners, data_format):
    v.check_choice("interpolation", interpolation, v.INTERPOLATIONS)
    v.check_choice("padding_mode", padding_mode, v.PADDING_MODES)
    v.check_bool("align_corners", align_corners)
    return v.standardize_data_format(data_format)


def sample_in_layout(images, data_format, sample):
    """Runs `sample(channels_last_images)` and returns the result in `data_format`."""
    if data_format == "channels_first":
        return ops.transpose(sample(ops.transpose(images, (0, 2, 3, 1))), (0, 3, 1, 2))
    return sample(images)


def grid_sample(
    images,
    grid,
    interpolation="bilinear",
    padding_mode="zeros",
    align_corners=False,
    data_format=None,
):
    """Samples `images` at the normalised coordinates of `grid`, differentiably.

    Convention:
        `grid[b, i, j] = (x, y)` says where output pixel `(i, j)` of image `b` reads from, with
        `(-1, -1)` the top-left and `(1, 1)` the bottom-right of the input: the centres of the
        corner pixels with `align_corners=True`, their outer edges with `False`. The result is
        numerically the same as `torch.nn.functional.grid_sample` (images in channels-last by
        default, though), for every interpolation and padding mode. Gradients flow to both
        `images` and `grid`; `nearest` has zero gradient with respect to `grid`.

        Border behaviour (`padding_mode`): `"zeros"` reads 0 outside the image; `"border"`
        clamps coordinates to the edge pixels; `"reflection"` mirrors them back into the image.
        For `bicubic` the padding applies to each of the 16 taps, as in PyTorch.

        Coordinates far outside the image, however large, are handled by the padding mode and
        never read out of bounds. A grid point with a NaN or infinite coordinate samples
        nothing: its output is 0 in every mode and its gradients are 0 (PyTorch instead clamps
        `inf` under border padding and can return NaN for bicubic).

        Dtypes: images may be float16, bfloat16, float32 or float64 and the output keeps their
        dtype. Coordinates and interpolation weights are computed in float32 for half-precision
        inputs and in float64 when either input is float64. Integer images are rejected (cast
        them, e.g. `keras.ops.cast(images, "float32")`): implicit rounding of interpolated
        values back to integers would silently lose information and gradients.

    Args:
        images: `(B, H, W, C)` (channels_last) or `(B, C, H, W)` (channels_first) floats.
        grid: `(B, H_out, W_out, 2)` floats; the output size is the grid's, independent of
            the input size.
        interpolation: `"bilinear"` (default), `"nearest"` or `"bicubic"`.
        padding_mode: `"zeros"` (default), `"border"` or `"reflection"`.
        align_corners: bool, see Convention.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(B, H_out, W_out, C)` (or `(B, C, H_out, W_out)` for channels_first) with the images'
        dtype.

    Raises:
        ValueError: wrong ranks, grid last dimension not 2, batch sizes that differ, an empty
            image, or an unknown interpolation, padding mode or data format.
        TypeError: non-floating images or grid, non-bool align_corners.

    Example:
        >>> import numpy as np
        >>> from keras_stn.ops import affine_grid
        >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
        >>> theta = np.tile(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (2, 1))
        >>> out = grid_sample(images, affine_grid(theta, (8, 8)))  # == images
    """
    data_format = check_modes(interpolation, padding_mode, align_corners, data_format)
    images, image_shape = check_images(images, data_format)
    grid = ops.convert_to_tensor(grid)
    grid_shape = v.check_rank("grid", grid, 4, "(B, H_out, W_out, 2)")
    if grid_shape[-1] != 2:
        raise ValueError(f"`grid` must have a last dimension of 2 (x, y). Got grid with shape {grid_shape}")
    v.check_floating("grid", grid)
    check_batch(image_shape, "grid", grid_shape)

    def sample(channels_last):
        _, height, width, _ = ops.shape(channels_last)
        work = working_dtype(v.dtype_name(channels_last), v.dtype_name(grid))
        px = unnormalize(ops.cast(grid[..., 0], work), ops.cast(width, work), align_corners)
        py = unnormalize(ops.cast(grid[..., 1], work), ops.cast(height, work), align_corners)
        return sample_pixels(channels_last, px, py, interpolation, padding_mode, align_corners)

    return sample_in_layout(images, data_format, sample)


def affine_sample(
    images,
    theta,
    size=None,
    interpolation="bilinear",
    padding_mode="zeros",
    align_corners=False,
    data_format=None,
):
    """Warps `images` by affine `theta`: `grid_sample(images, affine_grid(theta, size))`, fused.

    Convention:
        The same coordinate frame, modes, dtype rules and border behaviour as `affine_grid` and
        `grid_sample`. Instead of materialising the normalised grid, theta is turned into input
        pixel coordinates directly, which saves work and is exact where it matters: the identity
        theta returns the images bit for bit (for either `align_corners`), and translations
        by whole pixels are exact shifts up to one rounding of theta itself.

    Args:
        images: `(B, H, W, C)` (channels_last) or `(B, C, H, W)` (channels_first) floats.
        theta: `(B, 2, 3)` or `(B, 6)` floats mapping output to input normalised coordinates.
        size: output `(height, width)`, positive ints; `None` keeps the input's.
        interpolation, padding_mode, align_corners, data_format: as in `grid_sample`.

    Returns:
        `(B, height, width, C)` (or channels_first) with the images' dtype.

    Raises:
        ValueError, TypeError: as `affine_grid` and `grid_sample` for the same arguments.

    Example:
        >>> import numpy as np
        >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
        >>> shift_right = np.array([[1, 0, -0.25, 0, 1, 0]] * 2, "float32")  # 1 pixel of 8
        >>> out = affine_sample(images, shift_right)
    """
    data_format = check_modes(interpolation, padding_mode, align_corners, data_format)
    images, image_shape = check_images(images, data_format)
    theta = ops.convert_to_tensor(theta)
    theta_shape = tuple(theta.shape)
    theta = check_theta(theta)
    check_batch(image_shape, "theta", theta_shape)
    if size is not None:
        size = v.check_size("size", size)
    return affine_sample_unchecked(images, theta, size, interpolation, padding_mode, align_corners, data_format)


def affine_sample_unchecked(images, theta, size, interpolation, padding_mode, align_corners, data_format):
    """`affine_sample` on validated arguments; `size` entries may be tensors, `None` = input's."""

    def sample(channels_last):
        static = tuple(channels_last.shape[1:3])
        in_size = tuple(s if s is not None else d for s, d in zip(static, ops.shape(channels_last)[1:3]))
        out_size = in_size if size is None else size
        work = working_dtype(v.dtype_name(channels_last), v.dtype_name(theta))
        px, py = affine_pixel_coordinates(theta, in_size, out_size, align_corners, work)
        return sample_pixels(channels_last, px, py, interpolation, padding_mode, align_corners)

    return sample_in_layout(images, data_format, sample)
