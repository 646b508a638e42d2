"""Lowering: a concrete model plus a schedule becomes a loop-IR program and a weight-packing plan.

Precondition: ``cm`` is a :class:`~convdsl.core.model.ConcreteModel` bound from a
model the checker accepted (every size but the batch known, shapes
consistent).  ``lower`` never reports user errors; it asserts.

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
from dataclasses import dataclass, field
from typing import Callable, Literal, Union, assert_never

import numpy as np

from ..core.model import Activation, ConcreteModel, Conv, Dense, Flatten, GlobalAvgPool, Op, Pool, Softmax
from . import loopir as L
from .loopir import iadd, imin, imul, isub, ix
from .schedule import Schedule

FUSED_ACCS = 8  # accumulators of a conv + pool micro-kernel (see _emit_conv)
ALIGN = 16  # floats (64 bytes) between arena regions

# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True, slots=True)
class Layout:
    """Per-image memory layout of a ``C x H x W`` tensor.

    ``blocked``: ``[ceil(C/V)][H + t + b][W + l + r][V]``; else planar ``[C][H + t + b][W + l + r]``.
    ``halo`` = ``(t, b, l, r)``; coordinates passed to :meth:`index` are logical (halo cells are
    negative or past the end)."""

    C: int
    H: int
    W: int
    blocked: bool
    V: int
    halo: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def Cb(self) -> int:
        return -(-self.C // self.V) if self.blocked else self.C

    @property
    def Hp(self) -> int:
        return self.H + self.halo[0] + self.halo[1]

    @property
    def Wp(self) -> int:
        return self.W + self.halo[2] + self.halo[3]

    @property
    def size(self) -> int:
        lanes = self.V if self.blocked else 1
        return self.Cb * self.Hp * self.Wp * lanes

    def index(self, c: L.Index | int, h: L.Index | int, w: L.Index | int) -> L.Index:
        """Element offset (within one image) of channel ``c`` at logical ``(h, w)``."""
        hh, ww = iadd(h, self.halo[0]), iadd(w, self.halo[2])
        if not self.blocked or self.V == 1:
            return iadd(imul(iadd(imul(c, self.Hp), hh), self.Wp), ww)
        c = ix(c)
        if isinstance(c, L.IConst):
            cb, cl = L.IConst(c.value // self.V), L.IConst(c.value % self.V)
        else:
            cb, cl = L.IDivC(c, self.V), L.IDivC(c, self.V, mod=True)
        return iadd(self.vindex(cb, h, w), cl)

    def vindex(self, cb: L.Index | int, h: L.Index | int, w: L.Index | int) -> L.Index:
        """Offset of the ``V``-lane vector of channel block ``cb`` at logical ``(h, w)`` (blocked)."""
        assert self.blocked
        hh, ww = iadd(h, self.halo[0]), iadd(w, self.halo[2])
        return imul(iadd(imul(iadd(imul(cb, self.Hp), hh), self.Wp), ww), self.V)

    def features_in_memory_order(self) -> np.ndarray:
        """For each float of one image (no halo), the flattened feature ``c*H*W + h*W + w`` it
        holds, or -1 for padding lanes: what a dense layer reading this buffer linearly sees."""
        assert self.halo == (0, 0, 0, 0)
        if not self.blocked or self.V == 1:
            return np.arange(self.C * self.H * self.W)
        cb, h, w, cl = np.meshgrid(np.arange(self.Cb), np.arange(self.H), np.arange(self.W), np.arange(self.V),
                                   indexing="ij")
        c = cb * self.V + cl
        f = c * self.H * self.W + h * self.W + w
        return np.where(c < self.C, f, -1).reshape(-1)


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
WINO_SLICE_FLOATS = 32 << 10  # one transformed-input slice of a chunk: 128 KiB, a quarter of an L2
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


# ----------------------------------------------------------------------------- stages


Act = Literal["relu", "sigmoid", "tanh"]


@dataclass(slots=True)
class _Stage:
    kind: Literal["pack", "conv", "dense", "pool", "gap", "flatten", "softmax", "unpack"]
    name: str
    op: Op | None
    in_shape: tuple[int, int, int]  # physical C, H, W read
    out_shape: tuple[int, int, int]
    acts: list[Act] = field(default_factory=list)
    winograd: bool = False  # a 3x3 conv computed by Winograd F(2x2, 3x3) (set by ``lower``)


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    assert len(shape) == 1, shape
    return (shape[0], 1, 1)


def _stages(cm: ConcreteModel) -> list[_Stage]:
    cur = _chw(cm.input_shape)
    stages = [_Stage("pack", "input", None, cur, cur)]
    flat_view = False  # current tensor is a flatten of ``cur``
    for layer, in_shape, out_shape, op in cm.layers:
        match op:
            case Activation(kind=k):
                stages[-1].acts.append(k)
            case Flatten():
                flat_view = cur[1] * cur[2] > 1
            case Softmax():
                if flat_view:
                    f = cur[0] * cur[1] * cur[2]
                    stages.append(_Stage("flatten", f"{layer.name}.flat", op, cur, (f, 1, 1)))
                    cur, flat_view = (f, 1, 1), False
                stages.append(_Stage("softmax", layer.name, op, cur, cur))
            case Dense():
                out = _chw(out_shape)
                stages.append(_Stage("dense", layer.name, op, cur, out))
                cur, flat_view = out, False
            case Conv():
                assert not flat_view
                out = _chw(out_shape)
                stages.append(_Stage("conv", layer.name, op, cur, out))
                cur = out
            case Pool():
                out = _chw(out_shape)
                stages.append(_Stage("pool", layer.name, op, cur, out))
                cur = out
            case GlobalAvgPool():
                out = (cur[0], 1, 1)
                stages.append(_Stage("gap", layer.name, op, cur, out))
                cur = out
            case _:
                assert_never(op)
    stages.append(_Stage("unpack", "output", None, cur, cur))
    return stages


def _pool_extra(n: int, k: int, s: int, p: int, out: int) -> int:
    """Cells a ceil-mode window reaches past the padded input (needs halo too)."""
    return max(0, (out - 1) * s + k - (n + 2 * p))


def _input_requirements(st: _Stage) -> tuple[bool, tuple[int, int, int, int], float]:
    """(may be planar, halo, halo fill) that stage ``st`` needs of its input buffer."""
    match st.kind:
        case "conv":
            op = st.op
            assert isinstance(op, Conv)
            if st.winograd:
                return False, _winograd_halo(st), 0.0
            return True, op.padding, 0.0
        case "dense":
            return True, (0, 0, 0, 0), 0.0
        case "pool":
            op = st.op
            assert isinstance(op, Pool)
            (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
            _, H, W = st.in_shape
            _, OH, OW = st.out_shape
            eh, ew = _pool_extra(H, kh, sh, ph, OH), _pool_extra(W, kw, sw, pw, OW)
            return False, (ph, ph + eh, pw, pw + ew), (-math.inf if op.kind == "max" else 0.0)
        case "unpack" | "gap" | "flatten" | "softmax":
            return False, (0, 0, 0, 0), 0.0
        case "pack":
            raise AssertionError("pack consumes nothing internal")
        case _:
            assert_never(st.kind)


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

    def __init__(self, sched: Schedule) -> None:
        self.s = sched
        self.V = sched.vector_width
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
        self.split = False  # emit range-split stage kernels (intra-image threading)
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


def _epilogue(v: L.Value, acts: list[Act]) -> L.Value:
    for a in acts:
        v = L.Unary(a, v)
    return v


def _split_epilogue(b: _Builder, acts: list[Act], dst: "_Tensor",
                    rng: tuple[str, L.Index, L.Index] | None = None) -> tuple[list[Act], list[L.Stmt]]:
    """Activations for a register-blocked micro-kernel's epilogue, and the statements that apply
    the rest afterwards.  ``exp``-based activations need a dozen vector constants; inlined next to
    a block of accumulators they force spills in the hot loop, so they run in a separate
    (non-inlined) pass over the image's output, while it is still in L1."""
    if all(a == "relu" for a in acts):
        return acts, []
    lay = dst.layout
    name = b.fresh("act_")
    upd = [L.Store(dst.buf, dst.vat("i", "cb", "h", "w"),
                   _epilogue(L.Load(dst.buf, dst.vat("i", "cb", "h", "w"), b.V), acts))]
    if rng is None:
        b.kernel(name, (dst.buf,), _for("cb", lay.Cb, _for("h", lay.H, _for("w", lay.W, upd))),
                 params=("n0", "i"), stage=False)
        return [], [L.Call(name, (L.IVar("n0"), L.IVar("i")))]
    # only the part [a0, a1) of the channel blocks (``cb``) or rows (``h``) the caller computed
    dim, a0, a1 = rng
    if dim == "cb":
        body = _for("cb", "a1", _for("h", lay.H, _for("w", lay.W, upd)), start="a0")
    else:
        body = _for("cb", lay.Cb, _for("h", "a1", _for("w", lay.W, upd), start="a0"))
    b.kernel(name, (dst.buf,), body, params=("n0", "i", "a0", "a1"), stage=False)
    return [], [L.Call(name, (L.IVar("n0"), L.IVar("i"), a0, a1))]


def _for(var: str, stop: L.Index | int, body: list[L.Stmt], start: L.Index | int = 0, step: int = 1,
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


def _split(extent: int, max_block: int) -> int:
    """Block size <= max_block that covers ``extent`` in the fewest, most even blocks."""
    max_block = max(1, min(max_block, extent))
    nblocks = -(-extent // max_block)
    return -(-extent // nblocks)


def _fma_step(V: int, weights: list[L.Value], inputs: list[L.Value]) -> list[L.Stmt]:
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


def _emit_pack(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
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


def _emit_unpack(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
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


def _emit_flatten(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
    C, H, W = st.in_shape
    f = iadd(imul(iadd(imul("c", H), "h"), W), "w")
    copy = [L.Store(dst.buf, iadd(dst.image("i"), dst.layout.index(f, 0, 0)),
                    _epilogue(L.Load(src.buf, src.at("i", "c", "h", "w")), st.acts))]
    body = _for("c", C, _for("h", H, _for("w", W, copy)))
    b.kernel(b.fresh("flatten_"), (src.buf, dst.buf), _for("i", "nt", body))


def _fusable_pool(b: _Builder, conv: _Stage, pool: _Stage) -> bool:
    """Whether ``pool`` runs in the epilogue of ``conv``'s micro-kernel: non-overlapping windows
    (kernel = stride), no padding, no window past the conv output (floor mode), so each pooled
    value is a complete set of the micro-kernel's own accumulators; an average pool only after
    cheap activations (each conv output's activation is taken in registers, before the mean); and
    only where the fused register block is no smaller than the plain one (measured: a smaller
    block costs more than the pooling pass it saves)."""
    op = pool.op
    assert isinstance(op, Pool)
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    if conv.winograd:
        return False
    _, OH, OW = conv.out_shape
    _, PH, PW = pool.out_shape
    if not ((kh, kw) == (sh, sw) and (ph, pw) == (0, 0) and PH * kh <= OH and PW * kw <= OW and kh * kw <= 9):
        return False
    if op.kind == "avg" and not all(a == "relu" for a in conv.acts):
        return False
    return b.s.fuse_pool == "always" or _conv_block(b, conv, kh * kw)[2] >= _conv_block(b, conv, 1)[2]


def _conv_block(b: _Builder, st: _Stage, win: int) -> tuple[int, int, int]:
    """(output-channel vectors, output positions, accumulators) of the conv micro-kernel whose
    output positions are pooling windows of ``win`` conv outputs (``win = 1``: no pooling)."""
    op = st.op
    assert isinstance(op, Conv)
    V, s = b.V, b.s
    Ob = -(-st.out_shape[0] // V)
    regs = s.vector_registers - 1 if V > 1 else 64
    Bc = min(s.oc_block, Ob) if op.groups == 1 else 1
    if win == 1:
        # accumulators + weight vectors + two registers for input broadcasts: with one, the
        # 2 x 6 block of the 3x3 / 5x5 convs spilled in the hot loop (half speed on VGG / AlexNet)
        Bw = min(s.ow_block, max(1, (regs - Bc - 2) // Bc))
    else:
        # with the kw loop unrolled LLVM keeps the input broadcasts shared by neighbouring
        # windows live across kw steps: more than ~8 accumulators then spill (measured)
        if win * 2 > FUSED_ACCS:
            Bc = 1
        Bw = min(s.ow_block, max(1, FUSED_ACCS // (Bc * win)))
    return Bc, Bw, Bc * Bw * win


def _emit_conv(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor, pool: _Stage | None = None) -> None:
    """A convolution; with ``pool`` (see :func:`_fusable_pool`) the pooling too, in registers:
    ``dst`` is then the pool's output and the conv output never reaches memory."""
    op = st.op
    assert isinstance(op, Conv)
    V, s = b.V, b.s
    C, H, W = st.in_shape
    O, OH, OW = st.out_shape
    KH, KW = op.kernel
    SH, SW = op.stride
    DH, DW = op.dilation
    g = op.groups
    Cg, Og = C // g, O // g
    Ob = -(-O // V)
    # input-channel range of every output-channel vector block
    lo, ln = [], []
    for ob in range(Ob):
        g0 = (ob * V) // Og
        g1 = (min(ob * V + V, O) - 1) // Og
        lo.append(g0 * Cg)
        ln.append((g1 - g0 + 1) * Cg)
    uniform = len(set(ln)) == 1 and all(lo[i] - lo[0] == i * (lo[1] - lo[0] if Ob > 1 else 0) for i in range(Ob))
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

    if pool is None:
        epi = st.acts
        PKH = PKW = 1  # each output position is its own "window"
        rows, cols = OH, OW
        pre: list[Act] = []
    else:
        pop = pool.op
        assert isinstance(pop, Pool)
        PKH, PKW = pop.kernel
        _, rows, cols = pool.out_shape
        if pop.kind == "max":
            # every activation is non-decreasing: act(max(x)) = max(act(x)), one per window
            pre = []
            epi = st.acts + pool.acts
        else:
            pre = st.acts  # relu only (_fusable_pool): per conv output, in registers
            epi = pool.acts
    win = PKH * PKW  # accumulators per output position (per channel vector)
    Bc, Bw, _ = _conv_block(b, st, win)
    Bw = _split(cols, Bw)
    unroll_kw = s.unroll_kernel_w and KW <= 7
    step_lo = (lo[1] - lo[0]) if Ob > 1 else 0
    wblock = (ln[0] * KH * KW * V) if uniform else 0
    # intra-image split: over output-channel blocks where there are at least as many as rows
    # (uniform packing only), else over (pooled) output rows
    split_ob = b.split and uniform and -(-Ob // Bc) >= rows
    rng: tuple[str, L.Index, L.Index] | None = None
    if b.split:
        rng = ("cb", *_range_of_blocks(min(Bc, Ob), Ob)) if split_ob else ("h", L.IVar("r0"), L.IVar("r1"))
    acts, after = _split_epilogue(b, epi, dst, rng)

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
        if b.split and not split_ob:
            return _for("oh", "r1", inner, start="r0")
        return _for("oh", rows, inner)

    def ob_loop(f: Callable[[L.Index, int], list[L.Stmt]]) -> list[L.Stmt]:
        nonlocal extent
        if split_ob:
            out, extent = _blocked_range("ob", Ob, Bc, f)
            return out
        return _blocked_const("ob", Ob, Bc, f)

    if uniform:
        if s.oc_outer:
            body = ob_loop(lambda ob0, nc: oh_loop(row(ob0, nc, None)))
        else:
            body = oh_loop(ob_loop(lambda ob0, nc: row(ob0, nc, None)))
    else:
        body = []
        for ob in range(Ob):
            body += oh_loop(row(L.IConst(ob), 1, ob))
    if b.split and not split_ob:
        extent = rows
    b.kernel(b.fresh("conv_"), tuple(bufs), _for("i", "nt", body + after), extent=extent)


def _winograd_ok(st: _Stage, s: Schedule) -> bool:
    """A 3x3, stride-1, undilated, ungrouped conv with enough channels that the transforms (about
    4 vector adds per input and output value) are small next to the saved multiplies; the scalar
    schedule keeps direct convolution."""
    op = st.op
    if st.kind != "conv" or not s.winograd or s.vector_width == 1:
        return False
    assert isinstance(op, Conv)
    C, O = st.in_shape[0], st.out_shape[0]
    # (measured on 16-image batches: 16 -> 32 channels 1.18x faster, 16 -> 16 0.91x, 64 -> 64 1.4-1.6x)
    return (op.kernel == (3, 3) and op.stride == (1, 1) and op.dilation == (1, 1) and op.groups == 1
            and min(C, O) >= s.winograd_min_channels and C * O >= 2 * s.winograd_min_channels ** 2
            and min(st.out_shape[1:]) >= 2)


def _winograd_halo(st: _Stage) -> tuple[int, int, int, int]:
    """The conv's padding, plus a row / column where an odd output size leaves the last tile half
    outside (its input is read, the outputs it would make are not stored)."""
    op = st.op
    assert isinstance(op, Conv)
    t, bt, l, r = op.padding
    _, H, W = st.in_shape
    _, OH, OW = st.out_shape
    return t, max(bt, 2 * (-(-OH // 2)) + 2 - t - H), l, max(r, 2 * (-(-OW // 2)) + 2 - l - W)


def _winograd_plan(b: _Builder, st: _Stage) -> tuple[int, int, int, int]:
    """(output-channel vectors, tiles per micro-kernel, tiles per chunk, chunk regions) of the
    Winograd conv ``st``.

    The register block is the direct conv's (accumulators + weight vectors + two broadcast
    registers).  A chunk of tiles is sized so that one of its 16 transformed-input slices
    (``tiles x C``) stays in L2 while every output-channel block reads it; ``U`` and ``M`` hold
    one chunk, or under an intra-image split one region per chunk (the parts share scratch)."""
    V = b.V
    Bc, Bw, _ = _conv_block(b, st, 1)
    T = -(-st.out_shape[1] // 2) * -(-st.out_shape[2] // 2)
    Cp = -(-st.in_shape[0] // V) * V
    nt = max(Bw, WINO_SLICE_FLOATS // Cp // Bw * Bw)
    if b.split:  # several chunks per thread, so the parts balance
        nt = min(nt, max(Bw, -(-T // 8 // Bw) * Bw))
    nt = min(nt, T)
    return Bc, min(Bw, nt), nt, -(-T // nt) if b.split else 1


def _winograd_scratch(b: _Builder, st: _Stage) -> tuple[int, int]:
    """Floats of the transformed-input buffer ``U`` ``[region][16][tile][C_pad]`` and of the GEMM
    result ``M`` ``[region][16][tile][O_pad]`` of ``st`` (see :func:`_winograd_plan`)."""
    V = b.V
    _, _, nt, regions = _winograd_plan(b, st)
    Cp = -(-st.in_shape[0] // V) * V
    Op = -(-st.out_shape[0] // V) * V
    return regions * 16 * nt * Cp, regions * 16 * nt * Op


def _emit_winograd(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
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
    Bc, Bw, NT, regions = _winograd_plan(b, st)
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

    def u_at(xi: L.Index | int, t: L.Index | int, c: L.Index | int) -> L.Index:
        return iadd(imul(iadd(imul(iadd(imul(region, 16), xi), NT), t), Cp), c)

    def m_at(xi: L.Index | int, t: L.Index | int, c: L.Index | int) -> L.Index:
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
    body = _for("g", "r1", chunk, start="r0") if b.split else _for("g", G, chunk)
    b.kernel(b.fresh("winograd_"), tuple(bufs), _for("i", "nt", body), extent=G if b.split else 0)


def _emit_dense(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
    op = st.op
    assert isinstance(op, Dense)
    V, s = b.V, b.s
    O = op.out_features
    Ob = -(-O // V)
    K = src.layout.size
    wname = b.weights(f"{st.name}.weight", Ob * K * V)
    b.specs.append(DensePack(f"{st.name}.weight", b.buffers[-1].offset, Ob * K * V, V, O, src.layout))
    bufs = [src.buf, dst.buf, wname]
    bname = _bias_buffer(b, st.name, op.bias, Ob, V, O)
    if bname is not None:
        bufs.append(bname)
    regs = s.vector_registers - 1 if V > 1 else 64
    Bo = min(s.dense_out_block, Ob)
    acts, after = _split_epilogue(b, st.acts, dst, ("cb", *_range_of_blocks(Bo, Ob)) if b.split else None)
    Bn = max(1, min(s.dense_batch_block, (regs - Bo - 1) // Bo, s.batch_tile))

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
    if b.split:
        body, extent = _blocked_range("ob", Ob, Bo, per_block)
    else:
        body = _blocked_const("ob", Ob, Bo, per_block)
    if after:
        body += _for("i", "nt", after)
    b.kernel(b.fresh("dense_"), tuple(bufs), body, extent=extent)


def _emit_pool(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
    op = st.op
    assert isinstance(op, Pool)
    V, s = b.V, b.s
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
    stm += _for("kh", KH, _for("kw", KW, [upd], unroll=s.unroll_kernel_w and KW <= 7), unroll=KH * KW <= 9)
    res: L.Value = L.Local("acc")
    if not is_max:
        # PyTorch divides by the window clipped to the padded input (count_include_pad)
        dh: L.Index = L.IConst(KH)
        dw: L.Index = L.IConst(KW)
        if (OH - 1) * SH + KH > H + 2 * PH:
            dh = imin(KH, isub(H + 2 * PH, imul("oh", SH)))
        if (OW - 1) * SW + KW > W + 2 * PW:
            dw = imin(KW, isub(W + 2 * PW, imul("ow", SW)))
        if isinstance(dh, L.IConst) and isinstance(dw, L.IConst):
            res = L.Bin("mul", res, L.FConst(1.0 / (dh.value * dw.value), V))
        else:
            res = L.Bin("div", res, L.ToFloat(imul(dh, dw), V))
    stm.append(L.Store(dst.buf, dst.vat("i", "cb", "oh", "ow"), _epilogue(res, st.acts)))
    if b.split:  # split over output rows
        body = _for("cb", Cb, _for("oh", "r1", _for("ow", OW, stm), start="r0"))
    else:
        body = _for("cb", Cb, _for("oh", OH, _for("ow", OW, stm)))
    b.kernel(b.fresh("pool_"), (src.buf, dst.buf), _for("i", "nt", body), extent=OH if b.split else 0)


def _emit_gap(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
    V = b.V
    C, H, W = st.in_shape
    Cb = -(-C // V)
    stm: list[L.Stmt] = [L.DeclLocal("acc", V, L.FConst(0.0, V))]
    stm += _for("h", H, _for("w", W, [L.Assign("acc", L.Bin("add", L.Local("acc"),
                                                            L.Load(src.buf, src.vat("i", "cb", "h", "w"), V)))]))
    res = L.Bin("mul", L.Local("acc"), L.FConst(1.0 / (H * W), V))
    stm.append(L.Store(dst.buf, dst.vat("i", "cb", 0, 0), _epilogue(res, st.acts)))
    b.kernel(b.fresh("gap_"), (src.buf, dst.buf), _for("i", "nt", _for("cb", Cb, stm)))


def _emit_softmax(b: _Builder, st: _Stage, src: _Tensor, dst: _Tensor) -> None:
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


def _macs_per_image(stages: list[_Stage]) -> int:
    """Multiply-adds of the conv and dense stages, per image."""
    total = 0
    for st in stages:
        if st.kind == "conv":
            assert isinstance(st.op, Conv)
            O, OH, OW = st.out_shape
            total += O * OH * OW * (st.in_shape[0] // st.op.groups) * st.op.kernel[0] * st.op.kernel[1]
        elif st.kind == "dense":
            total += st.out_shape[0] * st.in_shape[0] * st.in_shape[1] * st.in_shape[2]
    return total


TAIL_KINDS = ("dense", "flatten", "softmax", "unpack")


def _dense_tail(stages: list[_Stage], schedule: Schedule) -> int:
    """Index of the first stage of the dense tail (a suffix of dense, flatten and softmax stages
    starting with a dense one) worth running on ``dense_tile`` images, or 0 for none."""
    k = len(stages)
    while k > 1 and stages[k - 1].kind in TAIL_KINDS:
        k -= 1
    while k < len(stages) and stages[k].kind != "dense":
        k += 1
    if k >= len(stages) or schedule.dense_tile <= schedule.batch_tile:
        return 0
    weights = sum(math.prod(st.in_shape) * st.out_shape[0] for st in stages[k:] if st.kind == "dense")
    return k if 4 * weights >= schedule.dense_tail_bytes else 0


def lower(cm: ConcreteModel, schedule: Schedule) -> Lowered:
    """The loop program and weight-packing plan of ``cm`` under ``schedule``."""
    V = schedule.vector_width
    T = schedule.batch_tile
    stages = _stages(cm)
    for st in stages:
        st.winograd = _winograd_ok(st, schedule)
    # Drop the input copy when the first consumer reads the caller's array as it is.
    first = stages[1]
    skip_pack = (not stages[0].acts and first.kind in ("conv", "dense")
                 and _input_requirements(first)[:2] == (True, (0, 0, 0, 0)))
    b = _Builder(schedule)
    b.split = schedule.split_macs > 0 and _macs_per_image(stages) >= schedule.split_macs
    wino = [_winograd_scratch(b, st) for st in stages if st.winograd]
    if wino:  # one U and one M for all Winograd convs (they run one after the other)
        b.winograd_buffers = (b.scratch("winograd.U", max(u for u, _ in wino), 0.0),
                              b.scratch("winograd.M", max(m for _, m in wino), 0.0))
    in_lay = Layout(*stages[0].in_shape, blocked=False, V=V)
    x = _Tensor("input", in_lay, True)
    b.buffers.append(L.Buffer("input", "input", in_lay.size))
    out_chw = stages[-1].in_shape
    out_lay = Layout(*out_chw, blocked=False, V=V)
    y = _Tensor("output", out_lay, True)
    b.buffers.append(L.Buffer("output", "output", out_lay.size))

    # Dense tail (module docstring): the kernel writing its input (the boundary) addresses that
    # buffer like the caller's arrays, at the image offset the entry passes as its n0; it must not
    # read the caller's input itself (that needs the absolute n0).
    tail = _dense_tail(stages, schedule)
    T2 = -(-schedule.dense_tile // T) * T if tail else T
    if tail == 1:  # dense layers right after the input: no activations to keep small, one tile level
        T, tail = T2, 0
    bounds = [0, 0]  # stage kernels [bounds[0], bounds[1]) write the boundary; the tail follows

    cur = x
    k = 1 if skip_pack else 0
    while k < len(stages):
        st = stages[k]
        b.label = {"pack": "input", "unpack": "output"}.get(st.kind, st.name)
        if st.kind == "unpack":
            _emit_unpack(b, st, cur, y)
            break
        fused: _Stage | None = None
        if (schedule.fuse_pool != "off" and st.kind == "conv" and stages[k + 1].kind == "pool"
                and _fusable_pool(b, st, stages[k + 1])):
            fused = stages[k + 1]  # conv + pool in one kernel: the pool's output is the result
            b.label = f"{st.name}+{fused.name}"
            k += 1
        result = fused or st  # the stage whose output this kernel writes
        k += 1
        planar_ok, halo, fill = _input_requirements(stages[k])
        blocked = not (planar_ok and st.kind == "pack")
        lay = Layout(*result.out_shape, blocked=blocked, V=V, halo=halo)
        boundary = tail and k == tail
        if boundary and cur.user:
            tail, T2, boundary = 0, T, False
        in_tail = tail and k > tail
        buf = b.scratch(f"{result.name}.out" if st.kind != "pack" else "input.packed",
                        (T2 if boundary or in_tail else T) * lay.size, fill)
        dst = _Tensor(buf, lay, bool(boundary))
        if boundary:
            bounds[0] = len(b.stages)
        match st.kind:
            case "pack":
                _emit_pack(b, st, cur, dst)
            case "conv" if st.winograd:
                _emit_winograd(b, st, cur, dst)
            case "conv":
                _emit_conv(b, st, cur, dst, fused)
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

    profile_offset = -1
    if schedule.profile:
        b.scratch(L.PROFILE_BUFFER, 2 * len(b.stages), 0.0)  # one int64 per stage
        profile_offset = b.buffers[-1].offset

    def calls(lo: int, hi: int, n0: L.Index, nt: L.Index) -> list[L.Stmt]:
        return [L.Call(kn, (n0, nt, *((L.IConst(0), L.IConst(e)) if e else ())), k if schedule.profile else -1)
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
    prog = L.Program(cm.model.name, V, tuple(b.buffers), tuple(b.kernels), tuple(entry),
                     max(b.wsize, ALIGN), max(b.ssize, ALIGN),
                     tuple(zip(b.stages, b.extents)) if b.split else ())
    L.verify(prog)
    return Lowered(prog, PackingPlan(max(b.wsize, ALIGN), tuple(b.specs)), tuple(cm.input_shape),
                   tuple(cm.output_shape), T, tuple(b.labels), profile_offset, T2 if tail else 0)
