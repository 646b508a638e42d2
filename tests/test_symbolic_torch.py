"""Differential test: random symbolic programs, the checker against PyTorch (issue 11).

Each seeded program from ``symgen.generate`` must be accepted exactly when PyTorch gives every
declared shape at every valid sampled size (with a ``where`` clause's allowed sizes all valid),
and, when accepted, every layer's output expression and the model's valid sizes must match
PyTorch at the sampled sizes (``symgen``'s docstring says precisely what is compared).  The long
run of the same comparison is ``scripts/fuzz_symbolic.py``.
"""

from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
import symgen

import convdsl.frontend

CASES = 150


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on padding='same' with even kernels
        yield


@pytest.mark.parametrize("seed", range(CASES))
def test_random_symbolic_program_agrees_with_torch(seed):
    case = symgen.generate(seed)
    problems = symgen.compare(case)
    assert not problems, f"seed {seed} ({'; '.join(case.notes)})\n{case.text}" + "\n".join(problems)


def test_the_cases_cover_both_answers_and_where_clauses():
    """Not a degenerate sample: both verdicts, where clauses and every layer kind occur."""
    verdicts = set()
    kinds: set = set()
    where = 0
    for seed in range(CASES):
        case = symgen.generate(seed)
        verdicts.add(symgen.oracle(case).accept)
        kinds |= {s[0] for s in case.specs}
        where += bool(case.where)
    assert verdicts == {True, False}
    assert kinds == {"conv", "pool", "gap", "act", "flatten", "dense", "dropout", "softmax"}
    assert where > CASES // 3


def _case(specs, channels=2, where=(), declared=None, output=None, seed=-1):
    texts = symgen._shape_texts(specs, channels)
    out = output or "[" + ", ".join(texts[-1]) + "]"
    case = symgen.Case(seed, channels, list(specs), list(where), list(declared or [None] * len(specs)), out)
    case.text = symgen.render(case, random.Random(0))
    return case


# The classes of issue 11 item 4, written out: products of sizes over both symbols in a flattened
# feature count, and declared sizes of 0 or below.
_POOL2 = ("pool", "max", (2, 2), (2, 2), (0, 0), False, True)
_CONV2 = ("conv", 8, (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1)


@pytest.mark.parametrize("case", [
    _case([_CONV2, ("flatten",), ("dense", 3)], declared=[None, "[N, 8 * (H - 1) * (W - 1)]", None]),
    _case([("conv", 8, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), _POOL2, ("flatten",), ("dense", 3)],
          declared=[None, None, "[N, 8 * (H // 2) * (W // 2)]", None]),
    _case([_POOL2, _CONV2, ("flatten",), ("dense", 2)], where=[("H", "%", 4)],
          declared=[None, None, "[N, 8 * (H // 2 - 1) * (W // 2 - 1)]", None]),
    _case([_CONV2], where=[("H", "==", 2)], output="[N, 8, 0, W - 1]"),
    _case([_CONV2, ("act", "relu")], where=[("H", "==", 2)], declared=["[N, 8, 0, W - 1]", None]),
    _case([_CONV2, _CONV2], where=[("H", "==", 2)], declared=["[N, 8, 1, W - 1]", None]),
    _case([_CONV2, ("flatten",)], output="[N, -8 * (H - 1) * (W - 1)]"),
], ids=["flat-product", "pooled-product", "where-product", "declared-0", "declared-0-then-layer",
        "where-fixed-empty-later", "declared-negative"])
def test_issue_11_classes_agree_with_torch(case):
    assert not symgen.compare(case), case.text + "\n".join(symgen.compare(case))


def test_the_comparison_catches_a_checker_that_ignores_declarations(monkeypatch):
    """The differential test can fail: a checker that skips layer assertions is caught."""
    real = convdsl.frontend.check_source

    def lax(text, file="<input>"):
        lines = [ln.split("  -> ")[0] if ln.startswith("    ") else ln for ln in text.splitlines()]
        return real("\n".join(lines) + "\n", file)

    monkeypatch.setattr(convdsl.frontend, "check_source", lax)
    assert any(symgen.compare(symgen.generate(seed)) for seed in range(40))


def test_the_comparison_catches_wrong_valid_sizes(monkeypatch):
    real = convdsl.frontend.check_source

    def off_by_one(text, file="<input>"):
        checked = real(text, file)
        if not checked.ok:
            return checked
        m = checked.result.models[0]
        wrong = dataclasses.replace(m, valid_for={**m.valid_for, "H": m.valid_for["H"] + 1})
        return dataclasses.replace(checked, result=dataclasses.replace(checked.result, models=(wrong,)))

    monkeypatch.setattr(convdsl.frontend, "check_source", off_by_one)
    assert any(symgen.compare(symgen.generate(seed)) for seed in range(40))
