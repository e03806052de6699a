"""Collects the sampler benchmark's results into one markdown table (docs/performance.md's).

    python -m benchmarks.summary [--device cpu]

Reads benchmarks/results/sampler_<backend>_<device>.json for every backend present, and the
runs saved with a `--tag` (sampler_<backend>_<device><tag>.json, e.g. one with XLA_FLAGS set),
and prints, per case, each implementation's forward+backward time over PyTorch's native kernel
measured in the same run (forward-only in brackets). A tagged run's columns carry its tag.
"""

import argparse
import glob
import json
import os

# The folder benchmarks.sampler writes to; this module imports no framework (the docs build
# uses `summary_table` without Keras or PyTorch installed).
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def summary_table(results_dir, device):
    """The markdown table of every `sampler_*_<device>*.json` in `results_dir` (empty if none)."""
    columns, cases, cells, shapes, notes = [], [], {}, {}, []
    for path in sorted(glob.glob(os.path.join(results_dir, f"sampler_*_{device}*.json"))):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        backend = result["meta"]["backend"]
        tag = os.path.basename(path)[len(f"sampler_{backend}_{device}") : -len(".json")]
        label = f"{backend} {tag.strip('_-')}".strip()
        for row in result["rows"]:
            column = f"{label} {row['implementation']}"
            if column not in columns:
                columns.append(column)
            if row["case"] not in cases:
                cases.append(row["case"])
            shapes[row["case"]] = row["shape"]
            cells[row["case"], column] = f"{row['forward+backward ratio']:.2f} ({row['forward ratio']:.2f})"
        training = result.get("training")
        if training:
            notes.append(
                f"{label}: CNN {training['CNN ms']:.0f} ms, ST-CNN {training['ST-CNN ms']:.0f} ms "
                f"({100 * training['transformer share']:.0f}% of the step)"
            )
    if not columns:
        return ""
    lines = ["| case | shape | " + " | ".join(columns) + " |", "| --- | --- |" + " --- |" * len(columns)]
    for case in cases:
        lines.append(f"| {case} | {shapes[case]} | " + " | ".join(cells.get((case, c), "n/a") for c in columns) + " |")
    if notes:
        lines += ["", "Training step, batch 64, 60x60, affine ST-CNN vs the CNN alone: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="which results")
    parser.add_argument("--results-dir", default=RESULTS, help="where the results are read from")
    args = parser.parse_args()
    print(summary_table(args.results_dir, args.device) or f"no {args.device} results in {args.results_dir}")


if __name__ == "__main__":
    main()
