"""Symbolic integer expressions for shapes: a canonicalising algebra.

A *dimension* (:data:`Dim`) is either a plain Python ``int`` or an
:class:`Expr`, an integer expression over named symbols (``N``, ``H``,
``W``, block parameters such as ``stride``) built from ``+ - *`` and floor
division ``//`` by a positive constant or by an expression assumed to be
``>= 1``.  An :class:`Expr` is never constant: every operation returns a plain
``int`` when the result does not depend on any symbol.

Every :class:`Expr` is kept in canonical form, so that expressions which are
equal (at least everything conv/pool output-size arithmetic produces) are
identical, compare ``==`` and hash alike::

    >>> H = sym("H")
    >>> (H + 2 - 3) // 1 + 1
    Expr('H')
    >>> ((H - 2) // 2 + 1 - 2) // 2 + 1
    Expr('H // 4')

Representation (internal, all plain tuples so they hash and compare):

* a *polynomial* is a tuple of ``(monomial, coefficient)`` pairs sorted by
  monomial, coefficients non-zero;
* a *monomial* is a sorted tuple of ``(atom, power)`` pairs (``()`` is the
  constant monomial);
* an *atom* is ``("s", name)`` for a symbol or ``("f", numerator, divisor)``
  for a floor, the numerator a polynomial and the divisor ``("c", d)`` with an
  int ``d >= 2`` or ``("p", polynomial)`` with a non-constant polynomial.

Floors with a constant divisor ``d`` are normalised so that every numerator
coefficient (the constant included) lies in ``[1, d)``, the numerator
coefficients and ``d`` are coprime, and a floor whose numerator is exactly
``floor(q / a) + s`` (``s`` floor-free) is merged into ``floor((q + a*s) / (a*d))``.

Deciding facts (:func:`prove_equal`, :func:`prove_ge`) uses the fact that
substituting ``s = L*s' + r`` (``L`` a multiple of every constant divisor that
acts on ``s``) removes every floor, leaving one plain polynomial per residue
class.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
from dataclasses import dataclass, field
from numbers import Integral
from typing import Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

__all__ = [
    "Expr",
    "Dim",
    "UnboundSymbol",
    "sym",
    "as_dim",
    "evaluate",
    "substitute",
    "free_symbols",
    "to_str",
    "to_json",
    "is_const",
    "period",
    "Domain",
    "Verdict",
    "prove_equal",
    "prove_ge",
    "minimal_values",
    "residues_where",
]

# ---------------------------------------------------------------------------
# Polynomial kernel (internal)
# ---------------------------------------------------------------------------

_ZERO: tuple = ()


def _mk(d: dict) -> tuple:
    return tuple(sorted((m, c) for m, c in d.items() if c))


def _const(c: int) -> tuple:
    return (((), c),) if c else _ZERO


def _is_const(p: tuple) -> bool:
    return not p or (len(p) == 1 and p[0][0] == ())


def _const_val(p: tuple) -> int:
    return p[0][1] if p else 0


def _add(p: tuple, q: tuple, k: int = 1) -> tuple:
    if not q or not k:
        return p
    d = dict(p)
    for m, c in q:
        d[m] = d.get(m, 0) + k * c
    return _mk(d)


def _scale(p: tuple, k: int) -> tuple:
    if not k:
        return _ZERO
    return tuple((m, c * k) for m, c in p)


def _mono_mul(m1: tuple, m2: tuple) -> tuple:
    if not m1:
        return m2
    if not m2:
        return m1
    d = dict(m1)
    for a, e in m2:
        d[a] = d.get(a, 0) + e
    return tuple(sorted(d.items()))


def _mul(p: tuple, q: tuple) -> tuple:
    d: dict = {}
    for m1, c1 in p:
        for m2, c2 in q:
            m = _mono_mul(m1, m2)
            d[m] = d.get(m, 0) + c1 * c2
    return _mk(d)


def _pow(p: tuple, e: int) -> tuple:
    r = _const(1)
    for _ in range(e):
        r = _mul(r, p)
    return r


def _mono_divides(md: tuple, m: tuple) -> Optional[tuple]:
    """``m / md`` if the monomial ``md`` divides ``m``, else None."""
    d = dict(m)
    for a, e in md:
        if d.get(a, 0) < e:
            return None
        d[a] -= e
        if not d[a]:
            del d[a]
    return tuple(sorted(d.items()))


def _content(p: tuple) -> int:
    return math.gcd(*(c for _, c in p)) if p else 0


def _has_floor_mono(m: tuple) -> bool:
    return any(a[0] == "f" for a, _ in m)


def _atom_poly(atom: tuple) -> tuple:
    return ((((atom, 1),), 1),)


def _den_poly(den) -> tuple:
    return _const(den) if isinstance(den, int) else den


def _den_mul(a, b):
    """Product of two divisors (int or non-constant polynomial)."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return _mul(_den_poly(a), _den_poly(b))


def _floordiv(p: tuple, den) -> tuple:
    """Canonical polynomial for ``floor(p / den)``; den an int or a polynomial."""
    if not isinstance(den, int):
        if _is_const(den):
            den = _const_val(den)
        else:
            return _floordiv_sym(p, den)
    if den <= 0:
        raise ValueError(f"floor division by non-positive constant {den}")
    return _floordiv_const(p, den)


def _floordiv_const(p: tuple, d: int) -> tuple:
    if d == 1 or not p:
        return p
    outside: dict = {}
    inside: dict = {}
    for m, c in p:
        q, r = divmod(c, d)
        if q:
            outside[m] = q
        if r:
            inside[m] = r
    out = _mk(outside)
    if not inside:
        return out
    ins = _mk(inside)
    # floor((g*P + c) / (g*d')) == floor((P + c // g) / d')  with g = gcd(d, non-constant coeffs)
    g = math.gcd(d, *(c for m, c in ins if m != ()))
    if g > 1:
        ins = _mk({m: c // g for m, c in ins})
        d //= g
    if _is_const(ins):  # 0 < r < d
        return out
    merged = _try_merge(ins, d)
    if merged is not None:
        return _add(out, merged)
    return _add(out, _atom_poly(("f", ins, ("c", d))))


def _try_merge(num: tuple, den) -> Optional[tuple]:
    """``floor((floor(q/a) + s) / den) == floor((q + a*s) / (a*den))`` for integer s."""
    floor_terms = [(m, c) for m, c in num if _has_floor_mono(m)]
    if len(floor_terms) != 1:
        return None
    m, c = floor_terms[0]
    if c != 1 or len(m) != 1 or m[0][1] != 1:
        return None
    atom = m[0][0]
    q, a = atom[1], atom[2][1]
    s = tuple(t for t in num if t[0] != m)
    new_num = _add(q, _mul(_den_poly(a), s))
    return _floordiv(new_num, _den_mul(a, den))


def _floordiv_sym(p: tuple, D: tuple) -> tuple:
    """floor(p / D) with D a non-constant polynomial assumed >= 1."""
    if not p:
        return _ZERO
    g = math.gcd(_content(D), *(c for m, c in p if m != ()))
    if g > 1:  # the constant term may lose its remainder mod g (D assumed >= 1)
        p = _mk({m: c // g for m, c in p})
        D = tuple((m, c // g) for m, c in D)
        if not p:
            return _ZERO
    out = _ZERO
    rest = p
    if len(D) == 1 and D[0][1] > 0:
        md, cd = D[0]
        outside: dict = {}
        inside: dict = {}
        for m, c in p:
            quot = _mono_divides(md, m)
            if quot is not None:
                q, r = divmod(c, cd)
                if q:
                    outside[quot] = outside.get(quot, 0) + q
                if r:
                    inside[m] = inside.get(m, 0) + r
            else:
                inside[m] = inside.get(m, 0) + c
        out = _mk(outside)
        rest = _mk(inside)
        if not rest:
            return out
        if math.gcd(cd, *(c for m, c in rest if m != ())) > 1:
            return _add(out, _floordiv_sym(rest, D))
    else:
        # exact multiple k * D
        lm, lc = D[-1]
        pd = dict(p)
        if lm in pd and pd[lm] % lc == 0:
            k = pd[lm] // lc
            if _add(p, D, -k) == _ZERO:
                return _const(k)
    merged = _try_merge(rest, D)
    if merged is not None:
        return _add(out, merged)
    return _add(out, _atom_poly(("f", rest, ("p", D))))


# ---------------------------------------------------------------------------
# Expr
# ---------------------------------------------------------------------------


class UnboundSymbol(KeyError):
    """A symbol had no value in the environment given to :func:`evaluate`."""

    def __init__(self, symbol: str):
        super().__init__(symbol)
        self.symbol = symbol

    def __str__(self) -> str:
        return f"unbound symbol {self.symbol!r}"


def _to_poly(x) -> tuple:
    if isinstance(x, Expr):
        return x._p
    if isinstance(x, bool):
        raise TypeError("bool is not a dimension")
    if isinstance(x, Integral):
        return _const(int(x))
    raise TypeError(f"not a dimension: {x!r}")


def _wrap(p: tuple) -> "Dim":
    if _is_const(p):
        return _const_val(p)
    return Expr._from_poly(p)


class Expr:
    """A non-constant integer expression in canonical form (immutable, hashable)."""

    __slots__ = ("_p", "_h")

    def __init__(self, *_a, **_k):
        raise TypeError("use sym(name) and arithmetic to build expressions")

    @classmethod
    def _from_poly(cls, p: tuple) -> "Expr":
        e = object.__new__(cls)
        object.__setattr__(e, "_p", p)
        object.__setattr__(e, "_h", hash(("Expr", p)))
        return e

    def __setattr__(self, name, value):
        raise AttributeError("Expr is immutable")

    def __reduce__(self):
        return (Expr._from_poly, (self._p,))

    # identity ------------------------------------------------------------
    def __eq__(self, other):
        if isinstance(other, Expr):
            return self._h == other._h and self._p == other._p
        if isinstance(other, Integral):
            return False  # an Expr is never constant
        return NotImplemented

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __hash__(self):
        return self._h

    def __str__(self):
        return _fmt_poly(self._p)

    def __repr__(self):
        return f"Expr({_fmt_poly(self._p)!r})"

    # arithmetic ------------------------------------------------------------
    def __add__(self, o):
        try:
            return _wrap(_add(self._p, _to_poly(o)))
        except TypeError:
            return NotImplemented

    __radd__ = __add__

    def __sub__(self, o):
        try:
            return _wrap(_add(self._p, _to_poly(o), -1))
        except TypeError:
            return NotImplemented

    def __rsub__(self, o):
        try:
            return _wrap(_add(_to_poly(o), self._p, -1))
        except TypeError:
            return NotImplemented

    def __mul__(self, o):
        try:
            return _wrap(_mul(self._p, _to_poly(o)))
        except TypeError:
            return NotImplemented

    __rmul__ = __mul__

    def __neg__(self):
        return _wrap(_scale(self._p, -1))

    def __pos__(self):
        return self

    def __floordiv__(self, o):
        try:
            q = _to_poly(o)
        except TypeError:
            return NotImplemented
        return _wrap(_floordiv(self._p, q))

    def __rfloordiv__(self, o):
        try:
            p = _to_poly(o)
        except TypeError:
            return NotImplemented
        return _wrap(_floordiv(p, self._p))

    def __mod__(self, o):
        try:
            q = _to_poly(o)
        except TypeError:
            return NotImplemented
        return _wrap(_add(self._p, _mul(q, _floordiv(self._p, q)), -1))

    def __rmod__(self, o):
        try:
            p = _to_poly(o)
        except TypeError:
            return NotImplemented
        return _wrap(_add(p, _mul(self._p, _floordiv(p, self._p)), -1))

    def __bool__(self):
        return True  # never the constant 0


Dim = Union[int, Expr]


def sym(name: str) -> Expr:
    """The expression consisting of the single symbol ``name``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"bad symbol name {name!r}")
    return Expr._from_poly(_atom_poly(("s", name)))


def as_dim(x) -> Dim:
    """Normalise an int-like or Expr to a :data:`Dim` (plain int when constant)."""
    if isinstance(x, Expr):
        return x
    return _wrap(_to_poly(x))


def is_const(d: Dim) -> bool:
    return not isinstance(d, Expr)


# ---------------------------------------------------------------------------
# evaluate / substitute / free_symbols
# ---------------------------------------------------------------------------


def _eval_poly(p: tuple, env: Mapping[str, int]) -> int:
    total = 0
    for m, c in p:
        v = c
        for a, e in m:
            v *= _eval_atom(a, env) ** e
        total += v
    return total


def _eval_atom(a: tuple, env: Mapping[str, int]) -> int:
    if a[0] == "s":
        try:
            return int(env[a[1]])
        except KeyError:
            raise UnboundSymbol(a[1]) from None
    num = _eval_poly(a[1], env)
    den = a[2][1] if a[2][0] == "c" else _eval_poly(a[2][1], env)
    if den <= 0:
        raise ValueError(f"floor division by non-positive value {den}")
    return num // den


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    """The value of ``d`` with every symbol bound by ``env``.

    Raises :class:`UnboundSymbol` (a KeyError) naming a missing symbol and
    ValueError if a symbolic divisor evaluates to ``<= 0``.
    """
    if isinstance(d, Expr):
        return _eval_poly(d._p, env)
    return int(operator.index(d))


def _subst_poly(p: tuple, env: Mapping[str, tuple]) -> tuple:
    total: tuple = _ZERO
    for m, c in p:
        term = _const(c)
        for a, e in m:
            term = _mul(term, _pow(_subst_atom(a, env), e))
        total = _add(total, term)
    return total


def _subst_atom(a: tuple, env: Mapping[str, tuple]) -> tuple:
    if a[0] == "s":
        v = env.get(a[1])
        return _atom_poly(a) if v is None else v
    num = _subst_poly(a[1], env)
    den = a[2][1] if a[2][0] == "c" else _subst_poly(a[2][1], env)
    return _floordiv(num, den)


def substitute(d: Dim, env: Mapping[str, Dim]) -> Dim:
    """Replace symbols by dimensions (simultaneously); the result is canonical."""
    if not isinstance(d, Expr):
        return int(d)
    penv = {k: _to_poly(v) for k, v in env.items()}
    return _wrap(_subst_poly(d._p, penv))


def _free_poly(p: tuple, acc: set) -> None:
    for m, _ in p:
        for a, _e in m:
            if a[0] == "s":
                acc.add(a[1])
            else:
                _free_poly(a[1], acc)
                if a[2][0] == "p":
                    _free_poly(a[2][1], acc)


def free_symbols(d: Dim) -> frozenset:
    if not isinstance(d, Expr):
        return frozenset()
    acc: set = set()
    _free_poly(d._p, acc)
    return frozenset(acc)


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------


def _alpha(s: str):
    return (s.casefold(), s)


def _fmt_floor(a: tuple) -> str:
    num, den = a[1], a[2]
    if len(num) == 1 and num[0][1] == 1 and len(num[0][0]) == 1 and num[0][0][0][1] == 1 \
            and num[0][0][0][0][0] == "s":
        ns = num[0][0][0][0][1]
    elif _is_const(num) and _const_val(num) >= 0:
        ns = str(_const_val(num))
    else:
        ns = "(" + _fmt_poly(num) + ")"
    if den[0] == "c":
        ds = str(den[1])
    else:
        dp = den[1]
        if len(dp) == 1 and dp[0][1] == 1 and len(dp[0][0]) == 1 and dp[0][0][0][1] == 1 \
                and dp[0][0][0][0][0] == "s":
            ds = dp[0][0][0][0][1]
        else:
            ds = "(" + _fmt_poly(dp) + ")"
    return f"{ns} // {ds}"


def _mono_parts(m: tuple) -> tuple[list, list]:
    syms, floors = [], []
    for a, e in m:
        if a[0] == "s":
            syms.extend([a[1]] * e)
        else:
            floors.extend([_fmt_floor(a)] * e)
    syms.sort(key=_alpha)
    floors.sort(key=_alpha)
    return syms, floors


def _term_key(m: tuple):
    syms, floors = _mono_parts(m)
    return (-sum(e for _, e in m), len(floors), [_alpha(s) for s in syms], floors)


def _fmt_poly(p: tuple) -> str:
    if not p:
        return "0"
    const = 0
    terms = []
    for m, c in p:
        if m == ():
            const = c
        else:
            terms.append((_term_key(m), m, c))
    terms.sort(key=lambda t: t[0])
    out = []
    for i, (_, m, c) in enumerate(terms):
        syms, floors = _mono_parts(m)
        mag = abs(c)
        if mag == 1 and not syms and len(floors) == 1:
            body = floors[0]
            bare_floor = True
        else:
            factors = ([str(mag)] if mag != 1 else []) + syms + ["(" + f + ")" for f in floors]
            body = " * ".join(factors)
            bare_floor = False
        if i == 0:
            if c < 0:
                out.append(f"-({body})" if bare_floor else f"-{body}")
            else:
                out.append(body)
        else:
            out.append((" - " if c < 0 else " + ") + body)
    if const:
        if not out:
            return str(const)
        out.append((" - " if const < 0 else " + ") + str(abs(const)))
    return "".join(out)


def to_str(d: Dim) -> str:
    if isinstance(d, Expr):
        return _fmt_poly(d._p)
    return str(int(d))


def to_json(d: Dim) -> Union[int, str]:
    return to_str(d) if isinstance(d, Expr) else int(d)


# ---------------------------------------------------------------------------
# Domains and verdicts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """The values the symbols may take.

    ``lower[s]``: ``s >= value`` (a symbol not listed is ``>= 1``);
    ``multiple_of[s]``: ``s % value == 0``; ``fixed[s]``: ``s == value``.
    """

    lower: Mapping[str, int] = field(default_factory=dict)
    multiple_of: Mapping[str, int] = field(default_factory=dict)
    fixed: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for s, m in self.multiple_of.items():
            if m < 1:
                raise ValueError(f"multiple_of[{s!r}] must be >= 1, got {m}")

    def __hash__(self):
        return hash(tuple(frozenset(m.items()) for m in (self.lower, self.multiple_of, self.fixed)))

    def lower_of(self, s: str) -> int:
        return self.lower.get(s, 1)

    def step(self, s: str) -> int:
        return self.multiple_of.get(s, 1)

    def start(self, s: str) -> int:
        """The smallest value of ``s`` ignoring ``fixed``."""
        lo, m = self.lower_of(s), self.step(s)
        return -((-lo) // m) * m

    def contains(self, point: Mapping[str, int]) -> bool:
        for s, v in point.items():
            if s in self.fixed and self.fixed[s] != v:
                return False
            if v < self.lower_of(s) or v % self.step(s):
                return False
        return True

    def fixed_ok(self) -> bool:
        return self.contains(dict(self.fixed))


@dataclass(frozen=True)
class Verdict:
    status: Literal["proved", "disproved", "unknown"]
    counterexample: Optional[dict] = None

    @property
    def proved(self) -> bool:
        return self.status == "proved"

    @property
    def disproved(self) -> bool:
        return self.status == "disproved"


_PROVED = Verdict("proved")
_UNKNOWN = Verdict("unknown")
_MAX_CLASSES = 4096
_MAX_GRID = 20000


def _periods_poly(p: tuple, acc: dict, factor: int) -> bool:
    for m, _ in p:
        for a, _e in m:
            if a[0] == "s":
                acc[a[1]] = math.lcm(acc.get(a[1], 1), factor)
            else:
                if a[2][0] != "c":
                    return False
                if not _periods_poly(a[1], acc, factor * a[2][1]):
                    return False
    return True


def period(d: Dim) -> Optional[dict]:
    """Per symbol ``s`` a modulus ``L_s`` such that substituting ``s = L_s*s' + r``
    removes every floor; None if ``d`` has a symbolic divisor."""
    acc: dict = {}
    if isinstance(d, Expr):
        if not _periods_poly(d._p, acc, 1):
            return None
        for s in free_symbols(d):
            acc.setdefault(s, 1)
    return acc


def _poly_degrees(p: tuple) -> dict:
    deg: dict = {}
    for m, _ in p:
        for a, e in m:
            if a[0] == "s":
                deg[a[1]] = max(deg.get(a[1], 0), e)
    return deg


def _class_polys(diff: Expr, domain: Domain):
    """Yield ``(moduli, residues, starts, poly)`` per residue class, or return
    None (via a first yield of None) when not applicable."""
    per = period(diff)
    if per is None:
        return None
    syms = sorted(per)
    mods = {s: math.lcm(per[s], domain.step(s)) for s in syms}
    res_lists = [[r for r in range(mods[s]) if r % domain.step(s) == 0] for s in syms]
    if math.prod(len(r) for r in res_lists) > _MAX_CLASSES:
        return None
    return _iter_classes(diff, domain, syms, mods, res_lists)


def _iter_classes(diff, domain, syms, mods, res_lists):
    for combo in itertools.product(*res_lists):
        env = {}
        starts = {}
        for s, r in zip(syms, combo):
            L = mods[s]
            env[s] = _add(_const(r), _atom_poly(("s", s)), L) if L != 1 or r else _atom_poly(("s", s))
            # s = L*s' + r >= lower  <=>  s' >= ceil((lower - r) / L)
            starts[s] = -((r - domain.lower_of(s)) // L)
        P = _subst_poly(diff._p, env)
        yield mods, dict(zip(syms, combo)), starts, P


def _back(mods, res, vals) -> dict:
    return {s: mods[s] * vals[s] + res[s] for s in vals}


def _find_nonzero(P: tuple, starts: dict) -> Optional[dict]:
    """A point (s' >= starts) where the floor-free polynomial P is non-zero."""
    deg = _poly_degrees(P)
    syms = sorted(deg)
    if math.prod(deg[s] + 1 for s in syms) <= _MAX_GRID:
        ranges = [range(starts[s], starts[s] + deg[s] + 1) for s in syms]
        for pt in itertools.product(*ranges):
            env = dict(zip(syms, pt))
            if _eval_poly(P, env):
                return {**{s: starts[s] for s in starts}, **env}
    rng = random.Random(1)
    for _ in range(2000):
        env = {s: starts[s] + rng.randrange(0, 64) for s in syms}
        if _eval_poly(P, env):
            return {**{s: starts[s] for s in starts}, **env}
    return None


def _complete(point: dict, symbols: Iterable[str], domain: Domain) -> dict:
    """Give every symbol of interest a value in the domain."""
    out = {}
    for s in sorted(set(symbols) | set(point)):
        if s in domain.fixed:
            out[s] = domain.fixed[s]
        elif s in point:
            out[s] = point[s]
        else:
            out[s] = domain.start(s)
    return out


def _sample_points(symbols: Sequence[str], domain: Domain, seed: int = 0):
    syms = sorted(symbols)
    n = len(syms)
    if n == 0:
        yield {}
        return
    k = max(2, min(24, int(2000 ** (1.0 / n))))
    for pt in itertools.product(range(k), repeat=n):
        yield {s: domain.start(s) + domain.step(s) * i for s, i in zip(syms, pt)}
    rng = random.Random(seed)
    for scale in (8, 64, 1024, 1 << 16):
        for _ in range(150):
            yield {s: domain.start(s) + domain.step(s) * rng.randrange(scale) for s in syms}


def _search(pred_fails: Callable[[dict], bool], symbols: Iterable[str], domain: Domain) -> Optional[dict]:
    for pt in _sample_points(sorted(set(symbols)), domain):
        try:
            if pred_fails(pt):
                return pt
        except (ValueError, ZeroDivisionError):
            continue
    return None


def _prepare(a: Dim, b: Dim, domain: Domain):
    a, b = as_dim(a), as_dim(b)
    orig_syms = free_symbols(a) | free_symbols(b)
    if domain.fixed:
        fx = {s: v for s, v in domain.fixed.items()}
        a2, b2 = substitute(a, fx), substitute(b, fx)
    else:
        a2, b2 = a, b
    return a, b, a2, b2, orig_syms


def prove_equal(a: Dim, b: Dim, domain: Domain = Domain()) -> Verdict:
    """Is ``a == b`` at every point of ``domain``?"""
    a, b, a2, b2, orig = _prepare(a, b, domain)
    if a == b:
        return _PROVED
    if not domain.fixed_ok():
        return _UNKNOWN  # empty domain
    diff = as_dim(a2 - b2)
    if not isinstance(diff, Expr):
        if diff == 0:
            return _PROVED
        return Verdict("disproved", _complete({}, orig, domain))
    classes = _class_polys(diff, domain)
    if classes is not None:
        all_zero = True
        for mods, res, starts, P in classes:
            if not P:
                continue
            if not _is_const(P) and any(_has_floor_mono(m) for m, _ in P):
                all_zero = False  # should not happen
                continue
            pt = _find_nonzero(P, starts)
            if pt is not None:
                return Verdict("disproved", _complete(_back(mods, res, pt), orig, domain))
            all_zero = False
        if all_zero:
            return _PROVED
    pt = _search(lambda e: _eval_poly(diff._p, e) != 0, free_symbols(diff), domain)
    if pt is not None:
        return Verdict("disproved", _complete(pt, orig, domain))
    return _UNKNOWN


def _nonneg_orthant(Q: tuple, budget: list) -> bool:
    """Certain proof that the floor-free Q >= 0 for all integer t >= 0 (False = not shown).

    If ``Q(t + c)`` has only non-negative coefficients, Q >= 0 wherever every
    ``t_i >= c``; the rest of the orthant is covered by fixing one ``t_i`` to
    each value below ``c`` and recursing on the remaining variables.
    """
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if all(c >= 0 for _, c in Q):
        return True
    syms = sorted(_poly_degrees(Q))
    if not syms:
        return _const_val(Q) >= 0
    for c in (1, 2, 4, 8, 16, 32):
        shifted = _subst_poly(Q, {s: _add(_atom_poly(("s", s)), _const(c)) for s in syms})
        if all(k >= 0 for _, k in shifted):
            for s in syms:
                for v in range(c):
                    if not _nonneg_orthant(_subst_poly(Q, {s: _const(v)}), budget):
                        return False
            return True
    return False


def _nonneg_class(P: tuple, starts: dict) -> Optional[Union[bool, dict]]:
    """True if P >= 0 for all s' >= starts; a point (dict) where P < 0; or None."""
    syms = sorted(_poly_degrees(P))
    shift = {s: _add(_atom_poly(("s", s)), _const(starts[s])) for s in syms}
    Q = _subst_poly(P, shift)  # in t = s' - start >= 0
    if all(c >= 0 for _, c in Q):
        return True
    if _nonneg_orthant(Q, [400]):
        return True
    if dict(Q).get((), 0) < 0:
        return {s: starts[s] for s in starts}
    n = len(syms)
    k = max(2, min(16, int(4000 ** (1.0 / max(n, 1)))))
    for pt in itertools.product(range(k), repeat=n):
        env = dict(zip(syms, pt))
        if _eval_poly(Q, env) < 0:
            return {**starts, **{s: starts[s] + env[s] for s in syms}}
    rng = random.Random(2)
    for scale in (64, 4096, 1 << 20):
        for _ in range(200):
            env = {s: rng.randrange(scale) for s in syms}
            if _eval_poly(Q, env) < 0:
                return {**starts, **{s: starts[s] + env[s] for s in syms}}
    return None


def prove_ge(a: Dim, b: Dim, domain: Domain = Domain()) -> Verdict:
    """Is ``a >= b`` at every point of ``domain``?"""
    a, b, a2, b2, orig = _prepare(a, b, domain)
    if a == b:
        return _PROVED
    if not domain.fixed_ok():
        return _UNKNOWN
    diff = as_dim(a2 - b2)
    if not isinstance(diff, Expr):
        if diff >= 0:
            return _PROVED
        return Verdict("disproved", _complete({}, orig, domain))
    classes = _class_polys(diff, domain)
    if classes is not None:
        all_ok = True
        for mods, res, starts, P in classes:
            if any(_has_floor_mono(m) for m, _ in P):
                all_ok = False
                continue
            r = _nonneg_class(P, starts)
            if r is True:
                continue
            if isinstance(r, dict):
                return Verdict("disproved", _complete(_back(mods, res, r), orig, domain))
            all_ok = False
        if all_ok:
            return _PROVED
    pt = _search(lambda e: _eval_poly(diff._p, e) < 0, free_symbols(diff), domain)
    if pt is not None:
        return Verdict("disproved", _complete(pt, orig, domain))
    return _UNKNOWN


# ---------------------------------------------------------------------------
# Minimal valid sizes
# ---------------------------------------------------------------------------

_CAP = 1 << 24


def minimal_values(conds: Sequence[Dim], domain: Domain = Domain(),
                   symbols: Iterable[str] = ()) -> Optional[dict]:
    """Smallest value of each symbol such that every cond evaluates ``>= 1``.

    Each cond must be non-decreasing in every symbol.  Monotone fixpoint: per
    symbol an exponential then binary search, others held fixed, until stable.
    Returns None if impossible (constant cond < 1, a fixed value violating a
    cond, or no value up to 2**24).
    """
    conds = [as_dim(c) for c in conds]
    for c in conds:
        if not isinstance(c, Expr) and c < 1:
            return None
    conds = [c for c in conds if isinstance(c, Expr)]
    syms = set(symbols)
    for c in conds:
        syms |= free_symbols(c)
    if not domain.contains({s: v for s, v in domain.fixed.items() if s in syms}):
        return None
    cur = {s: (domain.fixed[s] if s in domain.fixed else domain.start(s)) for s in syms}
    by_sym = {s: [c for c in conds if s in free_symbols(c)] for s in syms}

    def ok(c, env) -> bool:
        try:
            return evaluate(c, env) >= 1
        except (ValueError, ZeroDivisionError):
            return False

    def all_ok(cs, env) -> bool:
        return all(ok(c, env) for c in cs)

    for _ in range(1000):
        if all_ok(conds, cur):
            return cur
        changed = False
        for s in sorted(syms):
            if s in domain.fixed:
                continue
            cs = [c for c in by_sym[s] if not ok(c, cur)]
            if not cs:
                continue
            cs = by_sym[s]
            base, m = cur[s], domain.step(s)

            def good(k: int) -> bool:
                return all_ok(cs, {**cur, s: base + m * k})

            hi = 1
            while not good(hi):
                if base + m * hi > _CAP:
                    hi = None
                    break
                hi *= 2
            if hi is None:
                continue
            lo = hi // 2  # good(lo) is False (lo == 0 was checked failing)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if good(mid):
                    hi = mid
                else:
                    lo = mid
            cur[s] = base + m * hi
            changed = True
        if not changed:
            return None
    return None


def residues_where(pred: Callable[..., bool], symbol: str, *exprs: Dim,
                   domain: Domain = Domain()) -> Optional[tuple]:
    """Residue classes of ``symbol`` on which ``pred(*values of exprs)`` holds.

    Returns ``(modulus, residues)``: ``modulus`` is the lcm of the periods of
    ``symbol`` in ``exprs`` and ``domain.multiple_of``; ``pred`` is evaluated
    once per residue class ``r`` (compatible with ``multiple_of``), at the
    smallest value of ``symbol`` in the domain congruent to ``r``, other
    symbols at their smallest domain values.  Exact when the predicate is
    periodic in ``symbol`` with that modulus (e.g. ``(H - k) % s != 0``).
    None if an expression has a symbolic divisor.
    """
    L = domain.step(symbol)
    others: set = set()
    for e in exprs:
        p = period(e)
        if p is None:
            return None
        L = math.lcm(L, p.get(symbol, 1))
        others |= free_symbols(e)
    others.discard(symbol)
    env = {s: (domain.fixed[s] if s in domain.fixed else domain.start(s)) for s in others}
    step = domain.step(symbol)
    if symbol in domain.fixed:
        v = domain.fixed[symbol]
        vals = [evaluate(e, {**env, symbol: v}) for e in exprs]
        return (L, [v % L] if pred(*vals) else [])
    start = domain.start(symbol)
    out = []
    for r in range(0, L, step):
        v = start + ((r - start) % L)
        vals = [evaluate(e, {**env, symbol: v}) for e in exprs]
        if pred(*vals):
            out.append(r)
    return (L, out)
