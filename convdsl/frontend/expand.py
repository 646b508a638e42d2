"""The structure of bodies: ``repeat`` expanded into a flat list of layer lines, layers named
(labels checked, automatic names ``conv1``, ``conv2``, ... given), and the block-level checks that
need no shapes (unknown ops, duplicate parameters, blocks that use themselves)."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..core.diagnostics import Note, Span
from ..core.ops import OPS
from . import ast
from .context import Abort, GenericUnsupported, Reporter, Scope, arith, suggest

BUILTIN_OPS = tuple(OPS)


def expand(rep: Reporter, body: tuple[ast.Stmt, ...], scope: Scope,
           reps: int = 1) -> list[tuple[ast.Layer, int]] | None:
    """Every layer line of ``body`` in order, repeats unrolled, each with the product of the repeat
    counts around it; None after an error."""
    out: list[tuple[ast.Layer, int]] = []
    if not body:
        return out
    for st in body:
        if isinstance(st, ast.Layer):
            out.append((st, reps))
            continue
        try:
            k = rep.dim(st.count, scope.params, scope, "a repeat count")
        except Abort:
            return None
        if not isinstance(k, int):
            if scope.generic:
                raise GenericUnsupported(st.span, "its repeat count depends on a parameter")
            raise AssertionError("symbolic repeat count outside generic mode")
        if k < 1:
            rep.err("bad-argument", f"a repeat count must be at least 1, not {k}", st.count.span, scope)
            return None
        if not st.body:
            rep.err("empty", "a repeat body must hold at least one layer", st.span, scope)
            return None
        inner = expand(rep, st.body, scope, reps * k)
        if inner is None:
            return None
        out.extend(inner * k)
    return out


def name_layers(rep: Reporter, flat: list[tuple[ast.Layer, int]], scope: Scope) -> list[tuple[ast.Layer, str]]:
    """Each layer with its name: its label, or the op and a counter (skipping names labels took)."""
    labels: dict[str, Span] = {}
    for ly, _ in flat:
        if ly.label is not None and ly.label_span is not None:
            if labels.get(ly.label) == ly.label_span:
                continue  # the same line again, from a repeat: reported below, once
            if ly.label in labels:
                rep.err("duplicate-name", f"the name '{ly.label}' is used twice", ly.label_span, scope,
                        Note("first used here", labels[ly.label]))
                continue
            labels[ly.label] = ly.label_span
    counters: dict[str, int] = {}
    reported_repeat: set[Span] = set()
    named: list[tuple[ast.Layer, str]] = []
    for ly, rep_count in flat:
        if ly.label is not None and ly.label_span is not None and rep_count > 1 \
                and ly.label_span not in reported_repeat:
            reported_repeat.add(ly.label_span)
            rep.err("duplicate-name", f"a label inside 'repeat {rep_count}' would name {rep_count} layers "
                    f"'{ly.label}'", ly.label_span, scope, Note("remove the label"))
        if ly.label is not None:
            name = ly.label
        else:
            base = ly.op
            k = counters.get(base, 0)
            while True:
                k += 1
                if f"{base}{k}" not in labels:
                    break
            counters[base] = k
            name = f"{base}{k}"
        named.append((ly, name))
    return named


def check_ops_exist(rep: Reporter, stmts: tuple[ast.Stmt, ...], blocks: Mapping[str, ast.Block]) -> None:
    """Unknown ops in a block body, once per line (whether or not the block is used)."""
    for st in stmts:
        if isinstance(st, ast.Repeat):
            check_ops_exist(rep, st.body, blocks)
        elif st.op not in BUILTIN_OPS and st.op not in blocks:
            report_unknown_op(rep, st, blocks, None)


def report_unknown_op(rep: Reporter, ly: ast.Layer, blocks: Mapping[str, ast.Block], scope: Scope | None) -> None:
    hint = suggest(ly.op, list(BUILTIN_OPS) + list(blocks))
    rep.err("unknown-op", f"unknown op '{ly.op}'", ly.op_span, scope,
            *([Note(f"did you mean '{hint}'?")] if hint else []))


def check_block_params(rep: Reporter, block: ast.Block) -> None:
    seen: set[str] = set()
    for p in block.params:
        if p.name in seen:
            rep.err("duplicate-name", f"block '{block.name}' has two parameters named '{p.name}'", p.span, None)
        seen.add(p.name)


def block_uses(stmts: tuple[ast.Stmt, ...], blocks: Mapping[str, ast.Block]) -> Iterable[ast.Layer]:
    for s in stmts:
        if isinstance(s, ast.Repeat):
            yield from block_uses(s.body, blocks)
        elif s.op in blocks:
            yield s


def find_cycles(rep: Reporter, blocks: Mapping[str, ast.Block]) -> set[str]:
    """Report every block that uses itself (directly or through others); returns the blocks on a cycle.

    A depth-first search with its own stack: a chain of thousands of blocks must not overflow
    Python's."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    reported: set[str] = set()
    cyclic: set[str] = set()
    for root in blocks:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        pending = [iter(list(block_uses(blocks[root].body, blocks)))]
        while pending:
            name = path[-1]
            layer = next(pending[-1], None)
            if layer is None:
                state[name] = 2
                path.pop()
                pending.pop()
                continue
            callee = layer.op
            if state.get(callee) == 1:
                cycle = path[path.index(callee):] + [callee]
                if name not in reported:
                    reported.update(cycle)
                    cyclic.update(cycle)
                    rep.err("recursion", "block '" + cycle[0] + "' uses itself"
                            + ("" if len(cycle) <= 2 else " through " + " -> ".join(cycle[1:-1])),
                            layer.op_span, None)
            elif state.get(callee) is None:
                state[callee] = 1
                path.append(callee)
                pending.append(iter(list(block_uses(blocks[callee].body, blocks))))
    return cyclic


# ------------------------------------------------------------------ sizes
def _static_int(e: ast.Expr, params: Mapping[str, int | None]) -> int | None:
    """An expression's integer value if it has one without reporting anything (None otherwise:
    the walk evaluates it again and reports what is wrong)."""
    match e:
        case ast.Num(value=v):
            return v
        case ast.Name(id=n):
            return params.get(n)
        case ast.Neg(operand=o):
            x = _static_int(o, params)
            return None if x is None else -x
        case ast.BinOp(op=op, left=l, right=r):
            a, b = _static_int(l, params), _static_int(r, params)
            if a is None or b is None or (op == "//" and b <= 0):
                return None
            out = arith(op, a, b)
            return out if isinstance(out, int) else None
    return None


class TooDeep(Exception):
    """Bodies nested past the depth cap, found at ``stmt`` (a repeat or a block use)."""

    def __init__(self, stmt: ast.Stmt):
        self.stmt = stmt


class LayerCount:
    """How many layers a body expands to, and how deep its bodies nest, found without expanding it:
    repeat counts multiplied through the nesting, a block use counted as its body with the use's
    arguments.  Each repeat and each block use is one level of nesting.

    Counts saturate just past ``limit`` (a doubling chain of forty blocks is not a number to
    build); what cannot be evaluated counts as one layer, since the walk reports it.  Nesting past
    ``max_depth`` raises :class:`TooDeep` before this count's own recursion could overflow."""

    def __init__(self, blocks: Mapping[str, ast.Block], cyclic: set[str], limit: int, max_depth: int):
        self.blocks, self.cyclic, self.limit, self.max_depth = blocks, cyclic, limit, max_depth
        self.memo: dict[tuple[str, tuple[int | None, ...]], tuple[int, int]] = {}

    def body(self, stmts: tuple[ast.Stmt, ...], params: Mapping[str, int | None], depth: int) -> tuple[int, int]:
        """(layers, nesting height) of a body whose own level is ``depth``."""
        total = height = 0
        for st in stmts:
            n, h = self.stmt(st, params, depth)
            total = min(total + n, self.limit + 1)
            height = max(height, h)
        return total, height

    def stmt(self, st: ast.Stmt, params: Mapping[str, int | None], depth: int) -> tuple[int, int]:
        if isinstance(st, ast.Repeat):
            if depth >= self.max_depth:
                raise TooDeep(st)
            k = _static_int(st.count, params)
            n, h = self.body(st.body, params, depth + 1)
            return min(max(k or 1, 1) * n, self.limit + 1), h + 1
        block = self.blocks.get(st.op)
        if block is None or block.name in self.cyclic:
            return 1, 0
        if depth >= self.max_depth:
            raise TooDeep(st)
        names = [p.name for p in block.params]
        values: dict[str, int | None] = dict.fromkeys(names)
        for i, a in enumerate(st.args):
            key = a.key if a.key is not None else names[i] if i < len(names) else None
            if key in values and not isinstance(a.value, (ast.TupleArg, ast.Decimal)):
                values[key] = _static_int(a.value, params)
        memo_key = (block.name, tuple(values[n] for n in names))
        found = self.memo.get(memo_key)
        if found is None:
            n, h = self.body(block.body, values, depth + 1)
            found = self.memo[memo_key] = (max(n, 1), h)
        if depth + 1 + found[1] > self.max_depth:
            raise TooDeep(st)
        return found[0], found[1] + 1
