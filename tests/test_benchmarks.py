"""Smoke runs of the benchmark scripts on tiny inputs: they run, measure every implementation
of the current backend, and write results that the summary reads back."""

import json

from benchmarks import sampler, summary
from helpers import BACKEND

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
