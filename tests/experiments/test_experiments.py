"""The distorted-MNIST experiment: models, figures, the command line and a --quick MLflow run."""

import contextlib
import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest

pytest.importorskip("mlflow", reason="the experiments need the `experiments` extra (mlflow)")
pytest.importorskip("matplotlib", reason="the experiments need the `experiments` extra (matplotlib)")

import mlflow  # noqa: E402

import keras_stn  # noqa: E402
from experiments import (  # noqa: E402
    ablation,
    choices,
    data,
    distorted_mnist,
    figures,
    models,
    runs,
    study,
    tables,
    tracking,
    training,
)
from helpers import BACKEND, to_numpy  # noqa: E402

# ------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("transform", models.transform_choices())
def test_every_arm_shares_the_classifier(transform, rng):
    shape = (42, 42, 1)
    model = models.build_model(transform, shape)
    baseline = models.build_model("none", shape)
    classifier = [layer for layer in model.layers if layer.name in {"downsample", "conv1", "conv2", "probabilities"}]
    reference = [layer for layer in baseline.layers if layer.name in {"downsample", "conv1", "conv2", "probabilities"}]
    assert [layer.name for layer in classifier] == ["downsample", "conv1", "conv2", "probabilities"]
    assert [layer.count_params() for layer in classifier] == [layer.count_params() for layer in reference]
    images = rng.random((2, *shape)).astype("float32")
    probabilities = to_numpy(model(images))
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    warper = models.transformer_output(model)
    if transform == "none":
        assert warper is None
    else:
        # Identity-initialised: before training the transformer hands the classifier its input
        # (bit for bit through the fused affine sampler, up to float32 rounding through a grid).
        layer = model.get_layer(models.TRANSFORMER_NAME)
        assert isinstance(layer, keras_stn.SpatialTransformer)
        if isinstance(layer.transform, keras_stn.transforms.AffineTransform):
            np.testing.assert_array_equal(to_numpy(warper(images)), images)
        else:
            np.testing.assert_allclose(to_numpy(warper(images)), images, rtol=0, atol=1e-5)
        assert layer.transform.name == transform
        assert layer.localization.layers[-1].units == models.LOCALIZATION_UNITS


def test_small_canvases_are_not_downsampled():
    names = [layer.name for layer in models.build_model("affine", (28, 28, 1)).layers]
    assert "downsample" not in names and "spatial_transformer" in names


@pytest.mark.parametrize("transform", ["affine", "attention"])
def test_downsample_off_keeps_every_pixel_and_the_classifier_shared(transform):
    shape = (42, 42, 1)
    cnn = models.build_model("none", shape, downsample="off")
    st_cnn = models.build_model(transform, shape, downsample="off")
    for model in (cnn, st_cnn):
        assert "downsample" not in [layer.name for layer in model.layers]
        assert model.get_layer("conv1").output.shape[1:3] == (42, 42)
    for name in ("conv1", "conv2", "probabilities"):
        assert st_cnn.get_layer(name).count_params() == cnn.get_layer(name).count_params()
    pooled = models.build_model("none", shape)
    assert pooled.get_layer("conv1").output.shape[1:3] == (21, 21)
    # Four times the pixels after the convolutions, so a four times wider softmax layer.
    assert cnn.get_layer("probabilities").count_params() > pooled.get_layer("probabilities").count_params()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"transform": "rotation", "input_shape": (28, 28, 1)}, r"`transform` must be one of .*'none'.*'affine'"),
        ({"transform": "affine", "input_shape": (28, 28)}, r"`input_shape` must be \(height, width, channels\)"),
        (
            {"transform": "none", "input_shape": (42, 42, 1), "downsample": "on"},
            r"`downsample` must be one of \['auto', 'off'\]. Got downsample='on'",
        ),
    ],
)
def test_build_model_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        models.build_model(**kwargs)


# ----------------------------------------------------------------------------------- figures


def test_figure_epochs():
    assert tracking.figure_epochs(1) == [0, 1]
    assert tracking.figure_epochs(10) == [0, 1, 2, 4, 8, 10]
    assert tracking.figure_epochs(16) == [0, 1, 2, 4, 8, 16]


def test_side_by_side_interleaves_inputs_and_outputs(rng):
    inputs = rng.random((4, 6, 6, 1)).astype("float32")
    warped = rng.random((4, 3, 3, 1)).astype("float32")
    pairs = figures.side_by_side(inputs, warped)
    assert pairs.shape == (8, 6, 6, 3)
    np.testing.assert_array_equal(pairs[0, ..., 1], inputs[0, ..., 0])
    np.testing.assert_array_equal(pairs[3, ..., 2], np.repeat(np.repeat(warped[1, ..., 0], 2, 0), 2, 1))


@pytest.mark.parametrize("keras_cv_available", [True, False])
def test_warp_gallery(keras_cv_available, rng, monkeypatch):
    if keras_cv_available:
        pytest.importorskip("keras_cv", reason="keras-cv is optional (the `experiments` extra)")
    else:
        monkeypatch.setitem(sys.modules, "keras_cv.visualization", None)  # import raises ImportError
    images = rng.random((8, 12, 12, 1)).astype("float32")
    figure = figures.warp_gallery(images, images[:, ::-1], "affine, epoch 3")
    assert len([axis for axis in figure.axes if axis.images]) == 16
    assert "affine, epoch 3" in figure._suptitle.get_text()
    figures.plt.close(figure)


# -------------------------------------------------------------------------------- command line


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        distorted_mnist.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--distortion", "--transforms", "--epochs", "--batch-size", "--lr", "--seed", "--data"):
        assert flag in text
    for flag in ("--experiment-name", "--quick", "--cache-dir", "--results-dir", "--distribute"):
        assert flag in text
    assert "cluttered" in text and "attention" in text


HEAVY_MODULES = ("keras", "mlflow", "numpy", "tensorflow", "jax", "torch", "matplotlib", "keras_stn")


def modules_imported_by(argv):
    """The heavy modules `python -m experiments.distorted_mnist <argv>` imports, and its output:
    the entry point runs in a fresh interpreter that reports `sys.modules` once it has exited."""
    wrapper = (
        "import json, runpy, sys\n"
        f"sys.argv = ['distorted_mnist', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('experiments.distorted_mnist', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        f"print(json.dumps({{'code': code, 'imported': [m for m in {HEAVY_MODULES!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, done


@pytest.mark.parametrize(
    "argv, code, stream, text",
    [
        (["--help"], 0, "stdout", "--distortion"),
        (["--epochs", "0"], 2, "stderr", "--epochs: expected a positive integer"),
        (["--transforms", "affine", "affine"], 2, "stderr", "lists an arm twice"),
    ],
)
def test_help_and_argument_errors_import_no_framework(argv, code, stream, text):
    report, done = modules_imported_by(argv)
    assert report["code"] == code, done.stderr
    assert text in getattr(done, stream)
    assert report["imported"] == [], f"imported before the arguments were parsed: {report['imported']}"


def test_light_choices_match_the_real_ones():
    assert choices.DISTORTIONS == data.DISTORTIONS
    assert choices.TRANSFORMS == models.transform_choices()
    assert choices.NO_TRANSFORM == models.NO_TRANSFORM


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--distortion", "x"], "invalid choice: 'x'"),
        (["--transforms", "rotation"], "invalid choice: 'rotation'"),
        (["--transforms", "affine", "affine"], "lists an arm twice"),
        (["--epochs", "0"], "expected a positive integer"),
        (["--lr", "-1"], "expected a positive number"),
        (["--seeds", "0", "1", "0"], "--seeds lists a seed twice: expected distinct seeds, got [0, 1, 0]"),
        (["--seeds", "-1"], "argument --seeds/--seed: expected an integer >= 0, got -1"),
        (["--data-seed", "x"], "argument --data-seed: invalid non_negative_int value: 'x'"),
        (["--epochs", "3", "--iterations", "9"], "expected one of them, got --epochs 3 --iterations 9"),
        (["--momentum", "0.9"], "--momentum applies to --optimizer sgd only: got --momentum 0.9 with --optimizer adam"),
        (["--optimizer", "sgd", "--momentum", "1"], "argument --momentum: expected a number in [0, 1), got 1"),
        (["--lr-drop-every", "10"], "--lr-drop-every applies to --schedule step only: got --lr-drop-every 10 with"),
        (["--schedule", "step", "--lr-drop-factor", "1"], "--lr-drop-factor: expected a number in (0, 1), got 1"),
        (["--protocol", "fast"], "argument --protocol: invalid choice: 'fast'"),
        (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["--iterations", "0"], "argument --iterations: expected a positive integer, got 0"),
        (["--downsample", "on"], "argument --downsample: invalid choice: 'on'"),
        (["--train-size", "0"], "argument --train-size: expected a positive integer, got 0"),
        (["--train-size", "50001"], "--train-size exceeds the training split: expected at most 50000 digits, got"),
        (["--quick", "--train-size", "257"], "expected at most 256 digits with --quick, got --train-size 257"),
        (["--note", " "], "argument --note: expected one non-empty line of text, got ' '"),
        (["--note", "a\nb"], "argument --note: expected one non-empty line of text, got 'a\\nb'"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        distorted_mnist.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="one process per device is torch's way; jax and tensorflow use one")
def test_distribute_on_torch_over_two_processes_equals_one_process(tmp_path, synthetic_mnist):
    """--distribute with two gloo processes on the CPU, each fitting half of every batch with the
    gradients averaged, trains the same weights as one process on the whole batch (to rounding)."""
    import json

    common = ["--quick", "--transforms", "affine", "--optimizer", "sgd", "--lr", "0.05", "--verbose", "0"]
    common += ["--data", synthetic_mnist, "--cache-dir", str(tmp_path / "cache"), "--experiment-name", "ddp"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "KERAS_STN_TORCH_TIMEOUT": "120"}
    weights = {}
    for name, extra, processes in (("single", [], "1"), ("two", ["--distribute"], "2")):
        subprocess.run(
            [sys.executable, "-m", "experiments.distorted_mnist", *common, *extra, "--runs-dir", str(tmp_path / name)],
            cwd=Path(__file__).resolve().parents[2],
            env={**env, "KERAS_STN_TORCH_PROCESSES": processes},
            check=True,
            timeout=600,
        )
        (arm,) = (tmp_path / name).glob("*/affine_seed0")
        state = json.loads((arm / "state.json").read_text())
        assert state["status"] == "trained" and state["params"]["processes"] == int(processes)
        weights[name] = keras.saving.load_model(arm / "model.keras").get_weights()
    changed = max(float(np.abs(a - b).max()) for a, b in zip(weights["single"], weights["two"]))
    assert changed < 1e-5, changed


@pytest.mark.skipif(BACKEND != "torch", reason="one process per device is torch's way; jax and tensorflow use one")
def test_distribute_on_torch_needs_a_batch_that_splits_evenly(monkeypatch):
    from experiments import torch_parallel

    monkeypatch.setenv("KERAS_STN_TORCH_PROCESSES", "3")
    assert torch_parallel.world_size() == 3
    with pytest.raises(ValueError, match="expected a --batch-size divisible by 3, got 64"):
        torch_parallel.check_batch_size(64, 3)
    monkeypatch.setenv("KERAS_STN_TORCH_PROCESSES", "0")
    with pytest.raises(ValueError, match="KERAS_STN_TORCH_PROCESSES must be a positive integer"):
        torch_parallel.world_size()


def test_downsample_train_size_and_note_defaults():
    args = distorted_mnist.parse_args([])
    assert (args.downsample, args.train_size, args.note) == ("auto", None, None)
    args = distorted_mnist.parse_args(["--downsample", "off", "--train-size", "5000", "--note", " shared CPU "])
    assert (args.downsample, args.train_size, args.note) == ("off", 5000, "shared CPU")


def test_train_size_takes_the_first_training_digits_and_keeps_validation_and_test(monkeypatch):
    def fake_load_distorted(distortion, num_train=None, num_test=None, **kwargs):
        size = num_train or 60
        return {
            "x_train": np.arange(size, dtype="float32"),
            "y_train": np.arange(size),
            "x_test": np.arange(num_test or 20, dtype="float32"),
            "y_test": np.arange(num_test or 20),
        }

    monkeypatch.setattr(data, "load_distorted", fake_load_distorted)
    monkeypatch.setattr(study, "VALIDATION_SIZE", 10)
    whole = study.load_splits(distorted_mnist.parse_args([]))
    assert [len(split[0]) for split in whole.values()] == [50, 10, 20]
    subset = study.load_splits(distorted_mnist.parse_args(["--train-size", "7"]))
    np.testing.assert_array_equal(subset["train"][0], np.arange(7))
    np.testing.assert_array_equal(subset["train"][1], np.arange(7))
    np.testing.assert_array_equal(subset["validation"][0], whole["validation"][0])
    np.testing.assert_array_equal(subset["test"][0], whole["test"][0])


def test_seeds_and_the_single_seed_alias():
    assert distorted_mnist.parse_args([]).seeds == [0]
    assert distorted_mnist.parse_args(["--seed", "3"]).seeds == [3]
    args = distorted_mnist.parse_args(["--seeds", "0", "1", "2"])
    assert args.seeds == [0, 1, 2] and args.data_seed == 0


def test_summary_is_mean_and_sample_std_over_seeds_and_says_n_1():
    rows = [
        {"transform": "none", "seed": 0, "test_error": 2.0},
        {"transform": "affine", "seed": 0, "test_error": 1.0},
        {"transform": "none", "seed": 1, "test_error": 4.0},
        {"transform": "none", "seed": 2, "test_error": 6.0},
    ]
    none, affine = tables.summarize(rows, "rts")
    assert (none["transform"], none["n"], none["mean"], none["std"]) == ("none", 3, 4.0, 2.0)
    assert none["test_error"] == "4.00 ± 2.00" and none["paper_test_error"] == 0.8 and none["seeds"] == "0 1 2"
    assert (affine["n"], affine["std"], affine["test_error"]) == (1, None, "1.00 (n=1)")


def test_quick_sets_epochs_and_batch_size_unless_given():
    args = distorted_mnist.parse_args(["--quick"])
    assert (args.epochs, args.iterations, args.batch_size) == (1, None, distorted_mnist.QUICK["batch_size"])
    args = distorted_mnist.parse_args(["--quick", "--epochs", "3", "--batch-size", "32"])
    assert (args.epochs, args.batch_size) == (3, 32)
    assert distorted_mnist.parse_args(["--quick", "--protocol", "paper"]).iterations is None  # one quick epoch


def protocol(args):
    names = ("optimizer", "momentum", "schedule", "lr", "lr_drop_every", "lr_drop_factor", "batch_size")
    return {name: getattr(args, name) for name in (*names, "epochs", "iterations")}


def test_default_protocol_is_adam_cosine_and_paper_protocol_is_the_papers():
    assert protocol(distorted_mnist.parse_args([])) == {
        "optimizer": "adam",
        "momentum": None,
        "schedule": "cosine",
        "lr": 1e-3,
        "lr_drop_every": None,
        "lr_drop_factor": None,
        "batch_size": 256,
        "epochs": 10,
        "iterations": None,
    }
    # PAPER.md: SGD (no momentum stated), batch 256, lr 0.01 / 10 every 50k iterations, 150k iterations.
    assert protocol(distorted_mnist.parse_args(["--protocol", "paper"])) == {
        "optimizer": "sgd",
        "momentum": 0.0,
        "schedule": "step",
        "lr": 0.01,
        "lr_drop_every": 50_000,
        "lr_drop_factor": 0.1,
        "batch_size": 256,
        "epochs": None,
        "iterations": 150_000,
    }
    shortened = distorted_mnist.parse_args(["--protocol", "paper", "--epochs", "4", "--momentum", "0.9"])
    assert (shortened.epochs, shortened.iterations, shortened.momentum, shortened.optimizer) == (4, None, 0.9, "sgd")
    assert distorted_mnist.parse_args(["--optimizer", "sgd"]).lr == 0.01


def test_step_schedule_divides_by_ten_every_drop():
    args = distorted_mnist.parse_args(["--protocol", "paper"])
    schedule = training.learning_rate(args, train_size=50_000)
    rates = [float(to_numpy(schedule(step))) for step in (0, 49_999, 50_000, 100_000, 149_999)]
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.0001, 0.0001], rtol=1e-6)
    optimizer = training.optimizer(args, 50_000)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.0
    assert training.total_steps(args, 50_000) == 150_000 and training.epoch_count(args, 50_000) == 766
    cosine = training.learning_rate(distorted_mnist.parse_args(["--epochs", "2"]), train_size=1000)
    assert float(to_numpy(cosine(8))) == pytest.approx(0.0, abs=1e-9)  # 2 epochs of 4 steps: decayed to 0
    constant = distorted_mnist.parse_args(["--schedule", "constant", "--lr", "0.05"])
    assert training.learning_rate(constant, 1000) == 0.05


def test_batch_stream_is_a_function_of_seed_and_step():
    x = np.arange(10)
    batches = list(itertools.islice(training.batch_stream(x, x, 4, seed=3), 5))  # 20 digits: two passes
    assert all(len(images) == 4 for images, _ in batches)
    flat = np.concatenate([images for images, _ in batches])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))  # each pass a permutation
    assert not np.array_equal(flat[:10], flat[10:])
    later = list(itertools.islice(training.batch_stream(x, x, 4, seed=3, start_step=3), 2))
    np.testing.assert_array_equal(np.concatenate([b for b, _ in later]), flat[12:20])
    other = next(training.batch_stream(x, x, 4, seed=4))[0]
    assert not np.array_equal(other, flat[:4])


def test_fit_segments_stop_after_exactly_the_steps():
    assert training.fit_segments(0, 12, 4) == [(0, 3, 4)]
    assert training.fit_segments(0, 10, 4) == [(0, 2, 4), (2, 3, 2)]
    assert training.fit_segments(2, 10, 4) == [(2, 3, 2)]
    assert training.fit_segments(1, 10, 4) == [(1, 2, 4), (2, 3, 2)]
    assert training.fit_segments(3, 10, 4) == []


def test_fit_trains_exactly_the_iterations(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = rng.random((10, 3)).astype("float32"), rng.integers(0, 2, 10)
    history = training.fit(model, (x, y), seed=0, steps=7, epoch_steps=3, batch_size=4, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 7
    assert len(history["loss"]) == 3  # epochs of 3, 3 and 1 steps


# ------------------------------------------------------------------------- a --quick MLflow run


@pytest.fixture
def tracking_dir(tmp_path, monkeypatch):
    """A fresh MLflow store in a temporary working directory (artifacts land beside it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(None)  # forget any URI cached by an earlier test: read the variable
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_quick_run_records_runs_params_metrics_models_and_figures(tracking_dir, synthetic_mnist):
    argv = ["--quick", "--distortion", "rts", "--transforms", "none", "affine", "--seeds", "3", "5"]
    argv += ["--data", synthetic_mnist, "--cache-dir", str(tracking_dir / "cache"), "--note", "a shared machine"]
    argv += ["--results-dir", str(tracking_dir / "results"), "--experiment-name", "smoke", "--verbose", "0"]
    argv += ["--distribute"]  # data parallel over every device: the two CPUs conftest.py simulates
    parent_id, rows = study.run(distorted_mnist.parse_args(argv))
    arms = [("none", 3), ("none", 5), ("affine", 3), ("affine", 5)]
    assert [(row["transform"], row["seed"]) for row in rows] == arms

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.data.params["distortion"] == "rts" and parent.data.params["backend"] == BACKEND
    assert parent.data.params["transforms"] == "none affine" and parent.data.params["seeds"] == "3 5"
    assert parent.data.params["distribute"] == "True"
    assert (parent.data.params["downsample"], parent.data.params["train_size"]) == ("auto", "256")
    assert parent.data.params["note"] == "a shared machine"
    assert all(0 <= row["train_error"] <= 100 and row["train_size"] == 256 for row in rows)
    parent_artifacts = {artifact.path for artifact in client.list_artifacts(parent_id)}
    assert {"comparison.csv", "comparison.md", "learning_curves.png"} <= parent_artifacts
    table = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/comparison.md")
    assert "| none | 2 |" in table and "| affine | 2 |" in table and "| 0.5 |" in table  # the paper's affine rts
    assert " ± " in table and "seeds 3 5 (weights and shuffling), dataset seed 0" in table
    assert "- 256 training digits, 128 validation, 128 test; downsample auto (every arm)" in table
    assert "- a shared machine" in table
    for transform, seed in arms:
        assert f"| {transform} | {seed} |" in table
    assert (tracking_dir / "results" / f"rts_{BACKEND}.md").read_text() == table
    with open(tracking_dir / "results" / f"rts_{BACKEND}.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [(row["transform"], int(row["seed"])) for row in written] == arms
    assert {"transform", "seed", "test_error", "backend", "data_seed", "paper_test_error"} <= set(written[0])
    assert {"train_error", "train_size", "downsample"} <= set(written[0])
    assert {row["backend"] for row in written} == {BACKEND} and {row["data_seed"] for row in written} == {"0"}
    assert set(parent.data.metrics) == {
        "test_error_none",
        "test_error_affine",
        "test_error_std_none",
        "test_error_std_affine",
    }
    mean_none = np.mean([row["test_error"] for row in rows if row["transform"] == "none"])
    assert parent.data.metrics["test_error_none"] == pytest.approx(mean_none)

    experiment = client.get_experiment_by_name("smoke")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted((child.data.params["transform"], int(child.data.params["seed"])) for child in children) == sorted(
        arms
    )
    images = np.zeros((2, 42, 42, 1), "float32")
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        for name in ("distortion", "backend", "backend_version", "keras_version", "device", "epochs", "batch_size"):
            assert name in params, name
        assert params["data_seed"] == "0" and params["lr"] == "0.001" and params["epochs"] == "1"
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "val_error", "step_ms", "test_error"):
            assert np.isfinite(metrics[name]), name
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1]
        row = next(row for row in rows if (row["transform"], str(row["seed"])) == (params["transform"], params["seed"]))
        assert metrics["test_error"] == pytest.approx(row["test_error"], abs=0.01)
        if params["seed"] != "3":
            continue  # the models and figures of one seed per arm are checked below; the others are alike

        models_logged = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'"
        )
        assert len(models_logged) == 1
        loaded = mlflow.keras.load_model(models_logged[0].model_uri)
        assert getattr(loaded, "optimizer", None) is None, "logged without the optimizer, whose class may be torch-only"
        assert loaded.output_shape == (None, 10)
        assert to_numpy(loaded(images)).shape == (2, 10)

        warps = {artifact.path for artifact in client.list_artifacts(child.info.run_id, "warps")}
        if params["transform"] == "none":
            assert warps == set()
        else:
            assert warps == {"warps/epoch_000.png", "warps/epoch_001.png"}
            assert any(isinstance(layer, keras_stn.SpatialTransformer) for layer in loaded.layers)


@pytest.mark.slow
def test_paper_protocol_run_stops_after_the_iterations_and_records_the_protocol(tracking_dir, synthetic_mnist):
    argv = ["--quick", "--transforms", "none", "--protocol", "paper", "--iterations", "6", "--lr-drop-every", "4"]
    argv += ["--data", synthetic_mnist, "--cache-dir", str(tracking_dir / "cache"), "--verbose", "0"]
    argv += ["--results-dir", str(tracking_dir / "results"), "--experiment-name", "paper"]
    parent_id, rows = study.run(distorted_mnist.parse_args(argv))
    assert (rows[0]["epochs"], rows[0]["steps"]) == (2, 6)  # 256 training digits at batch 64: epochs of 4 and 2 steps
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("paper")
    (child,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    expected = {"protocol": "paper", "optimizer": "sgd", "momentum": "0.0", "schedule": "step", "lr": "0.01"}
    expected.update(lr_drop_every="4", lr_drop_factor="0.1", batch_size="64", iterations="6", steps="6")
    assert {name: child.data.params[name] for name in expected} == expected
    assert client.get_run(parent_id).data.params["optimizer"] == "sgd"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2]
    table = (tracking_dir / "results" / f"rts_{BACKEND}.md").read_text()
    assert "protocol paper: SGD (momentum 0.0), lr 0.01 × 0.1 every 4 steps, batch 64, 6 steps, --quick" in table


# ----------------------------------------------------------------------------------- ablation


def test_ablation_configurations_and_their_errors(capsys):
    args = ablation.parse_args(["--configs", "off:sgd:3", "auto:adam:1", "--train-size", "100"])
    assert args.configs == [
        {"downsample": "off", "optimizer": "sgd", "epochs": 3},
        {"downsample": "auto", "optimizer": "adam", "epochs": 1},
    ]
    first = args.study_args[0]
    assert (first.downsample, first.optimizer, first.schedule, first.lr, first.momentum) == (
        "off",
        "sgd",
        "cosine",
        0.01,
        0,
    )
    assert (first.epochs, first.train_size, first.transforms) == (3, 100, ["none"])
    assert [ablation.configuration(text)["epochs"] for text in ablation.DEFAULT_CONFIGS] == [10, 30, 10, 30, 10, 30]
    for argv, message in [
        (["--configs", "auto:adam"], "expected DOWNSAMPLE:OPTIMIZER:EPOCHS such as auto:adam:10, got 'auto:adam'"),
        (["--configs", "on:adam:10"], "expected a downsample in ['auto', 'off'], got 'on' in 'on:adam:10'"),
        (["--configs", "auto:rmsprop:10"], "expected an optimizer in ['adam', 'sgd'], got 'rmsprop'"),
        (["--configs", "auto:adam:0"], "expected a positive number of epochs, got '0' in 'auto:adam:0'"),
        (
            ["--configs", "auto:adam:1", "auto:adam:1"],
            "--configs lists a configuration twice: got auto:adam:1 auto:adam:1",
        ),
        (["--train-size", "60000"], "--train-size exceeds the training split"),
        (["--seeds", "1", "1"], "--seeds lists a seed twice"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            ablation.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_ablation_help_imports_no_framework():
    wrapper = (
        "import json, runpy, sys\n"
        "sys.argv = ['ablation', '--help']\n"
        "try:\n"
        "    runpy.run_module('experiments.ablation', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True
    )
    assert "DOWNSAMPLE:OPTIMIZER:EPOCHS" in done.stdout and "--train-size" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_ablation_quick_run_writes_one_row_per_configuration_and_seed(tracking_dir, synthetic_mnist):
    argv = ["--quick", "--configs", "auto:adam:1", "off:sgd:2", "--seeds", "0", "1", "--train-size", "64"]
    argv += ["--data", synthetic_mnist, "--cache-dir", str(tracking_dir / "cache"), "--verbose", "0"]
    argv += ["--results-dir", str(tracking_dir / "results"), "--runs-dir", str(tracking_dir / "runs")]
    rows = ablation.main([*argv, "--note", "tiny"])
    with open(tracking_dir / "results" / f"ablation_rts_{BACKEND}.csv") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == list(ablation.COLUMNS)
    configs = [(row["downsample"], row["optimizer"], row["epochs"], row["seed"]) for row in written]
    assert configs == [
        ("auto", "adam", "1", "0"),
        ("auto", "adam", "1", "1"),
        ("off", "sgd", "2", "0"),
        ("off", "sgd", "2", "1"),
    ]
    assert [row["steps"] for row in written] == ["1", "1", "2", "2"]  # 64 digits at batch 256: one step per epoch
    assert {row["train_size"] for row in written} == {"64"} and {row["backend"] for row in written} == {BACKEND}
    assert all(0 <= row["train_error"] <= 100 and 0 <= row["test_error"] <= 100 for row in rows)
    assert rows[0]["params"] < rows[2]["params"]  # without the pooling the softmax layer sees 4x the features
    assert len({row["run_folder"] for row in written}) == 2  # one study per configuration
    table = (tracking_dir / "results" / f"ablation_rts_{BACKEND}.md").read_text()
    assert "- 64 training digits, 128 validation, 128 test; batch 256" in table and "- tiny" in table
    assert "| off | sgd | cosine | 0.01 | 0.0 | 2 | 2 | 64 | none | 1 |" in table

    # Run again with one configuration more: the two already in the CSV are kept, not trained again.
    argv[argv.index("off:sgd:2") + 1 : argv.index("off:sgd:2") + 1] = ["auto:sgd:1"]
    again = ablation.main(argv)
    assert [(row["optimizer"], str(row["epochs"])) for row in again] == [("adam", "1")] * 2 + [("sgd", "2")] * 2 + [
        ("sgd", "1")
    ] * 2
    assert [row["run_folder"] for row in again[:4]] == [row["run_folder"] for row in written]
    assert len(list((tracking_dir / "runs").iterdir())) == 3


def test_backend_version_and_device_are_recorded():
    params = tracking.environment_params()
    assert params["backend"] == BACKEND == keras.backend.backend()
    assert params["backend_version"] and params["keras_stn_version"] == keras_stn.__version__
    assert params["device"].startswith(("cpu", "cuda", "gpu"))


def test_epoch_logger_keeps_keras_async_dispatch(tmp_path, rng):
    """No batch-level hook (Keras would then dispatch every training step synchronously), and
    the per-epoch timing still measures the training part of each epoch."""
    for hook in ("on_batch_end", "on_train_batch_begin", "on_train_batch_end", "on_test_batch_end"):
        assert getattr(tracking.EpochLogger, hook) is getattr(keras.callbacks.Callback, hook), hook
    model = models.build_model("none", (28, 28, 1))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images = rng.random((16, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, 16)
    arm = runs.Arm(tmp_path / "none_seed0", "none", 0)
    synced = []
    logger = tracking.EpochLogger(arm, images[:4], epochs=2, after_epoch=synced.append)
    model.fit(images, labels, batch_size=8, epochs=2, validation_data=(images, labels), callbacks=[logger], verbose=0)
    model.fit(images, labels, batch_size=8, epochs=1, callbacks=[logger], verbose=0)  # no validation
    assert len(logger.step_ms) == 3 and all(ms > 0 for ms in logger.step_ms)
    assert synced == [arm] * 3 and arm.state["epochs_done"] == 3
    history = arm.history()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert "val_error" in history[1] and "val_error" not in history[2]
    assert [path.name for path in arm.folder.glob("checkpoint-*.keras")] == ["checkpoint-0003.keras"]


# ------------------------------------------------------- runs that survive outages and interruptions


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store, that a test can kill and restart."""

    START_SECONDS = 120

    def __init__(self, root):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port, self.process = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.root / "artifacts")]
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )
        deadline = time.monotonic() + self.START_SECONDS
        for _ in range(4 * self.START_SECONDS):  # bounded in count and in time
            if self.process.poll() is not None or time.monotonic() > deadline:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self):
        """Kills the server and its workers at once (SIGKILL: an outage, not a shutdown)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = MlflowServer(tmp_path / "server")
    try:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        # A dead server should cost a second per call here, not MLflow's minutes.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        mlflow.set_tracking_uri(None)
        yield server
    finally:
        server.stop()
        mlflow.set_tracking_uri(None)


class Outage(keras.callbacks.Callback):
    """Kills the server after the first epoch of the first arm, restarts it as the second arm starts."""

    def __init__(self, server):
        super().__init__()
        self.server, self.arms = server, 0

    def on_train_begin(self, logs=None):
        self.arms += 1
        if self.arms == 2:
            self.server.start()

    def on_epoch_end(self, epoch, logs=None):
        if self.arms == 1 and epoch == 0:
            self.server.stop()


def children_of(client, experiment_name, parent_id):
    experiment = client.get_experiment_by_name(experiment_name)
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return experiment, {(run.data.params["transform"], int(run.data.params["seed"])): run for run in found}


def check_run_folder(folder, arms, epochs):
    assert json.loads((folder / "study.json").read_text())["status"] == "finished"
    for name in ("comparison.md", "comparison.csv", "learning_curves.png", f"rts_{BACKEND}.csv"):
        assert (folder / name).is_file(), name
    for transform, seed in arms:
        arm = runs.Arm(folder / f"{transform}_seed{seed}", transform, seed)
        assert arm.state["status"] == "trained" and np.isfinite(arm.state["row"]["test_error"])
        assert [row["epoch"] for row in arm.history()] == list(range(1, epochs + 1))
        assert arm.model_path.is_file() and not list(arm.folder.glob("checkpoint-*.keras"))


@pytest.mark.slow
def test_a_tracking_outage_loses_nothing_and_the_runs_are_closed_when_the_server_is_back(
    mlflow_server, synthetic_mnist, tmp_path, capsys
):
    argv = ["--quick", "--transforms", "none", "--seeds", "0", "1", "--epochs", "2", "--verbose", "0"]
    argv += ["--data", synthetic_mnist, "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs")]
    argv += ["--experiment-name", "outage"]
    parent_id, rows = study.run(distorted_mnist.parse_args(argv), callbacks=[Outage(mlflow_server)])

    assert [(row["transform"], row["seed"]) for row in rows] == [("none", 0), ("none", 1)]
    err = capsys.readouterr().err
    assert err.count("MLflow tracking failed") == 1 and "Training goes on without it" in err
    assert "MLflow answers again" in err, err
    (folder,) = (tmp_path / "runs").iterdir()
    check_run_folder(folder, [("none", 0), ("none", 1)], epochs=2)

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and set(parent.data.metrics) == {"test_error_none", "test_error_std_none"}
    experiment, children = children_of(client, "outage", parent_id)
    assert sorted(children) == [("none", 0), ("none", 1)]
    for (_, seed), child in children.items():
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2]
        assert child.data.metrics["test_error"] == pytest.approx(rows[seed]["test_error"], abs=0.01)
        logged = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'"
        )
        assert len(logged) == 1


class Interrupt(keras.callbacks.Callback):
    """Stops the process's study after its first epoch, as a crash would."""

    def on_epoch_end(self, epoch, logs=None):
        raise InterruptedError(f"interrupted after epoch {epoch + 1}")


class EpochCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.slow
def test_resume_trains_only_the_remaining_epochs_and_matches_an_uninterrupted_run(tracking_dir, synthetic_mnist):
    argv = ["--quick", "--transforms", "none", "--epochs", "3", "--verbose", "0", "--data", synthetic_mnist]
    argv += ["--cache-dir", str(tracking_dir / "cache"), "--experiment-name", "resume"]
    with pytest.raises(InterruptedError):
        study.run(distorted_mnist.parse_args([*argv, "--runs-dir", str(tracking_dir / "interrupted")]), [Interrupt()])
    (folder,) = (tracking_dir / "interrupted").iterdir()
    arm = runs.Arm(folder / "none_seed0", "none", 0)
    assert arm.state["epochs_done"] == 1 and arm.checkpoint_path().is_file()
    client = mlflow.MlflowClient()
    assert client.get_run(arm.mlflow["run_id"]).info.status == "KILLED"

    counter = EpochCounter()
    parent_id, (resumed,) = study.run(
        distorted_mnist.parse_args(["--resume", str(folder), "--verbose", "0"]), [counter]
    )
    assert counter.epochs == [1, 2]  # 0-based: the second and third epochs only
    check_run_folder(folder, [("none", 0)], epochs=3)
    _, children = children_of(client, "resume", parent_id)
    child = children[("none", 0)]
    assert child.info.status == "FINISHED" and client.get_run(parent_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2, 3]

    # The same study without the interruption: the resumed run restored weights, optimizer state
    # and step counter, and saw the same batches, so it ends with the same weights (to float rounding).
    _, (uninterrupted,) = study.run(distorted_mnist.parse_args([*argv, "--runs-dir", str(tracking_dir / "straight")]))
    (straight,) = (tracking_dir / "straight").iterdir()
    weights = keras.saving.load_model(arm.model_path).get_weights()
    reference = keras.saving.load_model(straight / "none_seed0" / "model.keras").get_weights()
    for resumed_weight, reference_weight in zip(weights, reference, strict=True):
        np.testing.assert_allclose(resumed_weight, reference_weight, rtol=1e-4, atol=1e-6)
    assert resumed["test_error"] == pytest.approx(uninterrupted["test_error"], abs=0.8)  # at most one test digit
