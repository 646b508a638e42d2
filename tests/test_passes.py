"""The loop-IR passes between lowering and codegen: unrolling (backend.unroll) and index value
numbering (backend.valnum), on small hand-built programs and on the examples."""

from __future__ import annotations

import ctypes
import glob
from dataclasses import replace

import numpy as np
import pytest

from convdsl.backend import loopir as L
from convdsl.backend.bounds import BoundsError
from convdsl.backend.codegen import codegen, entry_name
from convdsl.backend.driver import passes
from convdsl.backend.jit import JitModule
from convdsl.backend.lower import lower
from convdsl.backend.schedule import Schedule
from convdsl.backend.unroll import unroll
from convdsl.backend.valnum import valnum
from convdsl.backend.verify import verify
import convdsl

N = 12  # floats per image


def _program(body: tuple[L.Stmt, ...]) -> L.Program:
    """A kernel ``body`` over images ``i`` of ``N`` floats, called on the whole batch."""
    k = L.Kernel("k", ("input", "output"), ("n0", "nt"),
                 (L.For("i", L.IConst(0), L.IVar("nt"), 1, body),))
    entry = (L.Call("k", (L.IConst(0), L.IVar("n"))),)
    return L.Program("P", 1, (L.Buffer("input", "input", N), L.Buffer("output", "output", N)), (k,), entry, 0, 0)


def _at(*terms: L.Index | int | str) -> L.Index:
    return L.iadd(L.imul("i", N), *terms)


def _scaled() -> L.Program:
    """``output[i, 3k + j] = 2 * input[i, 3k + j]``, ``j`` unrolled; the weight-like constant
    ``j * 5 // 5`` (= ``j``) is written so that it folds."""
    at = _at(L.imul("k", 3), L.IDivC(L.imul("j", 5), 5))
    inner = L.For("j", L.IConst(0), L.IConst(3), 1, (
        L.Store("output", at, L.Bin("mul", L.Load("input", at), L.FConst(2.0))),), unroll=True)
    return _program((L.For("k", L.IConst(0), L.IConst(N // 3), 1, (inner,)),))


def _ops(e: L.Index) -> int:
    """Operation nodes in ``e`` (instructions codegen emits for it)."""
    match e:
        case L.IBin(a=a, b=b):
            return 1 + _ops(a) + _ops(b)
        case L.IDivC(a=a) | L.ILet(value=a):
            return (1 if isinstance(e, L.IDivC) else 0) + _ops(a)
        case _:
            return 0


def _indices(prog: L.Program) -> list[L.Index]:
    got: list[L.Index] = []

    def note(e: L.Index) -> L.Index:
        got.append(e)
        return e

    for k in prog.kernels:
        L.map_indices(k.body, note)
    return got


def _body(s: L.Stmt) -> tuple[L.Stmt, ...]:
    assert isinstance(s, (L.For, L.Block))
    return s.body


def _stores(prog: L.Program) -> list[L.Store]:
    """The stores of the first kernel, in order, at any depth."""
    out: list[L.Store] = []

    def walk(body: tuple[L.Stmt, ...]) -> None:
        for s in body:
            if isinstance(s, L.Store):
                out.append(s)
            elif isinstance(s, (L.For, L.Block)):
                walk(s.body)

    walk(prog.kernels[0].body)
    return out


def test_unrolled_loop_becomes_its_iterations():
    out = unroll(_scaled())
    verify(out)
    text = L.format_program(out)
    assert "unrolled" not in text
    (k_loop,) = _body(out.kernels[0].body[0])
    blocks = _body(k_loop)
    assert all(isinstance(b, L.Block) and b.body == _body(blocks[0]) for b in blocks)
    assert [b.binds for b in blocks if isinstance(b, L.Block)] == [(("j", 0),), (("j", 1),), (("j", 2),)]
    # valnum's constant propagation folds the iteration's constant where it meets another
    final = valnum(out)
    lasts = []
    for st in _stores(final):  # output[(%k := ((i*12 + k*3) + c))] = ...: the folded c per iteration
        assert isinstance(st.value, L.Bin) and isinstance(st.value.a, L.Load)
        at = st.value.a.index
        assert isinstance(at, L.ILet) and isinstance(at.value, L.IBin)
        lasts.append(at.value.b)
    assert lasts == [L.IConst(0), L.IConst(1), L.IConst(2)]
    assert "j" not in L.format_program(final).replace("block (j = ", "")


def test_unrolled_loop_needs_constant_bounds():
    bad = _program((L.For("j", L.IConst(0), L.IVar("nt"), 1, (), unroll=True),))
    with pytest.raises(L.VerifyError, match="constant bounds"):
        unroll(bad)


def test_codegen_refuses_an_unrolled_loop():
    with pytest.raises(ValueError, match="unroll"):
        codegen(_scaled())


def test_value_numbering_shares_equal_subexpressions():
    at = _at(L.imul("k", 3))
    body = (L.For("k", L.IConst(0), L.IConst(N // 3), 1, (
        L.Store("output", at, L.Bin("add", L.Load("input", at), L.Load("input", L.iadd(at, 1)))),)),)
    prog = _program(body)
    before = sum(_ops(e) for e in _indices(prog))
    out = valnum(prog)
    verify(out)
    # i*N + k*3 is computed once: its first use names it, the others refer to the name
    text = L.format_program(out)
    assert text.count(":=") == 1 and text.count("%1") == 3
    assert sum(_ops(e) for e in _indices(out)) == before - 6  # (two copies of its three operations)


def test_value_numbering_respects_scopes():
    """A value computed inside one loop body is not reused by a sibling loop or after the loop;
    one computed outside is reused inside."""
    outer = L.imul("i", N)
    loop = lambda v: L.For(v, L.IConst(0), L.IConst(2), 1, (  # noqa: E731
        L.Store("output", L.iadd(outer, L.imin("i", 1)), L.Load("input", outer)),))
    out = valnum(_program((L.Store("output", outer, L.FConst(0.0)), loop("a"), loop("b"))))
    verify(out)
    text = L.format_program(out)
    # i*N named before the loops and reused in both; min(i, 1) computed once per loop body, never shared
    assert text.count("(%1 := (i * 12))") == 1 and text.count("%1") == 5
    assert text.count("min(i, 1)") == 2 and text.count(":=") == 1


def test_a_let_names_the_value_it_binds():
    """``let a = i * 12`` makes a later ``i * 12`` the same value: it becomes ``a``."""
    out = valnum(_program((L.LetIndex("a", L.imul("i", N)), L.Store("output", L.imul("i", N), L.FConst(1.0)))))
    (store,) = _stores(out)
    assert store.index == L.IVar("a")


def test_unrolled_constants_keep_their_own_value_number():
    """``i*12 + j`` with ``j = 1`` from unrolling is not merged with a literal ``i*12 + 1`` (codegen
    never merged them; the LLVM IR stays byte-identical)."""
    lit = L.Store("output", L.iadd(L.imul("i", N), 1), L.FConst(1.0))
    loop = L.For("j", L.IConst(1), L.IConst(2), 1, (L.Store("output", L.iadd(L.imul("i", N), "j"), L.FConst(2.0)),),
                 unroll=True)
    text = L.format_program(valnum(unroll(_program((lit, loop)))))
    # (i * 12 is shared; the sums are not)
    assert "output[((%1 := (i * 12)) + 1)]" in text and "output[(%1 + j)]" in text


@pytest.mark.parametrize("path", sorted(glob.glob("examples/*.conv")))
def test_passes_are_idempotent_and_verified(path):
    m = convdsl.load(path).models[-1]
    prog = lower(m.bind(m.sizes()), Schedule.for_width(8)).program
    u = unroll(prog)
    assert unroll(u) == u
    v = valnum(u)
    verify(v)
    assert valnum(v) == v
    assert sum(_ops(e) for e in _indices(v)) <= sum(_ops(e) for e in _indices(u))


def test_bounds_checker_sees_through_a_named_index():
    """An access out of bounds by a name valnum made is still rejected (the checker stays sound)."""
    at = _at(L.ILet("%1", L.IConst(N)))  # i*N + N: one image past
    bad = _program((L.Store("output", L.IVar("%1"), L.Load("input", at)),))
    with pytest.raises(BoundsError):
        verify(bad)
    # only the name carries the bad value: the store's index is the name alone, bound inside a
    # value that is itself in bounds, so a checker that ignored what %1 means would pass it
    hidden = _program((L.Store("output", L.IVar("%1"), L.ToFloat(L.ILet("%1", _at(N)))),))
    with pytest.raises(BoundsError):
        verify(hidden)
    with pytest.raises(L.VerifyError, match="unbound"):
        verify(_program((L.Store("output", L.ILet("%1", L.IConst(0)), L.Load("input", L.IVar("%1"))),)))


def test_passes_preserve_semantics():
    """The unrolled, value-numbered program computes what the numpy definition says."""
    prog = passes(_scaled())
    x = np.random.default_rng(0).standard_normal((5, N)).astype(np.float32)
    y = np.zeros_like(x)
    jm = JitModule(codegen(prog))
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_int64)(jm.address(entry_name(prog)))
    pad = np.zeros(16, np.float32)
    fn(x.ctypes.data, y.ctypes.data, pad.ctypes.data, pad.ctypes.data, len(x))
    np.testing.assert_allclose(y, 2 * x, rtol=1e-4, atol=1e-5)


def test_driver_times_the_passes():
    from convdsl.backend.driver import build
    from netbuild import conv, dense, flatten, net

    cm = net((1, 6, 6), conv(4, 3), flatten(), dense(3)).bind({})
    stages = [s for s, _ in build(cm, Schedule.for_width(8), check_bounds=False).timings]
    assert stages[stages.index("unroll"):stages.index("codegen") + 1] == ["unroll", "valnum", "verify", "codegen"]


def test_emit_shows_both_forms_of_the_loop_ir():
    """``--emit loops`` stays the readable, lowered form; ``loops-final`` is what codegen translates."""
    lowered = convdsl.emit("examples/lenet.conv", "loops", schedule=Schedule.for_width(8))
    final = convdsl.emit("examples/lenet.conv", "loops-final", schedule=Schedule.for_width(8))
    assert isinstance(lowered, str) and isinstance(final, str)
    assert "unrolled" in lowered and ":=" not in lowered
    assert "unrolled" not in final and "block (" in final and ":=" in final
