#!/usr/bin/env python3
"""Build the bundled digit sets ``convdsl/data/digits.npz`` (held out) and ``digits_train.npz``.

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
Both parts are written to the package, the held-out one as ``digits.npz``
(what ``convdsl run`` evaluates on) and the training one as
``digits_train.npz`` (what ``convdsl train`` defaults to), with the same keys;
``train_lenet.py`` calls ``load_split()`` to regenerate the training part.

The runtime (and training) feed the network ``images.astype(float32) / 255``.

Usage:  python scripts/make_digits.py [--out PATH] [--train-out PATH]
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
DEFAULT_TRAIN_OUT = os.path.join(REPO, "convdsl", "data", "digits_train.npz")


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


def source_string(seed: int = SPLIT_SEED, part: str = "held-out") -> str:
    import sklearn

    # the held-out file's text is fixed by the committed digits.npz: only the training part's
    # string says which part it is, so that regenerating the held-out file is byte-for-byte a no-op
    which = "" if part == "held-out" else f"{part} part: every image not in the "
    return (
        "sklearn.datasets.load_digits (UCI optdigits, 1797 real handwritten "
        f"digits, 8x8 0..16; scikit-learn {sklearn.__version__}); bilinear "
        f"upsample 8x8->{INNER}x{INNER} (align_corners=False), centred in "
        f"{SIDE}x{SIDE} with {BORDER}px border, scaled x255/16 to uint8; "
        f"{which}held-out {TEST_FRACTION:.0%} of each class, stratified split with "
        f"numpy.random.RandomState({seed}); model input = images/255 as float32"
    )


def save_part(path: str, images: np.ndarray, labels: np.ndarray, index: np.ndarray, part: str) -> int:
    """Write one part of the split (the keys of ``convdsl/data``'s files); returns its size in bytes."""
    np.savez_compressed(
        path,
        images=images,
        labels=labels,
        source=np.array(source_string(part=part)),
        split_seed=np.array(SPLIT_SEED, dtype=np.int64),
        source_index=index.astype(np.int64),
    )
    return os.path.getsize(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="the held-out part (default: %(default)s)")
    ap.add_argument("--train-out", default=DEFAULT_TRAIN_OUT, help="the training part (default: %(default)s)")
    args = ap.parse_args(argv)

    s = load_split()
    size = save_part(args.out, s["test_images"], s["test_labels"], s["test_index"], "held-out")
    train_size = save_part(args.train_out, s["train_images"], s["train_labels"], s["train_index"], "training")
    print(f"train {len(s['train_labels'])}  held-out {len(s['test_labels'])}")
    print(f"train class counts {np.bincount(s['train_labels']).tolist()}")
    print(f"held-out class counts {np.bincount(s['test_labels']).tolist()}")
    print(f"wrote {args.out} ({size} bytes)")
    print(f"wrote {args.train_out} ({train_size} bytes)")


if __name__ == "__main__":
    main()
