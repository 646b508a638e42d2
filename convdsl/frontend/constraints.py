"""A model's ``where`` clause and the input sizes it admits.

``domain_of`` turns the clause into a :class:`~convdsl.core.symbolic.Domain` (lower bounds,
multiples, fixed values); ``valid_for`` derives the smallest input sizes at which every layer is
non-empty, or reports the layer that never is (or is not for some size the clause allows).
"""

from __future__ import annotations

from typing import Mapping

from ..core import symbolic as sy
from ..core.diagnostics import Note
from ..core.model import Layer
from ..core.symbolic import Dim
from . import ast
from .context import Reporter, axis_name, is_sym


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def domain_of(rep: Reporter, m: ast.Model, symbols: Mapping[str, Dim]) -> tuple[sy.Domain | None, set[str]]:
    """The where clause's domain (None after an error) and the symbols it constrains."""
    lower: dict[str, int] = {}
    mult: dict[str, int] = {}
    fixed: dict[str, int] = {}
    constrained: set[str] = set()
    ok = True
    for c in m.where:
        if isinstance(c, ast.Compare):
            sym, val = c.lhs, c.rhs
            op: str = c.op
            if isinstance(sym, ast.Num) and isinstance(val, ast.Name):
                sym, val = val, sym
                op = {">=": "<=", ">": "<", "==": "=="}[op]
            if not (isinstance(sym, ast.Name) and isinstance(val, ast.Num)) or op not in (">=", ">", "=="):
                rep.err("where", "a where clause compares a symbol with an integer: "
                        "'H >= 32', 'H > 31', 'H == 32' or 'H % 4 == 0'", c.span, None)
                ok = False
                continue
            if sym.id not in symbols:
                rep.err("where", f"'{sym.id}' is not a symbol of the input shape", sym.span, None)
                ok = False
                continue
            constrained.add(sym.id)
            if op == ">=":
                lower[sym.id] = max(lower.get(sym.id, 1), val.value)
            elif op == ">":
                lower[sym.id] = max(lower.get(sym.id, 1), val.value + 1)
            else:
                if sym.id in fixed and fixed[sym.id] != val.value:
                    rep.err("where", f"'{sym.id}' is fixed twice to different values", c.span, None)
                    ok = False
                fixed[sym.id] = val.value
        else:
            if not (isinstance(c.value, ast.Name) and isinstance(c.modulus, ast.Num)
                    and isinstance(c.remainder, ast.Num) and c.remainder.value == 0
                    and c.modulus.value >= 1):
                rep.err("where", "a divisibility clause has the form 'H % k == 0' with k >= 1", c.span, None)
                ok = False
                continue
            if c.value.id not in symbols:
                rep.err("where", f"'{c.value.id}' is not a symbol of the input shape", c.value.span, None)
                ok = False
                continue
            constrained.add(c.value.id)
            k = c.modulus.value
            prev = mult.get(c.value.id, 1)
            mult[c.value.id] = prev * k // _gcd(prev, k)
    for s, v in fixed.items():
        if v < lower.get(s, 1) or v % mult.get(s, 1):
            span = next(c.span for c in m.where if isinstance(c, ast.Compare) and c.op == "=="
                        and s in (getattr(c.lhs, "id", None), getattr(c.rhs, "id", None)))
            rep.err("where", f"the where clause leaves no valid value for '{s}'", span, None,
                    Note(f"{s} == {v} contradicts the other constraints on {s}"))
            ok = False
    if not ok:
        return None, constrained
    return sy.Domain(lower=lower, multiple_of=mult, fixed=fixed), constrained


def valid_for(rep: Reporter, m: ast.Model, layers: list[Layer], domain: sy.Domain, constrained: set[str],
              symbols: Mapping[str, Dim]) -> dict[str, int] | None:
    """The smallest valid input sizes, or None after reporting why there are none."""
    conds: list[tuple[Dim, Layer, int]] = []
    for ly in layers:
        for axis, d in enumerate(ly.out_shape):
            if is_sym(d) and sy.free_symbols(d) - {"N"}:
                conds.append((d, ly, axis))
    # A constrained symbol's sizes must be >= 1 everywhere its where clause allows.
    for d, ly, axis in conds:
        free = sy.free_symbols(d) - {"N"}
        if free and free <= constrained:
            v = sy.prove_ge(d, 1, domain)
            if v.status == "disproved":
                need = sy.minimal_values([c for c, _, _ in conds], domain, symbols)
                hint = ""
                if need:
                    hint = "declare where " + ", ".join(
                        f"{s} >= {need[s]}" for s in sorted(free) if need.get(s, 1) > domain.lower.get(s, 1))
                if any(e.code == "size" and e.span == ly.span for e in rep.diags):
                    return None  # the walk reported this layer already (its sizes are fixed by '==')
                rep.err("size", empty_message(ly.name, ly.out_shape, axis, v.counterexample or {}), ly.span, None,
                        *((Note(hint),) if hint and hint != "declare where " else ()))
                return None
    values = sy.minimal_values([c for c, _, _ in conds], domain, list(symbols))
    if values is None:
        # find the first layer that can never be >= 1
        for d, ly, axis in conds:
            if sy.minimal_values([d], domain, list(symbols)) is None:
                # (the search stops where 64-bit generated code stops: say so, the size may exist beyond)
                rep.err("size", f"{ly.name} has an empty output for every input size up to 2^63 - 1, the "
                        f"largest the generated code can index ({axis_name(ly.out_shape, axis)} "
                        f"{sy.to_str(d)})", ly.span, None)
                return None
        rep.err("size", f"model '{m.name}' has no valid input size", m.span, None)
        return None
    values.setdefault("N", 1)
    return {s: values.get(s, 1) for s in symbols}


def empty_message(name: str, shape: tuple[Dim, ...], axis: int, values: Mapping[str, int]) -> str:
    """A layer's size that is below 1 at sizes the where clause allows."""
    d = shape[axis]
    where = ", ".join(f"{k} = {v}" for k, v in sorted(values.items()) if k != "N")
    return (f"{name}'s {axis_name(shape, axis)} {sy.to_str(d)} is {sy.evaluate(d, {**values, 'N': 1})} "
            f"for {where}, which the where clause allows")


def empty_where_fixed(shape: tuple[Dim, ...], domain: sy.Domain) -> tuple[int, dict[str, int]] | None:
    """The first axis (not the batch) whose size is below 1 with the symbols ``where ... ==``
    fixes (the ones it uses all fixed), and those values; None if there is none."""
    for axis, d in enumerate(shape[1:], start=1):
        if is_sym(d):
            free = sy.free_symbols(d) - {"N"}
            if free and free <= domain.fixed.keys():
                values = {x: domain.fixed[x] for x in sorted(free)}
                if sy.evaluate(d, {**values, "N": 1}) < 1:
                    return axis, values
    return None


def _conds(layers: list[Layer]) -> list[Dim]:
    return [d for ly in layers for d in ly.out_shape if is_sym(d) and sy.free_symbols(d) - {"N"}]


def _minimal(conds: list[Dim], domain: sy.Domain) -> dict[str, int] | None:
    return sy.minimal_values(conds, domain) if conds else None


def _narrow(domain: sy.Domain, need: dict[str, int] | None) -> sy.Domain:
    if not need:
        return domain
    lower = dict(domain.lower)
    for k, v in need.items():
        lower[k] = max(lower.get(k, 1), v)
    return sy.Domain(lower=lower, multiple_of=domain.multiple_of, fixed=domain.fixed)


class DomainSoFar:
    """The domain narrowed to sizes where every layer so far is non-empty, for a pipeline that
    grows a layer at a time.  Counterexamples are drawn from it, so that none is an input the
    model rejects anyway.

    Asked at every declared shape, the search over all layers so far made a long declared
    pipeline quadratic (4,999 declared layers: minutes).  The smallest sizes are the least
    fixpoint of non-decreasing conditions (``symbolic.minimal_values``), so while the sizes found
    for the earlier layers keep the new layers non-empty too, they are still the smallest: only
    the new layers' sizes are evaluated there."""

    def __init__(self) -> None:
        # id of the layers list -> (the list, how many layers were seen, the domain, the sizes found)
        self.memo: dict[int, tuple[list[Layer], int, sy.Domain, dict[str, int] | None]] = {}

    def __call__(self, layers: list[Layer], domain: sy.Domain) -> sy.Domain:
        known = self.memo.get(id(layers))
        if known is not None and known[0] is layers and known[2] is domain and known[1] <= len(layers) \
                and known[3] and self._still_least(known[3], _conds(layers[known[1]:]), domain):
            need: dict[str, int] | None = known[3]
        else:
            need = _minimal(_conds(layers), domain)
        self.memo[id(layers)] = (layers, len(layers), domain, need)
        return _narrow(domain, need)

    @staticmethod
    def _still_least(need: dict[str, int], new: list[Dim], domain: sy.Domain) -> bool:
        env = {**need, **domain.fixed, "N": 1}
        for d in new:
            if not sy.free_symbols(d) - {"N"} <= need.keys():
                return False
            try:
                if sy.evaluate(d, env) < 1:
                    return False
            except (ValueError, ZeroDivisionError):
                return False
        return True
