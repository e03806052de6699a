"""Times affine_grid + grid_sample, forward and forward+backward, against PyTorch's native kernel.

    KERAS_BACKEND=jax python -m benchmarks.sampler [--repeats 20] [--workloads small,channels,large]

Each workload warps a batch by a random affine theta with bilinear sampling and zero padding.
keras_stn runs through `keras_stn.ops.affine_sample` (what the layer uses), compiled where the
backend compiles (`jax.jit`, `tf.function(jit_compile=True)`; torch runs eagerly). The reference,
measured in the same process, is `torch.nn.functional.affine_grid` + `grid_sample` on the same
device. Forward+backward means gradients with respect to the images and theta of
`sum(output * weights)`. Times are medians over `--repeats` runs after two warm-up runs; the
table prints keras_stn's time over torch's (below 1 is faster) and is also written as JSON and
markdown under benchmarks/results/.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import keras
import numpy as np
import torch
import torch.nn.functional as F

from keras_stn.ops import affine_sample

WORKLOADS = {
    # name: (batch, height, width, channels, out_height, out_width)
    "small": (64, 60, 60, 1, 60, 60),
    "channels": (32, 64, 64, 32, 64, 64),
    "large": (8, 224, 224, 3, 224, 224),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keras_fns(images, theta, weights, size):
    """(forward, forward+backward) callables for the current backend, results forced to host."""
    backend = keras.config.backend()

    def forward(x, t):
        return affine_sample(x, t, size)

    def loss(x, t):
        return keras.ops.sum(affine_sample(x, t, size) * weights)

    if backend == "jax":
        import jax

        x, t, weights = (jax.numpy.asarray(a) for a in (images, theta, weights))
        fwd = jax.jit(forward)
        both = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return (lambda: fwd(x, t).block_until_ready()), (lambda: jax.block_until_ready(both(x, t)))
    if backend == "tensorflow":
        import tensorflow as tf

        x, t, weights = (tf.constant(a) for a in (images, theta, weights))
        fwd = tf.function(forward, jit_compile=True)

        @tf.function(jit_compile=True)
        def both(x, t):
            with tf.GradientTape() as tape:
                tape.watch([x, t])
                value = loss(x, t)
            return tape.gradient(value, [x, t])

        return (lambda: fwd(x, t).numpy()), (lambda: [g.numpy() for g in both(x, t)])
    x = torch.tensor(images, requires_grad=True)
    t = torch.tensor(theta, requires_grad=True)
    weights = torch.tensor(weights)

    def torch_both():
        torch.autograd.grad(loss(x, t), [x, t])

    def torch_forward():
        with torch.no_grad():
            forward(x, t)

    return torch_forward, torch_both


def torch_fns(images, theta, weights, size):
    x = torch.tensor(images).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    t = torch.tensor(theta, requires_grad=True)
    w = torch.tensor(weights).permute(0, 3, 1, 2)

    def run(x, t):
        grid = F.affine_grid(t, (x.shape[0], x.shape[1], *size), align_corners=False)
        return F.grid_sample(x, grid, "bilinear", "zeros", align_corners=False)

    def forward():
        with torch.no_grad():
            run(x, t)

    def both():
        torch.autograd.grad((run(x, t) * w).sum(), [x, t])

    return forward, both


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {list(WORKLOADS)}")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/")
    args = parser.parse_args()
    backend = keras.config.backend()
    rng = np.random.default_rng(0)
    rows = []
    for name in args.workloads.split(","):
        batch, height, width, channels, out_h, out_w = WORKLOADS[name]
        images = rng.random((batch, height, width, channels), dtype=np.float32)
        theta = (np.array([[0.9, -0.2, 0.05], [0.2, 0.9, -0.05]]) + rng.normal(scale=0.05, size=(batch, 2, 3))).astype(
            "float32"
        )
        weights = rng.normal(size=(batch, out_h, out_w, channels)).astype("float32")
        ours = keras_fns(images, theta, weights, (out_h, out_w))
        reference = torch_fns(images, theta, weights, (out_h, out_w))
        row = {"workload": name, "shape": f"{batch}, {height}x{width}x{channels} -> {out_h}x{out_w}"}
        for label, mine, theirs in zip(("forward", "forward+backward"), ours, reference):
            row[f"{label} keras_stn ms"] = 1e3 * median_time(mine, args.repeats)
            row[f"{label} torch ms"] = 1e3 * median_time(theirs, args.repeats)
            row[f"{label} ratio"] = row[f"{label} keras_stn ms"] / row[f"{label} torch ms"]
        rows.append(row)
        print(
            f"{name:<9} {row['shape']:<28} fwd {row['forward keras_stn ms']:8.2f} ms vs torch "
            f"{row['forward torch ms']:8.2f} ms ({row['forward ratio']:.2f}x)   fwd+bwd "
            f"{row['forward+backward keras_stn ms']:8.2f} ms vs torch {row['forward+backward torch ms']:8.2f} ms "
            f"({row['forward+backward ratio']:.2f}x)",
            flush=True,
        )
    meta = {
        "date": datetime.date.today().isoformat(),
        "backend": backend,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "device": "cpu",
    }
    if backend == "jax":
        import jax

        meta["jax"] = jax.__version__
        meta["device"] = str(jax.devices()[0])
    if backend == "tensorflow":
        import tensorflow as tf

        meta["tensorflow"] = tf.__version__
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        stem = os.path.join(RESULTS, f"sampler_{backend}_{meta['device'].split(':')[0].lower()}")
        with open(stem + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        header = [
            "workload",
            "shape",
            "forward ratio",
            "forward+backward ratio",
            "forward+backward keras_stn ms",
            "forward+backward torch ms",
        ]
        with open(stem + ".md", "w") as f:
            f.write(" ".join(f"{k}={v}" for k, v in meta.items()) + "\n\n")
            f.write("| " + " | ".join(header) + " |\n|" + " --- |" * len(header) + "\n")
            for row in rows:
                f.write(
                    "| " + " | ".join(f"{row[k]:.2f}" if isinstance(row[k], float) else row[k] for k in header) + " |\n"
                )
        print("wrote", stem + ".json/.md")


if __name__ == "__main__":
    main()
