"""Times affine_grid + grid_sample, forward and forward+backward, against PyTorch's native kernel.

    KERAS_BACKEND=jax python -m benchmarks.sampler [--repeats 20] [--cases small,large-nearest]
    KERAS_BACKEND=torch python -m benchmarks.sampler --training

Each case warps a batch by random affine thetas (zero padding) through
`keras_stn.ops.affine_sample`, what the layer uses, under the current Keras backend:

- jax: `jax.jit` ("jit"), and the reference `jax.scipy.ndimage.map_coordinates` ("map_coordinates",
  bilinear and nearest only: it has no bicubic), vmapped over images and channels;
- tensorflow: `tf.function(jit_compile=True)` ("xla");
- torch: eager, which samples with PyTorch's kernel ("native"), the portable `keras.ops` sampler
  (`KERAS_STN_NATIVE=0`, "portable"), and that one under `torch.compile` ("compiled") when it
  compiles on this machine.

The reference, measured in the same process and on the same device, is
`torch.nn.functional.affine_grid` + `grid_sample` in the case's dtype. Forward+backward takes
the gradients with respect to the images and theta of `sum(output * weights)`. Times are the
median of `--repeats` calls after two warm-up calls, timed in two passes over the reference
and the implementations (so that all see the same stretch of the machine's load), each a run
of consecutive calls; ratios are keras_stn's time over the reference's (below 1 is faster).
Peak memory is the device's peak where the backend reports it (CUDA), else the process'
peak resident memory so far. `--training` adds the cost of the transformer in a training
step: the distorted-MNIST ST-CNN (affine) against the same CNN without a transformer,
`train_on_batch` on 60x60 inputs. Results go to benchmarks/results/ as
JSON and markdown, with the machine, versions and date, saved after every case; `--merge`
re-measures the given cases into the saved results and keeps the others. `XLA_FLAGS` and
`TF_XLA_FLAGS` are recorded when set: to compare compiler settings, save such a run under its
own `--tag` (e.g. `XLA_FLAGS=... python -m benchmarks.sampler --tag _myflags`), which
`benchmarks.summary` shows as columns of their own.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import time
import zlib

import keras
import numpy as np
import torch
import torch.nn.functional as F

from keras_stn.ops import affine_sample, native

WORKLOADS = {
    # name: (batch, height, width, channels, out_height, out_width)
    "small": (64, 60, 60, 1, 60, 60),
    "channels": (32, 64, 64, 32, 64, 64),
    "large": (8, 224, 224, 3, 224, 224),
    "huge": (256, 224, 224, 3, 224, 224),  # the memory check; run it on its own
}
# Environment variables that change how the frameworks compile; recorded with the results when set.
COMPILER_SETTINGS = ("XLA_FLAGS", "TF_XLA_FLAGS")
VARIANTS = {
    # name: (interpolation, dtype)
    "bilinear": ("bilinear", "float32"),
    "nearest": ("nearest", "float32"),
    "bicubic": ("bicubic", "float32"),
    "float16": ("bilinear", "float16"),
}
DEFAULT_CASES = (
    "small,channels,large,small-nearest,small-bicubic,small-float16,large-nearest,large-bicubic,large-float16"
)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_case(case):
    workload, _, variant = case.partition("-")
    return workload, variant or "bilinear"


def medians_in_passes(fns, repeats, blocks=2):
    """The median time in ms of each of `fns` over `repeats` timed calls, after two warm-up calls.

    The calls come in `blocks` passes over all the functions, each pass timing a run of
    consecutive calls of one function after an untimed one. Passes spread the implementations
    and the reference over the same stretch of time, whose load drifts on a shared machine
    (timing each function only once, one after the other, moved single ratios by 20% and
    more); consecutive calls keep each framework's worker threads hot, as in a training loop,
    whereas alternating single calls measured both sides up to 4x slower, each framework's
    threads slowing down the next one.
    """
    for fn in fns:
        for _ in range(2):
            fn()
    times = [[] for _ in fns]
    per_block = -(-repeats // blocks)
    for _ in range(blocks):
        for fn, samples in zip(fns, times):
            fn()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
    return [1e3 * statistics.median(samples) for samples in times]


def peak_memory_mib():
    """The CUDA device's peak allocation if there is one in use, else this process' peak RSS."""
    if keras.config.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20, "device peak"
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def reset_peak_memory():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def keras_implementations(images, theta, weights, size, interpolation, compile=True):
    """{name: (forward, forward+backward)} for the current backend; each call waits for its result."""
    backend = keras.config.backend()

    def forward(x, t):
        return affine_sample(x, t, size, interpolation=interpolation)

    def loss(x, t):
        return keras.ops.sum(keras.ops.cast(forward(x, t), "float32") * w)

    if backend == "jax":
        import jax

        x, t, w = (jax.device_put(a) for a in (images, theta, weights))
        fwd, both = jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))
        impls = {"jit": ((lambda: fwd(x, t).block_until_ready()), (lambda: jax.block_until_ready(both(x, t))))}
        if interpolation != "bicubic":
            impls["map_coordinates"] = map_coordinates_implementation(x, t, w, size, interpolation)
        return impls
    if backend == "tensorflow":
        import tensorflow as tf

        x, t, w = (tf.constant(a) for a in (images, theta, weights))
        fwd = tf.function(forward, jit_compile=True)

        @tf.function(jit_compile=True)
        def both(x, t):
            with tf.GradientTape() as tape:
                tape.watch([x, t])
                value = loss(x, t)
            return tape.gradient(value, [x, t])

        return {"xla": ((lambda: fwd(x, t).numpy()), (lambda: [g.numpy() for g in both(x, t) if g is not None]))}

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor(images, device=device, requires_grad=True)
    t = torch.tensor(theta, device=device, requires_grad=True)
    w = torch.tensor(weights, device=device)

    def portable(fn):
        """`fn` run with the portable sampler; compiled functions too must be called inside
        the switch, or dynamo retraces them onto the native kernel."""

        def wrapped(*args):
            with native.switched(False):
                return fn(*args)

        return wrapped

    impls = {
        "native": torch_timers(forward, loss, x, t),
        "portable": torch_timers(portable(forward), portable(loss), x, t),
    }
    if not compile:
        return impls
    try:
        # Each case compiles afresh: dynamo's cache is keyed by the functions' code, which every
        # case shares, and past its recompilation limit it silently falls back to eager.
        torch._dynamo.reset()
        compiled = torch_timers(portable(torch.compile(forward)), portable(torch.compile(loss)), x, t)
        compiled[1]()  # compile now, so that a failure to compile is caught here
        impls["compiled"] = compiled
    except Exception as error:  # torch.compile needs a working C++ toolchain on CPU
        print(f"torch.compile unavailable: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
    return impls


def map_coordinates_implementation(x, t, w, size, interpolation):
    """JAX's own interpolation routine on the same pixel coordinates (zero padding)."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.ndimage import map_coordinates

    from keras_stn.ops import affine_grid
    from keras_stn.ops.sampling import unnormalize

    height, width = x.shape[1:3]
    order = 1 if interpolation == "bilinear" else 0

    def forward(x, t):
        grid = affine_grid(t, size)
        px, py = unnormalize(grid[..., 0], width, False), unnormalize(grid[..., 1], height, False)
        per_channel = jax.vmap(lambda image, ys, xs: map_coordinates(image, [ys, xs], order, cval=0.0), (2, None, None))
        per_image = jax.vmap(lambda image, ys, xs: per_channel(image, ys, xs), (0, 0, 0))
        return jnp.moveaxis(per_image(x, py, px), 1, -1)

    fwd = jax.jit(forward)
    both = jax.jit(jax.grad(lambda x, t: jnp.sum(forward(x, t).astype("float32") * w), argnums=(0, 1)))
    return (lambda: fwd(x, t).block_until_ready()), (lambda: jax.block_until_ready(both(x, t)))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_timers(forward, loss, x, t):
    """(forward, forward+backward) callables for torch functions of `(x, t)`, each waiting for
    the device; the backward takes the gradients of `loss` with respect to both (`nearest` has
    none with respect to theta on the portable sampler)."""

    def run_forward():
        with torch.no_grad():
            forward(x, t)
        sync()

    def run_both():
        torch.autograd.grad(loss(x, t), [x, t], allow_unused=True)
        sync()

    return run_forward, run_both


def reference_implementation(images, theta, weights, size, interpolation):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor(images, device=device).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    t = torch.tensor(theta, device=device, requires_grad=True)
    w = torch.tensor(weights, device=device).permute(0, 3, 1, 2)

    def run(x, t):
        grid = F.affine_grid(t.to(x.dtype), (x.shape[0], x.shape[1], *size), align_corners=False)
        return F.grid_sample(x, grid, interpolation, "zeros", align_corners=False)

    return torch_timers(run, lambda x, t: (run(x, t).float() * w).sum(), x, t)


def case_inputs(case):
    """The case's own random inputs, the same whichever cases run with it."""
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    workload, variant = parse_case(case)
    batch, height, width, channels, out_h, out_w = WORKLOADS[workload]
    interpolation, dtype = VARIANTS[variant]
    images = rng.random((batch, height, width, channels), dtype=np.float32).astype(dtype)
    theta = np.array([[0.9, -0.2, 0.05], [0.2, 0.9, -0.05]]) + rng.normal(scale=0.05, size=(batch, 2, 3))
    weights = rng.normal(size=(batch, out_h, out_w, channels)).astype("float32")
    shape = f"{batch}, {height}x{width}x{channels} -> {out_h}x{out_w}"
    return images, theta.astype("float32"), weights, (out_h, out_w), interpolation, shape


def benchmark_case(case, repeats, compile=True):
    images, theta, weights, size, interpolation, shape = case_inputs(case)
    reference = reference_implementation(images, theta, weights, size, interpolation)
    implementations = keras_implementations(images, theta, weights, size, interpolation, compile)
    timed = medians_in_passes([*reference, *(fn for fns in implementations.values() for fn in fns)], repeats)
    reference_ms = timed[:2]
    rows = []
    for index, (name, fns) in enumerate(implementations.items()):
        forward_ms, both_ms = timed[2 + 2 * index : 4 + 2 * index]
        reset_peak_memory()
        fns[1]()
        memory, memory_kind = peak_memory_mib()
        rows.append(
            {
                "case": case,
                "shape": shape,
                "implementation": name,
                "forward ms": forward_ms,
                "forward torch ms": reference_ms[0],
                "forward ratio": forward_ms / reference_ms[0],
                "forward+backward ms": both_ms,
                "forward+backward torch ms": reference_ms[1],
                "forward+backward ratio": both_ms / reference_ms[1],
                f"{memory_kind} MiB": memory,
            }
        )
        print(
            f"{case:<15} {name:<16} fwd {forward_ms:8.2f} ms ({rows[-1]['forward ratio']:.2f}x)  "
            f"fwd+bwd {both_ms:8.2f} ms ({rows[-1]['forward+backward ratio']:.2f}x)  "
            f"torch {reference_ms[0]:.2f} / {reference_ms[1]:.2f} ms  {memory_kind} {memory:.0f} MiB",
            flush=True,
        )
    return rows


def training_step_cost(repeats, batch=64):
    """Median `train_on_batch` time of the ST-CNN (affine) and of the CNN alone, 60x60 inputs."""
    from experiments.models import build_model

    rng = np.random.default_rng(0)
    x = rng.random((batch, 60, 60, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    steps = []
    for transform in ("none", "affine"):
        model = build_model(transform, (60, 60, 1))
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        steps.append(lambda model=model: model.train_on_batch(x, y))
    timings = dict(zip(("none", "affine"), medians_in_passes(steps, repeats)))
    row = {
        "batch": batch,
        "CNN ms": timings["none"],
        "ST-CNN ms": timings["affine"],
        "transformer share": 1 - timings["none"] / timings["affine"],
    }
    print(
        f"training step, batch {batch}, 60x60: CNN {row['CNN ms']:.1f} ms, ST-CNN {row['ST-CNN ms']:.1f} ms "
        f"(the transformer is {100 * row['transformer share']:.0f}% of the step)",
        flush=True,
    )
    return row


def metadata():
    backend = keras.config.backend()
    meta = {
        "date": datetime.date.today().isoformat(),
        "backend": backend,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if backend == "jax":
        import jax

        meta["jax"] = jax.__version__
        meta["device"] = str(jax.devices()[0])
    if backend == "tensorflow":
        import tensorflow as tf

        meta["tensorflow"] = tf.__version__
    for name in COMPILER_SETTINGS:  # they change what XLA compiles: a run with them set is another run
        if os.environ.get(name):
            meta[name] = os.environ[name]
    return meta


def write_results(stem, meta, rows, training):
    os.makedirs(RESULTS, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "training": training}, f, indent=2)
    header = [k for k in rows[0] if k not in ("forward torch ms",)] if rows else []
    with open(stem + ".md", "w") as f:
        f.write(" ".join(f"{k}={v}" for k, v in meta.items()) + "\n\n")
        if rows:
            f.write("| " + " | ".join(header) + " |\n|" + " --- |" * len(header) + "\n")
            for row in rows:
                cells = [row[k] if isinstance(row.get(k), str) else f"{row.get(k, float('nan')):.2f}" for k in header]
                f.write("| " + " | ".join(cells) + " |\n")
        if training:
            f.write(
                f"\nTraining step (batch {training['batch']}, 60x60): CNN {training['CNN ms']:.1f} ms, "
                f"ST-CNN {training['ST-CNN ms']:.1f} ms; the transformer is "
                f"{100 * training['transformer share']:.0f}% of the step.\n"
            )
    print("wrote", stem + ".json/.md", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median reported)")
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help="comma-separated WORKLOAD[-VARIANT]; workloads "
        f"{list(WORKLOADS)}, variants {list(VARIANTS)} (default bilinear float32)",
    )
    parser.add_argument("--training", action="store_true", help="also time an ST-CNN training step against the CNN")
    parser.add_argument("--no-compile", action="store_true", help="torch: skip the torch.compile measurement")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/")
    parser.add_argument("--tag", default="", help="suffix for the result files' names")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the saved results' rows of the cases this run does not measure (and their training step "
        "unless --training): re-measure some cases without losing the others",
    )
    args = parser.parse_args()
    cases = list(dict.fromkeys(filter(None, args.cases.split(","))))
    for case in cases:
        workload, variant = parse_case(case)
        if workload not in WORKLOADS or variant not in VARIANTS:
            parser.error(f"unknown case {case!r}: workloads {list(WORKLOADS)}, variants {list(VARIANTS)}")
    meta = metadata()
    device = "gpu" if meta["device"] != "cpu" and not meta["device"].lower().startswith("cpu") else "cpu"
    stem = os.path.join(RESULTS, f"sampler_{meta['backend']}_{device}{args.tag}")
    rows, training = [], None
    if args.merge and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            saved = json.load(f)
        rows = [row for row in saved["rows"] if row["case"] not in cases]
        training = saved.get("training")
        kept = sorted({row["case"] for row in rows}, key=case_order)
        meta["merged"] = f"{', '.join(kept) or 'no rows'} from the saved run of {saved['meta']['date']}"

    def save():
        # After every case, so that a crash inside a framework keeps what was measured.
        if not args.no_save:
            write_results(stem, meta, sorted(rows, key=lambda row: case_order(row["case"])), training)

    if args.training:
        training = training_step_cost(args.repeats)
        save()
    for case in cases:
        rows.extend(benchmark_case(case, args.repeats, compile=not args.no_compile))
        save()


def case_order(case):
    """Sorts cases as the default list does, any others after them."""
    order = DEFAULT_CASES.split(",")
    return (order.index(case) if case in order else len(order), case)


if __name__ == "__main__":
    main()
