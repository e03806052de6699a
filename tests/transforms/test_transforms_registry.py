"""What every built-in transform shares and how transforms are found and saved: names, classes
and parameter counts, the identity grid, `transforms.get` (names, aliases, instances, configs,
near misses, the 3-D registry) and `transforms.serialize`."""

import json

import keras
import numpy as np
import pytest

from helpers import NUM_PARAMS, TRANSFORM_NAMES, to_numpy, transform_classes
from keras_stn import transforms

NAMES = TRANSFORM_NAMES
CLASSES = transform_classes()


@pytest.mark.parametrize("name", NAMES)
def test_num_params_name_and_class(name):
    transform = transforms.get(name)
    assert type(transform) is CLASSES[name]
    assert transform.name == name
    assert transform.num_params == NUM_PARAMS[name]
    assert isinstance(transform, transforms.Transform)


@pytest.mark.parametrize("name", NAMES)
def test_identity_grid_is_the_pixel_centres(name):
    # Independent of affine_grid: centres (2i + 1) / n - 1 with align_corners=False.
    transform = transforms.get(name)
    grid = to_numpy(transform.grid(transform.identity_params()[None], (3, 4)))
    ys, xs = (2 * np.arange(3) + 1) / 3 - 1, (2 * np.arange(4) + 1) / 4 - 1
    np.testing.assert_allclose(grid[0, ..., 0], np.broadcast_to(xs, (3, 4)), atol=1e-7)
    np.testing.assert_allclose(grid[0, ..., 1], np.broadcast_to(ys[:, None], (3, 4)), atol=1e-7)


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


def test_get_accepts_names_instances_and_configs():
    for name, cls in CLASSES.items():
        assert type(transforms.get(name)) is cls
        instance = cls()
        assert transforms.get(instance) is instance
        config = keras.saving.serialize_keras_object(instance)
        assert transforms.get(config) == instance and type(transforms.get(config)) is cls


@pytest.mark.parametrize("identifier", ["foo", "rotation", "", 3, None, ["affine"]])
def test_get_unknown_lists_every_valid_name(identifier):
    with pytest.raises(ValueError) as info:
        transforms.get(identifier)
    message = str(info.value)
    for name in NAMES:
        assert repr(name) in message, message
    assert "`transform`" in message
    assert f"Got transform={identifier!r}" in message, message


@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("Affine", transforms.Affine),
        ("ATTENTION", transforms.Attention),
        (" translation ", transforms.Translation),
        ("TPS", transforms.ThinPlateSpline),
        ("thin_plate_spline", transforms.ThinPlateSpline),
        ("Thin-Plate Spline", transforms.ThinPlateSpline),
        ("homography", transforms.Projective),
    ],
)
def test_names_are_case_insensitive_and_unambiguous_aliases_accepted(identifier, cls):
    transform = transforms.get(identifier)
    assert type(transform) is cls
    assert transforms.serialize(transform) == transforms.serialize(cls())  # saved as if by its own name


@pytest.mark.parametrize(
    "identifier, suggestion",
    [
        ("afine", "affine"),
        ("atention", "attention"),
        ("tsp", "tps"),
        ("thin_plate_splines", "tps"),
        ("thinplate", "tps"),
        ("projection", "projective"),
        ("rotation", "similarity"),
        ("rigid", "similarity"),
        ("zoom", "attention"),
    ],
)
def test_near_misses_suggest_the_closest_name(identifier, suggestion):
    with pytest.raises(ValueError) as info:
        transforms.get(identifier)
    message = str(info.value)
    assert f". Did you mean {suggestion!r}? Got" in message, message
    assert message.startswith("`transform` must be one of") and message.endswith(f"Got transform={identifier!r}")
    for name in NAMES:
        assert repr(name) in message, message


def test_unrelated_names_get_no_suggestion():
    with pytest.raises(ValueError) as info:
        transforms.get("foo")
    assert "Did you mean" not in str(info.value)


def test_3d_transforms_have_their_own_registry():
    assert type(transforms.get("affine", spatial_rank=3)) is transforms.Affine3D
    assert type(transforms.get("attention", spatial_rank=3)) is transforms.Attention3D
    assert type(transforms.get("affine")) is transforms.Affine  # the 2-D default is unchanged
    for rank, instance in ((2, transforms.Affine3D()), (3, transforms.Affine())):
        with pytest.raises(ValueError, match=rf"`transform`.*spatial_rank={rank}. Got transform="):
            transforms.get(instance, spatial_rank=rank)
    with pytest.raises(ValueError, match=r"the 3-D transforms 'affine', 'attention'.*Got transform='tps'"):
        transforms.get("tps", spatial_rank=3)
    for cls in (transforms.Affine3D, transforms.Attention3D):
        assert transforms.serialize(cls()) == cls.name
        config = keras.saving.serialize_keras_object(cls())
        assert type(transforms.get(json.loads(json.dumps(config)), spatial_rank=3)) is cls


def test_3d_names_suggest_3d_transforms_only():
    assert type(transforms.get("Affine", spatial_rank=3)) is transforms.Affine3D
    with pytest.raises(ValueError, match=r"Did you mean 'attention'\? Got transform='atention'"):
        transforms.get("atention", spatial_rank=3)
    for name in ("tps", "thin_plate_spline", "Projective"):
        with pytest.raises(ValueError) as info:
            transforms.get(name, spatial_rank=3)
        message = str(info.value)
        assert "has no 3-D version" in message and "Did you mean" not in message, message
        assert message.endswith(f"Got transform={name!r}"), message


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_serialize_round_trip_of_built_in_transforms(name):
    transform = transforms.get(name)
    serialized = transforms.serialize(transform)
    if transform.get_config():  # options (the thin-plate spline's grid_size) need a config
        assert serialized == keras.saving.serialize_keras_object(transform)
    else:  # built-ins without options serialise as their name
        assert serialized == name
    again = transforms.get(json.loads(json.dumps(serialized)))
    assert again == transform and type(again) is type(transform)
    assert transforms.get(name) != transforms.get(NAMES[(NAMES.index(name) + 1) % len(NAMES)])
