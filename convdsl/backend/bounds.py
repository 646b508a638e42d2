"""Bounds checking of the loop IR: no program the verifier accepts touches memory outside its buffers.

The loop IR has no conditionals: every load and store runs for every value
its loop variables take, so each access must be in bounds by construction
(halos, blocked layouts, remainder loops).  This pass proves it.

Every integer in scope is a *symbol* with lower and upper bounds: affine
forms over the symbols bound before it (loop ``for v in a..b step s`` gives
``a <= v <= b - s`` or ``b - 1``; a kernel parameter gets the range of the
argument at its call, so kernels are checked in the context of each call,
starting from the entry's batch size ``n``).  A bound is a *set* of affine
candidates, each valid on its own (``min(T, n - n0)`` is at most ``T`` and at
most ``n - n0``), so relations such as ``n0 + nt <= n`` survive.  To decide
``f <= 0`` the innermost symbol of ``f`` is replaced by its upper bounds
(lower ones where its coefficient is negative) until a constant remains.
Floor division and remainder give symbols of their own (``q = a // c`` with
``q <= a / c``, rational), and a loop body also knows that its loop ran, so
``start < stop``: a loop of zero or one trip is how the loop IR guards a store.

An access of ``w`` floats at index ``i`` of a buffer of ``S`` floats is safe
when ``i >= 0`` and ``i + w <= S``; the caller's input and output hold
``n`` images, ``S = n * per_image``.  Split stage entries (``Program.stages``)
are also checked as the threaded driver calls them: images ``[0, nt)`` of a
batch of ``n >= nt`` images, any part range ``0 <= r0 <= r1 <= extent``.

Anything the pass cannot bound is rejected: it proves safety, it does not
guess it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple, assert_never

from . import loopir as L

INF = float("inf")
Num = float | Fraction  # a constant bound: exact (int, Fraction) where finite, else +-INF
_MAX_CANDIDATES = 4  # bounds kept per direction (any subset of valid bounds is still valid)


class Affine(NamedTuple):
    """``const + sum(coef * symbol)``; symbols are integer ids, later ids bound inside earlier ones.
    (A named tuple, not a dataclass: the pass builds tens of thousands of them per network.)"""

    const: int | Fraction
    terms: tuple[tuple[int, int | Fraction], ...] = ()  # (symbol id, non-zero coefficient), by id

    @staticmethod
    def of(sym: int) -> "Affine":
        return Affine(0, ((sym, 1),))

    def __neg__(self) -> "Affine":
        return self.scale(-1)

    def __add__(self, other: "Affine") -> "Affine":  # type: ignore[override]  # (affine sum, not concatenation)
        if not other.terms:
            return Affine(self.const + other.const, self.terms)
        if not self.terms:
            return Affine(self.const + other.const, other.terms)
        d = dict(self.terms)
        for s, c in other.terms:
            d[s] = d.get(s, 0) + c
        return Affine(self.const + other.const, tuple(sorted((s, c) for s, c in d.items() if c)))

    def scale(self, k: int | Fraction) -> "Affine":
        if k == 0:
            return Affine(0)
        return Affine(self.const * k, tuple((s, c * k) for s, c in self.terms))

    def div(self, c: int) -> "Affine":
        """``self / c``, exact (rational coefficients where ``c`` does not divide them)."""
        return Affine(Fraction(self.const, c), tuple((s, Fraction(k, c)) for s, k in self.terms))

    def __sub__(self, other: "Affine") -> "Affine":
        return self + other.scale(-1)


@dataclass(slots=True)
class _Symbol:
    lows: list[Affine]
    ups: list[Affine]


class Range(NamedTuple):
    lows: tuple[Affine, ...]  # each a lower bound
    ups: tuple[Affine, ...]  # each an upper bound

    @staticmethod
    def exact(a: Affine) -> "Range":
        t = (a,)
        return Range(t, t)  # (one tuple for both: exact ranges are recognised by identity)


def _cap(xs: list[Affine]) -> tuple[Affine, ...]:
    out: list[Affine] = []
    for x in xs:
        if x not in out:
            out.append(x)
    return tuple(out[:_MAX_CANDIDATES])


@dataclass
class _Env:
    """The symbols: their bounds by id, and what elimination has found (memo)."""

    symbols: list[_Symbol] = field(default_factory=list)
    memo: dict[tuple[Affine, bool], Num] = field(default_factory=dict)  # cleared when facts change
    # bounds that hold only inside the loop that implies them (symbol -> (lows, ups)), see assume()
    extra: dict[int, tuple[list[Affine], list[Affine]]] = field(default_factory=dict)

    def new(self, lows: list[Affine], ups: list[Affine]) -> Affine:
        self.symbols.append(_Symbol(lows, ups))
        return Affine.of(len(self.symbols) - 1)

    def bound(self, f: Affine, upper: bool, budget: list[int] | None = None) -> Num:
        """The least upper (or greatest lower) constant bound of ``f`` that elimination finds."""
        if not f.terms:
            return f.const
        key = (f, upper)
        got = self.memo.get(key)
        if got is not None:
            return got
        budget = budget if budget is not None else [256]
        sym, coef = f.terms[-1]
        rest = Affine(f.const, f.terms[:-1])
        s = self.symbols[sym]
        cands = s.ups if (coef > 0) == upper else s.lows
        more = self.extra.get(sym)
        if more is not None:
            cands = [*cands, *(more[1] if (coef > 0) == upper else more[0])]
        best: Num = INF if upper else -INF
        for c in cands:
            if budget[0] <= 0:
                break
            budget[0] -= 1
            v = self.bound(rest + c.scale(coef), upper, budget)
            best = min(best, v) if upper else max(best, v)
        self.memo[key] = best
        return best

    def assume(self, f: Affine) -> tuple[int, bool, Affine] | None:
        """Record ``f >= 0`` as a bound of its innermost symbol (until :meth:`forget`); None when
        ``f >= 0`` already follows from the bounds, or ``f`` is constant."""
        if not f.terms or self.bound(f, False) >= 0:
            return None
        sym, k = f.terms[-1]
        rest = Affine(f.const, f.terms[:-1])
        b = rest.scale(Fraction(-1) / k)
        upper = k < 0  # k * s + rest >= 0: s <= rest / -k when k < 0, s >= rest / -k when k > 0
        lows, ups = self.extra.setdefault(sym, ([], []))
        (ups if upper else lows).append(b)
        self.memo.clear()
        return sym, upper, b

    def forget(self, fact: tuple[int, bool, Affine]) -> None:
        sym, upper, b = fact
        lows, ups = self.extra[sym]
        (ups if upper else lows).remove(b)
        self.memo.clear()

    def hi(self, r: Range) -> Num:
        return min((self.bound(u, True) for u in r.ups), default=INF)

    def lo(self, r: Range) -> Num:
        return max((self.bound(x, False) for x in r.lows), default=-INF)


def _const_range(lo: Num, hi: Num) -> Range:
    """The integers in ``[lo, hi]`` (bounds may be fractions or infinite)."""
    return Range((Affine(math.ceil(lo)),) if lo != -INF else (), (Affine(math.floor(hi)),) if hi != INF else ())


class BoundsError(L.VerifyError):
    pass


@dataclass
class _Checker:
    prog: L.Program
    env: _Env
    kernels: dict[str, L.Kernel]
    extents: dict[str, Affine]  # buffer name -> its size in floats
    where: str = "entry"
    entry_nt: dict[str, Num] = field(default_factory=dict)  # largest nt the entry gives each kernel
    # constant interval of each name's value, by the identity of its Range (kept alive here)
    _ivals: dict[int, tuple[Range, Num, Num]] = field(default_factory=dict)
    _quotients: dict[tuple, Affine] = field(default_factory=dict)

    def ival(self, e: L.Index, names: dict[str, Range]) -> tuple[Num, Num]:
        """A constant interval holding ``e``: plain interval arithmetic, the quick first try of
        :meth:`access` (enough for every access to a fixed-size buffer in the programs ``lower``
        makes; the caller's arrays, sized by the batch, need the affine bounds)."""
        match e:
            case L.IConst(value=v):
                return v, v
            case L.IVar(name=n):
                r = names[n]
                got = self._ivals.get(id(r))
                if got is None or got[0] is not r:
                    got = self._ivals[id(r)] = (r, self.env.lo(r), self.env.hi(r))
                return got[1], got[2]
            case L.IBin(op=op, a=a, b=b):
                (al, ah), (bl, bh) = self.ival(a, names), self.ival(b, names)
                if op == "add":
                    return al + bl, ah + bh
                if op == "sub":
                    return al - bh, ah - bl
                if op == "min":
                    return min(al, bl), min(ah, bh)
                corners = [x * y for x in (al, ah) for y in (bl, bh)]
                if any(c != c for c in corners):  # 0 * inf
                    return -INF, INF
                return min(corners), max(corners)
            case L.IDivC(a=a, c=c, mod=m):
                lo, hi = self.ival(a, names)
                if lo < 0:
                    return -INF, INF  # (the affine path reports it)
                if m:
                    return (lo, hi) if hi < c else (0, c - 1)
                return lo // c, hi // c
            case L.ILet(value=a):
                return self.ival(a, names)
            case _:
                assert_never(e)

    def range(self, e: L.Index, names: dict[str, Range]) -> Range:
        match e:
            case L.IConst(value=v):
                return Range.exact(Affine(v))
            case L.IVar(name=n):
                return names[n]
            case L.IBin(op="add", a=a, b=b):
                x, y = self.range(a, names), self.range(b, names)
                if x.lows is x.ups and y.lows is y.ups and len(x.ups) == len(y.ups) == 1:
                    return Range.exact(x.ups[0] + y.ups[0])
                return Range(_cap([p + q for p in x.lows for q in y.lows]),
                             _cap([p + q for p in x.ups for q in y.ups]))
            case L.IBin(op="sub", a=a, b=b):
                x, y = self.range(a, names), self.range(b, names)
                return Range(_cap([p - q for p in x.lows for q in y.ups]),
                             _cap([p - q for p in x.ups for q in y.lows]))
            case L.IBin(op="min", a=a, b=b):
                x, y = self.range(a, names), self.range(b, names)
                lo = min(self.env.lo(x), self.env.lo(y))
                return Range(_const_range(lo, INF).lows, _cap([*x.ups, *y.ups]))
            case L.IBin(op="mul", a=a, b=b):
                x, y = self.range(a, names), self.range(b, names)
                for p, q in ((x, y), (y, x)):
                    k = _constant(p)
                    if k is not None and q.lows is q.ups and len(q.ups) == 1:
                        return Range.exact(q.ups[0].scale(k))
                    if k is not None:
                        return Range(_cap([u.scale(k) for u in q.lows]), _cap([u.scale(k) for u in q.ups])) \
                            if k >= 0 else Range(_cap([u.scale(k) for u in q.ups]), _cap([u.scale(k) for u in q.lows]))
                corners = [p * q for p in (self.env.lo(x), self.env.hi(x)) for q in (self.env.lo(y), self.env.hi(y))]
                if any(c != c or abs(c) == INF for c in corners):  # NaN from 0 * inf, or unbounded
                    raise BoundsError(f"{self.where}: cannot bound the product {L.format_index(e)}")
                return _const_range(min(corners), max(corners))
            case L.IDivC(a=a, c=c, mod=m):
                x = self.range(a, names)
                lo = self.env.lo(x)
                if lo < 0:
                    raise BoundsError(f"{self.where}: {L.format_index(a)} may be negative where it is "
                                      f"divided by {c} (unsigned division)")
                k = _constant(x)
                if k is not None:
                    return Range.exact(Affine(k % c if m else k // c))
                hi = self.env.hi(x)
                if m and hi < c:
                    return x
                # a symbol for the quotient or remainder, the same one for the same exact operand
                # (so that what a guard loop implies about it holds wherever it is recomputed); the
                # quotient q keeps c * q <= a as the rational bound q <= a / c: so (nt // 3) * 3
                # stays below nt, and a loop up to it below nt - 2 (remainder loops)
                a_exact = _exact(x)
                key = (a_exact, c, m)
                got = self._quotients.get(key) if a_exact is not None else None
                if got is None:
                    if m:
                        got = self.env.new([Affine(0)], [Affine(c - 1)])
                    else:
                        ups = ([Affine(math.floor(hi) // c)] if hi != INF else []) + \
                            [u.div(c) for u in x.ups if u.terms]
                        got = self.env.new([Affine(math.floor(lo) // c)], list(_cap(ups)))
                    if a_exact is not None:
                        self._quotients[key] = got
                return Range.exact(got)
            case L.IBin():
                raise AssertionError(e.op)
            case L.ILet(name=n, value=a):
                # (bound once: the name then means this value wherever it is used)
                if n not in names:
                    names[n] = self.bind(self.range(a, names))
                return names[n]
            case _:
                assert_never(e)

    def lets(self, e: L.Index, names: dict[str, Range]) -> None:
        """Bind the names ``e``'s ``ILet``\\ s introduce (into the block's ``names``), in evaluation
        order; one that cannot be bounded gets a symbol with no bounds (sound: nothing is assumed)."""
        match e:
            case L.IConst() | L.IVar():
                pass
            case L.IBin(a=a, b=b):
                self.lets(a, names)
                self.lets(b, names)
            case L.IDivC(a=a):
                self.lets(a, names)
            case L.ILet(name=n, value=a):
                self.lets(a, names)
                try:
                    self.range(e, names)
                except BoundsError:
                    names[n] = Range.exact(self.env.new([], []))
            case _:
                assert_never(e)

    def access(self, kind: str, buf: str, index: L.Index, width: int, names: dict[str, Range]) -> None:
        size = self.extents[buf]
        self.lets(index, names)
        if not size.terms:
            lo, hi = self.ival(index, names)
            if lo >= 0 and hi + width <= size.const:
                return
        r = self.range(index, names)
        ok_lo = self.env.lo(r) >= 0
        ok_hi = any(self.env.bound(u + Affine(width) - size, True) <= 0 for u in r.ups)
        if not (ok_lo and ok_hi):
            side = "before the start" if not ok_lo else "past the end"
            raise BoundsError(f"{self.where}: {kind} of {width} float{'s' if width > 1 else ''} at "
                              f"{L.format_index(index)} may reach {side} of buffer {buf}")

    def value(self, v: L.Value, names: dict[str, Range]) -> None:
        match v:
            case L.Load(buf=b, index=i, width=w):
                self.access("load", b, i, w, names)
            case L.ToFloat(index=i):
                self.lets(i, names)
            case L.FConst() | L.Local():
                pass
            case L.Broadcast(value=x) | L.Unary(a=x) | L.Reduce(a=x):
                self.value(x, names)
            case L.Bin(a=x, b=y) | L.SelectLanes(a=x, b=y):
                self.value(x, names)
                self.value(y, names)
            case L.FMA(a=x, b=y, c=z):
                self.value(x, names)
                self.value(y, names)
                self.value(z, names)
            case _:
                assert_never(v)

    def bind(self, r: Range) -> Range:
        """A name for the value ``r``: its affine form where exact, else a new symbol."""
        x = _exact(r)
        return Range.exact(x if x is not None else self.env.new(list(r.lows), list(r.ups)))

    def block(self, body: tuple[L.Stmt, ...], names: dict[str, Range], locs: dict[str, int]) -> None:
        names, locs = dict(names), dict(locs)
        for s in body:
            match s:
                case L.For(var=v, start=a, stop=b, step=st, body=inner):
                    ra, rb = self.range(a, names), self.range(b, names)
                    start = _exact(ra)
                    ups = [_last(u, start, st) if start is not None else u - Affine(1) for u in rb.ups]
                    names[v] = Range.exact(self.env.new(list(ra.lows), list(_cap(ups))))
                    # the body runs only where start < stop: a loop of at most one trip is how the
                    # loop IR guards a store (the ragged edge of a Winograd tile)
                    facts = [f for lo_ in ra.lows for up in rb.ups
                             if (f := self.env.assume(up - lo_ - Affine(1))) is not None]
                    if facts:
                        self._ivals.clear()  # (intervals computed under the facts hold only here)
                    self.block(inner, names, locs)
                    for f in reversed(facts):
                        self.env.forget(f)
                    if facts:  # (and quotients made under them may have bounds that hold only here)
                        self._ivals.clear()
                        self._quotients.clear()
                    del names[v]
                case L.LetIndex(name=n, value=e):
                    names[n] = self.bind(self.range(e, names))
                case L.DeclLocal(name=n, width=w, init=e):
                    self.value(e, names)
                    locs[n] = w
                case L.Assign(value=e):
                    self.value(e, names)
                case L.Store(buf=b, index=i, value=e, lanes=k):
                    self.value(e, names)
                    self.access("store", b, i, k or _width(e, locs), names)
                case L.Call(kernel=k, args=args):
                    ranges = [self.range(a, names) for a in args]
                    if self.where == "entry" and len(ranges) >= 2:
                        self.entry_nt[k] = max(self.entry_nt.get(k, -INF), self.env.hi(ranges[1]))
                    self.call(self.kernels[k], ranges)
                case L.Block(body=inner, binds=bs):
                    self.block(inner, {**names, **{n: Range.exact(Affine(k)) for n, k in bs}}, locs)
                case L.Comment():
                    pass
                case _:
                    assert_never(s)

    def call(self, k: L.Kernel, args: list[Range]) -> None:
        names = {p: self.bind(r) for p, r in zip(k.params, args)}
        outer, self.where = self.where, f"kernel {k.name}"
        self.block(k.body, names, {})
        self.where = outer


def _exact(r: Range) -> Affine | None:
    return r.lows[0] if len(r.lows) == 1 and (r.ups is r.lows or r.ups == r.lows) else None


def _constant(r: Range) -> int | Fraction | None:
    x = _exact(r)
    return x.const if x is not None and not x.terms else None


def _last(up: Affine, start: Affine, step: int) -> Affine:
    """An upper bound of the last value of ``for v in start..stop step s`` given ``stop <= up``:
    ``start + s * floor((up - start - 1) / s)``, kept affine when the symbolic part of
    ``up - start`` is a multiple of ``s`` (then it is ``up - c + s * floor((c - 1) / s)``)."""
    d = up - start
    if all(k % step == 0 for _, k in d.terms):
        return up - Affine(d.const) + Affine(step * ((d.const - 1) // step))
    return up - Affine(1)


def _width(v: L.Value, locs: dict[str, int]) -> int:
    match v:
        case L.FConst(width=w) | L.Load(width=w) | L.Broadcast(width=w) | L.ToFloat(width=w):
            return w
        case L.Reduce():
            return 1
        case L.FMA(a=x) | L.Bin(a=x) | L.Unary(a=x) | L.SelectLanes(a=x):
            return _width(x, locs)
        case L.Local(name=n):
            return locs[n]
        case _:
            assert_never(v)


def _extents(prog: L.Program, n: Affine) -> dict[str, Affine]:
    """Each buffer's size in floats; the caller's input and output hold ``n`` images."""
    return {b.name: n.scale(b.size) if b.kind in ("input", "output") else Affine(b.size) for b in prog.buffers}


def check_bounds(prog: L.Program) -> None:
    """Raise :class:`BoundsError` unless every load and store of ``prog`` stays inside its buffer,
    for every batch size ``n``.  Precondition: ``prog`` passed the structural checks of ``verify``."""
    kernels = {k.name: k for k in prog.kernels}
    env = _Env()
    n = env.new([Affine(0)], [])
    c = _Checker(prog, env, kernels, _extents(prog, n))
    c.block(prog.entry, {"n": Range.exact(n)}, {})
    for kn, extent in prog.stages:
        if extent <= 0:
            continue
        # as the threaded driver calls it: images [0, nt) of a batch of n >= nt, any part range
        env = _Env()
        n = env.new([Affine(1)], [])
        t = c.entry_nt.get(kn, INF)
        nt = env.new([Affine(1)], [n] + ([Affine(int(t))] if t != INF else []))
        r0 = env.new([Affine(0)], [Affine(extent)])
        r1 = env.new([r0], [Affine(extent)])
        stage = _Checker(prog, env, kernels, _extents(prog, n), "stage entry")
        stage.call(kernels[kn], [Range.exact(Affine(0)), Range.exact(nt), Range.exact(r0), Range.exact(r1)])
