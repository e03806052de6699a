"""Training on several devices, simulated on the CPU: each framework's own data-parallel recipe
(and JAX's model parallelism) takes one step that must equal a single-device step from the same
weights, and the compiled sampler of a batch sharded over devices has no cross-device collective.

Devices are configured before a framework starts, so each case runs in a subprocess of its own
(bounded in time); torch's processes meet over gloo on 127.0.0.1 only.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import BACKEND

TIMEOUT = 300

# The model and batch every case trains: the transformer (with its default localization net)
# in front of a small classifier, one SGD step on 8 images. Defines `build_model`, `batch`,
# `weights_after_one_step(model)` (-> the weights after one step, as NumPy arrays) and
# `assert_same_step`.
COMMON = """
import numpy as np
import keras
import keras_stn

def build_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 1))
    x = keras_stn.SpatialTransformer((12, 12), padding_mode="border", name="stn")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="classifier")(x)
    return keras.Model(inputs, outputs)

rng = np.random.default_rng(0)
batch = (rng.random((8, 12, 12, 1)).astype("float32"), rng.integers(0, 3, 8))

def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

def weights_after_one_step(model):
    compile_model(model)
    model.train_on_batch(*batch)
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]

def assert_same_step(got, want):
    assert len(got) == len(want)
    moved = 0.0
    for g, w, start in zip(got, want, initial):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
        moved = max(moved, float(np.abs(w - start).max()))
    assert moved > 1e-3, "the step did not move the weights"
"""
# The reference every case compares with: the initial weights and those after one step on one
# device (computed in the case's main process only, not again in torch's worker processes).
BASELINE = """
initial = [np.asarray(keras.ops.convert_to_numpy(w)) for w in build_model().weights]
single = weights_after_one_step(build_model())
"""


def run_script(body, backend, extra_env=None, tmp_path=None, preamble=""):
    """Runs `preamble` (device set-up), `COMMON`, `BASELINE`, then `body` under `backend` in a subprocess."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **(extra_env or {})}
    script = (
        textwrap.dedent(preamble)
        + textwrap.dedent(COMMON)
        + textwrap.dedent(BASELINE)
        + textwrap.dedent(body)
        + "\nprint('OK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-2000:] + result.stderr[-4000:]
    )
    return result.stdout


JAX_TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="a JAX recipe")
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow recipe")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="a torch recipe")


@jax_only
def test_jax_batch_sharded_sampler_has_no_collective(tmp_path):
    """Lowered for a batch sharded over 2 devices, the sampler's forward and backward passes
    contain no all-gather, all-reduce or other collective: each device reads its own images
    (before: the whole batch was all-gathered onto every device, its gradient all-reduced)."""
    run_script(
        """
        import re
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        from keras_stn.ops import affine_grid, affine_sample, grid_sample

        assert len(jax.devices()) == 2
        mesh = Mesh(np.array(jax.devices()), ("batch",))
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
            backward = jax.grad(lambda x, t: jnp.sum(sample(x, t) ** 2), argnums=(0, 1))
            for kind, fn in (("forward", sample), ("backward", backward)):
                hlo = jax.jit(fn).lower(x, t).compile().as_text()
                found = sorted(set(collective.findall(hlo)))
                assert not found, f"{name} {kind}: {found}"
        """,
        "jax",
        JAX_TWO_DEVICES,
        tmp_path,
    )


@jax_only
def test_jax_data_parallel_step_equals_single_device_step(tmp_path):
    run_script(
        """
        import jax
        assert len(jax.devices()) == 2
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        with distribution.scope():
            model = build_model()
            parallel = weights_after_one_step(model)
            kernel = model.get_layer("classifier").kernel.value
            assert len(kernel.sharding.device_set) == 2, "the weights are replicated on both devices"
        assert_same_step(parallel, single)
        """,
        "jax",
        JAX_TWO_DEVICES,
        tmp_path,
    )


@jax_only
def test_jax_model_parallel_sharding_the_head_equals_single_device_step(tmp_path):
    """`ModelParallel` with a `LayoutMap` that splits the transformer head's kernel (50 x 6)
    over the 2 devices of the "model" axis."""
    run_script(
        """
        import jax
        mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices=keras.distribution.list_devices())
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map["stn/theta_head/kernel"] = (None, "model")
        distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        with distribution.scope():
            model = build_model()
            kernel = model.get_layer("stn").head.kernel.value
            assert kernel.sharding.shard_shape(kernel.shape) == (kernel.shape[0], kernel.shape[1] // 2)
            parallel = weights_after_one_step(model)
        assert_same_step(parallel, single)
        """,
        "jax",
        JAX_TWO_DEVICES,
        tmp_path,
    )


@tensorflow_only
def test_tensorflow_mirrored_strategy_step_equals_single_device_step(tmp_path):
    """`tf.distribute.MirroredStrategy` over 2 logical CPUs, with Keras's default jit setting
    (`jit_compile=True` under a strategy is a known Keras limitation, keras-team/keras#19005)."""
    run_script(
        """
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            model = build_model()
            compile_model(model)
        dataset = tf.data.Dataset.from_tensor_slices(batch).batch(8)
        model.fit(dataset, epochs=1, verbose=0)
        assert_same_step([np.asarray(w.numpy()) for w in model.weights], single)
        """,
        "tensorflow",
        tmp_path=tmp_path,
        preamble="""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
        """,
    )


@torch_only
def test_torch_distributed_data_parallel_step_equals_single_device_step(tmp_path):
    """`DistributedDataParallel` over 2 processes (gloo on 127.0.0.1), each training on half
    of the batch, as in Keras's guide to distributed training with torch."""
    worker = tmp_path / "ddp_worker.py"
    worker.write_text(
        textwrap.dedent(COMMON)
        + f"\nTIMEOUT_S = {TIMEOUT - 90}\n"
        + textwrap.dedent(
            """
            import datetime, gc, socket
            import torch
            import torch.distributed as dist

            def train_half(rank, world, port, out):
                # A process that hangs prints where, and exits, before the parent stops waiting.
                import faulthandler, sys
                faulthandler.dump_traceback_later(TIMEOUT_S, exit=True, file=sys.stderr)
                dist.init_process_group(
                    "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                    timeout=datetime.timedelta(seconds=60),
                )
                try:
                    model = build_model()
                    ddp = torch.nn.parallel.DistributedDataParallel(model)
                    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
                    images, labels = batch
                    half = len(labels) // world
                    x = torch.tensor(images[rank * half : (rank + 1) * half])
                    y = torch.tensor(labels[rank * half : (rank + 1) * half])
                    loss = torch.nn.functional.cross_entropy(ddp(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    np.savez(out, *[keras.ops.convert_to_numpy(w) for w in model.weights])
                    # DDP's reducer must go before its process group: destroyed after it (at the
                    # function's return) it could hang the process in C++ teardown.
                    del ddp, loss
                    gc.collect()
                finally:
                    dist.destroy_process_group()
            """
        )
    )
    run_script(
        f"""
        import socket, sys
        import torch.multiprocessing as mp
        sys.path.insert(0, {str(tmp_path)!r})
        from ddp_worker import train_half

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        context = mp.get_context("spawn")
        outputs = [{str(tmp_path)!r} + f"/rank{{rank}}.npz" for rank in range(2)]
        processes = [context.Process(target=train_half, args=(rank, 2, port, outputs[rank])) for rank in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout={TIMEOUT - 60})
        for process in processes:
            if process.is_alive():
                process.kill()
        assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
        for out in outputs:
            saved = np.load(out)
            assert_same_step([saved[f"arr_{{k}}"] for k in range(len(saved.files))], single)
        """,
        "torch",
        tmp_path=tmp_path,
    )
