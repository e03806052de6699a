"""Argument checks of the transforms: the parameters' shape and dtype, the grid's size and
`align_corners`, the thin-plate spline's `grid_size` (in the transform, in `tps_grid` and in the
layer); each error names the argument and what it got."""

import re

import numpy as np
import pytest

import keras_stn
from helpers import AFFINE_NAMES, NUM_PARAMS, TRANSFORM_NAMES, transform_classes
from keras_stn import transforms
from keras_stn.ops import tps_grid

NAMES = TRANSFORM_NAMES
CLASSES = transform_classes()


@pytest.mark.parametrize(
    "name, method", [(name, "grid") for name in NAMES] + [(name, "to_theta") for name in AFFINE_NAMES]
)
def test_wrong_params_shape_raises_naming_params(name, method):
    transform = transforms.get(name)
    n = NUM_PARAMS[name]
    for shape in [(2, n + 1), (2, n - 1), (n,), (1, 1, n)]:
        params = np.zeros(shape, "float32")
        with pytest.raises(ValueError) as info:
            if method == "grid":
                transform.grid(params, (4, 4))
            else:
                transform.to_theta(params)
        message = str(info.value)
        assert "`params`" in message and f"(batch, {n})" in message, message
        assert f"Got params with shape {shape}" in message, message


@pytest.mark.parametrize("name", NAMES)
def test_integer_params_raise_type_error(name):
    with pytest.raises(TypeError, match=r"`params`.*floating.*Got params with dtype int32"):
        transforms.get(name).grid(np.zeros((1, NUM_PARAMS[name]), "int32"), (4, 4))


def test_grid_rejects_bad_size_and_align_corners():
    params = np.zeros((1, 2), "float32")
    translation = transforms.get("translation")
    with pytest.raises(ValueError, match=r"`size`.*Got size=\(0, 4\)"):
        translation.grid(params, (0, 4))
    with pytest.raises(TypeError, match=r"`size`.*Got size=\(4.0, 4\)"):
        translation.grid(params, (4.0, 4))
    with pytest.raises(TypeError, match=r"`align_corners` must be a bool. Got align_corners=1"):
        translation.grid(params, (4, 4), align_corners=1)


@pytest.mark.parametrize("transform, width", [("projective", 8), ("tps", 18)])
def test_wrong_params_width_or_dtype(transform, width):
    transform = transforms.get(transform)
    for shape in [(2, width - 1), (2, width + 2), (width,)]:
        with pytest.raises(
            ValueError, match=rf"`params`.*\(batch, {width}\)\. Got params with shape {re.escape(str(shape))}"
        ):
            transform.grid(np.zeros(shape, "float32"), (4, 4))
    with pytest.raises(TypeError, match=r"`params`.*floating.*Got params with dtype int32"):
        transform.grid(np.zeros((2, width), "int32"), (4, 4))


@pytest.mark.parametrize(
    "grid_size, error",
    [
        (1, ValueError),
        (0, ValueError),
        (-3, ValueError),
        (2.0, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_bad_grid_size(grid_size, error):
    message = rf"`grid_size` must be an integer >= 2\. Got grid_size={re.escape(repr(grid_size))}$"
    with pytest.raises(error, match=message):
        transforms.ThinPlateSpline(grid_size=grid_size)
    if grid_size is not None:
        with pytest.raises(error, match=message):
            tps_grid(np.zeros((1, 18), "float32"), (4, 4), grid_size=grid_size)
    with pytest.raises(error, match=message):
        keras_stn.SpatialTransformer(transform=transforms.ThinPlateSpline(grid_size=grid_size))
