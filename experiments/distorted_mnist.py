"""Command line of the distorted-MNIST comparison (the work is done in `experiments.study`).

    python -m experiments.distorted_mnist --distortion rts --transforms none affine attention

The arguments are parsed, and `--help` or an argument error answered, before Keras, MLflow or
NumPy is imported: those imports take seconds, so they happen only once there is work to do.
"""

import argparse

from experiments.choices import DISTORTION_HELP, DISTORTIONS, TRANSFORMS

QUICK = {"num_train": 384, "num_test": 128, "validation": 128, "epochs": 1, "batch_size": 64}
# Wall time of `--quick` measured on a 2-core CPU, interpreter start and imports included: 17-33 s with
# one arm, 27-40 s with two (torch fastest, jax slowest).
QUICK_SECONDS = "tens of seconds (17-33 s with one arm, 27-40 s with two, on a 2-core CPU)"


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


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.distorted_mnist",
        description=(
            "Train the CNN baseline and ST-CNNs on one distorted-MNIST variant and compare their test "
            "errors, logging everything to MLflow (MLFLOW_TRACKING_URI, default a local store in the "
            "working directory). Uses the GPU when the Keras backend (KERAS_BACKEND) sees one."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs per arm")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="training batch size")
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="initial Adam learning rate (cosine-decayed to 0)"
    )
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
        "--quick",
        action="store_true",
        help=f"smoke run of the whole pipeline, {QUICK_SECONDS}, most of it imports, compilation and "
        f"MLflow: {QUICK['num_train']} training digits ({QUICK['validation']} held out), "
        f"{QUICK['num_test']} test digits, {QUICK['epochs']} epoch, batch {QUICK['batch_size']}",
    )
    parser.add_argument(
        "--distribute",
        action="store_true",
        help="train data parallel over every visible device of the backend: jax with Keras's DataParallel, "
        "tensorflow with MirroredStrategy (the batch size is the global one); torch needs one process per "
        "device (DistributedDataParallel, README 'Multiple devices') and rejects the flag",
    )
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.distribute:
        import keras  # only here: the backend decides, and --help must not pay for the import

        if keras.config.backend() == "torch":
            parser.error(
                "--distribute is not available on the torch backend: Keras's fit runs one process, and torch "
                "trains on several devices with one process per device (DistributedDataParallel; see the "
                "README's 'Multiple devices')"
            )
    if len(set(args.transforms)) != len(args.transforms):
        parser.error(f"--transforms lists an arm twice: {args.transforms}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: expected distinct seeds, got {args.seeds}")
    if args.quick:
        args.epochs, args.batch_size = QUICK["epochs"], QUICK["batch_size"]
    return args


def main(argv=None):
    args = parse_args(argv)
    from experiments import study  # the frameworks, imported once the arguments are known to be good

    study.run(args)


if __name__ == "__main__":
    main()
