"""The distorted-MNIST comparison behind `python -m experiments.distorted_mnist`: the CNN against
ST-CNNs with each transform, tracked in MLflow.

`run(args)` takes the arguments `experiments.distorted_mnist.parse_args` returns. One invocation
is one MLflow parent run ("<distortion> <backend>"), with a nested child run per (transform, seed). Each
child records its parameters (transform, distortion, backend and versions, epochs, batch size,
learning rate, seeds, protocol, device), per-epoch metrics (training and validation loss/accuracy,
validation error, step time), the final test error, the trained model (MLflow's Keras flavour:
`import keras_stn` then `mlflow.keras.load_model(uri)`) and, for ST-CNNs, galleries of validation
digits next to what the transformer made of them at several epochs. The parent records the
comparison table (`comparison.csv`, `comparison.md`, with the paper's errors beside ours) and the
learning curves of every arm (`learning_curves.png`).

Everything is first written to the study's run folder (`experiments.runs`), epoch by epoch;
`Mirror` copies into MLflow what the folder holds and MLflow does not, so a tracking outage
costs nothing but a delay, and `--resume` continues an interrupted study from its checkpoints.

Training (`experiments.training`): by default Adam with a cosine-decayed learning rate; with
`--protocol paper` the paper's SGD schedule. 10,000 training digits are held out for
validation, the test split gives the final error.
"""

import argparse
import contextlib
import functools
import os
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from experiments import data as data_lib
from experiments import training
from experiments.distorted_mnist import QUICK, VALIDATION_SIZE
from experiments.figures import learning_curves
from experiments.models import build_model
from experiments.paper import paper_test_error
from experiments.runs import Study, new_folder
from experiments.tables import summarize, table_csv, table_markdown
from experiments.tracking import (
    EpochLogger,
    Tracker,
    environment_params,
    pip_requirements,
    save_figure,
    set_tracking_env_defaults,
)

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
        "train": (x[:-validation][: args.train_size], y[:-validation][: args.train_size]),
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
    return mirrored_strategy().scope()


@functools.cache
def mirrored_strategy():
    """TensorFlow's strategy over every visible device, one per process: a second
    `MirroredStrategy` numbers its collectives from the same keys as the first, so the next
    arm's gradient all-reduce meets the previous arm's (another model's shapes) and aborts
    ("Shape mismatch in the collective instance")."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def train_arm(arm, splits, args, mirror, callbacks=()):
    """Trains one arm (from its last finished epoch when resuming), recording it in its folder."""
    if args.distribute and keras.config.backend() == "torch":
        from experiments import torch_parallel

        with torch_parallel.processes(arm, args) as shard:
            train_arm_on_devices(arm, splits, args, mirror, callbacks, shard)
        return
    with data_parallel(args.distribute):
        train_arm_on_devices(arm, splits, args, mirror, callbacks)


def arm_model(transform, seed, checkpoint, x_train, args):
    """The arm's compiled model: loaded from `checkpoint` when resuming (weights, optimizer state
    and step counter of the last finished epoch), else built from `seed`."""
    if checkpoint:
        return keras.saving.load_model(checkpoint)
    keras.utils.set_random_seed(seed)
    model = build_model(transform, x_train.shape[1:], downsample=args.downsample)
    model.compile(
        optimizer=training.optimizer(args, len(x_train)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_arm_on_devices(arm, splits, args, mirror, callbacks, shard=None):
    x_train, _ = splits["train"]
    steps = training.total_steps(args, len(x_train))
    epoch_steps = training.steps_per_epoch(len(x_train), args.batch_size)
    epochs = training.epoch_count(args, len(x_train))
    first_epoch = arm.state["epochs_done"]
    model = arm_model(arm.transform, arm.seed, arm.checkpoint_path() if first_epoch else None, x_train, args)
    if shard is not None:
        shard.prepare(model)
    arm.state["params"] = {
        **mirror.common,
        "transform": arm.transform,
        "seed": arm.seed,
        "params": model.count_params(),
        "model": model.name,
        "train_size": len(x_train),
        "steps": steps,
        "steps_per_epoch": epoch_steps,
        "epochs_trained": epochs,
        "processes": shard.world if shard is not None else 1,
    }
    arm.state["status"] = "training"
    arm.save()
    mirror.sync_arm(arm, reopen=True)
    logger = EpochLogger(arm, splits["validation"][0][:GALLERY_SIZE], epochs, after_epoch=mirror.after_epoch)
    start = time.perf_counter()
    training.fit(
        model,
        splits["train"],
        arm.seed,
        steps,
        epoch_steps,
        args.batch_size,
        first_epoch=first_epoch,
        shard=shard,
        validation_data=splits["validation"],
        validation_batch_size=args.batch_size,  # Keras's default, 32, makes validation the slower half of an epoch
        callbacks=[logger, *callbacks],
        verbose=args.verbose,
    )
    train_seconds = arm.state.get("train_seconds", 0.0) + time.perf_counter() - start
    x_test, y_test = splits["test"]
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    test_error = 100.0 * (1.0 - test_accuracy)
    # The trained model's error on its own training digits (not the running mean over the last epoch,
    # which mixes earlier weights): how far it is from fitting them, i.e. whether it underfits.
    _, train_accuracy = model.evaluate(*splits["train"], batch_size=args.batch_size, verbose=0)
    train_error = 100.0 * (1.0 - train_accuracy)
    inference_copy(model).save(arm.model_path)
    history = arm.history()
    environment = environment_params()
    arm.state.update(
        status="trained",
        train_seconds=train_seconds,
        final_metrics={
            "test_error": test_error,
            "test_accuracy": test_accuracy,
            "train_error": train_error,
            "train_seconds": train_seconds,
        },
        row={
            "transform": arm.transform,
            "seed": arm.seed,
            "test_error": round(test_error, 2),
            "paper_test_error": paper_test_error(args.distortion, arm.transform),
            "train_error": round(train_error, 2),
            "best_val_error": round(min(row["val_error"] for row in history), 2),
            "epochs": epochs,
            "steps": steps,
            "train_seconds": round(train_seconds, 1),
            "step_ms": round(float(np.median([row["step_ms"] for row in history])), 1),
            "params": model.count_params(),
            "train_size": len(x_train),
            "downsample": args.downsample,
            "data_seed": args.data_seed,
            "backend": environment["backend"],
            "device": environment["device"],
        },
    )
    arm.save()
    for old in arm.folder.glob("checkpoint-*.keras"):  # the trained model replaces the checkpoints
        old.unlink()


class Mirror:
    """Mirrors a run folder into MLflow: logs whatever the folder holds that MLflow does not.

    Every method is safe to call at any time: through `Tracker` nothing raises, and what fails
    stays recorded as missing in the folder's state, for the next sync.
    """

    def __init__(self, tracker, study, common):
        self.tracker, self.study, self.common = tracker, study, common
        self.client = tracker.client

    @property
    def parent(self):
        return self.study.data.setdefault("mlflow", {"run_id": None, "params": False, "final": False, "closed": False})

    def sync_parent(self, run_name):
        parent = self.parent
        if parent["run_id"] is None:
            ok, experiment_id = self.tracker.call("experiment", self.tracker.experiment_id)
            if not ok:
                return False
            ok, created = self.tracker.call(
                "create the parent run", self.client.create_run, experiment_id, run_name=run_name
            )
            if not ok:
                return False
            parent["run_id"] = created.info.run_id
            self.study.save()
        if not parent["params"]:
            params = {**self.common, "transforms": " ".join(self.study.data["args"]["transforms"])}
            if not self.log_params(parent["run_id"], params):
                return False
            parent["params"] = True
            self.study.save()
        return True

    def log_params(self, run_id, params):
        batch = [mlflow.entities.Param(name, str(value)) for name, value in params.items()]
        return self.tracker.call("log parameters", self.client.log_batch, run_id, params=batch)[0]

    def after_epoch(self, arm):
        if self.tracker.reconnect():
            self.sync_all()

    def sync_all(self, final=False):
        """Everything the folder holds, for the parent and every arm started so far."""
        if not self.tracker.reconnect(force=final) or not self.sync_parent(self.study.data["run_name"]):
            return False
        for transform in self.study.data["args"]["transforms"]:
            for seed in self.study.data["args"]["seeds"]:
                arm = self.study.arm(transform, seed)
                if arm.state["status"] != "new" and not self.sync_arm(arm):
                    return False
        return True

    def sync_arm(self, arm, reopen=False):
        """Logs the arm's missing run, parameters, epochs, figures, final metrics and model; closes
        its run once trained. `reopen` marks a run left KILLED by an interruption as RUNNING again."""
        if not self.tracker.online or not self.sync_parent(self.study.data["run_name"]):
            return False
        state, run_id = arm.mlflow, arm.mlflow["run_id"]
        if run_id is None:
            ok, experiment_id = self.tracker.call("experiment", self.tracker.experiment_id)
            if not ok:
                return False
            ok, created = self.tracker.call(
                "create a run",
                self.client.create_run,
                experiment_id,
                run_name=arm.name,
                tags={"mlflow.parentRunId": self.parent["run_id"]},
            )
            if not ok:
                return False
            state["run_id"] = run_id = created.info.run_id
            arm.save()
        elif reopen and not state["closed"]:
            if not self.tracker.call("reopen a run", self.client.update_run, run_id, status="RUNNING")[0]:
                return False
        if not state["params"] and "params" in arm.state:
            if not self.log_params(run_id, arm.state["params"]):
                return False
            state["params"] = True
            arm.save()
        history = arm.history()
        if state["epochs"] < len(history):
            metrics = [
                mlflow.entities.Metric(name, value, int(row["timestamp_ms"]), row["epoch"])
                for row in history[state["epochs"] :]
                for name, value in row.items()
                if name not in ("epoch", "timestamp_ms")
            ]
            for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
                if not self.tracker.call(
                    "log metrics", self.client.log_batch, run_id, metrics=metrics[start : start + 1000]
                )[0]:
                    return False
            state["epochs"] = len(history)
            arm.save()
        for path in arm.warps():
            if path.name not in state["artifacts"]:
                if not self.tracker.call("log a figure", self.client.log_artifact, run_id, str(path), "warps")[0]:
                    return False
                state["artifacts"].append(path.name)
                arm.save()
        if arm.state["status"] != "trained":
            return True
        if not state["final"]:
            final = arm.state["final_metrics"]
            now = int(time.time() * 1000)
            batch = [mlflow.entities.Metric(name, value, now, 0) for name, value in final.items()]
            if not self.tracker.call("log the test error", self.client.log_batch, run_id, metrics=batch)[0]:
                return False
            if not self.tracker.call("log the model", log_model, run_id, arm.model_path)[0]:
                return False
            state["final"] = True
            arm.save()
        if not state["closed"]:
            if not self.tracker.call("close a run", self.client.set_terminated, run_id, "FINISHED")[0]:
                return False
            state["closed"] = True
            arm.save()
        return True

    def finish(self, rows, summary):
        """The parent's tables, curves and per-transform metrics, then closes it."""
        if not self.sync_all(final=True):
            return False
        parent = self.parent
        run_id = parent["run_id"]
        if not parent["final"]:
            for name in ("comparison.csv", "comparison.md", "learning_curves.png"):
                if not self.tracker.call(
                    "log the comparison", self.client.log_artifact, run_id, str(self.study.folder / name)
                )[0]:
                    return False
            now = int(time.time() * 1000)
            metrics = [mlflow.entities.Metric(f"test_error_{arm['transform']}", arm["mean"], now, 0) for arm in summary]
            metrics += [
                mlflow.entities.Metric(f"test_error_std_{arm['transform']}", arm["std"], now, 0)
                for arm in summary
                if arm["std"] is not None
            ]
            if not self.tracker.call("log the comparison", self.client.log_batch, run_id, metrics=metrics)[0]:
                return False
            parent["final"] = True
            self.study.save()
        if not parent["closed"]:
            if not self.tracker.call("close the parent run", self.client.set_terminated, run_id, "FINISHED")[0]:
                return False
            parent["closed"] = True
            self.study.save()
        return True

    def interrupted(self, arm):
        """Marks the parent and the arm that was training KILLED, as far as MLflow answers."""
        for run_id in (arm.mlflow["run_id"] if arm else None, self.parent["run_id"]):
            if run_id is not None:
                self.tracker.call("mark a run interrupted", self.client.set_terminated, run_id, "KILLED")


def log_model(run_id, path):
    """Logs the saved, uncompiled `.keras` model at `path` into run `run_id` (MLflow's Keras flavour)."""
    model = keras.saving.load_model(path)
    sample = np.zeros((2, *model.input_shape[1:]), "float32")
    signature = mlflow.models.infer_signature(sample, model.predict(sample, verbose=0))
    with mlflow.start_run(run_id=run_id):
        mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=pip_requirements())


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


def settings_lines(args, environment, splits):
    """The run's settings, one markdown line each, for the header of the comparison."""
    sizes = {name: len(split[0]) for name, split in splits.items()}
    lines = [
        f"backend {environment['backend']} {environment['backend_version']}, keras {environment['keras_version']}, "
        f"keras_stn {environment['keras_stn_version']}, device {environment['device']}",
        protocol_description(args) + (", --quick" if args.quick else ""),
        f"{sizes['train']} training digits"
        + (f" (--train-size {args.train_size})" if args.train_size else "")
        + f", {sizes['validation']} validation, {sizes['test']} test; downsample {args.downsample} (every arm)",
        f"seeds {' '.join(map(str, args.seeds))} (weights and shuffling), dataset seed {args.data_seed} "
        "(the same digits for every seed)",
    ]
    if args.note:
        lines.append(args.note)
    return lines


def run(args, callbacks=()):
    """Runs (or, with `args.resume`, continues) the comparison described by parsed `args`; returns
    (parent run id or None if MLflow never answered, comparison rows). `callbacks` are extra Keras
    callbacks for every arm's `fit`."""
    set_tracking_env_defaults()
    environment = environment_params()
    if args.resume:
        study = Study(args.resume)
        # Run folders started before an option existed resume with that option's default.
        added_later = {"downsample": "auto", "train_size": None, "note": None}
        args = argparse.Namespace(
            **{**added_later, **study.data["args"], "verbose": args.verbose, "resume": args.resume}
        )
    else:
        folder = new_folder(args.runs_dir, args.distortion, environment["backend"], args.quick)
        study = Study(folder)
        run_name = f"{args.distortion} {environment['backend']}" + (" quick" if args.quick else "")
        study.save(args=vars(args), environment=environment, run_name=run_name, status="running")
    print(f"run folder: {study.folder}", file=sys.stderr)
    splits = load_splits(args)
    common = {
        "distortion": args.distortion,
        **protocol_params(args),
        "downsample": args.downsample,
        "train_size": len(splits["train"][0]),
        "seeds": " ".join(map(str, args.seeds)),
        "data_seed": args.data_seed,
        **({"note": args.note} if args.note else {}),
        "quick": args.quick,
        "distribute": args.distribute,
        "run_folder": str(study.folder),
        **environment,
    }
    mirror = Mirror(Tracker(args.experiment_name, study.folder), study, common)
    mirror.sync_all()
    rows, histories, arm = [], {}, None
    try:
        for transform in args.transforms:
            for seed in args.seeds:
                arm = study.arm(transform, seed)
                if arm.state["status"] != "trained":
                    train_arm(arm, splits, args, mirror, callbacks)
                    mirror.sync_all(final=True)
                rows.append({**arm.state["row"], "run_folder": str(study.folder)})
                histories[arm.name] = arm.keras_history()
                print(f"{arm.name}: test error {arm.state['row']['test_error']:.2f}%", file=sys.stderr)
    except BaseException:
        study.save(status="interrupted")
        mirror.interrupted(arm)
        print(f"interrupted: continue with --resume {study.folder}", file=sys.stderr)
        raise
    summary = summarize(rows, args.distortion)
    markdown = table_markdown(rows, args.distortion, settings_lines(args, environment, splits))
    stems = [study.folder / "comparison"]
    stems.append(study.folder / f"{args.distortion}_{environment['backend']}")
    if args.results_dir:
        os.makedirs(args.results_dir, exist_ok=True)
        stems.append(Path(args.results_dir) / f"{args.distortion}_{environment['backend']}")
    for stem in stems:
        stem.with_suffix(".md").write_text(markdown)
        stem.with_suffix(".csv").write_text(table_csv(rows))
    save_figure(learning_curves(histories, f"distorted MNIST {args.distortion}"), study.folder / "learning_curves.png")
    study.save(status="finished")
    if not mirror.finish(rows, summary):
        print(
            f"MLflow still does not answer: its runs of this study stay open. Once the server is back, "
            f"`python -m experiments.distorted_mnist --resume {study.folder}` logs what it missed and closes them.",
            file=sys.stderr,
        )
    print(markdown)
    return mirror.parent["run_id"], rows
