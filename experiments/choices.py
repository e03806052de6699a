"""The names the command line offers, without importing Keras, MLflow or NumPy.

`python -m experiments.distorted_mnist --help` (and every argument error) is answered from these
constants before any framework is imported. `experiments.data` takes its `DISTORTIONS` from here;
`TRANSFORMS` repeats keras_stn's transform names, which a test checks against
`experiments.models.transform_choices()`.
"""

DISTORTIONS = ("r", "rts", "p", "e", "t", "cluttered")
DISTORTION_HELP = (
    "r: rotated ±90°; rts: rotated, scaled, translated in 42x42; p: projective; e: elastic; "
    "t: translated in 60x60; cluttered: t plus clutter from other digits"
)
NO_TRANSFORM = "none"
TRANSFORMS = (NO_TRANSFORM, "affine", "attention", "translation", "similarity", "projective", "tps")
DOWNSAMPLE = ("auto", "off")
DOWNSAMPLE_HELP = (
    "the 2x average pooling before the classifier, the same for every arm: 'auto' pools canvases at least 42 "
    "pixels wide (rts, t, cluttered), as the paper does after the transformer; 'off' never pools (the "
    "classifier sees every pixel, at four times its convolution cost)"
)
