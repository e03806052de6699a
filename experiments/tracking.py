"""Recording the experiments: environment parameters, a per-epoch Keras callback writing the run
folder, and MLflow calls that never stop the training.

Runs go to the standard `MLFLOW_TRACKING_URI` (MLflow's default local store in the working
directory when it is unset).
"""

import os
import platform
import sys
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np

import keras_stn
from experiments.figures import warp_gallery
from experiments.models import transformer_output

BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


def backend_version():
    """The version of the framework behind the current Keras backend."""
    module = __import__(BACKEND_PACKAGES[keras.backend.backend()])
    return module.__version__


def cpu_description():
    """e.g. "cpu (2 cores, x86_64)"."""
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def device_description():
    """The accelerator the current backend computes on (Keras uses a visible GPU by itself), or the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return cpu_description() if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else cpu_description()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"gpu: {details.get('device_name', gpus[0].name)}"
    return cpu_description()


def environment_params():
    """Parameters every run records: backend, versions and device."""
    return {
        "backend": keras.backend.backend(),
        "backend_version": backend_version(),
        "keras_version": keras.__version__,
        "keras_stn_version": keras_stn.__version__,
        "mlflow_version": mlflow.__version__,
        "python_version": platform.python_version(),
        "device": device_description(),
    }


def pip_requirements():
    """What a loaded model needs: recorded with the model instead of MLflow's (slow) inference."""
    backend = keras.backend.backend()
    return [
        f"keras=={keras.__version__}",
        f"keras-stn=={keras_stn.__version__}",
        f"{BACKEND_PACKAGES[backend]}=={backend_version()}",
    ]


def figure_epochs(epochs):
    """Epochs after which the warp gallery is drawn: 0 (before training), 1, 2, 4, 8, ... and the last."""
    chosen = {0, epochs}
    epoch = 1
    while epoch < epochs:
        chosen.add(epoch)
        epoch *= 2
    return sorted(chosen)


# MLflow retries each HTTP request MLFLOW_HTTP_REQUEST_MAX_RETRIES times (its default 7, with
# backoff, is about 4 minutes per call against a server that is down). The experiments keep the
# user's values and otherwise set these: a dead server costs seconds per call, and the run folder
# keeps what MLflow missed until the server is back.
TRACKING_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RECONNECT_SECONDS = 60.0  # while offline, how often an epoch's end asks whether the server is back


def set_tracking_env_defaults():
    """Sets each of `TRACKING_ENV_DEFAULTS` the user did not set; returns the values in force."""
    for name, value in TRACKING_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in TRACKING_ENV_DEFAULTS}


class Tracker:
    """MLflow calls that never stop the training.

    `call` runs one client call; when it fails (after MLflow's own bounded retries) the tracker
    goes offline: it says so once on stderr and skips every call until `reconnect` finds the
    server answering again. Whatever is skipped is re-logged by the caller from its run folder
    (`RunFolder` records what MLflow already holds).
    """

    def __init__(self, experiment_name, folder):
        self.client = mlflow.MlflowClient()
        self.experiment_name = experiment_name
        self.folder = folder
        self.online = True
        self.outages = 0
        self._offline_since = None

    def call(self, what, function, *args, **kwargs):
        """`(True, function(*args, **kwargs))`, or `(False, None)` when offline or when it fails."""
        if not self.online:
            return False, None
        try:
            return True, function(*args, **kwargs)
        except Exception as error:  # any failure of tracking: the training goes on regardless
            self.online = False
            self._offline_since = time.monotonic()
            self.outages += 1
            if self.outages == 1:
                print(
                    f"MLflow tracking failed ({what}: {type(error).__name__}: {str(error)[:300]}). Training goes "
                    f"on without it; {self.folder} keeps every result, and what MLflow missed is logged when the "
                    "server answers again (at the latest at the end of the study, or with --resume "
                    f"{self.folder}).",
                    file=sys.stderr,
                    flush=True,
                )
            return False, None

    def reconnect(self, force=False):
        """Whether MLflow answers; while offline it is asked at most every `RECONNECT_SECONDS`
        unless `force`."""
        if self.online:
            return True
        if not force and time.monotonic() - self._offline_since < RECONNECT_SECONDS:
            return False
        try:
            self.client.search_experiments(max_results=1)
        except Exception:
            self._offline_since = time.monotonic()
            return False
        self.online = True
        print("MLflow answers again: logging what it missed.", file=sys.stderr, flush=True)
        return True

    def experiment_id(self):
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(self.experiment_name)


def save_figure(figure, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


class EpochLogger(keras.callbacks.Callback):
    """Records each epoch in the arm's run folder as it ends, then calls `after_epoch(arm)`.

    Per epoch (`runs.Arm.finish_epoch`): the row of `history.csv` (`loss`, `accuracy`,
    `val_loss`, `val_accuracy`, `val_error` in percent, `epoch_seconds` of training, `step_ms`
    that over the number of steps, `timestamp_ms`) and the compiled model as the checkpoint that
    `--resume` continues from. For an ST-CNN, the gallery of `sample_images` next to the
    transformer's output is saved as `warps/epoch_XXX.png` before training and after each epoch
    of `figure_epochs(epochs)`.

    Args:
        arm: the `experiments.runs.Arm` whose folder receives the records.
        sample_images: `(N, H, W, C)` images to draw, N a multiple of 4.
        epochs: the number of epochs the arm trains in all.
        after_epoch: called with `arm` after each recorded epoch (the MLflow sync), or None.
    """

    def __init__(self, arm, sample_images, epochs, after_epoch=None):
        super().__init__()
        self.arm = arm
        self.sample_images = sample_images
        self.figure_epochs = figure_epochs(epochs)
        self.after_epoch = after_epoch
        self.step_ms = []
        self._warper = None
        self._epoch_start = None
        self._train_end = None

    def on_train_begin(self, logs=None):
        self._warper = transformer_output(self.model)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 0:  # not a later `fit` of the run
            self._save_warps(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_end = None

    # No batch-level hook: one would make Keras dispatch every training step synchronously
    # (`CallbackList` keeps its async dispatch only for callbacks without one). The training
    # part of an epoch ends where `fit` starts its validation, or at the epoch's end without one.
    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = self._finished_training()

    def _finished_training(self):
        """The time once the epoch's queued training steps have run: reading the optimizer's
        step counter waits for them, the epoch's one device sync."""
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        return time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        train_end = self._train_end if self._train_end is not None else self._finished_training()
        seconds = train_end - self._epoch_start
        self._epoch_start = None
        self.step_ms.append(1000.0 * seconds / max(self.params.get("steps") or 1, 1))
        metrics = {name: float(value) for name, value in (logs or {}).items() if np.isscalar(value)}
        if "val_accuracy" in metrics:
            metrics["val_error"] = 100.0 * (1.0 - metrics["val_accuracy"])
        metrics.update(epoch_seconds=seconds, step_ms=self.step_ms[-1], timestamp_ms=int(time.time() * 1000))
        self.arm.finish_epoch(metrics, self.model.save)
        self._save_warps(epoch + 1)
        if self.after_epoch is not None:
            self.after_epoch(self.arm)

    def _save_warps(self, epoch):
        if self._warper is None or epoch not in self.figure_epochs:
            return
        warped = keras.ops.convert_to_numpy(self._warper(self.sample_images, training=False))
        figure = warp_gallery(self.sample_images, warped, f"{self.arm.transform}, epoch {epoch}")
        save_figure(figure, self.arm.folder / "warps" / f"epoch_{epoch:03d}.png")
