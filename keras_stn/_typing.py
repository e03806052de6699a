"""The types the public API is annotated with (for readers and type checkers; nothing is
enforced through them: the checks in `_checks` are)."""

from typing import Any, Literal

__all__ = ["DataFormat", "Interpolation", "PaddingMode", "Size", "Size2D", "Size3D", "Tensor"]

# A backend tensor (tf.Tensor, jax.Array, torch.Tensor), a NumPy array, or anything else
# `keras.ops.convert_to_tensor` accepts; symbolic `keras.KerasTensor`s too.
Tensor = Any
Interpolation = Literal["bilinear", "nearest", "bicubic"]
PaddingMode = Literal["zeros", "border", "reflection"]
DataFormat = Literal["channels_last", "channels_first"]
Size2D = tuple[int, int]
Size3D = tuple[int, int, int]
Size = Size2D | Size3D
