"""Bounds-checked generated code (``codegen(check_bounds=True)``, ``CONVDSL_CHECK_BOUNDS=1``).

Every differential case of the op table runs once in checked code (both widths, scalar too, the
intra-image split and the dense tail): no access leaves its buffer on real runs, and the checked
code computes what PyTorch computes.  A program the verifier would reject traps with the kernel
and buffer named.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convdsl.backend.schedule import Schedule
from convdsl.runtime.compiled import compile_model
from netbuild import conv, dense, flatten, net, pool
from reference import random_weights, run_reference
from test_backend import OP_CASES

ROOT = Path(__file__).resolve().parent.parent
SCHEDULES = {
    "w8": Schedule.for_width(8),
    "w16": Schedule.for_width(16),
    "scalar": Schedule.for_width(1),
    "split": replace(Schedule.for_width(8), split_macs=1),
    "tail": replace(Schedule.for_width(16), dense_tail_bytes=0, dense_tile=16, batch_tile=4),
}


@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_op_cases_in_checked_code(sched):
    s = SCHEDULES[sched]
    rng = np.random.default_rng(7)
    for name, model in OP_CASES.items():
        cm = model.bind({})
        w = random_weights(cm, rng)
        x = rng.standard_normal((5, *cm.input_shape)).astype(np.float32)
        c = compile_model(cm, s, check_bounds=True)
        packed = c.pack_weights(w)
        got = c.run(x, packed)
        np.testing.assert_allclose(got, run_reference(cm, w, x), rtol=1e-4, atol=1e-5, err_msg=name)
        if sched == "split":
            np.testing.assert_array_equal(c.run(x[:1], packed, threads=2), got[:1])
        if sched == "w8":
            np.testing.assert_array_equal(c.run(x, packed, threads=2), got)


def test_checked_code_is_checked():
    """The checks are there: more code than the plain build, one trap per guarded access kind."""
    from convdsl.backend.codegen import codegen
    from convdsl.backend.driver import passes
    from convdsl.backend.lower import lower

    cm = net((3, 9, 9), conv(8, 3, padding=1), pool("max", 2), flatten(), dense(10)).bind({})
    prog = passes(lower(cm, Schedule.for_width(8)).program)  # (codegen translates the passes' output)
    plain, checked = str(codegen(prog)), str(codegen(prog, check_bounds=True))
    assert "llvm.trap" not in plain and "llvm.trap" in checked
    assert "out-of-bounds load" in checked and "out-of-bounds store" in checked


def test_an_access_past_the_end_traps_and_says_where():
    """A program that writes a vector past its output (the verifier is bypassed to build it):
    checked code stops with a message naming the kernel and the buffer."""
    code = textwrap.dedent("""
        import ctypes, numpy as np
        from convdsl.backend import loopir as L
        from convdsl.backend.codegen import codegen, entry_name
        from convdsl.backend.jit import JitModule
        n = 20  # floats per image; a vector of 8 from 16 runs 4 past the end
        at = L.iadd(L.imul(L.iadd("n0", "i"), n), "k")
        body = (L.For("i", L.IConst(0), L.IVar("nt"), 1, (L.For("k", L.IConst(0), L.IConst(24), 8, (
            L.Store("output", at, L.Load("input", at, 8)),)),)),)
        k = L.Kernel("copy", ("input", "output"), ("n0", "nt"), body)
        prog = L.Program("Bad", 8, (L.Buffer("input", "input", n), L.Buffer("output", "output", n)), (k,),
                         (L.Call("copy", (L.IConst(0), L.IVar("n"))),), 16, 16)
        jm = JitModule(codegen(prog, check_bounds=True))
        fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_int64)(jm.address(entry_name(prog)))
        x, y, pad = np.zeros(2 * n + 64, np.float32), np.zeros(2 * n + 64, np.float32), np.zeros(16, np.float32)
        fn(x.ctypes.data, y.ctypes.data, pad.ctypes.data, pad.ctypes.data, 2)
        print("not trapped")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "not trapped" not in out.stdout, out
    assert "out-of-bounds load of 8 floats in kernel Bad.copy, buffer input (input)" in out.stderr, out.stderr
