"""Why does the CNN underfit? One distorted-MNIST arm trained under several protocols.

    python -m experiments.ablation --distortion rts --transform none --train-size 5000 \\
        --configs auto:adam:10 auto:adam:30 auto:sgd:10 auto:sgd:30 off:adam:10 off:adam:30

Each configuration `DOWNSAMPLE:OPTIMIZER:EPOCHS` is one `experiments.distorted_mnist` study (its
own run folder and MLflow parent run) with `--downsample DOWNSAMPLE --optimizer OPTIMIZER
--epochs EPOCHS`, everything else equal: the same training digits, seeds, batch size and cosine
learning-rate decay over the run (Adam from 1e-3; SGD from the paper's 0.01 without momentum: its
drops every 50k steps would never happen in a run this short, so both optimizers share the
schedule and only the optimizer differs). Every configuration reports the error on its own
training digits at the end (is it underfitting?) beside the test error, and is appended to
`<results-dir>/ablation_<distortion>_<backend>.{csv,md}` as soon as it finishes. A configuration
whose rows that CSV already holds (same arm, training-set size, seeds and backend) is kept, not
trained again: an interrupted ablation continues where it stopped, and one can be extended.

Like `experiments.distorted_mnist`, the arguments are checked before the frameworks are imported.
"""

import argparse
import csv
import io
import os
import shlex
import sys
import time

from experiments import distorted_mnist
from experiments.choices import DISTORTION_HELP, DISTORTIONS, DOWNSAMPLE, TRANSFORMS

DEFAULT_CONFIGS = ("auto:adam:10", "auto:adam:30", "auto:sgd:10", "auto:sgd:30", "off:adam:10", "off:adam:30")
COLUMNS = (
    "downsample",
    "optimizer",
    "schedule",
    "lr",
    "momentum",
    "epochs",
    "steps",
    "train_size",
    "transform",
    "seed",
    "train_error",
    "test_error",
    "best_val_error",
    "params",
    "train_seconds",
    "seconds_per_epoch",
    "backend",
    "device",
    "run_folder",
)


def configuration(text):
    """`DOWNSAMPLE:OPTIMIZER:EPOCHS`, e.g. `auto:adam:10`, as a dict."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected DOWNSAMPLE:OPTIMIZER:EPOCHS such as auto:adam:10, got {text!r}")
    downsample, optimizer, epochs = parts
    if downsample not in DOWNSAMPLE:
        raise argparse.ArgumentTypeError(f"expected a downsample in {list(DOWNSAMPLE)}, got {downsample!r} in {text!r}")
    if optimizer not in distorted_mnist.OPTIMIZERS:
        raise argparse.ArgumentTypeError(
            f"expected an optimizer in {list(distorted_mnist.OPTIMIZERS)}, got {optimizer!r} in {text!r}"
        )
    if not epochs.isdigit() or int(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of epochs, got {epochs!r} in {text!r}")
    return {"downsample": downsample, "optimizer": optimizer, "epochs": int(epochs)}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ablation",
        description=(
            "Train one arm of a distorted-MNIST comparison (by default the CNN on rts) under several protocols "
            "and tabulate, per configuration, the error on its own training digits at the end and the test error. "
            "Each configuration DOWNSAMPLE:OPTIMIZER:EPOCHS is one `python -m experiments.distorted_mnist` study "
            "with --downsample, --optimizer and --epochs set so; Adam starts at 1e-3, SGD at the paper's 0.01 "
            "without momentum, both cosine-decayed to 0 over the run."
        ),
        formatter_class=distorted_mnist.HelpFormatter,
    )
    parser.add_argument("--distortion", choices=DISTORTIONS, default="rts", help=DISTORTION_HELP)
    parser.add_argument("--transform", choices=TRANSFORMS, default="none", help="the arm to train ('none': the CNN)")
    parser.add_argument(
        "--configs",
        nargs="+",
        type=configuration,
        default=[configuration(text) for text in DEFAULT_CONFIGS],
        metavar="DOWNSAMPLE:OPTIMIZER:EPOCHS",
        help=f"the configurations, trained in this order; DOWNSAMPLE in {list(DOWNSAMPLE)} (see "
        f"distorted_mnist --downsample), OPTIMIZER in {list(distorted_mnist.OPTIMIZERS)}, EPOCHS a positive "
        f"integer (default: {' '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--train-size",
        type=distorted_mnist.positive_int,
        default=5000,
        help="training digits (the first of the training split); the validation split and the test set stay whole",
    )
    parser.add_argument("--seeds", nargs="+", type=distorted_mnist.non_negative_int, default=[0], metavar="SEED")
    parser.add_argument("--batch-size", type=distorted_mnist.positive_int, default=256, help="training batch size")
    parser.add_argument("--data", default=None, help="path to a local mnist.npz (default: $KERAS_STN_MNIST)")
    parser.add_argument("--cache-dir", default=None, help="where generated datasets are cached")
    parser.add_argument(
        "--results-dir",
        default=os.path.join("experiments", "results"),
        help="where ablation_<distortion>_<backend>.csv and .md are written, after every configuration",
    )
    parser.add_argument(
        "--runs-dir", default=os.path.join("experiments", "runs"), help="where each configuration's run folder goes"
    )
    parser.add_argument("--experiment-name", default="ablation", help="MLflow experiment to log into")
    parser.add_argument(
        "--note", type=distorted_mnist.one_line, default=None, help="a line of free text for the tables' headers"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: distorted_mnist --quick's tiny splits (the configurations' epochs still apply)",
    )
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity")
    return parser


def study_argv(args, config):
    """The `experiments.distorted_mnist` command line of one configuration."""
    argv = [
        "--distortion", args.distortion,
        "--transforms", args.transform,
        "--downsample", config["downsample"],
        "--optimizer", config["optimizer"],
        "--schedule", "cosine",
        "--epochs", str(config["epochs"]),
        "--train-size", str(args.train_size),
        "--batch-size", str(args.batch_size),
        "--seeds", *map(str, args.seeds),
        "--runs-dir", args.runs_dir,
        "--experiment-name", args.experiment_name,
        "--verbose", str(args.verbose),
    ]  # fmt: skip
    for flag, value in (("--data", args.data), ("--cache-dir", args.cache_dir), ("--note", args.note)):
        if value is not None:
            argv += [flag, value]
    return argv + (["--quick"] if args.quick else [])


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: expected distinct seeds, got {args.seeds}")
    keys = [(config["downsample"], config["optimizer"], config["epochs"]) for config in args.configs]
    if len(set(keys)) != len(keys):
        parser.error(f"--configs lists a configuration twice: got {' '.join(':'.join(map(str, k)) for k in keys)}")
    # Every configuration's command line is checked now (e.g. --train-size against the split), not hours later.
    args.study_args = []
    for config in args.configs:
        try:
            args.study_args.append(distorted_mnist.parse_args(study_argv(args, config)))
        except SystemExit:
            parser.error(f"the study of configuration {config} rejects these arguments (its message is above)")
    return args


def row(study_args, arm_row):
    return {
        "downsample": study_args.downsample,
        "optimizer": study_args.optimizer,
        "schedule": study_args.schedule,
        "lr": study_args.lr,
        "momentum": study_args.momentum,
        "epochs": arm_row["epochs"],
        "steps": arm_row["steps"],
        "train_size": arm_row["train_size"],
        "transform": arm_row["transform"],
        "seed": arm_row["seed"],
        "train_error": arm_row["train_error"],
        "test_error": arm_row["test_error"],
        "best_val_error": arm_row["best_val_error"],
        "params": arm_row["params"],
        "train_seconds": arm_row["train_seconds"],
        "seconds_per_epoch": round(arm_row["train_seconds"] / arm_row["epochs"], 1),
        "backend": arm_row["backend"],
        "device": arm_row["device"],
        "run_folder": arm_row["run_folder"],
    }


def read_rows(path):
    """The rows of an earlier ablation CSV at `path` (empty cells as None), or [] if there is none."""
    if not os.path.isfile(path):
        return []
    with open(path) as file:
        return [{name: value or None for name, value in row.items()} for row in csv.DictReader(file)]


def kept_rows(rows, args, config, backend):
    """The rows of `config` among earlier `rows` for every seed of `args`, else None."""
    wanted = {
        "transform": args.transform,
        "downsample": config["downsample"],
        "optimizer": config["optimizer"],
        "epochs": str(config["epochs"]),
        "train_size": str(args.train_size),
        "backend": backend,
    }
    by_seed = {row["seed"]: row for row in rows if all(row.get(name) == value for name, value in wanted.items())}
    if all(str(seed) in by_seed for seed in args.seeds):
        return [by_seed[str(seed)] for seed in args.seeds]
    return None


def rows_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def rows_markdown(rows, args, environment):
    from experiments.tables import markdown_table

    quick = distorted_mnist.QUICK
    validation = quick["validation"] if args.quick else distorted_mnist.VALIDATION_SIZE
    test = quick["num_test"] if args.quick else 10_000
    shown = [column for column in COLUMNS if column not in ("backend", "device", "run_folder")]
    lines = [
        f"# Ablation on distorted MNIST `{args.distortion}`, arm `{args.transform}`: error (%)",
        "",
        f"- backend {environment['backend']} {environment['backend_version']}, keras {environment['keras_version']}, "
        f"device {environment['device']}",
        f"- {args.train_size} training digits, {validation} validation, {test} test; batch {args.batch_size}; "
        "learning rate cosine-decayed to 0 over each run",
        "- train_error: the trained model on its own training digits; test_error: on the test set",
        *([f"- {args.note}"] if args.note else []),
        "- command: `python -m experiments.ablation " + shlex.join(args.argv) + "`",
        "",
        *markdown_table(rows, shown),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    from experiments import study  # the frameworks, once the arguments are known to be good
    from experiments.tracking import environment_params

    environment = environment_params()
    stem = os.path.join(args.results_dir, f"ablation_{args.distortion}_{environment['backend']}")
    os.makedirs(args.results_dir, exist_ok=True)
    rows = []
    earlier = read_rows(stem + ".csv")
    for config, study_args in zip(args.configs, args.study_args):
        kept = kept_rows(earlier, args, config, environment["backend"])
        if kept is not None:
            print(f"ablation: {config} kept from {stem}.csv", file=sys.stderr)
            rows += kept
        else:
            start = time.perf_counter()
            print(f"ablation: {config}", file=sys.stderr)
            _, arm_rows = study.run(study_args)
            rows += [row(study_args, arm_row) for arm_row in arm_rows]
            print(f"ablation: {config} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        with open(stem + ".csv", "w") as file:
            file.write(rows_csv(rows))
        with open(stem + ".md", "w") as file:
            file.write(rows_markdown(rows, args, environment))
    return rows


if __name__ == "__main__":
    main()
