"""The distorted-MNIST comparison behind `python -m experiments.distorted_mnist`: the CNN against
ST-CNNs with each transform, tracked in MLflow.

`run(args)` takes the arguments `experiments.distorted_mnist.parse_args` returns. One invocation
is one MLflow parent run ("<distortion> <backend>"), with a nested child run per transform. Each
child records its parameters (transform, distortion, backend and versions, epochs, batch size,
learning rate, seed, device), per-epoch metrics (training and validation loss/accuracy,
validation error, step time), the final test error, the trained model (MLflow's Keras flavour:
`import keras_stn` then `mlflow.keras.load_model(uri)`) and, for ST-CNNs, galleries of validation
digits next to what the transformer made of them at several epochs. The parent records the
comparison table (`comparison.csv`, `comparison.md`, with the paper's errors beside ours) and the
learning curves of every arm (`learning_curves.png`).

Training: Adam with a cosine-decayed learning rate, 10,000 training digits held out for
validation, the test split for the final error. The paper trains with SGD for 150k iterations
(about 640 epochs at batch 256); we train far shorter, so compare the ordering of the arms with
the paper's rather than the absolute errors.
"""

import contextlib
import os
import sys
import time

import keras
import mlflow
import numpy as np

from experiments import data as data_lib
from experiments import training
from experiments.distorted_mnist import QUICK
from experiments.figures import learning_curves
from experiments.models import build_model
from experiments.paper import paper_test_error
from experiments.tables import summarize, table_csv, table_markdown
from experiments.tracking import EpochLogger, environment_params, log_figure, pip_requirements

VALIDATION_SIZE = 10_000
GALLERY_SIZE = 16


def load_splits(args):
    """Train/validation/test arrays of the distortion; validation is the end of the training split."""
    sizes = {"num_train": QUICK["num_train"], "num_test": QUICK["num_test"]} if args.quick else {}
    arrays = data_lib.load_distorted(
        args.distortion, data=args.data, seed=args.data_seed, cache_dir=args.cache_dir, **sizes
    )
    validation = QUICK["validation"] if args.quick else VALIDATION_SIZE
    x, y = arrays["x_train"], arrays["y_train"]
    return {
        "train": (x[:-validation], y[:-validation]),
        "validation": (x[-validation:], y[-validation:]),
        "test": (arrays["x_test"], arrays["y_test"]),
    }


def inference_copy(model):
    """The trained model without its optimizer, for logging: a model saved compiled under torch
    stores a torch-only optimizer class and fails to load where torch is not installed, whereas
    an uncompiled one loads under every backend (compile it again there to train on)."""
    copy = type(model).from_config(model.get_config())  # the architecture alone (clone_model keeps the compile)
    copy.set_weights(model.get_weights())
    return copy


def data_parallel(distribute):
    """The context the model is built, trained and evaluated in: data parallel over every visible
    device of the backend with `--distribute`, else the default (one device)."""
    if not distribute:
        return contextlib.nullcontext()
    if keras.config.backend() == "jax":
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices()).scope()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy().scope()


def train_arm(transform, seed, splits, args):
    """Trains one arm inside the active (child) MLflow run; returns its row of the comparison."""
    with data_parallel(args.distribute):
        return train_arm_on_devices(transform, seed, splits, args)


def train_arm_on_devices(transform, seed, splits, args):
    keras.utils.set_random_seed(seed)
    x_train, y_train = splits["train"]
    model = build_model(transform, x_train.shape[1:])
    model.compile(
        optimizer=training.optimizer(args, len(x_train)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    steps = training.total_steps(args, len(x_train))
    epoch_steps = training.steps_per_epoch(len(x_train), args.batch_size)
    epochs = training.epoch_count(args, len(x_train))
    mlflow.log_params(
        {
            "params": model.count_params(),
            "model": model.name,
            "train_size": len(x_train),
            "steps": steps,
            "steps_per_epoch": epoch_steps,
            "epochs_trained": epochs,
        }
    )
    logger = EpochLogger(transform, splits["validation"][0][:GALLERY_SIZE], epochs)
    start = time.perf_counter()
    history = training.fit(
        model,
        splits["train"],
        seed,
        steps,
        epoch_steps,
        args.batch_size,
        validation_data=splits["validation"],
        callbacks=[logger],
        verbose=args.verbose,
    )
    train_seconds = time.perf_counter() - start
    x_test, y_test = splits["test"]
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    test_error = 100.0 * (1.0 - test_accuracy)
    mlflow.log_metrics({"test_error": test_error, "test_accuracy": test_accuracy, "train_seconds": train_seconds})
    signature = mlflow.models.infer_signature(x_test[:2], model.predict(x_test[:2], verbose=0))
    mlflow.keras.log_model(
        inference_copy(model), name="model", signature=signature, pip_requirements=pip_requirements()
    )
    environment = environment_params()
    row = {
        "transform": transform,
        "seed": seed,
        "test_error": round(test_error, 2),
        "paper_test_error": paper_test_error(args.distortion, transform),
        "best_val_error": round(100.0 * (1.0 - max(history["val_accuracy"])), 2),
        "epochs": epochs,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "step_ms": round(float(np.median(logger.step_ms)), 1),
        "params": model.count_params(),
        "data_seed": args.data_seed,
        "backend": environment["backend"],
        "device": environment["device"],
    }
    return row, history


def protocol_params(args):
    """The training protocol as MLflow parameters (the step-schedule and momentum entries only where
    they apply; `iterations` and `epochs` as given, one of them None)."""
    params = {
        "protocol": args.protocol,
        "optimizer": args.optimizer,
        "schedule": args.schedule,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "iterations": args.iterations,
    }
    if args.optimizer == "sgd":
        params["momentum"] = args.momentum
    if args.schedule == "step":
        params.update(lr_drop_every=args.lr_drop_every, lr_drop_factor=args.lr_drop_factor)
    return params


def protocol_description(args):
    """e.g. "SGD (momentum 0.0), lr 0.01 × 0.1 every 50000 steps, batch 256, 150000 steps"."""
    optimizer = f"SGD (momentum {args.momentum})" if args.optimizer == "sgd" else "Adam"
    schedule = {
        "cosine": f"lr {args.lr} cosine-decayed to 0",
        "step": f"lr {args.lr} × {args.lr_drop_factor} every {args.lr_drop_every} steps",
        "constant": f"constant lr {args.lr}",
    }[args.schedule]
    length = f"{args.iterations} steps" if args.iterations else f"{args.epochs} epochs"
    return f"protocol {args.protocol}: {optimizer}, {schedule}, batch {args.batch_size}, {length}"


def settings_lines(args, environment):
    """The run's settings, one markdown line each, for the header of the comparison."""
    return [
        f"backend {environment['backend']} {environment['backend_version']}, keras {environment['keras_version']}, "
        f"keras_stn {environment['keras_stn_version']}, device {environment['device']}",
        protocol_description(args) + (", --quick" if args.quick else ""),
        f"seeds {' '.join(map(str, args.seeds))} (weights and shuffling), dataset seed {args.data_seed} "
        "(the same digits for every seed)",
    ]


def run(args):
    """Runs the comparison described by parsed `args`; returns (parent run id, comparison rows)."""
    splits = load_splits(args)
    environment = environment_params()
    mlflow.set_experiment(args.experiment_name)
    rows, histories = [], {}
    run_name = f"{args.distortion} {environment['backend']}" + (" quick" if args.quick else "")
    with mlflow.start_run(run_name=run_name) as parent:
        common = {
            "distortion": args.distortion,
            **protocol_params(args),
            "seeds": " ".join(map(str, args.seeds)),
            "data_seed": args.data_seed,
            "quick": args.quick,
            "distribute": args.distribute,
            **environment,
        }
        mlflow.log_params({**common, "transforms": " ".join(args.transforms)})
        for transform in args.transforms:
            for seed in args.seeds:
                with mlflow.start_run(run_name=f"{transform} seed {seed}", nested=True):
                    mlflow.log_params({**common, "transform": transform, "seed": seed})
                    row, history = train_arm(transform, seed, splits, args)
                rows.append(row)
                histories[f"{transform} seed {seed}"] = history
                print(f"{transform} seed {seed}: test error {row['test_error']:.2f}%", file=sys.stderr)
        markdown = table_markdown(rows, args.distortion, settings_lines(args, environment))
        mlflow.log_text(table_csv(rows), "comparison.csv")
        mlflow.log_text(markdown, "comparison.md")
        log_figure(learning_curves(histories, f"distorted MNIST {args.distortion}"), "learning_curves.png")
        for arm in summarize(rows, args.distortion):
            mlflow.log_metric(f"test_error_{arm['transform']}", arm["mean"])
            if arm["std"] is not None:
                mlflow.log_metric(f"test_error_std_{arm['transform']}", arm["std"])
    if args.results_dir:
        os.makedirs(args.results_dir, exist_ok=True)
        stem = os.path.join(args.results_dir, f"{args.distortion}_{environment['backend']}")
        with open(stem + ".md", "w") as handle:
            handle.write(markdown)
        with open(stem + ".csv", "w") as handle:
            handle.write(table_csv(rows))
    print(markdown)
    return parent.info.run_id, rows
