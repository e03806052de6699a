import contextlib
import os

import keras
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKEND = keras.config.backend()


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
def x64():
    with float64_enabled():
        yield
