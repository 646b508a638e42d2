"""Computed shapes against what the source says: declared shapes proved equal (or refuted with a
counterexample), empty outputs, the arithmetic behind a conv/pool size, and the warning for input
cells no window reads."""

from __future__ import annotations

from ..core import ops as op_registry
from ..core import symbolic as sy
from ..core.diagnostics import Note, Span
from ..core.model import Conv, Layer, Op, Pool
from ..core.symbolic import Dim
from . import ast
from .constraints import empty_message, empty_where_fixed
from .context import AXES, Reporter, Scope, paren


def compare(rep: Reporter, declared: tuple[Dim, ...], actual: tuple[Dim, ...], span: Span, scope: Scope | None,
            domain: sy.Domain, message: str, notes: tuple[Note, ...]) -> bool:
    """Whether ``declared`` is proved equal to ``actual`` on ``domain``; otherwise reports ``message``."""
    if len(declared) != len(actual):
        rep.err("shape-mismatch", message, span, scope,
                Note(f"the shapes have different ranks ({len(actual)} and {len(declared)})"), *notes)
        return False
    for d, a in zip(declared, actual):
        v = sy.prove_equal(a, d, domain)
        if v.status == "proved":
            continue
        extra: list[Note] = []
        if v.status == "disproved" and v.counterexample and (sy.free_symbols(a) | sy.free_symbols(d)) \
                and sy.evaluate(a, {"N": 1, **v.counterexample}) >= 1:
            cx = dict(v.counterexample)
            cx.setdefault("N", 1)
            where = ", ".join(f"{k} = {val}" for k, val in sorted(cx.items()) if k in
                              (sy.free_symbols(a) | sy.free_symbols(d)))
            extra.append(Note(f"for {where}: computed {sy.evaluate(a, cx)}, declared {sy.evaluate(d, cx)}"))
        elif v.status == "unknown":
            extra.append(Note(f"could not prove {sy.to_str(a)} == {sy.to_str(d)} for every valid input"))
        rep.err("shape-mismatch", message, span, scope, *extra, *notes)
        return False
    return True


def explain(layer: Layer | None, declared: tuple[Dim, ...]) -> tuple[Note, ...]:
    """The arithmetic behind a conv/pool output size, plus a padding fix where one exists."""
    if layer is None or not isinstance(layer.op, (Conv, Pool)) or len(layer.in_shape) != 4:
        return ()
    notes = []
    for axis, label in ((0, "height"), (1, "width")):
        notes.append(Note(f"{label}: {size_formula(layer.op, layer.in_shape[2 + axis], axis)} = "
                          f"{sy.to_str(layer.out_shape[2 + axis])}"))
    if isinstance(layer.op, Conv) and len(declared) == 4:
        fix = _padding_fix(layer.op, layer.in_shape, declared)
        if fix is not None:
            notes.append(Note(fix))
    return tuple(notes)


def formula_notes(op: Op, shape: tuple[Dim, ...], out: tuple[Dim, ...], axis: int) -> list[Note]:
    """For a conv or pool, the size arithmetic of one spatial axis (nothing for other ops)."""
    if not isinstance(op, (Conv, Pool)):
        return []
    return [Note(f"{AXES[axis]}: {size_formula(op, shape[2 + axis], axis)} = {sy.to_str(out[2 + axis])}")]


def sizes_ok(rep: Reporter, ly: ast.Layer, name: str, op: Op, shape: tuple[Dim, ...], out: tuple[Dim, ...],
             scope: Scope, domain: sy.Domain) -> bool:
    """Whether no size of ``out`` is below 1 (a literal, or one the where clause fixes); otherwise
    reports it here, at the layer that makes it, before a later layer trips over it."""
    fixed = empty_where_fixed(out, domain)
    if fixed is not None:
        rep.err("size", empty_message(name, out, fixed[0], fixed[1]), ly.span, scope)
        return False
    for axis, d in enumerate(out[1:], start=1):
        if isinstance(d, int) and d < 1:
            spatial = len(out) == 4 and axis >= 2
            what = AXES[axis - 2] if spatial else "size"
            rep.err("size", f"{name} has an empty output: its {what} would be {d}", ly.op_span, scope,
                    *(formula_notes(op, shape, out, axis - 2) if spatial else ()))
            return False
    return True


def drop_warnings(rep: Reporter, ly: ast.Layer, name: str, op: Op, shape: tuple[Dim, ...], scope: Scope,
                  domain: sy.Domain) -> None:
    """Warn where real input rows or columns are never read by any window."""
    if not isinstance(op, (Conv, Pool)):
        return
    found = [_dropped_cells(op, shape[2 + axis], axis, domain) for axis in (0, 1)]
    if not any(found):
        return
    rows, cols = found
    if rows and cols and rows[1] == cols[1] and rows[0] == cols[0].replace("column", "row") \
            and not rows[2] and not cols[2]:
        text = rows[0].replace("row", "row and column", 1).replace("rows", "rows and columns", 1) \
            if "rows" not in rows[0] else rows[0].replace("rows", "rows and columns", 1)
        detail = rows[1]
        parts = [f"{text}{detail}"]
    else:
        parts = [f"{f[0]}{f[1]}" if not f[2] else f"{f[0]}{f[2]}" for f in found if f]
    call = ly.op_span.to(ly.args_span) if ly.args_span else ly.op_span
    rep.warn("drop", f"{name} " + "; ".join(parts), call, scope, Note("those input cells never reach the output"))


def _dropped_cells(op: Conv | Pool, n: Dim, axis: int, domain: sy.Domain) -> tuple[str, str, str] | None:
    """(what is dropped, concrete detail, symbolic condition) for one axis, or None."""
    k, s = op.kernel[axis], op.stride[axis]
    if isinstance(op, Conv):
        d, pb, pa = op.dilation[axis], op.padding[2 * axis], op.padding[2 * axis + 1]
    else:
        d, pb, pa = 1, op.padding[axis], op.padding[axis]
    ints = tuple(x for x in (k, s, d, pb, pa) if isinstance(x, int))
    if len(ints) != 5:
        return None
    ki, si, di, pbi, pai = ints  # (names of their own: mypy does not narrow the Dims inside ``dropped``)
    keff = di * (ki - 1) + 1
    noun, nouns = ("row", "rows") if axis == 0 else ("column", "columns")
    if si > keff:
        gap = si - keff
        return (f"skips {gap} {noun if gap == 1 else nouns} of every {si}", f" (stride {si} > kernel {keff})", "")
    if si == 1:
        return None  # the windows overlap or touch: the last one ends at the padded edge
    ceil = isinstance(op, Pool) and op.ceil

    def dropped(nv: int) -> int:
        out = op_registry.out_size(nv, ki, si, pbi, pai, di, ceil)
        if not isinstance(out, int) or out < 1:  # (integers in, an integer out)
            return 0
        return max(0, nv + pbi - ((out - 1) * si + keff))

    if isinstance(n, int):
        m = dropped(n)
        if not m:
            return None
        return (f"drops the last {noun if m == 1 else f'{m} {nouns}'}",
                f" (input {n}, kernel {keff}, stride {si})", "")
    free = sy.free_symbols(n) - {"N"}
    if len(free) != 1:
        return None
    (x,) = free
    if x in domain.fixed:
        m = dropped(sy.evaluate(n, {x: domain.fixed[x], "N": 1}))
        return (f"drops the last {noun if m == 1 else f'{m} {nouns}'}", "", f" (for {x} = {domain.fixed[x]})") \
            if m else None
    lo, span, step = 64, 256, domain.multiple_of.get(x, 1)
    vals = {v: (dropped(sy.evaluate(n, {x: v, "N": 1})) if v % step == 0 else 0) for v in range(lo, lo + span)}
    if not any(vals.values()):
        return None
    period = next((p for p in range(1, 129) if all(vals[v] == vals[v + p] for v in range(lo, lo + span - p))), None)
    many = max(vals.values()) > 1
    what = f"drops the last {nouns if many else noun}"
    if period is None:
        return (what, "", f" for some {x}")
    res = sorted({v % period for v in vals if vals[v]})
    if period == 2:
        cond = f" when {x} is {'odd' if res == [1] else 'even'}"
    else:
        listed = ", ".join(str(r) for r in res[:-1]) + f" or {res[-1]}" if len(res) > 1 else str(res[0])
        cond = f" when {x} % {period} is {listed}"
    return (what, "", cond)


def size_formula(op: Conv | Pool, n: Dim, axis: int) -> str:
    k, s = op.kernel[axis], op.stride[axis]
    if isinstance(op, Conv):
        pb, pa, d = op.padding[2 * axis], op.padding[2 * axis + 1], op.dilation[axis]
    else:
        pb = pa = op.padding[axis]
        d = 1
    kt = sy.to_str(k) if d == 1 else f"{sy.to_str(d)}*({sy.to_str(k)} - 1) - 1"
    if isinstance(op, Pool) and op.ceil:
        return f"ceil(({paren(n)} + {sy.to_str(pb)} + {sy.to_str(pa)} - {kt}) / {sy.to_str(s)}) + 1"
    return f"({paren(n)} + {sy.to_str(pb)} + {sy.to_str(pa)} - {kt}) // {sy.to_str(s)} + 1"


def _padding_fix(op: Conv, in_shape: tuple[Dim, ...], declared: tuple[Dim, ...]) -> str | None:
    pads = []
    for axis in (0, 1):
        n, want = in_shape[2 + axis], declared[2 + axis]
        k, s, d = op.kernel[axis], op.stride[axis], op.dilation[axis]
        if not all(isinstance(x, int) for x in (n, want, k, s, d)):
            return None
        keff = d * (k - 1) + 1
        for p in range(0, keff + 1):
            if op_registry.out_size(n, k, s, p, p, d, False) == want:
                pads.append(p)
                break
        else:
            return None
    if pads[0] == pads[1] and tuple(op.padding) != (pads[0],) * 4:
        verb = "keeps" if tuple(declared[2:]) == tuple(in_shape[2:]) else "gives"
        return f"padding={pads[0]} {verb} {declared[2]}x{declared[3]}"
    return None
