"""`keras_stn.ops.tps_grid`, the thin-plate spline's grid: the identity at zero offsets, the
interpolation of the displaced control points, the NumPy reference, affine displacements and
the offsets' layouts. Its dtypes are in test_ops_dtypes.py, its gradient through the sampler in
test_ops_gradients.py, its argument checks in test_ops_validation.py; the ThinPlateSpline
transform in tests/transforms/test_transforms_tps.py."""

import numpy as np
import pytest

from helpers import to_numpy
from keras_stn import transforms
from keras_stn.ops import affine_grid, tps_grid
from reference import affine_grid_ref, tps_grid_ref

BATCH = 3
IDENTITY_THETA = np.array([[[1, 0, 0], [0, 1, 0]]], "float32")


@pytest.mark.parametrize("grid_size", [2, 3, 5])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_zero_offsets_give_the_identity_grid_exactly(grid_size, align_corners):
    identity = to_numpy(affine_grid(IDENTITY_THETA, (5, 7), align_corners))
    offsets = np.zeros((1, 2 * grid_size**2), "float32")
    np.testing.assert_array_equal(to_numpy(tps_grid(offsets, (5, 7), align_corners=align_corners)), identity)
    tps = transforms.ThinPlateSpline(grid_size)
    np.testing.assert_array_equal(to_numpy(tps.grid(offsets, (5, 7), align_corners)), identity)


@pytest.mark.parametrize("grid_size", [2, 3, 4])
def test_tps_passes_through_the_displaced_control_points(grid_size, rng):
    """With corners aligned, K rows put a pixel centre on every control row and 2K - 1 columns
    one on every other column: there the grid must be control + offset."""
    offsets = rng.normal(scale=0.2, size=(BATCH, grid_size, grid_size, 2)).astype("float32")
    grid = to_numpy(tps_grid(offsets, (grid_size, 2 * grid_size - 1), align_corners=True))
    axis = np.linspace(-1, 1, grid_size)
    controls = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)  # [i, j] = (x_j, y_i)
    np.testing.assert_allclose(grid[:, :, ::2], controls + offsets, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (9, 9)])
@pytest.mark.parametrize("grid_size", [2, 3, 4])
def test_tps_grid_matches_reference(align_corners, size, grid_size, rng):
    offsets = rng.normal(scale=0.2, size=(BATCH, grid_size, grid_size, 2)).astype("float32")
    grid = to_numpy(tps_grid(offsets, size, align_corners=align_corners))
    assert grid.shape == (BATCH, *size, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, tps_grid_ref(offsets, size, align_corners), atol=5e-6)


def test_tps_of_an_affine_displacement_is_that_affine_grid(rng):
    """The spline reproduces affine maps: moving every control point by theta gives theta's grid."""
    theta = np.array([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.2]]])
    axis = np.linspace(-1, 1, 4)
    controls = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)
    moved = controls @ theta[0, :, :2].T + theta[0, :, 2]
    grid = to_numpy(tps_grid((moved - controls)[None].astype("float32"), (6, 5)))
    np.testing.assert_allclose(grid, affine_grid_ref(theta, (6, 5)), atol=2e-6)


def test_tps_layouts_grid_size_and_the_transform_agree(rng):
    offsets = rng.normal(scale=0.2, size=(BATCH, 3, 3, 2)).astype("float32")
    flat = offsets.reshape(BATCH, 18)
    expected = to_numpy(tps_grid(offsets, (6, 5)))
    np.testing.assert_array_equal(to_numpy(tps_grid(flat, (6, 5))), expected)
    np.testing.assert_array_equal(to_numpy(tps_grid(flat, (6, 5), grid_size=3)), expected)
    np.testing.assert_array_equal(to_numpy(transforms.get("tps").grid(flat, (6, 5))), expected)
    # The offsets are (dx, dy) pairs: moving only the centre control point right moves the
    # centre of the output right, not down.
    centre = np.zeros((1, 18), "float32")
    centre[0, 8] = 0.5  # x of control point 4, the middle of the 3 x 3 lattice
    grid = to_numpy(tps_grid(centre, (5, 5), align_corners=True))
    np.testing.assert_allclose(grid[0, 2, 2], [0.5, 0], atol=1e-6)
