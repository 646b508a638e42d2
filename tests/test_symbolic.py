"""Tests for convdsl.core.symbolic: canonical forms, printing, proofs, minimal sizes."""

import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convdsl.core.symbolic import (
    Domain,
    Expr,
    UnboundSymbol,
    Verdict,
    as_dim,
    evaluate,
    free_symbols,
    is_const,
    minimal_values,
    period,
    prove_equal,
    prove_ge,
    residues_where,
    substitute,
    sym,
    to_json,
    to_str,
)

H, W, N = sym("H"), sym("W"), sym("N")
kernel, padding, stride = sym("kernel"), sym("padding"), sym("stride")


def conv_out(n, k, s=1, p=0, d=1):
    return (n + p - d * (k - 1) - 1) // s + 1


# ---------------------------------------------------------------------------
# canonical form: worked examples
# ---------------------------------------------------------------------------


def test_conv_examples():
    assert (H + 2 - 3) // 1 + 1 == H
    assert (H - 2) // 2 + 1 == H // 2
    assert ((H - 2) // 2 + 1 - 2) // 2 + 1 == H // 4
    assert conv_out(H, 3, 1, 2) == H
    assert conv_out(conv_out(H, 2, 2), 2, 2) == H // 4
    assert conv_out(H, 3, 2, 2) == (H + 1) // 2
    # LeNet: conv5, pool2, conv5, pool2
    h = conv_out(conv_out(conv_out(conv_out(H, 5), 2, 2), 5), 2, 2)
    assert h == H // 4 - 3
    assert to_str(h) == "H // 4 - 3"


def test_symbolic_params_same_two_ways():
    a = (H + 2 * padding - kernel) // stride + 1
    b = (padding - kernel + H + padding + stride) // stride
    c = (H - (kernel - padding * 2)) // stride + 1
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert to_str(a) == "(H - kernel + 2 * padding) // stride + 1"


def test_constants_are_ints():
    assert H - H == 0 and type(H - H) is int
    assert type((H + 3) // (H + 3)) is int
    assert (2 * H + 1) // 2 - H == 0
    assert type(0 * H) is int
    assert (H * stride) // stride == H
    assert (stride * H + 3 * stride) // stride == H + 3
    assert (2 * stride + 2) // (stride + 1) == 2
    assert as_dim(7) == 7 and is_const(as_dim(7)) and not is_const(H)


def test_floor_rules():
    assert H // 1 == H
    assert (4 * H + 6) // 4 == H + 1
    assert (4 * H + 6) // 8 == (2 * H + 3) // 4
    assert (2 * H + 2 * W) // 4 == (H + W) // 2
    assert (H // 2) // 3 == H // 6
    assert (H // 2 + W) // 3 == (H + 2 * W) // 6
    assert (H - 3) // 2 == (H + 1) // 2 - 2
    assert (-H) // 2 == H // 2 - H
    assert (H // stride) // 2 == H // (2 * stride)
    with pytest.raises(ValueError):
        H // 0
    with pytest.raises(ValueError):
        H // -2
    with pytest.raises(ValueError):
        H // (stride - stride)


def test_mod():
    assert H % 2 == H - 2 * (H // 2)
    for v in range(-7, 9):
        assert evaluate(H % 3, {"H": v}) == v % 3
        assert evaluate(10 % (H * H + 1), {"H": v}) == 10 % (v * v + 1)


def test_immutable_and_pickle():
    e = (H + 1) // 2
    with pytest.raises(AttributeError):
        e._p = ()
    with pytest.raises(TypeError):
        Expr()
    assert pickle.loads(pickle.dumps(e)) == e
    assert {e: 1}[(H + 1) // 2] == 1
    assert hash(Domain(lower={"H": 2})) == hash(Domain(lower={"H": 2}))
    assert e != 3 and H != "H"


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, text",
    [
        (H // 2, "H // 2"),
        (H // 2 - 1, "H // 2 - 1"),
        ((H + 1) // 2, "(H + 1) // 2"),
        (16 * H * W, "16 * H * W"),
        (W * 16 * H, "16 * H * W"),
        (2 * H - 3, "2 * H - 3"),
        (N, "N"),
        (-H, "-H"),
        (-(H // 2), "-(H // 2)"),
        (3 - H, "-H + 3"),
        (W * (H // 2), "W * (H // 2)"),
        (H * H + H + 1, "H * H + H + 1"),
        (H % 3, "H - 3 * (H // 3)"),
        (H // (2 * stride), "H // (2 * stride)"),
        (3 // stride + H, "H + 3 // stride"),
        ((H + W) // 2 * 2, "2 * ((H + W) // 2)"),
    ],
)
def test_printing(expr, text):
    assert to_str(expr) == text
    assert str(expr) == text
    assert to_json(expr) == text


def test_print_ints():
    assert to_str(5) == "5" and to_json(5) == 5 and to_json(H - H + 2) == 2


def test_print_roundtrip_examples():
    exprs = [((H - kernel) // stride + 1 - kernel) // stride + 1, -(H // 2) * W + (W - 3) // 5,
             (H * W + 7) // 3 - N * (H // 2)]
    rng = random.Random(0)
    for e in exprs:
        for _ in range(50):
            env = {"H": rng.randint(-20, 40), "W": rng.randint(-20, 40), "N": rng.randint(1, 5),
                   "kernel": rng.randint(1, 5), "stride": rng.randint(1, 4)}
            assert eval(to_str(e), {}, dict(env)) == evaluate(e, env)


# ---------------------------------------------------------------------------
# evaluate / substitute / free_symbols
# ---------------------------------------------------------------------------


def test_evaluate_and_unbound():
    assert evaluate(H // 4 - 3, {"H": 28}) == 4
    assert evaluate(5, {}) == 5
    with pytest.raises(UnboundSymbol) as ei:
        evaluate(H + W, {"H": 1})
    assert isinstance(ei.value, KeyError) and ei.value.symbol == "W" and "W" in str(ei.value)
    with pytest.raises(ValueError):
        evaluate(H // stride, {"H": 3, "stride": 0})


def test_substitute_and_free_symbols():
    e = (H + 2 * padding - kernel) // stride + 1
    assert free_symbols(e) == {"H", "padding", "kernel", "stride"}
    assert free_symbols(3) == frozenset()
    assert substitute(e, {"padding": 1, "kernel": 3, "stride": 1}) == H
    assert substitute(e, {"padding": 0, "kernel": 2, "stride": 2}) == H // 2
    assert substitute(e, {"padding": 0, "kernel": 2, "stride": 2, "H": 10}) == 5
    assert substitute(H // 2, {"H": 2 * W + 1}) == W
    assert substitute(H + W, {"H": W, "W": H}) == H + W  # simultaneous
    assert substitute(7, {"H": 1}) == 7


# ---------------------------------------------------------------------------
# hypothesis: random expression trees
# ---------------------------------------------------------------------------

SYMS = ["x", "y", "z"]
leaf = st.one_of(st.sampled_from(SYMS), st.integers(-6, 6))


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*"]), children, children),
        st.tuples(st.just("//"), children, st.integers(1, 6)),
        st.tuples(st.just("neg"), children),
    )


trees = st.recursive(leaf, _extend, max_leaves=8)
# with division by a symbolic divisor s (assumed >= 1)
trees_sym = st.recursive(
    st.one_of(leaf, st.just("s")),
    lambda ch: st.one_of(_extend(ch), st.tuples(st.just("//s"), ch, st.sampled_from(["s", "2s", "s+1"]))),
    max_leaves=6,
)


def build(t, env):
    """Build the tree with Dim arithmetic; with an int env it is plain Python."""
    if isinstance(t, int):
        return t
    if isinstance(t, str):
        return env[t]
    op = t[0]
    if op == "neg":
        return -build(t[1], env)
    a = build(t[1], env)
    if op == "//":
        return a // t[2]
    if op == "//s":
        s = env["s"]
        return a // {"s": s, "2s": 2 * s, "s+1": s + 1}[t[2]]
    b = build(t[2], env)
    return a + b if op == "+" else a - b if op == "-" else a * b


SYM_ENV = {n: sym(n) for n in SYMS + ["s"]}
values = st.fixed_dictionaries({n: st.integers(-30, 30) for n in SYMS})
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(trees, st.lists(values, min_size=1, max_size=5))
def test_canonical_evaluates_like_python(t, envs):
    e = build(t, SYM_ENV)
    assert isinstance(e, (int, Expr)) and not isinstance(e, bool)
    for env in envs:
        assert evaluate(e, env) == build(t, env)
        assert eval(to_str(e), {}, dict(env)) == build(t, env)


@fast
@given(trees_sym, st.lists(values, min_size=1, max_size=4), st.integers(1, 7))
def test_canonical_symbolic_divisor(t, envs, s):
    e = build(t, SYM_ENV)
    for env in envs:
        env = {**env, "s": s}
        assert evaluate(e, env) == build(t, env)
        assert eval(to_str(e), {}, dict(env)) == build(t, env)


@fast
@given(st.lists(trees, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_sums_commute_and_reassociate(ts, rnd):
    parts = [build(t, SYM_ENV) for t in ts]
    left = 0
    for p in parts:
        left = left + p
    shuffled = parts[:]
    rnd.shuffle(shuffled)
    right = 0
    for p in reversed(shuffled):
        right = p + right
    assert left == right and hash(left) == hash(right)
    assert to_str(left) == to_str(right)
    prod1, prod2 = 1, 1
    for p in parts[:3]:
        prod1 = prod1 * p
    for p in reversed(parts[:3]):
        prod2 = p * prod2
    assert prod1 == prod2 and hash(prod1) == hash(prod2)


@fast
@given(trees, trees, st.integers(1, 6))
def test_pull_out_multiples(tx, ty, k):
    x, y = build(tx, SYM_ENV), build(ty, SYM_ENV)
    a = (x * k + y) // k
    b = x + y // k
    assert a == b and hash(a) == hash(b)


poly_trees = st.recursive(leaf, lambda ch: st.one_of(
    st.tuples(st.sampled_from(["+", "-", "*"]), ch, ch), st.tuples(st.just("neg"), ch)), max_leaves=6)


@fast
@given(poly_trees, poly_trees, st.integers(1, 6), st.integers(1, 6))
def test_nested_floor_merge(tx, ty, k, j):
    # x, y floor-free: (y // k + x) // j == (y + k * x) // (j * k), syntactically
    x, y = build(tx, SYM_ENV), build(ty, SYM_ENV)
    a = (y // k + x) // j
    b = (y + k * x) // (j * k)
    assert a == b and hash(a) == hash(b)
    assert (y // k) // 3 == y // (3 * k)


@fast
@given(trees, values)
def test_substitute_matches_evaluation(t, env):
    e = build(t, SYM_ENV)
    sub = substitute(e, {"x": 2 * SYM_ENV["y"] + 1, "z": 3})
    env2 = {**env, "x": 2 * env["y"] + 1, "z": 3}
    assert evaluate(sub, env) == evaluate(e, env2)
    assert substitute(e, {}) == e


# ---------------------------------------------------------------------------
# prove_equal / prove_ge
# ---------------------------------------------------------------------------


def check_counterexample(v: Verdict, a, b, domain, rel):
    assert v.status == "disproved"
    ce = v.counterexample
    assert ce is not None and domain.contains(ce)
    assert set(free_symbols(a) | free_symbols(b)) <= set(ce)
    assert not rel(evaluate(a, ce), evaluate(b, ce))


def test_prove_equal_basic():
    assert prove_equal(H, H).status == "proved"
    assert prove_equal((H + 1) // 2, H - H // 2).status == "proved"
    assert prove_equal(H // 2 + (H + 1) // 2, H).status == "proved"
    assert prove_equal(H // 2 + H // 3 + H // 6, H - (H % 2 + H % 3 + H % 6) // 1 + H // 6 * 0 +
                       (H % 2) + (H % 3) + (H % 6) - H + H // 2 + H // 3 + H // 6).status == "proved"
    assert prove_equal((H * H) // 2, (H * H + 1) // 2 - H % 2).status == "proved"
    assert prove_equal((H + W) // 2, H // 2 + W // 2 + (H % 2) * (W % 2)).status == "proved"
    d = Domain()
    v = prove_equal((H + 1) // 2, H // 2)
    check_counterexample(v, (H + 1) // 2, H // 2, d, lambda x, y: x == y)
    v = prove_equal(H * W, H + W)
    check_counterexample(v, H * W, H + W, d, lambda x, y: x == y)
    v = prove_equal(H // 4 - 3, (H - 12) // 4 + 1)  # off by one everywhere
    check_counterexample(v, H // 4 - 3, (H - 12) // 4 + 1, d, lambda x, y: x == y)
    assert prove_equal(3, 3).status == "proved"
    assert prove_equal(3, H - H + 4).status == "disproved"


def test_prove_equal_domain():
    d2 = Domain(multiple_of={"H": 2})
    assert prove_equal((H + 1) // 2, H // 2, d2).status == "proved"
    assert prove_equal((H - 2) // 2 + 1, H // 2, d2).status == "proved"
    d4 = Domain(multiple_of={"H": 4})
    assert prove_equal((H // 2) // 2 * 4, H, d4).status == "proved"
    v = prove_equal((H + 1) // 3, H // 3, d2)
    check_counterexample(v, (H + 1) // 3, H // 3, d2, lambda x, y: x == y)
    assert v.counterexample["H"] % 2 == 0
    # fixed symbols are substituted first
    df = Domain(fixed={"H": 32})
    assert prove_equal(H // 4, 8, df).status == "proved"
    v = prove_equal(H // 4 + W, W + 9, df)
    assert v.status == "disproved" and v.counterexample["H"] == 32
    # lower bounds: H*H >= 3*H fails for small H only
    dl = Domain(lower={"H": 3})
    assert prove_ge(H * H, 3 * H, dl).status == "proved"
    v = prove_ge(H * H, 3 * H)
    check_counterexample(v, H * H, 3 * H, Domain(), lambda x, y: x >= y)
    v = prove_equal(H * 0 + (H - 5) // 10, 0, Domain(lower={"H": 5}))
    check_counterexample(v, (H - 5) // 10, 0, Domain(lower={"H": 5}), lambda x, y: x == y)
    assert v.counterexample["H"] >= 15


def test_prove_symbolic_divisors():
    a = (H + 2 * padding - kernel) // stride + 1
    b = (H + 2 * padding - kernel + stride) // stride
    assert prove_equal(a, b).status == "proved"
    v = prove_equal(H // stride, H)  # false for stride >= 2
    check_counterexample(v, H // stride, H, Domain(), lambda x, y: x == y)
    assert v.counterexample["stride"] >= 2
    # true but beyond the canonical form: unknown (never a wrong answer)
    v = prove_equal((H // stride) * stride + H % stride, H)
    assert v.status in ("proved", "unknown")
    v = prove_ge(H, H // stride)
    assert v.status in ("proved", "unknown")
    with_fixed = Domain(fixed={"stride": 2})
    assert prove_equal(H // stride, H // 2, with_fixed).status == "proved"


def test_prove_ge():
    assert prove_ge(H, H // 2).status == "proved"
    assert prove_ge(H // 2, H // 3).status == "proved"
    assert prove_ge(H * W, H + W - 1).status == "proved"
    assert prove_ge(H // 4 - 3, 1, Domain(lower={"H": 16})).status == "proved"
    v = prove_ge(H // 4 - 3, 1, Domain(lower={"H": 15}))
    check_counterexample(v, H // 4 - 3, 1, Domain(lower={"H": 15}), lambda x, y: x >= y)
    assert v.counterexample == {"H": 15}
    v = prove_ge(H // 3, H // 2)
    check_counterexample(v, H // 3, H // 2, Domain(), lambda x, y: x >= y)
    assert prove_ge(5, 3).status == "proved"
    assert prove_ge(3, 5).status == "disproved"
    # polynomial differences with negative coefficients: shifted-orthant proofs
    assert prove_ge((H - 3) * (H - 3), 0).status == "proved"
    assert prove_ge(H * H - 5 * H + 6, 0).status == "proved"
    assert prove_ge(H * H * W - 10 * H * W + 30 * W - 4, 0).status == "proved"
    assert prove_ge((H // 2) * (H // 2) - 5 * (H // 2) + 7, 0).status == "proved"
    assert prove_ge((H - W) * (H - W), 0).status in ("proved", "unknown")
    v = prove_ge(H * W - 2 * H - 2 * W + 3, 0)
    check_counterexample(v, H * W - 2 * H - 2 * W + 3, 0, Domain(), lambda x, y: x >= y)
    v = prove_ge(H, 2 * H - 10)  # fails only for H > 10
    check_counterexample(v, H, 2 * H - 10, Domain(), lambda x, y: x >= y)


def _domain_point(rng, domain, names):
    pt = {}
    for s in names:
        if s in domain.fixed:
            pt[s] = domain.fixed[s]
        else:
            pt[s] = domain.start(s) + domain.step(s) * rng.randrange(40)
    return pt


small_trees = st.recursive(leaf, _extend, max_leaves=5)
domains = st.builds(
    lambda lo, mult: Domain(lower={"x": lo}, multiple_of={"y": mult}),
    st.integers(-3, 4),
    st.integers(1, 3),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_trees, small_trees, domains)
def test_prove_soundness(ta, tb, domain):
    a, b = build(ta, SYM_ENV), build(tb, SYM_ENV)
    names = sorted(free_symbols(a) | free_symbols(b))
    rng = random.Random(0)
    for prove, rel in ((prove_equal, lambda x, y: x == y), (prove_ge, lambda x, y: x >= y)):
        v = prove(a, b, domain)
        assert v.status in ("proved", "disproved", "unknown")
        if v.status == "proved":
            for _ in range(30):
                pt = _domain_point(rng, domain, names)
                assert rel(evaluate(a, pt), evaluate(b, pt)), (to_str(a), to_str(b), pt)
        elif v.status == "disproved":
            check_counterexample(v, a, b, domain, rel)


@fast
@given(small_trees, small_trees)
def test_prove_equal_of_rebuilt(ta, tb):
    a, b = build(ta, SYM_ENV), build(tb, SYM_ENV)
    # x == (x - y) + y, decided rather than syntactic for floors
    assert prove_equal(a, (a - b) + b).status == "proved"
    assert prove_equal((a * 6 + b) // 6, a + b // 6).status == "proved"
    # always equal, though only decided (not syntactic) when a, b have floors;
    # 'unknown' only when there are too many residue classes
    assert prove_equal((b // 2 + a) // 3, (b + 2 * a) // 6).status in ("proved", "unknown")
    assert prove_equal((b // 2) // 3, b // 6).status in ("proved", "unknown")


# ---------------------------------------------------------------------------
# minimal_values
# ---------------------------------------------------------------------------


def test_minimal_values_lenet():
    h = ((H - 4) // 2 - 4) // 2
    w = ((W - 4) // 2 - 4) // 2
    assert evaluate(h, {"H": 16}) == 1 and evaluate(h, {"H": 15}) == 0
    assert minimal_values([h, w, N]) == {"H": 16, "W": 16, "N": 1}
    lenet = conv_out(conv_out(conv_out(conv_out(H, 5), 2, 2), 5), 2, 2)
    assert minimal_values([lenet]) == {"H": 16}
    assert minimal_values([h], symbols=["N"]) == {"H": 16, "N": 1}
    assert minimal_values([], symbols=["N"]) == {"N": 1}


def test_minimal_values_domain():
    h = ((H - 4) // 2 - 4) // 2
    assert minimal_values([h], Domain(multiple_of={"H": 5})) == {"H": 20}
    assert minimal_values([h], Domain(lower={"H": 32})) == {"H": 32}
    assert minimal_values([h], Domain(fixed={"H": 32})) == {"H": 32}
    assert minimal_values([h], Domain(fixed={"H": 8})) is None
    assert minimal_values([h, 0]) is None  # a constant cond < 1
    assert minimal_values([H - 1 - 2 ** 30]) == {"H": 2 ** 30 + 2}  # found however large
    assert minimal_values([H - 2 ** 63]) is None  # past any size 64-bit code can index
    assert minimal_values([1, 3]) == {}
    # several convs on the same axis: the strictest wins
    assert minimal_values([H - 2, H // 4, (H - 6) // 2 + 1]) == {"H": 6}
    # a cond involving a block parameter fixed by the domain
    assert minimal_values([(H - kernel) // 2 + 1], Domain(fixed={"kernel": 7})) == {"H": 7, "kernel": 7}


@fast
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 3), st.integers(0, 3)), min_size=1, max_size=4),
       st.integers(1, 4))
def test_minimal_values_matches_brute_force(layers, mult):
    h = H
    conds = []
    for k, s, p in layers:
        h = conv_out(h, k, s, p)
        conds.append(h)
    res = minimal_values(conds, Domain(multiple_of={"H": mult}))
    brute = next((v for v in range(mult, 2000, mult) if all(evaluate(c, {"H": v}) >= 1 for c in conds)), None)
    assert res == (None if brute is None else {"H": brute})


# ---------------------------------------------------------------------------
# periodicity
# ---------------------------------------------------------------------------


def test_period_and_residues():
    assert period(H // 2 + W // 6) == {"H": 2, "W": 6}
    assert period(((H - 1) // 2) // 3) == {"H": 6}
    assert period(H // stride) is None
    assert period(4) == {}
    # pool2 drops the last row when H is odd
    assert residues_where(lambda r: r != 0, "H", H % 2) == (2, [1])
    # conv k=3 s=2: (H - 3) % 2 != 0 when H is even
    assert residues_where(lambda r: r != 0, "H", (H - 3) % 2) == (2, [0])
    assert residues_where(lambda r: r != 0, "H", H % 2, domain=Domain(multiple_of={"H": 2})) == (2, [])
    assert residues_where(lambda r: r != 0, "H", H % stride) is None
