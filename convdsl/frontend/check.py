"""The shape checker: AST -> checked models + diagnostics.

Precondition: a :class:`~convdsl.frontend.ast.Program` from :func:`convdsl.frontend.parse.parse`.
Postcondition: one :class:`~convdsl.core.model.CheckedModel` per model that has no
error, and every diagnostic found (several independent errors are all
reported).  Nothing after this stage reports user errors.

Choices the language page leaves open, made here (and written down in
``docs/language.md``):

* After a layer whose declared shape disagrees with the computed one, checking
  goes on with the *computed* shape (the truth), so a wrong declaration costs
  one error, not a cascade.  After a layer whose arguments are wrong, checking
  goes on from its declared shape when it has one; otherwise the rest of that
  model is skipped.
* Layer arguments are integer expressions over block parameters; the model's
  shape symbols (``N``, ``H``, ...) may not appear in them.
* A label inside ``repeat K`` with ``K > 1`` is an error (it would name K layers).
* ``flatten`` of a 2-D tensor is the identity, as ``torch.nn.Flatten``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from ..core import symbolic as sy
from ..core.diagnostics import Diagnostic, Note, Span, error, warning
from ..core import ops as op_registry
from ..core.model import CheckedModel, Conv, Layer, Op, Pool
from ..core.ops import OPS, REQUIRED, Context, OpError, Param
from ..core.symbolic import Dim
from . import ast

BUILTIN_OPS = tuple(OPS)


@dataclass(frozen=True)
class CheckResult:
    models: tuple[CheckedModel, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def model(self, name: str | None = None) -> CheckedModel:
        """The named model, or the last one in the file."""
        if name is None and self.models:
            return self.models[-1]
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models) or "none"
        raise KeyError(f"no model '{name}' (the file's models: {known})")


class _Abort(Exception):
    """Stops checking the current pipeline after an error that leaves no shape."""


def _fmt_shape(shape: Iterable[Dim]) -> str:
    return "[" + ", ".join(sy.to_str(d) for d in shape) + "]"


def _paren(d: Dim) -> str:
    s = sy.to_str(d)
    return s if isinstance(d, int) or s.isidentifier() else f"({s})"


def _source_shape(shape: ast.Shape) -> str:
    """A shape as written (names and integers; expressions as '...')."""
    parts = []
    for d in shape.dims:
        parts.append(d.id if isinstance(d, ast.Name) else str(d.value) if isinstance(d, ast.Num) else "...")
    return "[" + ", ".join(parts) + "]"


def _is_sym(d: Dim) -> bool:
    return not isinstance(d, int)


# --------------------------------------------------------------------- values
@dataclass(frozen=True)
class _Value:
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


@dataclass
class _Scope:
    """What names mean while walking one pipeline."""

    params: Mapping[str, Dim]  # block parameters (ints when instantiating)
    symbols: Mapping[str, Dim]  # shape symbols visible to declared shapes
    generic: bool  # checking a block signature for all inputs
    uses: tuple[Span, ...]  # block uses that led here, outermost first
    prefix: str  # "stage1." inside an instance
    stack: tuple[str, ...]  # blocks being expanded (for recursion)


class Checker:
    def __init__(self, program: ast.Program):
        self.program = program
        self.diags: list[Diagnostic] = []
        self.blocks: dict[str, ast.Block] = {}
        self.generic_ok: dict[str, bool] = {}
        self.generic_done: set[str] = set()  # blocks whose signature was proved (or refuted) once for all
        self.generic_body_diags: dict[str, list[Diagnostic]] = {}  # reported only if the block is never used
        self.used_blocks: set[str] = set()

    # ------------------------------------------------------------ reporting
    def err(self, code: str, msg: str, span: Span, scope: _Scope | None, *notes: Note) -> None:
        self.diags.append(error(code, msg, span, *notes, *self._use_notes(scope)))

    def warn(self, code: str, msg: str, span: Span, scope: _Scope | None, *notes: Note) -> None:
        self.diags.append(warning(code, msg, span, *notes, *self._use_notes(scope)))

    @staticmethod
    def _use_notes(scope: _Scope | None) -> tuple[Note, ...]:
        if scope is None:
            return ()
        return tuple(Note("in the block used here", s) for s in reversed(scope.uses))

    # ------------------------------------------------------------ top level
    def run(self) -> CheckResult:
        seen: dict[str, Span] = {}
        for item in self.program.items:
            prev = seen.get(item.name)
            if prev is not None:
                self.err("duplicate-name", f"'{item.name}' is defined twice", item.name_span, None,
                         Note("first defined here", prev))
                continue
            seen[item.name] = item.name_span
            if isinstance(item, ast.Block):
                if item.name in BUILTIN_OPS:
                    self.err("duplicate-name", f"block '{item.name}' has the name of a built-in op",
                             item.name_span, None)
                    continue
                self.blocks[item.name] = item
        self._check_recursion()
        for block in self.blocks.values():
            self._check_block_params(block)
            self._check_ops_exist(block.body)
            if block.signature is not None and self.generic_ok.get(block.name, True):
                self._check_signature(block)
        models = []
        for m in self.program.models:
            if seen.get(m.name) is not m.name_span:
                continue
            checked = self._check_model(m)
            if checked is not None:
                models.append(checked)
        for name, diags in self.generic_body_diags.items():
            if name not in self.used_blocks:  # used blocks report these at each use, with a note there
                self.diags.extend(diags)
        if not self.program.models and not self.diags:
            span = Span(self.program.file, 1, 1, 1, 2)
            self.err("no-model", "the file defines no model", span, None)
        return CheckResult(tuple(models), tuple(_dedupe(self.diags)))

    def _check_ops_exist(self, stmts: tuple[ast.Stmt, ...]) -> None:
        """Unknown ops in a block body, once per line (whether or not the block is used)."""
        for st in stmts:
            if isinstance(st, ast.Repeat):
                self._check_ops_exist(st.body)
            elif st.op not in BUILTIN_OPS and st.op not in self.blocks:
                hint = _suggest(st.op, list(BUILTIN_OPS) + list(self.blocks))
                self.err("unknown-op", f"unknown op '{st.op}'", st.op_span, None,
                         *([Note(f"did you mean '{hint}'?")] if hint else []))

    def _check_block_params(self, block: ast.Block) -> None:
        seen: set[str] = set()
        for p in block.params:
            if p.name in seen:
                self.err("duplicate-name", f"block '{block.name}' has two parameters named '{p.name}'",
                         p.span, None)
            seen.add(p.name)

    def _check_recursion(self) -> None:
        def uses(stmts: tuple[ast.Stmt, ...]) -> Iterable[ast.Layer]:
            for s in stmts:
                if isinstance(s, ast.Repeat):
                    yield from uses(s.body)
                elif s.op in self.blocks:
                    yield s

        state: dict[str, int] = {}  # 1 = on stack, 2 = done
        reported: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for layer in uses(self.blocks[name].body):
                callee = layer.op
                if state.get(callee) == 1:
                    cycle = path[path.index(callee):] + [callee] if callee in path else [name, callee]
                    if name not in reported:
                        reported.update(cycle)
                        self.generic_ok.update({c: False for c in cycle})
                        self.err("recursion", "block '" + cycle[0] + "' uses itself"
                                 + ("" if len(cycle) <= 2 else " through " + " -> ".join(cycle[1:-1])),
                                 layer.op_span, None)
                elif state.get(callee) is None:
                    visit(callee, path + [callee])
            state[name] = 2

        for name in self.blocks:
            if name not in state:
                visit(name, [name])

    # ------------------------------------------------------------ expressions
    def dim(self, e: ast.Expr, names: Mapping[str, Dim], scope: _Scope | None, what: str) -> Dim:
        """Evaluate an AST expression; unknown names are errors (raises _Abort)."""
        match e:
            case ast.Num(value=v):
                return v
            case ast.Name(id=n, span=sp):
                if n in names:
                    return names[n]
                hint = _suggest(n, names)
                self.err("unknown-name", f"unknown name '{n}' in {what}", sp, scope,
                         *([Note(f"did you mean '{hint}'?")] if hint else []))
                raise _Abort
            case ast.Neg(operand=o):
                return -self.dim(o, names, scope, what)
            case ast.BinOp(op=op, left=l, right=r, span=sp):
                a = self.dim(l, names, scope, what)
                b = self.dim(r, names, scope, what)
                if op == "+":
                    return a + b
                if op == "-":
                    return a - b
                if op == "*":
                    return a * b
                if isinstance(b, int) and b <= 0:
                    self.err("bad-expression", f"division by {b}: '//' needs a positive divisor", r.span, scope)
                    raise _Abort
                return a // b
        raise AssertionError(e)

    def shape(self, s: ast.Shape, names: Mapping[str, Dim], scope: _Scope | None) -> tuple[Dim, ...]:
        return tuple(self.dim(d, names, scope, "a shape") for d in s.dims)

    # ------------------------------------------------------------ models
    def _check_model(self, m: ast.Model) -> CheckedModel | None:
        n_errors = self._n_errors()
        in_shape_ast = m.input_shape
        if len(in_shape_ast.dims) != 4:
            self.err("rank", f"the input of model '{m.name}' must be 4-D [N, C, H, W], "
                     f"not {len(in_shape_ast.dims)}-D", in_shape_ast.span, None)
            return None
        batch = in_shape_ast.dims[0]
        if not (isinstance(batch, ast.Name) and batch.id == "N"):
            self.err("bad-shape", "the batch dimension of the input is the symbol N: the batch size is "
                     "given at run time", batch.span, None, Note(f"write [N, ...] for model '{m.name}'"))
            return None
        symbols: dict[str, Dim] = {}
        for i, d in enumerate(in_shape_ast.dims):
            if isinstance(d, ast.Name) and d.id == "N" and i:
                self.err("bad-shape", "N is the batch size; it cannot name another dimension", d.span, None)
                return None
            if isinstance(d, ast.Name):
                symbols[d.id] = sy.sym(d.id)
            elif not isinstance(d, ast.Num):
                self.err("bad-shape", "an input dimension must be an integer or a symbol", d.span, None)
                return None
            elif d.value < 1:
                self.err("bad-shape", f"an input dimension must be at least 1, not {d.value}", d.span, None)
                return None
        try:
            in_shape = self.shape(in_shape_ast, symbols, None)
        except _Abort:
            return None
        if not m.body:
            self.err("empty", f"model '{m.name}' holds no layer", m.span, None)
            return None
        domain, constrained = self._domain(m, symbols)
        if domain is None:
            return None
        scope = _Scope(params={}, symbols=symbols, generic=False, uses=(), prefix="", stack=())
        layers: list[Layer] = []
        mismatches = self._count("shape-mismatch")
        out = self._pipeline(m.body, in_shape, scope, layers, domain)
        # After a layer's mismatch, an output mismatch is usually its echo: say it once.
        if out is not None and self._count("shape-mismatch") == mismatches:
            try:
                declared = self.shape(m.output_shape, symbols, None)
            except _Abort:
                declared = None
            if declared is not None:
                self._compare(declared, out, m.output_shape.span, None, self._domain_so_far(layers, domain),
                              f"model '{m.name}' produces {_fmt_shape(out)}, but its signature declares "
                              f"{_fmt_shape(declared)}",
                              (Note(f"the last layer is {layers[-1].name}", layers[-1].span),) if layers else ())
        valid = self._valid_for(m, in_shape, layers, domain, constrained, symbols)
        if self._n_errors() > n_errors or out is None or valid is None:
            return None
        params = sum((ly.params for ly in layers), start=0)
        macs = sum((ly.macs for ly in layers), start=0)
        return CheckedModel(
            name=m.name, input_name=m.input.name, input_shape=in_shape, output_shape=out,
            layers=tuple(layers), valid_for=valid, multiple_of=dict(domain.multiple_of),
            fixed=dict(domain.fixed), params=params, macs=macs, span=m.span,
        )

    def _count(self, code: str) -> int:
        return sum(1 for d in self.diags if d.code == code)

    def _n_errors(self) -> int:
        return sum(1 for d in self.diags if d.severity == "error")

    def _domain(self, m: ast.Model, symbols: Mapping[str, Dim]) -> tuple[sy.Domain | None, set[str]]:
        lower: dict[str, int] = {}
        mult: dict[str, int] = {}
        fixed: dict[str, int] = {}
        constrained: set[str] = set()
        ok = True
        for c in m.where:
            if isinstance(c, ast.Compare):
                sym, val = c.lhs, c.rhs
                op = c.op
                if isinstance(sym, ast.Num) and isinstance(val, ast.Name):
                    sym, val = val, sym
                    op = {">=": "<=", ">": "<", "==": "=="}[op]
                if not (isinstance(sym, ast.Name) and isinstance(val, ast.Num)) or op not in (">=", ">", "=="):
                    self.err("where", "a where clause compares a symbol with an integer: "
                             "'H >= 32', 'H > 31', 'H == 32' or 'H % 4 == 0'", c.span, None)
                    ok = False
                    continue
                if sym.id not in symbols:
                    self.err("where", f"'{sym.id}' is not a symbol of the input shape", sym.span, None)
                    ok = False
                    continue
                constrained.add(sym.id)
                if op == ">=":
                    lower[sym.id] = max(lower.get(sym.id, 1), val.value)
                elif op == ">":
                    lower[sym.id] = max(lower.get(sym.id, 1), val.value + 1)
                else:
                    if sym.id in fixed and fixed[sym.id] != val.value:
                        self.err("where", f"'{sym.id}' is fixed twice to different values", c.span, None)
                        ok = False
                    fixed[sym.id] = val.value
            else:
                if not (isinstance(c.value, ast.Name) and isinstance(c.modulus, ast.Num)
                        and isinstance(c.remainder, ast.Num) and c.remainder.value == 0
                        and c.modulus.value >= 1):
                    self.err("where", "a divisibility clause has the form 'H % k == 0' with k >= 1",
                             c.span, None)
                    ok = False
                    continue
                if c.value.id not in symbols:
                    self.err("where", f"'{c.value.id}' is not a symbol of the input shape", c.value.span, None)
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
                self.err("where", f"the where clause leaves no valid value for '{s}'", span, None,
                         Note(f"{s} == {v} contradicts the other constraints on {s}"))
                ok = False
        if not ok:
            return None, constrained
        return sy.Domain(lower=lower, multiple_of=mult, fixed=fixed), constrained

    def _valid_for(self, m: ast.Model, in_shape: tuple[Dim, ...], layers: list[Layer],
                   domain: sy.Domain, constrained: set[str], symbols: Mapping[str, Dim]) -> dict[str, int] | None:
        conds: list[tuple[Dim, Layer, int]] = []
        for ly in layers:
            for axis, d in enumerate(ly.out_shape):
                if _is_sym(d) and sy.free_symbols(d) - {"N"}:
                    conds.append((d, ly, axis))
        # A constrained symbol's sizes must be >= 1 everywhere its where clause allows.
        bad = False
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
                    where = ", ".join(f"{k} = {v}" for k, v in sorted((v.counterexample or {}).items()) if k != "N")
                    self.err("size", f"{ly.name}'s {_axis_name(ly.out_shape, axis)} "
                             f"{sy.to_str(d)} is {sy.evaluate(d, {**(v.counterexample or {}), 'N': 1})} "
                             f"for {where}, which the where clause allows", ly.span, None,
                             *((Note(hint),) if hint and hint != "declare where " else ()))
                    bad = True
                    break
        if bad:
            return None
        values = sy.minimal_values([c for c, _, _ in conds], domain, list(symbols))
        if values is None:
            # find the first layer that can never be >= 1
            for d, ly, axis in conds:
                if sy.minimal_values([d], domain, list(symbols)) is None:
                    self.err("size", f"{ly.name} has an empty output for every input size "
                             f"({_axis_name(ly.out_shape, axis)} {sy.to_str(d)})", ly.span, None)
                    return None
            self.err("size", f"model '{m.name}' has no valid input size", m.span, None)
            return None
        values.setdefault("N", 1)
        return {s: values.get(s, 1) for s in symbols}

    # ------------------------------------------------------------ pipelines
    def _pipeline(self, body: tuple[ast.Stmt, ...], shape: tuple[Dim, ...], scope: _Scope,
                  layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...] | None:
        """Walk a body; append layers; return the output shape (None after a fatal error)."""
        flat = self._expand(body, scope)
        if flat is None:
            return None
        labels: dict[str, Span] = {}
        for ly, _ in flat:
            if ly.label is not None:
                if labels.get(ly.label) == ly.label_span:
                    continue  # the same line again, from a repeat: reported below, once
                if ly.label in labels:
                    self.err("duplicate-name", f"the name '{ly.label}' is used twice", ly.label_span, scope,
                             Note("first used here", labels[ly.label]))
                    continue
                labels[ly.label] = ly.label_span
        counters: dict[str, int] = {}
        reported_repeat: set[Span] = set()
        for ly, rep_count in flat:
            if ly.label is not None and rep_count > 1 and ly.label_span not in reported_repeat:
                reported_repeat.add(ly.label_span)
                self.err("duplicate-name", f"a label inside 'repeat {rep_count}' would name {rep_count} layers "
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
            try:
                shape = self._layer(ly, name, shape, scope, layers, domain)
            except _Abort:
                if ly.declared is None:
                    return None
                try:
                    shape = self.shape(ly.declared, {**scope.symbols, **scope.params}, scope)
                except _Abort:
                    return None
        return shape

    def _expand(self, body: tuple[ast.Stmt, ...], scope: _Scope, reps: int = 1) -> list[tuple[ast.Layer, int]] | None:
        out: list[tuple[ast.Layer, int]] = []
        if not body:
            return out
        for st in body:
            if isinstance(st, ast.Layer):
                out.append((st, reps))
                continue
            try:
                k = self.dim(st.count, scope.params, scope, "a repeat count")
            except _Abort:
                return None
            if not isinstance(k, int):
                if scope.generic:
                    raise _GenericUnsupported(st.span, "its repeat count depends on a parameter")
                raise AssertionError("symbolic repeat count outside generic mode")
            if k < 1:
                self.err("bad-argument", f"a repeat count must be at least 1, not {k}", st.count.span, scope)
                return None
            if not st.body:
                self.err("empty", "a repeat body must hold at least one layer", st.span, scope)
                return None
            inner = self._expand(st.body, scope, reps * k)
            if inner is None:
                return None
            out.extend(inner * k)
        return out

    def _layer(self, ly: ast.Layer, name: str, shape: tuple[Dim, ...], scope: _Scope,
               layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...]:
        full = scope.prefix + name
        if ly.op in self.blocks:
            out = self._block_use(ly, full, shape, scope, layers, domain)
        elif ly.op in BUILTIN_OPS:
            args = self._bind_args(ly, scope)
            op, out, notes_fn = self._apply(ly, full, args, shape, scope)
            params, macs = op_registry.cost(op, out)
            layers.append(Layer(full, op, shape, out, params, macs, _op_text(ly, args), ly.span, scope.uses))
            if not scope.generic:
                self._sizes_ok(ly, full, out, scope, notes_fn)
                self._drop_warnings(ly, full, op, shape, scope, domain)
        else:
            if not scope.stack:  # inside blocks, _check_ops_exist reported it once already
                hint = _suggest(ly.op, list(BUILTIN_OPS) + list(self.blocks))
                self.err("unknown-op", f"unknown op '{ly.op}'", ly.op_span, scope,
                         *([Note(f"did you mean '{hint}'?")] if hint else []))
            raise _Abort
        if ly.declared is not None:
            names = {**scope.symbols, **scope.params}
            declared = self.shape(ly.declared, names, scope)
            if self._compare(declared, out, ly.declared.span, scope, self._domain_so_far(layers, domain),
                             f"{full} produces {_fmt_shape(out)}, but the line declares {_fmt_shape(declared)}",
                             self._explain(layers[-1] if layers and layers[-1].name == full else None, declared)):
                # Proved equal on the whole domain: the author's form reads better downstream.
                if layers and layers[-1].name == full:
                    last = layers[-1]
                    layers[-1] = replace(last, out_shape=declared, macs=op_registry.cost(last.op, declared)[1])
                return declared
        return out

    @staticmethod
    def _domain_so_far(layers: list[Layer], domain: sy.Domain) -> sy.Domain:
        """The domain narrowed to sizes where every layer so far is non-empty.

        Counterexamples are drawn from it, so that none is an input the model
        rejects anyway."""
        conds = [d for ly in layers for d in ly.out_shape if _is_sym(d) and sy.free_symbols(d) - {"N"}]
        if not conds:
            return domain
        need = sy.minimal_values(conds, domain)
        if not need:
            return domain
        lower = dict(domain.lower)
        for k, v in need.items():
            lower[k] = max(lower.get(k, 1), v)
        return sy.Domain(lower=lower, multiple_of=domain.multiple_of, fixed=domain.fixed)

    def _compare(self, declared: tuple[Dim, ...], actual: tuple[Dim, ...], span: Span, scope: _Scope | None,
                 domain: sy.Domain, message: str, notes: tuple[Note, ...]) -> bool:
        if len(declared) != len(actual):
            self.err("shape-mismatch", message, span, scope,
                     Note(f"the shapes have different ranks ({len(actual)} and {len(declared)})"), *notes)
            return False
        for i, (d, a) in enumerate(zip(declared, actual)):
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
            self.err("shape-mismatch", message, span, scope, *extra, *notes)
            return False
        return True

    def _explain(self, layer: Layer | None, declared: tuple[Dim, ...]) -> tuple[Note, ...]:
        """The arithmetic behind a conv/pool output size, plus a padding fix where one exists."""
        if layer is None or not isinstance(layer.op, (Conv, Pool)) or len(layer.in_shape) != 4:
            return ()
        notes = []
        for axis, label in ((0, "height"), (1, "width")):
            notes.append(Note(f"{label}: {_size_formula(layer.op, layer.in_shape[2 + axis], axis)} = "
                              f"{sy.to_str(layer.out_shape[2 + axis])}"))
        if isinstance(layer.op, Conv) and len(declared) == 4:
            fix = _padding_fix(layer.op, layer.in_shape, declared)
            if fix is not None:
                notes.append(Note(fix))
        return tuple(notes)

    # ------------------------------------------------------------ arguments
    def _match_args(self, ly: ast.Layer, positional: tuple[str, ...], keys: Iterable[str], owner: str,
                    scope: _Scope, *notes: Note) -> dict[str, _Value]:
        """Match a call's arguments to parameter names (positional first, then key=value)."""
        keys = list(keys)
        bound: dict[str, _Value] = {}
        seen_kw = False
        for i, a in enumerate(ly.args):
            if a.key is None:
                if seen_kw:
                    self.err("bad-argument", "a positional argument cannot follow a keyword argument",
                             a.span, scope)
                    raise _Abort
                if i >= len(positional):
                    plural = "s" if len(positional) != 1 else ""
                    msg = (f"{owner} takes no arguments" if not positional else
                           f"{owner} takes at most {len(positional)} positional argument{plural} "
                           f"({', '.join(positional)})")
                    rest = [k for k in keys if k not in positional]
                    hint = (Note(f"give the others by name: " + ", ".join(f"{k}=..." for k in rest)),) if rest else ()
                    self.err("bad-argument", msg, a.span, scope, *hint, *notes)
                    raise _Abort
                key = positional[i]
            else:
                seen_kw = True
                key = a.key
                if key not in keys:
                    hint = _suggest(key, keys)
                    self.err("unknown-argument", f"{owner} has no argument '{key}'", a.key_span or a.span, scope,
                             Note(f"did you mean '{hint}'?") if hint else
                             Note(f"{owner} takes " + (", ".join(keys) if keys else "no arguments")), *notes)
                    raise _Abort
            if key in bound:
                self.err("bad-argument", f"argument '{key}' is given twice", a.span, scope)
                raise _Abort
            bound[key] = self._value(a.value, scope)
        return bound

    def _bind_args(self, ly: ast.Layer, scope: _Scope) -> dict[str, _Value]:
        d = OPS[ly.op]
        bound = self._match_args(ly, d.positional, [p.name for p in d.params], ly.op, scope)
        for p in d.params:
            if p.default is REQUIRED and p.name not in bound:
                self.err("bad-argument", f"{ly.op} needs the argument '{p.name}'", ly.args_span or ly.op_span, scope,
                         Note(d.usage))
                raise _Abort
        return bound

    def _value(self, v: ast.ArgValue, scope: _Scope) -> _Value:
        if isinstance(v, ast.Decimal):
            return _Value("decimal", v.span, name=v.text)
        if isinstance(v, ast.TupleArg):
            items = tuple(self.dim(e, scope.params, scope, "an argument") for e in v.items)
            return _Value("tuple", v.span, items=items)
        if isinstance(v, ast.Name) and v.id not in scope.params and v.id not in scope.symbols:
            # A bare word: true/false/same/valid, or a typo the typed readers report in context.
            return _Value("name", v.span, name=v.id)
        if isinstance(v, ast.Name) and v.id not in scope.params and v.id in scope.symbols:
            self.err("bad-argument", f"layer arguments are integers: the shape symbol '{v.id}' cannot be one",
                     v.span, scope)
            raise _Abort
        return _Value("int", v.span, dim=self.dim(v, scope.params, scope, "an argument"))

    # typed argument readers -------------------------------------------------
    def _int(self, v: _Value, what: str, scope: _Scope, minimum: int) -> Dim:
        if v.kind == "name" and v.name not in _WORDS:
            hint = _suggest(v.name, scope.params)
            self.err("unknown-name", f"unknown name '{v.name}' in an argument", v.span, scope,
                     *([Note(f"did you mean '{hint}'?")] if hint else []))
            raise _Abort
        if v.kind != "int":
            self.err("bad-argument", f"{what} must be an integer, not {v.text()}", v.span, scope,
                     *([Note("only a dropout probability is a decimal number")] if v.kind == "decimal" else []))
            raise _Abort
        if isinstance(v.dim, int) and v.dim < minimum:
            qual = "positive" if minimum == 1 else "negative" if minimum == 0 else f">= {minimum}"
            msg = (f"{what} must be positive, not {v.dim}" if minimum == 1 else
                   f"{what} cannot be negative ({v.dim})" if minimum == 0 else f"{what} must be {qual}")
            self.err("bad-argument", msg, v.span, scope)
            raise _Abort
        return v.dim

    def _pair(self, v: _Value, what: str, scope: _Scope, minimum: int) -> tuple[Dim, Dim]:
        if v.kind == "tuple":
            if len(v.items) != 2:
                self.err("bad-argument", f"{what} takes an integer or a pair (h, w), not {len(v.items)} values",
                         v.span, scope)
                raise _Abort
            for it in v.items:
                if isinstance(it, int) and it < minimum:
                    self._int(_Value("int", v.span, dim=it), what, scope, minimum)
            return v.items[0], v.items[1]
        x = self._int(v, what, scope, minimum)
        return x, x

    def _bool(self, v: _Value, what: str, scope: _Scope) -> bool:
        if v.kind == "name" and v.name in ("true", "false"):
            return v.name == "true"
        self.err("bad-argument", f"{what} is true or false, not {v.text()}", v.span, scope)
        raise _Abort

    def _probability(self, v: _Value, what: str, scope: _Scope) -> float:
        if v.kind == "decimal" or (v.kind == "int" and isinstance(v.dim, int)):
            p = float(v.name) if v.kind == "decimal" else float(v.dim)
            if 0.0 <= p < 1.0:
                return p
            self.err("bad-argument", f"{what} must be at least 0 and below 1, not {v.text()}", v.span, scope)
            raise _Abort
        self.err("bad-argument", f"{what} is a decimal number such as 0.5, not {v.text()}", v.span, scope)
        raise _Abort

    def _conv_padding(self, v: _Value, scope: _Scope) -> tuple[Dim, ...] | str:
        if v.kind == "name":
            if v.name in ("valid", "same"):
                return (0, 0, 0, 0) if v.name == "valid" else "same"
            self.err("bad-argument", f"padding is an integer, (ph, pw), (top, bottom, left, right), same or valid, "
                     f"not {v.name}", v.span, scope)
            raise _Abort
        if v.kind != "tuple":
            p = self._int(v, "padding", scope, 0)
            return (p, p, p, p)
        if len(v.items) == 2:
            ph, pw = v.items
            out: tuple[Dim, ...] = (ph, ph, pw, pw)
        elif len(v.items) == 4:
            out = tuple(v.items)
        else:
            self.err("bad-argument", f"padding takes 1, 2 or 4 values, not {len(v.items)}", v.span, scope)
            raise _Abort
        for p in out:
            if isinstance(p, int) and p < 0:
                self.err("bad-argument", f"padding cannot be negative ({p})", v.span, scope)
                raise _Abort
        return out

    def _pool_padding(self, v: _Value, scope: _Scope) -> tuple[Dim, Dim]:
        if v.kind == "name" and v.name == "valid":
            return (0, 0)
        if v.kind == "name":
            self.err("bad-argument", f"pool padding is an integer or (ph, pw), not {v.name}", v.span, scope)
            raise _Abort
        return self._pair(v, "padding", scope, 0)

    def _read(self, p: Param, v: _Value, scope: _Scope) -> object:
        """An argument's value in the resolved form its kind says (``core.ops.ArgKind``)."""
        match p.kind:
            case "count":
                return self._int(v, p.what, scope, 1)
            case "pair":
                return self._pair(v, p.what, scope, 1)
            case "bool":
                return self._bool(v, p.what, scope)
            case "conv_padding":
                return self._conv_padding(v, scope)
            case "pool_padding":
                return self._pool_padding(v, scope)
            case "probability":
                return self._probability(v, p.what, scope)
        raise AssertionError(p.kind)

    # ------------------------------------------------------------ ops
    def _apply(self, ly: ast.Layer, name: str, args: dict[str, _Value], shape: tuple[Dim, ...],
               scope: _Scope) -> tuple[Op, tuple[Dim, ...], Callable[[int], list[Note]]]:
        """The op's registry rule on its read arguments (defaults filled in); its objections become
        diagnostics at the argument they name."""
        d = OPS[ly.op]
        resolved = {p.name: self._read(p, args[p.name], scope) if p.name in args else p.default
                    for p in d.params}
        try:
            op, out = d.infer(resolved, shape, Context(name, scope.generic))
        except OpError as e:
            span = args[e.arg].span if e.arg in args else ly.op_span
            self.err(e.code, e.message, span, scope, *e.notes)
            raise _Abort from None
        if isinstance(op, (Conv, Pool)):
            def notes(axis: int) -> list[Note]:
                assert isinstance(op, (Conv, Pool))
                formula = _size_formula(op, shape[2 + axis], axis)
                return [Note(f"{_AXES[axis]}: {formula} = {sy.to_str(out[2 + axis])}")]
            return op, out, notes
        return op, out, lambda axis: []

    # ------------------------------------------------------------ sizes
    def _sizes_ok(self, ly: ast.Layer, name: str, out: tuple[Dim, ...], scope: _Scope,
                  notes_fn: Callable[[int], list[Note]]) -> None:
        for axis, d in enumerate(out[1:], start=1):
            if isinstance(d, int) and d < 1:
                what = _AXES[axis - 2] if len(out) == 4 and axis >= 2 else "size"
                self.err("size", f"{name} has an empty output: its {what} would be {d}", ly.op_span, scope,
                         *notes_fn(axis - 2) if len(out) == 4 and axis >= 2 else ())
                raise _Abort

    def _drop_warnings(self, ly: ast.Layer, name: str, op: Op, shape: tuple[Dim, ...], scope: _Scope,
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
        self.warn("drop", f"{name} " + "; ".join(parts), call, scope,
                  Note("those input cells never reach the output"))

    # ------------------------------------------------------------ blocks
    def _block_use(self, ly: ast.Layer, name: str, shape: tuple[Dim, ...], scope: _Scope,
                   layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...]:
        block = self.blocks[ly.op]
        if block.name in scope.stack or block.name in self._cyclic():
            raise _Abort  # recursion: already reported
        pnames = [p.name for p in block.params]
        defined = Note("the block is defined here", block.span)
        values: dict[str, Dim] = {}
        for key, v in self._match_args(ly, tuple(pnames), pnames, f"block '{block.name}'", scope, defined).items():
            if v.kind != "int":
                self._int(v, "a block argument", scope, -(10 ** 9))  # reports unknown names
                self.err("bad-argument", f"block arguments are integers, not {v.text()}", v.span, scope)
                raise _Abort
            values[key] = v.dim
        missing = [p for p in pnames if p not in values]
        if missing:
            self.err("bad-argument", f"block '{block.name}' needs the argument{'s' if len(missing) > 1 else ''} "
                     + ", ".join(f"'{m}'" for m in missing), ly.args_span or ly.op_span, scope, defined)
            raise _Abort
        symbols = dict(scope.symbols)
        if block.signature is not None:
            symbols = self._match_signature(block, ly, values, shape, scope, domain)
        inner = _Scope(params=values, symbols=symbols, generic=scope.generic, uses=scope.uses + (ly.span,),
                       prefix=name + ".", stack=scope.stack + (block.name,))
        if not block.body:
            self.err("empty", f"block '{block.name}' holds no layer", block.span, None)
            raise _Abort
        before = self._n_errors()
        self.used_blocks.add(block.name)
        out = self._pipeline(block.body, shape, inner, layers, domain)
        if out is None or self._n_errors() > before:
            raise _Abort
        if block.signature is not None and block.name not in self.generic_done and not scope.generic:
            # The signature could not be checked once for all uses: check it for this one.
            sig_out = block.signature[1]
            declared = self.shape(sig_out, {**symbols, **values}, inner)
            if not self._compare(declared, out, sig_out.span, inner, self._domain_so_far(layers, domain),
                                 f"block '{block.name}' produces {_fmt_shape(out)} here, but its signature "
                                 f"declares {_fmt_shape(declared)}", ()):
                raise _Abort
        return out

    def _cyclic(self) -> set[str]:
        return {n for n, ok in self.generic_ok.items() if not ok}

    def _match_signature(self, block: ast.Block, ly: ast.Layer, values: Mapping[str, Dim],
                         shape: tuple[Dim, ...], scope: _Scope, domain: sy.Domain) -> dict[str, Dim]:
        sig_in = block.signature[0]
        if len(sig_in.dims) != len(shape):
            self.err("shape-mismatch", f"block '{block.name}' takes a {len(sig_in.dims)}-D input, "
                     f"but gets {_fmt_shape(shape)}", ly.op_span, scope, Note("the signature is here", sig_in.span))
            raise _Abort
        bound: dict[str, Dim] = {}
        for d_ast, actual in zip(sig_in.dims, shape):
            if isinstance(d_ast, ast.Name) and d_ast.id not in values:
                if d_ast.id in bound:
                    if sy.prove_equal(bound[d_ast.id], actual, domain).status != "proved":
                        self.err("shape-mismatch", f"block '{block.name}' expects an input "
                                 f"{_source_shape(sig_in)}, but gets {_fmt_shape(shape)} "
                                 f"('{d_ast.id}' would be both {sy.to_str(bound[d_ast.id])} and {sy.to_str(actual)})",
                                 ly.op_span, scope,
                                 Note("the signature is here", sig_in.span))
                        raise _Abort
                bound[d_ast.id] = actual
        names = {**bound, **values}
        expected = self.shape(sig_in, names, scope)
        for e, a in zip(expected, shape):
            if sy.prove_equal(e, a, domain).status != "proved":
                self.err("shape-mismatch", f"block '{block.name}' expects an input {_fmt_shape(expected)}, "
                         f"but gets {_fmt_shape(shape)}", ly.op_span, scope,
                         Note("the signature is here", sig_in.span))
                raise _Abort
        return bound

    def _check_signature(self, block: ast.Block) -> None:
        """Check ``: IN -> OUT`` once, with parameters and shape names as symbols."""
        sig_in, sig_out = block.signature
        params = {p.name: sy.sym(p.name) for p in block.params}
        symbols: dict[str, Dim] = {}
        for d in sig_in.dims:
            if isinstance(d, ast.Name) and d.id not in params:
                symbols[d.id] = sy.sym(d.id)
        scope = _Scope(params=params, symbols=symbols, generic=True, uses=(), prefix="", stack=(block.name,))
        try:
            in_shape = self.shape(sig_in, {**symbols, **params}, scope)
            out_decl = self.shape(sig_out, {**symbols, **params}, scope)
        except _Abort:
            return
        layers: list[Layer] = []
        mark = len(self.diags)
        try:
            out = self._pipeline(block.body, in_shape, scope, layers, sy.Domain())
        except _GenericUnsupported as g:
            del self.diags[mark:]
            self.warn("signature", f"the signature of block '{block.name}' is checked at each use, "
                      f"not once: {g.reason}", g.span, None)
            return
        # Errors in the body itself are reported at each use, with a note there.
        self.generic_body_diags[block.name] = self.diags[mark:]
        del self.diags[mark:]
        if out is None or self.generic_body_diags[block.name]:
            return
        self.generic_done.add(block.name)
        self._compare(out_decl, out, sig_out.span, None, self._domain_so_far(layers, sy.Domain()),
                      f"block '{block.name}' produces {_fmt_shape(out)}, but its signature declares "
                      f"{_fmt_shape(out_decl)}", ())


class _GenericUnsupported(Exception):
    def __init__(self, span: Span, reason: str):
        self.span, self.reason = span, reason


# ------------------------------------------------------------------ helpers
_AXES = ("height", "width")
_WORDS = ("true", "false", "same", "valid")

def _axis_name(shape: tuple[Dim, ...], axis: int) -> str:
    if len(shape) == 4:
        return ("batch", "channels", "height", "width")[axis]
    return ("batch", "features")[axis] if len(shape) == 2 and axis < 2 else f"axis {axis}"


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _suggest(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def _dropped_cells(op: Conv | Pool, n: Dim, axis: int, domain: sy.Domain) -> tuple[str, str, str] | None:
    """(what is dropped, concrete detail, symbolic condition) for one axis, or None."""
    k, s = op.kernel[axis], op.stride[axis]
    if isinstance(op, Conv):
        d, pb, pa = op.dilation[axis], op.padding[2 * axis], op.padding[2 * axis + 1]
    else:
        d, pb, pa = 1, op.padding[axis], op.padding[axis]
    if not all(isinstance(x, int) for x in (k, s, d, pb, pa)):
        return None
    keff = d * (k - 1) + 1
    noun, nouns = ("row", "rows") if axis == 0 else ("column", "columns")
    if s > keff:
        gap = s - keff
        return (f"skips {gap} {noun if gap == 1 else nouns} of every {s}", f" (stride {s} > kernel {keff})", "")
    ceil = isinstance(op, Pool) and op.ceil

    def dropped(nv: int) -> int:
        out = op_registry.out_size(nv, k, s, pb, pa, d, ceil)
        if out < 1:
            return 0
        return max(0, nv + pb - ((out - 1) * s + keff))

    if isinstance(n, int):
        m = dropped(n)
        if not m:
            return None
        return (f"drops the last {noun if m == 1 else f'{m} {nouns}'}",
                f" (input {n}, kernel {keff}, stride {s})", "")
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


def _size_formula(op: Conv | Pool, n: Dim, axis: int) -> str:
    k, s = op.kernel[axis], op.stride[axis]
    if isinstance(op, Conv):
        pb, pa, d = op.padding[2 * axis], op.padding[2 * axis + 1], op.dilation[axis]
    else:
        pb = pa = op.padding[axis]
        d = 1
    kt = sy.to_str(k) if d == 1 else f"{sy.to_str(d)}*({sy.to_str(k)} - 1) - 1"
    if isinstance(op, Pool) and op.ceil:
        return f"ceil(({_paren(n)} + {sy.to_str(pb)} + {sy.to_str(pa)} - {kt}) / {sy.to_str(s)}) + 1"
    return f"({_paren(n)} + {sy.to_str(pb)} + {sy.to_str(pa)} - {kt}) // {sy.to_str(s)} + 1"


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


def _op_text(ly: ast.Layer, args: Mapping[str, _Value]) -> str:
    if not ly.args and ly.args_span is None:
        return ly.op
    parts = []
    for a, (key, v) in zip(ly.args, args.items()):
        parts.append(v.text() if a.key is None else f"{key}={v.text()}")
    return f"{ly.op}({', '.join(parts)})"


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen = set()
    out = []
    for d in diags:
        key = (d.severity, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def check(program: ast.Program) -> CheckResult:
    """Type-check every model and block of a parsed program."""
    return Checker(program).run()
