"""Keras layers built on `keras_stn.ops` and `keras_stn.transforms`."""

from keras_stn.layers.localization import default_localization
from keras_stn.layers.spatial_transformer import SpatialTransformer

__all__ = ["SpatialTransformer", "default_localization"]
