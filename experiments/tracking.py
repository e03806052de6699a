"""MLflow logging for the experiments: environment parameters and a per-epoch Keras callback.

Runs go to the standard `MLFLOW_TRACKING_URI` (MLflow's default local store in the working
directory when it is unset).
"""

import os
import platform
import time

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


def log_figure(figure, path):
    mlflow.log_figure(figure, path)
    plt.close(figure)


class EpochLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics and timing to the active MLflow run, and warp galleries.

    Metrics: `loss`, `accuracy`, `val_loss`, `val_accuracy`, `val_error` (percent),
    `epoch_seconds` (training part of the epoch) and `step_ms` (that over the number of steps).
    For an ST-CNN the gallery of `sample_images` next to the transformer's output is logged as
    `warps/epoch_XXX.png` before training and after each epoch of `figure_epochs(epochs)`.

    Args:
        arm: the transform name, for figure titles.
        sample_images: `(N, H, W, C)` images to draw, N a multiple of 4.
        epochs: the number of epochs the model is fit for.
    """

    def __init__(self, arm, sample_images, epochs):
        super().__init__()
        self.arm = arm
        self.sample_images = sample_images
        self.figure_epochs = figure_epochs(epochs)
        self.step_ms = []
        self._warper = None
        self._epoch_start = None
        self._train_end = None

    def on_train_begin(self, logs=None):
        self._warper = transformer_output(self.model)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 0:  # not a later `fit` of the run
            self._log_warps(0)

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
        metrics.update(epoch_seconds=seconds, step_ms=self.step_ms[-1])
        mlflow.log_metrics(metrics, step=epoch + 1)
        self._log_warps(epoch + 1)

    def _log_warps(self, epoch):
        if self._warper is None or epoch not in self.figure_epochs:
            return
        warped = keras.ops.convert_to_numpy(self._warper(self.sample_images, training=False))
        log_figure(
            warp_gallery(self.sample_images, warped, f"{self.arm}, epoch {epoch}"), f"warps/epoch_{epoch:03d}.png"
        )
