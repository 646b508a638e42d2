"""The shape checker: AST -> checked models + diagnostics.

Precondition: a :class:`~convdsl.frontend.ast.Program` from :func:`convdsl.frontend.parse.parse`.
Postcondition: one :class:`~convdsl.core.model.CheckedModel` per model that has no
error, and every diagnostic found (several independent errors are all
reported).  Nothing after this stage reports user errors.

The walk is here; each concern is a module of its own: ``expand`` (repeats unrolled, layers
named, block-level checks), ``arguments`` (a call's arguments read by parameter kind), ``blocks``
(a block use's arguments and signature), ``shapes`` (computed against declared shapes, empty
outputs, dropped cells), ``constraints`` (``where`` clauses, the valid input sizes), and
``context`` (the diagnostics, the scope of a walk, expression evaluation).  ``limits`` holds
the caps on the work (layers after expansion, nesting depth), counted before the walk.

Choices the language page leaves open, made here (and written down in
``docs/language.md``):

* After a layer whose declared shape disagrees with the computed one, checking
  goes on with the *computed* shape (the truth), so a wrong declaration costs
  one error, not a cascade.  After a layer whose arguments are wrong, checking
  goes on from its declared shape when it has one; otherwise the rest of that
  model is skipped.
* Layer arguments are integer expressions over block parameters; the model's
  shape symbols (``N``, ``H``, ...) may not appear in them.
* A declared size below 1 is an error where it is declared, and checking goes on from the
  computed shape; a size the where clause's ``==`` makes empty is reported at the layer that
  computes it.
* A label inside ``repeat K`` with ``K > 1`` is an error (it would name K layers).
* ``flatten`` of a 2-D tensor is the identity, as ``torch.nn.Flatten``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from ..core import ops as op_registry
from ..core.diagnostics import Diagnostic, Note, Span, error
from ..core.model import CheckedModel, Layer, Op
from ..core.ops import OPS, Context, OpError
from ..core import symbolic as sy
from ..core.symbolic import Dim
from . import ast
from .arguments import Value, bind_op_args, op_text, read
from .blocks import block_args, match_signature
from .constraints import DomainSoFar, domain_of, valid_for
from .context import Abort, GenericUnsupported, Reporter, Scope, fmt_shape
from .expand import BUILTIN_OPS, LayerCount, TooDeep, block_uses, check_block_params, check_ops_exist, expand, find_cycles, \
    name_layers, report_unknown_op
from .limits import MAX_BLOCK_DEPTH, MAX_LAYERS
from .shapes import compare, drop_warnings, explain, sizes_ok

__all__ = ["BUILTIN_OPS", "CheckResult", "Checker", "check"]


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


class Checker:
    """The walk over a program: models, their pipelines, each layer, each block use."""

    def __init__(self, program: ast.Program):
        self.program = program
        self.rep = Reporter()
        self.blocks: dict[str, ast.Block] = {}
        self.cyclic: set[str] = set()  # blocks that use themselves (reported once)
        self.generic_done: set[str] = set()  # blocks whose signature was proved (or refuted) once for all
        self.generic_body_diags: dict[str, list[Diagnostic]] = {}  # reported only if the block is never used
        self.used_blocks: set[str] = set()
        self.used_by_blocks: set[str] = set()  # blocks some block's body uses
        self.expanded = 0  # layers the walks so far expand to (models and block signatures)
        self.so_far = DomainSoFar()  # the domain narrowed to non-empty layers, kept as pipelines grow
        self.inferred: dict[tuple[object, ...], tuple[Op, tuple[Dim, ...]]] = {}  # an op rule's answers

    # ------------------------------------------------------------ top level
    def run(self) -> CheckResult:
        rep = self.rep
        seen: dict[str, Span] = {}
        for item in self.program.items:
            prev = seen.get(item.name)
            if prev is not None:
                rep.err("duplicate-name", f"'{item.name}' is defined twice", item.name_span, None,
                        Note("first defined here", prev))
                continue
            seen[item.name] = item.name_span
            if isinstance(item, ast.Block):
                if item.name in BUILTIN_OPS:
                    rep.err("duplicate-name", f"block '{item.name}' has the name of a built-in op",
                            item.name_span, None)
                    continue
                self.blocks[item.name] = item
        for cap in (MAX_LAYERS, MAX_BLOCK_DEPTH):
            complaint = cap.read()[1]
            if complaint:
                rep.err("limit", complaint, Span(self.program.file, 1, 1, 1, 2), None)
        self.cyclic = find_cycles(rep, self.blocks)
        self.used_by_blocks = {ly.op for b in self.blocks.values() for ly in block_uses(b.body, self.blocks)}
        for block in self.blocks.values():
            check_block_params(rep, block)
            check_ops_exist(rep, block.body, self.blocks)
            if block.signature is not None and block.name not in self.cyclic:
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
                rep.diags.extend(diags)
        if not self.program.models and not rep.diags:
            span = Span(self.program.file, 1, 1, 1, 2)
            rep.err("no-model", "the file defines no model", span, None)
        return CheckResult(tuple(models), tuple(_dedupe(rep.diags)))

    # ------------------------------------------------------------ models
    def _check_model(self, m: ast.Model) -> CheckedModel | None:
        rep = self.rep
        n_errors = rep.n_errors()
        in_shape_ast = m.input_shape
        if len(in_shape_ast.dims) != 4:
            rep.err("rank", f"the input of model '{m.name}' must be 4-D [N, C, H, W], "
                    f"not {len(in_shape_ast.dims)}-D", in_shape_ast.span, None)
            return None
        batch = in_shape_ast.dims[0]
        if not (isinstance(batch, ast.Name) and batch.id == "N"):
            rep.err("bad-shape", "the batch dimension of the input is the symbol N: the batch size is "
                    "given at run time", batch.span, None, Note(f"write [N, ...] for model '{m.name}'"))
            return None
        symbols: dict[str, Dim] = {}
        for i, d in enumerate(in_shape_ast.dims):
            if isinstance(d, ast.Name) and d.id == "N" and i:
                rep.err("bad-shape", "N is the batch size; it cannot name another dimension", d.span, None)
                return None
            if isinstance(d, ast.Name):
                symbols[d.id] = sy.sym(d.id)
            elif not isinstance(d, ast.Num):
                rep.err("bad-shape", "an input dimension must be an integer or a symbol", d.span, None)
                return None
            elif d.value < 1:
                rep.err("bad-shape", f"an input dimension must be at least 1, not {d.value}", d.span, None)
                return None
        try:
            in_shape = rep.shape(in_shape_ast, symbols, None)
        except Abort:
            return None
        if not m.body:
            rep.err("empty", f"model '{m.name}' holds no layer", m.span, None)
            return None
        domain, constrained = domain_of(rep, m, symbols)
        if domain is None:
            return None
        if not self._within_caps(m.body, f"model '{m.name}'", {}, 0):
            return None
        scope = Scope(params={}, symbols=symbols, generic=False, uses=(), prefix="", stack=())
        layers: list[Layer] = []
        mismatches = rep.count("shape-mismatch")
        out = self._pipeline(m.body, in_shape, scope, layers, domain)
        # After a layer's mismatch, an output mismatch is usually its echo: say it once.
        if out is not None and rep.count("shape-mismatch") == mismatches:
            try:
                declared: tuple[Dim, ...] | None = rep.declared(m.output_shape, symbols, None)
            except Abort:
                declared = None
            if declared is not None:
                compare(rep, declared, out, m.output_shape.span, None, self.so_far(layers, domain),
                        f"model '{m.name}' produces {fmt_shape(out)}, but its signature declares "
                        f"{fmt_shape(declared)}",
                        (Note(f"the last layer is {layers[-1].name}", layers[-1].span),) if layers else ())
        valid = valid_for(rep, m, layers, domain, constrained, symbols)
        if rep.n_errors() > n_errors or out is None or valid is None:
            return None
        params = sum((ly.params for ly in layers), start=0)
        macs = sum((ly.macs for ly in layers), start=0)
        return CheckedModel(
            name=m.name, input_name=m.input.name, input_shape=in_shape, output_shape=out,
            layers=tuple(layers), valid_for=valid, multiple_of=dict(domain.multiple_of),
            fixed=dict(domain.fixed), params=params, macs=macs, span=m.span,
        )

    def _within_caps(self, body: tuple[ast.Stmt, ...], owner: str, params: dict[str, int | None],
                     depth: int) -> bool:
        """Whether ``body`` expands to no more layers, and nests no deeper, than the caps allow;
        otherwise reports the statement that passes one.  Counted before anything is expanded."""
        limit, max_depth = MAX_LAYERS.value(), MAX_BLOCK_DEPTH.value()
        counter = LayerCount(self.blocks, self.cyclic, limit, max_depth)
        total = self.expanded  # the cap is on the file: every model and every block signature checked
        for st in body:
            try:
                n, _ = counter.stmt(st, params, depth)
            except TooDeep as e:
                where = (Note("the level past the limit is here", _stmt_span(e.stmt)),) if e.stmt is not st else ()
                self.rep.err("limit", MAX_BLOCK_DEPTH.exceeded(f"{_this(st, self.blocks)} nests bodies more than "
                                                               f"{max_depth} deep"), _stmt_span(st), None,
                             Note("each block use and each repeat inside another is one level"), *where)
                return False
            if total + n > limit:
                before = (Note(f"the layers checked before it make {total:,}"),) if total else ()
                self.rep.err("limit", MAX_LAYERS.exceeded(f"{owner} makes the file expand to more than {limit:,} "
                                                          f"layers"), _stmt_span(st), None,
                             Note(f"{_this(st, self.blocks)} expands to {_count(n, limit)} layers"), *before)
                return False
            total += n
        self.expanded = total
        return True

    # ------------------------------------------------------------ pipelines
    def _pipeline(self, body: tuple[ast.Stmt, ...], shape: tuple[Dim, ...], scope: Scope,
                  layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...] | None:
        """Walk a body; append layers; return the output shape (None after a fatal error)."""
        flat = expand(self.rep, body, scope)
        if flat is None:
            return None
        for ly, name in name_layers(self.rep, flat, scope):
            try:
                shape = self._layer(ly, name, shape, scope, layers, domain)
            except Abort:
                if ly.declared is None:
                    return None
                try:
                    shape = self.rep.declared(ly.declared, {**scope.symbols, **scope.params}, scope)
                except Abort:
                    return None
        return shape

    def _layer(self, ly: ast.Layer, name: str, shape: tuple[Dim, ...], scope: Scope,
               layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...]:
        rep = self.rep
        full = scope.prefix + name
        if ly.op in self.blocks:
            out = self._block_use(ly, full, shape, scope, layers, domain)
        elif ly.op in BUILTIN_OPS:
            args = bind_op_args(rep, ly, scope)
            op, out = self._apply(ly, full, args, shape, scope)
            params, macs = op_registry.cost(op, out)
            layers.append(Layer(full, op, shape, out, params, macs, op_text(ly, args), ly.span, scope.uses))
            if not scope.generic:
                if not sizes_ok(rep, ly, full, op, shape, out, scope, domain):
                    raise Abort
                drop_warnings(rep, ly, full, op, shape, scope, domain)
        else:
            if not scope.stack:  # inside blocks, check_ops_exist reported it once already
                report_unknown_op(rep, ly, self.blocks, scope)
            raise Abort
        if ly.declared is not None:
            names = {**scope.symbols, **scope.params}
            try:
                declared = rep.declared(ly.declared, names, scope)
            except Abort:
                return out  # (reported: checking goes on from the computed shape)
            if compare(rep, declared, out, ly.declared.span, scope, self.so_far(layers, domain),
                       f"{full} produces {fmt_shape(out)}, but the line declares {fmt_shape(declared)}",
                       explain(layers[-1] if layers and layers[-1].name == full else None, declared)):
                # Proved equal on the whole domain: the author's form reads better downstream.
                if layers and layers[-1].name == full:
                    last = layers[-1]
                    layers[-1] = replace(last, out_shape=declared, macs=op_registry.cost(last.op, declared)[1])
                return declared
        return out

    def _apply(self, ly: ast.Layer, name: str, args: dict[str, Value], shape: tuple[Dim, ...],
               scope: Scope) -> tuple[Op, tuple[Dim, ...]]:
        """The op's registry rule on its read arguments (defaults filled in); its objections become
        diagnostics at the argument they name."""
        d = OPS[ly.op]
        resolved = {p.name: read(self.rep, p, args[p.name], scope) if p.name in args else p.default
                    for p in d.params}
        # Repeats and block uses give one rule the same input again and again; the symbolic
        # arithmetic is the costly part of a layer, so each distinct question is answered once.
        key = (ly.op, tuple(resolved.items()), shape, scope.generic)
        known = self.inferred.get(key)
        if known is not None:
            return known
        try:
            known = self.inferred[key] = d.infer(resolved, shape, Context(name, scope.generic))
            return known
        except OpError as e:
            span = args[e.arg].span if e.arg in args else ly.op_span
            self.rep.err(e.code, e.message, span, scope, *e.notes)
            raise Abort from None

    # ------------------------------------------------------------ blocks
    def _block_use(self, ly: ast.Layer, name: str, shape: tuple[Dim, ...], scope: Scope,
                   layers: list[Layer], domain: sy.Domain) -> tuple[Dim, ...]:
        rep = self.rep
        block = self.blocks[ly.op]
        if block.name in scope.stack or block.name in self.cyclic:
            raise Abort  # recursion: already reported
        values = block_args(rep, ly, block, scope)
        symbols = dict(scope.symbols)
        if block.signature is not None:
            symbols = match_signature(rep, block, ly, values, shape, scope, domain)
        inner = Scope(params=values, symbols=symbols, generic=scope.generic, uses=scope.uses + (ly.span,),
                      prefix=name + ".", stack=scope.stack + (block.name,))
        if not block.body:
            rep.err("empty", f"block '{block.name}' holds no layer", block.span, None)
            raise Abort
        before = rep.n_errors()
        self.used_blocks.add(block.name)
        out = self._pipeline(block.body, shape, inner, layers, domain)
        if out is None or rep.n_errors() > before:
            raise Abort
        if block.signature is not None and block.name not in self.generic_done and not scope.generic:
            # The signature could not be checked once for all uses: check it for this one.
            sig_out = block.signature[1]
            try:
                declared = rep.declared(sig_out, {**symbols, **values}, inner)
            except Abort:
                return out
            if not compare(rep, declared, out, sig_out.span, inner, self.so_far(layers, domain),
                           f"block '{block.name}' produces {fmt_shape(out)} here, but its signature "
                           f"declares {fmt_shape(declared)}", ()):
                raise Abort
        return out

    def _check_signature(self, block: ast.Block) -> None:
        """Check ``: IN -> OUT`` once, with parameters and shape names as symbols."""
        rep = self.rep
        assert block.signature is not None
        sig_in, sig_out = block.signature
        params = {p.name: sy.sym(p.name) for p in block.params}
        symbols: dict[str, Dim] = {}
        for d in sig_in.dims:
            if isinstance(d, ast.Name) and d.id not in params:
                symbols[d.id] = sy.sym(d.id)
        scope = Scope(params=params, symbols=symbols, generic=True, uses=(), prefix="", stack=(block.name,))
        try:
            in_shape = rep.declared(sig_in, {**symbols, **params}, scope)
            out_decl = rep.declared(sig_out, {**symbols, **params}, scope)
        except Abort:
            return
        layers: list[Layer] = []
        mark = len(rep.diags)
        if not self._within_caps(block.body, f"block '{block.name}'", dict.fromkeys(params), 1):
            # Reported only if nothing uses the block: a use reports it in its own terms (and a chain
            # of unused blocks past the cap is one error, at its outermost block).
            if block.name not in self.used_by_blocks:
                self.generic_body_diags[block.name] = rep.diags[mark:]
            del rep.diags[mark:]
            return
        try:
            out = self._pipeline(block.body, in_shape, scope, layers, sy.Domain())
        except GenericUnsupported as g:
            del rep.diags[mark:]
            rep.warn("signature", f"the signature of block '{block.name}' is checked at each use, "
                     f"not once: {g.reason}", g.span, None)
            return
        # Errors in the body itself are reported at each use, with a note there.
        self.generic_body_diags[block.name] = rep.diags[mark:]
        del rep.diags[mark:]
        if out is None or self.generic_body_diags[block.name]:
            return
        self.generic_done.add(block.name)
        compare(rep, out_decl, out, sig_out.span, None, self.so_far(layers, sy.Domain()),
                f"block '{block.name}' produces {fmt_shape(out)}, but its signature declares "
                f"{fmt_shape(out_decl)}", ())


def _stmt_span(st: ast.Stmt) -> Span:
    if isinstance(st, ast.Repeat):
        return st.span
    return st.op_span.to(st.args_span) if st.args_span else st.op_span


def _this(st: ast.Stmt, blocks: Mapping[str, ast.Block]) -> str:
    if isinstance(st, ast.Repeat):
        return "this repeat"
    return f"this use of block '{st.op}'" if st.op in blocks else "this layer"


def _count(n: int, limit: int) -> str:
    return f"more than {limit:,}" if n > limit else f"{n:,}"


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
    """Type-check every model and block of a parsed program.  Never raises: a slip in the checker
    itself is an ``internal`` diagnostic, not a traceback (the caps keep the walk's recursion far
    from Python's limit, so a RecursionError here is such a slip)."""
    try:
        return Checker(program).run()
    except Exception as exc:  # noqa: BLE001 -- last resort, as in parse()
        span = Span(program.file, 1, 1, 1, 2)
        diag = error("internal", f"internal error in the checker: {type(exc).__name__}: {exc}", span)
        return CheckResult((), (diag,))
