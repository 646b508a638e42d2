"""Files and streams at the command's edges, and weights that cannot change under a network.

Issue 11 item 7: `compile --emit obj -o -`, `--input DIR`, `--output NAME` without `.npy`, weights
edited after `compile`.
"""

import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import convdsl
from convdsl.tools.cli import main

LENET = str(EXAMPLES / "lenet.conv")
ANYSIZE = str(EXAMPLES / "anysize.conv")


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _module(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "convdsl", *map(str, argv)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def test_object_to_stdout_is_the_object(tmp_path):
    r = _module("compile", LENET, "--emit", "obj", "-o", "-", capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"\x7fELF")
    assert r.stdout == convdsl.emit(LENET, "obj")
    r = _module("compile", LENET, "--emit", "obj", "-o", tmp_path / "l.o", capture_output=True)
    assert r.returncode == 0 and (tmp_path / "l.o").read_bytes() == convdsl.emit(LENET, "obj")


def test_object_to_a_terminal_is_refused():
    leader, follower = pty.openpty()
    try:
        r = _module("compile", LENET, "--emit", "obj", "-o", "-", stdout=follower, stderr=subprocess.PIPE)
    finally:
        os.close(follower)
        os.close(leader)
    assert r.returncode == 2
    assert b"not writing an object file to a terminal" in r.stderr and b"Traceback" not in r.stderr


def test_object_to_a_text_only_stdout(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    code = main(["compile", LENET, "--emit", "obj", "-o", "-"])
    assert code == 2 and "takes text only" in capsys.readouterr().err


def test_input_or_weights_that_is_a_directory(tmp_path, capsys):
    code, _, err = cli(capsys, "run", LENET, "--input", tmp_path)
    assert code == 2 and "is a directory, not a .npy array file" in err
    code, _, err = cli(capsys, "run", LENET, "--weights", tmp_path)
    assert code == 2 and "is a directory, not an .npz weights file" in err
    r = _module("run", LENET, "--input", tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_input_whose_header_lies_about_its_size(tmp_path, capsys):
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (2**20, 1, 2**20, 28)})
        f.write(bytes(64))
    code, _, err = cli(capsys, "run", LENET, "--input", path)
    assert code == 1 and "its header says shape [1048576, 1, 1048576, 28]" in err


def test_output_is_written_under_the_name_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "run", LENET, "--output", "noext", "--repeat", "1", "--batch", "3")
    assert code == 0, err
    assert "saved output to noext\n" in out
    assert sorted(os.listdir(tmp_path)) == ["noext"]
    y = np.load(tmp_path / "noext")
    assert y.shape == (3, 10) and y.dtype == np.float32
    code, _, err = cli(capsys, "run", LENET, "--output", tmp_path, "--repeat", "1")
    assert code == 2 and "is a directory" in err


def _lenet_weights():
    with np.load(EXAMPLES / "lenet.npz") as d:
        return {k: d[k] for k in d.files}


def test_weights_edited_after_compile_change_nothing():
    """A symbolic model compiles each size from the weights it was given: editing them (in place,
    or the dict) after `compile` used to change the sizes not compiled yet."""
    rng = np.random.default_rng(4)
    ref_net = convdsl.compile(ANYSIZE, seed=3)
    weights = {k: v.copy() for k, v in ref_net.weights({"H": 12, "W": 12}).items()}
    net = convdsl.compile(ANYSIZE, weights)
    a = rng.random((2, 3, 12, 12), dtype=np.float32)
    b = rng.random((2, 3, 16, 20), dtype=np.float32)
    ya = net(a)
    for arr in weights.values():
        arr *= -3.0
    weights.clear()
    np.testing.assert_array_equal(net(a), ya)
    np.testing.assert_array_equal(net(b), ref_net(b))  # a size compiled after the edit
    for k, v in net.weights().items():
        np.testing.assert_array_equal(v, ref_net.weights()[k])
        v[...] = 7.0  # the caller's copy: the network's own weights are not touched
    c = rng.random((1, 3, 20, 24), dtype=np.float32)  # a size compiled after that
    np.testing.assert_array_equal(net(c), ref_net(c))


def test_frozen_weights_of_a_file_are_read_only_and_not_copied_twice():
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"))
    for k, v in net._weights.items():
        assert not v.flags.writeable, k
    with pytest.raises(ValueError):
        next(iter(net._weights.values()))[...] = 0
    x = np.random.default_rng(5).random((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(net(x), convdsl.compile(LENET, _lenet_weights())(x))
