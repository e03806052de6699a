"""What is specific to one backend, kept apart from the portable `keras.ops` code.

- `torch_kernel`: the torch backend's dispatch to PyTorch's own `grid_sample` kernel, under
  the library's rules (`KERAS_STN_NATIVE=0` or `torch_kernel.switched(False)` turn it off);
- `xla`: `computed_once`, the fusion barrier that makes XLA (JAX, TensorFlow) compute shared
  coordinates once;
- `gather`: each backend's per-image gather of pixels.
"""
