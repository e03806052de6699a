"""Draws the documentation's figures (docs/*.png): `python docs/make_figures.py` (needs matplotlib).

- `sanity_check.png`: the sanity check of the original TF `stn` package: a batch of images
  warped by the identity theta and by a 45-degree rotation, output size equal to the input.
- `transforms.png`: one image warped by each built-in transform with fixed example parameters.
- `volumetric.png`: a synthetic volume before and after a 3-D affine warp (rotation about two
  axes and a zoom), shown as maximum-intensity projections along each axis.

The images are a synthetic asymmetric test pattern so that the direction of a warp is visible.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_stn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def test_pattern(base, size=256):
    """A checkerboard with a bold letter F and a coloured disc: no rotational symmetry."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.empty((size, size, 3), "float32")
    checks = ((x * 8).astype(int) + (y * 8).astype(int)) % 2
    base = np.asarray(base, "float32")
    image[:] = np.where(checks[..., None], base, base * 0.6)
    stem = (0.30 < x) & (x < 0.42) & (0.18 < y) & (y < 0.82)
    top = (0.30 < x) & (x < 0.72) & (0.18 < y) & (y < 0.30)
    middle = (0.30 < x) & (x < 0.62) & (0.45 < y) & (y < 0.56)
    image[stem | top | middle] = (0.1, 0.1, 0.45)
    disc = (x - 0.75) ** 2 + (y - 0.75) ** 2 < 0.1**2
    image[disc] = (0.8, 0.1, 0.1)
    return image


def sanity_check(path):
    colours = [(0.95, 0.75, 0.35), (0.35, 0.95, 0.75), (0.75, 0.35, 0.95), (0.6, 0.8, 0.95)]
    images = np.stack([test_pattern(c) for c in colours])
    angle = np.deg2rad(45)
    identity = np.array([1, 0, 0, 0, 1, 0], "float32")
    rotation = np.array([np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0], "float32")
    rows = {
        "input": images,
        "identity theta": keras_stn.spatial_transformer_network(images, np.tile(identity, (4, 1))),
        "45° rotation": keras_stn.spatial_transformer_network(images, np.tile(rotation, (4, 1))),
    }
    figure, axes = plt.subplots(len(rows), 4, figsize=(8, 6.3))
    for r, (title, batch) in enumerate(rows.items()):
        batch = np.clip(ops.convert_to_numpy(batch), 0, 1)
        for c in range(4):
            axes[r, c].imshow(batch[c])
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title)
    figure.suptitle("spatial_transformer_network: identity and 45° rotation (output size = input size)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print("wrote", path)


# Example parameters of each transform (what a localization net could regress).
EXAMPLE_PARAMS = {
    "affine": [0.9, 0.3, 0.1, -0.2, 1.1, 0.0],
    "attention": [0.5, 0.4, 0.4],
    "translation": [0.3, -0.2],
    "similarity": [0.8, 0.35, 0.0, 0.1],
    "projective": [1.0, 0.1, 0.0, 0.0, 1.0, 0.0, 0.35, 0.25],
}


def transforms_gallery(path):
    image = test_pattern((0.95, 0.75, 0.35))
    params = dict(EXAMPLE_PARAMS)
    # A thin-plate spline: a 4x4 lattice of control points, each moved at random.
    params["tps"] = np.random.default_rng(3).normal(0, 0.12, 2 * 4 * 4)
    names = ["input", *params]
    figure, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names), 2.6))
    for axis, name in zip(axes, names):
        if name == "input":
            warped = image
        else:
            transform = keras_stn.transforms.ThinPlateSpline(4) if name == "tps" else keras_stn.transforms.get(name)
            grid = transform.grid(np.asarray([params[name]], "float32"), image.shape[:2])
            warped = ops.convert_to_numpy(keras_stn.ops.grid_sample(image[None], grid))[0]
        axis.imshow(np.clip(warped, 0, 1))
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print("wrote", path)


def test_volume(size=48):
    """Two bars meeting in a T and an off-centre ball: no symmetry in any projection."""
    z, y, x = np.mgrid[0:size, 0:size, 0:size] / size
    volume = np.zeros((size, size, size), "float32")
    volume[(np.abs(y - 0.5) < 0.06) & (np.abs(z - 0.5) < 0.06) & (0.2 < x) & (x < 0.8)] = 1.0
    volume[(np.abs(x - 0.2) < 0.06) & (np.abs(z - 0.5) < 0.06) & (0.2 < y) & (y < 0.8)] = 0.7
    volume[(x - 0.7) ** 2 + (y - 0.3) ** 2 + (z - 0.7) ** 2 < 0.12**2] = 0.5
    return volume


def volumetric(path):
    volume = test_volume()
    a, b = np.deg2rad(35), np.deg2rad(25)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    theta = np.concatenate([about_z @ about_x * 1.15, np.zeros((3, 1))], axis=1)[None].astype("float32")
    warped = ops.convert_to_numpy(keras_stn.ops.affine_sample(volume[None, ..., None], theta))[0, ..., 0]
    rows = {"input volume": volume, "3-D affine warp": warped}
    figure, axes = plt.subplots(2, 3, figsize=(7, 4.9))
    for r, (title, vol) in enumerate(rows.items()):
        for c, (axis_name, axis) in enumerate((("depth", 0), ("height", 1), ("width", 2))):
            axes[r, c].imshow(vol.max(axis=axis), cmap="magma", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"projection along {axis_name}")
        axes[r, 0].set_ylabel(title)
    figure.suptitle("SpatialTransformer3D's sampler: affine_sample on a (1, 48, 48, 48, 1) volume")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print("wrote", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE, help="folder to write the PNG files to (default: docs/)")
    args = parser.parse_args()
    sanity_check(os.path.join(args.out, "sanity_check.png"))
    transforms_gallery(os.path.join(args.out, "transforms.png"))
    volumetric(os.path.join(args.out, "volumetric.png"))


if __name__ == "__main__":
    main()
