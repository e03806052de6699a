"""The comparison's tables: one row per (transform, seed), and the mean ± std per transform.

The standard deviation is the sample one (n - 1 in the denominator) over the seeds of a
transform; with a single seed there is none, and the summary says `n=1` instead of inventing one.
"""

import csv
import io
import statistics

from experiments.paper import paper_test_error

ROW_COLUMNS = (
    "transform",
    "seed",
    "test_error",
    "paper_test_error",
    "train_error",
    "best_val_error",
    "epochs",
    "steps",
    "train_seconds",
    "step_ms",
    "params",
    "train_size",
    "downsample",
    "data_seed",
    "backend",
    "device",
)
SUMMARY_COLUMNS = ("transform", "n", "test_error", "paper_test_error", "train_error", "seeds")


def mean_and_std(values):
    """ "1.23 ± 0.04" (sample standard deviation), or "1.23 (n=1)" for a single value."""
    mean = statistics.fmean(values)
    return f"{mean:.2f} (n=1)" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def summarize(rows, distortion):
    """One dict per transform, in the order the rows first name them: `n`, `mean`, `std` (None
    for n=1), the formatted `test_error` ("1.23 ± 0.04", or "1.23 (n=1)"), the paper's error, the
    formatted error on the training digits (None where a row lacks it) and the seeds."""
    by_transform = {}
    for row in rows:
        by_transform.setdefault(row["transform"], []).append(row)
    summary = []
    for transform, arm_rows in by_transform.items():
        errors = [float(row["test_error"]) for row in arm_rows]
        mean = statistics.fmean(errors)
        std = statistics.stdev(errors) if len(errors) > 1 else None
        train_errors = [float(row["train_error"]) for row in arm_rows if row.get("train_error") is not None]
        summary.append(
            {
                "transform": transform,
                "n": len(errors),
                "mean": mean,
                "std": std,
                "test_error": mean_and_std(errors),
                "paper_test_error": paper_test_error(distortion, transform),
                "train_error": mean_and_std(train_errors) if len(train_errors) == len(errors) else None,
                "seeds": " ".join(str(row["seed"]) for row in arm_rows),
            }
        )
    return summary


def table_csv(rows, columns=ROW_COLUMNS):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(records, columns):
    def cell(value):
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(record[column]) for column in columns) + " |" for record in records]
    return lines


def table_markdown(rows, distortion, settings):
    """The comparison as markdown: `settings` (lines describing the run) as a list, the mean ± std
    per transform beside the paper's error, then every (transform, seed) row."""
    lines = [f"# Distorted MNIST `{distortion}`: test error (%)", ""]
    lines += [f"- {line}" for line in settings]
    lines += [
        "- paper: Jaderberg et al. 2015, Table 1 (SGD, 150k iterations, mean of 3 seeds); – where it reports none",
        "",
        "## Mean ± standard deviation over seeds",
        "",
        *markdown_table(summarize(rows, distortion), SUMMARY_COLUMNS),
        "",
        "The standard deviation is the sample one (n − 1) over the seeds; n=1 has none.",
        "",
        "## Every seed",
        "",
        *markdown_table(rows, ROW_COLUMNS),
    ]
    return "\n".join(lines) + "\n"
