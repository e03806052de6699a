"""The call of the original TensorFlow `stn` package, on keras_stn's sampler.

`from stn import spatial_transformer_network as transformer` becomes
`from keras_stn import spatial_transformer_network as transformer`.
"""

from keras_stn import _checks
from keras_stn._typing import Interpolation, PaddingMode, Size2D, Tensor
from keras_stn.ops.sampling import AffineSample, affine_sample_unchecked

__all__ = ["spatial_transformer_network"]


def spatial_transformer_network(
    input_fmap: Tensor,
    theta: Tensor,
    out_dims: Size2D | None = None,
    *,
    interpolation: Interpolation = "bilinear",
    padding_mode: PaddingMode = "zeros",
) -> Tensor:
    """Warps a channels-last batch of images by affine `theta`, like the original `stn` package.

    Convention:
        The grid is built as the original builds it: `linspace(-1, 1)` over the output pixels,
        i.e. -1 and +1 are the centres of the corner pixels (`align_corners=True` in
        `keras_stn.ops` terms), and `theta` maps output coordinates `(x, y, 1)` to input
        coordinates. Points that land outside the input read 0, as in the original.

        Differences from the original, all deliberate: the identity theta returns the input
        exactly (the original scales coordinates by `W - 2` instead of `W - 1` and shifts every
        image); float16, bfloat16, float32 and float64 all work and keep their dtype (the
        original accepts float32 only); a theta of the wrong shape raises a `ValueError`
        naming it (instead of an opaque reshape error); the batch may be dynamic.

    Args:
        input_fmap: `(B, H, W, C)` float images.
        theta: `(B, 6)` row-major affine matrices (or `(B, 2, 3)`).
        out_dims: output `(height, width)`; `None` keeps the input's.
        interpolation: keyword-only, `"bilinear"` (default, as the original), `"nearest"` or
            `"bicubic"`.
        padding_mode: keyword-only, `"zeros"` (default, as the original), `"border"` or
            `"reflection"`.

    Returns:
        `(B, out_H, out_W, C)` with the input's dtype.

    Raises:
        ValueError: `input_fmap` not rank 4, `theta` not `(B, 6)`/`(B, 2, 3)`, mismatched
            batch sizes, `out_dims` not two positive integers, an unknown mode.
        TypeError: non-floating `input_fmap` or `theta`.

    Examples:
        >>> import keras
        >>> import numpy as np
        >>> images = np.random.rand(4, 60, 60, 3).astype("float32")
        >>> identity = np.tile(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (4, 1))
        >>> out = spatial_transformer_network(images, identity)
        >>> bool(np.array_equal(keras.ops.convert_to_numpy(out), images))  # exactly
        True
    """
    options = _checks.sampling_options(interpolation, padding_mode, True, "channels_last")
    input_fmap, theta, size = _checks.check_stn_call(input_fmap, theta, out_dims)
    if _checks.is_symbolic(input_fmap, theta):
        return AffineSample(size, interpolation, padding_mode, True, "channels_last")(input_fmap, theta)
    return affine_sample_unchecked(input_fmap, theta, size, options)
