"""Prover soundness as a property (issue 11): every ``proved`` answer holds at
random points of its domain, every ``disproved`` one carries a point of the
domain where the fact fails; minimal sizes are valid and minimal.

Expressions mix products, sums, floor divisions (nested, by small, large and
symbolic divisors) and mod over several symbols; domains carry lower bounds,
``where`` multiples (small and large) and fixed values."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convdsl.core.symbolic import Domain, evaluate, free_symbols, minimal_values, prove_equal, prove_ge, sym, to_str

SYMS = ("H", "W", "K")
ENV = {s: sym(s) for s in SYMS}
DIVISORS = st.one_of(st.integers(1, 12), st.sampled_from([16, 97, 360, 10007, 999999937]))

leaf = st.one_of(st.sampled_from(SYMS), st.integers(-8, 8))


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*"]), children, children),
        st.tuples(st.just("//"), children, DIVISORS),
        st.tuples(st.just("%"), children, DIVISORS),
        st.tuples(st.just("//K"), children, st.integers(0, 2)),
    )


general = st.recursive(leaf, _extend, max_leaves=6)
# sizes as layers make them: (x + c) // d + e over a symbol or another size, and
# their products and sums; compared with each other and with small constants,
# where a bound off by one shows
SIZE_DIVISORS = st.one_of(DIVISORS, st.just("K"))
size_leaf = st.tuples(st.just("size"), st.sampled_from(SYMS), st.integers(-6, 6), SIZE_DIVISORS, st.integers(-2, 2))
sizes = st.recursive(size_leaf, lambda ch: st.one_of(
    st.tuples(st.sampled_from(["+", "-", "*"]), ch, ch),
    st.tuples(st.just("*"), st.integers(-3, 3), ch),
    st.tuples(st.just("-"), ch, st.sampled_from(SYMS)),
    st.tuples(st.just("size"), ch, st.integers(-6, 6), SIZE_DIVISORS, st.integers(-2, 2))), max_leaves=4)
exprs = st.one_of(general, sizes, sizes, st.integers(-2, 3))


def build(t):
    if isinstance(t, int):
        return t
    if isinstance(t, str):
        return ENV[t]
    op, a = t[0], build(t[1])
    if op == "size":
        return (a + t[2]) // (ENV["K"] if t[3] == "K" else t[3]) + t[4]
    if op == "//":
        return a // t[2]
    if op == "%":
        return a % t[2]
    if op == "//K":  # a symbolic divisor, K + c, assumed >= 1 where evaluated
        return a // (ENV["K"] + t[2])
    b = build(t[2])
    return a + b if op == "+" else a - b if op == "-" else a * b


@st.composite
def domains(draw):
    lower, mult, fixed = {}, {}, {}
    for s in SYMS:
        kind = draw(st.sampled_from(["free", "lower", "multiple", "both", "fixed"]))
        if kind in ("lower", "both"):
            lower[s] = draw(st.integers(-3, 40))
        if kind in ("multiple", "both"):
            mult[s] = draw(st.one_of(st.integers(2, 8), st.sampled_from([12, 1000003])))
        if kind == "fixed":
            fixed[s] = draw(st.integers(1, 30))
    return Domain(lower=lower, multiple_of=mult, fixed=fixed)


def points(domain: Domain, names, rng: random.Random, count: int = 40):
    """Points of the domain: its corner, near it, and far out."""
    for i in range(count):
        pt = {}
        for s in names:
            if s in domain.fixed:
                pt[s] = domain.fixed[s]
                continue
            scale = (3, 3, 30, 1000, 10 ** 12)[i % 5]
            pt[s] = domain.start(s) + domain.step(s) * (0 if i == 0 else rng.randrange(scale))
        yield pt


def value(e, pt):
    try:
        return evaluate(e, pt)
    except ValueError:  # a symbolic divisor <= 0: outside what the prover assumes
        return None


def assert_sound(v, a, b, domain, rel):
    names = sorted(free_symbols(a) | free_symbols(b) | set(domain.fixed))
    if v.status == "proved":
        for pt in points(domain, names, random.Random(0)):
            x, y = value(a, pt), value(b, pt)
            if x is not None and y is not None:
                assert rel(x, y), (v, to_str(a), to_str(b), domain, pt)
    elif v.status == "disproved":
        pt = v.counterexample
        assert pt is not None and domain.contains(pt), (v, domain)
        assert set(free_symbols(a) | free_symbols(b)) <= set(pt)
        x, y = value(a, pt), value(b, pt)
        assert x is not None and y is not None and not rel(x, y), (v, to_str(a), to_str(b), pt)
    else:
        assert v.status == "unknown" and v.reason


props = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@props
@given(exprs, exprs, domains())
def test_every_answer_of_prove_equal_holds(ta, tb, domain):
    a, b = build(ta), build(tb)
    assert_sound(prove_equal(a, b, domain), a, b, domain, lambda x, y: x == y)


@props
@given(exprs, exprs, domains())
def test_every_answer_of_prove_ge_holds(ta, tb, domain):
    a, b = build(ta), build(tb)
    assert_sound(prove_ge(a, b, domain), a, b, domain, lambda x, y: x >= y)


@props
@given(exprs, domains())
def test_rewritten_forms_are_proved_or_unknown(t, domain):
    """Facts true by construction are never disproved (and a counterexample to one
    would be a point where evaluation itself is wrong)."""
    a = build(t)
    for lhs, rhs in ((a // 6, (a // 2) // 3), (a % 5 + 5 * (a // 5), a), ((a + 7) // 7, a // 7 + 1)):
        v = prove_equal(lhs, rhs, domain)
        assert v.status in ("proved", "unknown"), (to_str(a), v)
    v = prove_ge(a * a, 0, domain)
    assert v.status in ("proved", "unknown"), (to_str(a), v)


def test_bounds_at_the_boundary():
    """Where a floor's bound is off by one, the fact is false: never proved."""
    H, K = ENV["H"], ENV["K"]
    for d in (2, 3, 97):
        assert prove_ge(d * (H // d), H).disproved
        assert prove_ge(d * (H // d), H - d + 1).proved
        assert prove_ge(H, d * (H // d)).proved
        assert prove_ge(H - 1, d * (H // d)).disproved
        assert prove_ge(H // d, 1, Domain(lower={"H": d})).proved
        assert prove_ge(H // d, 1, Domain(lower={"H": d - 1})).disproved
    assert prove_ge(H // K, 1).disproved  # H < K
    assert prove_ge(H // K, 0).proved
    assert prove_ge(K * (H // K), H).disproved


# conv/pool-like sizes: (n + p - k) // s + 1 over H and W, then a product
layer = st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(0, 2))


@props
@given(st.lists(layer, min_size=1, max_size=3), st.lists(layer, min_size=1, max_size=3),
       st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2, 5]), st.booleans())
def test_minimal_values_are_valid_and_least(hl, wl, mh, mw, flatten):
    conds, h, w = [], ENV["H"], ENV["W"]
    for k, s, p in hl:
        h = (h + 2 * p - k) // s + 1
        conds.append(h)
    for k, s, p in wl:
        w = (w + 2 * p - k) // s + 1
        conds.append(w)
    if flatten:
        conds = [3 * h * w]  # the flattened count alone: zero or negative for the wrong reasons
    domain = Domain(multiple_of={"H": mh, "W": mw})
    r = minimal_values(conds, domain)

    def ok(hv, wv):
        return all(evaluate(c, {"H": hv, "W": wv}) >= 1 for c in conds) and (not flatten or (
            evaluate(h, {"H": hv}) >= 1 and evaluate(w, {"W": wv}) >= 1))
    grid = [(hv, wv) for hv in range(mh, 60, mh) for wv in range(mw, 60, mw) if ok(hv, wv)]
    if not grid:
        assert r is None or max(r["H"], r["W"]) >= 60 or not ok(r["H"], r["W"])
        return
    assert r is not None
    assert (r["H"], r["W"]) == (min(g[0] for g in grid), min(g[1] for g in grid)), (r, grid[:5])
