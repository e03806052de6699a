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

The reference, measured in the same process and on the same kind of device, is
`torch.nn.functional.affine_grid` + `grid_sample` in the case's dtype. The device is the one
the Keras backend itself computes on (a JAX or TensorFlow GPU run with PyTorch's CPU build
refuses to run rather than compare against a CPU reference), and it names the results file
(`sampler_<backend>_<cpu|gpu>`). Forward+backward takes the gradients with respect to the
images and theta of `sum(output * weights)`. Times are the median of `--repeats` calls after
two warm-up calls, timed in two passes over the reference and the implementations (so that
all see the same stretch of the machine's load), each a run of consecutive calls; ratios are
keras_stn's time over the reference's (below 1 is faster). Every call waits for the device
(TensorFlow with `sync_devices`, not a copy of the output to the host).

Peak memory is measured per framework and reset before each measured call: the memory a
forward+backward call takes beyond what was allocated before it (its outputs and
temporaries), as PyTorch's CUDA allocator, TensorFlow's GPU allocator or XLA's compiled
program (JAX, which has no peak to reset) report it; on the CPU, as the growth of the
process' peak resident memory (reset through /proc/self/clear_refs), a lower bound there:
memory the allocator kept from earlier calls is reused without being counted. Importing
`benchmarks` turns off JAX's preallocation and turns on TensorFlow's memory growth, so that
the frameworks share one GPU.

`--training` adds the cost of the transformer in a training step: the distorted-MNIST ST-CNN
(affine) against the same CNN without a transformer, `train_on_batch` on 60x60 inputs.
Results go to benchmarks/results/ (or `--results-dir`) as JSON and markdown, with the
machine, versions and date, saved after every case; `--merge` re-measures the given cases
into the saved results and keeps the others. `XLA_FLAGS` and `TF_XLA_FLAGS` are recorded when
set: to compare compiler settings, save such a run under its own `--tag` (e.g.
`XLA_FLAGS=... python -m benchmarks.sampler --tag _myflags`), which `benchmarks.summary` shows
as columns of their own. `benchmarks/gpu_run.sh` is the prepared run for a lent GPU.
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

from benchmarks import GPU_SHARING
from keras_stn.ops import affine_sample
from keras_stn.ops._backend import torch_kernel as native

WORKLOADS = {
    # name: (batch, height, width, channels, out_height, out_width)
    "tiny": (2, 6, 5, 2, 4, 7),  # smoke runs (the device script's dry run): not a measurement
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


def torch_backend_device():
    """The torch device Keras's torch backend puts new tensors on."""
    return keras.ops.convert_to_tensor(np.zeros(1, "float32")).device


def backend_device():
    """("gpu" or "cpu", the device's name) of the device the Keras backend computes on, asked of
    the backend itself (not of PyTorch, whose CPU build says nothing of a JAX or TF GPU)."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return ("cpu", "cpu") if device.platform == "cpu" else ("gpu", device.device_kind)
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "cpu", "cpu"
        return "gpu", tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    device = torch_backend_device()
    if device.type == "cpu":
        return "cpu", "cpu"
    return "gpu", torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def reference_device(kind, name):
    """The torch device of the reference: the same kind as the backend's. A GPU run whose
    PyTorch cannot reach a GPU refuses, as its ratios would compare a GPU with a CPU."""
    if kind == "cpu":
        return torch.device("cpu")
    if keras.config.backend() == "torch":
        return torch_backend_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    raise RuntimeError(
        f"the {keras.config.backend()} backend computes on a GPU ({name}), but PyTorch {torch.__version__} "
        "sees no CUDA device, so the reference would run on the CPU; install a CUDA build of PyTorch "
        "(or hide the GPU from the backend to measure the CPU)"
    )


def _process_memory_kib():
    """(current, peak) resident memory of this process in KiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                values[name] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def process_peak_growth(fn):
    """MiB by which `fn()` raised this process' peak resident memory over what it held before.

    The peak is reset first (writing 5 to /proc/self/clear_refs), so that each measurement
    stands on its own rather than reporting the largest case so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, _ = _process_memory_kib()
    except OSError:  # not Linux: the peak cannot be reset
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS so far"
    fn()
    _, peak = _process_memory_kib()
    return (peak - before) / 1024, "process peak RSS growth"


def torch_cuda_peak(fn, device):
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20, "torch CUDA allocator peak"


def tensorflow_gpu_peak(fn):
    import tensorflow as tf

    tf.test.experimental.sync_devices()
    before = tf.config.experimental.get_memory_info("GPU:0")["current"]
    tf.config.experimental.reset_memory_stats("GPU:0")
    fn()
    return (tf.config.experimental.get_memory_info("GPU:0")["peak"] - before) / 2**20, "TF GPU allocator peak"


def xla_program_memory(jitted, *args):
    """MiB the compiled XLA program allocates beyond its arguments: outputs and temporaries."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return (stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / 2**20, "XLA program"


def torch_memory(fn, device):
    return (lambda: torch_cuda_peak(fn, device)) if device.type == "cuda" else (lambda: process_peak_growth(fn))


def keras_implementations(images, theta, weights, size, interpolation, compile=True):
    """{name: (forward, forward+backward, memory)} for the current backend: each call waits
    for its result on the device without copying it to the host; `memory()` measures the
    forward+backward call's peak memory, as `(MiB, how it was measured)`."""
    backend = keras.config.backend()

    def forward(x, t):
        return affine_sample(x, t, size, interpolation=interpolation)

    def loss(x, t):
        return keras.ops.sum(keras.ops.cast(forward(x, t), "float32") * w)

    if backend == "jax":
        import jax

        x, t, w = (jax.device_put(a) for a in (images, theta, weights))
        fwd, both = jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))
        impls = {
            "jit": (
                lambda: fwd(x, t).block_until_ready(),
                lambda: jax.block_until_ready(both(x, t)),
                lambda: xla_program_memory(both, x, t),
            )
        }
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

        def run_forward():
            fwd(x, t)
            tf.test.experimental.sync_devices()  # waits for the GPU; `.numpy()` would copy to the host

        def run_both():
            both(x, t)
            tf.test.experimental.sync_devices()

        on_gpu = "GPU" in x.device.upper()
        memory = (lambda: tensorflow_gpu_peak(run_both)) if on_gpu else (lambda: process_peak_growth(run_both))
        return {"xla": (run_forward, run_both, memory)}

    device = torch_backend_device()
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
    if compile:
        try:
            # Each case compiles afresh: dynamo's cache is keyed by the functions' code, which every
            # case shares, and past its recompilation limit it silently falls back to eager.
            torch._dynamo.reset()
            compiled = torch_timers(portable(torch.compile(forward)), portable(torch.compile(loss)), x, t)
            compiled[1]()  # compile now, so that a failure to compile is caught here
            impls["compiled"] = compiled
        except Exception as error:  # torch.compile needs a working C++ toolchain on CPU
            print(f"torch.compile unavailable: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
    return {name: (*fns, torch_memory(fns[1], device)) for name, fns in impls.items()}


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
    return (
        lambda: fwd(x, t).block_until_ready(),
        lambda: jax.block_until_ready(both(x, t)),
        lambda: xla_program_memory(both, x, t),
    )


def torch_timers(forward, loss, x, t):
    """(forward, forward+backward) callables for torch functions of `(x, t)`, each waiting for
    the device of `x`; the backward takes the gradients of `loss` with respect to both
    (`nearest` has none with respect to theta on the portable sampler)."""

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def run_forward():
        with torch.no_grad():
            forward(x, t)
        sync()

    def run_both():
        torch.autograd.grad(loss(x, t), [x, t], allow_unused=True)
        sync()

    return run_forward, run_both


def reference_implementation(images, theta, weights, size, interpolation, device):
    """PyTorch's affine_grid + grid_sample on `device`: (forward, forward+backward, memory)."""
    x = torch.tensor(images, device=device).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    t = torch.tensor(theta, device=device, requires_grad=True)
    w = torch.tensor(weights, device=device).permute(0, 3, 1, 2)

    def run(x, t):
        grid = F.affine_grid(t.to(x.dtype), (x.shape[0], x.shape[1], *size), align_corners=False)
        return F.grid_sample(x, grid, interpolation, "zeros", align_corners=False)

    fns = torch_timers(run, lambda x, t: (run(x, t).float() * w).sum(), x, t)
    return (*fns, torch_memory(fns[1], x.device))


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
    kind, name = backend_device()
    reference = reference_implementation(images, theta, weights, size, interpolation, reference_device(kind, name))
    implementations = keras_implementations(images, theta, weights, size, interpolation, compile)
    timed = medians_in_passes([*reference[:2], *(fn for fns in implementations.values() for fn in fns[:2])], repeats)
    reference_ms = timed[:2]
    reference_memory, reference_measure = reference[2]()
    rows = []
    for index, (implementation, fns) in enumerate(implementations.items()):
        forward_ms, both_ms = timed[2 + 2 * index : 4 + 2 * index]
        memory, measure = fns[2]()
        rows.append(
            {
                "case": case,
                "shape": shape,
                "implementation": implementation,
                "forward ms": forward_ms,
                "forward torch ms": reference_ms[0],
                "forward ratio": forward_ms / reference_ms[0],
                "forward+backward ms": both_ms,
                "forward+backward torch ms": reference_ms[1],
                "forward+backward ratio": both_ms / reference_ms[1],
                "peak MiB": memory,
                "torch peak MiB": reference_memory,
                "memory measure": f"{measure}; torch: {reference_measure}",
            }
        )
        print(
            f"{case:<15} {implementation:<16} fwd {forward_ms:8.2f} ms ({rows[-1]['forward ratio']:.2f}x)  "
            f"fwd+bwd {both_ms:8.2f} ms ({rows[-1]['forward+backward ratio']:.2f}x)  "
            f"torch {reference_ms[0]:.2f} / {reference_ms[1]:.2f} ms  "
            f"peak {memory:.1f} MiB (torch {reference_memory:.1f}; {measure})",
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
    kind, name = backend_device()
    meta = {
        "date": datetime.date.today().isoformat(),
        "backend": backend,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "device kind": kind,
        "device": name,
    }
    if kind == "gpu":
        reference = reference_device(kind, name)
        meta["torch device"] = torch.cuda.get_device_name(reference) if reference.type == "cuda" else reference.type
        meta["cuda"] = torch.version.cuda
    if backend == "jax":
        import jax
        import jaxlib

        meta["jax"] = jax.__version__
        meta["jaxlib"] = jaxlib.__version__
    if backend == "tensorflow":
        import tensorflow as tf

        meta["tensorflow"] = tf.__version__
    for setting in (*COMPILER_SETTINGS, *GPU_SHARING):  # a run with them set is another run
        if os.environ.get(setting):
            meta[setting] = os.environ[setting]
    return meta


def write_results(stem, meta, rows, training):
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
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
    parser.add_argument("--results-dir", default=RESULTS, help="where the results are written")
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
    try:
        meta = metadata()
    except RuntimeError as error:  # a GPU run without a GPU reference
        parser.error(str(error))
    stem = os.path.join(args.results_dir, f"sampler_{meta['backend']}_{meta['device kind']}{args.tag}")
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
