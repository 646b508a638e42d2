"""Write the bundled held-out digits as a raw file that examples/c/classify.c reads.

    python examples/c/digits_raw.py digits.raw

The format (all little-endian): four int32s ``count, channels, height, width``
(``359, 1, 28, 28``), then ``count`` images of float32 ``[channels, height, width]``
(the pixels in [0, 1], as ``convdsl run`` feeds them), then ``count`` int32 labels.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from convdsl.data import load_digits


def write_raw(path: str) -> int:
    """Write the digits to ``path`` (atomically: complete or not there); the number of images."""
    images, labels = load_digits()
    head = np.array([len(images), *images.shape[1:]], dtype="<i4")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".digits-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head.tobytes())
            f.write(np.ascontiguousarray(images, dtype="<f4").tobytes())
            f.write(labels.astype("<i4").tobytes())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(images)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.raw")
    n = write_raw(sys.argv[1])
    print(f"wrote {sys.argv[1]}: {n} digits, float32 [{n}, 1, 28, 28] and int32 labels")
