"""Figures of a comparison: what a transformer makes of the digits, and learning curves.

The warp gallery is drawn with `keras_cv.visualization.plot_image_gallery` (the `experiments`
extra installs keras-cv); without keras-cv (it always imports TensorFlow) a plain matplotlib
grid with the same layout is drawn instead.
"""

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved and logged, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PAIRS_PER_ROW = 4


def side_by_side(inputs, warped):
    """Interleaves `(N, H, W, C)` inputs and transformer outputs as RGB: in0, out0, in1, out1, ...

    The output is resized (nearest) to the input's size when they differ, so pairs line up.
    """
    inputs, warped = np.asarray(inputs, "float32"), np.asarray(warped, "float32")
    if warped.shape[1:3] != inputs.shape[1:3]:
        rows = np.arange(inputs.shape[1]) * warped.shape[1] // inputs.shape[1]
        cols = np.arange(inputs.shape[2]) * warped.shape[2] // inputs.shape[2]
        warped = warped[:, rows][:, :, cols]
    pairs = np.stack([inputs, warped], axis=1).reshape(-1, *inputs.shape[1:])
    if pairs.shape[-1] == 1:
        pairs = np.repeat(pairs, 3, axis=-1)
    return np.clip(pairs, 0.0, 1.0)


def warp_gallery(inputs, warped, title):
    """A figure of input digits (values in [0, 1]) each followed by the transformer's output.

    Args:
        inputs: `(N, H, W, C)` images, N a multiple of 4.
        warped: the transformer's output for them, `(N, h, w, C)`.
        title: figure title, e.g. "affine, epoch 3".

    Returns:
        A matplotlib figure (the caller saves or logs it, then closes it).
    """
    images = side_by_side(inputs, warped)
    rows, cols = len(inputs) // PAIRS_PER_ROW, 2 * PAIRS_PER_ROW
    try:
        from keras_cv.visualization import plot_image_gallery
    except ImportError:
        figure = image_grid(images, rows, cols)
    else:
        figure = plot_image_gallery(images, value_range=(0, 1), rows=rows, cols=cols, scale=1.2)
    figure.suptitle(f"{title}  (each input, then what the transformer made of it)", fontsize=9)
    return figure


def image_grid(images, rows, cols):
    """The matplotlib fallback of the gallery: `rows x cols` RGB images in [0, 1], no axes."""
    figure, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for axis, image in zip(axes.flat, images):
        axis.imshow(image)
        axis.axis("off")
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    return figure


def learning_curves(histories, title):
    """Validation error and training loss per epoch, one line per arm.

    Args:
        histories: `{arm name: {"val_accuracy": [...], "loss": [...]}}` (Keras history dicts).
        title: figure title.

    Returns:
        A matplotlib figure.
    """
    figure, (error_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        epochs = np.arange(1, len(history["loss"]) + 1)
        error_axis.plot(epochs, 100.0 * (1.0 - np.asarray(history["val_accuracy"])), marker="o", label=name)
        loss_axis.plot(epochs, history["loss"], marker="o", label=name)
    error_axis.set(xlabel="epoch", ylabel="validation error (%)", yscale="log")
    loss_axis.set(xlabel="epoch", ylabel="training loss", yscale="log")
    for axis in (error_axis, loss_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
