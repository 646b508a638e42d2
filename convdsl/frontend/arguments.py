"""Reading a layer's arguments: matching them to parameter names, evaluating them, and reading
each in the form its parameter's kind says (``core.ops.ArgKind``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from ..core import symbolic as sy
from ..core.diagnostics import Note, Span
from ..core.ops import OPS, REQUIRED, Param
from ..core.symbolic import Dim
from . import ast
from .context import Abort, Reporter, Scope, suggest

WORDS = ("true", "false", "same", "valid")


@dataclass(frozen=True)
class Value:
    """An evaluated argument: an integer Dim, a tuple of Dims, a bare name or a decimal literal."""

    kind: str  # "int" | "tuple" | "name" | "decimal" (the literal's text in ``name``)
    span: Span
    dim: Dim = 0
    items: tuple[Dim, ...] = ()
    name: str = ""

    def text(self) -> str:
        if self.kind == "int":
            return sy.to_str(self.dim)
        if self.kind == "tuple":
            return "(" + ", ".join(sy.to_str(i) for i in self.items) + ")"
        return self.name


def match_args(rep: Reporter, ly: ast.Layer, positional: tuple[str, ...], keys: Iterable[str], owner: str,
               scope: Scope, *notes: Note) -> dict[str, Value]:
    """Match a call's arguments to parameter names (positional first, then key=value)."""
    keys = list(keys)
    bound: dict[str, Value] = {}
    seen_kw = False
    for i, a in enumerate(ly.args):
        if a.key is None:
            if seen_kw:
                rep.err("bad-argument", "a positional argument cannot follow a keyword argument", a.span, scope)
                raise Abort
            if i >= len(positional):
                plural = "s" if len(positional) != 1 else ""
                msg = (f"{owner} takes no arguments" if not positional else
                       f"{owner} takes at most {len(positional)} positional argument{plural} "
                       f"({', '.join(positional)})")
                rest = [k for k in keys if k not in positional]
                hint = (Note("give the others by name: " + ", ".join(f"{k}=..." for k in rest)),) if rest else ()
                rep.err("bad-argument", msg, a.span, scope, *hint, *notes)
                raise Abort
            key = positional[i]
        else:
            seen_kw = True
            key = a.key
            if key not in keys:
                hint_word = suggest(key, keys)
                rep.err("unknown-argument", f"{owner} has no argument '{key}'", a.key_span or a.span, scope,
                        Note(f"did you mean '{hint_word}'?") if hint_word else
                        Note(f"{owner} takes " + (", ".join(keys) if keys else "no arguments")), *notes)
                raise Abort
        if key in bound:
            rep.err("bad-argument", f"argument '{key}' is given twice", a.span, scope)
            raise Abort
        bound[key] = evaluate(rep, a.value, scope)
    return bound


def bind_op_args(rep: Reporter, ly: ast.Layer, scope: Scope) -> dict[str, Value]:
    """A built-in op's arguments by parameter name; a missing required one is an error."""
    d = OPS[ly.op]
    bound = match_args(rep, ly, d.positional, [p.name for p in d.params], ly.op, scope)
    for p in d.params:
        if p.default is REQUIRED and p.name not in bound:
            rep.err("bad-argument", f"{ly.op} needs the argument '{p.name}'", ly.args_span or ly.op_span, scope,
                    Note(d.usage))
            raise Abort
    return bound


def evaluate(rep: Reporter, v: ast.ArgValue, scope: Scope) -> Value:
    if isinstance(v, ast.Decimal):
        return Value("decimal", v.span, name=v.text)
    if isinstance(v, ast.TupleArg):
        items = tuple(rep.dim(e, scope.params, scope, "an argument") for e in v.items)
        return Value("tuple", v.span, items=items)
    if isinstance(v, ast.Name) and v.id not in scope.params and v.id not in scope.symbols:
        # A bare word: true/false/same/valid, or a typo the typed readers report in context.
        return Value("name", v.span, name=v.id)
    if isinstance(v, ast.Name) and v.id not in scope.params and v.id in scope.symbols:
        rep.err("bad-argument", f"layer arguments are integers: the shape symbol '{v.id}' cannot be one",
                v.span, scope)
        raise Abort
    return Value("int", v.span, dim=rep.dim(v, scope.params, scope, "an argument"))


# ------------------------------------------------------------ typed readers
def read_int(rep: Reporter, v: Value, what: str, scope: Scope, minimum: int) -> Dim:
    if v.kind == "name" and v.name not in WORDS:
        hint = suggest(v.name, scope.params)
        rep.err("unknown-name", f"unknown name '{v.name}' in an argument", v.span, scope,
                *([Note(f"did you mean '{hint}'?")] if hint else []))
        raise Abort
    if v.kind != "int":
        rep.err("bad-argument", f"{what} must be an integer, not {v.text()}", v.span, scope,
                *([Note("only a dropout probability is a decimal number")] if v.kind == "decimal" else []))
        raise Abort
    if isinstance(v.dim, int) and v.dim < minimum:
        qual = "positive" if minimum == 1 else "negative" if minimum == 0 else f">= {minimum}"
        msg = (f"{what} must be positive, not {v.dim}" if minimum == 1 else
               f"{what} cannot be negative ({v.dim})" if minimum == 0 else f"{what} must be {qual}")
        rep.err("bad-argument", msg, v.span, scope)
        raise Abort
    return v.dim


def _pair(rep: Reporter, v: Value, what: str, scope: Scope, minimum: int) -> tuple[Dim, Dim]:
    if v.kind == "tuple":
        if len(v.items) != 2:
            rep.err("bad-argument", f"{what} takes an integer or a pair (h, w), not {len(v.items)} values",
                    v.span, scope)
            raise Abort
        for it in v.items:
            if isinstance(it, int) and it < minimum:
                read_int(rep, Value("int", v.span, dim=it), what, scope, minimum)
        return v.items[0], v.items[1]
    x = read_int(rep, v, what, scope, minimum)
    return x, x


def _bool(rep: Reporter, v: Value, what: str, scope: Scope) -> bool:
    if v.kind == "name" and v.name in ("true", "false"):
        return v.name == "true"
    rep.err("bad-argument", f"{what} is true or false, not {v.text()}", v.span, scope)
    raise Abort


def _probability(rep: Reporter, v: Value, what: str, scope: Scope) -> float:
    literal = v.dim if v.kind == "int" and isinstance(v.dim, int) else None
    if v.kind == "decimal" or literal is not None:
        p = float(v.name) if literal is None else float(literal)
        if 0.0 <= p < 1.0:
            return p
        rep.err("bad-argument", f"{what} must be at least 0 and below 1, not {v.text()}", v.span, scope)
        raise Abort
    rep.err("bad-argument", f"{what} is a decimal number such as 0.5, not {v.text()}", v.span, scope)
    raise Abort


def _conv_padding(rep: Reporter, v: Value, scope: Scope) -> tuple[Dim, ...] | str:
    if v.kind == "name":
        if v.name in ("valid", "same"):
            return (0, 0, 0, 0) if v.name == "valid" else "same"
        rep.err("bad-argument", f"padding is an integer, (ph, pw), (top, bottom, left, right), same or valid, "
                f"not {v.name}", v.span, scope)
        raise Abort
    if v.kind != "tuple":
        p = read_int(rep, v, "padding", scope, 0)
        return (p, p, p, p)
    if len(v.items) == 2:
        ph, pw = v.items
        out: tuple[Dim, ...] = (ph, ph, pw, pw)
    elif len(v.items) == 4:
        out = tuple(v.items)
    else:
        rep.err("bad-argument", f"padding takes 1, 2 or 4 values, not {len(v.items)}", v.span, scope)
        raise Abort
    for p in out:
        if isinstance(p, int) and p < 0:
            rep.err("bad-argument", f"padding cannot be negative ({p})", v.span, scope)
            raise Abort
    return out


def _pool_padding(rep: Reporter, v: Value, scope: Scope) -> tuple[Dim, Dim]:
    if v.kind == "name" and v.name == "valid":
        return (0, 0)
    if v.kind == "name":
        rep.err("bad-argument", f"pool padding is an integer or (ph, pw), not {v.name}", v.span, scope)
        raise Abort
    return _pair(rep, v, "padding", scope, 0)


def read(rep: Reporter, p: Param, v: Value, scope: Scope) -> object:
    """An argument's value in the resolved form its kind says (``core.ops.ArgKind``)."""
    match p.kind:
        case "count":
            return read_int(rep, v, p.what, scope, 1)
        case "pair":
            return _pair(rep, v, p.what, scope, 1)
        case "bool":
            return _bool(rep, v, p.what, scope)
        case "conv_padding":
            return _conv_padding(rep, v, scope)
        case "pool_padding":
            return _pool_padding(rep, v, scope)
        case "probability":
            return _probability(rep, v, p.what, scope)
    raise AssertionError(p.kind)


def op_text(ly: ast.Layer, args: Mapping[str, Value]) -> str:
    """The call as the model's layer table shows it (arguments evaluated)."""
    if not ly.args and ly.args_span is None:
        return ly.op
    parts = []
    for a, (key, v) in zip(ly.args, args.items()):
        parts.append(v.text() if a.key is None else f"{key}={v.text()}")
    return f"{ly.op}({', '.join(parts)})"
