"""The checked model: what the checker produces and the back end consumes.

A :class:`CheckedModel` is a flat pipeline of :class:`Layer` objects in
execution order (block instances already expanded, layer names dotted), each
with its operation's arguments fully resolved to integers and its input and
output shapes as :data:`~convdsl.core.symbolic.Dim` values: plain ``int`` where the
size is known, a canonical :class:`~convdsl.core.symbolic.Expr` where it depends on
symbols such as ``N``, ``H`` or ``W``.

Precondition for the back end: the model came out of :func:`convdsl.frontend.check.check`
without errors.  Nothing past this point reports user errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Mapping

from .diagnostics import Span
from .ops import (  # noqa: F401  (the op nodes are part of the checked model's vocabulary)
    Activation,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Op,
    Pool,
    Softmax,
    op_kind,
    shown_fields,
    weight_shapes,
)
from .symbolic import Dim, evaluate, to_str
from .text import format_shape


def format_op(op: Op) -> str:
    """The op with every argument resolved, as the back end receives it.

    ``conv(c_in=1, c_out=6, kernel=(5, 5), stride=(1, 1), padding=(2, 2, 2, 2), dilation=(1, 1),
    groups=1, bias=true)``: unlike the layer's ``text`` (the arguments as written), defaults are
    filled in, ``padding=same`` is the four pads it came to, and the field names are those of the
    op's dataclass (:mod:`convdsl.core.ops`), so that a reader of ``convdsl compile --emit model``
    sees exactly what ``check`` decided.  The kind of a pool or an activation is in the name, not
    repeated; fields that do not apply to the op (a max pool's ``count_pad``) are left out.
    """
    args = [f"{name}={_arg_text(getattr(op, name))}" for name in shown_fields(op)]
    return op_kind(op) + (f"({', '.join(args)})" if args else "")


def _arg_text(value: object) -> str:
    if isinstance(value, bool):  # the language's spelling (``bias=false``)
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_arg_text(v) for v in value) + ")"
    return to_str(value)  # type: ignore[arg-type]  # (an int or a symbolic Dim)


@dataclass(frozen=True, slots=True)
class Layer:
    name: str  # unique in the model; dotted inside block instances (``stage1.conv2``)
    op: Op
    in_shape: tuple[Dim, ...]
    out_shape: tuple[Dim, ...]
    params: Dim  # number of learned parameters
    macs: Dim  # multiply-accumulates per image
    text: str  # the op as written, normalised: ``conv(6, kernel=5, padding=2)``
    span: Span  # the layer's line (inside the block, for block instances)
    use_spans: tuple[Span, ...] = ()  # the block uses that led here, outermost first

    @property
    def kind(self) -> str:
        """The op's name as the language spells it (``conv``, ``maxpool``, ...)."""
        return op_kind(self.op)

    def weight_shapes(self) -> dict[str, tuple[Dim, ...]]:
        return {f"{self.name}.{k}": v for k, v in weight_shapes(self.op).items()}


@dataclass(frozen=True, slots=True)
class CheckedModel:
    name: str
    input_name: str
    input_shape: tuple[Dim, ...]  # [N, C, H, W]
    output_shape: tuple[Dim, ...]
    layers: tuple[Layer, ...]
    valid_for: Mapping[str, int]  # smallest allowed value of every symbol
    multiple_of: Mapping[str, int] = field(default_factory=dict)  # from ``where H % k == 0``
    fixed: Mapping[str, int] = field(default_factory=dict)  # from ``where H == 32``
    params: Dim = 0
    macs: Dim = 0
    span: Span | None = None

    def weight_shapes(self) -> dict[str, tuple[Dim, ...]]:
        shapes: dict[str, tuple[Dim, ...]] = {}
        for layer in self.layers:
            shapes.update(layer.weight_shapes())
        return shapes

    def sizes(self, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
        """Every symbol but the batch ``N``: the smallest valid value unless ``overrides`` sets it."""
        env = {s: v for s, v in self.valid_for.items() if s != "N"}
        env.update({k: v for k, v in (overrides or {}).items() if k != "N"})
        return env

    def bind(self, env: Mapping[str, int]) -> "ConcreteModel":
        """Every shape evaluated for concrete symbol values (``N`` excluded is fine)."""
        full = dict(env)
        full.setdefault("N", 1)

        def ev(shape: tuple[Dim, ...]) -> tuple[int, ...]:
            return tuple(evaluate(d, full) for d in shape)

        return ConcreteModel(
            self,
            ev(self.input_shape)[1:],
            tuple((ly, ev(ly.in_shape)[1:], ev(ly.out_shape)[1:], _bind_op(ly.op, full)) for ly in self.layers),
        )


def _bind_op(op: Op, env: Mapping[str, int]) -> Op:
    """``op`` with every symbolic field (a conv's or dense layer's input size) evaluated."""
    changes: dict[str, object] = {f.name: evaluate(v, env) for f in fields(op)
                                  if not isinstance(v := getattr(op, f.name), (int, float, str, tuple))}
    # replace() on a union of dataclasses cannot be typed field by field; the names come from
    # fields(op) itself, so each is a field of this op's class.
    return replace(op, **changes) if changes else op  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ConcreteModel:
    """A checked model with every size but the batch known: what ``lower`` takes.

    ``layers`` holds ``(layer, in_shape, out_shape, op)`` with shapes per image
    (the batch axis dropped) and the op's symbolic fields evaluated.
    """

    model: CheckedModel
    input_shape: tuple[int, ...]
    layers: tuple[tuple[Layer, tuple[int, ...], tuple[int, ...], Op], ...]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1][2] if self.layers else self.input_shape


# ------------------------------------------------------------------ text
def valid_for_text(m: CheckedModel) -> str:
    """The input sizes the model accepts, in a sentence: ``valid for H >= 16 (a multiple of 4), W == 32``."""
    parts = []
    for s, v in m.valid_for.items():
        if s in m.fixed:
            parts.append(f"{s} == {m.fixed[s]}")
            continue
        text = f"{s} >= {v}"
        k = m.multiple_of.get(s, 1)
        if k > 1:
            text += f" (a multiple of {k})"
        parts.append(text)
    return "valid for " + ", ".join(parts) if parts else "valid for every input (all sizes fixed)"


def format_model(m: CheckedModel) -> str:
    """The checked, flattened model as text: what ``convdsl compile --emit model`` prints.

    A signature line and the sizes the model is valid for, then one line per layer in execution
    order (block instances expanded, names dotted): the layer's name, its input and output shapes
    (per the whole batch, symbolic where symbolic) and its op with every argument resolved
    (:func:`format_op`).  The shapes come before the op so that they line up in columns; the op,
    of any length, ends the line.  Costs (parameters, MACs) are ``convdsl check``'s table, not this.
    """
    rows = [(ly.name, format_shape(ly.in_shape), format_shape(ly.out_shape), format_op(ly.op)) for ly in m.layers]
    w_name = max((len(r[0]) for r in rows), default=0)
    w_in = max((len(r[1]) for r in rows), default=0)
    w_out = max((len(r[2]) for r in rows), default=0)
    lines = [f"model {m.name}({m.input_name}: {format_shape(m.input_shape)}) -> {format_shape(m.output_shape)}",
             valid_for_text(m)]
    lines += [f"  {name:<{w_name}}  {i:<{w_in}} -> {o:<{w_out}}  {op}" for name, i, o, op in rows]
    return "\n".join(lines) + "\n"
