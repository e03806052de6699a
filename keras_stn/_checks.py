"""Every argument check of the library: the ops, the transforms, the layers and the `stn` call.

Every check raises with a message that names the argument, says what was expected and ends in
"Got <what was given>", so a user can fix the call without reading the source. The checks read
shapes and dtypes only, so they serve eager tensors and the `KerasTensor`s of a functional model
alike (the ops' `compute_output_spec` calls the same function as their eager path).

The sampling options (interpolation, padding mode, align_corners, data format) are validated
once, into a `SamplingOptions`, which the samplers, the torch kernel, the transforms and the
layers pass along instead of four separate arguments.
"""

import dataclasses
import difflib
import math
import numbers

import keras
from keras import ops

from keras_stn._layout import LAYOUTS, spatial_shape_of

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
VOLUME_INTERPOLATIONS = ("bilinear", "nearest")  # bicubic is 2-D only, as in PyTorch
PADDING_MODES = ("zeros", "border", "reflection")
DATA_FORMATS = ("channels_last", "channels_first")


def is_symbolic(*values):
    """Whether any of `values` is a `keras.KerasTensor`: an input or output of a functional model
    under construction, which has a shape and dtype but no values."""
    return any(keras.utils.is_keras_tensor(x) for x in values)


def as_tensor(x):
    """`x` as a backend tensor for the checks to read its shape and dtype; a `KerasTensor` is left
    as it is (it has both, and converting it to a backend tensor fails)."""
    return x if keras.utils.is_keras_tensor(x) else keras.ops.convert_to_tensor(x)


def check_choice(name, value, choices):
    """Returns `value` if it is one of `choices`, else raises a `ValueError` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}. Got {name}={value!r}")
    return value


def closest(value, choices):
    """The choice closest in spelling to `value` (by `difflib`), or None when none is close:
    for a "did you mean" in an error message, never for accepting a value."""
    matches = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def standardize_data_format(data_format):
    """`None` means `keras.config.image_data_format()`; anything else must be a valid name."""
    if data_format is None:
        return keras.config.image_data_format()
    return check_choice("data_format", data_format, DATA_FORMATS)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Got {name}={value!r}")
    return value


SIZE_NAMES = {2: "a pair (height, width)", 3: "a triple (depth, height, width)"}


def check_size(name, size, ndim=2):
    """Validates a spatial size of `ndim` positive Python ints, `(H, W)` or `(D, H, W)`, and
    returns it as a tuple."""
    message = f"`{name}` must be {SIZE_NAMES[ndim]} of positive integers. Got {name}={size!r}"
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != ndim:
        raise ValueError(message)
    out = []
    for value in size:
        is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not is_int:
            raise TypeError(f"{message} containing {value!r} of type {type(value).__name__}")
        if value <= 0:
            raise ValueError(message)
        out.append(int(value))
    return tuple(out)


def check_integer(name, value, minimum):
    """Validates a Python (or NumPy) integer `>= minimum`, bools rejected; returns it as an int."""
    message = f"`{name}` must be an integer >= {minimum}. Got {name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(message)
    if value < minimum:
        raise ValueError(message)
    return int(value)


def check_optional_integer(name, value, minimum):
    """`None`, or an integer `>= minimum` as `check_integer` validates it."""
    if value is None:
        return None
    try:
        return check_integer(name, value, minimum)
    except (TypeError, ValueError) as error:
        raise type(error)(f"`{name}` must be None or an integer >= {minimum}. Got {name}={value!r}") from None


def check_positive_number(name, value):
    """Returns `value` as a float if it is a positive, finite real number, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a positive number. Got {name}={value!r} of type {type(value).__name__}")
    if not (0 < float(value) < float("inf")):
        raise ValueError(f"`{name}` must be a positive, finite number. Got {name}={value!r}")
    return float(value)


def dtype_name(x):
    return keras.backend.standardize_dtype(x.dtype)


def check_floating(name, x):
    """Raises a `TypeError` unless `x` has a floating dtype."""
    dtype = dtype_name(x)
    if "float" not in dtype:
        raise TypeError(
            f"`{name}` must have a floating dtype (float16, bfloat16, float32 or float64). "
            f"Got {name} with dtype {dtype}"
        )
    return dtype


def check_rank(name, x, rank, layout):
    shape = tuple(x.shape)
    if len(shape) != rank:
        raise ValueError(f"`{name}` must be a rank-{rank} tensor {layout}. Got {name} with shape {shape}")
    return shape


# ------------------------------------------------------------------------------ sampling options


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How a sampler reads: validated by `sampling_options`, then passed along as one value."""

    interpolation: str
    padding_mode: str
    align_corners: bool
    data_format: str


def sampling_options(interpolation, padding_mode, align_corners, data_format, interpolations=INTERPOLATIONS):
    """Validates the four sampling options (`data_format=None`: Keras's image data format)."""
    return SamplingOptions(
        check_choice("interpolation", interpolation, interpolations),
        check_choice("padding_mode", padding_mode, PADDING_MODES),
        check_bool("align_corners", align_corners),
        standardize_data_format(data_format),
    )


# ------------------------------------------------------------------------- affine thetas and sizes

THETA_SHAPES = {2: "(batch, 2, 3) or (batch, 6)", 3: "(batch, 3, 4) or (batch, 12)"}
SIZE_AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def check_theta(theta, name="theta", rows=2):
    """Returns `theta` as a `(B, rows, rows + 1)` tensor; accepts that shape or `(B, rows*(rows+1))`.
    A symbolic theta is checked and returned as it is (its output spec is computed from shapes)."""
    theta = as_tensor(theta)
    cols = rows + 1
    shape = tuple(theta.shape)
    flat_ok = len(shape) == 2 and shape[1] == rows * cols
    matrix_ok = len(shape) == 3 and shape[1:] == (rows, cols)
    if not (flat_ok or matrix_ok):
        raise ValueError(
            f"`{name}` must have shape (batch, {rows}, {cols}) or (batch, {rows * cols}). Got {name} with shape {shape}"
        )
    check_floating(name, theta)
    if flat_ok and not is_symbolic(theta):
        theta = ops.reshape(theta, (-1, rows, cols))
    return theta


def theta_ndim(shape):
    """Spatial dimensionality of an affine theta of this shape: 2 for `(B, 2, 3)`/`(B, 6)`, 3 for
    `(B, 3, 4)`/`(B, 12)`, `None` for anything else. The four shapes are distinct, so a theta
    always says which it is."""
    for rows in (2, 3):
        cols = rows + 1
        if (len(shape) == 2 and shape[1] == rows * cols) or (len(shape) == 3 and tuple(shape[1:]) == (rows, cols)):
            return rows
    return None


def size_ndim(size):
    """2 or 3 for a `size` of that length (whatever its entries), else `None`."""
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) not in (2, 3):
        return None
    return len(size)


def check_affine_grid(theta, size, align_corners):
    """Validates `affine_grid`'s arguments, whose dimensionality `theta` and `size` must agree on;
    returns theta as `(B, n, n + 1)` and size as a tuple of `n` ints."""
    theta = as_tensor(theta)
    shape = tuple(theta.shape)
    from_theta, from_size = theta_ndim(shape), size_ndim(size)
    if None not in (from_theta, from_size) and from_theta != from_size:
        expected = THETA_SHAPES[from_size]
        raise ValueError(
            f"`size` and `theta` must describe the same dimensionality: a {from_size}-D size "
            f"({', '.join(SIZE_AXES[from_size])}) needs theta of shape {expected}, a {from_theta}-D theta a size "
            f"({', '.join(SIZE_AXES[from_theta])}). Got size={size!r} and theta with shape {shape}"
        )
    ndim = from_theta or from_size or 2
    theta = check_theta(theta, rows=ndim)
    size = check_size("size", size, ndim)
    check_bool("align_corners", align_corners)
    return theta, size


# ---------------------------------------------------------------------------- images and grids

# The portable sampler indexes the pixels of each image with int32.
MAX_PIXELS_PER_IMAGE = 2**31


def check_pixel_count(images_shape, data_format):
    """Raises if one image (or volume) of `images_shape` has more pixels than the portable
    sampler's int32 indices reach; the batch may hold any number (the indices are per image)."""
    spatial = spatial_shape_of(images_shape, data_format)
    if None in spatial:
        return
    # The sizes themselves, not a generator of int(size): torch._dynamo breaks the graph on a
    # generator, and int() would specialise a symbolic size.
    count = math.prod(spatial)
    if count > MAX_PIXELS_PER_IMAGE:
        raise ValueError(
            f"`images` must have at most 2**31 = {MAX_PIXELS_PER_IMAGE} pixels per image for the portable "
            "sampler, which indexes them with int32 (PyTorch's kernel, the torch backend's default, has no "
            f"such limit). Got images with {count} pixels per image, spatial shape {spatial}"
        )


def check_images(images, data_format, name="images"):
    """Validates a batch of images (rank 4) or volumes (rank 5); returns it as a tensor plus its shape."""
    images = as_tensor(images)
    shape = tuple(images.shape)
    layouts = LAYOUTS[data_format]
    if len(shape) not in (4, 5):
        raise ValueError(
            f"`{name}` must be a rank-4 tensor {layouts[2]} or, for volumes, a rank-5 tensor {layouts[3]} "
            f"for data_format={data_format!r}. Got {name} with shape {shape}"
        )
    check_floating(name, images)
    spatial = spatial_shape_of(shape, data_format)
    if 0 in spatial:
        raise ValueError(f"`{name}` must have at least one pixel to sample from. Got {name} with shape {shape}")
    return images, shape


def check_volume_interpolation(interpolation, images_shape):
    """Bicubic sampling is 2-D only (as in PyTorch, whose 5-D grid_sample rejects it too)."""
    if len(images_shape) == 5 and interpolation == "bicubic":
        raise ValueError(
            "`interpolation` must be 'bilinear' (trilinear) or 'nearest' for volumes: bicubic sampling "
            f"is only defined for 2-D images. Got interpolation='bicubic' with images of shape {images_shape}"
        )


def check_grid(grid, images_shape, data_format):
    """Validates a grid for images of `images_shape`: rank and last dimension must match theirs."""
    grid = as_tensor(grid)
    shape = tuple(grid.shape)
    ndim = len(images_shape) - 2
    expected = "(B, H_out, W_out, 2)" if ndim == 2 else "(B, D_out, H_out, W_out, 3)"
    if len(shape) in (4, 5) and len(shape) != ndim + 2:
        raise ValueError(
            f"`images` of rank {ndim + 2}, {LAYOUTS[data_format][ndim]}, are sampled at a rank-{ndim + 2} `grid` "
            f"{expected}: images and volumes need grids of their own rank. "
            f"Got images with shape {images_shape} and grid with shape {shape}"
        )
    check_rank("grid", grid, ndim + 2, expected)
    if shape[-1] != ndim:
        axes = "(x, y)" if ndim == 2 else "(x, y, z)"
        raise ValueError(f"`grid` must have a last dimension of {ndim} {axes}. Got grid with shape {shape}")
    check_floating("grid", grid)
    return grid, shape


def check_batch(name, shape, other_name, other_shape):
    """Raises unless the two shapes' batch sizes agree (an unknown one agrees with any)."""
    if None not in (shape[0], other_shape[0]) and shape[0] != other_shape[0]:
        raise ValueError(
            f"`{name}` and `{other_name}` must have the same batch size. "
            f"Got {name} with shape {shape} and {other_name} with shape {other_shape}"
        )


def check_grid_sample(images, grid, options):
    """Validates `grid_sample`'s tensors for validated `options`, eager or symbolic; returns the
    images, their shape, the grid and its shape."""
    images, image_shape = check_images(images, options.data_format)
    check_volume_interpolation(options.interpolation, image_shape)
    grid, grid_shape = check_grid(grid, image_shape, options.data_format)
    check_batch("images", image_shape, "grid", grid_shape)
    return images, image_shape, grid, grid_shape


def check_affine_sample(images, theta, size, options):
    """Validates `affine_sample`'s tensors and size for validated `options`, eager or symbolic;
    returns the images, their shape, theta (`(B, n, n + 1)` when eager), its shape as given, and
    the size."""
    images, image_shape = check_images(images, options.data_format)
    check_volume_interpolation(options.interpolation, image_shape)
    ndim = len(image_shape) - 2
    theta = as_tensor(theta)
    theta_shape = tuple(theta.shape)
    if theta_ndim(theta_shape) not in (None, ndim):
        raise ValueError(
            f"`theta` must have shape {THETA_SHAPES[ndim]} for images of rank {ndim + 2}, "
            f"{LAYOUTS[options.data_format][ndim]}: a {ndim}-D warp. Got theta with shape {theta_shape} "
            f"and images with shape {image_shape}"
        )
    theta = check_theta(theta, rows=ndim)
    check_batch("images", image_shape, "theta", theta_shape)
    if size is not None:
        size = check_size("size", size, ndim)
    return images, image_shape, theta, theta_shape, size


def check_stn_call(input_fmap, theta, out_dims):
    """Validates `spatial_transformer_network`'s arguments (named as that call names them);
    returns them as tensors (theta `(B, 2, 3)` when eager) and the output size (None: the
    input's)."""
    input_fmap = as_tensor(input_fmap)
    check_rank("input_fmap", input_fmap, 4, "(B, H, W, C)")
    input_fmap, shape = check_images(input_fmap, "channels_last", name="input_fmap")
    theta = as_tensor(theta)
    theta_shape = tuple(theta.shape)
    theta = check_theta(theta)
    check_batch("input_fmap", shape, "theta", theta_shape)
    return input_fmap, theta, None if out_dims is None else check_size("out_dims", out_dims)


# ------------------------------------------------------------------------ thin-plate splines


def check_offsets(offsets, grid_size):
    """Returns `offsets` as a `(B, K*K, 2)` tensor and the lattice size `K` (inferred if None); a
    symbolic `offsets` is checked and returned as it is."""
    offsets = as_tensor(offsets)
    shape = tuple(offsets.shape)
    inferred = None
    if len(shape) == 2 and shape[1] is not None:
        side = math.isqrt(shape[1] // 2)
        inferred = side if shape[1] == 2 * side * side else None
    elif len(shape) == 4 and shape[1] == shape[2] and shape[3] == 2:
        inferred = shape[1]
    if grid_size is None:
        if inferred is None or inferred < 2:
            raise ValueError(
                "`offsets` must have shape (batch, 2 * K * K) or (batch, K, K, 2) for a lattice of "
                f"K >= 2 control points per side (e.g. (batch, 18) for K = 3). Got offsets with shape {shape}"
            )
    elif inferred != grid_size:
        raise ValueError(
            f"`offsets` must have shape (batch, {2 * grid_size**2}) or (batch, {grid_size}, {grid_size}, 2) "
            f"for grid_size={grid_size}. Got offsets with shape {shape}"
        )
    check_floating("offsets", offsets)
    assert inferred is not None  # every other case raised above
    if is_symbolic(offsets):
        return offsets, inferred
    return ops.reshape(offsets, (-1, inferred * inferred, 2)), inferred


def check_tps_grid(offsets, size, grid_size, align_corners):
    """Validates `tps_grid`'s arguments, eager or symbolic; returns the offsets, the lattice size
    `K` and the output height and width."""
    if grid_size is not None:
        grid_size = check_integer("grid_size", grid_size, minimum=2)
    offsets, grid_size = check_offsets(offsets, grid_size)
    height, width = check_size("size", size)
    check_bool("align_corners", align_corners)
    return offsets, grid_size, height, width


# ------------------------------------------------------------------------------ transforms


def check_params(transform, params):
    """Returns `params` as a tensor if it is a float `(batch, transform.num_params)` batch."""
    params = ops.convert_to_tensor(params)
    shape = tuple(params.shape)
    if len(shape) != 2 or shape[1] != transform.num_params:
        name = transform.name
        kind = f"{name!r}" if transform.spatial_rank == 2 else f"{transform.spatial_rank}-D {name!r}"
        raise ValueError(
            f"`params` of the {kind} transform must have shape (batch, {transform.num_params}). "
            f"Got params with shape {shape}"
        )
    check_floating("params", params)
    return params


# ---------------------------------------------------------------------------------- layers


def check_localization(localization):
    if localization is not None and not isinstance(localization, keras.layers.Layer):
        raise TypeError(
            "`localization` must be a Keras layer or model (or None for the default CNN). "
            f"Got localization={localization!r}"
        )
    return localization


def check_features_shape(features_shape, input_shape):
    """The localization net's output must be `(batch, features)` with a known feature count."""
    if len(features_shape) != 2 or features_shape[-1] is None:
        raise ValueError(
            "`localization` must map the input to a (batch, features) tensor with a known "
            f"number of features. Got output shape {features_shape} for input shape {tuple(input_shape)}"
        )


def check_input_rank(layer_name, shape, spatial_rank, data_format):
    """Raises unless `shape` has rank `spatial_rank + 2`, with hints for the common mistakes: a
    single example without its batch axis, a missing channel axis, or the other layer's rank."""
    rank = spatial_rank + 2
    if len(shape) == rank:
        return
    kind, axes = ("images", "height, width") if spatial_rank == 2 else ("volumes", "depth, height, width")
    layout = f"(batch, {axes}, channels)" if data_format == "channels_last" else f"(batch, channels, {axes})"
    hints = []
    if len(shape) == rank - 1:
        if shape[0] is not None:  # a symbolic batch axis rules out a single example
            example = kind[:-1]
            hints.append(f"for a single {example} add a batch axis, e.g. `x[None]` or `keras.ops.expand_dims(x, 0)`")
        channel = "`x[..., None]`" if data_format == "channels_last" else "`x[:, None]`"
        hints.append(f"for {kind} without channels add a channel axis, e.g. {channel}")
    other_kind, other_layer = (
        ("volumes", "SpatialTransformer3D") if spatial_rank == 2 else ("images", "SpatialTransformer")
    )
    if len(shape) == (5 if spatial_rank == 2 else 4):
        hints.append(f"for a batch of {other_kind} use `{other_layer}`")
    raise ValueError(
        f"`inputs` of {layer_name} must be a rank-{rank} batch of {kind} {layout}"
        f"{''.join(f'; {hint}' for hint in hints)}. Got inputs with shape {shape}"
    )


def check_static_spatial(spatial, input_shape, rank):
    """The default localization net ends in a dense layer: it needs every spatial size."""
    if None in spatial:
        axes = "height and width" if rank == 2 else "depth, height and width"
        raise ValueError(
            f"The default localization network needs a static {axes} (it ends in a "
            "dense layer); pass `localization=` a network that handles variable sizes, e.g. one "
            f"ending in GlobalAveragePooling{rank}D. Got input shape {tuple(input_shape)}"
        )


def check_units(units):
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"`units` must be a positive integer. Got units={units!r}")
    return units
