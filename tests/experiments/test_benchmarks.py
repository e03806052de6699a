"""Smoke runs of the benchmark scripts on tiny inputs: they run, measure every implementation
of the current backend, and write results that the summary reads back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import device as torch_device

from benchmarks import sampler, summary
from helpers import BACKEND

REPO = Path(__file__).resolve().parents[2]

IMPLEMENTATIONS = {"jax": {"jit", "map_coordinates"}, "tensorflow": {"xla"}, "torch": {"native", "portable"}}


def test_sampler_benchmark_measures_each_implementation(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    monkeypatch.setattr(sampler, "RESULTS", str(tmp_path))
    monkeypatch.setattr(summary, "RESULTS", str(tmp_path))
    rows = []
    for case in ("tiny", "tiny-nearest", "tiny-bicubic", "tiny-float16"):
        rows.extend(sampler.benchmark_case(case, repeats=1, compile=False))
    expected = IMPLEMENTATIONS[BACKEND]
    assert {row["implementation"] for row in rows if row["case"] == "tiny"} == expected
    assert {row["implementation"] for row in rows if row["case"] == "tiny-bicubic"} == expected - {"map_coordinates"}
    for row in rows:
        assert row["forward ms"] > 0 and row["forward+backward ratio"] > 0
    sampler.write_results(str(tmp_path / f"sampler_{BACKEND}_cpu"), sampler.metadata(), rows, None)
    assert (tmp_path / f"sampler_{BACKEND}_cpu.md").read_text().count("| tiny") == len(rows)
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["summary"])
    summary.main()
    table = capsys.readouterr().out
    assert all(f"{BACKEND} {name}" in table for name in expected)


@pytest.mark.skipif(BACKEND != "torch", reason="it breaks down the torch backend's native path")
def test_native_breakdown_times_every_variant_against_the_reference(monkeypatch, capsys):
    from benchmarks import native_breakdown

    for name, value in {"BATCH": 2, "HEIGHT": 9, "WIDTH": 7}.items():
        monkeypatch.setattr(native_breakdown, name, value)
    monkeypatch.setattr("sys.argv", ["native_breakdown", "--repeats", "1"])
    native_breakdown.main()
    out = capsys.readouterr().out
    for variant in native_breakdown.VARIANTS:
        assert out.count(variant) == 2  # forward, then forward+backward
    assert out.count("1.00x") >= 2  # the reference, against itself


def test_training_step_cost_times_both_models(capsys):
    row = sampler.training_step_cost(repeats=1, batch=2)
    assert row["batch"] == 2 and row["CNN ms"] > 0 and row["ST-CNN ms"] > 0
    assert row["transformer share"] == 1 - row["CNN ms"] / row["ST-CNN ms"]
    assert "training step, batch 2" in capsys.readouterr().out


def test_merge_remeasures_some_cases_and_keeps_the_others(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    monkeypatch.setattr(sampler, "RESULTS", str(tmp_path))

    def run(*args):
        monkeypatch.setattr("sys.argv", ["sampler", "--repeats", "1", "--no-compile", *args])
        sampler.main()
        with open(tmp_path / f"sampler_{BACKEND}_cpu.json") as f:
            return json.load(f)

    first = run("--cases", "tiny-nearest,tiny")
    assert list(dict.fromkeys(row["case"] for row in first["rows"])) == ["tiny", "tiny-nearest"]
    merged = run("--cases", "tiny", "--merge")
    kept = [row for row in merged["rows"] if row["case"] == "tiny-nearest"]
    assert kept == [row for row in first["rows"] if row["case"] == "tiny-nearest"]
    assert {row["implementation"] for row in merged["rows"] if row["case"] == "tiny"} == IMPLEMENTATIONS[BACKEND]
    assert merged["meta"]["merged"].startswith("tiny-nearest from the saved run")
    replaced = run("--cases", "tiny")
    assert {row["case"] for row in replaced["rows"]} == {"tiny"} and "merged" not in replaced["meta"]
    capsys.readouterr()


def test_tagged_run_records_compiler_settings_and_gets_its_own_columns(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    monkeypatch.setattr(sampler, "RESULTS", str(tmp_path))
    monkeypatch.setattr(summary, "RESULTS", str(tmp_path))
    rows = sampler.benchmark_case("tiny", repeats=1, compile=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    assert "XLA_FLAGS" not in sampler.metadata()
    sampler.write_results(str(tmp_path / f"sampler_{BACKEND}_cpu"), sampler.metadata(), rows, None)
    # Set only now: the frameworks read it when they start, so it is the record that is tested here.
    monkeypatch.setenv("XLA_FLAGS", "--some_flag=1")
    meta = sampler.metadata()
    assert meta["XLA_FLAGS"] == "--some_flag=1"
    sampler.write_results(str(tmp_path / f"sampler_{BACKEND}_cpu_flagged"), meta, rows, None)
    with open(tmp_path / f"sampler_{BACKEND}_cpu_flagged.json") as f:
        assert json.load(f)["meta"]["XLA_FLAGS"] == "--some_flag=1"
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["summary"])
    summary.main()
    header = capsys.readouterr().out.splitlines()[0]
    for name in IMPLEMENTATIONS[BACKEND]:
        assert f"| {BACKEND} {name} |" in header and f"| {BACKEND} flagged {name} |" in header


def test_results_are_named_after_the_backends_own_device(monkeypatch, tmp_path, capsys):
    """A GPU run of JAX or TensorFlow is a GPU run even when PyTorch is the CPU build: the label
    comes from the backend, and the CPU results are left alone."""
    monkeypatch.setattr(sampler, "backend_device", lambda: ("gpu", "Some GPU 80GB"))
    monkeypatch.setattr(sampler, "reference_device", lambda kind, name: torch_device("cpu"))
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    argv = ["sampler", "--cases", "tiny", "--repeats", "1", "--no-compile", "--results-dir", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    sampler.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sampler_{BACKEND}_gpu.json", f"sampler_{BACKEND}_gpu.md"]
    with open(tmp_path / f"sampler_{BACKEND}_gpu.json") as f:
        meta = json.load(f)["meta"]
    assert meta["device kind"] == "gpu" and meta["device"] == "Some GPU 80GB"
    capsys.readouterr()


@pytest.mark.skipif(BACKEND == "torch", reason="under torch the reference shares the backend's own device")
def test_a_gpu_run_whose_torch_has_no_cuda_refuses(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sampler, "backend_device", lambda: ("gpu", "Some GPU 80GB"))
    monkeypatch.setattr(sampler.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["sampler", "--cases", "tiny", "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        sampler.main()
    message = capsys.readouterr().err
    assert f"the {BACKEND} backend computes on a GPU (Some GPU 80GB)" in message
    assert "sees no CUDA device" in message and "CUDA build of PyTorch" in message
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's own device")
def test_the_torch_reference_runs_on_the_backends_device_under_torch():
    import keras

    assert sampler.reference_device("gpu", "any") == keras.ops.convert_to_tensor([0.0]).device


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's timers")
def test_tensorflow_timers_wait_for_the_device_without_copying_to_the_host(monkeypatch):
    import tensorflow as tf

    calls = []
    real = tf.test.experimental.sync_devices
    monkeypatch.setattr(tf.test.experimental, "sync_devices", lambda: calls.append(1) or real())
    images, theta, weights, size, interpolation, _ = sampler.case_inputs("small")
    forward, both, _ = sampler.keras_implementations(images[:2], theta[:2], weights[:2], size, interpolation)["xla"]
    forward()
    both()
    assert len(calls) == 2


def test_peak_memory_is_measured_per_call_not_as_the_peak_so_far():
    big, small = sampler.process_peak_growth(lambda: np.ones(2**25)), sampler.process_peak_growth(lambda: np.ones(8))
    assert big[1] == small[1] == "process peak RSS growth"
    assert big[0] > 200 and small[0] < 50  # 256 MiB, then nearly nothing: the second is not the first's peak


def test_every_row_has_the_memory_of_both_frameworks(monkeypatch):
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    rows = sampler.benchmark_case("tiny", repeats=1, compile=False)
    for row in rows:
        assert row["peak MiB"] >= 0 and row["torch peak MiB"] >= 0
        assert "torch: process peak RSS" in row["memory measure"]
    if BACKEND == "jax":  # XLA's own account: at least the two gradients it returns
        gradient_bytes = 4 * (2 * 6 * 5 * 2 + 2 * 2 * 3)
        assert all(row["memory measure"].startswith("XLA program") for row in rows)
        assert all(row["peak MiB"] * 2**20 >= gradient_bytes for row in rows)


def gpu_run(*arguments, timeout, **env):
    """Runs benchmarks/gpu_run.sh with `arguments` under this interpreter; returns (exit code,
    run.log, stderr). The last argument is the output folder."""
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_run.sh"), *map(str, arguments)],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, (Path(arguments[-1]) / "run.log").read_text(), result.stderr


@pytest.mark.slow
def test_the_prepared_gpu_run_dry_runs_on_the_cpu(tmp_path, synthetic_mnist):
    """benchmarks/gpu_run.sh --dry-run: every step of the device run on tiny sizes, here."""
    out = tmp_path / "run"
    code, log, stderr = gpu_run("--dry-run", "--backends", BACKEND, out, timeout=900, KERAS_STN_MNIST=synthetic_mnist)
    assert code == 0, log + stderr
    for step in ("tests", "benchmark", "mnist"):
        assert f"{step}_{BACKEND}: exit 0" in log
    assert "passed" in (out / f"tests_{BACKEND}.log").read_text()
    assert (out / "benchmarks" / f"sampler_{BACKEND}_cpu.json").exists()
    assert f"{BACKEND} " in (out / "summary.md").read_text()
    assert list((out / f"mnist_{BACKEND}").glob("*.csv"))
    assert "keras 3." in (out / "versions.txt").read_text()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="the Table-1 mode runs under torch by default; one backend dry-runs it")
def test_the_table1_mode_of_the_gpu_run_dry_runs_on_the_cpu(tmp_path, synthetic_mnist):
    """gpu_run.sh --table1 --dry-run: every study of experiments.table1's plan, one seed, tiny sizes."""
    from experiments.table1 import PLAN

    out = tmp_path / "run"
    code, log, stderr = gpu_run("--dry-run", "--table1", out, timeout=1200, KERAS_STN_MNIST=synthetic_mnist)
    assert code == 0, log + stderr
    for distortion in PLAN:
        assert f"table1_torch_{distortion}: exit 0" in log
    assert "tests_torch" not in log and not (out / "summary.md").exists()  # the Table-1 mode only
    table = (out / "table1" / "table1_torch.md").read_text()
    assert "Missing (cut off by a time limit, or failed): none." in table
    assert "(n=1) (paper 1.1)" in table  # E with the TPS ST-CNN, next to the paper's error
    rows = (out / "table1" / "table1_torch.csv").read_text().splitlines()[1:]
    assert len(rows) == sum(len(arms) for arms in PLAN.values())


def test_the_prepared_gpu_run_refuses_a_cpu_without_dry_run(tmp_path):
    # No wheels to install: the ones a developer keeps in .whl are for the GPU machine's Python.
    no_wheels = str(tmp_path / "no-wheels")
    code, log, _ = gpu_run("--backends", BACKEND, tmp_path / "run", timeout=300, KERAS_STN_WHEELS=no_wheels)
    assert code == 1 and f"{BACKEND}: refused, the backend sees no GPU" in log
    if BACKEND != "torch":
        return  # the Table-1 mode runs under torch whatever the active backend: checked once, there
    code, log, _ = gpu_run("--table1", tmp_path / "table1", timeout=300, KERAS_STN_WHEELS=no_wheels)
    assert code == 1 and "torch: refused, the backend sees no GPU" in log and "table1_torch" not in log
