"""``convdsl compile --emit lib``: the C library, loaded with ctypes and built into C programs.

The library's outputs are compared with the JIT'd network (same code) and with PyTorch (an
independent implementation), on batches of 1, 3 and more than a batch tile; its argument checks,
workspace size, thread safety, exported symbols and header are checked as a C user meets them,
and the example program runs (also statically linked, and under valgrind) with the accuracy
``convdsl run`` reports.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT

import convdsl
import convdsl.api
from convdsl.backend import clib
from convdsl.tools.cli import main
from convdsl.tools.export_torch import to_torch

# the compiler the library links with (no skip: without one the feature cannot work, and CI has gcc)
CC = clib.c_compiler()

LENET = EXAMPLES / "lenet.conv"
ANYSIZE = EXAMPLES / "anysize.conv"
ANY_SIZES = {"H": 13, "W": 21}
# a padded max pool over values of both signs: its input's halo must hold -inf (filled by p_run on
# every call, a workspace holding anything before), where a zero would win the max at the edges
PADPOOL = """model PadPool(x: [N, 2, 9, 11]) -> [N, 12] {
    conv(4, kernel=3)                 -> [N, 4, 7, 9]
    maxpool(3, stride=2, padding=1)   -> [N, 4, 4, 5]
    avgpool(2, padding=1)             -> [N, 4, 3, 3]
    flatten
    dense(12)
    tanh
}
"""
RTOL, ATOL = 1e-4, 1e-5
BIG = 21  # images: more than a batch tile, and not a multiple of one
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


class Lib:
    """A built library loaded with ctypes: ``run(x)`` through ``p_run`` with a fresh workspace."""

    def __init__(self, info: convdsl.api.Library) -> None:
        self.info = info
        self.dll = ctypes.CDLL(os.path.abspath(info.shared))
        self.run_fn = getattr(self.dll, info.run)
        self.run_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self.run_fn.restype = ctypes.c_int
        self.size_fn = getattr(self.dll, info.workspace_size_fn)
        self.size_fn.argtypes = [ctypes.c_int64]
        self.size_fn.restype = ctypes.c_size_t

    def workspace(self, nbytes: int, canary: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(raw, workspace, canary)``: ``nbytes`` at a 64-byte boundary, filled with 0xFF (NaN as
        floats: the library must not depend on what it holds), then ``canary`` guard bytes."""
        raw = np.full(nbytes + canary + 64, 0xFF, np.uint8)
        off = -raw.ctypes.data % 64
        ws, guard = raw[off:off + nbytes], raw[off + nbytes:off + nbytes + canary]
        guard[:] = np.arange(canary) % 251 + 1
        return raw, ws, guard

    def run(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        _, ws, _ = self.workspace(self.size_fn(n))
        y = np.empty((n, *self.info.output_shape), np.float32)
        assert self.run_fn(x.ctypes.data, y.ctypes.data, n, ws.ctypes.data) == 0
        return y


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """LeNet with its bundled weights, AnySize at H=13, W=21 and PadPool with seeded random weights
    (none beside them), all for the host CPU."""
    d = tmp_path_factory.mktemp("clib")
    (d / "padpool.conv").write_text(PADPOOL)
    libs = {"lenet": convdsl.api.compile_library(LENET, d / "lenet"),
            "anysize": convdsl.api.compile_library(ANYSIZE, d / "anysize", sizes=ANY_SIZES),
            "padpool": convdsl.api.compile_library(d / "padpool.conv", d / "padpool")}
    assert all(lib.batch_tile < BIG for lib in libs.values())  # (the big batch spans several tiles)
    return {"dir": d, **{k: Lib(v) for k, v in libs.items()}}


def test_command_line_writes_the_same_library(built, tmp_path, capsys):
    out = tmp_path / "any.so"  # (the name of the .so names all three)
    assert main(["compile", str(ANYSIZE), "--emit", "lib", "--size", "H=13,W=21", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: no weights given and no anysize.npz or anysize.safetensors beside the program" in err
    assert f"wrote {tmp_path}/any.so, {tmp_path}/any.o and {tmp_path}/any.h (model AnySize" in err
    info = built["anysize"].info
    assert (tmp_path / "any.h").read_text() == open(info.header).read()
    assert (tmp_path / "any.o").read_bytes() == open(info.object, "rb").read()


def _nets(built):
    """(name, JIT'd network, PyTorch module, input shape per image) for each library."""
    lenet = convdsl.compile(LENET, convdsl.BESIDE)
    anysize = convdsl.compile(ANYSIZE, None, seed=0)  # (the seeded weights the library packed)
    padpool = convdsl.compile(built["dir"] / "padpool.conv", None, seed=0)
    out = []
    for name, net, env in (("lenet", lenet, {}), ("anysize", anysize, ANY_SIZES), ("padpool", padpool, {})):
        module = to_torch(net.model.bind(net.model.sizes(env)), net.weights(env))
        shape = tuple(d if isinstance(d, int) else env[str(d)] for d in net.model.input_shape[1:])
        out.append((name, net, module, shape))
    return out


@pytest.mark.parametrize("batch", [1, 3, BIG])
def test_run_matches_the_jit_and_pytorch(built, batch):
    for name, net, module, shape in _nets(built):
        lib = built[name]
        x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
        y = lib.run(x)
        np.testing.assert_allclose(y, net(x), rtol=RTOL, atol=ATOL)
        with torch.inference_mode():
            expect = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expect, rtol=RTOL, atol=ATOL)


def test_bad_arguments_return_nonzero_and_touch_nothing(built):
    lib = built["lenet"]
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28), dtype=np.float32)
    y = np.full((2, 10), 7.0, np.float32)
    _, ws, _ = lib.workspace(lib.size_fn(2))
    xp, yp, wp = x.ctypes.data, y.ctypes.data, ws.ctypes.data
    cases = {
        (xp, yp, 0, wp): 1, (xp, yp, -3, wp): 1, (xp, yp, 2 ** 62, wp): 1,
        (None, yp, 2, wp): 2, (xp, None, 2, wp): 2, (xp, yp, 2, None): 2,
        (xp, yp, 2, wp + 4): 3, (xp, yp, 2, wp + 32): 3,
    }
    for args, status in cases.items():
        assert lib.run_fn(*args) == status, args
    assert (y == 7.0).all()
    assert lib.size_fn(0) == 0 and lib.size_fn(-1) == 0


def test_header_compiles_and_names_the_return_codes(built):
    d = built["dir"]
    for name, lib in (("lenet", built["lenet"]), ("anysize", built["anysize"])):
        text = open(lib.info.header).read()
        up = name.upper()
        for macro, value in (("IN_C", lib.info.input_shape[0]), ("IN_H", lib.info.input_shape[1]),
                             ("IN_W", lib.info.input_shape[2]), ("OUT_SIZE", 10), ("OK", 0), ("ERR_BATCH", 1),
                             ("ERR_NULL", 2), ("ERR_ALIGN", 3), ("WORKSPACE_ALIGN", 64)):
            assert re.search(rf"#define {up}_{macro} {value}\b", text), macro
        assert f"size_t {name}_workspace_size(int64_t batch);" in text
        assert f"int {name}_run(const float *input, float *output, int64_t batch, void *workspace);" in text
        src = d / f"use_{name}.c"
        src.write_text(f'#include "{name}.h"\n#include "{name}.h"\n'  # (twice: the include guard)
                       f"int use(const float *x, float *y, void *w) {{\n"
                       f"    return {name}_workspace_size(1) > 0 ? {name}_run(x, y, 1, w) : {up}_ERR_BATCH;\n}}\n")
        r = subprocess.run([*CC, *CFLAGS, "-I", str(d), "-c", str(src), "-o", str(d / f"use_{name}.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_workspace_size_is_exact_and_sufficient(built):
    """A run in exactly ``p_workspace_size(batch)`` bytes, canary bytes after them: the canaries
    survive, the output is right, and the input is not written."""
    for name, net, _, shape in _nets(built):
        lib = built[name]
        sizes = {lib.size_fn(b) for b in (1, 2, 7, 8, 9, 100)}
        assert len(sizes) == 1  # (one batch tile of scratch serves every batch)
        for batch in (1, 9):
            need = lib.size_fn(batch)
            raw, ws, guard = lib.workspace(need, canary=256)
            before = guard.copy()
            x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
            x_copy = x.copy()
            y = np.full((batch + 1, *lib.info.output_shape), 3.0, np.float32)  # (a row past the batch: a canary)
            assert lib.run_fn(x.ctypes.data, y.ctypes.data, batch, ws.ctypes.data) == 0
            assert (guard == before).all(), f"{name}: the run wrote past {need} bytes of workspace"
            assert (y[batch:] == 3.0).all() and (x == x_copy).all()
            np.testing.assert_allclose(y[:batch], net(x), rtol=RTOL, atol=ATOL)


def test_two_threads_with_distinct_workspaces(built):
    """ctypes releases the GIL: both threads are in the library at once, each in its own workspace."""
    lib = built["anysize"]
    xs = [np.random.default_rng(s).standard_normal((11, 3, 13, 21), dtype=np.float32) for s in (1, 2)]
    expect = [lib.run(x) for x in xs]
    got: list[list[np.ndarray]] = [[], []]

    def work(k: int) -> None:
        _, ws, _ = lib.workspace(lib.size_fn(11))
        for _ in range(20):
            y = np.empty((11, 10), np.float32)
            assert lib.run_fn(xs[k].ctypes.data, y.ctypes.data, 11, ws.ctypes.data) == 0
            got[k].append(y)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        assert len(got[k]) == 20
        for y in got[k]:
            np.testing.assert_array_equal(y, expect[k])


def test_exports_only_the_documented_symbols(built):
    # (no skip: nm comes with binutils, which the C compiler the library needs links with)
    assert shutil.which("nm"), "no nm (binutils) to list the library's symbols"
    for name in ("lenet", "anysize"):
        lib = built[name]
        r = subprocess.run(["nm", "-D", "--defined-only", lib.info.shared], capture_output=True, text=True, check=True)
        defined = {line.split()[-1] for line in r.stdout.splitlines() if line.strip()}
        assert defined == set(lib.info.exported) == {f"{name}_run", f"{name}_workspace_size"}
        r = subprocess.run(["nm", "-D", "--undefined-only", lib.info.shared], capture_output=True, text=True,
                           check=True)
        needed = {line.split()[-1].split("@")[0] for line in r.stdout.splitlines() if line.strip()}
        # libc only (and the weak hooks every shared library has); no Python, no threads
        assert needed <= {"memset", "memcpy", "memmove", "__cxa_finalize", "__gmon_start__",
                          "_ITM_deregisterTMCloneTable", "_ITM_registerTMCloneTable"}, needed


def test_symbolic_sizes_must_be_fixed(tmp_path, capsys):
    out = tmp_path / "any"
    assert main(["compile", str(ANYSIZE), "--emit", "lib", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "symbolic input sizes H, W" in err and "--size" in err
    assert main(["compile", str(ANYSIZE), "--emit", "lib", "--size", "H=3,W=32", "-o", str(out)]) == 2
    assert "--size: model AnySize is valid for H >= 12, got H = 3" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    with pytest.raises(convdsl.api.LibraryError, match="symbolic input sizes H, W"):
        convdsl.api.compile_library(ANYSIZE, out)


def test_no_half_written_outputs(tmp_path, capsys, monkeypatch):
    """A failure leaves the three files as they were (or absent): no C compiler, weights that do
    not fit, an unknown CPU."""
    out = tmp_path / "lenet"
    for ext in (".so", ".o", ".h"):
        (tmp_path / f"lenet{ext}").write_text("old")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"conv1.weight": np.zeros((2, 2), np.float32)})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert main(["compile", str(LENET), "--emit", "lib", "-o", str(out)]) == 1
    assert "no C compiler found" in capsys.readouterr().err
    monkeypatch.delenv("CC")
    assert main(["compile", str(LENET), "--emit", "lib", "--weights", str(bad), "-o", str(out)]) == 1
    assert "conv1.weight" in capsys.readouterr().err
    assert main(["compile", str(LENET), "--emit", "lib", "--cpu", "no-such-cpu", "-o", str(out)]) == 2
    assert sorted(os.listdir(tmp_path)) == ["bad.npz", "lenet.h", "lenet.o", "lenet.so"]
    assert all((tmp_path / f"lenet{e}").read_text() == "old" for e in (".so", ".o", ".h"))


def test_output_names(tmp_path, capsys):
    assert convdsl.api.library_paths("a/lenet") == convdsl.api.library_paths("a/lenet.so") == (
        "a/lenet.so", "a/lenet.o", "a/lenet.h")
    assert main(["compile", str(LENET), "--emit", "lib", "-o", "-"]) == 2
    assert "a library is three files" in capsys.readouterr().err
    assert main(["compile", str(LENET), "--emit", "lib", "-o", str(tmp_path / "no" / "dir")]) == 2
    assert "no writable directory" in capsys.readouterr().err
    assert main(["compile", str(LENET), "--emit", "asm", "--weights", str(EXAMPLES / "lenet.npz")]) == 2
    assert "--weights applies to --emit lib" in capsys.readouterr().err


def test_unknown_cpu_says_where_the_names_are(capsys):
    for name in ("no-such-cpu", "i386"):  # (unknown; a CPU without 64-bit code)
        assert main(["compile", str(LENET), "--emit", "asm", "--cpu", name]) == 2
        err = capsys.readouterr().err
        assert f"'{name}'" in err and "-mcpu=help" in err and "x86-64-v3" in err
    assert main(["compile", str(LENET), "--emit", "ast", "--cpu", "znver3"]) == 2
    assert "--cpu" in capsys.readouterr().err
    assert {"x86-64-v3", "znver3", "skylake-avx512"} <= set(convdsl.api.cpu_names())


def test_cpu_sets_features_and_vector_width(capsys):
    """The target CPU, not the host, decides the instructions and the schedule's width."""
    assert main(["compile", str(LENET), "--emit", "asm", "--cpu", "skylake-avx512"]) == 0
    avx512 = capsys.readouterr().out
    assert re.search(r"vfmadd\w*ps\s+%zmm", avx512)
    assert main(["compile", str(LENET), "--emit", "asm", "--cpu", "x86-64-v3"]) == 0
    avx2 = capsys.readouterr().out
    assert "%zmm" not in avx2 and re.search(r"vfmadd\w*ps\s+%ymm", avx2)
    assert "(vector width 16," in convdsl.emit(LENET, "plan", cpu="skylake-avx512")
    assert "(vector width 8," in convdsl.emit(LENET, "plan", cpu="x86-64-v3")
    assert "<16 x float>" in convdsl.emit(LENET, "llvm", cpu="skylake-avx512")
    assert "<16 x float>" not in convdsl.emit(LENET, "llvm", cpu="x86-64-v3")
    assert convdsl.api.target("skylake-avx512").vector_width == 16
    assert convdsl.api.target("x86-64-v3").vector_width == 8
    obj = convdsl.emit(LENET, "obj", cpu="x86-64-v3")
    assert isinstance(obj, bytes) and obj[:4] == b"\x7fELF"


def test_library_for_another_cpu_runs_here(tmp_path):
    """Built for x86-64-v3 (AVX2, FMA: what this project's AMD host runs): the same outputs."""
    if not convdsl.host_cpu().features >= {"avx2", "fma"}:
        pytest.skip("this host does not run x86-64-v3 code (AVX2 and FMA)")
    info = convdsl.api.compile_library(LENET, tmp_path / "v3", cpu="x86-64-v3")
    assert info.cpu == "x86-64-v3" and info.vector_width == 8
    x = np.random.default_rng(5).standard_normal((13, 1, 28, 28), dtype=np.float32)
    net = convdsl.compile(LENET, convdsl.BESIDE)
    np.testing.assert_allclose(Lib(info).run(x), net(x), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- the example program


def _digits(d) -> str:
    path = str(d / "digits.raw")
    if not os.path.exists(path):
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "c" / "digits_raw.py"), path],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return path


def _build_classify(d, include: str, link: list[str], exe: str) -> str:
    r = subprocess.run([*CC, *CFLAGS, "-O2", "-I", include, str(ROOT / "examples" / "c" / "classify.c"), *link,
                        "-o", exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def test_example_accuracy_equals_convdsl_run(built, capsys):
    d = built["dir"]
    assert main(["run", str(LENET), "--repeat", "1"]) == 0
    expected = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy:")]
    assert expected == ["accuracy: 354/359 = 98.6%"]
    digits = _digits(d)
    lib = built["lenet"].info
    shared = _build_classify(d, str(d), [lib.shared, f"-Wl,-rpath,{d}"], str(d / "classify"))
    static = _build_classify(d, str(d), [lib.object, "-lm"], str(d / "classify_static"))
    for exe in (shared, static):
        r = subprocess.run([exe, digits], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == expected
    r = subprocess.run([static, digits, "0"], capture_output=True, text=True)
    assert r.returncode == 1 and "COUNT" in r.stderr


def test_example_under_valgrind(tmp_path):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (CI installs it: .ci/run)")
    # Debian's valgrind cannot execute AVX-512: a library for x86-64-v3 (AVX2) runs under it anywhere
    info = convdsl.api.compile_library(LENET, tmp_path / "lenet", cpu="x86-64-v3")
    exe = _build_classify(tmp_path, str(tmp_path), [info.object, "-lm"], str(tmp_path / "classify"))
    r = subprocess.run(["valgrind", "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=all", "-q",
                        exe, _digits(tmp_path), "24"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"accuracy: \d+/24 = [\d.]+%\n", r.stdout)


# ----------------------------------------------------------------------------- random networks, linked statically

HARNESS = r"""#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include "{p}.h"
/* IN.raw -> OUT.raw: int64 batch, then the images; writes the outputs (float32) */
int main(int argc, char **argv) {{
    int64_t n;
    FILE *f = fopen(argv[1], "rb");
    if (argc != 3 || !f || fread(&n, sizeof n, 1, f) != 1) return 2;
    float *x = malloc((size_t)n * {P}_IN_SIZE * sizeof(float)), *y = malloc((size_t)n * {P}_OUT_SIZE * sizeof(float));
    void *ws = NULL;
    if (!x || !y || posix_memalign(&ws, {P}_WORKSPACE_ALIGN, {p}_workspace_size(n)) != 0) return 3;
    if (fread(x, sizeof(float) * {P}_IN_SIZE, (size_t)n, f) != (size_t)n) return 4;
    int status = {p}_run(x, y, n, ws);
    if (status != {P}_OK) return 10 + status;
    FILE *g = fopen(argv[2], "wb");
    if (!g || fwrite(y, sizeof(float) * {P}_OUT_SIZE, (size_t)n, g) != (size_t)n || fclose(g) != 0) return 5;
    free(ws); free(y); free(x); fclose(f);
    return 0;
}}
"""


def _random_program(rng: np.random.Generator, k: int) -> tuple[str, dict[str, int]]:
    """A random conv net over ``[N, C, H, W]`` as ``.conv`` text (H and W fixed by its ``where``
    clause: a dense layer follows the flatten), and those sizes."""
    from symtorch import conv_text, torch_shapes

    for _ in range(200):
        c = int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(6, 20, size=2))
        specs: list[tuple] = []
        for _ in range(int(rng.integers(1, 4))):
            kk = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            specs.append(("conv", int(rng.integers(1, 12)), kk, (int(rng.integers(1, 3)),) * 2,
                          (int(rng.integers(0, kk[0] // 2 + 1)), int(rng.integers(0, kk[1] // 2 + 1))), (1, 1)))
            roll = rng.random()
            if roll < 0.4:
                specs.append(("pool", str(rng.choice(["max", "avg"])), (2, 2), (2, 2), (int(rng.integers(0, 2)),) * 2,
                              bool(rng.random() < 0.5)))
            elif roll < 0.7:
                specs.append(("relu",))
        specs += [("flatten",), ("dense", int(rng.integers(1, 20)))]
        if torch_shapes(specs, 1, c, h, w) is None:
            continue
        text = conv_text(specs, channels=c, output=f"[N, {specs[-1][1]}]", where=(f"H == {h}", f"W == {w}"),
                         name=f"Rand{k}")
        if convdsl.check_source(text).ok:
            return text, {"H": h, "W": w}
    raise AssertionError("no random program checked in 200 draws")


@pytest.mark.parametrize("k", range(3))
def test_random_networks_statically_linked(tmp_path, k):
    """A C harness linked against ``OUT.o`` computes what the JIT'd network and PyTorch compute."""
    text, sizes = _random_program(np.random.default_rng(100 + k), k)
    src = tmp_path / f"rand{k}.conv"
    src.write_text(text)
    info = convdsl.api.compile_library(src, tmp_path / f"rand{k}", sizes=sizes)
    p = f"rand{k}"
    (tmp_path / "harness.c").write_text(HARNESS.format(p=p, P=p.upper()))
    exe = str(tmp_path / "harness")
    r = subprocess.run([*CC, *CFLAGS, "-O1", "-I", str(tmp_path), str(tmp_path / "harness.c"), info.object, "-lm",
                        "-o", exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    net = convdsl.compile(src, None, seed=0)
    for batch in (1, 11):
        x = np.random.default_rng(batch).standard_normal((batch, *info.input_shape), dtype=np.float32)
        (tmp_path / "in.raw").write_bytes(np.int64(batch).tobytes() + x.tobytes())
        r = subprocess.run([exe, str(tmp_path / "in.raw"), str(tmp_path / "out.raw")], capture_output=True)
        assert r.returncode == 0, (text, r.returncode)
        y = np.frombuffer((tmp_path / "out.raw").read_bytes(), np.float32).reshape(batch, *info.output_shape)
        np.testing.assert_allclose(y, net(x), rtol=RTOL, atol=ATOL, err_msg=text)
        with torch.inference_mode():
            expect = to_torch(net.model.bind(sizes), net.weights(sizes))(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expect, rtol=RTOL, atol=ATOL, err_msg=text)


def test_a_destination_that_cannot_be_written_leaves_the_others_alone(tmp_path):
    """A directory where OUT.so goes is refused before anything is built: OUT.o and OUT.h are
    neither written nor changed (the renames never start), and the message names the destination."""
    (tmp_path / "x.so").mkdir()
    (tmp_path / "x.h").write_text("old")
    with pytest.raises(convdsl.api.LibraryError, match=r"cannot write .*x\.so: it is a directory"):
        convdsl.compile_library(LENET, tmp_path / "x")
    assert sorted(os.listdir(tmp_path)) == ["x.h", "x.so"] and (tmp_path / "x.h").read_text() == "old"
    with pytest.raises(convdsl.api.LibraryError, match="names a directory"):
        convdsl.compile_library(LENET, str(tmp_path) + os.sep)


def test_header_comment_survives_any_weights_path(tmp_path):
    """The weights' origin goes into the header's comment by base name, with ``*/`` defused: a
    weights folder named ``w*`` once closed the comment and broke every C file including it."""
    odd = tmp_path / "w*"
    odd.mkdir()
    shutil.copy(EXAMPLES / "lenet.npz", odd / "we*ights.npz")
    lib = convdsl.compile_library(LENET, tmp_path / "lenet", str(odd / "we*ights.npz"))
    text = Path(lib.header).read_text()
    assert str(tmp_path) not in text and text.count("*/") == text.count("/*")
    src = tmp_path / "use.c"
    src.write_text('#include "lenet.h"\nint main(void) { return LENET_OUT_SIZE == 10 ? 0 : 1; }\n')
    r = subprocess.run([*CC, *CFLAGS, "-I", str(tmp_path), str(src), "-o", str(tmp_path / "use")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cc_with_arguments(tmp_path, monkeypatch):
    """``CC="gcc -m64"`` (or ``ccache gcc``): the first word is the compiler, the rest its options."""
    monkeypatch.setenv("CC", f"{CC[0]} -m64")
    assert clib.c_compiler() == [CC[0], "-m64"]
    lib = convdsl.compile_library(LENET, tmp_path / "lenet")
    assert Path(lib.shared).stat().st_size > 0


@pytest.mark.parametrize("argv", [["compile", str(LENET), "--emit", "lib", "--seed", "-1"],
                                  ["run", str(LENET), "--seed", "-3"],
                                  ["bench", str(LENET), "--seed", "x"]])
def test_bad_seeds_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


def test_cpu_applies_to_loops_final(capsys):
    """--cpu changes every back-end stage, the loop IR after the passes too."""
    assert main(["compile", str(LENET), "--emit", "loops-final", "--cpu", "skylake-avx512"]) == 0
    assert "vector width 16" in capsys.readouterr().out.splitlines()[0]
