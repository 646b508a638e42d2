"""Unrolling, loop IR -> loop IR: every ``For(..., unroll=True)`` becomes its iterations.

Input: a program that passed ``verify`` (an unrolled loop has constant bounds).  Output: the same
program with no unrolled loop left: iteration ``k`` of ``for v in a..b unrolled`` is a
:class:`~.loopir.Block` binding ``v = k`` around a copy of the body (its own scope, as the
iteration was: locals and lets declared in the body stay per iteration).  Nested unrolled loops
unroll too.  Semantics are unchanged: the iterations run in order, each with its value of ``v``.

The constant is folded into the body's index expressions by :mod:`.valnum` (its constant
propagation), not substituted here: the binding gives the iteration's constant a value number of
its own, so ``ow + v`` is not merged with a literal ``ow + 1`` elsewhere -- which is what codegen
did when it unrolled, and keeps the generated LLVM IR byte-identical (merging them is a change of
the IR for another day, to be made on purpose and measured).
"""

from __future__ import annotations

from dataclasses import replace

from . import loopir as L


def _block(body: tuple[L.Stmt, ...]) -> tuple[L.Stmt, ...]:
    out: list[L.Stmt] = []
    for s in body:
        match s:
            case L.For(var=v, start=L.IConst(value=a), stop=L.IConst(value=b), step=st, body=inner, unroll=True):
                inner = _block(inner)
                out.extend(L.Block(inner, ((v, k),)) for k in range(a, b, st))
            case L.For(unroll=True):
                raise L.VerifyError(f"unrolled loop {s.var} needs constant bounds")
            case L.For(body=inner) | L.Block(body=inner):
                out.append(replace(s, body=_block(inner)))
            case _:
                out.append(s)
    return tuple(out)


def unroll(prog: L.Program) -> L.Program:
    """``prog`` with every unrolled loop expanded (see the module docstring)."""
    return replace(prog, kernels=tuple(replace(k, body=_block(k.body)) for k in prog.kernels),
                   entry=_block(prog.entry))
