"""Index value numbering, loop IR -> loop IR: shared integer index expressions computed once.

Input: a verified program without unrolled loops (:mod:`.unroll` has run).  Output: the same
program where

* every operation on constants is folded, the constants an unrolled iteration's block binds
  included (they are substituted where they meet another constant; elsewhere the name stays, and
  codegen gives it the constant), and names ``let`` binds to constants become those constants, so
  codegen folds nothing;
* an operation on the same operand *values* as one computed earlier in the same block or an
  enclosing one is replaced by a name for that earlier result: its first computation becomes
  ``ILet(name, op)`` (``%1, %2, ...`` per kernel, or the ``let``'s own name when a ``let`` binds
  it), so codegen emits one instruction per operation node and the same instructions, in the same
  order, as a per-scope value-numbering table would.

Operands are compared by value number, not by text: ``let a = x * 4`` makes ``a + 1`` and
``x * 4 + 1`` the same value.  A result lives in the innermost block where it was first computed
(a loop body, an unrolled iteration's :class:`~.loopir.Block`), never beyond: the next iteration or
a sibling loop recomputes it, which keeps every use dominated by its definition and the live
ranges short.  Evaluation order is codegen's (a store's value before its index).  The pass is
idempotent, and semantics are unchanged: every name stands for the value it replaced.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import count
from typing import Union

from . import loopir as L

# a value number: ("c", constant), or ("v", k) for a name codegen gets from outside (a parameter,
# a loop variable), ("k", k) for the constant a block binds (an unrolled iteration's variable: a
# constant for folding, but a value of its own for sharing, as codegen had it), or ("o", k) for the
# result of an operation
_VN = tuple[str, int]
_Key = Union[str, tuple[str, _VN, _VN], tuple[str, _VN, int]]


class _Numbering:
    def __init__(self, params: tuple[str, ...]) -> None:
        self.ids = count()
        self.fresh = count(1)
        self.scopes: list[dict[_Key, _VN]] = [{p: ("v", next(self.ids)) for p in params}]
        self.canonical: dict[_VN, str] = {}  # the name of an operation's result
        self.dropped: set[str] = set()  # names of the input's own ILets (replaced by canonical ones)
        self.kval: dict[_VN, int] = {}  # the constant of each ("k", _) value

    def const(self, vn: _VN) -> int | None:
        return vn[1] if vn[0] == "c" else self.kval.get(vn)

    def lookup(self, key: _Key) -> _VN | None:
        for sc in reversed(self.scopes):
            v = sc.get(key)
            if v is not None:
                return v
        return None

    def index(self, e: L.Index) -> tuple[_VN, L.Index]:
        match e:
            case L.IConst(value=v):
                return ("c", v), e
            case L.IVar(name=n):
                vn = self.lookup(n)
                assert vn is not None, n
                if vn[0] == "c":
                    return vn, L.IConst(vn[1])
                # (a block's constant keeps its name where it is not folded: its value number
                # differs from a literal's, and a second run must see that again -- idempotence)
                return vn, (L.IVar(self.canonical[vn]) if n in self.dropped else e)
            case L.ILet(name=n, value=x):
                vn, out = self.index(x)
                self.scopes[-1][n] = vn
                if vn[0] != "o":  # (valnum never names anything else; kept as it is)
                    return vn, L.ILet(n, out)
                self.dropped.add(n)
                return vn, out
            case L.IBin(op=op, a=a, b=b):
                (va, xa), (vb, xb) = self.index(a), self.index(b)
                ka, kb = self.const(va), self.const(vb)
                if ka is not None and kb is not None and op != "min":
                    r = {"add": ka + kb, "sub": ka - kb, "mul": ka * kb}[op]
                    return ("c", r), L.IConst(r)
                key: _Key = (op, va, vb)
                node: L.Index = L.IBin(op, xa, xb)
            case L.IDivC(a=a, c=c, mod=m):
                va, xa = self.index(a)
                ka = self.const(va)
                if ka is not None:
                    r = ka % c if m else ka // c
                    return ("c", r), L.IConst(r)
                key = ("urem" if m else "udiv", va, c)
                node = L.IDivC(xa, c, m)
        got = self.lookup(key)
        if got is not None:
            return got, L.IVar(self.canonical[got])
        vn = ("o", next(self.ids))
        self.scopes[-1][key] = vn
        name = self.canonical[vn] = f"%{next(self.fresh)}"
        return vn, L.ILet(name, node)

    def value(self, v: L.Value) -> L.Value:
        match v:
            case L.FConst() | L.Local():
                return v
            case L.Load(buf=b, index=i, width=w):
                return L.Load(b, self.index(i)[1], w)
            case L.Broadcast(value=x, width=w):
                return L.Broadcast(self.value(x), w)
            case L.FMA(a=a, b=b, c=c):
                xa = self.value(a)
                xb = self.value(b)
                return L.FMA(xa, xb, self.value(c))
            case L.Bin(op=op, a=a, b=b):
                xa = self.value(a)
                return L.Bin(op, xa, self.value(b))
            case L.Unary(op=op, a=a):
                return L.Unary(op, self.value(a))
            case L.ToFloat(index=i, width=w):
                return L.ToFloat(self.index(i)[1], w)
            case L.SelectLanes(n_valid=k, a=a, b=b):
                xa = self.value(a)
                return L.SelectLanes(k, xa, self.value(b))
            case L.Reduce(op=op, a=a):
                return L.Reduce(op, self.value(a))

    def block(self, body: tuple[L.Stmt, ...], bind: dict[_Key, _VN] | None = None) -> tuple[L.Stmt, ...]:
        self.scopes.append(dict(bind or {}))
        out: list[L.Stmt] = []
        for s in body:
            match s:
                case L.For(var=v, start=a, stop=b, body=inner):
                    xa = self.index(a)[1]
                    xb = self.index(b)[1]
                    out.append(replace(s, start=xa, stop=xb, body=self.block(inner, {v: ("v", next(self.ids))})))
                case L.LetIndex(name=n, value=e):
                    vn, x = self.index(e)
                    if isinstance(x, L.ILet) and self.canonical.get(vn) == x.name:
                        # the let names the result itself (its first computation ends the let)
                        self.canonical[vn], x = n, x.value
                    self.scopes[-1][n] = vn
                    out.append(L.LetIndex(n, x))
                case L.DeclLocal(name=n, width=w, init=e):
                    out.append(L.DeclLocal(n, w, self.value(e)))
                case L.Assign(name=n, value=e):
                    out.append(L.Assign(n, self.value(e)))
                case L.Store(buf=b, index=i, value=e, lanes=k):
                    stored = self.value(e)  # (before the index, as codegen evaluates them)
                    out.append(L.Store(b, self.index(i)[1], stored, k))
                case L.Call(kernel=k, args=args, timer=t):
                    out.append(L.Call(k, tuple(self.index(a)[1] for a in args), t))
                case L.Comment():
                    out.append(s)
                case L.Block(body=inner, binds=bs):
                    consts: dict[_Key, _VN] = {}
                    for n, k in bs:
                        vn = consts[n] = ("k", next(self.ids))
                        self.kval[vn] = k
                    out.append(L.Block(self.block(inner, consts), bs))
        self.scopes.pop()
        return tuple(out)


def _tidy(body: tuple[L.Stmt, ...]) -> tuple[L.Stmt, ...]:
    """Drop the names nobody uses and number the others ``%1, %2, ...`` in order."""
    used: set[str] = set()

    def uses(e: L.Index) -> L.Index:
        match e:
            case L.IVar(name=n):
                used.add(n)
            case L.IBin(a=a, b=b):
                uses(a)
                uses(b)
            case L.IDivC(a=a) | L.ILet(value=a):
                uses(a)
        return e

    L.map_indices(body, uses)
    names: dict[str, str] = {}

    def rename(e: L.Index) -> L.Index:
        match e:
            case L.IConst():
                return e
            case L.IVar(name=n):
                return L.IVar(names.get(n, n))
            case L.IBin(op=op, a=a, b=b):
                return L.IBin(op, rename(a), rename(b))
            case L.IDivC(a=a, c=c, mod=m):
                return L.IDivC(rename(a), c, m)
            case L.ILet(name=n, value=a):
                if n not in used:
                    return rename(a)
                x = rename(a)  # (operands are named before the result)
                names[n] = f"%{len(names) + 1}"
                return L.ILet(names[n], x)

    return L.map_indices(body, rename)


def valnum(prog: L.Program) -> L.Program:
    """``prog`` with its index expressions value-numbered (see the module docstring)."""
    kernels = tuple(replace(k, body=_tidy(_Numbering(k.params).block(k.body))) for k in prog.kernels)
    return replace(prog, kernels=kernels, entry=_tidy(_Numbering(("n",)).block(prog.entry)))
