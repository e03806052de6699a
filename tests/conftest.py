import contextlib
import os

import keras
import numpy as np
import pytest

from helpers import SIMULATED_CPU_DEVICES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKEND = keras.config.backend()

# Two CPU devices, for the multi-device tests (tests/test_multi_device.py) to train on in this
# process. A framework must be told before it starts; every other test runs on the first device,
# the default one, as it would with one.
if BACKEND == "jax":
    _flag = "--xla_force_host_platform_device_count"
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={SIMULATED_CPU_DEVICES}".strip()
elif BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(SIMULATED_CPU_DEVICES)],
    )


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {BACKEND}"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(20151008)


@contextlib.contextmanager
def float64_enabled():
    """JAX truncates float64 to float32 unless x64 is on; enable it for a float64 test only."""
    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


@pytest.fixture
def portable_sampler(monkeypatch):
    """Runs the test on the portable `keras.ops` sampler on every backend: the torch backend
    otherwise samples with PyTorch's kernel (`keras_stn/ops/_backend/torch_kernel.py`), which agrees with it
    to rounding but not bit for bit, so exactness tests of the portable sampler use this."""
    monkeypatch.setenv("KERAS_STN_NATIVE", "0")


@pytest.fixture
def x64():
    with float64_enabled():
        yield


def synthetic_digits(rng, count):
    """`count` 28x28 uint8 images with a bright rectangle each (stand-ins for MNIST digits)."""
    images = np.zeros((count, 28, 28), "uint8")
    for image in images:
        top, left = rng.integers(4, 12, size=2)
        height, width = rng.integers(8, 14, size=2)
        image[top : top + height, left : left + width] = rng.integers(128, 256)
    return images


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory):
    """Path of a small `mnist.npz` with MNIST's keys, dtypes and image size, but synthetic content.

    For tests of the experiments' plumbing: they never need the real dataset or the internet.
    """
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    np.savez(
        path,
        x_train=synthetic_digits(rng, 600),
        y_train=rng.integers(0, 10, size=600).astype("uint8"),
        x_test=synthetic_digits(rng, 200),
        y_test=rng.integers(0, 10, size=200).astype("uint8"),
    )
    return str(path)
