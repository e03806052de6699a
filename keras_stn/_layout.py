"""Data formats: where the spatial axes and the channels of an image (rank 4) or volume
(rank 5) tensor sit. Written once here; every module that needs the spatial sizes or a
permutation between the two formats asks this one."""

__all__ = [
    "LAYOUTS",
    "channels_first_axes",
    "channels_last_axes",
    "first_spatial_axis",
    "spatial_shape_of",
    "with_spatial_shape",
]

LAYOUTS = {
    "channels_last": {2: "(B, H, W, C)", 3: "(B, D, H, W, C)"},
    "channels_first": {2: "(B, C, H, W)", 3: "(B, C, D, H, W)"},
}


def first_spatial_axis(data_format):
    """The axis of the first spatial size (height, or depth for volumes) of a batched tensor."""
    return 1 if data_format == "channels_last" else 2


def spatial_shape_of(shape, data_format):
    """The spatial sizes in the batched `shape` (any sequence, entries may be None or tensors)."""
    shape = tuple(shape)
    return shape[1:-1] if data_format == "channels_last" else shape[2:]


def with_spatial_shape(shape, spatial, data_format):
    """The batched `shape` with its spatial sizes replaced by `spatial` (batch and channels kept)."""
    shape = tuple(shape)
    if data_format == "channels_last":
        return (shape[0], *spatial, shape[-1])
    return (shape[0], shape[1], *spatial)


def channels_last_axes(rank):
    """The permutation that moves the channels of a rank-`rank` channels-first tensor last."""
    return (0, *range(2, rank), 1)


def channels_first_axes(rank):
    """The permutation that moves the channels of a rank-`rank` channels-last tensor first."""
    return (0, rank - 1, *range(1, rank - 1))
