"""Bundled sample data: real handwritten digits.

``digits.npz`` holds the held-out fifth (359 images) of scikit-learn's
``load_digits`` (1,797 real 8x8 digits), each upsampled to 20x20 and centred
in a 28x28 field as MNIST frames digits; ``scripts/make_digits.py`` makes it.
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``[359, 1, 28, 28]`` in [0, 1] and int64 ``[359]``."""
    with resources.files(__name__).joinpath("digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as d:
            return d["images"].astype(np.float32) / 255, d["labels"].astype(np.int64)
