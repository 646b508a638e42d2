"""The loop-IR verifier proves every access in bounds (convdsl.backend.bounds).

Regression: on 16-lane hosts a 4,104-float loop stepping by the vector width wrote 8 floats past
its output and the suite died with ``corrupted size vs. prev_size``; the verifier accepted it.
"""

from __future__ import annotations

import glob
from dataclasses import replace

import pytest
from netbuild import conv, dense, flatten, lenet, net, pool
from widths import BOTH

from convdsl.backend import loopir as L
from convdsl.backend.verify import verify
from convdsl.backend.bounds import check_bounds
from convdsl.backend.lower import lower
from convdsl.backend.schedule import Schedule
from convdsl.frontend import check_file

SCHEDULES = {
    **{f"vec{w}": Schedule.for_width(w) for w in BOTH},
    "scalar": Schedule.for_width(1),
    **{f"split{w}": replace(Schedule.for_width(w), split_macs=1) for w in BOTH},
    "tail": replace(Schedule.for_width(8), dense_tail_bytes=0, dense_tile=16, batch_tile=4),
}


def _copy(n: int, stop: int, step: int, start: int = 0, images: L.Index | None = None) -> L.Program:
    """``output[k] = input[k]`` for k in start..stop step ``step`` of every image of n floats."""
    at = L.iadd(L.imul(L.iadd("n0", "i"), n), "k")
    body = (L.For("i", L.IConst(0), images or L.IVar("nt"), 1, (
        L.For("k", L.IConst(start), L.IConst(stop), step, (L.Store("output", at, L.Load("input", at, step)),)),)),)
    k = L.Kernel("copy", ("input", "output"), ("n0", "nt"), body)
    entry = (L.For("n0", L.IConst(0), L.IVar("n"), 4, (
        L.LetIndex("nt", L.imin(4, L.isub("n", "n0"))), L.Call("copy", (L.IVar("n0"), L.IVar("nt"))))),)
    return L.Program("Copy", step, (L.Buffer("input", "input", n), L.Buffer("output", "output", n)), (k,), entry,
                     16, 16)


@pytest.mark.parametrize("width", [8, 16])
def test_vector_step_past_the_end_is_rejected(width):
    with pytest.raises(L.VerifyError, match=r"kernel copy: load of \d+ floats at .* past the end of buffer input"):
        verify(_copy(4100, 4100, width))  # 4100 floats: the last vector is 4 floats short
    verify(_copy(4100, 4100 - 4100 % width, width))  # whole vectors only: accepted
    verify(_copy(4104, 4104, 8))  # 513 vectors of 8
    with pytest.raises(L.VerifyError, match="past the end"):
        verify(_copy(4104, 4104, 16))  # the suite's old abort: 256.5 vectors of 16


def test_accepts_exact_and_rejects_off_by_one():
    verify(_copy(64, 64, 8))
    verify(_copy(64, 64, 1))
    with pytest.raises(L.VerifyError, match="past the end"):
        verify(_copy(64, 65, 1))
    with pytest.raises(L.VerifyError, match="before the start"):
        verify(_copy(64, 64, 1, start=-1))
    # one image too many: the kernel is given nt images but walks nt + 1
    with pytest.raises(L.VerifyError, match="past the end of buffer input"):
        verify(_copy(64, 64, 8, images=L.iadd("nt", 1)))
    # a batch tile the entry does not clip: images past n
    prog = _copy(64, 64, 8)
    entry = (L.For("n0", L.IConst(0), L.IVar("n"), 4, (L.Call("copy", (L.IVar("n0"), L.IConst(4))),)),)
    with pytest.raises(L.VerifyError, match="past the end"):
        verify(replace(prog, entry=entry))


def test_scratch_indexed_by_the_batch_is_rejected():
    body = (L.Store("s", L.IVar("n0"), L.FConst(0.0)),)
    k = L.Kernel("k", ("s",), ("n0", "nt"), body)
    prog = L.Program("P", 1, (L.Buffer("s", "scratch", 16),), (k,),
                     (L.For("n0", L.IConst(0), L.IVar("n"), 1, (L.Call("k", (L.IVar("n0"), L.IConst(1))),)),), 16, 16)
    with pytest.raises(L.VerifyError, match="past the end of buffer s"):
        check_bounds(prog)


def test_unsigned_division_of_a_negative_index_is_rejected():
    at = L.IDivC(L.isub("k", 1), 2)
    k = L.Kernel("k", ("s",), ("n0", "nt"), (L.For("k", L.IConst(0), L.IConst(8), 1, (
        L.Store("s", at, L.FConst(0.0)),)),))
    prog = L.Program("P", 1, (L.Buffer("s", "scratch", 16),), (k,), (L.Call("k", (L.IConst(0), L.IConst(1))),),
                     16, 16)
    with pytest.raises(L.VerifyError, match="may be negative"):
        check_bounds(prog)


def _models():
    for f in sorted(glob.glob("examples/*.conv")):
        c = check_file(f)
        for m in c.result.models:
            yield f, m.bind(m.sizes())
    yield "lenet_relu", lenet(relu=True).bind({})
    yield "tail", net((3, 8, 8), conv(8, 3), pool("max", 2), flatten(), dense(300), dense(10)).bind({})


MODELS = list(_models())


@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_every_example_and_schedule_proves_in_bounds(sched):
    for _, cm in MODELS:
        check_bounds(lower(cm, SCHEDULES[sched]).program)


@pytest.mark.parametrize("sched", ["vec8", "vec16", "split16", "tail"])
def test_a_buffer_one_float_short_is_caught(sched):
    """Every buffer the code touches is needed whole: shrinking any one by a float (the caller's
    arrays by a float per image) makes the verifier reject the program."""
    cm = net((3, 12, 12), conv(8, 3, padding=1), pool("max", 2), conv(20, 3), flatten(), dense(300),
             dense(10)).bind({})
    prog = lower(cm, SCHEDULES[sched]).program
    touched = {b for k in prog.kernels for b in k.buffers}
    checked = 0
    for i, b in enumerate(prog.buffers):
        if b.name not in touched or b.size <= 1:
            continue
        short = replace(prog, buffers=(*prog.buffers[:i], replace(b, size=b.size - 1), *prog.buffers[i + 1:]))
        with pytest.raises(L.VerifyError):
            check_bounds(short)
        checked += 1
    assert checked >= 6
