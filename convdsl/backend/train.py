"""The compiled training step: forward, the fused softmax + cross-entropy loss, backward and the SGD
update of a network head (``dense``, ``flatten``, ``relu`` / ``sigmoid`` / ``tanh``, and a last
``softmax``, whose input the loss takes), planned and lowered to the loop IR like the forward pass.

``plan_training(cm, schedule)`` takes the decisions (:class:`TrainPlan`, printed by
:func:`format_train_plan`): the stages of one step in order, each with its algorithm, and the
layout of the state arena.  It raises :class:`TrainingError` naming the first layer it cannot
train.  ``lower_training(tp)`` writes the loop-IR program (:class:`TrainLowered`), which
:func:`build_training` verifies (structure and bounds, as a forward program), runs through the
loop-IR passes and compiles; :mod:`convdsl.runtime.training` calls it.

The program keeps the forward program's entry signature ``(input*, output*, weights*, scratch*,
n)`` so codegen, the verifier and the JIT are shared unchanged:

* ``input``: per image its flattened features followed by the one-hot label (the loop IR has only
  float buffers; the runtime builds the one-hot rows);
* ``output``: per image its loss (``logsumexp(z) - z[label]``);
* ``weights``: the *state arena*, read and written: per trained layer its parameters, their
  gradients and their momentum buffers (PyTorch layouts: ``weight[out, in]``, ``bias[out]``), then
  the hyper-parameters ``lr, momentum, weight_decay`` (read at run time, so a schedule can change
  the rate without recompiling) and the batch's mean loss;
* ``scratch``: one batch tile's activations and their gradients.

Single-threaded: the entry zeroes the gradients, runs forward + loss + backward tile by tile of
images (``TrainPlan.batch_tile``; each tile adding its share to the weight gradients, so scratch
does not grow with the batch, and the gradients are summed in image order, deterministically),
then applies PyTorch's SGD rule
``g = grad + wd p; b = mu b + g; p -= lr b`` (the momentum buffers start at zero, so the first
``b`` is ``g`` exactly, as PyTorch's ``b = g``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod
from typing import Callable, Literal, Sequence

from ..core.model import ConcreteModel
from ..core.ops import Activation, Dense, Flatten, Softmax
from . import loopir as L
from .codegen import codegen, entry_name
from .driver import passes
from .jit import JitModule
from .schedule import Schedule
from .verify import verify

ActKind = Literal["relu", "sigmoid", "tanh"]
HYPER = ("lr", "momentum", "weight_decay")
CHAINS = 4  # independent accumulators of a dot product or a weight-gradient block


class TrainingError(ValueError):
    """A model (or a layer of it) that the compiled training step cannot train yet."""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class TrainStage:
    """One stage of a training step, in execution order.

    ``phase`` is ``forward``, ``loss``, ``backward`` or ``update``; ``algorithm`` the way it is
    computed (``dot`` rows of the weight against the input vector, ``axpy`` an input gradient as a
    sum of weight rows, ``outer`` the weight gradient as a rank-1 update per image, ``map`` an
    elementwise pass, ``view`` nothing at all); ``src`` / ``dst`` the value slots it reads and
    writes (``v<k>``: the k-th activation vector, ``d<k>``: its gradient)."""

    layer: str
    phase: Literal["forward", "loss", "backward", "update"]
    what: str
    algorithm: str
    src: str
    dst: str
    size: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ParamSlot:
    """A parameter tensor's place in the state arena: its value, gradient and momentum buffer,
    ``size`` floats each, at the three offsets."""

    name: str  # weights-file name: ``dense1.weight``
    shape: tuple[int, ...]
    value: int
    grad: int
    momentum: int

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True, slots=True)
class _DenseInfo:
    layer: str
    src: int  # value slot index
    dst: int
    fin: int
    fout: int
    weight: ParamSlot
    bias: ParamSlot | None


@dataclass(frozen=True, slots=True)
class _ActInfo:
    layer: str
    kind: ActKind
    src: int
    dst: int
    size: int


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """Every decision of the compiled training step, as data."""

    model: str
    vector_width: int
    features: int  # input floats per image
    classes: int  # logits per image
    values: tuple[int, ...]  # size of each activation slot v0 (the input) .. v_last (the logits)
    layers: tuple[_DenseInfo | _ActInfo, ...]  # the computing layers, forward order
    params: tuple[ParamSlot, ...]
    stages: tuple[TrainStage, ...]
    hyper_offset: int  # lr, momentum, weight_decay, then the mean loss
    state_size: int  # floats in the state arena
    # images per pass through the layers: each weight row (and weight-gradient vector, held in a
    # register) serves the whole tile, so weights stream once per tile rather than once per image
    batch_tile: int

    @property
    def loss_offset(self) -> int:
        return self.hyper_offset + len(HYPER)


def plan_training(cm: ConcreteModel, schedule: Schedule) -> TrainPlan:
    """The plan of ``cm``'s training step under ``schedule`` (its vector width); a
    :class:`TrainingError` names the first layer this slice cannot train."""
    layers = list(cm.layers)
    if layers and isinstance(layers[-1][3], Softmax):
        layers.pop()  # (fused into the loss, which takes its input: log-softmax + NLL)
    values = [prod(cm.input_shape)]
    infos: list[_DenseInfo | _ActInfo] = []
    params: list[ParamSlot] = []
    offset = 0
    fwd: list[TrainStage] = []
    for layer, in_shape, out_shape, op in layers:
        k = len(values) - 1
        if isinstance(op, Flatten):
            fwd.append(TrainStage(layer.name, "forward", "flatten", "view", f"v{k}", f"v{k}", (values[k],)))
            continue
        if isinstance(op, Dense):
            fin, fout = values[k], op.out_features  # (the concrete size: in_features may be symbolic)
            w = ParamSlot(f"{layer.name}.weight", (fout, fin), offset, offset + fout * fin, offset + 2 * fout * fin)
            offset += 3 * w.size
            b = None
            if op.bias:
                b = ParamSlot(f"{layer.name}.bias", (fout,), offset, offset + fout, offset + 2 * fout)
                offset += 3 * fout
            params += [w] + ([b] if b else [])
            values.append(fout)
            infos.append(_DenseInfo(layer.name, k, k + 1, fin, fout, w, b))
            fwd.append(TrainStage(layer.name, "forward", "dense", "dot", f"v{k}", f"v{k + 1}", (fout, fin)))
            continue
        if isinstance(op, Activation):
            values.append(values[k])
            infos.append(_ActInfo(layer.name, op.kind, k, k + 1, values[k]))
            fwd.append(TrainStage(layer.name, "forward", op.kind, "map", f"v{k}", f"v{k + 1}", (values[k],)))
            continue
        where = f"{layer.span.file}:{layer.span.line}: " if layer.span.file else ""
        raise TrainingError(f"{where}layer {layer.name} ({layer.text}): the compiled training step does not "
                            "train this op yet (it trains dense, flatten, relu, sigmoid, tanh and a last softmax)")
    last = len(values) - 1
    if not infos:
        raise TrainingError(f"model {cm.model.name}: nothing to train (no dense layer)")
    loss = TrainStage("loss", "loss", "softmax + cross-entropy (batch mean)", "map",
                      f"v{last}", f"d{last}", (values[last],))
    bwd: list[TrainStage] = []
    for info in reversed(infos):
        if isinstance(info, _DenseInfo):
            bwd.append(TrainStage(info.layer, "backward", "dense weight gradient", "outer",
                                  f"d{info.dst}, v{info.src}", f"{info.weight.name}.grad", (info.fout, info.fin)))
            if _needs_input_grad(infos, info):
                bwd.append(TrainStage(info.layer, "backward", "dense input gradient", "axpy",
                                      f"d{info.dst}", f"d{info.src}", (info.fout, info.fin)))
        elif _needs_input_grad(infos, info):
            bwd.append(TrainStage(info.layer, "backward", f"{info.kind} gradient", "map",
                                  f"d{info.dst}, v{info.dst}", f"d{info.src}", (info.size,)))
    upd = [TrainStage(p.name, "update", "sgd (momentum, weight decay)", "map", f"{p.name}.grad", p.name, p.shape)
           for p in params]
    image_bytes = 2 * 4 * sum(values)  # (every value slot and its gradient)
    tile = max(1, min(schedule.dense_tile, schedule.scratch_budget // image_bytes))
    return TrainPlan(cm.model.name, schedule.vector_width, values[0], values[last], tuple(values), tuple(infos),
                     tuple(params), tuple(fwd + [loss] + bwd + upd), offset, offset + len(HYPER) + 1, tile)


def _needs_input_grad(infos: Sequence[_DenseInfo | _ActInfo], info: _DenseInfo | _ActInfo) -> bool:
    """Whether anything trained lies before ``info``: the input's own gradient is never needed."""
    return any(isinstance(i, _DenseInfo) for i in infos[:infos.index(info)])


def format_train_plan(tp: TrainPlan) -> str:
    out = [f"training step {tp.model}  (vector width {tp.vector_width}, {tp.features} features, "
           f"{tp.classes} classes, batch tile {tp.batch_tile}, state {tp.state_size} floats)"]
    out.append("  values: " + ", ".join(f"v{k}[{n}]" for k, n in enumerate(tp.values)))
    for s in tp.stages:
        size = "x".join(map(str, s.size))
        out.append(f"  {s.phase:8} {s.layer:12} {s.what:40} {s.algorithm:6} {s.src} -> {s.dst}  [{size}]")
    for p in tp.params:
        out.append(f"  state {p.name} {list(p.shape)}: value @{p.value}, grad @{p.grad}, momentum @{p.momentum}")
    out.append(f"  state hyper ({', '.join(HYPER)}) @{tp.hyper_offset}, mean loss @{tp.loss_offset}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- lowering


@dataclass(frozen=True, slots=True)
class TrainLowered:
    plan: TrainPlan
    program: L.Program


class _Emit:
    """Vector loops with scalar tails over contiguous runs of ``n`` floats."""

    def __init__(self, width: int) -> None:
        self.w = width
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def map(self, n: int, body) -> list[L.Stmt]:
        """``body(i, width)`` for ``i`` over ``0..n``: vectors of the schedule's width, then scalars."""
        main = (n // self.w) * self.w if self.w > 1 else 0
        out: list[L.Stmt] = []
        if main:
            v = self.fresh("i")
            out.append(L.For(v, L.IConst(0), L.IConst(main), self.w, tuple(body(L.IVar(v), self.w))))
        if main < n:
            v = self.fresh("t")
            out.append(L.For(v, L.IConst(main), L.IConst(n), 1, tuple(body(L.IVar(v), 1))))
        return out

    def blocks(self, n: int, body: Callable[[list[L.Index], int], list[L.Stmt]]) -> list[L.Stmt]:
        """``body(starts, width)`` over ``0..n``: blocks of :data:`CHAINS` vectors (independent
        FMA chains, so a loop-carried accumulator does not wait on the FMA latency), then single
        vectors, then scalars."""
        w = self.w
        block = CHAINS * w if w > 1 else 0
        main4 = (n // block) * block if block else 0
        main = (n // w) * w if w > 1 else 0
        out: list[L.Stmt] = []
        for lo, hi, step, k, wd in ((0, main4, block, CHAINS, w), (main4, main, w, 1, w), (main, n, 1, 1, 1)):
            if lo < hi:
                v = self.fresh("i")
                starts = [L.iadd(L.IVar(v), j * wd) for j in range(k)]
                out.append(L.For(v, L.IConst(lo), L.IConst(hi), step, tuple(body(starts, wd))))
        return out

    def dot(self, n: int, a, b, into: str) -> list[L.Stmt]:
        """A scalar local ``into`` = ``sum_i a(i, w) * b(i, w)`` over ``0..n`` (in :data:`CHAINS`
        vector accumulators, then one scalar)."""
        w = self.w
        accs = [self.fresh("acc") for _ in range(CHAINS)] if w > 1 else []
        out: list[L.Stmt] = [L.DeclLocal(acc, w, L.FConst(0.0, w)) for acc in accs]
        out.append(L.DeclLocal(into, 1, L.FConst(0.0)))

        def step(starts: list[L.Index], wd: int) -> list[L.Stmt]:
            names = accs if wd > 1 else [into]
            return [L.Assign(acc, L.FMA(a(i, wd), b(i, wd), L.Local(acc))) for acc, i in zip(names, starts)]
        loops = self.blocks(n, step)
        scalar = [s for s in loops if isinstance(s, L.For) and s.step == 1]
        out += [s for s in loops if s not in scalar]
        if accs:
            total: L.Value = L.Local(accs[0])
            for acc in accs[1:]:
                total = L.Bin("add", total, L.Local(acc))
            out.append(L.Assign(into, L.Reduce("add", total)))
        return out + scalar


def _v(k: int) -> str:
    return f"v{k}"


def _d(k: int) -> str:
    return f"d{k}"


def _bcast(x: L.Value, w: int) -> L.Value:
    return x if w == 1 else L.Broadcast(x, w)


def lower_training(tp: TrainPlan) -> TrainLowered:
    """The loop-IR program of ``tp`` (see the module's docstring for its buffers)."""
    e = _Emit(tp.vector_width)
    F, C, T = tp.features, tp.classes, tp.batch_tile
    last = len(tp.values) - 1
    bufs: list[L.Buffer] = [L.Buffer("input", "input", F + C), L.Buffer("output", "output", 1)]
    for p in tp.params:
        for role, off in (("", p.value), (".grad", p.grad), (".mom", p.momentum)):
            bufs.append(L.Buffer(p.name + role, "weights", p.size, off))
    bufs.append(L.Buffer("hyper", "weights", len(HYPER) + 1, tp.hyper_offset))
    scratch = 0
    # (per slot a tile of values and one of their gradients, image-major; loads are unaligned, so
    # no padding)
    for k in sorted({k for info in tp.layers for k in (info.src, info.dst)} | {0, last}):
        for name in (_v(k), _d(k)):
            bufs.append(L.Buffer(name, "scratch", T * tp.values[k], scratch))
            scratch += T * tp.values[k]
    bufs.append(L.Buffer("lossacc", "scratch", 1, scratch))
    scratch += 1
    names = tuple(b.name for b in bufs)

    # -- zero the gradients and the loss sum
    zero: list[L.Stmt] = [L.Comment("gradients of this batch start at zero")]
    for p in tp.params:
        zero += e.map(p.size, lambda i, w, p=p: [L.Store(p.name + ".grad", i, L.FConst(0.0, w))])
    zero.append(L.Store("lossacc", L.IConst(0), L.FConst(0.0)))

    # -- one tile of images [n0, n0 + nt): forward, loss, backward
    n0, nt, n = L.IVar("n0"), L.IVar("nt"), L.IVar("n")

    def per_image(stem: str, body: Callable[[L.Index], list[L.Stmt]]) -> L.Stmt:
        t = e.fresh(stem)
        return L.For(t, L.IConst(0), nt, 1, tuple(body(L.IVar(t))))

    body: list[L.Stmt] = [L.Comment("the tile's images into v0")]
    body.append(per_image("t", lambda t: e.map(F, lambda i, w: [
        L.Store(_v(0), L.iadd(L.imul(t, F), i), L.Load("input", L.iadd(L.imul(L.iadd(n0, t), F + C), i), w))])))
    for info in tp.layers:
        if isinstance(info, _DenseInfo):
            body.append(L.Comment(f"{info.layer}: forward (dot; a weight row serves the whole tile)"))
            body.append(_dense_forward(e, info, per_image))
        else:
            body.append(L.Comment(f"{info.layer}: forward ({info.kind})"))

            def act(t: L.Index, info: _ActInfo = info) -> list[L.Stmt]:
                return e.map(info.size, lambda i, w: [L.Store(_v(info.dst), L.iadd(L.imul(t, info.size), i), L.Unary(
                    info.kind, L.Load(_v(info.src), L.iadd(L.imul(t, info.size), i), w)))])
            body.append(per_image("t", act))
    body.append(per_image("t", lambda t: _loss(last, C, F, t, L.iadd(n0, t), n)))
    for info in reversed(tp.layers):
        if isinstance(info, _DenseInfo):
            body += _dense_backward(e, info, _needs_input_grad(tp.layers, info), per_image, nt)
        elif _needs_input_grad(tp.layers, info):
            body.append(L.Comment(f"{info.layer}: backward ({info.kind})"))

            def act_back(t: L.Index, info: _ActInfo = info) -> list[L.Stmt]:
                def at(i: L.Index) -> L.Index:
                    return L.iadd(L.imul(t, info.size), i)
                return e.map(info.size, lambda i, w: [L.Store(_d(info.src), at(i), _act_grad(
                    info.kind, L.Load(_d(info.dst), at(i), w), L.Load(_v(info.dst), at(i), w), w))])
            body.append(per_image("t", act_back))

    # -- the update
    def hyper(k: int, w: int) -> L.Value:
        return _bcast(L.Load("hyper", L.IConst(k)), w)

    upd: list[L.Stmt] = [L.Comment("sgd: g = grad + wd p; b = mu b + g; p -= lr b")]
    for p in tp.params:
        def step(i: L.Index, w: int, p: ParamSlot = p) -> list[L.Stmt]:
            g = L.FMA(hyper(2, w), L.Load(p.name, i, w), L.Load(p.name + ".grad", i, w))
            b = L.FMA(hyper(1, w), L.Load(p.name + ".mom", i, w), g)
            return [L.Store(p.name + ".mom", i, b),
                    L.Store(p.name, i, L.Bin("sub", L.Load(p.name, i, w),
                                             L.Bin("mul", hyper(0, w), L.Load(p.name + ".mom", i, w))))]
        upd += e.map(p.size, step)
    upd.append(L.Store("hyper", L.IConst(len(HYPER)), L.Bin("div", L.Load("lossacc", L.IConst(0)), L.ToFloat(n))))

    kernels = (L.Kernel("zero_grads", names, (), tuple(zero)),
               L.Kernel("tile", names, ("n0", "nt", "n"), tuple(body)),
               L.Kernel("sgd", names, ("n",), tuple(upd)))
    entry = (L.Call("zero_grads", ()),
             L.For("b0", L.IConst(0), n, T, (L.Call("tile", (L.IVar("b0"), L.imin(T, L.isub(n, L.IVar("b0"))), n)),)),
             L.Call("sgd", (n,)))
    prog = L.Program(f"{tp.model}_train", tp.vector_width, tuple(bufs), kernels, entry, tp.state_size, scratch)
    return TrainLowered(tp, prog)


PerImage = Callable[[str, Callable[[L.Index], list[L.Stmt]]], L.Stmt]


def _act_grad(kind: ActKind, dy: L.Value, y: L.Value, w: int) -> L.Value:
    """The input gradient from the output's, written with the output ``y`` (PyTorch's formulas)."""
    one = L.FConst(1.0, w)
    match kind:
        case "relu":
            return L.Bin("mul", dy, L.Unary("step", y))
        case "sigmoid":
            return L.Bin("mul", dy, L.Bin("mul", y, L.Bin("sub", one, y)))
        case "tanh":
            return L.Bin("mul", dy, L.Bin("sub", one, L.Bin("mul", y, y)))
    raise AssertionError(kind)


def _loss(last: int, C: int, F: int, t: L.Index, image: L.Index, n: L.Index) -> list[L.Stmt]:
    """Softmax + cross-entropy of image ``t`` of the tile (``image`` of the batch), scalar (a
    handful of classes): its loss into the output and the batch's sum, ``(softmax(z) - onehot) / n``
    into the logits' gradient."""
    z, dz = _v(last), _d(last)
    base = L.imul(t, C)
    row = L.iadd(L.imul(image, F + C), F)

    def at(j: str) -> L.Index:
        return L.iadd(base, L.IVar(j))

    def y(j: str) -> L.Value:
        return L.Load("input", L.iadd(row, L.IVar(j)))
    out: list[L.Stmt] = [L.Comment("loss: softmax + cross-entropy, the shift by the max keeps exp finite"),
                         L.DeclLocal("zmax", 1, L.Load(z, base))]
    if C > 1:
        out.append(L.For("lj", L.IConst(1), L.IConst(C), 1,
                         (L.Assign("zmax", L.Bin("max", L.Local("zmax"), L.Load(z, at("lj")))),)))
    out += [L.DeclLocal("esum", 1, L.FConst(0.0)), L.DeclLocal("zy", 1, L.FConst(0.0)),
            L.For("le", L.IConst(0), L.IConst(C), 1, (
                L.Store(dz, at("le"), L.Unary("exp", L.Bin("sub", L.Load(z, at("le")), L.Local("zmax")))),
                L.Assign("esum", L.Bin("add", L.Local("esum"), L.Load(dz, at("le")))),
                L.Assign("zy", L.FMA(y("le"), L.Load(z, at("le")), L.Local("zy"))))),
            L.DeclLocal("li", 1, L.Bin("sub", L.Bin("add", L.Local("zmax"), L.Unary("log", L.Local("esum"))),
                                       L.Local("zy"))),
            L.Store("output", image, L.Local("li")),
            L.Store("lossacc", L.IConst(0), L.Bin("add", L.Load("lossacc", L.IConst(0)), L.Local("li"))),
            L.DeclLocal("nf", 1, L.ToFloat(n)),
            L.For("lg", L.IConst(0), L.IConst(C), 1, (
                L.Store(dz, at("lg"), L.Bin("div", L.Bin("sub", L.Bin("div", L.Load(dz, at("lg")), L.Local("esum")),
                                                         y("lg")), L.Local("nf"))),))]
    return out


def _dense_forward(e: _Emit, info: _DenseInfo, per_image: PerImage) -> L.Stmt:
    o = e.fresh("o")
    wrow = L.imul(L.IVar(o), info.fin)

    def image(t: L.Index) -> list[L.Stmt]:
        s = e.fresh("s")
        xrow = L.imul(t, info.fin)
        res: L.Value = L.Local(s)
        if info.bias is not None:
            res = L.Bin("add", res, L.Load(info.bias.name, L.IVar(o)))
        return [*e.dot(info.fin, lambda i, w: L.Load(info.weight.name, L.iadd(wrow, i), w),
                       lambda i, w: L.Load(_v(info.src), L.iadd(xrow, i), w), s),
                L.Store(_v(info.dst), L.iadd(L.imul(t, info.fout), L.IVar(o)), res)]
    return L.For(o, L.IConst(0), L.IConst(info.fout), 1, (per_image("t", image),))


def _dense_backward(e: _Emit, info: _DenseInfo, input_grad: bool, per_image: PerImage, nt: L.Index) -> list[L.Stmt]:
    dy, x, W = _d(info.dst), _v(info.src), info.weight.name
    I, O = info.fin, info.fout
    out: list[L.Stmt] = [L.Comment(f"{info.layer}: backward (outer: the weight gradient += dy^T x over the "
                                   "tile, kept in a register across its images)")]
    if info.bias is not None:
        gb = info.bias.name + ".grad"
        out.append(per_image("t", lambda t: e.map(O, lambda i, w: [
            L.Store(gb, i, L.Bin("add", L.Load(gb, i, w), L.Load(dy, L.iadd(L.imul(t, O), i), w)))])))
    o = e.fresh("o")
    wrow = L.imul(L.IVar(o), I)
    g = W + ".grad"

    def cell(starts: list[L.Index], w: int) -> list[L.Stmt]:
        accs, t = [e.fresh("g") for _ in starts], e.fresh("t")
        dyt = _bcast(L.Load(dy, L.iadd(L.imul(L.IVar(t), O), L.IVar(o))), w)
        return [*(L.DeclLocal(acc, w, L.Load(g, L.iadd(wrow, i), w)) for acc, i in zip(accs, starts)),
                L.For(t, L.IConst(0), nt, 1, tuple(
                    L.Assign(acc, L.FMA(dyt, L.Load(x, L.iadd(L.imul(L.IVar(t), I), i), w), L.Local(acc)))
                    for acc, i in zip(accs, starts))),
                *(L.Store(g, L.iadd(wrow, i), L.Local(acc)) for acc, i in zip(accs, starts))]
    out.append(L.For(o, L.IConst(0), L.IConst(O), 1, tuple(e.blocks(I, cell))))
    if input_grad:
        dx = _d(info.src)
        out.append(L.Comment(f"{info.layer}: backward (axpy: dx = sum over outputs of dy[o] W[o, :])"))

        def image(t: L.Index) -> list[L.Stmt]:
            xrow, o2 = L.imul(t, I), e.fresh("o")
            return [*e.map(I, lambda i, w: [L.Store(dx, L.iadd(xrow, i), L.FConst(0.0, w))]),
                    L.For(o2, L.IConst(0), L.IConst(O), 1, tuple(e.map(I, lambda i, w: [
                        L.Store(dx, L.iadd(xrow, i), L.FMA(_bcast(L.Load(dy, L.iadd(L.imul(t, O), L.IVar(o2))), w),
                                                           L.Load(W, L.iadd(L.imul(L.IVar(o2), I), i), w),
                                                           L.Load(dx, L.iadd(xrow, i), w)))])))]
        out.append(per_image("t", image))
    return out



# ----------------------------------------------------------------------------- build


@dataclass(frozen=True, slots=True)
class TrainBuild:
    lowered: TrainLowered
    jit: JitModule
    entry: str


def build_training(cm: ConcreteModel, schedule: Schedule, check_bounds: bool | None = None) -> TrainBuild:
    """Plan, lower, verify (structure and bounds), run the loop-IR passes, codegen and JIT.
    ``check_bounds`` (default: ``CONVDSL_CHECK_BOUNDS=1``, as for forward builds) compiles every
    access checked at run time too.  Not cached yet: a step compiles in well under a second."""
    if check_bounds is None:
        check_bounds = os.environ.get("CONVDSL_CHECK_BOUNDS", "") not in ("", "0")
    lowered = lower_training(plan_training(cm, schedule))
    verify(lowered.program)
    jit = JitModule(codegen(passes(lowered.program), check_bounds))
    return TrainBuild(lowered, jit, entry_name(lowered.program))
