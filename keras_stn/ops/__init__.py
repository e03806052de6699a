"""Backend-agnostic spatial-transformer maths, written in `keras.ops`."""

from keras_stn.ops.grid import affine_grid
from keras_stn.ops.sampling import affine_sample, grid_sample
from keras_stn.ops.tps import tps_grid

__all__ = ["affine_grid", "affine_sample", "grid_sample", "tps_grid"]
