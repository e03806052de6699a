"""Command line of the distorted-MNIST comparison (the work is done in `experiments.study`).

    python -m experiments.distorted_mnist --distortion rts --transforms none affine attention

The arguments are parsed, and `--help` or an argument error answered, before Keras, MLflow or
NumPy is imported: those imports take seconds, so they happen only once there is work to do.
"""

import argparse
import os

from experiments.choices import DISTORTION_HELP, DISTORTIONS, DOWNSAMPLE, DOWNSAMPLE_HELP, TRANSFORMS

QUICK = {"num_train": 384, "num_test": 128, "validation": 128, "epochs": 1, "batch_size": 64}
MNIST_TRAIN_SIZE = 60_000
VALIDATION_SIZE = 10_000  # the last training digits, held out for validation; the rest is the training split
# Wall time of `--quick` measured on a 2-core CPU, interpreter start and imports included: 17-33 s with
# one arm, 27-40 s with two (torch fastest, jax slowest).
QUICK_SECONDS = "tens of seconds (17-33 s with one arm, 27-40 s with two, on a 2-core CPU)"


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
LEARNING_RATES = {"adam": 1e-3, "sgd": 0.01}
STEP_SCHEDULE = {"lr_drop_every": 50_000, "lr_drop_factor": 0.1}
# The paper (PAPER.md): SGD, batch 256, lr 0.01 divided by 10 every 50k iterations, 150k iterations.
# It states no momentum, so the paper protocol uses plain SGD (momentum 0).
PROTOCOLS = {
    "default": {"optimizer": "adam", "schedule": "cosine", "batch_size": 256, "epochs": 10, "iterations": None},
    "paper": {"optimizer": "sgd", "schedule": "step", "batch_size": 256, "epochs": None, "iterations": 150_000},
}


def protocol_text(name):
    settings = PROTOCOLS[name]
    optimizer = "SGD" if settings["optimizer"] == "sgd" else "Adam"
    rate = LEARNING_RATES[settings["optimizer"]]
    schedule = {
        "cosine": f"lr {rate} cosine-decayed to 0",
        "step": f"lr {rate} divided by {round(1 / STEP_SCHEDULE['lr_drop_factor'])} every "
        f"{STEP_SCHEDULE['lr_drop_every']} steps",
    }[settings["schedule"]]
    length = f"{settings['iterations']} steps" if settings["iterations"] else f"{settings['epochs']} epochs"
    return f"{optimizer}, {schedule}, batch {settings['batch_size']}, {length}"


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def unit_interval_float(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def one_line(text):
    if not text.strip() or "\n" in text:
        raise argparse.ArgumentTypeError(f"expected one non-empty line of text, got {text!r}")
    return text.strip()


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of flags whose default depends on others (their help says it)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.distorted_mnist",
        description=(
            "Train the CNN baseline and ST-CNNs on one distorted-MNIST variant and compare their test "
            "errors, logging everything to MLflow (MLFLOW_TRACKING_URI, default a local store in the "
            "working directory). Uses the GPU when the Keras backend (KERAS_BACKEND) sees one."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--distortion", choices=DISTORTIONS, default="rts", help=DISTORTION_HELP)
    parser.add_argument(
        "--transforms",
        nargs="+",
        choices=TRANSFORMS,
        default=["none", "affine", "attention"],
        metavar="TRANSFORM",
        help=f"the arms to train, one child run each; 'none' is the CNN without a transformer. "
        f"Choices: {', '.join(TRANSFORMS)}",
    )
    parser.add_argument("--downsample", choices=DOWNSAMPLE, default="auto", help=DOWNSAMPLE_HELP)
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help=f"train on the first N digits of the training split only (default: all of it, "
        f"{MNIST_TRAIN_SIZE - VALIDATION_SIZE}, or {QUICK['num_train'] - QUICK['validation']} with --quick); the "
        f"{VALIDATION_SIZE} validation digits and the test set stay whole",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="default",
        help="training settings in one flag: 'default' is "
        + protocol_text("default")
        + "; 'paper' is the paper's "
        + protocol_text("paper")
        + ". Any flag below given explicitly overrides its value",
    )
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="the optimizer (default: from --protocol)"
    )
    parser.add_argument(
        "--momentum",
        type=unit_interval_float,
        default=None,
        help="SGD momentum, in [0, 1) (default: 0, plain SGD as the paper states; --optimizer sgd only)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="learning rate over the run: cosine-decayed to 0, 'step' (times --lr-drop-factor every "
        "--lr-drop-every steps) or constant (default: from --protocol)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"initial learning rate (default: {LEARNING_RATES['adam']} for Adam, {LEARNING_RATES['sgd']} for SGD)",
    )
    parser.add_argument(
        "--lr-drop-every",
        type=positive_int,
        default=None,
        help=f"steps between learning-rate drops of --schedule step (default: {STEP_SCHEDULE['lr_drop_every']})",
    )
    parser.add_argument(
        "--lr-drop-factor",
        type=fraction,
        default=None,
        help=f"factor of each drop of --schedule step, in (0, 1) (default: {STEP_SCHEDULE['lr_drop_factor']})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="training epochs (passes over the training digits) per arm (default: from --protocol)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="training steps per arm, instead of --epochs: the run stops after exactly this many batches "
        "(its last epoch may be shorter) (default: from --protocol)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=None, help="training batch size (default: 256)")
    parser.add_argument(
        "--seeds",
        "--seed",
        nargs="+",
        type=non_negative_int,
        default=[0],
        metavar="SEED",
        help="seeds of the weights and of the shuffling, one child run per (transform, seed); the comparison "
        "reports the mean and standard deviation over them (e.g. --seeds 0 1 2, as the paper averages 3)",
    )
    parser.add_argument(
        "--data-seed",
        type=non_negative_int,
        default=0,
        help="seed of the distorted dataset, the same for every --seeds value so that the seeds measure the "
        "training noise alone",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="path to a local mnist.npz (default: $KERAS_STN_MNIST, else the Keras download)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where generated datasets are cached (default: $KERAS_STN_CACHE, else ~/.cache/keras_stn)",
    )
    parser.add_argument("--experiment-name", default="distorted-mnist", help="MLflow experiment to log into")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="also write the comparison table (markdown and CSV) into this directory, e.g. experiments/results",
    )
    parser.add_argument(
        "--runs-dir",
        default=os.path.join("experiments", "runs"),
        help="each invocation writes its run folder <runs-dir>/<date-time>_<distortion>_<backend> here, as it goes "
        "and whether or not MLflow answers: every arm's per-epoch history.csv, checkpoint, test error, trained "
        "model.keras and figures, and the comparison",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_FOLDER",
        help="continue the interrupted study of this run folder from its last finished epochs, with the settings "
        "it was started with (the other flags are ignored, but --verbose), and log to MLflow whatever the "
        "server missed; on a finished study it only does the latter",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run of the whole pipeline, {QUICK_SECONDS}, most of it imports, compilation and "
        f"MLflow: {QUICK['num_train']} training digits ({QUICK['validation']} held out), "
        f"{QUICK['num_test']} test digits, {QUICK['epochs']} epoch and batch {QUICK['batch_size']} unless --epochs / "
        "--iterations / --batch-size say otherwise",
    )
    parser.add_argument(
        "--distribute",
        action="store_true",
        help="train data parallel over every visible device of the backend (the batch size is the global one): "
        "jax with Keras's DataParallel, tensorflow with MirroredStrategy, torch with one process per device and "
        "gradients averaged across them (experiments/torch_parallel.py; on a CPU, $KERAS_STN_TORCH_PROCESSES "
        "processes, default 1)",
    )
    parser.add_argument(
        "--note",
        type=one_line,
        default=None,
        help="a line of free text added to the comparison's header and MLflow parameters, e.g. what else the "
        "machine was running",
    )
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.transforms)) != len(args.transforms):
        parser.error(f"--transforms lists an arm twice: {args.transforms}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: expected distinct seeds, got {args.seeds}")
    if args.resume is not None and not os.path.isfile(os.path.join(args.resume, "study.json")):
        parser.error(f"--resume expects a run folder holding a study.json, got {args.resume!r}")
    available = QUICK["num_train"] - QUICK["validation"] if args.quick else MNIST_TRAIN_SIZE - VALIDATION_SIZE
    if args.train_size is not None and args.train_size > available:
        parser.error(
            f"--train-size exceeds the training split: expected at most {available} digits"
            f"{' with --quick' if args.quick else ''}, got --train-size {args.train_size}"
        )
    resolve_protocol(parser, args)
    return args


def resolve_protocol(parser, args):
    """Fills every training setting the command line left unset from `--protocol` (and `--quick`),
    after refusing the combinations that contradict each other."""
    if args.epochs is not None and args.iterations is not None:
        parser.error(
            f"--epochs and --iterations both set the length of the run: expected one of them, got "
            f"--epochs {args.epochs} --iterations {args.iterations}"
        )
    protocol = PROTOCOLS[args.protocol]
    args.optimizer = args.optimizer or protocol["optimizer"]
    args.schedule = args.schedule or protocol["schedule"]
    if args.momentum is not None and args.optimizer != "sgd":
        parser.error(
            f"--momentum applies to --optimizer sgd only: got --momentum {args.momentum} with "
            f"--optimizer {args.optimizer}"
        )
    for flag, value in (("--lr-drop-every", args.lr_drop_every), ("--lr-drop-factor", args.lr_drop_factor)):
        if value is not None and args.schedule != "step":
            parser.error(f"{flag} applies to --schedule step only: got {flag} {value} with --schedule {args.schedule}")
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = 0.0
    if args.schedule == "step":
        args.lr_drop_every = args.lr_drop_every or STEP_SCHEDULE["lr_drop_every"]
        args.lr_drop_factor = args.lr_drop_factor or STEP_SCHEDULE["lr_drop_factor"]
    args.lr = args.lr or LEARNING_RATES[args.optimizer]
    if args.epochs is None and args.iterations is None:
        if args.quick:
            args.epochs = QUICK["epochs"]
        else:
            args.epochs, args.iterations = protocol["epochs"], protocol["iterations"]
    if args.batch_size is None:
        args.batch_size = QUICK["batch_size"] if args.quick else protocol["batch_size"]


def main(argv=None):
    args = parse_args(argv)
    from experiments import study  # the frameworks, imported once the arguments are known to be good

    study.run(args)


if __name__ == "__main__":
    main()
