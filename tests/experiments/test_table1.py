"""The Table-1 mode of the GPU run: its plan is the paper's Table 1, and `collect` tabulates the
finished arms of the run folders, listing the rest as missing."""

import json

import pytest

from experiments import table1
from experiments.paper import PAPER_TEST_ERROR


def test_the_plan_is_every_arm_of_the_papers_table_1():
    planned = {(distortion, transform) for distortion, arms in table1.PLAN.items() for transform in arms}
    assert planned == set(PAPER_TEST_ERROR)
    assert table1.SEEDS == (0, 1, 2)


def test_plan_prints_one_line_per_study(capsys):
    assert table1.main(["plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "r none affine projective tps"
    assert lines[-1] == "cluttered none affine"
    assert len(lines) == len(table1.PLAN)


def write_study(folder, distortion, arms):
    """A run folder as experiments.study leaves it; `arms` maps (transform, seed) to
    (status, test error)."""
    folder.mkdir(parents=True)
    study = {
        "args": {
            "distortion": distortion,
            "epochs": 2,
            "iterations": None,
            "optimizer": "adam",
            "momentum": None,
            "lr": 0.001,
            "schedule": "cosine",
            "batch_size": 256,
            "quick": False,
        },
        "environment": {
            "backend": "torch",
            "backend_version": "2.99",
            "keras_version": "3.15.1",
            "keras_stn_version": "0.1.0",
            "device": "gpu (NVIDIA H200)",
        },
    }
    (folder / "study.json").write_text(json.dumps(study))
    for (transform, seed), (status, error) in arms.items():
        arm = folder / f"{transform}_seed{seed}"
        arm.mkdir()
        row = {"transform": transform, "seed": seed, "test_error": error, "train_size": 50000, "backend": "torch"}
        state = {"status": status, "row": row if status == "trained" else None}
        (arm / "state.json").write_text(json.dumps(state))


def test_collect_tabulates_finished_arms_and_lists_the_missing_ones(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_study(
        runs / "20261202-000000_r_torch",
        "r",
        {("none", 0): ("trained", 2.0), ("none", 1): ("trained", 4.0), ("none", 2): ("training", None)},
    )
    write_study(runs / "20261202-000100_cluttered_torch", "cluttered", {("affine", 0): ("trained", 3.0)})
    stem = tmp_path / "out" / "table1_torch"
    assert table1.main(["collect", str(runs), "--output", str(stem), "--seeds", "0", "1"]) == 0
    markdown = stem.with_suffix(".md").read_text()
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    cnn = next(line for line in markdown.splitlines() if line.startswith("| CNN |"))
    # R: mean 3.00, sample std of (2, 4) = 1.41, beside the paper's 1.2; RTS never ran.
    assert cnn.split(" | ")[1:3] == ["3.00 ± 1.41 (paper 1.2)", "missing (paper 0.8)"]
    projective = next(line for line in markdown.splitlines() if line.startswith("| ST-CNN projective |"))
    assert projective.rstrip(" |").endswith("| –")  # the plan has no projective arm on cluttered
    affine = next(line for line in markdown.splitlines() if line.startswith("| ST-CNN affine |"))
    assert "3.00 (n=1) (paper 1.7)" in affine
    missing = markdown.split("Missing (cut off by a time limit, or failed): ")[1].split(".\n")[0].split(", ")
    assert "r affine seed 0" in missing and "cluttered affine seed 1" in missing
    assert "r none seed 0" not in missing and "r none seed 2" not in missing  # seed 2 was not asked for
    assert "adam, lr 0.001 cosine, batch 256, 2 epochs, 50000 training digits" in markdown
    assert "device gpu (NVIDIA H200)" in markdown
    lines = stem.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("distortion,transform,seed,test_error,paper_test_error")
    assert lines[1:] == [
        "r,none,0,2.0,1.2,,,,,,50000,torch,",
        "r,none,1,4.0,1.2,,,,,,50000,torch,",
        "cluttered,affine,0,3.0,1.7,,,,,,50000,torch,",
    ]


def test_collect_fails_when_nothing_finished_and_refuses_a_missing_folder(tmp_path, capsys):
    write_study(tmp_path / "runs" / "s", "r", {("none", 0): ("training", None)})
    assert table1.main(["collect", str(tmp_path / "runs")]) == 1
    with pytest.raises(SystemExit):
        table1.main(["collect", str(tmp_path / "nowhere")])
    assert "`runs_dir` must be a folder of run folders" in capsys.readouterr().err
