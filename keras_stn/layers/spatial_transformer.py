"""The spatial transformer layers: localization net -> regression head -> transform -> grid -> sampler.

`SpatialTransformer` warps images (rank-4 inputs), `SpatialTransformer3D` volumes (rank-5
inputs); both are `SpatialTransformerBase` with a different number of spatial axes.
"""

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import keras

from keras_stn import _checks
from keras_stn import transforms as transforms_lib
from keras_stn._layout import spatial_shape_of, with_spatial_shape
from keras_stn._typing import DataFormat, Interpolation, PaddingMode, Size
from keras_stn.layers.localization import MAX_SIZE_2D, MAX_SIZE_3D, default_localization, default_localization_3d

__all__ = ["SpatialTransformer", "SpatialTransformer3D", "SpatialTransformerBase"]


class SpatialTransformerBase(keras.layers.Layer):
    """What `SpatialTransformer` and `SpatialTransformer3D` share; see those for the arguments.

    Subclasses set `spatial_rank` (2 or 3: the inputs have rank `spatial_rank + 2`), the
    `interpolations` they support and `localization_builder`, the function that builds the
    network used when `localization=None`, with `default_localization_max_size` its working
    size for `localization_max_size="auto"`.
    """

    spatial_rank: ClassVar[int]
    interpolations: ClassVar[tuple[str, ...]]
    default_localization_max_size: ClassVar[int]
    localization_builder: ClassVar[Callable[..., keras.layers.Layer]]

    def __init__(
        self,
        out_dims: Size | None = None,
        transform: str | dict | transforms_lib.Transform = "affine",
        localization: keras.layers.Layer | None = None,
        interpolation: Interpolation = "bilinear",
        padding_mode: PaddingMode = "zeros",
        align_corners: bool = False,
        data_format: DataFormat | None = None,
        return_theta: bool = False,
        localization_gradient_scale: float = 1.0,
        localization_max_size: int | Literal["auto"] | None = "auto",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        rank = self.spatial_rank
        self.out_dims = None if out_dims is None else _checks.check_size("out_dims", out_dims, rank)
        self.transform = transforms_lib.get(transform, rank)
        self.options = _checks.sampling_options(
            interpolation, padding_mode, align_corners, data_format, interpolations=self.interpolations
        )
        self.return_theta = _checks.check_bool("return_theta", return_theta)
        self.localization_gradient_scale = _checks.check_positive_number(
            "localization_gradient_scale", localization_gradient_scale
        )
        _checks.check_localization(localization)
        if isinstance(localization_max_size, str) and localization_max_size == "auto":
            localization_max_size = self.default_localization_max_size
        self.localization_max_size = _checks.check_optional_integer("localization_max_size", localization_max_size, 1)
        self.has_custom_localization = localization is not None
        self.localization = localization
        identity = self.transform.identity_params()
        self.head = keras.layers.Dense(
            self.transform.num_params,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(identity),
            dtype="float32",
            name="theta_head",
        )
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    def default_localization(self, input_shape):
        """The network `build` creates when `localization=None`, for inputs of `input_shape`."""
        return self.localization_builder(
            input_shape, self.data_format, dtype=self.dtype_policy, max_size=self.localization_max_size
        )

    def __call__(self, inputs, *args, **kwargs):
        # Checked before Keras's InputSpec, whose message ("expected ndim=4, found ndim=3")
        # does not say what the commonest mistake, a single image without a batch axis, needs.
        if hasattr(inputs, "shape"):
            self.check_input_rank(tuple(inputs.shape))
        return super().__call__(inputs, *args, **kwargs)

    def check_input_rank(self, shape):
        _checks.check_input_rank(type(self).__name__, shape, self.spatial_rank, self.data_format)

    # The sampling options, read from the validated `options` (what `get_config` saves).
    interpolation = property(lambda self: self.options.interpolation)
    padding_mode = property(lambda self: self.options.padding_mode)
    align_corners = property(lambda self: self.options.align_corners)
    data_format = property(lambda self: self.options.data_format)

    def spatial_dims(self, shape):
        return tuple(spatial_shape_of(shape, self.data_format))

    def build(self, input_shape):
        if self.localization is None:
            self.localization = self.default_localization(input_shape)
        if not self.localization.built:
            self.localization.build(input_shape)
        features_shape = tuple(self.localization.compute_output_shape(input_shape))
        _checks.check_features_shape(features_shape, input_shape)
        self.head.build(features_shape)

    def images_dtype(self, dtype):
        """The dtype the layer samples images of `dtype` in (and returns): integer and bool
        images are cast to the compute dtype, as Keras's image preprocessing layers do;
        floating ones arrive already autocast by `Layer.__call__`."""
        dtype = keras.backend.standardize_dtype(dtype)
        return dtype if keras.backend.is_float_dtype(dtype) else self.compute_dtype

    def call(self, inputs):
        # The low-level samplers reject integer images (interpolating and rounding back would
        # lose values silently); the layer's output is a float feature map, so cast up front,
        # before the localization net sees them.
        dtype = self.images_dtype(inputs.dtype)
        if keras.backend.standardize_dtype(inputs.dtype) != dtype:
            inputs = keras.ops.cast(inputs, dtype)
        # The head regresses the transform's parameters, (B, num_params); the affine matrix theta
        # is `transform.to_theta(params)` (for "affine" the same numbers, row-major).
        localization = self.localization
        assert localization is not None, "built by `build`"
        params = scale_gradient(self.head(localization(inputs)), self.localization_gradient_scale)
        outputs = self.transform.warp(inputs, params, self.out_dims, self.options)
        return (outputs, params) if self.return_theta else outputs

    def compute_output_shape(self, input_shape):
        dims = self.out_dims if self.out_dims is not None else self.spatial_dims(input_shape)
        batch = input_shape[0]
        shape = with_spatial_shape(input_shape, dims, self.data_format)
        if self.return_theta:
            return shape, (batch, self.transform.num_params)
        return shape

    def compute_output_spec(self, inputs):
        # Keras's default gives every output the compute dtype; the regressed parameters are
        # float32 (the head's dtype) even under a mixed policy.
        shape = self.compute_output_shape(inputs.shape)
        if not self.return_theta:
            return keras.KerasTensor(shape, dtype=self.images_dtype(inputs.dtype))
        outputs = keras.KerasTensor(shape[0], dtype=self.images_dtype(inputs.dtype))
        return outputs, keras.KerasTensor(shape[1], dtype=self.head.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "out_dims": self.out_dims,
                "transform": transforms_lib.serialize(self.transform),
                "localization": (
                    keras.saving.serialize_keras_object(self.localization) if self.has_custom_localization else None
                ),
                "interpolation": self.interpolation,
                "padding_mode": self.padding_mode,
                "align_corners": self.align_corners,
                "data_format": self.data_format,
                "return_theta": self.return_theta,
                "localization_gradient_scale": self.localization_gradient_scale,
                "localization_max_size": self.localization_max_size,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Deserialising a nested model consumes its config in place: work on a deep copy so the
        # caller's dict survives (it may be reused, e.g. by `from_config` twice).
        config = copy.deepcopy(config)
        if isinstance(config.get("localization"), dict):
            config["localization"] = keras.saving.deserialize_keras_object(config["localization"])
        # Configs saved before the default localization net had a working size describe the
        # unbounded net, whose weights their files hold.
        config.setdefault("localization_max_size", None)
        if config.get("out_dims") is not None:
            config["out_dims"] = tuple(config["out_dims"])
        return cls(**config)


def scale_gradient(x, scale):
    """`x` unchanged in the forward pass, its gradient multiplied by `scale` in the backward one:
    `x + (scale - 1) * (x - stop_gradient(x))`, whose added term is exactly 0 in value."""
    if scale == 1.0:
        return x
    return x + (scale - 1.0) * (x - keras.ops.stop_gradient(x))


@keras.saving.register_keras_serializable(package="keras_stn")
class SpatialTransformer(SpatialTransformerBase):
    """Spatial transformer (Jaderberg et al., 2015): learns where to look, then resamples.

    The layer runs a localization network on its input, regresses the transform's parameters
    with a dense head it owns, turns them into a sampling grid and samples the input there.
    The head starts with a zero kernel and the identity parameters as bias, so at
    initialisation the layer returns its input resampled by the identity (when `out_dims`
    equals the input size: exactly the input for the affine family, the input up to float
    rounding for the transforms sampled through a grid) and training starts from "no warp".

    The head and the grid are computed in float32 even under a mixed-precision policy: pixel
    coordinates need more than half precision. The sampled output has the layer's compute
    dtype. Integer and bool images (e.g. uint8) are cast to the compute dtype first, as Keras's
    image preprocessing layers do, so `uint8` images give the same output as float32 images
    of the same values (not rescaled: divide by 255 yourself if the model expects `[0, 1]`);
    the functions in `keras_stn.ops` keep rejecting integer images.

    Args:
        out_dims: output `(height, width)`; `None` keeps the input's.
        transform: `"affine"` (default), `"attention"`, `"translation"`, `"similarity"`,
            `"projective"`, `"tps"` (thin-plate spline, 3x3 control points), or a
            `keras_stn.transforms.Transform` instance such as `ThinPlateSpline(grid_size=4)`.
            Names are case-insensitive; `"thin_plate_spline"` and `"homography"` are accepted
            for `"tps"` and `"projective"` (see `keras_stn.transforms.get`).
        localization: a Keras layer or model mapping the input to a `(B, features)` tensor;
            `None` builds `keras_stn.layers.default_localization` for the input shape.
        interpolation: `"bilinear"` (default), `"nearest"` or `"bicubic"`.
        padding_mode: `"zeros"` (default), `"border"` or `"reflection"`.
        align_corners: bool, see `keras_stn.ops.affine_grid`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        return_theta: if True, the layer returns `(outputs, params)`: the transform's
            regressed parameters `(B, transform.num_params)` of the same forward pass (for
            `"affine"`, the row-major `(B, 6)` theta; `layer.transform.to_theta(params)` gives
            the `(B, 2, 3)` theta of any affine-family transform). Use it to plot what the
            transformer does or to put a loss on the transform. Without it the layer returns
            one tensor, so `out, params = layer(x)` unpacks the batch: an error for most batch
            sizes, but with a batch of 2 silently the two warped images.
        localization_gradient_scale: positive float (default 1) multiplying the gradient that
            flows from the transform into the head and the localization net. With plain SGD
            (or momentum) this is a learning-rate multiplier for them, as the paper trains its
            localization nets at a lower rate; adaptive optimizers such as Adam largely cancel
            a constant scale. The forward pass is unchanged, bit for bit.
        localization_max_size: the largest height and width the default localization net
            runs the paper's layers at: `"auto"` (default) for 64, a positive int, or `None`
            for no bound. Larger inputs are max-pooled down to it first, so the net's dense
            layer stays bounded (about 270k weights at most, against 16.4M unbounded at
            512x512x3); inputs up to 64x64 get the paper's net unchanged. See
            `keras_stn.layers.default_localization`. Not used with a custom `localization`.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Input shape: `(B, H, W, C)` (channels_last) or `(B, C, H, W)` (channels_first); a single
    image needs a batch axis first (`x[None]`).
    Output shape: `(B, out_H, out_W, C)` or `(B, C, out_H, out_W)`.

    Examples:
        >>> inputs = keras.Input((60, 60, 1))
        >>> x = SpatialTransformer(out_dims=(30, 30), transform="attention")(inputs)
        >>> x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    """

    spatial_rank = 2
    interpolations = _checks.INTERPOLATIONS

    default_localization_max_size = MAX_SIZE_2D
    localization_builder = staticmethod(default_localization)


@keras.saving.register_keras_serializable(package="keras_stn")
class SpatialTransformer3D(SpatialTransformerBase):
    """Volumetric spatial transformer: the `SpatialTransformer` of rank-5 inputs.

    The same pipeline as `SpatialTransformer` (localization net, a dense head with a zero
    kernel and the identity as bias, transform, grid, sampler) on volumes `(B, D, H, W, C)`:
    at initialisation it returns its input exactly (when `out_dims` equals the input size) and
    training starts from "no warp". Coordinates follow `keras_stn.ops.affine_grid` for volumes:
    theta `(3, 4)` maps output `(x, y, z)` to input `(x, y, z)` in `[-1, 1]`, `z` along the
    depth, the same numbers as PyTorch's 5-D `affine_grid` / `grid_sample`. The head and the
    grid are computed in float32 even under a mixed-precision policy; the sampled output has
    the layer's compute dtype, and integer or bool volumes are cast to it first.

    Args:
        out_dims: output `(depth, height, width)`; `None` keeps the input's.
        transform: `"affine"` (default; 12 parameters, the row-major `(3, 4)` theta),
            `"attention"` (4 parameters `(s, tx, ty, tz)`: `[[s,0,0,tx],[0,s,0,ty],[0,0,s,tz]]`),
            or a 3-D `keras_stn.transforms.Transform` instance (`spatial_rank = 3`).
        localization: a Keras layer or model mapping the input to a `(B, features)` tensor;
            `None` builds `keras_stn.layers.default_localization_3d` for the input shape.
        interpolation: `"bilinear"` (default; trilinear, PyTorch's name for it with volumes)
            or `"nearest"`. Bicubic sampling is 2-D only.
        padding_mode: `"zeros"` (default), `"border"` or `"reflection"`.
        align_corners: bool, see `keras_stn.ops.affine_grid`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        return_theta: if True, the layer returns `(outputs, params)`: the transform's
            regressed parameters `(B, transform.num_params)` of the same forward pass
            (`layer.transform.to_theta(params)` gives the `(B, 3, 4)` theta).
        localization_gradient_scale: as for `SpatialTransformer`: multiplies the gradient
            into the head and the localization net (a learning-rate multiplier under SGD).
        localization_max_size: as for `SpatialTransformer`, with `"auto"` meaning 32: volumes
            larger along an axis are max-pooled down to it before the default localization
            net (`keras_stn.layers.default_localization_3d`); `None` for no bound.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Input shape: `(B, D, H, W, C)` (channels_last) or `(B, C, D, H, W)` (channels_first).
    Output shape: `(B, out_D, out_H, out_W, C)` or `(B, C, out_D, out_H, out_W)`.

    Examples:
        >>> inputs = keras.Input((32, 32, 32, 1))
        >>> x = SpatialTransformer3D(out_dims=(16, 16, 16), transform="attention")(inputs)
        >>> x = keras.layers.Conv3D(8, 3, activation="relu")(x)
    """

    spatial_rank = 3
    interpolations = _checks.VOLUME_INTERPOLATIONS

    default_localization_max_size = MAX_SIZE_3D
    localization_builder = staticmethod(default_localization_3d)
