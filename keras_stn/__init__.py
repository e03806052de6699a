"""keras-stn: Spatial Transformer Networks for Keras 3 (TensorFlow, JAX and PyTorch)."""

from keras_stn import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
