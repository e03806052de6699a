"""Distorted MNIST: the paper's R, RTS, P, E, T and cluttered variants, generated and cached.

Every warp goes through keras_stn's own sampler (bilinear, zero padding, `align_corners=False`)
in batches, under whichever backend is active. The random parameters of each digit are drawn up
front with NumPy from the seed, so a dataset depends only on (distortion, seed, sizes, the MNIST
arrays), not on the batch size. Pixel values are quantised to multiples of 1/255, so the cached
`uint8` copy is exactly what a fresh generation returns.

The variants (numbers from the paper's appendix where it gives them, ours marked "choice"):

- `r`: rotation uniform in [-90°, 90°] about the centre, 28×28.
- `rts`: rotation uniform in [-45°, 45°], scale uniform in [0.7, 1.2], the scaled digit's
  bounding square placed uniformly at random inside a 42×42 canvas (choice: the square stays
  inside; rotated corners, which are background, may leave it).
- `p`: scale uniform in [0.75, 1.0] about the centre, then each of the four corners of the
  digit's square moved by Gaussian noise of σ = 5 px: the projective warp mapping the square to
  the moved corners, 28×28.
- `e`: scale uniform in [0.75, 1.0], then a random thin-plate-spline warp: a 4×4 lattice of
  control points (choice) spanning the digit, each displaced by Gaussian noise of σ = 1.5 px,
  28×28. (A smooth random displacement field in the spirit of Simard et al.; the paper's E.)
- `t`: the 28×28 digit placed uniformly at random, whole, in a 60×60 canvas.
- `cluttered`: `t` plus six 6×6 patches, each cut at a random position from the central 20×20
  of another random digit of the same split (choice: where the ink is) and pasted at a random
  position of the canvas; overlaps combine by maximum.

Positive rotation angles turn a digit clockwise as displayed (y axis pointing down).
"""

import hashlib
import json
import os
import zlib
from pathlib import Path

import keras
import numpy as np

import keras_stn
from experiments.choices import DISTORTIONS

CANVAS = {"r": 28, "rts": 42, "p": 28, "e": 28, "t": 60, "cluttered": 60}
DIGIT = 28
HALF = DIGIT / 2

ROTATION_DEGREES = {"r": 90.0, "rts": 45.0}
SCALE_RANGE = {"rts": (0.7, 1.2), "p": (0.75, 1.0), "e": (0.75, 1.0)}
PROJECTIVE_SIGMA_PX = 5.0
TPS_LATTICE = 4
TPS_SIGMA_PX = 1.5
CLUTTER_PATCHES = 6
CLUTTER_SIZE = 6
CLUTTER_SOURCE_MARGIN = 4

# Bump when a generator changes, so that stale cached datasets are not reused.
GENERATOR_VERSION = 1


def check_distortion(distortion):
    if distortion not in DISTORTIONS:
        raise ValueError(f"`distortion` must be one of {DISTORTIONS}. Got distortion={distortion!r}")


def load_mnist(path=None):
    """MNIST as the Keras tuple `((x_train, y_train), (x_test, y_test))`, uint8 images (N, 28, 28).

    Reads `path`, else `$KERAS_STN_MNIST`, else falls back to `keras.datasets.mnist.load_data()`
    (which downloads once).
    """
    path = path or os.environ.get("KERAS_STN_MNIST")
    if path is None:
        return keras.datasets.mnist.load_data()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`data` must be the path of an mnist.npz file. Got data={path!r}")
    with np.load(path) as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks the MNIST arrays {sorted(missing)}; it holds {arrays.files}")
        return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def check_digits(images):
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT):
        raise ValueError(f"`images` must have shape (N, {DIGIT}, {DIGIT}). Got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype("float32") / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"`images` must be uint8 (0-255) or float (0-1). Got dtype {images.dtype}")
    return images.astype("float32")


def rotation_matrices(degrees):
    radians = np.deg2rad(degrees)
    cos, sin = np.cos(radians), np.sin(radians)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def similarity_theta(angle, scale, centre, canvas):
    """Thetas placing the digit rotated by `angle`, scaled by `scale`, centred at pixel `centre`.

    Canvas pixel p (normalised u) shows digit pixel R(-angle) (p - centre) / scale, so in
    normalised digit coordinates: x = R(-angle) (u canvas/2 + canvas/2 - centre) / (14 scale).
    """
    inverse = np.swapaxes(rotation_matrices(angle), -1, -2) / (HALF * scale)[:, None, None]
    linear = inverse * (canvas / 2)
    offset = np.einsum("nij,nj->ni", inverse, canvas / 2 - centre)
    return np.concatenate([linear, offset[:, :, None]], axis=-1).astype("float32")


def draw_params(distortion, count, rng):
    """The random parameters of `count` digits, a dict of NumPy arrays, in a fixed draw order."""
    check_distortion(distortion)
    canvas = CANVAS[distortion]
    params = {}
    degrees = ROTATION_DEGREES.get(distortion, 0.0)
    params["angle"] = rng.uniform(-degrees, degrees, count) if degrees else np.zeros(count)
    low, high = SCALE_RANGE.get(distortion, (1.0, 1.0))
    params["scale"] = rng.uniform(low, high, count) if high > low else np.ones(count)
    reach = HALF * params["scale"]
    params["centre"] = rng.uniform(reach[:, None], canvas - reach[:, None], (count, 2))
    if distortion == "p":
        params["corner_shift"] = rng.normal(0.0, PROJECTIVE_SIGMA_PX, (count, 4, 2))
    if distortion == "e":
        params["control_shift"] = rng.normal(0.0, TPS_SIGMA_PX, (count, TPS_LATTICE**2, 2))
    if distortion == "cluttered":
        params["clutter_source"] = rng.integers(0, count, (count, CLUTTER_PATCHES))
        corner = DIGIT - CLUTTER_SOURCE_MARGIN - CLUTTER_SIZE
        params["clutter_from"] = rng.integers(CLUTTER_SOURCE_MARGIN, corner + 1, (count, CLUTTER_PATCHES, 2))
        params["clutter_to"] = rng.integers(0, canvas - CLUTTER_SIZE + 1, (count, CLUTTER_PATCHES, 2))
    return params


SQUARE_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def homographies(scale, corner_shift, canvas):
    """(N, 3, 3) homographies sending the scaled square, corners moved, onto the digit's square.

    Solved per digit from the four corner correspondences (direct linear transform, 8 unknowns,
    the last entry fixed to 1), in normalised coordinates: the parameters of keras_stn's
    `projective` transform, which turns them into a sampling grid.
    """
    moved = SQUARE_CORNERS * scale[:, None, None] + corner_shift / (canvas / 2)
    x, y = moved[..., 0], moved[..., 1]
    sx, sy = SQUARE_CORNERS[:, 0], SQUARE_CORNERS[:, 1]
    zeros, ones = np.zeros_like(x), np.ones_like(x)
    rows_x = np.stack([x, y, ones, zeros, zeros, zeros, -x * sx, -y * sx], -1)
    rows_y = np.stack([zeros, zeros, zeros, x, y, ones, -x * sy, -y * sy], -1)
    system = np.concatenate([rows_x, rows_y], axis=1)
    target = np.concatenate([np.broadcast_to(sx, x.shape), np.broadcast_to(sy, y.shape)], axis=1)
    solution = np.linalg.solve(system, target[..., None])[..., 0]
    return np.concatenate([solution, np.ones((len(x), 1))], -1).reshape(-1, 3, 3)


def projective_grid(scale, corner_shift, canvas):
    """Sampling grids (N, S, S, 2) of `homographies`, through keras_stn's projective transform."""
    params = homographies(scale, corner_shift, canvas).reshape(-1, 9)[:, :8].astype("float32")
    return keras_stn.transforms.get("projective").grid(params, (canvas, canvas))


def tps_grid(scale, control_shift, canvas):
    """Sampling grids (N, S, S, 2) of a thin-plate spline through the lattice's displaced control
    points (keras_stn's `tps_grid`), the digit then scaled by `scale` about the centre."""
    offsets = (control_shift / (canvas / 2)).astype("float32")
    grid = keras_stn.ops.tps_grid(offsets.reshape(len(offsets), -1), (canvas, canvas), grid_size=TPS_LATTICE)
    return grid / keras.ops.convert_to_tensor(scale.astype("float32")[:, None, None, None])


def paste_clutter(canvases, sources, params):
    """Max-combines the clutter patches into `canvases` (N, S, S), vectorised over digits."""
    offsets = np.arange(CLUTTER_SIZE)
    count = len(canvases)
    digit = np.arange(count)[:, None, None, None]
    source = params["clutter_source"][:, :, None, None]
    from_y = params["clutter_from"][:, :, 1, None, None] + offsets[:, None]
    from_x = params["clutter_from"][:, :, 0, None, None] + offsets[None, :]
    to_y = params["clutter_to"][:, :, 1, None, None] + offsets[:, None]
    to_x = params["clutter_to"][:, :, 0, None, None] + offsets[None, :]
    patches = sources[source, from_y, from_x]
    np.maximum.at(canvases, (np.broadcast_to(digit, patches.shape), to_y, to_x), patches)
    return canvases


def warp(digits, distortion, params, start, stop):
    """Warps digits[start:stop] (float, N×28×28) with their parameters through keras_stn's sampler."""
    canvas = CANVAS[distortion]
    images = digits[start:stop, :, :, None]
    part = {name: value[start:stop] for name, value in params.items()}
    options = {"padding_mode": "zeros", "align_corners": False, "data_format": "channels_last"}
    if distortion == "p":
        out = keras_stn.ops.grid_sample(images, projective_grid(part["scale"], part["corner_shift"], canvas), **options)
    elif distortion == "e":
        out = keras_stn.ops.grid_sample(images, tps_grid(part["scale"], part["control_shift"], canvas), **options)
    else:
        theta = similarity_theta(part["angle"], part["scale"], part["centre"], canvas)
        out = keras_stn.ops.affine_sample(images, theta, size=(canvas, canvas), **options)
    return keras.ops.convert_to_numpy(out)[..., 0]


def distort(images, distortion, rng, batch_size=1024, progress=False, return_params=False):
    """Distorts MNIST digits.

    Args:
        images: (N, 28, 28) uint8 (0-255) or float (0-1) digits.
        distortion: one of `DISTORTIONS`.
        rng: a `numpy.random.Generator`; the only source of randomness.
        batch_size: digits per call of the sampler (does not change the result).
        progress: show a progress bar.
        return_params: also return the drawn parameters (dict of arrays).

    Returns:
        float32 (N, S, S, 1) in [0, 1] with S = `CANVAS[distortion]`, quantised to 1/255 steps
        (and the parameters when `return_params`).
    """
    check_distortion(distortion)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Got batch_size={batch_size!r}")
    digits = check_digits(images)
    count = len(digits)
    params = draw_params(distortion, count, rng)
    canvas = CANVAS[distortion]
    out = np.zeros((count, canvas, canvas), "float32")
    bar = keras.utils.Progbar(count, unit_name="digit") if progress else None
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        out[start:stop] = warp(digits, distortion, params, start, stop)
        if bar is not None:
            bar.update(stop)
    if distortion == "cluttered":
        out = paste_clutter(out, digits, params)
    out = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype("float32")[..., None] / 255.0
    return (out, params) if return_params else out


def default_cache_dir():
    return Path(os.environ.get("KERAS_STN_CACHE", Path.home() / ".cache" / "keras_stn")) / "distorted_mnist"


def cache_key(distortion, seed, arrays):
    """Hash of everything a dataset depends on: generator settings, seed and the source arrays."""
    settings = {
        "version": GENERATOR_VERSION,
        "distortion": distortion,
        "seed": seed,
        "canvas": CANVAS[distortion],
        "rotation": ROTATION_DEGREES.get(distortion),
        "scale": SCALE_RANGE.get(distortion),
        "projective_sigma": PROJECTIVE_SIGMA_PX,
        "tps": [TPS_LATTICE, TPS_SIGMA_PX],
        "clutter": [CLUTTER_PATCHES, CLUTTER_SIZE, CLUTTER_SOURCE_MARGIN],
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:20]


def split_rng(seed, distortion, split):
    """Independent generators per (seed, distortion, split), stable across Python runs."""
    return np.random.default_rng([seed, zlib.crc32(distortion.encode()), zlib.crc32(split.encode())])


def load_distorted(distortion, data=None, seed=0, num_train=None, num_test=None, cache_dir=None, progress=True):
    """The distorted training and test splits, generated once and then read from the cache.

    Args:
        distortion: one of `DISTORTIONS`.
        data: path of a local mnist.npz (default: `$KERAS_STN_MNIST`, else the Keras download).
        seed: integer seed of the distortion parameters.
        num_train, num_test: use only the first so many digits of each split (`None`: all).
        cache_dir: where datasets are cached (default `$KERAS_STN_CACHE/distorted_mnist`, else
            `~/.cache/keras_stn/distorted_mnist`).
        progress: show progress while generating.

    Returns:
        dict with `x_train`, `x_test` float32 (N, S, S, 1) in [0, 1] and `y_train`, `y_test` int64.
    """
    check_distortion(distortion)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Got seed={seed!r}")
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer or None. Got {name}={value!r}")
    (x_train, y_train), (x_test, y_test) = load_mnist(data)
    x_train, y_train = x_train[:num_train], y_train[:num_train]
    x_test, y_test = x_test[:num_test], y_test[:num_test]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{distortion}-{cache_key(distortion, seed, (x_train, x_test))}.npz"
    if path.exists():
        with np.load(path) as cached:
            return {
                "x_train": cached["x_train"].astype("float32") / 255.0,
                "y_train": y_train.astype("int64"),
                "x_test": cached["x_test"].astype("float32") / 255.0,
                "y_test": y_test.astype("int64"),
            }
    result = {}
    for split, images in (("train", x_train), ("test", x_test)):
        if progress:
            print(f"generating distorted MNIST {distortion!r} {split} ({len(images)} digits)")
        result[f"x_{split}"] = distort(images, distortion, split_rng(seed, distortion, split), progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **{name: np.round(array * 255).astype("uint8") for name, array in result.items()})
    os.replace(partial, path)
    result["y_train"], result["y_test"] = y_train.astype("int64"), y_test.astype("int64")
    return result
