"""What every part of the checker shares: the diagnostics list, the scope of one walk, and the
evaluation of the language's integer expressions.

The checker is split by concern (``expand``, ``arguments``, ``shapes``, ``constraints`` and the
walk in ``check``); each part reports through one :class:`Reporter`, so diagnostics come out in the
order the walk finds them whichever part found them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..core import symbolic as sy
from ..core.diagnostics import Diagnostic, Note, Span, error, warning
from ..core.symbolic import Dim
from . import ast


class Abort(Exception):
    """Stops checking the current pipeline after an error that leaves no shape."""


class GenericUnsupported(Exception):
    """A block signature that cannot be checked once for all uses (it is checked at each use)."""

    def __init__(self, span: Span, reason: str):
        self.span, self.reason = span, reason


@dataclass(frozen=True)
class Scope:
    """What names mean while walking one pipeline."""

    params: Mapping[str, Dim]  # block parameters (ints when instantiating)
    symbols: Mapping[str, Dim]  # shape symbols visible to declared shapes
    generic: bool  # checking a block signature for all inputs
    uses: tuple[Span, ...]  # block uses that led here, outermost first
    prefix: str  # "stage1." inside an instance
    stack: tuple[str, ...]  # blocks being expanded (for recursion)


class Reporter:
    """The diagnostics found so far, and the expression evaluator that reports into them."""

    def __init__(self) -> None:
        self.diags: list[Diagnostic] = []

    def err(self, code: str, msg: str, span: Span, scope: Scope | None, *notes: Note) -> None:
        self.diags.append(error(code, msg, span, *notes, *use_notes(scope)))

    def warn(self, code: str, msg: str, span: Span, scope: Scope | None, *notes: Note) -> None:
        self.diags.append(warning(code, msg, span, *notes, *use_notes(scope)))

    def count(self, code: str) -> int:
        return sum(1 for d in self.diags if d.code == code)

    def n_errors(self) -> int:
        return sum(1 for d in self.diags if d.severity == "error")

    def dim(self, e: ast.Expr, names: Mapping[str, Dim], scope: Scope | None, what: str) -> Dim:
        """Evaluate an AST expression; unknown names are errors (raises Abort)."""
        match e:
            case ast.Num(value=v):
                return v
            case ast.Name(id=n, span=sp):
                if n in names:
                    return names[n]
                hint = suggest(n, names)
                self.err("unknown-name", f"unknown name '{n}' in {what}", sp, scope,
                         *([Note(f"did you mean '{hint}'?")] if hint else []))
                raise Abort
            case ast.Neg(operand=o):
                return -self.dim(o, names, scope, what)
            case ast.BinOp(op=op, left=l, right=r, span=sp):
                a = self.dim(l, names, scope, what)
                b = self.dim(r, names, scope, what)
                if op == "//" and isinstance(b, int) and b <= 0:
                    self.err("bad-expression", f"division by {b}: '//' needs a positive divisor", r.span, scope)
                    raise Abort
                return arith(op, a, b)
        raise AssertionError(e)

    def shape(self, s: ast.Shape, names: Mapping[str, Dim], scope: Scope | None) -> tuple[Dim, ...]:
        return tuple(self.dim(d, names, scope, "a shape") for d in s.dims)

    def declared(self, s: ast.Shape, names: Mapping[str, Dim], scope: Scope | None) -> tuple[Dim, ...]:
        """A declared shape, every literal size of it at least 1 (raises Abort after reporting one
        that is not).  A declaration is checked against the computed shape, never taken for it: a
        declared 0 would otherwise hide an empty layer and move its error to a later line."""
        dims = self.shape(s, names, scope)
        bad = [(d_ast, d) for d_ast, d in zip(s.dims, dims) if isinstance(d, int) and d < 1]
        for d_ast, d in bad:
            self.err("bad-shape", f"a declared size must be at least 1, not {d}", d_ast.span, scope,
                     Note("no layer has an empty output, so no shape has a size below 1"))
        if bad:
            raise Abort
        return dims


def arith(op: str, a: Dim, b: Dim) -> Dim:
    """``a op b`` for the language's operators (a ``//`` divisor is checked by the caller)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b


def use_notes(scope: Scope | None) -> tuple[Note, ...]:
    if scope is None:
        return ()
    return tuple(Note("in the block used here", s) for s in reversed(scope.uses))


# ------------------------------------------------------------------ wording
AXES = ("height", "width")


def fmt_shape(shape: Iterable[Dim]) -> str:
    return "[" + ", ".join(sy.to_str(d) for d in shape) + "]"


def paren(d: Dim) -> str:
    s = sy.to_str(d)
    return s if isinstance(d, int) or s.isidentifier() else f"({s})"


def source_shape(shape: ast.Shape) -> str:
    """A shape as written (names and integers; expressions as '...')."""
    parts = []
    for d in shape.dims:
        parts.append(d.id if isinstance(d, ast.Name) else str(d.value) if isinstance(d, ast.Num) else "...")
    return "[" + ", ".join(parts) + "]"


def is_sym(d: Dim) -> bool:
    return not isinstance(d, int)


def axis_name(shape: tuple[Dim, ...], axis: int) -> str:
    if len(shape) == 4:
        return ("batch", "channels", "height", "width")[axis]
    return ("batch", "features")[axis] if len(shape) == 2 and axis < 2 else f"axis {axis}"


def suggest(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None
