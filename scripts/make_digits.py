#!/usr/bin/env python3
"""Build the bundled held-out digit set ``convdsl/data/digits.npz``.

Source data: scikit-learn's ``load_digits`` (the UCI "Optical Recognition of
Handwritten Digits" test set: 1797 real handwritten digits, 8x8, values 0..16),
which ships inside the scikit-learn package, so no network access is needed.

Each 8x8 digit is framed the way MNIST frames its digits: upsampled to 20x20
with bilinear interpolation (half-pixel centres, edge clamped; i.e. the same
as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)
and centred in a 28x28 field with a 4-pixel zero border, then scaled from
0..16 to uint8 0..255.

The split is deterministic: a stratified per-class shuffle using
``numpy.random.RandomState(SPLIT_SEED)``; 20% of each class is held out.
Only the held-out part is written to the package; ``train_lenet.py`` calls
``load_split()`` to regenerate the training part.

The runtime (and training) feed the network ``images.astype(float32) / 255``.

Usage:  python scripts/make_digits.py [--out PATH]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SPLIT_SEED = 20240501
TEST_FRACTION = 0.2
INNER = 20  # side of the upsampled digit
SIDE = 28  # side of the output field
BORDER = (SIDE - INNER) // 2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "convdsl", "data", "digits.npz")


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of 1-D linear interpolation weights.

    Half-pixel centres (align_corners=False), source coordinate clamped to
    [0, n_in - 1] at the edges.
    """
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        x = (i + 0.5) * scale - 0.5
        x = min(max(x, 0.0), n_in - 1.0)
        x0 = int(np.floor(x))
        x1 = min(x0 + 1, n_in - 1)
        w1 = x - x0
        m[i, x0] += 1.0 - w1
        m[i, x1] += w1
    return m


def resize_to_mnist(images8: np.ndarray) -> np.ndarray:
    """[n, 8, 8] values 0..16 -> uint8 [n, 1, 28, 28] values 0..255."""
    images8 = np.asarray(images8, dtype=np.float64)
    n, h, w = images8.shape
    rows = _bilinear_matrix(h, INNER)  # [20, 8]
    cols = _bilinear_matrix(w, INNER)  # [20, 8]
    up = np.einsum("ih,nhw,jw->nij", rows, images8, cols)  # [n, 20, 20]
    out = np.zeros((n, 1, SIDE, SIDE), dtype=np.float64)
    out[:, 0, BORDER:BORDER + INNER, BORDER:BORDER + INNER] = up
    out = np.clip(np.rint(out * (255.0 / 16.0)), 0, 255)
    return out.astype(np.uint8)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED,
                  test_fraction: float = TEST_FRACTION):
    """Stratified deterministic split; returns (train_idx, test_idx), sorted."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_split(seed: int = SPLIT_SEED):
    """Return dict with train/test images (uint8 [n,1,28,28]) and labels (int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = resize_to_mnist(d.images)
    labels = d.target.astype(np.int64)
    tr, te = split_indices(labels, seed)
    return {
        "train_images": images[tr], "train_labels": labels[tr], "train_index": tr,
        "test_images": images[te], "test_labels": labels[te], "test_index": te,
    }


def source_string(seed: int = SPLIT_SEED) -> str:
    import sklearn

    return (
        "sklearn.datasets.load_digits (UCI optdigits, 1797 real handwritten "
        f"digits, 8x8 0..16; scikit-learn {sklearn.__version__}); bilinear "
        f"upsample 8x8->{INNER}x{INNER} (align_corners=False), centred in "
        f"{SIDE}x{SIDE} with {BORDER}px border, scaled x255/16 to uint8; "
        f"held-out {TEST_FRACTION:.0%} of each class, stratified split with "
        f"numpy.random.RandomState({seed}); model input = images/255 as float32"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    s = load_split()
    np.savez_compressed(
        args.out,
        images=s["test_images"],
        labels=s["test_labels"],
        source=np.array(source_string()),
        split_seed=np.array(SPLIT_SEED, dtype=np.int64),
        source_index=s["test_index"].astype(np.int64),
    )
    size = os.path.getsize(args.out)
    print(f"train {len(s['train_labels'])}  held-out {len(s['test_labels'])}")
    print(f"held-out class counts {np.bincount(s['test_labels']).tolist()}")
    print(f"wrote {args.out} ({size} bytes)")


if __name__ == "__main__":
    main()
