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


ArgValue = Union[Expr, TupleArg]


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
