"""Benchmarks of keras_stn against PyTorch's kernels.

Importing this package lets several frameworks share one GPU: JAX and TensorFlow otherwise
take most of its memory when they start (JAX preallocates 75%, TensorFlow nearly all of it),
which starves the PyTorch reference measured in the same process. Set here, before any
framework starts, unless the caller has set them.
"""

import os

GPU_SHARING = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
for _name, _value in GPU_SHARING.items():
    os.environ.setdefault(_name, _value)
