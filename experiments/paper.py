"""The paper's published test errors (Jaderberg et al. 2015, Table 1), to print beside ours.

Keys are `(distortion, transform)` with our names: `"none"` is the paper's CNN and the
transform names are its ST-CNN variants. The paper reports no attention/translation/similarity
arm on distorted MNIST and no `t` (translated, uncluttered) column; those cells are absent.
The cluttered-MNIST ST-CNN uses an affine transformer.
"""

PAPER_TEST_ERROR = {
    ("r", "none"): 1.2,
    ("r", "affine"): 0.7,
    ("r", "projective"): 0.8,
    ("r", "tps"): 0.7,
    ("rts", "none"): 0.8,
    ("rts", "affine"): 0.5,
    ("rts", "projective"): 0.6,
    ("rts", "tps"): 0.5,
    ("p", "none"): 1.5,
    ("p", "affine"): 0.8,
    ("p", "projective"): 0.8,
    ("p", "tps"): 0.8,
    ("e", "none"): 1.4,
    ("e", "affine"): 1.2,
    ("e", "projective"): 1.3,
    ("e", "tps"): 1.1,
    ("cluttered", "none"): 3.5,
    ("cluttered", "affine"): 1.7,
}


def paper_test_error(distortion, transform):
    """The paper's test error in percent for this arm, or None where it reports none."""
    return PAPER_TEST_ERROR.get((distortion, transform))
