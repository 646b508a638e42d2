"""Sizes past a cap are a diagnostic naming the cap and how to raise it, never a numpy traceback.

Issue 11 item 5 (huge sizes, huge or malformed weights files) and item 6's thread cap; the caps
are documented in docs/limits.md.
"""

import subprocess
import sys
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import convdsl
import convdsl.api
from convdsl.runtime import boundary, weights_io
from convdsl.runtime.limits import LIMITS, MAX_DIM, MAX_ELEMENTS, MAX_SCRATCH, LimitError
from convdsl.tools.cli import main

LENET = str(EXAMPLES / "lenet.conv")
T40 = 2**40

HUGE = {
    "dims": (f"model Big(x: [N, {T40}, {T40}, {T40}]) -> [N, {T40}, {T40}, {T40}] {{\n    relu\n}}\n",
             "CONVDSL_MAX_DIM", "dimension-size limit", "big.conv:1:1: model Big: input x"),
    "padding": ("model Pad(x: [N, 1, 8, 8]) -> [N, 1, 2000000006, 2000000006] {\n"
                "    conv(1, kernel=3, padding=1000000000)\n}\n",
                "CONVDSL_MAX_ELEMENTS", "elements-per-array limit", "big.conv:2:5: layer conv1: output"),
    "where": (f"model Sym(x: [N, 1, H, W]) -> [N, 1, H, W] where H >= {10**30 - 1} {{\n    relu\n}}\n",
              "CONVDSL_MAX_DIM", "dimension-size limit", "big.conv:1:1: model Sym: input x"),
    "stride": ("model S(x: [N, 1, 8, 8]) -> [N, 1, 1, 1] {\n    conv(1, kernel=3, stride=100000000000000000000)\n}\n",
               "CONVDSL_MAX_DIM", "an argument of 100,000,000,000,000,000,000", "big.conv:2:5: layer conv1"),
    "window": ("model P(x: [N, 1, 8, 8]) -> [N, 1, 9, 9] {\n    maxpool(1000000000, stride=1, padding=500000000)\n}\n",
               "CONVDSL_MAX_SCRATCH_BYTES", "bytes of scratch per thread", "big.conv:1:1: model P"),
    "kernel": ("model K(x: [N, 1, 8, 8]) -> [N, 1, 1, 1] {\n    conv(1, kernel=100000, padding=49996)\n}\n",
               "CONVDSL_MAX_ELEMENTS", "is 10,000,000,000 elements", "layer conv1: conv1.weight"),
}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", sorted(HUGE))
@pytest.mark.parametrize("command", [("run", "--repeat", "1"), ("compile", "--emit", "llvm")])
def test_huge_sizes_are_a_diagnostic(case, command, tmp_path, capsys):
    text, env, fragment, where = HUGE[case]
    src = tmp_path / "big.conv"
    src.write_text(text)
    code, out, err = cli(capsys, command[0], src, *command[1:])
    assert code == 1, err
    assert "Traceback" not in err and env in err and fragment in err and "docs/limits.md" in err, err
    assert where in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("convdsl: error:")]) == 1, err  # one line


def test_huge_sizes_without_a_traceback_from_the_module(tmp_path):
    src = tmp_path / "big.conv"
    src.write_text(HUGE["padding"][0])
    r = subprocess.run([sys.executable, "-m", "convdsl", "run", str(src)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "CONVDSL_MAX_ELEMENTS" in r.stderr


def test_limits_are_raised_and_lowered_by_their_variables(monkeypatch, capsys):
    monkeypatch.setenv("CONVDSL_MAX_SCRATCH_BYTES", "1000")
    code, _, err = cli(capsys, "run", LENET, "--repeat", "1", "--no-cache")
    assert code == 1 and "past the scratch limit of 1,000 bytes" in err and "model LeNet" in err
    monkeypatch.setenv("CONVDSL_MAX_SCRATCH_BYTES", str(2**40))
    monkeypatch.setenv("CONVDSL_MAX_ELEMENTS", "4000")
    code, _, err = cli(capsys, "compile", LENET, "--emit", "loops")
    assert code == 1 and "layer conv1: output per image: [6, 28, 28] is 4,704 elements" in err
    assert "lenet.conv:3:5:" in err
    monkeypatch.setenv("CONVDSL_MAX_ELEMENTS", "4704")
    monkeypatch.setenv("CONVDSL_MAX_DIM", "27")
    code, _, err = cli(capsys, "compile", LENET, "--emit", "loops")
    assert code == 1 and "has a size of 28, past the dimension-size limit of 27" in err
    monkeypatch.setenv("CONVDSL_MAX_DIM", "lots")
    code, _, err = cli(capsys, "compile", LENET, "--emit", "loops")
    assert code == 1 and "CONVDSL_MAX_DIM='lots'" in err and "positive integer" in err


def test_the_api_checks_a_binding_before_it_is_made(monkeypatch):
    net = convdsl.compile(str(EXAMPLES / "anysize.conv"))
    monkeypatch.setenv("CONVDSL_MAX_DIM", "100")
    with pytest.raises(LimitError, match="has a size of 101, past the dimension-size limit of 100") as e:
        net(np.zeros((1, 3, 101, 12), np.float32))
    assert e.value.limit is MAX_DIM and isinstance(e.value, convdsl.BoundaryError)
    assert net(np.zeros((1, 3, 100, 12), np.float32)).shape == (1, 10)
    with pytest.raises(LimitError):
        convdsl.api.check_limits(net.model, {"H": 101, "W": 12})
    with pytest.raises(LimitError):
        convdsl.emit(str(EXAMPLES / "anysize.conv"), "loops", sizes={"H": 101, "W": 12})


def test_every_limit_is_documented():
    doc = (ROOT / "docs" / "limits.md").read_text()
    for limit in LIMITS:
        assert limit.env in doc, limit.env


def test_scratch_cap_bounds_the_threads_that_get_an_arena(monkeypatch):
    """Each thread of a batch job has its own arena: with room for one, a 4-thread call runs on
    one and gives the same answer."""
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=1)
    b = net.bind()
    arena = 4 * b.compiled.program.scratch_size
    x = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    one = b.compiled.run(x, b.packed, threads=1)
    monkeypatch.setenv("CONVDSL_MAX_SCRATCH_BYTES", str(arena + arena // 2))
    np.testing.assert_array_equal(b.compiled.run(x, b.packed, threads=4), one)
    team = b.compiled._team
    assert team is None or not any(a is not None for a in team.arenas)
    monkeypatch.setenv("CONVDSL_MAX_SCRATCH_BYTES", str(3 * arena))
    np.testing.assert_array_equal(b.compiled.run(x, b.packed, threads=4), one)
    assert sum(a is not None for a in b.compiled._team.arenas) == 2


# ----------------------------------------------------------------------------- threads
def test_threads_mean_the_same_in_compile_and_call(monkeypatch):
    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
    for bad in (0, -1):
        with pytest.raises(convdsl.BoundaryError, match="threads must be at least 1"):
            convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=bad)
    with pytest.raises(convdsl.BoundaryError, match="threads must be an integer"):
        convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=2.0)
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"))
    assert net.threads == convdsl.api.max_threads()
    with pytest.raises(convdsl.BoundaryError, match="threads must be at least 1"):
        net(x, threads=0)
    monkeypatch.setenv("CONVDSL_MAX_THREADS", "3")
    assert convdsl.api.max_threads() == 3
    with pytest.warns(RuntimeWarning, match="threads=1000: using 3"):
        capped = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=1000)
    assert capped.threads == 3
    one = net(x, threads=1)
    np.testing.assert_array_equal(capped(x), one)
    np.testing.assert_array_equal(net(x, threads=1000), one)  # clamped per call, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=3).threads == 3


def test_threads_never_exceed_the_cap_in_a_call(monkeypatch):
    """`threads=1000` for a batch of 64 used 63 threads; now no more than the cap exist."""
    monkeypatch.setenv("CONVDSL_MAX_THREADS", "2")
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"), threads=1)
    x = np.random.default_rng(2).random((64, 1, 28, 28), dtype=np.float32)
    want = net(x)
    np.testing.assert_array_equal(net(x, threads=1000), want)
    team = net.bind().compiled._team
    assert team is not None and len(team.threads) == 1  # one helper beside the caller


def test_cli_threads_past_the_cap_is_a_note(monkeypatch, capsys):
    monkeypatch.setenv("CONVDSL_MAX_THREADS", "2")
    code, out, err = cli(capsys, "run", LENET, "--threads", "1000", "--repeat", "1", "--batch", "64")
    assert code == 0, err
    assert "--threads 1000: using 2" in err and "CONVDSL_MAX_THREADS" in err
    assert "2 threads)" in out


# ----------------------------------------------------------------------------- weights files
def _npy_header(shape, dtype="<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _lenet_arrays():
    with np.load(EXAMPLES / "lenet.npz") as d:
        return {k: d[k] for k in d.files}


def _zip(path, members):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (zipfile warns about the duplicate names these tests want)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)


def _npy(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_npz_reads_the_same_arrays_as_numpy():
    ours = boundary.load_weights(EXAMPLES / "lenet.npz")
    theirs = _lenet_arrays()
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])
        assert ours[k].dtype == theirs[k].dtype


def test_npz_fortran_order_and_float64(tmp_path):
    w = _lenet_arrays()
    w["conv2.weight"] = np.asfortranarray(w["conv2.weight"]).astype(np.float64)
    np.savez(tmp_path / "w.npz", **w)
    got = boundary.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(got["conv2.weight"], w["conv2.weight"])
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    ref = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"))(x)
    np.testing.assert_allclose(convdsl.compile(LENET, str(tmp_path / "w.npz"))(x), ref, rtol=1e-6, atol=1e-6)


def test_npz_unexpected_big_arrays_are_reported_without_reading(tmp_path, capsys):
    """The issue's 4.4 MB file of unused 1 GB arrays took 4.27 GB; here an unused 256 MB array is
    named from its header, and reading the file allocates nothing near its size."""
    path = tmp_path / "w.npz"
    np.savez(path, **_lenet_arrays())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.weight.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((8192, 8192)))
            block = bytes(1 << 24)
            for _ in range(16):
                f.write(block)
    assert path.stat().st_size < 2_000_000
    program = convdsl.load(LENET)
    tracemalloc.start()
    try:
        with pytest.raises(convdsl.BoundaryError) as e:
            convdsl.compile(program, str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "unexpected array 'junk.weight' with shape [8192, 8192]" in str(e.value)
    assert peak < 20_000_000, peak
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and "unexpected array 'junk.weight'" in err


def test_npz_array_past_the_cap_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    w = _lenet_arrays()
    np.savez(path, **w)
    monkeypatch.setenv("CONVDSL_MAX_ELEMENTS", "10000")  # dense1.weight is 48,000
    with pytest.raises(LimitError, match=r"'dense1.weight' \(not read\): shape \[120, 400\] is 48,000 elements") as e:
        boundary.load_weights(path)
    assert e.value.limit is MAX_ELEMENTS


def test_npz_header_that_lies_about_the_size(tmp_path):
    path = tmp_path / "w.npz"
    members = [(f"{k}.npy", _npy(v)) for k, v in _lenet_arrays().items() if k != "conv1.bias"]
    members.append(("conv1.bias.npy", _npy_header((1000, 1000)) + bytes(24)))
    _zip(path, members)
    with pytest.raises(convdsl.BoundaryError, match=r"'conv1.bias' is damaged: its header says \[1000, 1000\]"):
        boundary.load_weights(path)


def test_npz_duplicate_member_is_an_error(tmp_path, capsys):
    path = tmp_path / "w.npz"
    w = _lenet_arrays()
    members = [(f"{k}.npy", _npy(v)) for k, v in w.items()]
    members.append(("conv1.weight.npy", _npy(np.zeros_like(w["conv1.weight"]))))
    _zip(path, members)
    code, _, err = cli(capsys, "run", LENET, "--weights", path)
    assert code == 1 and "holds two members named 'conv1.weight.npy'" in err


def test_npz_member_that_is_not_an_array(tmp_path):
    path = tmp_path / "w.npz"
    _zip(path, [(f"{k}.npy", _npy(v)) for k, v in _lenet_arrays().items()] + [("notes.txt", b"hello")])
    with pytest.raises(convdsl.BoundaryError, match="member 'notes.txt' is not an .npy array"):
        boundary.load_weights(path)


def test_npz_truncated_data(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **_lenet_arrays())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(convdsl.BoundaryError, match="not a valid .npz"):
        boundary.load_weights(path)


def test_npz_wrong_fixed_shape_is_reported_from_the_header(tmp_path, monkeypatch):
    """A misshapen array whose shape the model fixes is not read either."""
    path = tmp_path / "w.npz"
    w = _lenet_arrays()
    w["dense1.weight"] = np.zeros((120, 401), np.float32)
    np.savez(path, **w)
    read = []
    real = weights_io._read_member
    monkeypatch.setattr(weights_io, "_read_member", lambda p, z, name, m: read.append(name) or real(p, z, name, m))
    with pytest.raises(convdsl.BoundaryError, match=r"'dense1.weight' has shape \[120, 401\], expected \[120, 400\]"):
        convdsl.compile(LENET, str(path))
    assert read == []


def test_scratch_limit_is_the_documented_default():
    assert MAX_SCRATCH.value() > 0 and MAX_DIM.value() == 2**31 - 1 and MAX_ELEMENTS.value() == 2**31
