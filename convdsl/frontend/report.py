"""Presentation of check results: the per-layer summary table and the JSON form.

Both are pure functions of a :class:`~convdsl.frontend.check.CheckResult`; the CLI only
prints what they return.
"""

from __future__ import annotations

from typing import Iterable

from ..core import symbolic as sy
from ..core.model import CheckedModel, Conv, Layer, valid_for_text
from ..core.symbolic import Dim
from ..core.text import format_shape
from .check import CheckResult


def _num(d: Dim) -> str:
    return f"{d:,}" if isinstance(d, int) else sy.to_str(d)


def _factor(d: Dim) -> str:
    s = sy.to_str(d)
    return s if isinstance(d, int) or s.isidentifier() else f"({s})"


def macs_terms(layer: Layer) -> tuple[int, list[str]]:
    """A layer's MACs as a constant plus symbolic products, kept factored.

    The canonical form expands ``c * (H // 4 - 2) * (W // 4 - 2)`` into four
    terms; the product of the output sizes is what a reader expects to see.
    """
    if isinstance(layer.macs, int):
        return layer.macs, []
    if isinstance(layer.op, Conv) and isinstance(layer.macs, sy.Expr):
        coef: Dim = layer.op.c_out * (layer.op.c_in // layer.op.groups) * layer.op.kernel[0] * layer.op.kernel[1]
        factors = [coef, layer.out_shape[2], layer.out_shape[3]]
        const = 1
        syms = []
        for f in factors:
            if isinstance(f, int):
                const *= f
            else:
                syms.append(_factor(f))
        return 0, [" * ".join(([str(const)] if const != 1 else []) + syms)]
    return 0, [sy.to_str(layer.macs)]


def macs_text(layers: Iterable[Layer]) -> str | int:
    """Total MACs: an int, or a readable sum of factored terms."""
    return _sum_terms([macs_terms(ly) for ly in layers])


def _sum_terms(parts: list[tuple[int, list[str]]]) -> str | int:
    const, terms = 0, []
    for c, t in parts:
        const += c
        terms += t
    if not terms:
        return const
    return " + ".join(terms + ([str(const)] if const else []))


def _macs(v: int | str) -> str:
    return f"{v:,}" if isinstance(v, int) else v


_MAX_ALIGNED = 200


def summary_table(m: CheckedModel) -> str:
    """A torchinfo-like table: name, op, output shape, params, MACs per image."""
    head = ("layer", "op", "output shape", "params", "MACs/image")
    terms = [macs_terms(ly) for ly in m.layers]  # (once a layer: the total is their sum)
    rows = [(ly.name, ly.text, format_shape(ly.out_shape), _num(ly.params), _macs(_sum_terms([t])))
            for ly, t in zip(m.layers, terms)]
    total = ("total", "", format_shape(m.output_shape), _num(m.params), _macs(_sum_terms(terms)))
    # A total too long to read as one cell (a sum of thousands of terms) is not what the column is
    # aligned to: padding every row to it would make the table rows times its size.
    aligned = [total] if len(total[4]) <= _MAX_ALIGNED else [(*total[:4], "")]
    widths = [max(len(r[i]) for r in [head, *rows, *aligned]) for i in range(5)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            r[i].rjust(widths[i]) if i >= 3 else r[i].ljust(widths[i]) for i in range(5)
        ).rstrip()

    rule = "-" * len(line(tuple(" " * w for w in widths)).ljust(sum(widths) + 8))
    sig = f"model {m.name}({m.input_name}: {format_shape(m.input_shape)}) -> {format_shape(m.output_shape)}"
    out = [sig, rule, line(head), rule, *(line(r) for r in rows), rule, line(total), rule, valid_for_text(m)]
    return "\n".join(out)


def text_report(result: CheckResult) -> str:
    return "\n\n".join(summary_table(m) for m in result.models)


def json_report(result: CheckResult) -> dict:
    return {
        "ok": result.ok,
        "models": [model_json(m) for m in result.models],
        "warnings": [d.to_json() for d in result.warnings],
        "errors": [d.to_json() for d in result.errors],
    }


def model_json(m: CheckedModel) -> dict:
    return {
        "name": m.name,
        "input": [sy.to_json(d) for d in m.input_shape],
        "output": [sy.to_json(d) for d in m.output_shape],
        "valid_for": dict(m.valid_for),
        "multiple_of": dict(m.multiple_of),
        "fixed": dict(m.fixed),
        "params": sy.to_json(m.params),
        "macs": macs_text(m.layers),
        "layers": [
            {
                "name": ly.name,
                "op": ly.kind,
                "text": ly.text,
                "line": ly.span.line,
                "shape": [sy.to_json(d) for d in ly.out_shape],
                "params": sy.to_json(ly.params),
                "macs": macs_text([ly]),
            }
            for ly in m.layers
        ],
    }
