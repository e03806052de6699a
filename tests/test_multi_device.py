"""Training on several devices, simulated on the CPU: each framework's own data-parallel recipe
(and JAX's model parallelism) takes one step that must equal a single-device step from the same
weights, and the compiled sampler of a batch sharded over devices has no cross-device collective.

The two CPU devices are configured by conftest.py before the framework starts (JAX: forced host
devices; TensorFlow: two logical CPUs), so these tests run in the suite's own process. torch's
two ranks are forked from it (no second import of torch and Keras) and meet over gloo on
127.0.0.1 only, bounded in time.
"""

import datetime
import gc
import multiprocessing
import socket

import keras
import numpy as np
import pytest

import keras_stn
from helpers import BACKEND, SIMULATED_CPU_DEVICES

DEVICES = SIMULATED_CPU_DEVICES
TIMEOUT_S = 120  # for torch's ranks: a rank that hangs dumps its stack and exits by then
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="a JAX recipe")
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow recipe")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="a torch recipe")

rng = np.random.default_rng(0)
BATCH = (rng.random((8, 12, 12, 1)).astype("float32"), rng.integers(0, 3, 8))


def build_model():
    """The transformer (with its default localization net) in front of a small classifier."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 1))
    x = keras_stn.SpatialTransformer((12, 12), padding_mode="border", name="stn")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="classifier")(x)
    return keras.Model(inputs, outputs)


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def weights_of(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def weights_after_one_step(model):
    """One SGD step on the 8 images of `BATCH`; the weights after it, as NumPy arrays."""
    compile_model(model)
    model.train_on_batch(*BATCH)
    return weights_of(model)


@pytest.fixture(scope="module")
def single_device():
    """The reference: the initial weights, and those after one step on one device."""
    return weights_of(build_model()), weights_after_one_step(build_model())


def assert_same_step(got, single_device):
    initial, want = single_device
    assert len(got) == len(want)
    moved = 0.0
    for g, w, start in zip(got, want, initial):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
        moved = max(moved, float(np.abs(w - start).max()))
    assert moved > 1e-3, "the step did not move the weights"


def cpu_devices():
    """The simulated CPU devices (on a machine with a GPU too, the CPU ones all the same)."""
    if BACKEND == "jax":
        import jax

        devices = jax.devices("cpu")
    else:
        import tensorflow as tf

        devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == DEVICES, f"conftest.py simulates {DEVICES} CPU devices, found {devices}"
    return devices


@jax_only
def test_jax_batch_sharded_sampler_has_no_collective():
    """Lowered for a batch sharded over 2 devices, the sampler's forward and backward passes
    contain no all-gather, all-reduce or other collective: each device reads its own images
    (before: the whole batch was all-gathered onto every device, its gradient all-reduced)."""
    import re

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from keras_stn.ops import affine_grid, affine_sample, grid_sample

    mesh = Mesh(np.array(cpu_devices()), ("batch",))

    def sharded(x):
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch", *([None] * (x.ndim - 1)))))

    collective = re.compile(r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter")
    cases = {
        "affine_sample": lambda x, t: affine_sample(x, t, None, "bilinear", "zeros"),
        "grid_sample(affine_grid)": lambda x, t: grid_sample(x, affine_grid(t, (6, 5)), "bicubic", "border"),
        "volumes": lambda x, t: affine_sample(x, t, (3, 4, 4), "nearest", "reflection"),
    }
    for name, sample in cases.items():
        volumes = name == "volumes"
        x = sharded(rng.random((4, 4, 8, 8, 3) if volumes else (4, 8, 8, 3)).astype("float32"))
        t = sharded((np.tile(np.eye(3, 4) if volumes else np.eye(2, 3), (4, 1, 1)) + 0.05).astype("float32"))
        backward = jax.grad(lambda x, t, sample=sample: jnp.sum(sample(x, t) ** 2), argnums=(0, 1))
        for kind, fn in (("forward", sample), ("backward", backward)):
            hlo = jax.jit(fn).lower(x, t).compile().as_text()
            found = sorted(set(collective.findall(hlo)))
            assert not found, f"{name} {kind}: {found}"


@jax_only
def test_jax_data_parallel_step_equals_single_device_step(single_device):
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
    assert len(distribution.device_mesh.devices.flat) == DEVICES == len(cpu_devices())
    with distribution.scope():
        model = build_model()
        parallel = weights_after_one_step(model)
        kernel = model.get_layer("classifier").kernel.value
        assert len(kernel.sharding.device_set) == DEVICES, "the weights are replicated on both devices"
    assert_same_step(parallel, single_device)


@jax_only
def test_jax_model_parallel_sharding_the_head_equals_single_device_step(single_device):
    """`ModelParallel` with a `LayoutMap` that splits the transformer head's kernel (50 x 6)
    over the 2 devices of the "model" axis."""
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == DEVICES == len(cpu_devices())
    mesh = keras.distribution.DeviceMesh((1, DEVICES), ["batch", "model"], devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["stn/theta_head/kernel"] = (None, "model")
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    with distribution.scope():
        model = build_model()
        kernel = model.get_layer("stn").head.kernel.value
        assert kernel.sharding.shard_shape(kernel.shape) == (kernel.shape[0], kernel.shape[1] // DEVICES)
        parallel = weights_after_one_step(model)
    assert_same_step(parallel, single_device)


@tensorflow_only
def test_tensorflow_mirrored_strategy_step_equals_single_device_step(single_device):
    """`tf.distribute.MirroredStrategy` over 2 logical CPUs, with Keras's default jit setting
    (`jit_compile=True` under a strategy is a known Keras limitation, keras-team/keras#19005)."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy([device.name for device in cpu_devices()])
    assert strategy.num_replicas_in_sync == DEVICES
    with strategy.scope():
        model = build_model()
        compile_model(model)
    dataset = tf.data.Dataset.from_tensor_slices(BATCH).batch(8)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert_same_step([np.asarray(w.numpy()) for w in model.weights], single_device)


def train_half(rank, world, port, out):
    """One DDP rank: trains on its share of `BATCH`, saves its weights to `out`."""
    import faulthandler
    import sys

    import torch
    import torch.distributed as dist

    # A rank that hangs prints where, and exits, before the parent stops waiting.
    faulthandler.dump_traceback_later(TIMEOUT_S, exit=True, file=sys.stderr)
    torch.set_num_threads(1)  # forked: the parent's thread pool is not the child's
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        with keras.device("cpu"):
            model = build_model()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
            images, labels = BATCH
            half = len(labels) // world
            x = torch.tensor(images[rank * half : (rank + 1) * half])
            y = torch.tensor(labels[rank * half : (rank + 1) * half])
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            np.savez(out, *weights_of(model))
        # DDP's reducer must go before its process group: destroyed after it (at the function's
        # return) it could hang the process in C++ teardown.
        del ddp, loss
        gc.collect()
    finally:
        dist.destroy_process_group()


@torch_only
def test_torch_distributed_data_parallel_step_equals_single_device_step(single_device, tmp_path):
    """`DistributedDataParallel` over 2 processes (gloo on 127.0.0.1), each training on half
    of the batch, as in Keras's guide to distributed training with torch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    outputs = [tmp_path / f"rank{rank}.npz" for rank in range(DEVICES)]
    ranks = [context.Process(target=train_half, args=(rank, DEVICES, port, outputs[rank])) for rank in range(DEVICES)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=TIMEOUT_S + 30)
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    assert [process.exitcode for process in ranks] == [0] * DEVICES
    for out in outputs:
        saved = np.load(out)
        assert_same_step([saved[f"arr_{k}"] for k in range(len(saved.files))], single_device)
