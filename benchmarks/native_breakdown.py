"""Where the torch backend's native `affine_sample` spends its time over PyTorch's own calls.

    python -m benchmarks.native_breakdown [--interpolation nearest] [--repeats 25]

On the sampler benchmark's large case (8 x 224x224x3 -> 224x224, float32, channels-last images),
times, interleaved in one process, forward and forward+backward of: PyTorch's `affine_grid` +
`grid_sample` on contiguous channels-first images (the reference), the same on a channels-last
view (what the strides cost), keras_stn's native `affine_sample` (eagerly on the CPU, which
leaves out its exact-identity pass for a batch without an identity theta), and the same with
that pass, as it runs compiled or on an accelerator; prints each median and its ratio over the
reference (docs/performance.md).
"""

import argparse
import os
import statistics
import time

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from keras_stn.ops import affine_sample  # noqa: E402
from keras_stn.ops._backend import torch_kernel  # noqa: E402

BATCH, HEIGHT, WIDTH, CHANNELS = 8, 224, 224, 3


def reference(images_nchw, theta, interpolation):
    grid = F.affine_grid(theta, [BATCH, CHANNELS, HEIGHT, WIDTH], align_corners=False)
    return F.grid_sample(images_nchw, grid, mode=interpolation, padding_mode="zeros", align_corners=False)


def with_exact_pass(images, theta, interpolation):
    """The native path as compiled or on an accelerator: the exact-identity pass always runs."""
    kept = torch_kernel.skips_exact_pass
    torch_kernel.skips_exact_pass = lambda exact: False
    try:
        return affine_sample(images, theta, interpolation=interpolation)
    finally:
        torch_kernel.skips_exact_pass = kept


VARIANTS = {
    "PyTorch, contiguous channels-first": lambda x, t, i: reference(x.permute(0, 3, 1, 2).contiguous(), t, i),
    "PyTorch, channels-last view": lambda x, t, i: reference(x.permute(0, 3, 1, 2), t, i),
    "keras_stn native (eager CPU: no identity, no pass)": lambda x, t, i: affine_sample(x, t, interpolation=i),
    "keras_stn native with the exact-identity pass": with_exact_pass,
}


def timed(variant, images, theta, interpolation, backward):
    """One call's seconds; the reference's layout copy is made before the clock starts."""
    x = images.clone()
    if variant.startswith("PyTorch, contiguous"):
        x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # the copy, outside the clock
    x.requires_grad_(backward)
    t = theta.clone().requires_grad_(backward)
    start = time.perf_counter()
    out = VARIANTS[variant](x, t, interpolation)
    if backward:
        out.sum().backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interpolation", default="bilinear", choices=("bilinear", "nearest", "bicubic"))
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.random((BATCH, HEIGHT, WIDTH, CHANNELS), dtype=np.float32))
    base = np.array([[0.9, 0.1, 0.05], [-0.1, 0.9, -0.05]], np.float32)
    theta = torch.tensor(np.tile(base, (BATCH, 1, 1)) + rng.normal(0, 0.01, (BATCH, 2, 3)).astype(np.float32))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.interpolation}, medians of {args.repeats}")
    for backward in (False, True):
        times = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats + 3):  # 3 warm-up rounds
            for name in VARIANTS:
                seconds = timed(name, images, theta, args.interpolation, backward)
                if repeat >= 3:
                    times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference_median = medians["PyTorch, contiguous channels-first"]
        print("forward+backward" if backward else "forward")
        for name, median in medians.items():
            print(f"  {name:50s} {1000 * median:7.2f} ms  {median / reference_median:5.2f}x")


if __name__ == "__main__":
    main()
