"""Lowering: a concrete model plus a schedule becomes a loop-IR program and a weight-packing plan.

Precondition: ``cm`` is a :class:`~convdsl.core.model.ConcreteModel` bound from a
model the checker accepted (every size but the batch known, shapes
consistent).  ``lower`` never reports user errors; it asserts.

``lower(cm, schedule)`` is ``emit(plan(cm, schedule))``: every decision below
(algorithm, fusion, register blocks, layouts and halos, split axes, tile
levels) is made by :mod:`.plan` and recorded in its :class:`~.plan.Plan`;
the emitters here only build the loops the plan describes.

Algorithm (what), independent of the schedule:

* the network is a list of *stages*: ``pack`` (caller's NCHW input into
  scratch), ``conv``, ``dense`` (reads any layout; a preceding ``flatten`` is a
  view), ``pool``, ``gap`` (global average), ``flatten`` (a real copy, only
  needed before a softmax), ``softmax`` and ``unpack`` (scratch into the
  caller's NCHW / ``[N, F]`` output);
* every activation is fused into the epilogue of the stage that produced its
  input (they commute with ``flatten``);
* intermediates live in scratch in the blocked layout ``[C/V][H][W][V]``
  (``V`` = vector width), with a halo around ``H x W`` that the consumer needs
  (zeros for conv padding and average pooling, ``-inf`` for max pooling), so
  that no kernel tests bounds.  Channel lanes past ``C`` hold finite junk that
  no consumer lets through (zero weights, masked softmax, unpack skips them).

Schedule (how): vector width, register blocks of the conv micro-kernel
(output-channel vectors x output-width positions) and of the dense
micro-kernel (output vectors x images), the batch tile (scratch holds one
tile; the entry loops over tiles), the dense tile (see below), loop order, unrolling of the kernel width,
whether a non-overlapping pool runs in the conv micro-kernel's epilogue
(``fuse_pool``: the micro-kernel then blocks over pooling windows and the conv
output never reaches memory), and per-stage cycle counters (``profile``).

Winograd: a 3x3 stride-1 convolution with enough channels runs as Winograd
F(2x2, 3x3) (input and output transforms around 16 GEMMs over the channels,
with weights transformed at packing time), 2.25x fewer multiplies than the
direct micro-kernel; see :func:`_emit_winograd`.

Dense tail: when a network ends in dense layers whose weights outgrow the
caches (``Schedule.dense_tail_bytes``), the entry runs two tile levels.  The
layers before them run on batch tiles as usual, each tile's result landing in
a buffer of ``dense_tile`` images; the dense layers then run once over that
buffer, so their weights stream from memory once per ``dense_tile`` images
instead of once per batch tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union, assert_never

import numpy as np

from ..core.model import ConcreteModel, Conv, Dense, Pool
from . import loopir as L
from .loopir import iadd, imin, imul, isub, ix
from .plan import Act, Layout, Plan, Step, conv_input_ranges, plan
from .schedule import Schedule
from .verify import verify

ALIGN = 16  # floats (64 bytes) between arena regions

# ----------------------------------------------------------------------------- weight packing plan


@dataclass(frozen=True, slots=True)
class ConvPack:
    """Conv weight ``[O, C/g, KH, KW]`` as, per output-channel vector block ``ob``,
    ``[ic_len][KH][KW][V]`` at ``offsets[ob]`` (input channels ``ic_lo[ob] ..``; lanes of other
    groups and past ``O`` are zero)."""

    key: str
    offset: int
    size: int
    V: int
    out_channels: int
    groups: int
    in_channels: int
    ic_lo: tuple[int, ...]
    ic_len: tuple[int, ...]
    offsets: tuple[int, ...]  # relative to ``offset``


@dataclass(frozen=True, slots=True)
class DensePack:
    """Dense weight ``[O, F]`` as ``[ceil(O/V)][K][V]`` where the k-th input float (memory order
    of ``layout``) holds feature ``layout.features_in_memory_order()[k]``."""

    key: str
    offset: int
    size: int
    V: int
    out_features: int
    layout: Layout


@dataclass(frozen=True, slots=True)
class BiasPack:
    key: str
    offset: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class WinogradPack:
    """3x3 conv weight ``[O, C, 3, 3]`` as its Winograd F(2x2, 3x3) transform ``G g G^T`` (4 x 4 per
    output/input channel pair), laid out ``[16][O/V][C_pad][V]`` (``C_pad``: ``C`` rounded up to
    whole vectors; lanes past ``O`` and rows past ``C`` are zero)."""

    key: str
    offset: int
    size: int
    V: int
    out_channels: int
    in_channels: int
    c_pad: int


PackSpec = Union[ConvPack, DensePack, BiasPack, WinogradPack]

# Winograd F(2x2, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A, a 2 x 2 output tile from a 4 x 4 input
# tile with 16 multiplies per channel pair instead of 36.  Every coefficient is 0, +-1 or +-1/2, so
# the transforms are exact in float32 but for the rounding of the sums.
WINO_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


@dataclass(frozen=True, slots=True)
class PackingPlan:
    size: int  # floats in the weight arena
    specs: tuple[PackSpec, ...]

    def pack(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The weight arena (float32, 64-byte aligned) for PyTorch-layout ``weights``."""
        arena = aligned_zeros(self.size)
        for spec in self.specs:
            dst = arena[spec.offset:spec.offset + spec.size]
            src = np.asarray(weights[spec.key], dtype=np.float32)
            match spec:
                case BiasPack(count=n):
                    dst[:n] = src.reshape(n)
                case ConvPack():
                    _pack_conv(spec, src, dst)
                case DensePack():
                    _pack_dense(spec, src, dst)
                case WinogradPack():
                    _pack_winograd(spec, src, dst)
                case _:
                    assert_never(spec)
        return arena


def aligned_zeros(n: int, fill: float = 0.0) -> np.ndarray:
    raw = np.full(n + ALIGN, fill, dtype=np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + n]


def _pack_conv(spec: ConvPack, w: np.ndarray, dst: np.ndarray) -> None:
    O, Cg, KH, KW = w.shape
    V, g = spec.V, spec.groups
    Og = O // g
    for ob, (lo, n, off) in enumerate(zip(spec.ic_lo, spec.ic_len, spec.offsets)):
        blk = np.zeros((n, KH, KW, V), dtype=np.float32)
        for lane in range(V):
            o = ob * V + lane
            if o >= O:
                break
            grp = o // Og
            a, b = max(lo, grp * Cg), min(lo + n, (grp + 1) * Cg)
            if a < b:
                blk[a - lo:b - lo, :, :, lane] = w[o, a - grp * Cg:b - grp * Cg]
        dst[off:off + blk.size] = blk.reshape(-1)


def _pack_winograd(spec: WinogradPack, w: np.ndarray, dst: np.ndarray) -> None:
    O, C, V, Cp = spec.out_channels, spec.in_channels, spec.V, spec.c_pad
    Ob = -(-O // V)
    t = np.einsum("ak,ockl,bl->abco", WINO_G, w.astype(np.float64), WINO_G)  # [4][4][C][O]
    full = np.zeros((16, Cp, Ob * V))
    full[:, :C, :O] = t.reshape(16, C, O)
    dst[:] = full.reshape(16, Cp, Ob, V).transpose(0, 2, 1, 3).reshape(-1).astype(np.float32)


def _pack_dense(spec: DensePack, w: np.ndarray, dst: np.ndarray) -> None:
    O, F = w.shape
    V = spec.V
    feats = spec.layout.features_in_memory_order()
    K = feats.size
    Ob = -(-O // V)
    out = dst[:Ob * K * V].reshape(Ob, K, V)
    real = feats >= 0
    cols = np.where(real, feats, 0)
    # One output block at a time, straight into the arena: the whole-matrix version made three
    # full copies (VGG-11's 25088 x 4096 layer: 400 MB each, seconds of page faults).
    for ob in range(Ob):
        rows = w[ob * V:min(O, (ob + 1) * V)]
        block = out[ob]
        block[:, :rows.shape[0]] = rows[:, cols].T
        block[:, rows.shape[0]:] = 0.0
        if not real.all():
            block[~real] = 0.0  # padding lanes of the blocked input layout read zeros


def _bias_buffer(b: "_Builder", name: str, bias: bool, Ob: int, V: int, O: int) -> str | None:
    """The bias of a conv or dense stage, padded to whole vectors; None without bias."""
    if not bias:
        return None
    bname = b.weights(f"{name}.bias", Ob * V)
    b.specs.append(BiasPack(f"{name}.bias", b.buffers[-1].offset, Ob * V, O))
    return bname


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class Lowered:
    program: L.Program
    packing: PackingPlan
    input_shape: tuple[int, ...]  # per image
    output_shape: tuple[int, ...]  # per image
    batch_tile: int
    stage_names: tuple[str, ...] = ()  # the layer each entry call computes (profile counter order)
    profile_offset: int = -1  # float offset of the cycle counters (int64 each) in scratch, or -1
    outer_tile: int = 0  # images per pass through a dense tail (a multiple of batch_tile); 0: no tail
    plan: Plan | None = None  # the decisions it carries out


# ----------------------------------------------------------------------------- tensors in kernels


@dataclass(frozen=True, slots=True)
class _Tensor:
    buf: str
    layout: Layout
    user: bool  # the caller's array: images at n0 + i, else a scratch tile: images at i

    def image(self, i: L.Index | int | str) -> L.Index:
        img = iadd("n0", i) if self.user else ix(i)
        return imul(img, self.layout.size)

    def at(self, i, c, h, w) -> L.Index:
        return iadd(self.image(i), self.layout.index(c, h, w))

    def vat(self, i, cb, h, w) -> L.Index:
        return iadd(self.image(i), self.layout.vindex(cb, h, w))


class _Builder:
    """Collects buffers, kernels and packing specs while walking the stages."""

    def __init__(self, V: int) -> None:
        self.V = V
        self.buffers: list[L.Buffer] = []
        self.kernels: list[L.Kernel] = []
        self.specs: list[PackSpec] = []
        self.wsize = 0
        self.ssize = 0
        self.counter = 0
        self.stages: list[str] = []  # kernels the entry calls, in order
        self.labels: list[str] = []  # the network stage (layer name) of each
        self.extents: list[int] = []  # of each stage kernel: parts of its split loop (0: not split)
        self.label = ""
        self.winograd_buffers: tuple[str, str] = ("", "")  # scratch U and M, shared by Winograd convs

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def weights(self, name: str, size: int) -> str:
        off = self.wsize
        self.wsize += -(-size // ALIGN) * ALIGN
        self.buffers.append(L.Buffer(name, "weights", size, off))
        return name

    def scratch(self, name: str, size: int, fill: float) -> str:
        off = self.ssize
        self.ssize += -(-size // ALIGN) * ALIGN
        self.buffers.append(L.Buffer(name, "scratch", size, off, fill))
        return name

    def kernel(self, name: str, bufs: tuple[str, ...], body: list[L.Stmt],
               params: tuple[str, ...] = ("n0", "nt"), stage: bool = True, extent: int = 0) -> None:
        """A kernel; ``stage`` kernels are called by the entry, the others by kernels.  A stage
        kernel with ``extent > 0`` also takes ``(r0, r1)``: the part of its split loop to compute."""
        if extent:
            params = (*params, "r0", "r1")
        self.kernels.append(L.Kernel(name, bufs, params, tuple(body)))
        if stage:
            self.stages.append(name)
            self.labels.append(self.label)
            self.extents.append(extent)


def _epilogue(v: L.Value, acts: tuple[Act, ...]) -> L.Value:
    for a in acts:
        v = L.Unary(a, v)
    return v


def _act_pass(b: _Builder, acts: tuple[Act, ...], dst: "_Tensor",
              rng: tuple[str, L.Index, L.Index] | None = None) -> list[L.Stmt]:
    """The statements that apply ``acts`` (a step's ``after``: see ``plan._split_acts``) to the
    image's output once a micro-kernel has written it: a call of a separate (non-inlined) kernel,
    while the output is still in L1; none for no activations."""
    if not acts:
        return []
    lay = dst.layout
    name = b.fresh("act_")
    upd = [L.Store(dst.buf, dst.vat("i", "cb", "h", "w"),
                   _epilogue(L.Load(dst.buf, dst.vat("i", "cb", "h", "w"), b.V), acts))]
    if rng is None:
        b.kernel(name, (dst.buf,), _for("cb", lay.Cb, _for("h", lay.H, _for("w", lay.W, upd))),
                 params=("n0", "i"), stage=False)
        return [L.Call(name, (L.IVar("n0"), L.IVar("i")))]
    # only the part [a0, a1) of the channel blocks (``cb``) or rows (``h``) the caller computed
    dim, a0, a1 = rng
    if dim == "cb":
        body = _for("cb", "a1", _for("h", lay.H, _for("w", lay.W, upd)), start="a0")
    else:
        body = _for("cb", lay.Cb, _for("h", "a1", _for("w", lay.W, upd), start="a0"))
    b.kernel(name, (dst.buf,), body, params=("n0", "i", "a0", "a1"), stage=False)
    return [L.Call(name, (L.IVar("n0"), L.IVar("i"), a0, a1))]


def _for(var: str, stop: L.Index | int | str, body: Sequence[L.Stmt], start: L.Index | int | str = 0, step: int = 1,
         unroll: bool = False) -> list[L.Stmt]:
    start, stop = ix(start), ix(stop)
    if isinstance(start, L.IConst) and isinstance(stop, L.IConst) and stop.value <= start.value:
        return []
    return [L.For(var, start, stop, step, tuple(body), unroll)]


def _once(var: str, value: int, body: Callable[[L.Index], list[L.Stmt]]) -> list[L.Stmt]:
    """``body`` with ``var`` = ``value`` in its own scope (a one-trip unrolled loop)."""
    return [L.For(var, L.IConst(value), L.IConst(value + 1), 1, tuple(body(L.IVar(var))), True)]


def _blocked_const(var: str, extent: int, block: int,
                   body: Callable[[L.Index, int], list[L.Stmt]]) -> list[L.Stmt]:
    """``extent`` items in blocks of ``block``: a loop over full blocks, then one constant tail."""
    block = max(1, min(block, extent))
    full = extent // block
    out: list[L.Stmt] = []
    if full == 1:
        out += _once(var, 0, lambda v: body(v, block))
    elif full > 1:
        out += _for(var, full * block, body(L.IVar(var), block), step=block)
    tail = extent - full * block
    if tail:
        out += _once(var + "_t", full * block, lambda v: body(v, tail))
    return out


def _blocked_range(var: str, extent: int, block: int,
                   body: Callable[[L.Index, int], list[L.Stmt]]) -> tuple[list[L.Stmt], int]:
    """Like :func:`_blocked_const`, but only the blocks ``[r0, r1)`` (run-time kernel parameters);
    returns the statements and the number of blocks."""
    block = max(1, min(block, extent))
    full = extent // block
    tail = extent - full * block
    u = var + "_u"
    out = _for(u, imin("r1", full), body(imul(u, block), block), start="r0")
    if tail:
        # the tail block (number ``full``) when it is in range: a loop of at most one trip
        start = iadd(full, isub("r0", imin("r0", full)))
        out += _for(var + "_t", "r1", body(L.IConst(full * block), tail), start=start)
    return out, full + (1 if tail else 0)


def _range_of_blocks(block: int, extent: int) -> tuple[L.Index, L.Index]:
    """Items ``[r0 * block, min(r1 * block, extent))``: the items of the blocks ``[r0, r1)``."""
    return imul("r0", block), imin(imul("r1", block), extent)


def _blocked_runtime(var: str, extent: str, block: int,
                     body: Callable[[L.Index, int], list[L.Stmt]]) -> list[L.Stmt]:
    """Run-time ``extent``: blocks of ``block`` while they fit, then single items."""
    if block == 1:
        return _for(var, extent, body(L.IVar(var), 1))
    main_end = imul(L.IDivC(L.IVar(extent), block), block)
    tvar = var + "_t"
    return (_for(var, main_end, body(L.IVar(var), block), step=block)
            + _for(tvar, extent, body(L.IVar(tvar), 1), start=main_end))


def _fma_step(V: int, weights: Sequence[L.Value], inputs: Sequence[L.Value]) -> list[L.Stmt]:
    """One step of a register-blocked micro-kernel (direct conv, Winograd GEMM, dense):
    ``acc{j}_{c} += w{c} * x{j}`` for the weight vectors ``weights`` and the scalar ``inputs``,
    broadcast.  Each input is loaded just before its FMAs, so one or two broadcast registers
    are live at a time."""
    out: list[L.Stmt] = [L.DeclLocal(f"w{c}", V, w) for c, w in enumerate(weights)]
    for j, x in enumerate(inputs):
        out.append(L.DeclLocal(f"x{j}", V, L.Broadcast(x, V) if V > 1 else x))
        for c in range(len(weights)):
            out.append(L.Assign(f"acc{j}_{c}", L.FMA(L.Local(f"w{c}"), L.Local(f"x{j}"), L.Local(f"acc{j}_{c}"))))
    return out


# ----------------------------------------------------------------------------- stage emitters


def _emit_pack(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    """The caller's planar input into scratch: planar rows copied a vector at a time, or blocked
    (the lanes of a position gathered from ``V`` planes).  No loop body is a long unrolled run of
    scalar copies: those cost the optimiser far more than the copy costs at run time."""
    C, H, W = st.in_shape
    lay = dst.layout
    V = b.V

    def val(c, h, w, width: int = 1) -> L.Value:
        return _epilogue(L.Load(src.buf, src.at("i", c, h, w), width), st.acts)

    body: list[L.Stmt]
    if not lay.blocked or V == 1:
        full = (W // V) * V if V > 1 else 0
        row = _for("w", full, [L.Store(dst.buf, dst.at("i", "c", "h", "w"), val("c", "h", "w", V))], step=V)
        row += _for("wt", W, [L.Store(dst.buf, dst.at("i", "c", "h", "wt"), val("c", "h", "wt"))], start=full)
        body = _for("c", C, _for("h", H, row))
    else:
        def lanes(cb: L.Index, n: int) -> list[L.Stmt]:
            out: list[L.Stmt] = [L.Store(dst.buf, iadd(dst.vat("i", cb, "h", "w"), k),
                                         val(iadd(imul(cb, V), k), "h", "w")) for k in range(n)]
            # padding lanes of the last channel block: zero (the halo fill may be -inf)
            out += [L.Store(dst.buf, iadd(dst.vat("i", cb, "h", "w"), k), L.FConst(0.0)) for k in range(n, V)]
            return out
        full = C // V
        body = _for("cb", full, _for("h", H, _for("w", W, lanes(L.IVar("cb"), V))))
        if C % V:
            body += _once("cbt", full, lambda cb: _for("h", H, _for("w", W, lanes(cb, C % V))))
    b.kernel(b.fresh("pack_"), (src.buf, dst.buf), _for("i", "nt", body))


def _emit_unpack(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    """Scratch into the caller's planar output.  Blocked sources are read position by position
    (one vector of ``V`` channels scattered to ``V`` planes); with ``H = W = 1`` the blocked
    layout already is the output order and whole vectors are copied (the last one masked)."""
    C, H, W = st.in_shape
    lay = src.layout
    V = b.V
    if not lay.blocked or V == 1:
        copy = [L.Store(dst.buf, dst.at("i", "c", "h", "w"),
                        _epilogue(L.Load(src.buf, src.at("i", "c", "h", "w")), st.acts))]
        body = _for("c", C, _for("h", H, _for("w", W, copy)))
        b.kernel(b.fresh("unpack_"), (src.buf, dst.buf), _for("i", "nt", body))
        return
    assert lay.halo == (0, 0, 0, 0)
    if H * W == 1:
        full = C // V

        def vec(cb: L.Index, n: int) -> list[L.Stmt]:
            v = _epilogue(L.Load(src.buf, src.vat("i", cb, 0, 0), V), st.acts)
            return [L.Store(dst.buf, dst.at("i", imul(cb, V), 0, 0), v, n if n < V else 0)]
        body = _for("cb", full, vec(L.IVar("cb"), V))
        if C % V:
            body += _once("cbt", full, lambda cb: vec(cb, C % V))
        b.kernel(b.fresh("unpack_"), (src.buf, dst.buf), _for("i", "nt", body))
        return
    HW = H * W

    def lanes(cb: L.Index, n: int) -> list[L.Stmt]:
        # the flattened position p stands for (p // W, p % W): no halo, so both layouts agree
        return [L.Store(dst.buf, iadd(dst.image("i"), imul(iadd(imul(cb, V), k), HW), "p"),
                        _epilogue(L.Load(src.buf, iadd(src.vat("i", cb, 0, "p"), k)), st.acts))
                for k in range(n)]
    full = C // V
    body = _for("cb", full, _for("p", HW, lanes(L.IVar("cb"), V)))
    if C % V:
        body += _once("cbt", full, lambda cb: _for("p", HW, lanes(cb, C % V)))
    b.kernel(b.fresh("unpack_"), (src.buf, dst.buf), _for("i", "nt", body))


def _emit_flatten(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    C, H, W = st.in_shape
    f = iadd(imul(iadd(imul("c", H), "h"), W), "w")
    copy = [L.Store(dst.buf, iadd(dst.image("i"), dst.layout.index(f, 0, 0)),
                    _epilogue(L.Load(src.buf, src.at("i", "c", "h", "w")), st.acts))]
    body = _for("c", C, _for("h", H, _for("w", W, copy)))
    b.kernel(b.fresh("flatten_"), (src.buf, dst.buf), _for("i", "nt", body))


def _emit_conv(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    """A direct convolution; with ``st.pool`` (see ``plan._fusable_pool``) the pooling too, in
    registers: ``dst`` is then the pool's output and the conv output never reaches memory."""
    op = st.op
    assert isinstance(op, Conv)
    V, pool = b.V, st.pool
    C, H, W = st.in_shape
    O, OH, OW = st.out_shape
    KH, KW = op.kernel
    SH, SW = op.stride
    DH, DW = op.dilation
    g = op.groups
    Ob = -(-O // V)
    lo, ln, uniform = conv_input_ranges(op, O, V)  # input-channel range of every output-channel block
    offs, acc = [], 0
    for n in ln:
        offs.append(acc)
        acc += n * KH * KW * V
    wname = b.weights(f"{st.name}.weight", acc)
    b.specs.append(ConvPack(f"{st.name}.weight", b.buffers[-1].offset, acc, V, O, g, C, tuple(lo), tuple(ln),
                            tuple(offs)))
    bufs = [src.buf, dst.buf, wname]
    bname = _bias_buffer(b, st.name, op.bias, Ob, V, O)
    if bname is not None:
        bufs.append(bname)

    pre: tuple[Act, ...] = ()
    if pool is None:
        PKH = PKW = 1  # each output position is its own "window"
        rows, cols = OH, OW
    else:
        pop = pool.op
        assert isinstance(pop, Pool)
        PKH, PKW = pop.kernel
        _, rows, cols = pool.out_shape
        if pop.kind == "avg":
            pre = st.acts  # relu only (plan._fusable_pool): per conv output, in registers
    Bc, Bw = st.block
    unroll_kw = st.unroll_kw
    step_lo = (lo[1] - lo[0]) if Ob > 1 else 0
    wblock = (ln[0] * KH * KW * V) if uniform else 0
    split_ob = st.split == "channel blocks"
    rng: tuple[str, L.Index, L.Index] | None = None
    if st.split:
        rng = ("cb", *_range_of_blocks(min(Bc, Ob), Ob)) if split_ob else ("h", L.IVar("r0"), L.IVar("r1"))
    acts = st.epilogue
    after = _act_pass(b, st.after, dst, rng)

    def pooled(vals: list[L.Value]) -> L.Value:
        """One window's conv outputs, pooled (``pre`` per output, ``acts`` on the result)."""
        assert pool is not None and isinstance(pool.op, Pool)
        is_max = pool.op.kind == "max"
        out = _epilogue(vals[0], pre)
        for v in vals[1:]:
            out = L.Bin("max" if is_max else "add", out, _epilogue(v, pre))
        if not is_max:
            out = L.Bin("mul", out, L.FConst(1.0 / len(vals), V))
        return _epilogue(out, acts)

    def micro(ob0: L.Index, nc: int, ow0: L.Index, nw: int, ob_const: int | None) -> list[L.Stmt]:
        # output positions: ``nw`` (pooled) columns from ``ow0``, each a PKH x PKW window of conv
        # outputs at conv row ``oh * PKH + r``, column ``(ow0 + j) * PKW + q``
        pts = [(j, r, q) for j in range(nw) for r in range(PKH) for q in range(PKW)]
        if ob_const is not None:
            ic_base: L.Index = L.IConst(lo[ob_const])
            n_ic = ln[ob_const]
            w_base: L.Index = L.IConst(offs[ob_const])
        else:
            ic_base = imul(ob0, step_lo) if step_lo else L.IConst(lo[0])
            n_ic = ln[0]
            w_base = imul(ob0, wblock)
        stm: list[L.Stmt] = []
        for c in range(nc):
            init: L.Value = L.Load(bname, imul(iadd(ob0, c), V), V) if bname else L.FConst(0.0, V)
            for p in range(len(pts)):
                stm.append(L.DeclLocal(f"acc{p}_{c}", V, init))
        wk = imul(iadd(imul(iadd(imul("ic", KH), "kh"), KW), "kw"), V)
        ws = [L.Load(wname, iadd(w_base, c * n_ic * KH * KW * V, wk), V) for c in range(nc)]
        ic_abs = iadd(ic_base, "ic")
        xs = []
        for j, r, q in pts:
            ih = iadd(imul(iadd(imul("oh", PKH), r), SH), imul("kh", DH), -op.padding[0])
            iw = iadd(imul(iadd(imul(iadd(ow0, j), PKW), q), SW), imul("kw", DW), -op.padding[2])
            xs.append(L.Load(src.buf, src.at("i", ic_abs, ih, iw)))
        inner = _fma_step(V, ws, xs)
        stm += _for("ic", n_ic, _for("kh", KH, _for("kw", KW, inner, unroll=unroll_kw)))
        for j in range(nw):
            for c in range(nc):
                vals: list[L.Value] = [L.Local(f"acc{p}_{c}") for p, pt in enumerate(pts) if pt[0] == j]
                res = _epilogue(vals[0], acts) if pool is None else pooled(vals)
                stm.append(L.Store(dst.buf, dst.vat("i", iadd(ob0, c), "oh", iadd(ow0, j)), res))
        return stm

    def row(ob0: L.Index, nc: int, ob_const: int | None) -> list[L.Stmt]:
        return _blocked_const("ow", cols, Bw, lambda ow0, nw: micro(ob0, nc, ow0, nw, ob_const))

    extent = 0

    def oh_loop(inner: list[L.Stmt]) -> list[L.Stmt]:
        if st.split == "rows":
            return _for("oh", "r1", inner, start="r0")
        return _for("oh", rows, inner)

    def ob_loop(f: Callable[[L.Index, int], list[L.Stmt]]) -> list[L.Stmt]:
        nonlocal extent
        if split_ob:
            out, extent = _blocked_range("ob", Ob, Bc, f)
            return out
        return _blocked_const("ob", Ob, Bc, f)

    if uniform:
        if st.oc_outer:
            body = ob_loop(lambda ob0, nc: oh_loop(row(ob0, nc, None)))
        else:
            body = oh_loop(ob_loop(lambda ob0, nc: row(ob0, nc, None)))
    else:
        body = []
        for ob in range(Ob):
            body += oh_loop(row(L.IConst(ob), 1, ob))
    if st.split == "rows":
        extent = rows
    assert extent == st.parts, (extent, st.parts)
    b.kernel(b.fresh("conv_"), tuple(bufs), _for("i", "nt", body + after), extent=extent)


def _emit_winograd(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    """A 3x3 stride-1 conv by Winograd F(2x2, 3x3), a chunk of 2 x 2 output tiles (row-major
    over the image) at a time: the chunk's input tiles transformed (``B^T d B``, vectors of V
    input channels) into ``U``; 16 GEMMs ``M[xi] = U[xi] W'[xi]`` over the input channels
    (broadcast ``U`` x transformed weight vectors, the direct conv's micro-kernel); the output
    transform ``A^T m A`` + bias + activations into ``dst``."""
    op = st.op
    assert isinstance(op, Conv)
    V = b.V
    C, _, _ = st.in_shape
    O, OH, OW = st.out_shape
    TH, TW = -(-OH // 2), -(-OW // 2)
    T = TH * TW
    Cb, Ob = -(-C // V), -(-O // V)
    Cp, Op = Cb * V, Ob * V
    pt, pl = op.padding[0], op.padding[2]
    (Bc, Bw), (NT, regions) = st.block, st.chunk
    G = -(-T // NT)
    wname = b.weights(f"{st.name}.weight", 16 * Ob * Cp * V)
    b.specs.append(WinogradPack(f"{st.name}.weight", b.buffers[-1].offset, 16 * Ob * Cp * V, V, O, C, Cp))
    ubuf, mbuf = b.winograd_buffers
    bufs = [src.buf, dst.buf, wname, ubuf, mbuf]
    bname = _bias_buffer(b, st.name, op.bias, Ob, V, O)
    if bname is not None:
        bufs.append(bname)
    # (activations inline: the output transform is no register-blocked loop that they would spill)
    acts = st.acts
    region = "g" if regions > 1 else L.IConst(0)

    def u_at(xi: L.Index | int | str, t: L.Index | int | str, c: L.Index | int | str) -> L.Index:
        return iadd(imul(iadd(imul(iadd(imul(region, 16), xi), NT), t), Cp), c)

    def m_at(xi: L.Index | int | str, t: L.Index | int | str, c: L.Index | int | str) -> L.Index:
        return iadd(imul(iadd(imul(iadd(imul(region, 16), xi), NT), t), Op), c)

    def sub(x: L.Value, y: L.Value) -> L.Value:
        return L.Bin("sub", x, y)

    def add(x: L.Value, y: L.Value) -> L.Value:
        return L.Bin("add", x, y)

    t_abs = iadd(imul("g", NT), "t")
    tr, tw = L.IDivC(t_abs, TW), L.IDivC(t_abs, TW, mod=True)

    # input transform of tile ``t`` of the chunk, channel block ``cb``
    stm: list[L.Stmt] = []
    for a in range(4):
        for c in range(4):
            at = src.vat("i", "cb", iadd(imul(tr, 2), a - pt), iadd(imul(tw, 2), c - pl))
            stm.append(L.DeclLocal(f"d{a}{c}", V, L.Load(src.buf, at, V)))

    def d(a: int, c: int) -> L.Value:
        return L.Local(f"d{a}{c}")

    for c in range(4):  # t = B^T d, per column
        for a, v in enumerate((sub(d(0, c), d(2, c)), add(d(1, c), d(2, c)), sub(d(2, c), d(1, c)),
                               sub(d(1, c), d(3, c)))):
            stm.append(L.DeclLocal(f"t{a}{c}", V, v))

    def tt(a: int, c: int) -> L.Value:
        return L.Local(f"t{a}{c}")

    for a in range(4):  # U = t B
        for c, v in enumerate((sub(tt(a, 0), tt(a, 2)), add(tt(a, 1), tt(a, 2)), sub(tt(a, 2), tt(a, 1)),
                               sub(tt(a, 1), tt(a, 3)))):
            stm.append(L.Store(ubuf, u_at(a * 4 + c, "t", imul("cb", V)), v))
    transform = _for("t", "ntl", _for("cb", Cb, stm))

    def micro(ob0: L.Index, nc: int, t0: L.Index, nw: int) -> list[L.Stmt]:
        gemm: list[L.Stmt] = []
        for j in range(nw):
            for c in range(nc):
                gemm.append(L.DeclLocal(f"acc{j}_{c}", V, L.FConst(0.0, V)))
        inner = _fma_step(V, [L.Load(wname, imul(iadd(imul(iadd(imul("xi", Ob), ob0, c), Cp), "ic"), V), V)
                              for c in range(nc)],
                          [L.Load(ubuf, u_at("xi", iadd(t0, j), "ic")) for j in range(nw)])
        gemm += _for("ic", C, inner)
        for j in range(nw):
            for c in range(nc):
                gemm.append(L.Store(mbuf, m_at("xi", iadd(t0, j), imul(iadd(ob0, c), V)), L.Local(f"acc{j}_{c}")))
        return gemm

    gemm = _for("xi", 16, _blocked_const("ob", Ob, Bc, lambda ob0, nc: _blocked_runtime(
        "tb", "ntl", Bw, lambda t0, nw: micro(ob0, nc, t0, nw))))

    # output transform of tile ``t``, output-channel vector ``ob``
    out: list[L.Stmt] = []

    def m(xi: int) -> L.Value:
        return L.Load(mbuf, m_at(xi, "t", imul("ob", V)), V)

    for q in range(4):  # s = A^T m, per column
        out.append(L.DeclLocal(f"s0{q}", V, add(add(m(q), m(4 + q)), m(8 + q))))
        out.append(L.DeclLocal(f"s1{q}", V, sub(sub(m(4 + q), m(8 + q)), m(12 + q))))
    bias: L.Value = L.Load(bname, imul("ob", V), V) if bname else L.FConst(0.0, V)
    for r in range(2):  # y = s A, + bias, activations; rows / columns past the output skipped
        def sv(q: int) -> L.Value:
            return L.Local(f"s{r}{q}")

        ys = (add(add(sv(0), sv(1)), sv(2)), sub(sub(sv(1), sv(2)), sv(3)))
        row = iadd(imul(tr, 2), r)
        for q, y in enumerate(ys):
            col = iadd(imul(tw, 2), q)
            store = [L.Store(dst.buf, dst.vat("i", "ob", row, col), _epilogue(add(y, bias), acts))]
            # (a loop of 0 or 1 turns: the conditional store of a half-outside tile)
            guard: L.Index = L.IConst(1)
            if r and OH % 2:
                guard = imin(guard, isub(OH, row))
            if q and OW % 2:
                guard = imin(guard, isub(OW, col))
            out += store if guard == L.IConst(1) else _for(f"in{r}{q}", guard, store)
    outputs = _for("t", "ntl", _for("ob", Ob, out))

    chunk = [L.LetIndex("ntl", imin(NT, isub(T, imul("g", NT)))), *transform, *gemm, *outputs]
    body = _for("g", "r1", chunk, start="r0") if st.split else _for("g", G, chunk)
    assert st.parts == (G if st.split else 0)
    b.kernel(b.fresh("winograd_"), tuple(bufs), _for("i", "nt", body), extent=st.parts)


def _emit_dense(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    op = st.op
    assert isinstance(op, Dense)
    V = b.V
    O = op.out_features
    Ob = -(-O // V)
    K = src.layout.size
    wname = b.weights(f"{st.name}.weight", Ob * K * V)
    b.specs.append(DensePack(f"{st.name}.weight", b.buffers[-1].offset, Ob * K * V, V, O, src.layout))
    bufs = [src.buf, dst.buf, wname]
    bname = _bias_buffer(b, st.name, op.bias, Ob, V, O)
    if bname is not None:
        bufs.append(bname)
    Bo, Bn = st.block
    acts = st.epilogue
    after = _act_pass(b, st.after, dst, ("cb", *_range_of_blocks(Bo, Ob)) if st.split else None)

    def micro(ob0: L.Index, nc: int, i0: L.Index, ni: int) -> list[L.Stmt]:
        stm: list[L.Stmt] = []
        for c in range(nc):
            init: L.Value = L.Load(bname, imul(iadd(ob0, c), V), V) if bname else L.FConst(0.0, V)
            for j in range(ni):
                stm.append(L.DeclLocal(f"acc{j}_{c}", V, init))
        inner = _fma_step(V, [L.Load(wname, imul(iadd(imul(iadd(ob0, c), K), "k"), V), V) for c in range(nc)],
                          [L.Load(src.buf, iadd(src.image(iadd(i0, j)), "k")) for j in range(ni)])
        stm += _for("k", K, inner)
        for j in range(ni):
            for c in range(nc):
                stm.append(L.Store(dst.buf, dst.vat(iadd(i0, j), iadd(ob0, c), 0, 0),
                                   _epilogue(L.Local(f"acc{j}_{c}"), acts)))
        return stm

    def per_block(ob0: L.Index, nc: int) -> list[L.Stmt]:
        return _blocked_runtime("i", "nt", Bn, lambda i0, ni: micro(ob0, nc, i0, ni))

    extent = 0
    if st.split:
        body, extent = _blocked_range("ob", Ob, Bo, per_block)
    else:
        body = _blocked_const("ob", Ob, Bo, per_block)
    assert extent == st.parts
    if after:
        body += _for("i", "nt", after)
    b.kernel(b.fresh("dense_"), tuple(bufs), body, extent=extent)


def _emit_pool(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    op = st.op
    assert isinstance(op, Pool)
    V = b.V
    C, H, W = st.in_shape
    _, OH, OW = st.out_shape
    (KH, KW), (SH, SW), (PH, PW) = op.kernel, op.stride, op.padding
    Cb = -(-C // V)
    is_max = op.kind == "max"
    ih = iadd(imul("oh", SH), "kh", -PH)
    iw = iadd(imul("ow", SW), "kw", -PW)
    upd = L.Assign("acc", L.Bin("max" if is_max else "add", L.Local("acc"),
                                 L.Load(src.buf, src.vat("i", "cb", ih, iw), V)))
    stm: list[L.Stmt] = [L.DeclLocal("acc", V, L.FConst(-math.inf if is_max else 0.0, V))]
    stm += _for("kh", KH, _for("kw", KW, [upd], unroll=st.unroll_kw), unroll=KH * KW <= 9)
    res: L.Value = L.Local("acc")
    if not is_max:
        if op.count_pad:  # PyTorch's count_include_pad: the window clipped to the padded input
            dh = _window_cells("oh", OH, SH, KH, 0, H + 2 * PH)
            dw = _window_cells("ow", OW, SW, KW, 0, W + 2 * PW)
        else:  # the real cells only
            dh = _window_cells("oh", OH, SH, KH, PH, H)
            dw = _window_cells("ow", OW, SW, KW, PW, W)
        if isinstance(dh, L.IConst) and isinstance(dw, L.IConst):
            res = L.Bin("mul", res, L.FConst(1.0 / (dh.value * dw.value), V))
        else:
            res = L.Bin("div", res, L.ToFloat(imul(dh, dw), V))
    stm.append(L.Store(dst.buf, dst.vat("i", "cb", "oh", "ow"), _epilogue(res, st.acts)))
    if st.split:  # over output rows
        body = _for("cb", Cb, _for("oh", "r1", _for("ow", OW, stm), start="r0"))
    else:
        body = _for("cb", Cb, _for("oh", OH, _for("ow", OW, stm)))
    b.kernel(b.fresh("pool_"), (src.buf, dst.buf), _for("i", "nt", body), extent=st.parts)


def _window_cells(o: str, n_out: int, stride: int, kernel: int, pad: int, n: int) -> L.Index:
    """How many of window ``o``'s ``kernel`` cells, which start at ``o * stride - pad``, lie in
    ``[0, n)`` (a constant where every window is whole)."""
    if pad == 0 and (n_out - 1) * stride + kernel <= n:
        return L.IConst(kernel)
    cells = imin(kernel, isub(n + pad, imul(o, stride)))  # cut at the end
    if pad:
        cells = iadd(cells, imin(iadd(imul(o, stride), -pad), 0))  # and at the start
    return cells


def _emit_gap(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    V = b.V
    C, H, W = st.in_shape
    Cb = -(-C // V)
    stm: list[L.Stmt] = [L.DeclLocal("acc", V, L.FConst(0.0, V))]
    stm += _for("h", H, _for("w", W, [L.Assign("acc", L.Bin("add", L.Local("acc"),
                                                            L.Load(src.buf, src.vat("i", "cb", "h", "w"), V)))]))
    res = L.Bin("mul", L.Local("acc"), L.FConst(1.0 / (H * W), V))
    stm.append(L.Store(dst.buf, dst.vat("i", "cb", 0, 0), _epilogue(res, st.acts)))
    b.kernel(b.fresh("gap_"), (src.buf, dst.buf), _for("i", "nt", _for("cb", Cb, stm)))


def _emit_softmax(b: _Builder, st: Step, src: _Tensor, dst: _Tensor) -> None:
    V = b.V
    C, H, W = st.in_shape
    full, tail = divmod(C, V)
    ninf, zero = L.FConst(-math.inf, V), L.FConst(0.0, V)

    def x(cb) -> L.Value:
        return L.Load(src.buf, src.vat("i", cb, "h", "w"), V)

    stm: list[L.Stmt] = [L.DeclLocal("m", V, ninf)]
    stm += _for("cb", full, [L.Assign("m", L.Bin("max", L.Local("m"), x("cb")))])
    if tail:
        stm.append(L.Assign("m", L.Bin("max", L.Local("m"), L.SelectLanes(tail, x(full), ninf))))
    stm.append(L.DeclLocal("mb", V, L.Broadcast(L.Reduce("max", L.Local("m")), V) if V > 1
                           else L.Reduce("max", L.Local("m"))))
    stm.append(L.DeclLocal("s", V, zero))

    def expo(cb, masked: bool) -> list[L.Stmt]:
        e: L.Value = L.Unary("exp", L.Bin("sub", x(cb), L.Local("mb")))
        if masked:
            e = L.SelectLanes(tail, e, zero)
        return [L.DeclLocal("e", V, e),
                L.Store(dst.buf, dst.vat("i", cb, "h", "w"), L.Local("e")),
                L.Assign("s", L.Bin("add", L.Local("s"), L.Local("e")))]

    stm += _for("cb", full, expo("cb", False))
    if tail:
        stm += expo(full, True)
    inv = L.Bin("div", L.FConst(1.0), L.Reduce("add", L.Local("s")))
    stm.append(L.DeclLocal("inv", V, L.Broadcast(inv, V) if V > 1 else inv))
    scale = [L.Store(dst.buf, dst.vat("i", "cb2", "h", "w"),
                     _epilogue(L.Bin("mul", L.Load(dst.buf, dst.vat("i", "cb2", "h", "w"), V), L.Local("inv")),
                               st.acts))]
    stm += _for("cb2", -(-C // V), scale)
    b.kernel(b.fresh("softmax_"), (src.buf, dst.buf), _for("i", "nt", _for("h", H, _for("w", W, stm))))


# ----------------------------------------------------------------------------- driver




def lower(cm: ConcreteModel, schedule: Schedule) -> Lowered:
    """The loop program and weight-packing plan of ``cm`` under ``schedule``."""
    return emit(plan(cm, schedule))


def emit(p: Plan) -> Lowered:
    """The loop program and weight-packing plan that carry out ``p``."""
    V = p.vector_width
    T, T2 = p.batch_tile, p.dense_tile or p.batch_tile
    b = _Builder(V)
    if p.winograd_scratch != (0, 0):  # one U and one M for all Winograd convs (they run one after the other)
        b.winograd_buffers = (b.scratch("winograd.U", p.winograd_scratch[0], 0.0),
                              b.scratch("winograd.M", p.winograd_scratch[1], 0.0))
    x = _Tensor("input", p.input, True)
    b.buffers.append(L.Buffer("input", "input", p.input.size))
    y = _Tensor("output", p.output, True)
    b.buffers.append(L.Buffer("output", "output", p.output.size))

    # Dense tail (module docstring): the kernel writing its input (the boundary) addresses that
    # buffer like the caller's arrays, at the image offset the entry passes as its n0; it must not
    # read the caller's input itself (that needs the absolute n0).
    bounds = [0, 0]  # stage kernels [bounds[0], bounds[1]) write the boundary; the tail follows
    cur = x
    for st in p.steps:
        b.label = st.label
        if st.kind == "unpack":
            _emit_unpack(b, st, cur, y)
            break
        lay = st.out
        assert lay is not None
        boundary = st.level == "boundary"
        buf = b.scratch(st.buffer, (T2 if st.level != "tile" else T) * lay.size, st.fill)
        dst = _Tensor(buf, lay, boundary)
        if boundary:
            bounds[0] = len(b.stages)
        match st.kind:
            case "pack":
                _emit_pack(b, st, cur, dst)
            case "conv" if st.algorithm == "winograd":
                _emit_winograd(b, st, cur, dst)
            case "conv":
                _emit_conv(b, st, cur, dst)
            case "dense":
                _emit_dense(b, st, cur, dst)
            case "pool":
                _emit_pool(b, st, cur, dst)
            case "gap":
                _emit_gap(b, st, cur, dst)
            case "flatten":
                _emit_flatten(b, st, cur, dst)
            case "softmax":
                _emit_softmax(b, st, cur, dst)
            case "unpack":
                raise AssertionError
            case _:
                assert_never(st.kind)
        if boundary:
            bounds[1] = len(b.stages)
            dst = _Tensor(buf, lay, False)  # the tail reads it from image 0
        cur = dst
    tail = p.dense_tile > 0

    profile_offset = -1
    if p.profile:
        b.scratch(L.PROFILE_BUFFER, 2 * len(b.stages), 0.0)  # one int64 per stage
        profile_offset = b.buffers[-1].offset

    def calls(lo: int, hi: int, n0: L.Index, nt: L.Index) -> list[L.Stmt]:
        return [L.Call(kn, (n0, nt, *((L.IConst(0), L.IConst(e)) if e else ())), k if p.profile else -1)
                for k, (kn, e) in enumerate(zip(b.stages, b.extents)) if lo <= k < hi]

    S = len(b.stages)
    if not tail:
        entry: list[L.Stmt] = [L.For("n0", L.IConst(0), L.IVar("n"), T, (
            L.LetIndex("nt", imin(T, isub("n", "n0"))), *calls(0, S, L.IVar("n0"), L.IVar("nt"))))]
    else:
        end = iadd("N0", "NT")
        entry = [L.For("N0", L.IConst(0), L.IVar("n"), T2, (
            L.LetIndex("NT", imin(T2, isub("n", "N0"))),
            L.For("n0", L.IVar("N0"), end, T, (
                L.LetIndex("nt", imin(T, isub(end, "n0"))),
                *calls(0, bounds[0], L.IVar("n0"), L.IVar("nt")),
                *calls(bounds[0], bounds[1], isub("n0", "N0"), L.IVar("nt")))),
            *calls(bounds[1], S, L.IVar("N0"), L.IVar("NT"))))]
    prog = L.Program(p.model, V, tuple(b.buffers), tuple(b.kernels), tuple(entry),
                     max(b.wsize, ALIGN), max(b.ssize, ALIGN),
                     tuple(zip(b.stages, b.extents)) if p.split else ())
    verify(prog)
    return Lowered(prog, PackingPlan(max(b.wsize, ALIGN), tuple(b.specs)), p.input_shape, p.output_shape, T,
                   tuple(b.labels), profile_offset, p.dense_tile, p)
