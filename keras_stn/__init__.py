"""keras-stn: Spatial Transformer Networks for Keras 3 (TensorFlow, JAX and PyTorch)."""

from keras_stn import layers, ops, transforms
from keras_stn.compat import spatial_transformer_network
from keras_stn.layers import SpatialTransformer, SpatialTransformer3D

__version__ = "0.1.0"

__all__ = [
    "SpatialTransformer",
    "SpatialTransformer3D",
    "spatial_transformer_network",
    "ops",
    "transforms",
    "layers",
    "__version__",
]
