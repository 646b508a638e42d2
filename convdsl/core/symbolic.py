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
import os
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
    # Declared for the type checker: the slots are filled once, in _from_poly, through
    # object.__setattr__ (the class forbids assignment so that hashes stay valid).
    _p: tuple
    _h: int

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

    def __post_init__(self) -> None:
        for s, m in self.multiple_of.items():
            if m < 1:
                raise ValueError(f"multiple_of[{s!r}] must be >= 1, got {m}")

    def __hash__(self) -> int:
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
    """A proof question's answer.  ``counterexample`` (with ``disproved``) is a point
    of the domain, checked by evaluation, where the fact fails; ``reason`` (with
    ``unknown``) says why the prover gave up, naming the limit it reached if any."""

    status: Literal["proved", "disproved", "unknown"]
    counterexample: Optional[dict] = None
    reason: Optional[str] = None

    @property
    def proved(self) -> bool:
        return self.status == "proved"

    @property
    def disproved(self) -> bool:
        return self.status == "disproved"


_PROVED = Verdict("proved")

# ---------------------------------------------------------------------------
# Limits on proof work
# ---------------------------------------------------------------------------

LIMITS_DOC = "docs/limits.md"


@dataclass(frozen=True)
class ProofLimit:
    """A cap on what one proof question may cost, raisable from the environment."""

    what: str
    env: str
    default: int
    unit: str

    def value(self) -> int:
        """The cap in force; a value that is not a positive integer falls back to the
        default (:func:`limit_problems` reports it, so the checker can say so)."""
        raw = os.environ.get(self.env, "").strip()
        if raw.isdigit() and int(raw) >= 1:
            return int(raw)
        return self.default

    def problem(self) -> Optional[str]:
        raw = os.environ.get(self.env, "").strip()
        if not raw or (raw.isdigit() and int(raw) >= 1):
            return None
        return (f"{self.env}={raw!r} is not a positive integer; the {self.what} limit stays at "
                f"{self.default:,} {self.unit} (see {LIMITS_DOC})")

    def reached(self, detail: str) -> str:
        return (f"{detail}, past the {self.what} limit of {self.value():,} {self.unit} "
                f"(set {self.env} to raise it; see {LIMITS_DOC})")


# Steps are polynomial terms built or evaluated, 5-10 microseconds each, so the
# default keeps any one question well under a second.
MAX_PROOF_WORK = ProofLimit("proof-work", "CONVDSL_MAX_PROOF_WORK", 50_000, "steps")
# Splitting into residue classes is exact but costs one polynomial per class: the
# product over symbols of the lcm of the divisors acting on each.
MAX_PROOF_PERIOD = ProofLimit("divisor-size", "CONVDSL_MAX_PROOF_PERIOD", 10_000, "residue classes")

# No size past this is checked for: 64-bit generated code cannot index it.
SIZE_LIMIT = 2**63 - 1


def limit_problems() -> list:
    """Messages for proof-limit variables set to something that is not a positive integer."""
    return [p for p in (MAX_PROOF_WORK.problem(), MAX_PROOF_PERIOD.problem()) if p]


class _OutOfWork(Exception):
    pass


class _Work:
    """The proof-work allowance of one question."""

    __slots__ = ("left",)

    def __init__(self, steps: int):
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise _OutOfWork


def _eval_cost(p: tuple) -> int:
    return len(p) + sum(_eval_cost(a[1]) for m, _ in p for a, _e in m if a[0] == "f")


# ---------------------------------------------------------------------------
# Periods and residue classes
# ---------------------------------------------------------------------------


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


def _poly_symbols(p: tuple) -> set:
    acc: set = set()
    _free_poly(p, acc)
    return acc


def _sym_poly(s: str) -> tuple:
    return _atom_poly(("s", s))


@dataclass(frozen=True)
class _Reduced:
    """A question moved onto the multiples of the domain: each symbol ``s`` with
    ``multiple_of[s] == m`` is replaced by ``m * t`` (``t`` keeps the name), so a
    modulus costs nothing however large it is.  ``lower[s]`` bounds ``t``."""

    poly: tuple
    lower: dict
    scale: dict

    def back(self, point: Mapping[str, int]) -> dict:
        return {s: self.scale.get(s, 1) * v for s, v in point.items()}


def _reduce(p: tuple, domain: Domain) -> _Reduced:
    syms = _poly_symbols(p)
    env, lower, scale = {}, {}, {}
    for s in syms:
        m = domain.step(s)
        lower[s] = domain.start(s) // m
        if m > 1:
            scale[s] = m
            env[s] = _scale(_sym_poly(s), m)
    return _Reduced(_subst_poly(p, env) if env else p, lower, scale)


def _classes(r: _Reduced, work: _Work):
    """Per residue class of the (reduced) symbols: ``(moduli, residues, starts,
    floor-free polynomial)``.  Raises ``_Unsplittable`` (with the reason) first if
    the polynomial has a symbolic divisor or too many classes."""
    per = period(Expr._from_poly(r.poly)) if not _is_const(r.poly) else {}
    if per is None:
        raise _Unsplittable("a divisor is symbolic")
    syms = sorted(per)
    count = math.prod(per[s] for s in syms)
    if count > MAX_PROOF_PERIOD.value():
        raise _Unsplittable(MAX_PROOF_PERIOD.reached(
            "splitting by the divisors needs " + " x ".join(f"{per[s]:,}" for s in syms if per[s] > 1)
            + f" = {count:,} residue classes"))
    return _iter_classes(r, syms, per, work)


class _Unsplittable(Exception):
    pass


def _iter_classes(r: _Reduced, syms: list, mods: dict, work: _Work):
    for combo in itertools.product(*(range(mods[s]) for s in syms)):
        env, starts = {}, {}
        for s, res in zip(syms, combo):
            L = mods[s]
            if L != 1 or res:
                env[s] = _add(_const(res), _sym_poly(s), L)
            # t = L*t' + res >= lower  <=>  t' >= ceil((lower - res) / L)
            starts[s] = -((res - r.lower[s]) // L)
        work.spend(_eval_cost(r.poly) * (1 + len(env)))
        P = _subst_poly(r.poly, env) if env else r.poly
        work.spend(len(P))
        yield mods, dict(zip(syms, combo)), starts, P


def _back(mods: dict, res: dict, vals: dict) -> dict:
    return {s: mods[s] * vals[s] + res[s] for s in vals}


# ---------------------------------------------------------------------------
# Floor-free polynomials: zero and sign
# ---------------------------------------------------------------------------

_MAX_GRID = 20000


def _find_nonzero(P: tuple, starts: dict, work: _Work) -> Optional[dict]:
    """A point (s' >= starts) where the floor-free, non-zero polynomial P is non-zero.

    A polynomial of degree d_i in each variable that vanishes on a grid of
    d_i + 1 points per variable is zero, so the grid finds a point when it fits."""
    deg = _poly_degrees(P)
    syms = sorted(deg)
    if math.prod(deg[s] + 1 for s in syms) <= _MAX_GRID:
        ranges = [range(starts[s], starts[s] + deg[s] + 1) for s in syms]
        for pt in itertools.product(*ranges):
            env = dict(zip(syms, pt))
            work.spend(len(P))
            if _eval_poly(P, env):
                return {**starts, **env}
    rng = random.Random(1)
    for _ in range(500):
        env = {s: starts[s] + rng.randrange(0, 64) for s in syms}
        work.spend(len(P))
        if _eval_poly(P, env):
            return {**starts, **env}
    return None


def _shift(Q: tuple, c: dict, work: _Work) -> tuple:
    """``Q(t + c)``."""
    work.spend(len(Q) * (1 + len(c)))
    out = _subst_poly(Q, {s: _add(_sym_poly(s), _const(v)) for s, v in c.items() if v})
    work.spend(len(out))
    return out


def _nonneg_orthant(Q: tuple, work: _Work, depth: int = 0) -> bool:
    """Certain proof that the floor-free Q >= 0 for all integer t >= 0 (False = not shown).

    If ``Q(t + c)`` has only non-negative coefficients, Q >= 0 wherever every
    ``t_i >= c``; the rest of the orthant is covered by fixing one ``t_i`` to
    each value below ``c`` and recursing on the remaining variables.
    """
    if all(c >= 0 for _, c in Q):
        return True
    syms = sorted(_poly_degrees(Q))
    if not syms:
        return _const_val(Q) >= 0
    if depth > 3:
        return False
    for c in (1, 2, 4, 8, 16, 32):
        shifted = _shift(Q, {s: c for s in syms}, work)
        if all(k >= 0 for _, k in shifted):
            for s in syms:
                for v in range(c):
                    work.spend(len(Q))
                    if not _nonneg_orthant(_subst_poly(Q, {s: _const(v)}), work, depth + 1):
                        return False
            return True
    return False


def _negative_point(Q: tuple, work: _Work) -> Optional[dict]:
    """A point t >= 0 where the floor-free Q < 0, by search."""
    if dict(Q).get((), 0) < 0:  # Q at t = 0
        return {}
    syms = sorted(_poly_degrees(Q))
    n = len(syms)
    k = max(2, min(16, int(4000 ** (1.0 / max(n, 1)))))
    for pt in itertools.product(range(k), repeat=n):
        env = dict(zip(syms, pt))
        work.spend(len(Q))
        if _eval_poly(Q, env) < 0:
            return env
    rng = random.Random(2)
    for scale in (64, 4096, 1 << 20):
        for _ in range(100):
            env = {s: rng.randrange(scale) for s in syms}
            work.spend(len(Q))
            if _eval_poly(Q, env) < 0:
                return env
    return None


def _nonneg_class(P: tuple, starts: dict, work: _Work) -> Union[bool, dict, None]:
    """True if P >= 0 for all s' >= starts; a point (dict) where P < 0; or None."""
    syms = sorted(_poly_degrees(P))
    Q = _shift(P, {s: starts[s] for s in syms}, work)  # in t = s' - start >= 0
    if _nonneg_orthant(Q, work):
        return True
    env = _negative_point(Q, work)
    if env is None:
        return None
    return {**starts, **{s: starts[s] + env.get(s, 0) for s in syms}}


# ---------------------------------------------------------------------------
# Bounds that hold for any divisor: floors as variables
# ---------------------------------------------------------------------------


def _atoms(p: tuple) -> set:
    return {a for m, _ in p for a, _e in m}


def _lower_bound(p: tuple, lower: Mapping[str, int], work: _Work, depth: int = 0) -> Optional[int]:
    """A lower bound of ``p`` where every symbol ``s >= lower[s]``, or None.

    Each atom is bounded below on its own (a symbol by ``lower``, a floor by the
    floor of its numerator's bound) and then treated as a free variable above
    that bound: if ``p`` shifted to the atoms' bounds is non-negative apart from
    its constant on the orthant, the constant is a bound.  Nothing here depends
    on the size of a divisor."""
    if _is_const(p):
        return _const_val(p)
    if depth > 8:
        return None
    names: dict = {}
    bounds: dict = {}
    for a in sorted(_atoms(p)):
        name = f"#{len(names)}"
        names[a] = _sym_poly(name)
        if a[0] == "s":
            bounds[name] = lower[a[1]]
            continue
        q = _lower_bound(a[1], lower, work, depth + 1)
        if q is None:
            return None
        if a[2][0] == "c":
            bounds[name] = q // a[2][1]
        else:  # a divisor D >= 1: q/D lies between min(q, 0) and ...
            bounds[name] = q if q < 0 else 0
    work.spend(_eval_cost(p))
    flat = _subst_poly_atoms(p, names)
    Q = _shift(flat, bounds, work)
    const = dict(Q).get((), 0)
    rest = tuple(t for t in Q if t[0] != ())
    if not rest or _nonneg_orthant(rest, work):
        return const
    return None


def _subst_poly_atoms(p: tuple, names: Mapping[tuple, tuple]) -> tuple:
    total: tuple = _ZERO
    for m, c in p:
        term = _const(c)
        for a, e in m:
            term = _mul(term, _pow(names[a], e))
        total = _add(total, term)
    return total


def _relax_floors(p: tuple) -> Optional[tuple]:
    """A polynomial R and ``k >= 1`` with ``k * p >= R`` everywhere, with every floor
    ``F = floor(q/d)`` that ``p`` holds alone (``c * F``) replaced by its bound
    (``F >= (q - d + 1)/d`` when c > 0, ``F <= q/d`` when c < 0) -- None if ``p``
    has no such floor."""
    lone = [(m, c) for m, c in p if len(m) == 1 and m[0][1] == 1 and m[0][0][0] == "f"
            and m[0][0][2][0] == "c" and all(m[0][0] not in dict(m2) for m2, _ in p if m2 != m)]
    if not lone:
        return None
    k = math.lcm(*(m[0][0][2][1] for m, _ in lone))
    out: tuple = _scale(tuple(t for t in p if t not in lone), k)
    for m, c in lone:
        a = m[0][0]
        d = a[2][1]
        num = a[1] if c < 0 else _add(a[1], _const(-(d - 1)))
        out = _add(out, _scale(num, c * (k // d)))
    return out


def _ge_by_bounds(p: tuple, lower: Mapping[str, int], work: _Work) -> bool:
    """A proof that ``p >= 0`` that does not depend on divisor sizes (False = not shown)."""
    for _ in range(4):
        lb = _lower_bound(p, lower, work)
        if lb is not None and lb >= 0:
            return True
        r = _relax_floors(p)
        if r is None:
            return False
        p = r
    return False


# ---------------------------------------------------------------------------
# Counterexamples by sampling
# ---------------------------------------------------------------------------


def _complete(point: Mapping[str, int], symbols: Iterable[str], domain: Domain) -> dict:
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
    k = max(2, min(24, int(1000 ** (1.0 / n))))
    for pt in itertools.product(range(k), repeat=n):
        yield {s: domain.start(s) + domain.step(s) * i for s, i in zip(syms, pt)}
    rng = random.Random(seed)
    for scale in (8, 64, 1024, 1 << 16):
        for _ in range(100):
            yield {s: domain.start(s) + domain.step(s) * rng.randrange(scale) for s in syms}


def _search(fails: Callable[[dict], bool], symbols: Iterable[str], domain: Domain,
            cost: int, work: _Work) -> Optional[dict]:
    for pt in _sample_points(sorted(set(symbols)), domain):
        work.spend(cost)
        try:
            if fails(pt):
                return pt
        except (ValueError, ZeroDivisionError):
            continue
    return None


# ---------------------------------------------------------------------------
# The questions
# ---------------------------------------------------------------------------


def _fails_at(rel: Callable[[int, int], bool], a: Dim, b: Dim, point: Mapping[str, int]) -> bool:
    try:
        return not rel(evaluate(a, point), evaluate(b, point))
    except (ValueError, ZeroDivisionError):
        return False


def _decide(a: Dim, b: Dim, domain: Domain, rel: Callable[[int, int], bool],
            by_classes: Callable, by_bounds: Callable) -> Verdict:
    """The common frame of the questions: every ``disproved`` carries a point of
    the domain at which ``rel(a, b)`` was evaluated and found false; every
    ``unknown`` a reason."""
    a, b = as_dim(a), as_dim(b)
    if a == b:
        return _PROVED
    if not domain.fixed_ok():
        return Verdict("unknown", reason="the domain is empty")
    orig = free_symbols(a) | free_symbols(b)
    fx = dict(domain.fixed)
    diff = as_dim(substitute(a, fx) - substitute(b, fx)) if fx else as_dim(a - b)

    def witness(pt: Mapping[str, int]) -> Optional[dict]:
        full = _complete(pt, orig, domain)
        return full if domain.contains(full) and _fails_at(rel, a, b, full) else None

    if not isinstance(diff, Expr):
        if rel(diff, 0):
            return _PROVED
        w = witness({})
        return Verdict("disproved", w) if w is not None else Verdict("unknown", reason="no point found")
    reduced = _reduce(diff._p, domain)
    work = _Work(MAX_PROOF_WORK.value())
    reason = "no proof found, and no counterexample at the points tried"
    try:
        if by_bounds(reduced, work):
            return _PROVED
        try:
            undecided = False
            for mods, res, starts, P in _classes(reduced, work):
                r = by_classes(P, starts, work)
                if r is True:
                    continue
                if isinstance(r, dict):
                    w = witness(reduced.back(_back(mods, res, r)))
                    if w is not None:
                        return Verdict("disproved", w)
                undecided = True
            if not undecided:
                return _PROVED
        except _Unsplittable as e:
            reason = f"could not split into residue classes: {e}"
    except _OutOfWork:
        reason = MAX_PROOF_WORK.reached("the proof needs more steps")
    # Whatever stopped the proof, a counterexample is still worth a bounded look.
    cost = _eval_cost(a._p if isinstance(a, Expr) else ()) + _eval_cost(b._p if isinstance(b, Expr) else ()) + 1
    try:
        pt = _search(lambda e: witness(e) is not None, orig, domain, cost, _Work(MAX_PROOF_WORK.value() // 4 + 1))
    except _OutOfWork:
        pt = None
    if pt is not None:
        return Verdict("disproved", witness(pt))
    return Verdict("unknown", reason=reason)


def _eq_class(P: tuple, starts: dict, work: _Work) -> Union[bool, dict, None]:
    if not P:
        return True
    if any(_has_floor_mono(m) for m, _ in P):
        return None
    return _find_nonzero(P, starts, work)


def _ge_class(P: tuple, starts: dict, work: _Work) -> Union[bool, dict, None]:
    if any(_has_floor_mono(m) for m, _ in P):
        return None
    return _nonneg_class(P, starts, work)


def prove_equal(a: Dim, b: Dim, domain: Domain = Domain()) -> Verdict:
    """Is ``a == b`` at every point of ``domain``?

    Exact by residue classes when the divisors' classes fit the divisor-size
    limit; otherwise ``proved`` needs both ``a >= b`` and ``b >= a`` from bounds,
    and ``disproved`` a point found by sampling.  Within the proof-work limit."""
    def bounds(r: _Reduced, work: _Work) -> bool:
        neg = _scale(r.poly, -1)
        return _ge_by_bounds(r.poly, r.lower, work) and _ge_by_bounds(neg, r.lower, work)
    return _decide(a, b, domain, operator.eq, _eq_class, bounds)


def prove_ge(a: Dim, b: Dim, domain: Domain = Domain()) -> Verdict:
    """Is ``a >= b`` at every point of ``domain``?  (See :func:`prove_equal`.)"""
    return _decide(a, b, domain, operator.ge, _ge_class, lambda r, work: _ge_by_bounds(r.poly, r.lower, work))


# ---------------------------------------------------------------------------
# Minimal valid sizes
# ---------------------------------------------------------------------------


def minimal_values(conds: Sequence[Dim], domain: Domain = Domain(),
                   symbols: Iterable[str] = ()) -> Optional[dict]:
    """Smallest value of each symbol such that every cond evaluates ``>= 1``.

    The conds together must hold on an up-set (raising a symbol never breaks a
    point that was valid), as the output sizes of a network's layers do.  Then
    the smallest value of ``s`` at any valid point is the smallest with every
    other symbol as large as can be, so each symbol is searched on its own with
    the others at :data:`SIZE_LIMIT` -- never held at their own minimum, where a
    product of sizes can be 0 whatever ``s`` is.  When those minima together are
    valid (the valid sizes are then exactly ``s >= minimum`` for every ``s``),
    they are the answer; otherwise the least valid point above them found by
    raising symbols.  None if nothing up to :data:`SIZE_LIMIT` is valid (or a
    constant cond is below 1, or a fixed value breaks a cond).
    """
    exprs = [as_dim(c) for c in conds]
    if any(not isinstance(c, Expr) and c < 1 for c in exprs):
        return None
    live = [c for c in exprs if isinstance(c, Expr)]
    syms = set(symbols)
    for c in live:
        syms |= free_symbols(c)
    if not domain.contains({s: v for s, v in domain.fixed.items() if s in syms}):
        return None

    def ok(env: Mapping[str, int]) -> bool:
        try:
            return all(evaluate(c, env) >= 1 for c in live)
        except (ValueError, ZeroDivisionError):
            return False

    base = {s: (domain.fixed[s] if s in domain.fixed else domain.start(s)) for s in syms}
    free = sorted(s for s in syms if s not in domain.fixed)
    top_k = {s: max(0, (SIZE_LIMIT - base[s]) // domain.step(s)) for s in free}

    def at(env: Mapping[str, int], s: str, k: int) -> dict:
        return {**env, s: base[s] + domain.step(s) * k}

    top = dict(base)
    for s in free:
        top = at(top, s, top_k[s])
    if not ok(top):
        return None

    def least(good: Callable[[int], bool], hi: int) -> int:
        """The least k in [0, hi] with good(k), given good(hi) and good monotone."""
        if good(0):
            return 0
        k = 1
        while k < hi and not good(k):
            k *= 2
        lo, k = k // 2, min(k, hi)
        while k - lo > 1:
            mid = (lo + k) // 2
            if good(mid):
                k = mid
            else:
                lo = mid
        return k

    mins = dict(base)
    for s in free:
        mins[s] = at(top, s, least(lambda k: ok(at(top, s, k)), top_k[s]))[s]
    if ok(mins):
        return mins
    # Not a box: raise every symbol from its minimum by the same number of steps.
    j = least(lambda k: ok({**mins, **{s: mins[s] + domain.step(s) * k for s in free}}),
              min((SIZE_LIMIT - mins[s]) // domain.step(s) for s in free))
    return {**mins, **{s: mins[s] + domain.step(s) * j for s in free}}


def residues_where(pred: Callable[..., bool], symbol: str, *exprs: Dim,
                   domain: Domain = Domain()) -> Optional[tuple]:
    """Residue classes of ``symbol`` on which ``pred(*values of exprs)`` holds.

    Returns ``(modulus, residues)``: ``modulus`` is the lcm of the periods of
    ``symbol`` in ``exprs`` and ``domain.multiple_of``; ``pred`` is evaluated
    once per residue class ``r`` (compatible with ``multiple_of``), at the
    smallest value of ``symbol`` in the domain congruent to ``r``, other
    symbols at their smallest domain values.  Exact when the predicate is
    periodic in ``symbol`` with that modulus (e.g. ``(H - k) % s != 0``).
    None if an expression has a symbolic divisor, or if the classes are more
    than the divisor-size limit (:data:`MAX_PROOF_PERIOD`).
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
    if L // step > MAX_PROOF_PERIOD.value():
        return None
    start = domain.start(symbol)
    out = []
    for r in range(0, L, step):
        v = start + ((r - start) % L)
        vals = [evaluate(e, {**env, symbol: v}) for e in exprs]
        if pred(*vals):
            out.append(r)
    return (L, out)
