"""Saving the spatial transformer layers: `get_config` / `from_config`, `.keras` files (trained
models, bounded localization nets, files saved before options existed, images and volumes), and
models saved under one backend loaded under the others."""

import copy
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_stn
from helpers import (
    BACKEND,
    BATCH,
    LAYER_OUT,
    LAYER_SHAPES,
    PAPER_NET,
    both_ranks,
    classifier,
    compile_sgd,
    fit_one_step,
    functional_localization,
    layer_images,
    layer_types,
    per_rank,
    sequential_localization,
    small_localization_3d,
    spatial_transformer,
    to_numpy,
)
from keras_stn import transforms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AFFINE_TRANSFORMS = ["affine", "attention", "translation", "similarity"]
TRANSFORMS = [*AFFINE_TRANSFORMS, "projective", "tps"]

# The images' tests share one shape; the volumes' the other LAYER_SHAPES.
SHAPE, OUT = LAYER_SHAPES[2], LAYER_OUT[2]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def tps_config(grid_size):
    """How a thin-plate spline is stored in a layer config: it has an option, so not by name."""
    return {
        "module": "keras_stn.transforms",
        "class_name": "ThinPlateSpline",
        "config": {"grid_size": grid_size},
        "registered_name": "keras_stn>ThinPlateSpline",
    }


def config_cases(rank):
    """(transform, how the layer config stores it) per rank."""
    if rank == 3:
        return [("affine", "affine"), ("attention", "attention"), (transforms.Attention3D(), "attention")]
    return [(name, name) for name in TRANSFORMS if name != "tps"] + [
        (transforms.Similarity(), "similarity"),
        ("tps", tps_config(3)),
        (transforms.ThinPlateSpline(grid_size=4), tps_config(4)),
    ]


# Non-default options of each rank (bicubic is 2-D only).
CONFIG_OPTIONS = {
    2: {"out_dims": (5, 6), "interpolation": "bicubic"},
    3: {"out_dims": (3, 4, 5), "interpolation": "nearest"},
}


@per_rank(("transform", "serialized"), config_cases, ids=lambda transform, serialized: str(transform))
def test_get_config_round_trip_default_localization(rank, transform, serialized):
    options = CONFIG_OPTIONS[rank]
    layer = spatial_transformer(rank)(
        out_dims=options["out_dims"],
        transform=transform,
        interpolation=options["interpolation"],
        padding_mode="reflection",
        align_corners=True,
        data_format="channels_first",
        return_theta=True,
        localization_gradient_scale=0.25,
        name="st",
    )
    config = layer.get_config()
    json_config = json.loads(json.dumps(config))
    expected = {
        "out_dims": list(options["out_dims"]),
        "transform": serialized,
        "localization": None,
        "interpolation": options["interpolation"],
        "padding_mode": "reflection",
        "align_corners": True,
        "data_format": "channels_first",
        "return_theta": True,
        "localization_gradient_scale": 0.25,
        "name": "st",
    }
    assert {key: json_config[key] for key in expected} == expected
    clone = spatial_transformer(rank).from_config(json_config)
    assert clone.get_config() == config
    assert clone.transform == transforms.get(transform, spatial_rank=rank) and clone.out_dims == options["out_dims"]


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_get_config_round_trip_custom_localization(kind, rng):
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    layer = keras_stn.SpatialTransformer(out_dims=OUT, transform="attention", localization=localization)
    config = layer.get_config()
    assert config["localization"] == keras.saving.serialize_keras_object(localization)
    json_config = json.loads(json.dumps(config))
    clone = keras_stn.SpatialTransformer.from_config(copy.deepcopy(json_config))
    assert json.loads(json.dumps(clone.get_config())) == json_config
    assert type(clone.localization) is type(localization) and clone.localization is not localization
    assert clone.transform == transforms.Attention()
    assert tuple(clone(layer_images(rng)).shape) == (BATCH, *OUT, 2)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_from_config_leaves_its_argument_unchanged(kind):
    """A config is data: building a layer from it must not consume it (a second from_config of
    the same dict, as when one config is used to build several layers, must work)."""
    localization = sequential_localization() if kind == "sequential" else functional_localization()
    config = keras_stn.SpatialTransformer(localization=localization).get_config()
    pristine = copy.deepcopy(config)
    first = keras_stn.SpatialTransformer.from_config(config)
    assert config == pristine
    second = keras_stn.SpatialTransformer.from_config(config)
    assert first.get_config() == second.get_config() == pristine


def test_tps_grid_size_survives_the_layer_config(rng):
    layer = keras_stn.SpatialTransformer(transform=transforms.ThinPlateSpline(grid_size=4), name="st")
    config = json.loads(json.dumps(layer.get_config()))
    assert config["transform"]["config"] == {"grid_size": 4}
    clone = keras_stn.SpatialTransformer.from_config(config)
    assert clone.transform == transforms.ThinPlateSpline(grid_size=4)
    assert transforms.serialize(transforms.get("projective")) == "projective"
    images = rng.random((2, *SHAPE)).astype("float32")
    np.testing.assert_allclose(to_numpy(clone(images)), images, atol=1e-5)
    assert tuple(clone.head.kernel.shape)[-1] == 32


# --------------------------------------------------------------------------------------------
# .keras files
# --------------------------------------------------------------------------------------------


def round_trip_cases(rank):
    """Layer name -> the arguments of one branch: every transform of the rank with the default
    localization, and the affine transform with custom localization nets."""
    if rank == 3:
        return {
            "st_affine": {},
            "st_attention": {"transform": "attention"},
            "st_loc": {"localization": small_localization_3d()},
        }
    cases = {f"st_{name}": {"transform": name} for name in TRANSFORMS}
    cases["st_tps_4"] = {"transform": transforms.ThinPlateSpline(grid_size=4)}
    cases["st_sequential_loc"] = {"localization": sequential_localization()}
    cases["st_functional_loc"] = {"localization": functional_localization()}
    return cases


@both_ranks
def test_keras_file_round_trip(rank, rng, tmp_path):
    """One model, one branch per case. Trained two steps (so the head kernel and the
    localization weights are non-trivial), saved, loaded."""
    x = layer_images(rng, rank, batch=6)
    y = rng.integers(0, 3, size=6)
    cases = round_trip_cases(rank)
    out_dims, interpolation = LAYER_OUT[rank], "bicubic" if rank == 2 else "bilinear"
    inputs = keras.Input(LAYER_SHAPES[rank])
    logits = []
    for name, kwargs in cases.items():
        layer = spatial_transformer(rank)(
            out_dims=out_dims, interpolation=interpolation, padding_mode="border", name=name, **kwargs
        )
        logits.append(keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    model = keras.Model(inputs, keras.layers.Add()(logits))
    compile_sgd(model)
    fit_one_step(model, x, y)
    fit_one_step(model, x, y)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))
    for name in cases:
        saved, restored = model.get_layer(name), loaded.get_layer(name)
        assert isinstance(restored, spatial_transformer(rank)), name
        assert np.abs(to_numpy(saved.head.kernel)).max() > 0, name  # trained, non-trivial
        assert restored.transform == saved.transform and restored.out_dims == out_dims, name
        assert (restored.interpolation, restored.padding_mode) == (interpolation, "border"), name
        assert type(restored.localization) is type(saved.localization), name
        assert len(restored.weights) == len(saved.weights), name
        for weight, restored_weight in zip(saved.weights, restored.weights):
            np.testing.assert_array_equal(to_numpy(restored_weight), to_numpy(weight), err_msg=name)
        warped = keras.Model(model.inputs[0], saved.output)
        warped_loaded = keras.Model(loaded.inputs[0], restored.output)
        np.testing.assert_array_equal(to_numpy(warped_loaded(x)), to_numpy(warped(x)), err_msg=name)


def saved_without_config_keys(model, keys, tmp_path):
    """Saves `model` and returns the path of a copy whose "st" layer config lacks `keys`: a file
    saved before those options existed."""
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    layer_config = next(layer["config"] for layer in config["config"]["layers"] if layer["config"]["name"] == "st")
    for key in keys:
        del layer_config[key]
    entries["config.json"] = json.dumps(config).encode()
    older = tmp_path / "older.keras"
    with zipfile.ZipFile(older, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return older


def test_keras_file_from_an_older_config_loads(rng, tmp_path):
    """A model saved before options were added has a layer config without their keys; it loads
    with their defaults. Simulated by deleting every key with a default from a saved file."""
    x = layer_images(rng)
    model = classifier(out_dims=OUT)
    compile_sgd(model)
    fit_one_step(model, x, rng.integers(0, 3, size=BATCH))
    optional = ("transform", "localization", "interpolation", "padding_mode", "align_corners", "data_format")
    optional += ("return_theta", "localization_gradient_scale")
    loaded = keras.models.load_model(saved_without_config_keys(model, optional, tmp_path))
    restored = loaded.get_layer("st")
    assert restored.transform == transforms.Affine() and restored.out_dims == OUT
    assert (restored.interpolation, restored.padding_mode, restored.align_corners) == ("bilinear", "zeros", False)
    assert restored.data_format == keras.config.image_data_format() and not restored.return_theta
    assert restored.localization_gradient_scale == 1.0
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


def test_keras_file_round_trip_of_a_bounded_localization(rng, tmp_path):
    shape = (130, 70, 1)  # pooled by 3 along the height, 2 along the width
    x = rng.random((2, *shape)).astype("float32")
    model = classifier(shape, out_dims=OUT, localization_max_size=50)
    compile_sgd(model, learning_rate=0.05)
    fit_one_step(model, x, np.array([0, 1]))
    assert layer_types(model.get_layer("st")) == ["MaxPooling2D", *PAPER_NET[2]]
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("st").localization_max_size == 50
    assert loaded.get_layer("st").count_params() == model.get_layer("st").count_params()
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


def test_keras_file_saved_before_the_bound_loads_its_unbounded_net(rng, tmp_path):
    """A file whose layer config has no `localization_max_size` was saved when the default net
    had no bound: it loads with that net, whose weights it holds."""
    shape = (72, 72, 1)
    x = rng.random((2, *shape)).astype("float32")
    model = classifier(shape, out_dims=OUT, localization_max_size=None)
    loaded = keras.models.load_model(saved_without_config_keys(model, ["localization_max_size"], tmp_path))
    restored = loaded.get_layer("st")
    assert restored.localization_max_size is None and layer_types(restored) == PAPER_NET[2]
    assert restored.count_params() == model.get_layer("st").count_params()
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))


def test_bounded_3d_localization_is_the_identity_and_round_trips(rng, tmp_path):
    shape = (40, 6, 5, 2)  # pooled by 2 along the depth only
    volumes = rng.random((2, *shape)).astype("float32")
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras_stn.SpatialTransformer3D(name="st")(inputs))
    assert type(model.get_layer("st").localization.layers[0]).__name__ == "MaxPooling3D"
    assert len(model.get_layer("st").localization.layers) == 7
    np.testing.assert_array_equal(to_numpy(model(volumes)), volumes)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("st").localization_max_size == 32
    assert loaded.get_layer("st").count_params() == model.get_layer("st").count_params()


# --------------------------------------------------------------------------------------------
# Across backends
# --------------------------------------------------------------------------------------------

LOAD_AND_PREDICT = """
import sys
import numpy as np
import keras
from keras import ops
import keras_stn  # registers the serialisable classes

directory, backend = sys.argv[1], sys.argv[2]
assert keras.config.backend() == backend, keras.config.backend()
model = keras.models.load_model(directory + "/model.keras")
outputs = model.predict(np.load(directory + "/x.npy"), verbose=0)
for index, output in enumerate(outputs):
    np.save(f"{directory}/{backend}_{index}.npy", keras.ops.convert_to_numpy(output))
"""


def run_under(backend, script, *args):
    """Runs `script` with `args` in a Python process under `backend`, with this checkout importable."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, check=False, text=True, timeout=300
    )


@pytest.mark.slow
def test_model_saved_here_loads_and_predicts_under_the_other_backends(rng, tmp_path):
    x = layer_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    inputs = keras.Input(SHAPE)
    warped, theta = keras_stn.SpatialTransformer(out_dims=OUT, transform="attention", return_theta=True)(inputs)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(warped))
    trained = keras.Model(inputs, logits)
    compile_sgd(trained, learning_rate=0.05)  # small enough to keep the logits O(1)
    trained.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    model = keras.Model(inputs, [logits, theta, warped])  # the same layers, more outputs
    expected = [to_numpy(t) for t in model.predict(x, verbose=0)]
    assert np.abs(expected[0]).max() < 10
    assert np.abs(expected[1] - [1, 0, 0]).max() > 1e-6  # trained: theta is no longer the identity
    model.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)

    for other in sorted({"tensorflow", "jax", "torch"} - {BACKEND}):
        result = run_under(other, LOAD_AND_PREDICT, str(tmp_path), other)
        assert result.returncode == 0, f"{other}:\n{result.stderr[-3000:]}"
        for index, want in enumerate(expected):
            got = np.load(tmp_path / f"{other}_{index}.npy")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"saved by {BACKEND}, loaded by {other}")


# A compiled model's optimizer is saved under the class Keras made for the saving backend:
# under torch `keras.src.backend.torch.optimizers.torch_adam.Adam`, which cannot be imported
# where torch is not installed, so `load_model(path)` fails there. The subprocess hides the
# saving backend's framework from every import finder, as if it were not installed
# (`sys.modules[name] = None` is not enough: scipy and torch probe `sys.modules` and
# `importlib.util.find_spec` for the frameworks they can hand arrays to).
LOAD_WITHOUT_THE_SAVING_FRAMEWORK = """
import sys
directory, backend, hidden = sys.argv[1], sys.argv[2], sys.argv[3]


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == hidden:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
import importlib.util
assert importlib.util.find_spec(hidden) is None

import numpy as np
import keras
import keras_stn  # registers the serialisable classes

assert keras.config.backend() == backend, keras.config.backend()
x, y = np.load(directory + "/x.npy"), np.load(directory + "/y.npy")
model = keras.saving.load_model(directory + "/model.keras", compile=False)
np.save(f"{directory}/{backend}.npy", keras.ops.convert_to_numpy(model.predict(x, verbose=0)))
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=1, verbose=0)  # recompiled here, it trains (from a fresh optimizer state)
assert hidden not in sys.modules, hidden
"""


@pytest.mark.slow
def test_compiled_model_loads_under_another_backend_without_the_saving_framework(rng, tmp_path):
    x = layer_images(rng)
    y = rng.integers(0, 3, size=BATCH)
    model = classifier(out_dims=OUT, transform="attention")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_one_step(model, x, y)
    expected = to_numpy(model.predict(x, verbose=0))
    model.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)

    for other in sorted({"tensorflow", "jax", "torch"} - {BACKEND}):
        result = run_under(other, LOAD_WITHOUT_THE_SAVING_FRAMEWORK, str(tmp_path), other, BACKEND)
        assert result.returncode == 0, f"saved by {BACKEND}, loaded by {other}:\n{result.stderr[-3000:]}"
        got = np.load(tmp_path / f"{other}.npy")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"saved by {BACKEND}, loaded by {other}")
