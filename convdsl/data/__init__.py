"""Bundled sample data: real handwritten digits.

scikit-learn's ``load_digits`` (1,797 real 8x8 digits), each upsampled to 20x20 and centred in a
28x28 field as MNIST frames digits, split per class into two files that ``scripts/make_digits.py``
makes: ``digits.npz``, the held-out fifth (359 images, what ``convdsl run`` evaluates on), and
``digits_train.npz``, the other four fifths (1,438 images, what ``convdsl train`` trains on by
default).  The parts share no image (``source_index``, the index in ``load_digits``, tells).
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    with resources.files(__name__).joinpath(name).open("rb") as f:
        with np.load(f, allow_pickle=False) as d:
            return d["images"].astype(np.float32) / 255, d["labels"].astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out part ``(images, labels)``: float32 ``[359, 1, 28, 28]`` in [0, 1] and int64 ``[359]``."""
    return _load("digits.npz")


def load_digits_train() -> tuple[np.ndarray, np.ndarray]:
    """The training part ``(images, labels)``: float32 ``[1438, 1, 28, 28]`` in [0, 1] and int64 ``[1438]``."""
    return _load("digits_train.npz")
