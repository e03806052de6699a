"""The ops, the transforms' warps and the layer compiled: `jax.jit`, `tf.function` (with
`jit_compile=True`, and with unknown batch and spatial sizes) and `torch.compile` (no graph
breaks, one graph for a model holding the layer) compute what the eager calls compute."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_stn
from helpers import (
    BACKEND,
    DOWN,
    IN_SIZE,
    PADDING_MODES,
    random_grid,
    random_images,
    random_theta,
    to_numpy,
    value_and_grad,
)
from helpers import transform_warp as warp
from keras_stn import transforms
from keras_stn.ops import affine_grid, affine_sample, grid_sample
from keras_stn.ops._backend import torch_kernel as native
from keras_stn.ops._backend.xla import computed_once

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
# Under pytest-xdist's `--dist loadgroup` (tox's torch passes) these tests run on one worker, one
# after another: two torch.compile runs at once, each compiling on every core, were slower than
# the same runs in turn.
pytestmark = pytest.mark.xdist_group("compilation")

# The transforms' tests' image shape.
SHAPE = (16, 12, 2)


# --------------------------------------------------------------------------------------------
# XLA: jax.jit and tf.function(jit_compile=True)
# --------------------------------------------------------------------------------------------


def two_samplers(images, grid, theta):
    """One function that exercises both samplers in several modes."""
    return (
        grid_sample(images, grid, "bicubic", "reflection", False),
        grid_sample(images, grid, "nearest", "border", True),
        affine_sample(images, theta, (5, 4), "bilinear", "zeros", False),
        affine_sample(images, theta, None, "bicubic", "border", True),
    )


def compilation_inputs(rng, batch, in_size=IN_SIZE):
    images = random_images(rng, (batch, *in_size, 2))
    grid = random_grid(rng, batch, DOWN, in_size, False, margin=0.01)
    theta = random_theta(rng, batch, in_size, in_size, True, margin=1e-3)
    return images, grid, theta


def assert_all_close(results, expected, rtol=1e-5, atol=1e-5):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=rtol, atol=atol)


def test_computed_once_passes_values_and_gradients_through(rng):
    """`computed_once` only changes how XLA schedules the per-image affine coefficients: the
    values (NaN, inf and float32's extremes included) and the gradients are unchanged."""
    special = np.array([[1.5, -2.0, np.inf], [-np.inf, np.nan, 3.4e38]], "float32")
    np.testing.assert_array_equal(to_numpy(computed_once(ops.convert_to_tensor(special))), special)
    values = rng.normal(size=(4, 2, 3)).astype("float32")
    weights = rng.normal(size=(4, 2, 3)).astype("float32")
    value, (grad,) = value_and_grad(lambda t: ops.sum(computed_once(t) * ops.convert_to_tensor(weights)), values)
    np.testing.assert_allclose(value, np.sum(values * weights), rtol=1e-5)
    np.testing.assert_array_equal(grad, weights)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit")
def test_jax_jit_matches_eager(rng):
    import jax

    args = compilation_inputs(rng, 2)
    assert_all_close(jax.jit(two_samplers)(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_jit_compile_matches_eager(rng):
    import tensorflow as tf

    compiled = tf.function(two_samplers, jit_compile=True)
    args = compilation_inputs(rng, 2)
    assert_all_close(compiled(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_with_unknown_batch(rng):
    import tensorflow as tf

    compiled = tf.function(
        two_samplers,
        input_signature=[
            tf.TensorSpec((None, *IN_SIZE, 2), tf.float32),
            tf.TensorSpec((None, *DOWN, 2), tf.float32),
            tf.TensorSpec((None, 2, 3), tf.float32),
        ],
    )
    for batch in (1, 2):
        args = compilation_inputs(rng, batch)
        assert_all_close(compiled(*args), two_samplers(*args))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_with_unknown_height_and_width(rng):
    import tensorflow as tf

    def fn(images, grid, theta):
        return (
            grid_sample(images, grid, "bicubic", "reflection", False),
            affine_sample(images, theta, None, "bilinear", "border", True),
            affine_sample(images, theta, (4, 3), "nearest", "zeros", False),
        )

    compiled = tf.function(
        fn,
        input_signature=[
            tf.TensorSpec((None, None, None, 2), tf.float32),
            tf.TensorSpec((None, None, None, 2), tf.float32),
            tf.TensorSpec((None, 6), tf.float32),
        ],
    )
    for batch, in_size in ((1, IN_SIZE), (2, (5, 9))):
        images, grid, theta = compilation_inputs(rng, batch, in_size)
        args = (images, grid, theta.reshape(batch, 6))
        results = compiled(*args)
        assert tuple(results[1].shape) == (batch, *in_size, 2)
        assert_all_close(results, fn(*args))


def both_warps(images, projective_params, tps_params):
    return (
        warp(transforms.Projective(), images, projective_params, (9, 11), "bilinear", "reflection"),
        warp(transforms.ThinPlateSpline(), images, tps_params, None, "bicubic", "border", True),
    )


@pytest.mark.skipif(BACKEND == "torch", reason="jax.jit / tf.function(jit_compile=True)")
def test_compiled_warps_match_eager(rng):
    images = rng.random((2, *SHAPE)).astype("float32")
    projective_params = np.array([[1, 0, 0, 0, 1, 0, 2, 0], [0.9, 0.1, 0, -0.1, 1, 0.1, 0.3, -0.4]], "float32")
    tps_params = rng.normal(scale=0.1, size=(2, 18)).astype("float32")
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(both_warps)
    else:
        import tensorflow as tf

        specs = [tf.TensorSpec((None, *SHAPE)), tf.TensorSpec((None, 8)), tf.TensorSpec((None, 18))]
        compiled = tf.function(both_warps, jit_compile=True, input_signature=specs)
    for got, want in zip(
        compiled(images, projective_params, tps_params), both_warps(images, projective_params, tps_params)
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# torch.compile, on both of the torch backend's samplers: PyTorch's kernel, the default
# (keras_stn/ops/_backend/torch_kernel.py), and the portable keras.ops sampler
# (KERAS_STN_NATIVE=0), whichever the rest of the suite runs on
# --------------------------------------------------------------------------------------------

SAMPLERS = pytest.mark.parametrize("use_native", [True, False], ids=["native", "portable"])


def dynamo_graph_breaks(fn, *args):
    import torch

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [str(reason.reason).splitlines()[0] for reason in explanation.break_reasons]


@torch_only
@SAMPLERS
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_no_graph_breaks_and_no_host_reads_in_the_ops(padding_mode, use_native, rng):
    """The library's rules are tensor operations: no value read back (`.item()`, `bool()`),
    no warnings filter and no generator, which `torch._dynamo` would each count as a graph
    break (before: 4 in `affine_sample` on the kernel; 2 per sampler call on the portable
    path, from the pixel-count check)."""
    import torch

    images = torch.tensor(rng.random((2, 6, 6, 2)).astype("float32"), requires_grad=True)
    theta = torch.tensor(random_theta(rng, 2, (6, 6), (6, 6), False), requires_grad=True)

    def ops(images, theta):
        fused = affine_sample(images, theta, None, "bilinear", padding_mode)
        unit = affine_sample(images, theta, (1, 4), "bicubic", padding_mode, align_corners=True)
        grid = grid_sample(images, affine_grid(theta, (5, 4)), "nearest", padding_mode)
        return fused.sum() + unit.sum() + grid.sum()

    with native.switched(use_native):
        assert dynamo_graph_breaks(ops, images, theta) == (0, [])


@torch_only
@SAMPLERS
def test_dynamic_shapes_compile_in_one_graph_and_match_eager(use_native, rng):
    """`torch.compile(fullgraph=True, dynamic=True)`, with batch and spatial sizes changing from
    call to call (torch.compile turns dynamic shapes on by itself once a size changes): the
    sizes are symbolic there, and Keras's torch `arange` failed on a symbolic size unless told
    its dtype (before: "Unsupported hasattr call" on the portable sampler)."""
    import torch

    def ops(images, theta, params):
        fused = affine_sample(images, theta, None, "bilinear", "zeros")
        resized = grid_sample(images, affine_grid(theta, (5, 4)), "bicubic", "border")
        projective = transforms.get("projective").grid(params, (3, 6))
        return fused.sum() + resized.sum() + projective.sum()

    torch._dynamo.reset()
    # aot_eager: the graph capture and autograd tracing of torch.compile without code generation,
    # which is what symbolic sizes put at stake here (and a fraction of inductor's compile time).
    compiled = torch.compile(ops, fullgraph=True, dynamic=True, backend="aot_eager")
    with native.switched(use_native):
        for shape in [(2, 6, 6, 2), (3, 7, 5, 2), (1, 9, 8, 1)]:
            images = torch.tensor(random_images(rng, shape))
            theta = torch.tensor(random_theta(rng, shape[0], shape[1:3], shape[1:3], False))
            params = torch.tensor(np.tile(np.array([1, 0.1, 0, 0, 1, 0, 0.2, 0], "float32"), (shape[0], 1)))
            np.testing.assert_allclose(
                to_numpy(compiled(images, theta, params)), to_numpy(ops(images, theta, params)), rtol=1e-5
            )


@torch_only
@SAMPLERS
@pytest.mark.parametrize("transform", ["affine", "tps"])
def test_a_model_with_the_layer_compiles_in_one_graph(transform, use_native, rng):
    """`torch.compile(fullgraph=True)` of a model containing the layer (before: "Attempted to
    call function marked as skipped") computes the eager forward and backward, and with
    dynamic shapes over batches of changing size the eager forward."""
    import torch

    inputs = keras.Input((8, 8, 2))
    layer = keras_stn.SpatialTransformer((8, 8), transform=transform, padding_mode="border")
    model = keras.Model(inputs, layer(inputs))
    # A head that warps, so that the gradients are not those of the identity alone.
    kernel, bias = layer.head.get_weights()
    layer.head.set_weights([rng.normal(scale=0.01, size=kernel.shape).astype("float32"), bias])
    images = torch.tensor(rng.random((3, 8, 8, 2)).astype("float32"))
    with native.switched(use_native):
        assert dynamo_graph_breaks(lambda x: model(x).sum(), images) == (0, [])

    def forward_backward(run):
        x = images.clone().requires_grad_()
        out = run(x)
        weights = [w.value for w in model.trainable_weights]
        grads = torch.autograd.grad((out * out).sum(), [x, *weights])
        return [t.detach().numpy() for t in (out, *grads)]

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: model(x), fullgraph=True)
    with native.switched(use_native):
        for got, want in zip(forward_backward(compiled), forward_backward(model)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # reductions in another order

    # A batch size that changes between calls (a dataset's last, partial batch) makes the batch
    # symbolic: still one graph, and the eager forward (aot_eager: the capture, without codegen).
    torch._dynamo.reset()
    dynamic = torch.compile(lambda x: model(x), fullgraph=True, dynamic=True, backend="aot_eager")
    with native.switched(use_native):
        for batch in (3, 5, 1):
            x = torch.tensor(rng.random((batch, 8, 8, 2)).astype("float32"))
            np.testing.assert_allclose(to_numpy(dynamic(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-6)
