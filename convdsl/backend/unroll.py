"""Unrolling, loop IR -> loop IR: every ``For(..., unroll=True)`` becomes its iterations.

Input: a program that passed ``verify`` (an unrolled loop has constant bounds).  Output: the same
program with no unrolled loop left; iteration ``k`` of ``for v in a..b unrolled`` is a
:class:`~.loopir.Block` (its own scope, as the iteration was: locals and lets declared in the body
stay per iteration) holding the body with ``v`` replaced by the constant ``k`` and the constant
parts folded, as codegen folded them (``+ - * // %`` of constants; ``min`` is left to codegen, which
always emitted it).  Nested unrolled loops unroll too.  Semantics are unchanged: the iterations
run in order, each with its own value of ``v``.
"""

from __future__ import annotations

from dataclasses import replace

from . import loopir as L


def fold(e: L.Index, env: dict[str, int]) -> L.Index:
    """``e`` with the names of ``env`` replaced by their constants and constant operations folded."""
    match e:
        case L.IConst():
            return e
        case L.IVar(name=n):
            return L.IConst(env[n]) if n in env else e
        case L.IBin(op=op, a=a, b=b):
            x, y = fold(a, env), fold(b, env)
            if isinstance(x, L.IConst) and isinstance(y, L.IConst) and op != "min":
                v = {"add": x.value + y.value, "sub": x.value - y.value, "mul": x.value * y.value}[op]
                return L.IConst(v)
            return e if (x is a and y is b) else L.IBin(op, x, y)
        case L.IDivC(a=a, c=c, mod=m):
            x = fold(a, env)
            if isinstance(x, L.IConst):
                return L.IConst(x.value % c if m else x.value // c)
            return e if x is a else L.IDivC(x, c, m)
        case L.ILet(name=n, value=a):
            x = fold(a, env)
            return e if x is a else L.ILet(n, x)


def _block(body: tuple[L.Stmt, ...]) -> tuple[L.Stmt, ...]:
    out: list[L.Stmt] = []
    for s in body:
        match s:
            case L.For(var=v, start=L.IConst(value=a), stop=L.IConst(value=b), step=st, body=inner, unroll=True):
                inner = _block(inner)
                for k in range(a, b, st):
                    out.append(L.Block(L.map_indices(inner, lambda e, k=k: fold(e, {v: k})), f"{v} = {k}"))
            case L.For(unroll=True):
                raise L.VerifyError(f"unrolled loop {s.var} needs constant bounds")
            case L.For(body=inner):
                out.append(replace(s, body=_block(inner)))
            case L.Block(body=inner):
                out.append(replace(s, body=_block(inner)))
            case _:
                out.append(s)
    return tuple(out)


def unroll(prog: L.Program) -> L.Program:
    """``prog`` with every unrolled loop expanded (see the module docstring)."""
    return replace(prog, kernels=tuple(replace(k, body=_block(k.body)) for k in prog.kernels),
                   entry=_block(prog.entry))
