"""Keras layers built on `keras_stn.ops` and `keras_stn.transforms`."""

from keras_stn.layers.localization import default_localization, default_localization_3d
from keras_stn.layers.spatial_transformer import SpatialTransformer, SpatialTransformer3D

__all__ = ["SpatialTransformer", "SpatialTransformer3D", "default_localization", "default_localization_3d"]
