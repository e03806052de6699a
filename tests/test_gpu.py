"""Smoke tests on a GPU: the ops against the NumPy reference, a layer that trains there, the
benchmark against PyTorch's CUDA kernel, and the determinism pitfall of that kernel.

Every test here is marked `gpu` and skips when the Keras backend computes on the CPU, so the
suite passes without one; `benchmarks/gpu_run.sh` runs them on a lent GPU under each backend.
`KERAS_STN_GPU_TESTS=cpu` runs them on the CPU instead (the device script's dry run does), to
check the tests themselves where no GPU is: placement is then checked against the CPU, and
the CUDA-only test still skips.
"""

import os

import keras
import numpy as np
import pytest

import keras_stn
from benchmarks import sampler
from helpers import BACKEND, random_theta, to_numpy, value_and_grad
from keras_stn.ops import affine_sample
from keras_stn.ops._backend import torch_kernel as native
from reference import affine_grid_ref, grid_sample_ref, torch_reference

DEVICE_KIND, DEVICE_NAME = sampler.backend_device()
ON_CPU = os.environ.get("KERAS_STN_GPU_TESTS") == "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE_KIND != "gpu" and not ON_CPU, reason=f"the {BACKEND} backend computes on the CPU here"),
]
cuda_only = pytest.mark.skipif(DEVICE_KIND != "gpu", reason="checks PyTorch's CUDA kernel")


def on_device(x):
    """Whether the backend tensor `x` lives on the kind of device the backend computes on."""
    if BACKEND == "jax":
        kinds = {"cpu" if device.platform == "cpu" else "gpu" for device in x.devices()}
    elif BACKEND == "tensorflow":
        kinds = {"gpu" if "GPU" in x.device.upper() else "cpu"}
    else:
        kinds = {"cpu" if x.device.type == "cpu" else "gpu"}
    return kinds == {DEVICE_KIND}


def gradients(fn, *arrays):
    """Gradients of the scalar `fn` w.r.t. each array, as NumPy, with the arrays placed where the
    backend computes (`helpers.value_and_grad` makes CPU tensors under torch)."""
    if BACKEND != "torch":
        return value_and_grad(fn, *arrays)[1]
    import torch

    tensors = [keras.ops.convert_to_tensor(a).requires_grad_(True) for a in arrays]
    return [to_numpy(g) for g in torch.autograd.grad(fn(*tensors), tensors)]


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_ops_on_the_gpu_match_the_reference(rng, interpolation, padding_mode):
    images = rng.random((3, 9, 8, 2)).astype("float32")
    theta = random_theta(rng, 3, (9, 8), (7, 6), False)
    out = affine_sample(images, theta, (7, 6), interpolation, padding_mode)
    assert on_device(out)
    expected = grid_sample_ref(images, affine_grid_ref(theta, (7, 6)), interpolation, padding_mode)
    np.testing.assert_allclose(to_numpy(out), expected, atol=2e-5)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_the_identity_is_exact_on_the_gpu(rng, interpolation, align_corners):
    """The identity theta returns its images bit for bit on the device too, beside a theta that
    warps in the same batch: on an accelerator the torch kernel's exact-identity pass always
    runs (it reads no flag back to the host), and the portable sampler is exact by its
    arithmetic."""
    images = rng.random((2, 9, 8, 3)).astype("float32")
    theta = np.stack([np.eye(2, 3, dtype="float32"), random_theta(rng, 1, (9, 8), (9, 8), align_corners)[0]])
    out = affine_sample(images, theta, None, interpolation, "zeros", align_corners)
    assert on_device(out)
    np.testing.assert_array_equal(to_numpy(out)[0], images[0])
    assert not np.array_equal(to_numpy(out)[1], images[1])


def test_gradients_on_the_gpu_match_torch_on_the_cpu(rng):
    images = rng.random((2, 9, 8, 3)).astype("float32")
    theta = random_theta(rng, 2, (9, 8), (7, 6), False)
    weights = rng.normal(size=(2, 7, 6, 3)).astype("float32")

    def loss(x, t):
        return keras.ops.sum(affine_sample(x, t, (7, 6), "bilinear", "border") * keras.ops.convert_to_tensor(weights))

    grad_images, grad_theta = gradients(loss, images, theta)
    expected = torch_reference(
        images.astype("float64"),
        None,
        "bilinear",
        "border",
        False,
        theta=theta.astype("float64"),
        size=(7, 6),
        weights=weights,
    )
    np.testing.assert_allclose(grad_images, expected.d_images, atol=1e-4)
    np.testing.assert_allclose(grad_theta, expected.d_theta, rtol=1e-3, atol=1e-3)


def test_the_layer_trains_on_the_gpu(rng):
    inputs = keras.Input((20, 20, 1))
    warped = keras_stn.SpatialTransformer((20, 20))(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(warped))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x = rng.random((32, 20, 20, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    head = [w for w in model.weights if w.path.endswith("kernel")][-2]  # the transformer's head
    before = to_numpy(head)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(to_numpy(head), before)
    assert all(on_device(w.value) for w in model.weights)


def test_the_benchmark_measures_against_torch_on_the_gpu(monkeypatch):
    monkeypatch.setitem(sampler.WORKLOADS, "tiny", (2, 6, 5, 2, 4, 7))
    meta = sampler.metadata()
    assert meta["device kind"] == DEVICE_KIND and meta["device"] == DEVICE_NAME
    rows = sampler.benchmark_case("tiny", repeats=1, compile=False)
    assert rows and all(row["forward ms"] > 0 and row["forward+backward torch ms"] > 0 for row in rows)
    if DEVICE_KIND == "gpu":
        assert meta["torch device"] and meta["cuda"]
        assert all(row["torch peak MiB"] > 0 for row in rows)  # PyTorch's CUDA allocator saw the reference
        assert all("torch: torch CUDA allocator" in row["memory measure"] for row in rows)
    else:
        assert all("torch: process peak RSS" in row["memory measure"] for row in rows)


@cuda_only
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's CUDA kernel is used by the torch backend")
def test_the_cuda_kernel_is_not_deterministic_and_the_portable_sampler_is(rng):
    import torch

    images = rng.random((2, 6, 6, 2)).astype("float32")
    theta = random_theta(rng, 2, (6, 6), (5, 4), False)

    def loss(x, t):
        return keras.ops.sum(affine_sample(x, t, (5, 4)))

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            gradients(loss, images, theta)
        with native.switched(False):
            first = gradients(loss, images, theta)
            second = gradients(loss, images, theta)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
