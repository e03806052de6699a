"""Draws the README's figures: `python docs/make_figures.py` (needs matplotlib).

The sanity check of the original TF `stn` package: a batch of images warped by the identity
theta and by a 45-degree rotation, output size equal to the input. The images are a synthetic
asymmetric test pattern so that the direction of the rotation is visible.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE, help="folder to write the PNG files to (default: docs/)")
    args = parser.parse_args()
    sanity_check(os.path.join(args.out, "sanity_check.png"))


if __name__ == "__main__":
    main()
