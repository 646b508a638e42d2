"""The abstract syntax tree of a ``.conv`` file.

Produced by :func:`convdsl.frontend.parse.parse`; consumed by :func:`convdsl.frontend.check.check`.
Every node is immutable and carries the :class:`~convdsl.core.diagnostics.Span` of
the source text it came from, so that any later diagnostic can point at it.

The parser does not interpret names: ``padding=same``, ``bias=false`` and
``ceil=true`` arrive as :class:`Name` nodes, and an op that is neither built in
nor a block is an error found by the checker, not the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from ..core.diagnostics import Span


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True, slots=True)
class Num:
    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


BinOpKind = Literal["+", "-", "*", "//"]


@dataclass(frozen=True, slots=True)
class BinOp:
    op: BinOpKind
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: "Expr"
    span: Span


Expr = Union[Num, Name, BinOp, Neg]


@dataclass(frozen=True, slots=True)
class TupleArg:
    """A parenthesised tuple argument: ``(h, w)`` or ``(top, bottom, left, right)``."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Decimal:
    """A decimal literal argument, as written (``0.5``, ``.25``, ``-0.1``): only ``dropout`` takes one."""

    text: str
    span: Span


ArgValue = Union[Expr, TupleArg, Decimal]


@dataclass(frozen=True, slots=True)
class Arg:
    """``value`` (positional, ``key is None``) or ``key=value``."""

    key: str | None
    value: ArgValue
    span: Span  # the whole argument, key included
    key_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """A bracketed shape such as ``[N, 6, H // 2, W // 2]``."""

    dims: tuple[Expr, ...]
    span: Span


# ---------------------------------------------------------------- statements
@dataclass(frozen=True, slots=True)
class Layer:
    """``[label:] op[(args)] [-> shape]``: a built-in op or a use of a block."""

    label: str | None
    label_span: Span | None
    op: str
    op_span: Span
    args: tuple[Arg, ...]
    args_span: Span | None  # the parenthesised argument list, when present
    declared: Shape | None
    span: Span  # the whole line


@dataclass(frozen=True, slots=True)
class Repeat:
    """``repeat count { body }``."""

    count: Expr
    body: tuple["Stmt", ...]
    span: Span  # the ``repeat count`` head


Stmt = Union[Layer, Repeat]


# ---------------------------------------------------------------- constraints
@dataclass(frozen=True, slots=True)
class Compare:
    """``lhs >= rhs``, ``lhs > rhs`` or ``lhs == rhs`` in a ``where`` clause."""

    op: Literal[">=", ">", "=="]
    lhs: Expr
    rhs: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Divisible:
    """``value % modulus == remainder`` in a ``where`` clause (remainder usually 0)."""

    value: Expr
    modulus: Expr
    remainder: Expr
    span: Span


Constraint = Union[Compare, Divisible]


# ---------------------------------------------------------------- top level
@dataclass(frozen=True, slots=True)
class Param:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    name_span: Span
    input: Param  # the input tensor's name, e.g. ``x``
    input_shape: Shape
    output_shape: Shape
    where: tuple[Constraint, ...]
    body: tuple[Stmt, ...]
    span: Span  # the ``model NAME(...) -> SHAPE`` head


@dataclass(frozen=True, slots=True)
class Block:
    name: str
    name_span: Span
    params: tuple[Param, ...]
    signature: tuple[Shape, Shape] | None  # ``: IN -> OUT``
    body: tuple[Stmt, ...]
    span: Span  # the ``block NAME(...)`` head


Item = Union[Model, Block]


@dataclass(frozen=True, slots=True)
class Program:
    file: str
    items: tuple[Item, ...]

    @property
    def models(self) -> tuple[Model, ...]:
        return tuple(i for i in self.items if isinstance(i, Model))

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(i for i in self.items if isinstance(i, Block))


# ---------------------------------------------------------------- printing
def format_program(program: Program) -> str:
    """The syntax tree as indented text: what ``convdsl compile --emit ast`` prints.

    One line per node that a reader thinks of as a unit (a model or block and its parts, a
    ``where`` constraint, a layer, a ``repeat``), indented by nesting and ending in the node's
    ``@line:column``.  It shows what the parser built, before any checking: labels only where the
    source has one (automatic names such as ``sigmoid1`` come from the checker), blocks and
    ``repeat`` not expanded, argument names such as ``same`` or ``false`` as plain names, and every
    compound expression in parentheses, so the grouping the parser chose (``(H // 4) - 1``) can be
    read off rather than recalled from precedence rules.
    """
    lines = [f"program {program.file}"]
    for item in program.items:
        if isinstance(item, Model):
            lines.append(f"  model {item.name}{_at(item.span)}")
            lines.append(f"    input {item.input.name}: {_shape_text(item.input_shape)}")
            lines.append(f"    output {_shape_text(item.output_shape)}")
            lines += [f"    where {_constraint_text(c)}{_at(c.span)}" for c in item.where]
        else:
            lines.append(f"  block {item.name}({', '.join(p.name for p in item.params)}){_at(item.span)}")
            if item.signature is not None:
                lines.append(f"    signature {_shape_text(item.signature[0])} -> {_shape_text(item.signature[1])}")
        _body_lines(item.body, "    ", lines)
    return "\n".join(lines) + "\n"


def _body_lines(body: tuple[Stmt, ...], indent: str, lines: list[str]) -> None:
    for stmt in body:
        if isinstance(stmt, Repeat):
            lines.append(f"{indent}repeat {_expr_text(stmt.count, top=True)}{_at(stmt.span)}")
            _body_lines(stmt.body, indent + "  ", lines)
            continue
        text = (f"{stmt.label}: " if stmt.label is not None else "") + stmt.op
        if stmt.args_span is not None:
            text += "(" + ", ".join(_arg_text(a) for a in stmt.args) + ")"
        if stmt.declared is not None:
            text += f" -> {_shape_text(stmt.declared)}"
        lines.append(f"{indent}layer {text}{_at(stmt.span)}")


def _at(span: Span) -> str:
    return f"  @{span.line}:{span.column}"


def _arg_text(arg: Arg) -> str:
    value = arg.value
    if isinstance(value, TupleArg):
        text = "(" + ", ".join(_expr_text(e, top=True) for e in value.items) + ")"
    elif isinstance(value, Decimal):
        text = value.text
    else:
        text = _expr_text(value, top=True)
    return text if arg.key is None else f"{arg.key}={text}"


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(_expr_text(d, top=True) for d in shape.dims) + "]"


def _constraint_text(c: Constraint) -> str:
    if isinstance(c, Compare):
        return f"{_expr_text(c.lhs, top=True)} {c.op} {_expr_text(c.rhs, top=True)}"
    return f"{_expr_text(c.value)} % {_expr_text(c.modulus)} == {_expr_text(c.remainder, top=True)}"


def _expr_text(e: Expr, top: bool = False) -> str:
    """An expression with every operation but the outermost in parentheses."""
    match e:
        case Num(value=v):
            return str(v)
        case Name(id=name):
            return name
        case Neg(operand=x):
            text = f"-{_expr_text(x)}"
        case BinOp(op=op, left=a, right=b):
            text = f"{_expr_text(a)} {op} {_expr_text(b)}"
        case _:
            raise AssertionError(e)
    return text if top else f"({text})"
