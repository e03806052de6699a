"""Argument checks shared by the public functions and layers.

Every check raises with a message that names the argument, says what was expected and ends in
"Got <what was given>", so a user can fix the call without reading the source.
"""

import difflib
import numbers

import keras

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
    if not (0 < value < float("inf")):
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
