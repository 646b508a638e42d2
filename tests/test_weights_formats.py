"""Weights from the PyTorch world (issue 10 item 3): ``.safetensors`` read and written wherever
weights are, PyTorch ``state_dict`` files read with ``torch.load(weights_only=True)``, an
``nn.Sequential``'s indices matched to the layers by order.  Every damaged file is a clear
message (exit status 1 from the CLI, a ``BoundaryError`` from the API), judged from its header
before its data is read.  References: PyTorch modules built here, as D2L builds them."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
from collections import OrderedDict

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import convdsl
from convdsl.runtime import weights_io
from convdsl.runtime.limits import MAX_ELEMENTS, LimitError
from convdsl.tools.cli import main

# plain imports, not importorskip: torch is in the test extra and safetensors a run-time
# dependency, so a missing one is a broken install that must fail, not a silent skip
import safetensors.numpy as safetensors_numpy
import safetensors.torch as safetensors_torch
import torch

nn = torch.nn

LENET = str(EXAMPLES / "lenet.conv")
TOL = dict(rtol=1e-4, atol=1e-5)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def d2l_lenet() -> "nn.Sequential":
    """D2L's LeNet (section 6.6), exactly as the book builds it."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def named_lenet() -> "nn.Sequential":
    """The same network with the layer names of ``examples/lenet.conv`` (its own random weights)."""
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 6, 5, padding=2), act1=nn.Sigmoid(), pool1=nn.AvgPool2d(2, 2),
        conv2=nn.Conv2d(6, 16, 5), act2=nn.Sigmoid(), pool2=nn.AvgPool2d(2, 2), flatten=nn.Flatten(),
        dense1=nn.Linear(400, 120), act3=nn.Sigmoid(), dense2=nn.Linear(120, 84), act4=nn.Sigmoid(),
        dense3=nn.Linear(84, 10)))


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).random((n, 1, 28, 28), dtype=np.float32)


def _torch_out(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def _lenet_arrays() -> dict[str, np.ndarray]:
    with np.load(EXAMPLES / "lenet.npz") as d:
        return {k: d[k] for k in d.files}


# ----------------------------------------------------------------------------- round trips
def test_safetensors_from_pytorch_computes_what_pytorch_does(tmp_path):
    module = named_lenet()
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(module.state_dict(), str(path))
    x = _x()
    np.testing.assert_allclose(convdsl.compile(LENET, str(path))(x), _torch_out(module, x), **TOL)


def test_safetensors_written_by_convdsl_are_read_by_pytorch(tmp_path):
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"))
    path = tmp_path / "w.safetensors"
    net.save_weights(path)
    module = named_lenet()
    module.load_state_dict(safetensors_torch.load_file(str(path)))
    x = _x()
    np.testing.assert_allclose(net(x), _torch_out(module, x), **TOL)
    again = convdsl.compile(LENET, str(path))
    np.testing.assert_array_equal(again(x), net(x))
    theirs = safetensors_numpy.load_file(str(path))
    for k, v in _lenet_arrays().items():
        np.testing.assert_array_equal(theirs[k], v)


def test_npz_written_by_convdsl_reads_back(tmp_path):
    path = tmp_path / "w.npz"
    convdsl.save_weights(path, _lenet_arrays())
    umask = os.umask(0o22)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # (as any new file; not a temporary file's 0600)
    with np.load(path, allow_pickle=False) as d:
        assert sorted(d.files) == sorted(_lenet_arrays())
        for k, v in _lenet_arrays().items():
            np.testing.assert_array_equal(d[k], v)


def test_d2l_sequential_state_dict_runs_through_lenet(tmp_path, capsys):
    """D2L saves ``torch.save(net.state_dict(), ...)``: keys ``0.weight`` ... ``11.bias``."""
    module = d2l_lenet()
    path = tmp_path / "lenet.pt"
    torch.save(module.state_dict(), path)
    x = _x(7)
    net = convdsl.compile(LENET, str(path))
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{path}: '0.weight', '0.bias' -> layer conv1",
                                f"{path}: '3.weight', '3.bias' -> layer conv2",
                                f"{path}: '7.weight', '7.bias' -> layer dense1",
                                f"{path}: '9.weight', '9.bias' -> layer dense2",
                                f"{path}: '11.weight', '11.bias' -> layer dense3"]
    documented = re.findall(r"^   (lenet\.pt: .*)$", (ROOT / "docs" / "weights.md").read_text(), re.M)
    assert documented == [line.replace(str(path), "lenet.pt") for line in err.splitlines()]
    np.testing.assert_allclose(net(x), _torch_out(module, x), **TOL)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli(capsys, "run", LENET, "--weights", path, "--input", tmp_path / "x.npy",
                         "--output", tmp_path / "y.npy")
    assert code == 0, err
    assert f"'11.weight', '11.bias' -> layer dense3" in err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _torch_out(module, x), **TOL)


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_d2l_sequential_as_safetensors_or_npz_is_matched_by_number(ext, tmp_path):
    """A safetensors header keeps no order, and these names sort as strings with ``11`` before
    ``3``: single-level positions are matched by number."""
    module = d2l_lenet()
    path = tmp_path / f"lenet{ext}"
    arrays = {k: v.numpy() for k, v in sorted(module.state_dict().items())}
    if ext == ".npz":
        np.savez(path, **arrays)
    else:
        safetensors_numpy.save_file(arrays, str(path))
    x = _x()
    np.testing.assert_allclose(convdsl.compile(LENET, str(path))(x), _torch_out(module, x), **TOL)


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = d2l_lenet()

    def forward(self, x):
        return self.net(x)


class Nested(nn.Module):
    """torchvision's shape: ``features`` and ``classifier`` Sequentials."""

    def __init__(self) -> None:
        super().__init__()
        seq = d2l_lenet()
        self.features = seq[:6]
        self.classifier = nn.Sequential(*seq[6:])

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("make,first", [
    (Wrapped, "'net.0.weight', 'net.0.bias' -> layer conv1"),
    (Nested, "'features.0.weight', 'features.0.bias' -> layer conv1"),
    (lambda: nn.DataParallel(named_lenet()), "names under 'module.' read without that prefix"),
])
def test_state_dict_under_a_prefix(make, first, tmp_path, capsys):
    module = make()
    path = tmp_path / "w.pth"
    torch.save(module.state_dict(), path)
    x = _x()
    net = convdsl.compile(LENET, str(path))
    assert first in capsys.readouterr().err
    np.testing.assert_allclose(net(x), _torch_out(module, x), **TOL)


@pytest.mark.parametrize("zipped", [True, False])
def test_state_dict_with_the_layer_names_is_read_as_it_is(zipped, tmp_path, capsys):
    """In torch.save's zip format and in its legacy one (before PyTorch 1.6)."""
    module = named_lenet()
    path = tmp_path / "w.pt"
    torch.save(module.state_dict(), path, _use_new_zipfile_serialization=zipped)
    x = _x()
    net = convdsl.compile(LENET, str(path))
    assert capsys.readouterr().err == ""
    np.testing.assert_allclose(net(x), _torch_out(module, x), **TOL)


def test_checkpoint_with_a_state_dict_entry(tmp_path, capsys):
    module = named_lenet()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": module.state_dict(), "lr": 0.1}, path)
    x = _x()
    net = convdsl.compile(LENET, str(path))
    assert "a checkpoint; reading its 'model_state_dict' entry" in capsys.readouterr().err
    np.testing.assert_allclose(net(x), _torch_out(module, x), **TOL)


def test_bfloat16_and_float16_are_converted(tmp_path):
    module = named_lenet()
    state = module.state_dict()
    state["conv1.weight"] = state["conv1.weight"].to(torch.bfloat16)
    state["dense1.weight"] = state["dense1.weight"].to(torch.float16)
    for ext, save in ((".safetensors", lambda p: safetensors_torch.save_file(state, str(p))),
                      (".pt", lambda p: torch.save(state, p))):
        path = tmp_path / f"w{ext}"
        save(path)
        got = weights_io.load_weights(path)
        np.testing.assert_array_equal(got["conv1.weight"], state["conv1.weight"].float().numpy())
        np.testing.assert_array_equal(got["dense1.weight"], state["dense1.weight"].numpy())
    module.load_state_dict({k: v.float() for k, v in state.items()})
    x = _x()
    np.testing.assert_allclose(convdsl.compile(LENET, str(path))(x), _torch_out(module, x), **TOL)


def test_weights_beside_the_program(tmp_path, capsys):
    """``FILE.npz`` first, then ``FILE.safetensors``; run says which it used."""
    prog = tmp_path / "lenet.conv"
    shutil.copy(LENET, prog)
    module = named_lenet()
    safetensors_torch.save_file(module.state_dict(), str(tmp_path / "lenet.safetensors"))
    code, out, err = cli(capsys, "run", prog, "--batch", "2")
    assert code == 0, err
    assert f"weights: {tmp_path / 'lenet.safetensors'}" in out
    x = _x()
    np.testing.assert_allclose(convdsl.compile(prog, convdsl.BESIDE)(x), _torch_out(module, x), **TOL)
    shutil.copy(EXAMPLES / "lenet.npz", tmp_path / "lenet.npz")
    assert convdsl.api.weights_beside(prog) == str(tmp_path / "lenet.npz")
    (tmp_path / "lenet.npz").unlink()
    (tmp_path / "lenet.safetensors").unlink()
    code, out, err = cli(capsys, "run", prog, "--batch", "2")
    assert code == 0 and "no weights given and no lenet.npz or lenet.safetensors beside the program" in out


def test_save_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the old file and no temporary one."""
    for ext, module, attr in ((".safetensors", safetensors_numpy, "save_file"), (".npz", weights_io.np, "savez")):
        path = tmp_path / f"w{ext}"
        convdsl.save_weights(path, _lenet_arrays())
        before = path.read_bytes()

        def broken(*args, **kwargs):
            target = args[1] if ext == ".safetensors" else args[0]
            if isinstance(target, str):
                open(target, "wb").write(b"half")
            else:
                target.write(b"half")
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(module, attr, broken)
            with pytest.raises(OSError):
                convdsl.save_weights(path, {k: v + 1 for k, v in _lenet_arrays().items()})
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if not p.endswith(".tmp"))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("name,arrays,fragment", [
    ("w.pt", {"conv1.weight": np.zeros((6, 1, 5, 5), np.float32)}, "a .pt would be a pickle"),
    ("w.bin", {"conv1.weight": np.zeros((6, 1, 5, 5), np.float32)}, "writes weights as .npz or .safetensors"),
    ("w.npz", {"conv1.weight": np.zeros(3, np.int32)}, "'conv1.weight' has dtype int32"),
    ("w.npz", {"a/b": np.zeros(3, np.float32)}, "cannot save an array named 'a/b'"),
])
def test_save_refuses(name, arrays, fragment, tmp_path):
    with pytest.raises(convdsl.BoundaryError, match=re.escape(fragment)):
        convdsl.save_weights(tmp_path / name, arrays)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- damaged files
def _st(path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> None:
    """A ``.safetensors`` written by hand, so that it can lie."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def _lenet_st(path, change=None, extra: dict | None = None) -> None:
    """LeNet's arrays as a hand-written safetensors; ``change(header)`` edits it before writing."""
    header: dict = {}
    data = b""
    for k, v in _lenet_arrays().items():
        raw = np.ascontiguousarray(v, "<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header.update(extra or {})
    if change is not None:
        data = change(header, data)
    _st(path, header, data)


def _overlap(h, d):
    h["conv1.bias"]["data_offsets"] = [0, 24]
    return d


def _hole(h, d):
    h["conv1.weight"]["data_offsets"] = [h["conv1.weight"]["data_offsets"][0] + 4, h["conv1.weight"]["data_offsets"][1] + 4]
    return d + bytes(4)


def _set(key, field, value, pad=b""):
    def change(h, d):
        h[key][field] = value
        return d + pad
    return change


DAMAGED = {
    "short": (lambda p: p.write_bytes(b"\x05\x00"), "shorter than the 8-byte header length"),
    "huge header": (lambda p: _st(p, b"{}", length=10**12), "its header length says 1,000,000,000,000 bytes, more than"),
    "header past the end": (lambda p: _st(p, b"{}", length=500), "says 500 bytes, but only 2 follow: truncated?"),
    "not json": (lambda p: _st(p, b"{not json"), "its header is not JSON"),
    "not an object": (lambda p: _st(p, b"[1, 2]"), "its header is not a JSON object"),
    "duplicate": (lambda p: _st(p, b'{"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                 b'"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8)),
                  "its header names 'a.weight' twice"),
    "unknown dtype": (lambda p: _lenet_st(p, _set("conv1.bias", "dtype", "F33")),
                      "'conv1.bias' has dtype 'F33', which is not a safetensors dtype"),
    "bad shape": (lambda p: _lenet_st(p, _set("conv1.bias", "shape", [-6])), "its shape [-6] is not a list of sizes"),
    "bad offsets": (lambda p: _lenet_st(p, _set("conv1.bias", "data_offsets", [30, 10])),
                    "its data_offsets [30, 10] are not [begin, end]"),
    "entry fields": (lambda p: _lenet_st(p, extra={"x.weight": {"dtype": "F32"}}),
                     "'x.weight' is damaged: its header entry is not {dtype, shape, data_offsets}"),
    "offsets past the end": (lambda p: _lenet_st(p, lambda h, d: d[:-40]),
                             "'dense3.bias' is damaged: its data ends at byte"),
    "size lies": (lambda p: _lenet_st(p, _set("conv1.bias", "shape", [7])),
                  "its header says [7] float32 (28 bytes), its data_offsets 24"),
    "overlap": (lambda p: _lenet_st(p, _overlap), "the data of 'conv1.bias' and 'conv1.weight' overlap"),
    "hole": (lambda p: _lenet_st(p, _hole), "4 bytes before 'conv1.weight' belong to no tensor"),
    "trailing": (lambda p: _lenet_st(p, lambda h, d: d + bytes(12)), "12 bytes after the last tensor belong to no tensor"),
    "metadata": (lambda p: _lenet_st(p, extra={"__metadata__": {"a": 1}}), "its __metadata__ is not a map of strings"),
    "float8 size": (lambda p: _lenet_st(p, _set("conv1.bias", "dtype", "F8_E4M3")),
                    "its header says [6] float8_e4m3 (6 bytes), its data_offsets 24"),
    "float8": (lambda p: safetensors_torch.save_file(
        {k: torch.from_numpy(v).to(torch.float8_e4m3fn if k == "conv1.bias" else torch.float32)
         for k, v in _lenet_arrays().items()}, str(p)),
        "'conv1.bias' has dtype float8_e4m3, expected float32 (float16, bfloat16 and float64 are converted)"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_safetensors(case, tmp_path, capsys):
    write, fragment = DAMAGED[case]
    path = tmp_path / "w.safetensors"
    write(path)
    with pytest.raises(convdsl.BoundaryError) as e:
        convdsl.compile(LENET, str(path))
    assert fragment in str(e.value) and str(path) in str(e.value)
    code, out, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and fragment in err and "Traceback" not in err


def test_float8_is_refused_without_a_model_too(tmp_path):
    path = tmp_path / "w.safetensors"
    DAMAGED["float8"][0](path)
    with pytest.raises(convdsl.BoundaryError, match=re.escape(
            "'conv1.bias' has dtype float8_e4m3, which convdsl does not read (store float32, float16 or bfloat16)")):
        weights_io.load_weights(path)


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_damaged_bytes_are_an_error_or_the_same_arrays(ext, tmp_path):
    """Bytes flipped anywhere in the header and the start of the data: every outcome is a
    ``BoundaryError`` or a read that passed every check (never another exception)."""
    program = convdsl.load(LENET)
    model = program.model()
    good = tmp_path / f"good{ext}"
    if ext == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in _lenet_arrays().items()}, good)
    else:
        safetensors_numpy.save_file(_lenet_arrays(), str(good))
    data = good.read_bytes()
    rng = np.random.default_rng(5)
    span = min(len(data), 1200)
    outcomes = set()
    for i in range(120 if ext == ".safetensors" else 40):
        raw = bytearray(data)
        for at in rng.integers(0, span, size=int(rng.integers(1, 4))):
            raw[at] = int(rng.integers(0, 256))
        if i % 5 == 0:
            raw = raw[:int(rng.integers(0, len(raw)))]
        path = tmp_path / f"w{i}{ext}"
        path.write_bytes(bytes(raw))
        try:
            got = weights_io.load_weights(path, model, note=None)
            outcomes.add("read")
            assert sorted(got) == sorted(model.weight_shapes())
        except convdsl.BoundaryError:
            outcomes.add("refused")
    assert "refused" in outcomes


def test_truncated_safetensors_written_by_the_library(tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file(_lenet_arrays(), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and "is damaged: its data ends at byte" in err


def test_safetensors_declaring_a_huge_array_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    _st(path, {"conv1.weight": {"dtype": "F32", "shape": [2**20, 2**20, 2**20], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(LimitError, match=r"'conv1.weight' \(not read\): shape \[1048576, 1048576, 1048576\]") as e:
        weights_io.load_weights(path)
    assert e.value.limit is MAX_ELEMENTS
    monkeypatch.setenv("CONVDSL_MAX_ELEMENTS", "10000")  # dense1.weight is 48,000
    _lenet_st(path)
    with pytest.raises(LimitError, match=r"'dense1.weight' \(not read\): shape \[120, 400\] is 48,000 elements"):
        convdsl.compile(LENET, str(path))


def _with(**changes):
    w = {k: v for k, v in _lenet_arrays().items()}
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del w[k]
        else:
            w[k] = v
    return w


@pytest.mark.parametrize("changes,fragment", [
    ({"conv1__bias": None}, "layer conv1: missing array 'conv1.bias' (expected shape [6])"),
    ({"conv2__weight": np.zeros((16, 6, 3, 3), np.float32)},
     "layer conv2: 'conv2.weight' has shape [16, 6, 3, 3], expected [16, 6, 5, 5]"),
    ({"conv9__weight": np.zeros((3,), np.float32)}, "unexpected array 'conv9.weight' with shape [3]"),
    ({"dense1__bias": np.zeros((120,), np.int32)}, "'dense1.bias' has dtype int32, expected float32"),
    ({"dense1__bias": np.full((120,), np.nan, np.float32)}, "'dense1.bias' holds NaN"),
])
@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_arrays_that_do_not_fit(changes, fragment, ext, tmp_path, capsys):
    path = tmp_path / f"w{ext}"
    w = _with(**changes)
    if ext == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in w.items()}, path)
    else:
        safetensors_numpy.save_file(w, str(path))
    with pytest.raises(convdsl.BoundaryError, match=re.escape(fragment)):
        convdsl.compile(LENET, str(path))
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and fragment in err and "Traceback" not in err


def test_misfits_are_found_before_any_data_is_read(tmp_path, monkeypatch):
    import safetensors

    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file(_with(dense1__weight=np.zeros((120, 401), np.float32)), str(path))
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("data read before the header was judged"))
    with pytest.raises(convdsl.BoundaryError, match=re.escape("'dense1.weight' has shape [120, 401], expected")):
        convdsl.compile(LENET, str(path))


def test_sequential_with_a_layer_too_many(tmp_path):
    module = nn.Sequential(*d2l_lenet(), nn.Linear(10, 10))
    path = tmp_path / "w.pt"
    torch.save(module.state_dict(), path)
    with pytest.raises(convdsl.BoundaryError, match=re.escape(
            "numbered like an nn.Sequential's, so they would be matched to the layers by order, but it has 6 "
            "layers with parameters (0, 3, 7, 9, 11, 12) and model LeNet has 5 (conv1, conv2, dense1, dense2, dense3)")):
        convdsl.compile(LENET, str(path))


def test_sequential_with_a_wrong_shape_names_the_layer(tmp_path, capsys):
    seq = d2l_lenet()
    seq[9] = nn.Linear(120, 80)
    torch.save(seq.state_dict(), tmp_path / "w.pt")
    code, _, err = cli(capsys, "run", LENET, "--weights", tmp_path / "w.pt")
    assert code == 1
    assert "'9.weight', '9.bias' -> layer dense2" in err
    assert "layer dense2: 'dense2.weight' has shape [80, 120], expected [84, 120]" in err


@pytest.mark.parametrize("case,fragment", [
    ("module", "refuses to unpickle (a whole model saved with torch.save(model)?)"),
    ("garbage", "not a valid PyTorch weights file"),
    ("truncated", "not a valid PyTorch weights file"),
    ("list", "holds a list, not a state_dict"),
    ("not tensors", "not a state_dict: entries 'epoch', 'lr' are not tensors"),
])
def test_bad_pytorch_files(case, fragment, tmp_path, capsys):
    path = tmp_path / "w.pt"
    if case == "module":
        torch.save(named_lenet(), path)
    elif case == "garbage":
        path.write_bytes(b"not a torch file at all" * 10)
    elif case == "truncated":
        torch.save(named_lenet().state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "list":
        torch.save([torch.zeros(3)], path)
    else:
        torch.save({"conv1.weight": torch.zeros(6, 1, 5, 5), "epoch": 3, "lr": 0.1}, path)
    with pytest.raises(convdsl.BoundaryError, match=re.escape(fragment)):
        convdsl.compile(LENET, str(path))
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and fragment in err and "Traceback" not in err


def test_pytorch_file_without_torch(tmp_path, monkeypatch, capsys):
    path = tmp_path / "w.pt"
    torch.save(named_lenet().state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # (import torch now raises ImportError)
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and "reading a PyTorch state_dict needs torch (pip install torch)" in err
    assert "convert it to .safetensors" in err


def test_unknown_extension(tmp_path, capsys):
    path = tmp_path / "w.bin"
    path.write_bytes(b"whatever")
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and "not a weights file convdsl knows (by its extension: .npz, .safetensors, .pt or .pth)" in err


def test_torch_load_is_only_ever_restricted():
    """Every ``torch.load`` in the package passes ``weights_only=True`` (an unrestricted one
    would run whatever a pickle in the file says)."""
    calls = 0
    for path in sorted((ROOT / "convdsl").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls += 1
            assert "weights_only=True" in m.group(1), (path, m.group(0))
    assert calls >= 1
