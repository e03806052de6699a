"""Argument checks of the ops (`affine_grid`, `grid_sample`, `affine_sample`, `tps_grid`), for
images and volumes: each bad argument raises a ValueError or TypeError that names the argument,
says what was expected and what it got (`Got ...`). Non-floating dtypes are in
test_ops_dtypes.py, the checks on symbolic inputs in test_ops_symbolic.py."""

import re

import numpy as np
import pytest

from helpers import DOWN, IN_SIZE, INTERPOLATIONS, PADDING_MODES, both_ranks, identity_theta, per_rank
from keras_stn.ops import affine_grid, affine_sample, grid_sample, tps_grid

# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

IMAGES = np.zeros((2, *IN_SIZE, 3), "float32")
GRID = np.zeros((2, 4, 4, 2), "float32")
THETA = identity_theta(2)
MODES = [*map(repr, INTERPOLATIONS)]
PADDINGS = [*map(repr, PADDING_MODES)]
FORMATS = ["'channels_last'", "'channels_first'"]


def zeros(*shape):
    return np.zeros(shape, "float32")


# name: (call, exception, arguments named in the message, other words the message must contain)
INVALID_CALLS_2D = {
    "affine_grid theta (B,3,3)": (lambda: affine_grid(zeros(2, 3, 3), (4, 4)), ValueError, ["theta"], ["(2, 3, 3)"]),
    "affine_grid theta (B,5)": (lambda: affine_grid(zeros(2, 5), (4, 4)), ValueError, ["theta"], ["(2, 5)"]),
    "affine_grid theta rank 1": (lambda: affine_grid(zeros(6), (4, 4)), ValueError, ["theta"], ["(6,)"]),
    "affine_grid theta rank 4": (lambda: affine_grid(zeros(1, 1, 2, 3), (4, 4)), ValueError, ["theta"], []),
    "affine_sample theta (B,3,3)": (lambda: affine_sample(IMAGES, zeros(2, 3, 3)), ValueError, ["theta"], []),
    "affine_sample theta (B,5)": (lambda: affine_sample(IMAGES, zeros(2, 5)), ValueError, ["theta"], []),
    "affine_sample theta rank 1": (lambda: affine_sample(IMAGES, zeros(6)), ValueError, ["theta"], []),
    "grid_sample images rank 3": (lambda: grid_sample(IMAGES[0], GRID), ValueError, ["images"], ["(8, 12, 3)"]),
    "grid_sample images rank 5": (lambda: grid_sample(IMAGES[None], GRID), ValueError, ["images"], []),
    "affine_sample images rank 3": (lambda: affine_sample(IMAGES[0], THETA), ValueError, ["images"], []),
    "grid_sample empty images": (
        lambda: grid_sample(zeros(2, 0, 6, 3), GRID),
        ValueError,
        ["images"],
        ["(2, 0, 6, 3)"],
    ),
    "grid last dim 3": (lambda: grid_sample(IMAGES, zeros(2, 4, 4, 3)), ValueError, ["grid"], ["(2, 4, 4, 3)"]),
    "grid last dim 1": (lambda: grid_sample(IMAGES, zeros(2, 4, 4, 1)), ValueError, ["grid"], []),
    "grid rank 3": (lambda: grid_sample(IMAGES, zeros(2, 16, 2)), ValueError, ["grid"], ["(2, 16, 2)"]),
    "grid batch mismatch": (
        lambda: grid_sample(IMAGES, GRID[:1]),
        ValueError,
        ["grid"],
        ["(1, 4, 4, 2)", "(2, 8, 12, 3)"],
    ),
    "theta batch mismatch": (lambda: affine_sample(IMAGES, zeros(3, 2, 3)), ValueError, ["theta"], ["(3, 2, 3)"]),
    "grid_sample interpolation": (
        lambda: grid_sample(IMAGES, GRID, interpolation="linear"),
        ValueError,
        ["interpolation"],
        ["'linear'", *MODES],
    ),
    "affine_sample interpolation": (
        lambda: affine_sample(IMAGES, THETA, interpolation="Bilinear"),
        ValueError,
        ["interpolation"],
        ["'Bilinear'", *MODES],
    ),
    "grid_sample padding_mode": (
        lambda: grid_sample(IMAGES, GRID, padding_mode="constant"),
        ValueError,
        ["padding_mode"],
        ["'constant'", *PADDINGS],
    ),
    "affine_sample padding_mode": (
        lambda: affine_sample(IMAGES, THETA, padding_mode=None),
        ValueError,
        ["padding_mode"],
        ["None", *PADDINGS],
    ),
    "grid_sample data_format": (
        lambda: grid_sample(IMAGES, GRID, data_format="NHWC"),
        ValueError,
        ["data_format"],
        ["'NHWC'", *FORMATS],
    ),
    "affine_sample data_format": (
        lambda: affine_sample(IMAGES, THETA, data_format="channels-last"),
        ValueError,
        ["data_format"],
        FORMATS,
    ),
    "grid_sample align_corners int": (
        lambda: grid_sample(IMAGES, GRID, align_corners=1),
        TypeError,
        ["align_corners"],
        ["1"],
    ),
    "grid_sample align_corners str": (
        lambda: grid_sample(IMAGES, GRID, align_corners="True"),
        TypeError,
        ["align_corners"],
        ["'True'"],
    ),
    "affine_sample align_corners None": (
        lambda: affine_sample(IMAGES, THETA, align_corners=None),
        TypeError,
        ["align_corners"],
        ["None"],
    ),
    "affine_grid align_corners int": (
        lambda: affine_grid(THETA, (4, 4), align_corners=0),
        TypeError,
        ["align_corners"],
        [],
    ),
}
SIZE_OPS = {
    "affine_grid": lambda size: affine_grid(THETA, size),
    "affine_sample": lambda size: affine_sample(IMAGES, THETA, size),
}
BAD_SIZES = [
    ("zero", (0, 4), ValueError),
    ("negative", (4, -2), ValueError),
    ("float", (4.0, 4), TypeError),
    ("fractional", (4, 2.5), TypeError),
    ("bool", (True, 4), TypeError),
    ("string entry", ("4", 4), TypeError),
    ("length 1", (4,), ValueError),
    ("length 3", (4, 4, 4), ValueError),
    ("scalar", 4, ValueError),
    ("string", "44", ValueError),
]
for fn_name, fn in SIZE_OPS.items():
    for label, size, error in BAD_SIZES:
        INVALID_CALLS_2D[f"{fn_name} size {label}"] = ((lambda fn=fn, size=size: fn(size)), error, ["size"], [])


# --------------------------------------------------------------------------------------------
# Volumes, and warps of the other rank
# --------------------------------------------------------------------------------------------

VOLUME_SHAPE = (2, 4, 5, 6, 2)
OUT = (3, 4, 5)
VOLUMES = np.zeros(VOLUME_SHAPE, "float32")
SMALL_IMAGES = np.zeros((2, 5, 6, 2), "float32")
GRID_3D = np.zeros((2, *OUT, 3), "float32")
THETA_3D = np.zeros((2, 3, 4), "float32")
THETA_2D = np.zeros((2, 2, 3), "float32")

INVALID_CALLS_3D = {
    "grid_sample bicubic": (
        lambda: grid_sample(VOLUMES, GRID_3D, "bicubic"),
        ValueError,
        ["interpolation"],
        ["'bilinear'", "'nearest'", "Got interpolation='bicubic'", str(VOLUME_SHAPE)],
    ),
    "affine_sample bicubic": (
        lambda: affine_sample(VOLUMES, THETA_3D, interpolation="bicubic"),
        ValueError,
        ["interpolation"],
        [],
    ),
    "affine_grid 2-D theta, 3-D size": (
        lambda: affine_grid(THETA_2D, OUT),
        ValueError,
        ["size", "theta"],
        ["(batch, 3, 4) or (batch, 12)", "size=(3, 4, 5)", "(2, 2, 3)"],
    ),
    "affine_grid flat 2-D theta, 3-D size": (
        lambda: affine_grid(np.zeros((2, 6), "float32"), OUT),
        ValueError,
        ["size", "theta"],
        [],
    ),
    "affine_grid 3-D theta, 2-D size": (
        lambda: affine_grid(THETA_3D, (4, 5)),
        ValueError,
        ["size", "theta"],
        ["(batch, 2, 3) or (batch, 6)", "size=(4, 5)", "(2, 3, 4)"],
    ),
    "affine_grid theta (B,3,3), 3-D size": (
        lambda: affine_grid(np.zeros((2, 3, 3), "float32"), OUT),
        ValueError,
        ["theta"],
        ["(batch, 3, 4) or (batch, 12)", "(2, 3, 3)"],
    ),
    "affine_grid theta (B,11)": (
        lambda: affine_grid(np.zeros((2, 11), "float32"), OUT),
        ValueError,
        ["theta"],
        ["(2, 11)"],
    ),
    "affine_grid 3-D theta, size of 4": (
        lambda: affine_grid(THETA_3D, (3, 4, 5, 6)),
        ValueError,
        ["size"],
        ["(depth, height, width)"],
    ),
    "affine_grid 3-D theta, float size": (lambda: affine_grid(THETA_3D, (3, 4.0, 5)), TypeError, ["size"], []),
    "affine_sample 2-D theta for volumes": (
        lambda: affine_sample(VOLUMES, THETA_2D),
        ValueError,
        ["theta"],
        ["(batch, 3, 4) or (batch, 12)", str(VOLUME_SHAPE)],
    ),
    "affine_sample 3-D theta for images": (
        lambda: affine_sample(SMALL_IMAGES, THETA_3D),
        ValueError,
        ["theta"],
        ["(batch, 2, 3) or (batch, 6)", "(2, 3, 4)"],
    ),
    "affine_sample 2-D size for volumes": (
        lambda: affine_sample(VOLUMES, THETA_3D, (4, 5)),
        ValueError,
        ["size"],
        ["(depth, height, width)", "size=(4, 5)"],
    ),
    "grid_sample rank-4 grid for volumes": (
        lambda: grid_sample(VOLUMES, np.zeros((2, 4, 5, 2), "float32")),
        ValueError,
        ["images", "grid"],
        [str(VOLUME_SHAPE), "(2, 4, 5, 2)"],
    ),
    "grid_sample rank-5 grid for images": (
        lambda: grid_sample(SMALL_IMAGES, GRID_3D),
        ValueError,
        ["images", "grid"],
        [],
    ),
    "grid_sample grid last dim 2 for volumes": (
        lambda: grid_sample(VOLUMES, np.zeros((2, *OUT, 2), "float32")),
        ValueError,
        ["grid"],
        ["last dimension of 3 (x, y, z)"],
    ),
    "grid_sample rank-6 images": (lambda: grid_sample(VOLUMES[None], GRID_3D), ValueError, ["images"], ["rank-5"]),
    "grid_sample empty volume": (
        lambda: grid_sample(np.zeros((2, 4, 0, 6, 2), "float32"), GRID_3D),
        ValueError,
        ["images"],
        [],
    ),
    "grid_sample batch mismatch": (lambda: grid_sample(VOLUMES, GRID_3D[:1]), ValueError, ["grid"], []),
}


INVALID_CALLS = {2: INVALID_CALLS_2D, 3: INVALID_CALLS_3D}


@per_rank("case", lambda rank: list(INVALID_CALLS[rank]))
def test_invalid_arguments_raise_with_a_clear_message(rank, case):
    call, error, names, words = INVALID_CALLS[rank][case]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in names:
        assert f"`{name}`" in message, message
    assert "Got" in message, message
    for word in words:
        assert word in message, (word, message)


@both_ranks
def test_valid_sizes_accept_numpy_integers(rank):
    size = {2: DOWN, 3: OUT}[rank]
    numpy_size = (np.int64(size[0]), *size[1:-1], np.int32(size[-1]))
    theta = identity_theta(2, rank)
    grid = affine_grid(theta, numpy_size)
    assert tuple(grid.shape) == (2, *size, rank)
    images = IMAGES if rank == 2 else VOLUMES
    out = affine_sample(images, theta, [np.int64(size[0]), *size[1:]])
    assert tuple(out.shape) == (2, *size, images.shape[-1])


# --------------------------------------------------------------------------------------------
# tps_grid (its `grid_size` is checked with the ThinPlateSpline transform's, in
# tests/transforms/test_transforms_validation.py)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 17), (2, 2), (2, 0), (18,), (2, 3, 3), (2, 3, 4, 2), (2, 3, 3, 3), (2, 1, 1, 2)])
def test_tps_grid_rejects_offsets_of_no_lattice(shape):
    with pytest.raises(
        ValueError, match=rf"`offsets` must have shape .*K >= 2.*Got offsets with shape {re.escape(str(shape))}"
    ):
        tps_grid(np.zeros(shape, "float32"), (4, 4))


def test_tps_grid_rejects_offsets_that_do_not_match_grid_size():
    with pytest.raises(ValueError) as info:
        tps_grid(np.zeros((1, 18), "float32"), (4, 4), grid_size=4)
    message = str(info.value)
    assert "(batch, 32) or (batch, 4, 4, 2) for grid_size=4" in message and message.endswith(
        "Got offsets with shape (1, 18)"
    )


def test_tps_grid_rejects_integer_offsets_and_bad_size():
    with pytest.raises(TypeError, match=r"`offsets` must have a floating dtype.*Got offsets with dtype int32"):
        tps_grid(np.zeros((1, 18), "int32"), (4, 4))
    with pytest.raises(ValueError, match=r"`size`.*Got size=\(0, 4\)"):
        tps_grid(np.zeros((1, 18), "float32"), (0, 4))
    with pytest.raises(TypeError, match=r"`size`.*Got size=\(4.0, 4\)"):
        tps_grid(np.zeros((1, 18), "float32"), (4.0, 4))
    with pytest.raises(TypeError, match=r"`align_corners` must be a bool. Got align_corners=1"):
        tps_grid(np.zeros((1, 18), "float32"), (4, 4), align_corners=1)
