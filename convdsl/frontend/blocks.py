"""A block use's inputs: its arguments (integers, every parameter given) and its input shape
matched against the block's signature, binding the signature's shape names."""

from __future__ import annotations

from typing import Mapping

from ..core import symbolic as sy
from ..core.diagnostics import Note
from ..core.symbolic import Dim
from . import ast
from .arguments import match_args, read_int
from .context import Abort, Reporter, Scope, fmt_shape, source_shape


def block_args(rep: Reporter, ly: ast.Layer, block: ast.Block, scope: Scope) -> dict[str, Dim]:
    """The values of the block's parameters at this use."""
    pnames = [p.name for p in block.params]
    defined = Note("the block is defined here", block.span)
    values: dict[str, Dim] = {}
    for key, v in match_args(rep, ly, tuple(pnames), pnames, f"block '{block.name}'", scope, defined).items():
        if v.kind != "int":
            read_int(rep, v, "a block argument", scope, -(10 ** 9))  # reports unknown names
            rep.err("bad-argument", f"block arguments are integers, not {v.text()}", v.span, scope)
            raise Abort
        values[key] = v.dim
    missing = [p for p in pnames if p not in values]
    if missing:
        rep.err("bad-argument", f"block '{block.name}' needs the argument{'s' if len(missing) > 1 else ''} "
                + ", ".join(f"'{m}'" for m in missing), ly.args_span or ly.op_span, scope, defined)
        raise Abort
    return values


def match_signature(rep: Reporter, block: ast.Block, ly: ast.Layer, values: Mapping[str, Dim],
                    shape: tuple[Dim, ...], scope: Scope, domain: sy.Domain) -> dict[str, Dim]:
    """The signature's shape names bound by the input shape at this use (an error if it does not fit)."""
    assert block.signature is not None
    sig_in = block.signature[0]
    if len(sig_in.dims) != len(shape):
        rep.err("shape-mismatch", f"block '{block.name}' takes a {len(sig_in.dims)}-D input, "
                f"but gets {fmt_shape(shape)}", ly.op_span, scope, Note("the signature is here", sig_in.span))
        raise Abort
    bound: dict[str, Dim] = {}
    for d_ast, actual in zip(sig_in.dims, shape):
        if isinstance(d_ast, ast.Name) and d_ast.id not in values:
            if d_ast.id in bound:
                if sy.prove_equal(bound[d_ast.id], actual, domain).status != "proved":
                    rep.err("shape-mismatch", f"block '{block.name}' expects an input "
                            f"{source_shape(sig_in)}, but gets {fmt_shape(shape)} "
                            f"('{d_ast.id}' would be both {sy.to_str(bound[d_ast.id])} and {sy.to_str(actual)})",
                            ly.op_span, scope, Note("the signature is here", sig_in.span))
                    raise Abort
            bound[d_ast.id] = actual
    names = {**bound, **values}
    expected = rep.declared(sig_in, names, scope)
    for e, a in zip(expected, shape):
        if sy.prove_equal(e, a, domain).status != "proved":
            rep.err("shape-mismatch", f"block '{block.name}' expects an input {fmt_shape(expected)}, "
                    f"but gets {fmt_shape(shape)}", ly.op_span, scope, Note("the signature is here", sig_in.span))
            raise Abort
    return bound
