"""`--distribute` under torch: one process per device, gradients averaged across processes.

Keras's `fit` runs in one process, and torch trains on several devices with one process per
device. So for each arm, `--distribute` starts `world - 1` helper processes (torch
multiprocessing, spawned) and joins them and the study's own process (rank 0) in a process group
on 127.0.0.1 (NCCL on CUDA, gloo on the CPU). Every process builds the same model (rank 0's
weights are broadcast, so a resumed arm starts from its checkpoint everywhere), takes its own
slice of each global batch of the shared batch stream, and runs Keras's `fit`; before every
update the optimizer sums the gradients of all processes and divides by their number
(`all_reduce`). With equal slices that is the gradient of the global batch: each step equals the
single-process step on the global batch, to rounding, which `tests/experiments` checks. Only
rank 0 validates, checkpoints, logs to MLflow and evaluates; the helpers train and exit.

The world size is the number of visible CUDA devices; on a CPU it is one (the ordinary run)
unless `$KERAS_STN_TORCH_PROCESSES` asks for more, which is how the suite runs two processes on
one CPU. The global batch (`--batch-size`) must divide by the world size. Every wait is bounded:
a process group that does not form, or a step that a process never reaches, fails after
`$KERAS_STN_TORCH_TIMEOUT` seconds (default 600) instead of hanging.
"""

import contextlib
import datetime
import os
import socket

PROCESSES_VARIABLE = "KERAS_STN_TORCH_PROCESSES"
TIMEOUT_VARIABLE = "KERAS_STN_TORCH_TIMEOUT"


def world_size():
    """The processes of a `--distribute` run: one per visible CUDA device, else
    `$KERAS_STN_TORCH_PROCESSES` (default 1) on the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    text = os.environ.get(PROCESSES_VARIABLE, "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${PROCESSES_VARIABLE} must be a positive integer. Got {PROCESSES_VARIABLE}={text!r}")
    return int(text)


def timeout():
    text = os.environ.get(TIMEOUT_VARIABLE, "600")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${TIMEOUT_VARIABLE} must be a positive number of seconds. Got {TIMEOUT_VARIABLE}={text!r}")
    return int(text)


def check_batch_size(batch_size, world):
    if batch_size % world:
        raise ValueError(
            f"--distribute over {world} processes splits each batch evenly: expected a --batch-size divisible by "
            f"{world}, got {batch_size}"
        )


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def process_group(rank, world, port):
    """Joins the process group of `world` processes on 127.0.0.1:`port` as `rank`, for the block."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout()),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


class Shard:
    """This process's part of a data-parallel run: its rank, the world size, and what it does to
    the model (same weights everywhere, averaged gradients) and to each global batch (its slice)."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def prepare(self, model):
        """Broadcasts rank 0's weights and optimizer state, then makes the optimizer average the
        gradients of every process before each update."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for variable in [*model.weights, *model.optimizer.variables]:
                dist.broadcast(variable.value.data, src=0)
        optimizer = model.optimizer
        apply = optimizer.apply

        def apply_averaged(grads, trainable_variables=None):
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            dist.all_reduce(flat)
            flat /= self.world
            pieces = torch.split(flat, [grad.numel() for grad in grads])
            return apply([piece.view_as(grad) for piece, grad in zip(pieces, grads)], trainable_variables)

        optimizer.apply = apply_averaged  # on the instance: the saved optimizer is still plain Keras
        return model

    def batches(self, stream):
        """This rank's slice of every global batch of `stream`."""
        for images, labels in stream:
            local = len(labels) // self.world
            part = slice(self.rank * local, (self.rank + 1) * local)
            yield images[part], labels[part]


def helper(rank, world, port, job):
    """A helper process: trains its slice of the arm in `job` alongside rank 0, then exits."""
    import argparse

    from experiments import study, training

    args = argparse.Namespace(**job["args"])
    splits = study.load_splits(args)
    x_train = splits["train"][0]
    with process_group(rank, world, port):
        model = study.arm_model(job["transform"], job["seed"], job["checkpoint"], x_train, args)
        shard = Shard(rank, world)
        shard.prepare(model)
        training.fit(
            model,
            splits["train"],
            job["seed"],
            training.total_steps(args, len(x_train)),
            training.steps_per_epoch(len(x_train), args.batch_size),
            args.batch_size,
            first_epoch=job["first_epoch"],
            shard=shard,
            verbose=0,
        )


@contextlib.contextmanager
def processes(arm, args):
    """Rank 0's side of one arm's data-parallel training: starts the helpers, joins the group and
    yields its `Shard` (None when the world is one process: the ordinary run); then waits for the
    helpers, and fails if one of them failed."""
    world = world_size()
    if world == 1:
        yield None
        return
    check_batch_size(args.batch_size, world)
    import torch.multiprocessing as mp

    port = free_port()
    first_epoch = arm.state["epochs_done"]
    job = {
        "args": vars(args),
        "transform": arm.transform,
        "seed": arm.seed,
        "first_epoch": first_epoch,
        "checkpoint": str(arm.checkpoint_path()) if first_epoch else None,
    }
    context = mp.get_context("spawn")
    helpers = [context.Process(target=helper, args=(rank, world, port, job), daemon=True) for rank in range(1, world)]
    for process in helpers:
        process.start()
    try:
        with process_group(0, world, port):
            yield Shard(0, world)
    finally:
        for process in helpers:
            process.join(timeout())
            if process.is_alive():
                process.kill()
    failed = [process.exitcode for process in helpers if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"--distribute: {len(failed)} of {world - 1} helper processes failed (exit codes {failed})")
