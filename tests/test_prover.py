"""The prover's regressions: products of sizes over several symbols (issue 11, 4a)
and proof work that must not grow with a divisor's magnitude (issue 11, 3).

Validity is judged by PyTorch (tests/symtorch.py), not by the checker's own rules."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES  # noqa: F401  (puts tests/ on the path)
from symtorch import conv_text, sym_shapes, torch_shapes

from convdsl.core.symbolic import (
    MAX_PROOF_PERIOD,
    MAX_PROOF_WORK,
    Domain,
    evaluate,
    limit_problems,
    minimal_values,
    prove_equal,
    prove_ge,
    sym,
    to_str,
)
from convdsl.frontend import check_source

H, W = sym("H"), sym("W")
BIG = 97  # "large" for the other symbol, well past any minimum below


def checked(text: str):
    c = check_source(text, "t.conv")
    assert c.result.ok, c.render()
    return c.result.model()


def assert_valid_for_is_torchs(specs, where=(), step=None, lower=None):
    """valid_for is the least size PyTorch runs (and the where clause allows), per
    symbol, the other one large."""
    step, lower = step or {}, lower or {}
    out = sym_shapes(specs, 2, H, W)[-1]
    model = checked(conv_text(specs, where=where, output="[N, " + ", ".join(map(to_str, out)) + "]"))
    vf = model.valid_for
    assert torch_shapes(specs, 1, 2, vf["H"], vf["W"]) is not None
    for s, other in (("H", "W"), ("W", "H")):
        below = vf[s] - step.get(s, 1)
        if below >= lower.get(s, 1):
            sizes = {s: below, other: BIG * step.get(other, 1)}
            assert torch_shapes(specs, 1, 2, sizes["H"], sizes["W"]) is None, (s, vf)
    return model


# ----------------------------------------------------------------- products of sizes

PRODUCTS = {
    # (H - 1) * (W - 1) features
    "conv2-flatten": [("conv", 2, (2, 2), (1, 1), (0, 0), (1, 1)), ("flatten",), ("dense", 4)],
    # 8 * (H // 2) * (W // 2)
    "pool-flatten": [("conv", 8, (3, 3), (1, 1), (1, 1), (1, 1)), ("pool", "max", (2, 2), (2, 2), (0, 0), False),
                     ("flatten",), ("dense", 10)],
    # nested floors in both symbols, then a product
    "nested": [("conv", 3, (3, 2), (2, 1), (0, 0), (1, 1)), ("pool", "avg", (2, 2), (2, 2), (0, 0), True),
               ("conv", 2, (1, 3), (1, 2), (0, 1), (1, 1)), ("flatten",), ("dense", 3)],
    # a kernel that needs one axis large only
    "lopsided": [("conv", 1, (5, 1), (1, 1), (0, 0), (1, 1)), ("pool", "max", (1, 3), (1, 3), (0, 0), False),
                 ("flatten",), ("dense", 2)],
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_products_of_sizes_are_accepted_with_torchs_minimum(name):
    assert_valid_for_is_torchs(PRODUCTS[name])


def test_products_under_where_multiples():
    specs = PRODUCTS["pool-flatten"]
    model = assert_valid_for_is_torchs(specs, where=("H % 4 == 0", "W >= 8"), step={"H": 4}, lower={"W": 8})
    assert (model.valid_for["H"], model.valid_for["W"]) == (4, 8)


def test_declared_product_shapes_are_proved():
    text = """model P(x: [N, 3, H, W]) -> [N, 10] where H % 4 == 0, W >= 8 {
    conv(8, kernel=3, padding=1)  -> [N, 8, H, W]
    maxpool(2)                    -> [N, 8, H // 2, W // 2]
    flatten                       -> [N, 8 * (H // 2) * (W // 2)]
    dense(10)
}
"""
    checked(text)
    text2 = """model P(x: [N, 1, H, W]) -> [N, 4] {
    conv(2, kernel=2)  -> [N, 2, H - 1, W - 1]
    flatten            -> [N, 2 * (H - 1) * (W - 1)]
    dense(4)
}
"""
    assert checked(text2).valid_for == {"N": 1, "H": 2, "W": 2}


def test_minimal_values_of_products():
    assert minimal_values([H - 1, W - 1, (H - 1) * (W - 1)]) == {"H": 2, "W": 2}
    assert minimal_values([(H - 1) * (W - 1)]) == {"H": 2, "W": 2}
    assert minimal_values([8 * (H // 2) * (W // 2)]) == {"H": 2, "W": 2}
    assert minimal_values([(H // 3) * (W - 4) + (W // 2)], Domain(multiple_of={"H": 3})) == {"H": 3, "W": 4}
    # a valid set that is not a box: the answer is a valid point, not below any valid point
    r = minimal_values([H * W - 3])
    assert r is not None and evaluate(H * W - 3, r) >= 1


# ----------------------------------------------------------------- divisor magnitude

def test_where_with_a_huge_modulus():
    text = conv_text([("conv", 2, (3, 3), (1, 1), (0, 0), (1, 1))], channels=1, where=("H % 99999999 == 0",),
                     output="[N, 2, H - 2, W - 2]")
    assert checked(text).valid_for["H"] == 99999999
    d = Domain(multiple_of={"H": 99999999})
    assert prove_equal((H + 99999998) // 99999999 * 99999999, H, d).proved
    assert prove_ge(H // 10 ** 8, 1, d).disproved  # H = 99999999


def test_where_with_several_large_primes():
    text = conv_text([("conv", 2, (3, 3), (1, 1), (0, 0), (1, 1))], channels=1,
                     where=("H % 1000003 == 0", "H % 999983 == 0", "W % 1000033 == 0"),
                     output="[N, 2, H - 2, W - 2]")
    assert checked(text).valid_for == {"N": 1, "H": 1000003 * 999983, "W": 1000033}


def test_huge_pool_on_a_symbolic_size():
    text = conv_text([("pool", "max", (999999999, 1), (999999999, 1), (0, 0), False)], channels=1,
                     output="[N, 1, H // 999999999, W]")
    assert checked(text).valid_for["H"] == 999999999
    assert prove_ge(H // 999999999, 1, Domain(lower={"H": 999999999})).proved
    assert prove_ge(H // 999999999, 1, Domain(lower={"H": 999999998})).disproved


PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23)


def test_nine_floor_terms():
    s = sum((H // p for p in PRIMES), start=0)
    v = prove_equal(s, H)
    assert v.disproved and evaluate(s, v.counterexample) != v.counterexample["H"]
    assert prove_ge(s + H, 0).proved  # from bounds, whatever the divisors
    assert prove_ge(2 * H, s).proved  # H * (1/2 + ... + 1/23) < 2H
    text = conv_text([("relu",)], channels=1, output="[N, 1, " + " + ".join(f"H // {p}" for p in PRIMES) + ", W]")
    c = check_source(text, "t.conv")
    assert [e.code for e in c.result.errors] == ["shape-mismatch"]


def test_too_many_classes_is_unknown_with_the_limit_named(monkeypatch):
    p = 10007  # past the default divisor-size limit
    fact = (H % p + 1, (H + 1) % p)  # true, but only residue classes show it
    v = prove_ge(*fact)
    assert v.status == "unknown" and MAX_PROOF_PERIOD.env in v.reason and "10,007" in v.reason
    monkeypatch.setenv(MAX_PROOF_PERIOD.env, "20000")
    monkeypatch.setenv(MAX_PROOF_WORK.env, "5000")
    v = prove_ge(*fact)
    assert v.status == "unknown" and MAX_PROOF_WORK.env in v.reason
    monkeypatch.setenv(MAX_PROOF_WORK.env, "10000000")
    assert prove_ge(*fact).proved
    assert prove_ge((H + 2) % p, H % p).disproved  # false at H = p - 2


def test_work_limit_gives_unknown_never_a_wrong_answer(monkeypatch):
    monkeypatch.setenv(MAX_PROOF_WORK.env, "30")
    v = prove_equal(H // 2 + (H + 1) // 2, H + W // 3 - W // 3 + 0 * W)
    assert v.status in ("proved", "unknown")
    v = prove_equal(H // 2 + (H + 1) // 2 + W // 3, H + (W + 1) // 3)
    assert v.status in ("disproved", "unknown")
    if v.status == "unknown":
        assert MAX_PROOF_WORK.env in v.reason and "docs/limits.md" in v.reason
    else:
        pt = v.counterexample
        assert evaluate(H // 2 + (H + 1) // 2 + W // 3, pt) != evaluate(H + (W + 1) // 3, pt)


def test_bad_limit_values_fall_back_and_are_reported(monkeypatch):
    monkeypatch.setenv(MAX_PROOF_WORK.env, "lots")
    assert MAX_PROOF_WORK.value() == MAX_PROOF_WORK.default
    assert any(MAX_PROOF_WORK.env in m and "positive integer" in m for m in limit_problems())
    monkeypatch.setenv(MAX_PROOF_WORK.env, "0")
    assert limit_problems() and MAX_PROOF_WORK.value() == MAX_PROOF_WORK.default
    monkeypatch.delenv(MAX_PROOF_WORK.env)
    assert limit_problems() == []
