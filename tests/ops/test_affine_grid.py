"""`keras_stn.ops.affine_grid` of images (theta `(B, 2, 3)`) and volumes (theta `(B, 3, 4)`):
against the NumPy reference and PyTorch's own `affine_grid`, in float32 and float64, and the
order of its coordinates. Its argument checks are in test_ops_validation.py, its dtypes in
test_ops_dtypes.py."""

import numpy as np
import pytest

from helpers import both_aligns, both_ranks, dtype_of, identity_theta, per_rank, to_numpy
from keras_stn.ops import affine_grid
from reference import affine_grid_ref, torch_reference

# Output sizes, single rows and columns (and voxels) included.
SIZES = {2: [(5, 7), (8, 3), (1, 1), (1, 6), (4, 1), (1, 4)], 3: [(3, 4, 5), (1, 4, 1)]}


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed:UserWarning")
@per_rank("size", lambda rank: SIZES[rank])
@pytest.mark.parametrize("theta_layout", ["matrix", "flat"])
@both_aligns
@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_affine_grid_matches_reference(rank, size, theta_layout, align_corners, reference, rng):
    theta = rng.uniform(-2, 2, (2, rank, rank + 1)).astype("float32")
    out = affine_grid(theta if theta_layout == "matrix" else theta.reshape(2, -1), size, align_corners)
    assert tuple(out.shape) == (2, *size, rank)
    assert dtype_of(out) == "float32"
    if reference == "numpy":
        expected = affine_grid_ref(theta.astype(np.float64), size, align_corners)
    else:
        expected = torch_reference(theta=theta, size=size, align_corners=align_corners).grid
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6, atol=1e-6)


@both_ranks
@both_aligns
def test_affine_grid_matches_reference_float64(rank, align_corners, rng, x64):
    size = {2: (6, 9), 3: (3, 4, 5)}[rank]
    theta = rng.uniform(-2, 2, (2, rank, rank + 1))
    out = affine_grid(theta, size, align_corners)
    assert dtype_of(out) == "float64"
    np.testing.assert_allclose(to_numpy(out), affine_grid_ref(theta, size, align_corners), rtol=1e-14, atol=1e-14)


@both_ranks
def test_affine_grid_axes_are_x_y_z(rank):
    """The last axis is (x, y[, z]): x runs along W, y along H and z along D (the depth)."""
    size = (2, 3, 4)[-rank:]
    grid = to_numpy(affine_grid(identity_theta(1, rank), size, align_corners=True))[0]
    for coordinate in range(rank):
        axis = rank - 1 - coordinate  # the spatial axis the coordinate runs along
        line = grid[tuple(slice(None) if a == axis else 0 for a in range(rank)) + (coordinate,)]
        expected = np.linspace(-1, 1, size[axis])
        if coordinate == 0:
            np.testing.assert_allclose(line, expected, rtol=1e-7)
        else:  # -1, 0, 1 and -1, 1: exact
            np.testing.assert_array_equal(line, expected)
