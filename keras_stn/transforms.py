"""Parameterisations of the spatial transform: regressed parameters -> sampling grid.

Each transform is a small class with `num_params`, `identity_params()` (what the layer's
regression head is initialised to) and `grid(params, size, align_corners)`. The affine family
(`AffineTransform`) also exposes `to_theta(params)`, the `(B, 2, 3)` matrix mapping output to input coordinates in
the normalised `[-1, 1]` frame (see `keras_stn.ops.affine_grid`).

Built in, by name:

- `"affine"`: the general affine map, 6 parameters.
- `"attention"`: isotropic scale and translation, 3 parameters (the paper's zoom).
- `"translation"`: shift only, 2 parameters.
- `"similarity"`: rotation, isotropic scale and translation, 4 parameters.
- `"projective"`: a homography (perspective warp), 8 parameters; points beyond its horizon
  read nothing.
- `"tps"`: a thin-plate spline through a `grid_size` x `grid_size` lattice of displaced
  control points, `2 * grid_size**2` parameters; a smooth non-rigid warp.

Use a name or an instance (e.g. `ThinPlateSpline(grid_size=4)`) wherever a transform is
expected; `get()` resolves either. Names are case-insensitive, with `-` and spaces read as `_`
(`"Affine"`, `"TPS"`), and two unambiguous aliases are accepted: `"thin_plate_spline"` for
`"tps"` and `"homography"` for `"projective"`. Anything else raises a `ValueError` listing
the names, with the closest one suggested (`"tsp"`: Did you mean 'tps'?; `"rotation"` or
`"rigid"`: 'similarity'; `"zoom"`: 'attention').

Volumetric (3-D) transforms, for `SpatialTransformer3D`, have a registry of their own, so the
same names mean their 3-D counterparts there (`get(name, spatial_rank=3)`):

- `"affine"` (`Affine3D`): the general 3-D affine map, 12 parameters, theta `(B, 3, 4)`.
- `"attention"` (`Attention3D`): isotropic scale and translation, 4 parameters `(s, tx, ty, tz)`.
"""

import abc
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from keras_stn import _checks
from keras_stn._checks import SamplingOptions
from keras_stn._layout import first_spatial_axis
from keras_stn._typing import Size, Tensor
from keras_stn.ops.grid import affine_grid_unchecked, projective_grid_unchecked
from keras_stn.ops.sampling import affine_sample_unchecked, sample_grid
from keras_stn.ops.tps import tps_grid_unchecked

__all__ = [
    "Transform",
    "AffineTransform",
    "AffineTransform3D",
    "Affine",
    "Attention",
    "Translation",
    "Similarity",
    "Projective",
    "ThinPlateSpline",
    "Affine3D",
    "Attention3D",
    "get",
    "serialize",
]


class Transform(abc.ABC):
    """Base class: maps a `(B, num_params)` tensor of parameters to a sampling grid."""

    # The name `get` knows it by, and the number of parameters the layer's head regresses.
    name: ClassVar[str | None] = None
    num_params: int
    # 2 for images (grids `(B, H, W, 2)`), 3 for volumes (grids `(B, D, H, W, 3)`).
    spatial_rank: ClassVar[int] = 2

    @abc.abstractmethod
    def identity_params(self) -> np.ndarray:
        """The parameters of the identity warp, a float32 NumPy array `(num_params,)`."""

    def check_params(self, params: Tensor) -> Tensor:
        """`params` as a tensor, if it is a float `(batch, num_params)` batch; else raises."""
        return _checks.check_params(self, params)

    def grid(self, params: Tensor, size: Size, align_corners: bool = False) -> Tensor:
        """Sampling grid `(B, H, W, 2)` for output `size = (H, W)`; see `ops.affine_grid`.

        For a 3-D transform, `(B, D, H, W, 3)` for `size = (D, H, W)`."""
        size = _checks.check_size("size", size, self.spatial_rank)
        _checks.check_bool("align_corners", align_corners)
        return self.grid_unchecked(self.check_params(params), size, align_corners)

    @abc.abstractmethod
    def grid_unchecked(self, params: Tensor, size: tuple, align_corners: bool) -> Tensor:
        """`grid` on validated params; `size` is `(height, width)` (`(depth, height, width)` for
        a 3-D transform), whose entries may be scalar tensors (dynamic sizes)."""

    def warp(self, images: Tensor, params: Tensor, size: tuple | None, options: SamplingOptions) -> Tensor:
        """Samples `images` through the grid of validated `params` as `options` (a validated
        `SamplingOptions`) say; `size=None` keeps the input's.

        What `SpatialTransformer` calls; subclasses override it where a fused path exists."""
        if size is None:
            first = first_spatial_axis(options.data_format)
            axes = slice(first, first + self.spatial_rank)
            size = tuple(s if s is not None else d for s, d in zip(images.shape[axes], ops.shape(images)[axes]))
        grid = self.grid_unchecked(params, size, options.align_corners)
        return sample_grid(images, grid, options)

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Transform":
        return cls(**config)

    def __repr__(self):
        options = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({options})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


class AffineTransform(Transform):
    """A transform whose grid is `affine_grid(to_theta(params))`."""

    def to_theta(self, params: Tensor) -> Tensor:
        """The `(B, 2, 3)` affine matrix of a batch of parameters (`(B, 3, 4)` for 3-D ones)."""
        return self.theta_unchecked(self.check_params(params))

    @abc.abstractmethod
    def theta_unchecked(self, params: Tensor) -> Tensor:
        """`to_theta` on validated params."""

    def grid_unchecked(self, params: Tensor, size: tuple, align_corners: bool) -> Tensor:
        return affine_grid_unchecked(self.theta_unchecked(params), size, align_corners)

    def warp(self, images: Tensor, params: Tensor, size: tuple | None, options: SamplingOptions) -> Tensor:
        return affine_sample_unchecked(images, self.theta_unchecked(params), size, options)


class AffineTransform3D(AffineTransform):
    """A volumetric transform whose grid is `affine_grid(to_theta(params))`, theta `(B, 3, 4)`."""

    spatial_rank = 3


def matrix(rows):
    """Builds `(B, 2, 3)` from two rows of three `(B,)` tensors (or `(B, 3, 4)` from three of four)."""
    return ops.stack([ops.stack(row, axis=-1) for row in rows], axis=1)


@keras.saving.register_keras_serializable(package="keras_stn")
class Affine(AffineTransform):
    """General 2-D affine transform, 6 parameters: theta in row-major order,
    `[[a, b, tx], [c, d, ty]]`. Identity: `(1, 0, 0, 0, 1, 0)`."""

    name = "affine"
    num_params = 6

    def identity_params(self):
        return np.array([1, 0, 0, 0, 1, 0], "float32")

    def theta_unchecked(self, params):
        return ops.reshape(params, (-1, 2, 3))


@keras.saving.register_keras_serializable(package="keras_stn")
class Attention(AffineTransform):
    """Isotropic scale and translation, 3 parameters `(s, tx, ty)`:
    `[[s, 0, tx], [0, s, ty]]` (the paper's attention / zoom transform). Identity: `(1, 0, 0)`.
    `s < 1` zooms into a window of relative size `s` centred at `(tx, ty)`."""

    name = "attention"
    num_params = 3

    def identity_params(self):
        return np.array([1, 0, 0], "float32")

    def theta_unchecked(self, params):
        s, tx, ty = params[:, 0], params[:, 1], params[:, 2]
        zero = ops.zeros_like(s)
        return matrix([[s, zero, tx], [zero, s, ty]])


@keras.saving.register_keras_serializable(package="keras_stn")
class Translation(AffineTransform):
    """Pure translation, 2 parameters `(tx, ty)`: `[[1, 0, tx], [0, 1, ty]]`. Identity: `(0, 0)`."""

    name = "translation"
    num_params = 2

    def identity_params(self):
        return np.array([0, 0], "float32")

    def theta_unchecked(self, params):
        tx, ty = params[:, 0], params[:, 1]
        zero, one = ops.zeros_like(tx), ops.ones_like(tx)
        return matrix([[one, zero, tx], [zero, one, ty]])


@keras.saving.register_keras_serializable(package="keras_stn")
class Similarity(AffineTransform):
    """Rotation, isotropic scale and translation, 4 parameters `(a, b, tx, ty)`:
    `[[a, -b, tx], [b, a, ty]]` with `a = s*cos(angle)`, `b = s*sin(angle)`. Identity:
    `(1, 0, 0, 0)`. Linear in its parameters (no angle to wrap around), so it regresses as
    easily as the affine transform while keeping shapes undistorted."""

    name = "similarity"
    num_params = 4

    def identity_params(self):
        return np.array([1, 0, 0, 0], "float32")

    def theta_unchecked(self, params):
        a, b, tx, ty = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
        return matrix([[a, -b, tx], [b, a, ty]])


@keras.saving.register_keras_serializable(package="keras_stn")
class Projective(Transform):
    """Projective transform (homography), 8 parameters: the 3x3 matrix `H` in row-major order
    with `H[2, 2]` fixed to 1, `[[a, b, c], [d, e, f], [g, h, 1]]`. Identity:
    `(1, 0, 0, 0, 1, 0, 0, 0)`; with `g = h = 0` it is the affine transform `[[a, b, c], [d, e, f]]`.

    Output point `(x, y)` reads the input at `(x_h / w, y_h / w)` with `(x_h, y_h, w) =
    H @ [x, y, 1]`, in the normalised frame of `keras_stn.ops.affine_grid`. `g` and `h` tilt
    the image plane: where `w` falls to `1e-6` or below, the output is on or beyond the
    horizon, which has no source in the input; those points get NaN grid coordinates and
    `grid_sample` gives them output 0 and zero gradient (in every padding mode), so the
    gradients with respect to the parameters stay finite.
    """

    name = "projective"
    num_params = 8

    def identity_params(self):
        return np.array([1, 0, 0, 0, 1, 0, 0, 0], "float32")

    def grid_unchecked(self, params: Tensor, size: tuple, align_corners: bool) -> Tensor:
        homography = ops.reshape(ops.concatenate([params, ops.ones_like(params[:, :1])], axis=1), (-1, 3, 3))
        height, width = size
        return projective_grid_unchecked(homography, height, width, align_corners)


@keras.saving.register_keras_serializable(package="keras_stn")
class ThinPlateSpline(Transform):
    """Thin-plate spline through a `grid_size` x `grid_size` lattice of control points spanning
    `[-1, 1]²`, `2 * grid_size**2` parameters: the offset `(dx, dy)` of each control point in
    normalised units, pairs in row-major lattice order (top row first, left to right). Output
    control point `c_k` reads the input at `c_k + (dx_k, dy_k)`; the rest of the grid follows
    the smoothest (least bending) interpolant. Identity: all zeros. See
    `keras_stn.ops.tps_grid`.

    Args:
        grid_size: control points per side, an int >= 2 (default 3: 18 parameters).
    """

    name = "tps"

    def __init__(self, grid_size: int = 3):
        self.grid_size = _checks.check_integer("grid_size", grid_size, minimum=2)
        self.num_params = 2 * self.grid_size**2

    def identity_params(self):
        return np.zeros(self.num_params, "float32")

    def grid_unchecked(self, params: Tensor, size: tuple, align_corners: bool) -> Tensor:
        offsets = ops.reshape(params, (-1, self.grid_size**2, 2))
        height, width = size
        return tps_grid_unchecked(offsets, self.grid_size, height, width, align_corners)

    def get_config(self):
        return {"grid_size": self.grid_size}


@keras.saving.register_keras_serializable(package="keras_stn")
class Affine3D(AffineTransform3D):
    """General 3-D affine transform, 12 parameters: theta in row-major order,
    `[[a, b, c, tx], [d, e, f, ty], [g, h, i, tz]]`, mapping output `(x, y, z)` to input
    coordinates (`z` along the depth). Identity: `(1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)`."""

    name = "affine"
    num_params = 12

    def identity_params(self):
        return np.eye(3, 4, dtype="float32").ravel()

    def theta_unchecked(self, params):
        return ops.reshape(params, (-1, 3, 4))


@keras.saving.register_keras_serializable(package="keras_stn")
class Attention3D(AffineTransform3D):
    """Isotropic 3-D scale and translation, 4 parameters `(s, tx, ty, tz)`:
    `[[s, 0, 0, tx], [0, s, 0, ty], [0, 0, s, tz]]`. Identity: `(1, 0, 0, 0)`. `s < 1` zooms
    into a box of relative size `s` centred at `(tx, ty, tz)`."""

    name = "attention"
    num_params = 4

    def identity_params(self):
        return np.array([1, 0, 0, 0], "float32")

    def theta_unchecked(self, params):
        s, tx, ty, tz = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
        zero = ops.zeros_like(s)
        return matrix([[s, zero, zero, tx], [zero, s, zero, ty], [zero, zero, s, tz]])


TRANSFORMS: dict[str, type[Transform]] = {
    str(cls.name): cls for cls in (Affine, Attention, Translation, Similarity, Projective, ThinPlateSpline)
}
TRANSFORMS_3D: dict[str, type[Transform]] = {str(cls.name): cls for cls in (Affine3D, Attention3D)}
REGISTRIES = {2: TRANSFORMS, 3: TRANSFORMS_3D}


# Other names of a built-in transform, accepted because each can only mean that one.
ALIASES = {"thin_plate_spline": "tps", "homography": "projective"}
# Names of what a built-in transform does, suggested in the error but not accepted: "rigid"
# has no scale and "rotation" no translation, so "similarity" is a superset, not the same.
RELATED = {"rotation": "similarity", "rigid": "similarity", "euclidean": "similarity", "zoom": "attention"}


def standardize_name(name):
    """Case-insensitive, with `-` and spaces read as `_`, and aliases resolved."""
    key = "_".join(name.strip().lower().replace("-", " ").split())
    return ALIASES.get(key, key)


def suggestion(name, spatial_rank):
    """The sentence to add to the error about a transform name that is not one, or ""."""
    registry = REGISTRIES[spatial_rank]
    key = standardize_name(name)
    others = [rank for rank, names in REGISTRIES.items() if rank != spatial_rank and key in names]
    if others:
        return f" {name!r} has no {spatial_rank}-D version (it is a {others[0]}-D transform)."
    if RELATED.get(key) in registry:
        return f" Did you mean {RELATED[key]!r}?"
    spellings = {**{n: n for n in registry}, **{a: n for a, n in ALIASES.items() if n in registry}}
    close = _checks.closest(key, spellings)
    return f" Did you mean {spellings[close]!r}?" if close else ""


def get(identifier: str | dict | Transform, spatial_rank: int = 2) -> Transform:
    """Resolves a transform name, instance or serialised config to a `Transform` instance.

    Names are case-insensitive and accept the aliases in `ALIASES` (see the module docstring).
    `spatial_rank=3` looks names up among the volumetric transforms (`TRANSFORMS_3D`) and
    requires instances and configs to be volumetric too; 2 (the default) the same for images.
    """
    registry = REGISTRIES[spatial_rank]
    transform = None
    hint = ""
    if isinstance(identifier, Transform):
        transform = identifier
    elif isinstance(identifier, dict):
        transform = keras.saving.deserialize_keras_object(identifier)
    elif isinstance(identifier, str):
        if standardize_name(identifier) in registry:
            return registry[standardize_name(identifier)]()
        hint = suggestion(identifier, spatial_rank)
    if isinstance(transform, Transform) and transform.spatial_rank == spatial_rank:
        return transform
    names = ", ".join(repr(n) for n in registry)
    if spatial_rank != 2:
        names = f"the {spatial_rank}-D transforms {names}"
    instance = "a keras_stn.transforms.Transform instance"
    if spatial_rank != 2 or isinstance(transform, Transform):  # a transform of the other rank
        instance += f" with spatial_rank={spatial_rank}"
    raise ValueError(
        f"`transform` must be one of {names} (case-insensitive) or {instance}.{hint} Got transform={identifier!r}"
    )


def serialize(transform: Transform) -> str | dict:
    """A built-in transform without options serialises as its name, anything else as a config."""
    registry = REGISTRIES.get(transform.spatial_rank, {})
    name = transform.name
    if name is not None and type(transform) is registry.get(name) and not transform.get_config():
        return name
    return keras.saving.serialize_keras_object(transform)
