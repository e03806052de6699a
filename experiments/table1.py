"""The paper's Table 1 at a reduced budget: the plan of the GPU run, and the table it collects.

    python -m experiments.table1 plan                  # one line per distortion: NAME ARM...
    python -m experiments.table1 collect RUNS_DIR --output STEM

`benchmarks/gpu_run.sh --table1` runs one `experiments.distorted_mnist` study per line of the
plan (the R, RTS, P and E distortions with the CNN and the affine, projective and TPS ST-CNNs;
cluttered MNIST with the CNN and the affine ST-CNN; three seeds each), each under its own time
limit, then `collect` gathers every arm that finished in the studies' run folders into one table:
the mean ± std over seeds per (transform, distortion) with the paper's error beside it, and one
CSV row per (distortion, transform, seed). An arm that a time limit cut off is listed as missing,
never filled in.

The budget (`BUDGET`) is the paper's batch of 256 with the default protocol (Adam, cosine decay)
for 2 epochs over the 50000 training digits, 392 steps per arm, against the paper's 150k SGD
steps: chosen so that the 54 trainings fit one 10-minute call on an H100/H200. The distorted
digits are generated on the machine itself, by keras_stn's sampler on its GPU, from the MNIST
arrays (nothing is fetched), and training logs once per epoch (no per-step host sync).

`collect` reads JSON and CSV only: it imports no framework.
"""

import argparse
import json
import sys
from pathlib import Path

from experiments.paper import paper_test_error
from experiments.tables import markdown_table, mean_and_std, table_csv

PLAN = {
    "r": ("none", "affine", "projective", "tps"),
    "rts": ("none", "affine", "projective", "tps"),
    "p": ("none", "affine", "projective", "tps"),
    "e": ("none", "affine", "projective", "tps"),
    "cluttered": ("none", "affine"),
}
SEEDS = (0, 1, 2)
BUDGET = {"epochs": 2}
TITLES = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "cluttered": "cluttered"}
TRANSFORM_TITLES = {"none": "CNN", "affine": "ST-CNN affine", "projective": "ST-CNN projective", "tps": "ST-CNN TPS"}
ROW_COLUMNS = ("distortion", "transform", "seed", "test_error", "paper_test_error", "train_error", "epochs", "steps")
ROW_COLUMNS += ("train_seconds", "step_ms", "train_size", "backend", "device")


def plan_lines(plan=PLAN):
    """The plan as the shell reads it: `DISTORTION ARM ARM ...` per line."""
    return [" ".join((distortion, *arms)) for distortion, arms in plan.items()]


def read_studies(runs_dir):
    """Every study folder directly under `runs_dir`: (study.json contents, [finished arm rows])."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"`runs_dir` must be a folder of run folders. Got runs_dir={str(runs_dir)!r}")
    studies = []
    for path in sorted(runs_dir.glob("*/study.json")):
        study = json.loads(path.read_text())
        rows = []
        for state_path in sorted(path.parent.glob("*_seed*/state.json")):
            state = json.loads(state_path.read_text())
            if state.get("status") == "trained" and state.get("row"):
                rows.append({"distortion": study["args"]["distortion"], **state["row"]})
        studies.append((study, rows))
    return studies


def collect(studies, plan=PLAN, seeds=SEEDS):
    """The collected table: rows in plan order, the cells, what is missing, and the settings."""
    by_arm = {}
    for _, rows in studies:
        for row in rows:
            by_arm[(row["distortion"], row["transform"], int(row["seed"]))] = row
    rows, missing = [], []
    for distortion, arms in plan.items():
        for transform in arms:
            for seed in seeds:
                row = by_arm.get((distortion, transform, seed))
                if row is None:
                    missing.append(f"{distortion} {transform} seed {seed}")
                else:
                    row = {**row, "paper_test_error": paper_test_error(distortion, transform)}
                    rows.append({column: row.get(column) for column in ROW_COLUMNS})
    transforms = list(dict.fromkeys(transform for arms in plan.values() for transform in arms))
    cells = []
    for transform in transforms:
        record = {"transform": TRANSFORM_TITLES.get(transform, transform)}
        for distortion, arms in plan.items():
            errors = [
                float(row["test_error"])
                for row in rows
                if row["distortion"] == distortion and row["transform"] == transform
            ]
            paper = paper_test_error(distortion, transform)
            if transform not in arms:
                cell = None
            elif not errors:
                cell = "missing" + (f" (paper {paper})" if paper is not None else "")
            else:
                cell = mean_and_std(errors) + (f" (paper {paper})" if paper is not None else "")
            record[TITLES.get(distortion, distortion)] = cell
        cells.append(record)
    settings = sorted(
        {
            (
                f"backend {study['environment']['backend']} {study['environment']['backend_version']}, keras "
                f"{study['environment']['keras_version']}, keras_stn {study['environment']['keras_stn_version']}, "
                f"device {study['environment']['device']}"
            )
            for study, _ in studies
        }
    )
    protocols = sorted({protocol_line(study["args"], study_rows) for study, study_rows in studies})
    return {"rows": rows, "cells": cells, "missing": missing, "settings": settings + protocols}


def protocol_line(args, rows):
    """A study's training settings in one line, with the training-set size its arms saw."""
    if args.get("iterations"):
        length = f"{args['iterations']} steps"
    else:
        length = f"{args['epochs']} epoch" + ("s" if args["epochs"] != 1 else "")
    optimizer = args["optimizer"] + (f" (momentum {args['momentum']})" if args.get("momentum") else "")
    sizes = sorted({int(row["train_size"]) for row in rows if row.get("train_size") is not None})
    size = f", {'/'.join(map(str, sizes))} training digits" if sizes else ""
    return f"{optimizer}, lr {args['lr']} {args['schedule']}, batch {args['batch_size']}, {length}{size}" + (
        ", --quick" if args.get("quick") else ""
    )


def table_markdown(table, plan=PLAN):
    columns = ("transform", *(TITLES.get(distortion, distortion) for distortion in plan))
    lines = ["# Distorted MNIST, Table 1 at a reduced budget: test error (%)", ""]
    lines += [f"- {line}" for line in table["settings"]]
    lines += [
        "- each cell: mean ± sample standard deviation over the seeds that finished, the paper's error in "
        "parentheses (Jaderberg et al. 2015, Table 1: SGD, 150k steps); – where the plan has no such arm",
        "",
        *markdown_table(table["cells"], columns),
        "",
        "Missing (cut off by a time limit, or failed): " + (", ".join(table["missing"]) or "none") + ".",
        "",
        "## Every seed",
        "",
        *markdown_table(table["rows"], ROW_COLUMNS),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.table1", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="print the plan, one `DISTORTION ARM ...` line per study")
    gather = commands.add_parser("collect", help="collect the finished arms of the run folders in RUNS_DIR")
    gather.add_argument("runs_dir", metavar="RUNS_DIR")
    gather.add_argument("--output", metavar="STEM", help="also write STEM.md and STEM.csv")
    gather.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        metavar="SEED",
        help=f"the seeds the studies were run with; any other is missing (default: {' '.join(map(str, SEEDS))})",
    )
    args = parser.parse_args(argv)
    if args.command == "plan":
        print("\n".join(plan_lines()))
        return 0
    try:
        table = collect(read_studies(args.runs_dir), seeds=args.seeds)
    except FileNotFoundError as error:
        parser.error(str(error))
    markdown = table_markdown(table)
    if args.output:
        stem = Path(args.output)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(markdown)
        stem.with_suffix(".csv").write_text(table_csv(table["rows"], ROW_COLUMNS))
    print(markdown)
    return 1 if not table["rows"] else 0


if __name__ == "__main__":
    sys.exit(main())
