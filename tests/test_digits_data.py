"""The bundled digits: the held-out part (``run``'s default) and the training part (``train``'s).

Both come from ``scripts/make_digits.py``; regenerating them from scikit-learn must give the
committed arrays, the held-out file must stay the one every accuracy figure was measured on, and
the two parts must split scikit-learn's 1,797 digits per class with no image in both.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import re
import tomllib

import numpy as np
from conftest import ROOT

from convdsl.data import load_digits, load_digits_train

DATA = ROOT / "convdsl" / "data"
# digits.npz as committed before the training part existed: held-out accuracies (98.6 % / 98.9 %)
# were measured on exactly these bytes
HELD_OUT_SHA256 = "46cf908259ad9dcc9e4831a8014adcdfc95aad31d41bf529a29c870f08ce1ce7"
KEYS = {"images", "labels", "source", "split_seed", "source_index"}


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _make_digits():
    spec = importlib.util.spec_from_file_location("make_digits", ROOT / "scripts" / "make_digits.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_file_is_unchanged():
    assert hashlib.sha256((DATA / "digits.npz").read_bytes()).hexdigest() == HELD_OUT_SHA256


def test_parts_have_the_documented_sizes_keys_and_classes():
    test, train = _arrays(DATA / "digits.npz"), _arrays(DATA / "digits_train.npz")
    for part, n in ((test, 359), (train, 1438)):
        assert set(part) == KEYS
        assert part["images"].dtype == np.uint8 and part["images"].shape == (n, 1, 28, 28)
        assert part["labels"].dtype == np.int64 and part["labels"].shape == (n,)
        assert part["source_index"].dtype == np.int64 and part["source_index"].shape == (n,)
        assert int(part["split_seed"]) == 20240501
        assert set(part["labels"].tolist()) == set(range(10))
    # disjoint, and together every one of load_digits' 1797 images once
    ti, tr = test["source_index"], train["source_index"]
    assert not set(ti.tolist()) & set(tr.tolist())
    assert sorted(ti.tolist() + tr.tolist()) == list(range(1797))
    # stratified: each class's held-out count is a fifth of that class, rounded
    per_class = np.bincount(test["labels"], minlength=10) + np.bincount(train["labels"], minlength=10)
    np.testing.assert_array_equal(np.bincount(test["labels"], minlength=10), np.rint(per_class * 0.2))
    assert np.bincount(test["labels"]).min() >= 35 and np.bincount(test["labels"]).max() <= 37
    assert "training part" in str(train["source"]) and "training part" not in str(test["source"])
    assert (DATA / "digits_train.npz").stat().st_size < 500_000, "a few hundred KB at most"


def test_loaders():
    for load, n in ((load_digits, 359), (load_digits_train, 1438)):
        images, labels = load()
        assert images.dtype == np.float32 and images.shape == (n, 1, 28, 28)
        assert images.min() == 0.0 and images.max() == 1.0
        assert labels.dtype == np.int64 and labels.shape == (n,)
    stored = _arrays(DATA / "digits_train.npz")
    np.testing.assert_array_equal(load_digits_train()[0], stored["images"].astype(np.float32) / 255)


def test_the_package_ships_both_parts():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["convdsl.data"]
    for name in ("digits.npz", "digits_train.npz"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_regenerating_gives_the_committed_arrays(tmp_path):
    # scikit-learn is in the test extra (pyproject.toml): a missing one fails here, it is not skipped
    _make_digits().main(["--out", str(tmp_path / "t.npz"), "--train-out", str(tmp_path / "tr.npz")])

    def comparable(arrays):
        # the source text names the scikit-learn version that made the file; the data is the same
        # in every version, so that number alone may differ
        out = dict(arrays)
        out["source"] = np.array(re.sub(r"scikit-learn [0-9][^)]*\)", "scikit-learn V)", str(out["source"])))
        return out

    for made, committed in (("t.npz", "digits.npz"), ("tr.npz", "digits_train.npz")):
        a, b = comparable(_arrays(tmp_path / made)), comparable(_arrays(DATA / committed))
        assert set(a) == set(b) == KEYS
        for k in KEYS:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
