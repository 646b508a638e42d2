"""`convdsl run` / `compile` and the Python API: defaults, output, cache, and every boundary error."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import convdsl
from convdsl.tools.cli import main

LENET = str(EXAMPLES / "lenet.conv")


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_lenet_on_bundled_digits(capsys):
    code, out, err = cli(capsys, "run", LENET, "--repeat", "2")
    assert code == 0, err
    assert "weights: " in out and "lenet.npz" in out
    assert "359 bundled handwritten digits" in out
    assert "output: shape [359, 10], float32" in out
    acc = float(out.split("accuracy: ")[1].split("= ")[1].rstrip("%\n"))
    assert acc >= 95.0
    assert "predicted: " in out and "true: " in out
    assert "run time: " in out and ("compiled with LLVM in" in out or "loaded from the compile cache in" in out)


def test_compile_cache_is_hit_and_invalidated_by_source_change(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "lenet.conv"
    src.write_text((EXAMPLES / "lenet.conv").read_text())
    (tmp_path / "lenet.npz").write_bytes((EXAMPLES / "lenet.npz").read_bytes())
    _, out1, _ = cli(capsys, "run", str(src), "--repeat", "1")
    _, out2, _ = cli(capsys, "run", str(src), "--repeat", "1")
    assert "compiled with LLVM" in out1
    assert "loaded from the compile cache" in out2
    assert out1.split("accuracy")[1] == out2.split("accuracy")[1]
    src.write_text(src.read_text().replace("dense1: dense(120)", "dense1: dense(120, bias=true)"))
    _, out3, _ = cli(capsys, "run", str(src), "--repeat", "1")
    assert "compiled with LLVM" in out3
    _, out4, _ = cli(capsys, "run", str(src), "--repeat", "1", "--no-cache")
    assert "compiled with LLVM" in out4


def test_random_weights_and_input_when_nothing_is_given(tmp_path, capsys):
    src = tmp_path / "net.conv"
    src.write_text("model Net(x: [N, 3, H, W]) -> [N, 4] {\n  conv(4, kernel=3)\n  relu\n"
                   "  global_avgpool\n  flatten\n  dense(4)\n}\n")
    code, out, err = cli(capsys, "run", str(src), "--batch", "5", "--size", "H=9,W=13",
                         "--output", str(tmp_path / "y.npy"), "--repeat", "1")
    assert code == 0, err
    assert "seeded random weights" in out and "a random batch of 5" in out
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (5, 4) and y.dtype == np.float32
    # Same seed, same answer; another seed, another answer.
    cli(capsys, "run", str(src), "--batch", "5", "--size", "H=9,W=13", "--output", str(tmp_path / "z.npy"),
        "--repeat", "1")
    np.testing.assert_array_equal(y, np.load(tmp_path / "z.npy"))
    cli(capsys, "run", str(src), "--batch", "5", "--size", "H=9,W=13", "--seed", "1",
        "--output", str(tmp_path / "w.npy"), "--repeat", "1")
    assert not np.array_equal(y, np.load(tmp_path / "w.npy"))


@pytest.mark.parametrize("emit,marker", [("llvm", "define"), ("asm", "vfmadd"), ("obj", None)])
def test_compile_emits(emit, marker, tmp_path, capsys):
    out_path = tmp_path / f"lenet.{emit}"
    code, _, err = cli(capsys, "compile", LENET, "--emit", emit, "-o", str(out_path))
    assert code == 0, err
    data = out_path.read_bytes()
    if marker:
        assert marker in data.decode()
    else:
        assert data[:4] == b"\x7fELF" or data[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe")


def _write_weights(path, **changes):
    w = dict(np.load(EXAMPLES / "lenet.npz"))
    for k, v in changes.items():
        if v is None:
            del w[k.replace("__", ".")]
        else:
            w[k.replace("__", ".")] = v
    np.savez(path, **w)


@pytest.mark.parametrize("changes,fragment", [
    ({"conv2__weight": None}, "layer conv2: missing array 'conv2.weight' (expected shape [16, 6, 5, 5])"),
    ({"conv2__weight": np.zeros((16, 6, 3, 3), np.float32)},
     "layer conv2: 'conv2.weight' has shape [16, 6, 3, 3], expected [16, 6, 5, 5]"),
    ({"conv9__weight": np.zeros((3,), np.float32)}, "unexpected array 'conv9.weight' with shape [3]"),
    ({"dense1__bias": np.zeros((120,), np.complex64)}, "'dense1.bias' has dtype complex64"),
    ({"dense1__bias": np.full((120,), np.nan, np.float32)}, "'dense1.bias' holds NaN"),
])
def test_bad_weights_are_errors_naming_the_layer(changes, fragment, tmp_path, capsys):
    path = tmp_path / "w.npz"
    _write_weights(path, **changes)
    code, out, err = cli(capsys, "run", LENET, "--weights", str(path))
    assert code == 1
    assert fragment in err
    assert "Traceback" not in err


def test_weights_file_that_is_not_npz(tmp_path, capsys):
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"this is not a zip file")
    code, _, err = cli(capsys, "run", LENET, "--weights", str(bad))
    assert code == 1 and "not a valid .npz weights file" in err


def test_pickled_weights_are_refused(tmp_path, capsys):
    bad = tmp_path / "w.npz"
    np.savez(bad, **{"conv1.weight": np.array([{"evil": 1}], dtype=object)})
    code, _, err = cli(capsys, "run", LENET, "--weights", str(bad))
    assert code == 1 and "pickled" in err


@pytest.mark.parametrize("array,fragment", [
    (np.zeros((2, 3, 28, 28), np.float32), "channels is 3, but model LeNet takes 1"),
    (np.zeros((2, 1, 28, 27), np.float32), "width is 27, but model LeNet takes 28"),
    (np.zeros((1, 28, 28), np.float32), "(3-D); model LeNet takes 4-D input"),
    (np.zeros((2, 1, 28, 28), np.complex64), "dtype complex64"),
    (np.zeros((0, 1, 28, 28), np.float32), "a batch of at least 1 image"),
])
def test_bad_input_arrays_are_errors(array, fragment, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, array)
    code, _, err = cli(capsys, "run", LENET, "--input", str(path))
    assert code == 1
    assert fragment in err


def test_usage_errors(capsys, tmp_path):
    assert cli(capsys, "run", LENET, "--weights", str(tmp_path / "nope.npz"))[0] == 2
    assert cli(capsys, "run", LENET, "--input", str(tmp_path / "nope.npy"))[0] == 2
    assert cli(capsys, "run", LENET, "--model", "Nope")[0] == 2
    assert cli(capsys, "run", LENET, "--threads", "0")[0] == 2
    assert cli(capsys, "run", str(tmp_path / "nope.conv"))[0] == 2


def test_run_of_a_wrong_program_prints_diagnostics(capsys):
    code, _, err = cli(capsys, "run", str(EXAMPLES / "errors" / "shape_mismatch.conv"))
    assert code == 1 and "error: conv2 produces" in err


def test_api_checks_arrays_before_native_code():
    net = convdsl.compile(convdsl.load(LENET), weights=str(EXAMPLES / "lenet.npz"))
    x = np.random.default_rng(0).random((4, 1, 28, 28))
    y64 = net(x)  # float64 is converted
    y32 = net(x.astype(np.float32))
    np.testing.assert_array_equal(y64, y32)
    yf = net(np.asfortranarray(x.astype(np.float32)))  # non-contiguous is copied
    np.testing.assert_array_equal(yf, y32)
    ys = net(x.astype(np.float32)[::-1][::-1])
    np.testing.assert_array_equal(ys, y32)
    for bad in ([[1, 2]], np.zeros((4, 1, 28, 28), dtype=object), "text"):
        with pytest.raises(convdsl.BoundaryError):
            net(bad)


def test_api_symbolic_model_compiles_once_per_size():
    net = convdsl.compile(str(EXAMPLES / "anysize.conv"))
    rng = np.random.default_rng(1)
    a = net(rng.random((2, 3, 12, 12), dtype=np.float32))
    b = net(rng.random((3, 3, 20, 17), dtype=np.float32))
    c = net(rng.random((5, 3, 12, 12), dtype=np.float32))
    assert a.shape == (2, 10) and b.shape == (3, 10) and c.shape == (5, 10)
    assert len(net._bindings) == 2
    with pytest.raises(convdsl.BoundaryError, match="H >= 12"):
        net(np.zeros((1, 3, 11, 12), np.float32))


def test_load_raises_compile_error_with_all_diagnostics():
    with pytest.raises(convdsl.CompileError) as e:
        convdsl.load(EXAMPLES / "errors" / "several_errors.conv")
    assert len(e.value.diagnostics) == 4
    assert "several_errors.conv:3:33: error" in str(e.value)


def test_module_entry_point_and_no_traceback_on_bad_input(tmp_path):
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "convdsl", "run", LENET, "--input", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a .npy array file" in r.stderr


def test_fast_path_still_checks_every_call():
    net = convdsl.compile(convdsl.load(LENET), weights=str(EXAMPLES / "lenet.npz"))
    x = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
    y = net(x)
    np.testing.assert_array_equal(net(x), y)  # the same kind of array again: the fast path
    np.testing.assert_array_equal(net(x.astype(np.float64)), y)  # converted, not misread
    np.testing.assert_array_equal(net(np.asfortranarray(x)), y)  # copied, not misread
    with pytest.raises(convdsl.BoundaryError, match="at least 1 image"):
        net(x[:0])
    with pytest.raises(convdsl.BoundaryError, match="width is 27"):
        net(np.zeros((2, 1, 28, 27), np.float32))
    with pytest.raises(convdsl.BoundaryError, match="threads must be at least 1"):
        net(x, threads=0)
    with pytest.raises(convdsl.BoundaryError, match="threads must be an integer"):
        net(x, threads="2")
    np.testing.assert_array_equal(net(x, threads=np.int64(2)), net(x, threads=1))


def test_user_mistakes_found_in_a_new_user_trial(tmp_path, capsys):
    # --batch takes the first B bundled digits
    code, out, _ = cli(capsys, "run", LENET, "--batch", "5", "--repeat", "1")
    assert code == 0 and "input: 5 bundled handwritten digits" in out and "accuracy: 5/5" in out
    # --size is checked like an option (exit 2), and N is --batch's
    anysize = str(EXAMPLES / "anysize.conv")
    assert cli(capsys, "run", anysize, "--size", "H=4,W=20")[0] == 2
    assert "the batch size N is --batch" in cli(capsys, "run", anysize, "--size", "N=5,H=20,W=20")[2]
    # an unwritable --output is refused before anything is compiled
    code, out, err = cli(capsys, "run", LENET, "--output", str(tmp_path / "no" / "y.npy"))
    assert code == 2 and "compiled" not in out
    # integer weights are refused, not silently converted
    w = dict(np.load(EXAMPLES / "lenet.npz"))
    w["conv1.weight"] = w["conv1.weight"].astype(np.int32)
    np.savez(tmp_path / "w.npz", **w)
    code, _, err = cli(capsys, "run", LENET, "--weights", str(tmp_path / "w.npz"))
    assert code == 1 and "'conv1.weight' has dtype int32" in err


def test_binary_file_and_byte_order_mark(tmp_path, capsys):
    binary = tmp_path / "b.conv"
    binary.write_bytes(b"\x7fELF\x00\x01\x02" * 20)
    code, _, err = cli(capsys, "check", str(binary))
    assert code == 1 and err.count("error:") == 1 and "not a text file" in err
    bom = tmp_path / "bom.conv"
    bom.write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "lenet.conv").read_bytes())
    assert cli(capsys, "check", str(bom))[0] == 0


def test_second_new_user_trial(tmp_path, capsys):
    # NaN / inf in an input file: a warning, and NaN outputs for those images (not plausible numbers)
    x = np.random.default_rng(5).random((3, 1, 28, 28), dtype=np.float32)
    x[1, 0, 5, 5] = np.nan
    p = tmp_path / "x.npy"
    np.save(p, x)
    out_file = tmp_path / "y.npy"
    code, out, err = cli(capsys, "run", LENET, "--input", str(p), "--output", str(out_file), "--repeat", "1")
    assert code == 0 and "1 image hold NaN or infinite values" in err
    y = np.load(out_file)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    # --size only shapes a random batch
    code, _, err = cli(capsys, "run", str(EXAMPLES / "anysize.conv"), "--input", str(p), "--size", "H=16")
    assert code == 2 and "with --input the array's shape gives them" in err
    # more digits asked for than there are: said so
    code, out, _ = cli(capsys, "run", LENET, "--batch", "1000", "--repeat", "1")
    assert code == 0 and "359 bundled handwritten digits" in out and "--batch 1000 asked for more" in out
    code, out, _ = cli(capsys, "run", LENET, "--batch", "1", "--repeat", "1")
    assert "1 bundled handwritten digit " in out
    # a model with fixed sizes is compiled by compile() itself
    net = convdsl.compile(LENET, str(EXAMPLES / "lenet.npz"))
    assert net.last_compile is not None
