"""The "tps" transform (`ThinPlateSpline`, 2 parameters per control point of a K x K lattice):
its registration, its grid (`tps_grid`, tested in tests/ops/test_tps_grid.py), its warp against
NumPy and its gradient."""

import keras
import numpy as np
import pytest

from helpers import central_differences, to_numpy, value_and_grad
from helpers import transform_warp as warp
from keras_stn import transforms
from reference import grid_sample_ref, tps_grid_ref

SHAPE = (16, 12, 2)
BATCH = 3


def test_tps_is_registered_with_two_params_per_control_point():
    tps = transforms.get("tps")
    assert type(tps) is transforms.ThinPlateSpline and transforms.TRANSFORMS["tps"] is transforms.ThinPlateSpline
    assert tps.grid_size == 3 and tps.num_params == 18 and not hasattr(tps, "to_theta")
    assert tps == transforms.ThinPlateSpline(grid_size=3) != transforms.ThinPlateSpline(grid_size=4)
    assert transforms.ThinPlateSpline(grid_size=5).num_params == 50
    assert repr(transforms.ThinPlateSpline(4)) == "ThinPlateSpline(grid_size=4)"
    identity = tps.identity_params()
    assert identity.dtype == np.float32
    np.testing.assert_array_equal(identity, np.zeros(18))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_warp_matches_numpy(padding_mode, align_corners, rng):
    images = rng.random((BATCH, *SHAPE)).astype("float32")
    params = rng.normal(scale=0.2, size=(BATCH, 32)).astype("float32")
    out = to_numpy(
        warp(transforms.ThinPlateSpline(4), images, params, (9, 11), "bilinear", padding_mode, align_corners)
    )
    grid = tps_grid_ref(params.reshape(BATCH, 4, 4, 2), (9, 11), align_corners)
    expected = grid_sample_ref(images, grid, padding_mode=padding_mode, align_corners=align_corners)
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_gradient_matches_finite_differences(align_corners, x64, rng):
    offsets = rng.normal(scale=0.2, size=(2, 18))
    weights = rng.normal(size=(2, 5, 7, 2))
    tps = transforms.ThinPlateSpline()

    def loss(params):
        return keras.ops.sum(tps.grid(params, (5, 7), align_corners) * keras.ops.convert_to_tensor(weights))

    value, (gradient,) = value_and_grad(loss, offsets)
    assert value.dtype == np.float64
    expected = central_differences(lambda p: float(to_numpy(loss(p))), offsets)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-7)
