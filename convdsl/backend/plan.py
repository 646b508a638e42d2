"""Planning: every per-layer lowering decision, made once and recorded as data.

``plan(cm, schedule)`` turns a concrete model and a schedule into a
:class:`Plan`: the network as a list of :class:`Step` (one kernel each) with,
for each, the algorithm (direct convolution, Winograd, GEMM, ...), the pool
and activations fused into its epilogue, its register block, the layout and
halo of the buffer it writes, the axis an intra-image split cuts, and the tile
level it runs at.  The emitters in :mod:`.lower` read only the plan; nothing
here builds code, so the decisions are tested without LLVM, and
``convdsl compile --emit plan`` prints them (:func:`format_plan`).

Precondition: as :func:`.lower.lower`, a model the checker accepted, bound to
concrete sizes (every size but the batch known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, assert_never

import numpy as np

from ..core.model import Activation, ConcreteModel, Conv, Dense, Op, Pool
from ..core.ops import definition
from . import loopir as L
from .loopir import iadd, imul, ix
from .schedule import Schedule

FUSED_ACCS = 8  # accumulators of a conv + pool micro-kernel (see lower._emit_conv)
WINO_SLICE_FLOATS = 32 << 10  # one transformed-input slice of a chunk: 128 KiB, a quarter of an L2

Act = Literal["relu", "sigmoid", "tanh"]
Kind = Literal["pack", "conv", "dense", "pool", "gap", "flatten", "softmax", "unpack"]
Algorithm = Literal["copy", "direct", "winograd", "gemm", "window", "mean", "softmax"]
Split = Literal["", "channel blocks", "rows", "tile chunks", "output blocks"]
Level = Literal["tile", "boundary", "dense"]


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
        cb: L.Index
        cl: L.Index
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

    def describe(self) -> str:
        shape = f"[{self.Cb}][{self.Hp}][{self.Wp}][{self.V}]" if self.blocked else f"[{self.C}][{self.Hp}][{self.Wp}]"
        halo = f" halo {self.halo}" if any(self.halo) else ""
        return f"{'blocked' if self.blocked else 'planar'} {shape}{halo}"


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Step:
    """One kernel of the network and every decision about it."""

    kind: Kind
    name: str  # the layer ("input" / "output" for the copies in and out)
    op: Op | None
    in_shape: tuple[int, int, int]  # physical C, H, W read
    out_shape: tuple[int, int, int]  # of the layer itself (a fused pool's input)
    acts: tuple[Act, ...]  # activations that follow the layer
    label: str = ""  # the stage name in profiles ("conv1+maxpool1" when a pool is fused)
    algorithm: Algorithm = "copy"
    pool: "Step | None" = None  # a pool computed in this conv's epilogue, in registers
    epilogue: tuple[Act, ...] = ()  # activations applied to the accumulators, in registers
    after: tuple[Act, ...] = ()  # activations applied by a separate pass over the output
    block: tuple[int, ...] = ()  # conv, winograd: (channel vectors, positions); dense: (vectors, images)
    chunk: tuple[int, int] = (0, 0)  # winograd: (tiles per chunk, scratch regions)
    unroll_kw: bool = False  # the kernel-width loop of a conv or pool window fully unrolled
    oc_outer: bool = True  # conv loop order: output-channel blocks outside rows
    out: Layout | None = None  # the buffer this kernel writes (None for unpack: the caller's array)
    fill: float = 0.0  # what that buffer's halo holds
    level: Level = "tile"  # tile: a batch tile; boundary: writes the dense tail's input; dense: in the tail
    split: Split = ""  # the axis an intra-image split cuts ("" = not split)
    parts: int = 0  # how many parts that axis has

    @property
    def result(self) -> "Step":
        """The step whose output this kernel writes (the fused pool, if any)."""
        return self.pool or self

    @property
    def buffer(self) -> str:
        return "input.packed" if self.kind == "pack" else f"{self.result.name}.out"


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    vector_width: int
    input: Layout  # the caller's arrays, per image
    output: Layout
    steps: tuple[Step, ...]
    batch_tile: int  # images per pass through the network
    dense_tile: int  # images per pass through the dense tail (a multiple of batch_tile); 0: no tail
    split: bool  # stage entries for intra-image threading
    skip_pack: bool  # the first kernel reads the caller's input as it is
    winograd_scratch: tuple[int, int]  # floats of the shared U and M buffers, (0, 0) without Winograd
    macs: int  # multiply-adds per image
    profile: bool  # the entry counts each stage's cycles
    input_shape: tuple[int, ...]  # per image, as the model declares them
    output_shape: tuple[int, ...]


# ----------------------------------------------------------------------------- the network as stages


@dataclass(slots=True)
class _Stage:
    kind: Kind
    name: str
    op: Op | None
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    acts: list[Act] = field(default_factory=list)
    winograd: bool = False


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape
    assert len(shape) == 1, shape
    return (shape[0], 1, 1)


LOWERINGS = frozenset({"activation", "identity", "flatten", "softmax", "dense", "conv", "pool", "gap"})
"""The lowering names an op's registry entry may give (``core.ops.OpDef.lowering``)."""


def _stages(cm: ConcreteModel) -> list[_Stage]:
    """The layers as stages: activations attached to the stage before them, ``flatten`` a view
    (a copy only before a softmax), the copies in and out at both ends."""
    cur = _chw(cm.input_shape)
    stages = [_Stage("pack", "input", None, cur, cur)]
    flat_view = False  # current tensor is a flatten of ``cur``
    for layer, in_shape, out_shape, op in cm.layers:
        # the op registry names each op's lowering (core/ops.py: OpDef.lowering)
        lowering = definition(op).lowering
        match lowering:
            case "activation":
                assert isinstance(op, Activation)
                stages[-1].acts.append(op.kind)
            case "identity":  # dropout when running: no code, the tensor passes through
                pass
            case "flatten":
                flat_view = cur[1] * cur[2] > 1
            case "softmax":
                if flat_view:
                    f = cur[0] * cur[1] * cur[2]
                    stages.append(_Stage("flatten", f"{layer.name}.flat", op, cur, (f, 1, 1)))
                    cur, flat_view = (f, 1, 1), False
                stages.append(_Stage("softmax", layer.name, op, cur, cur))
            case "dense":
                out = _chw(out_shape)
                stages.append(_Stage("dense", layer.name, op, cur, out))
                cur, flat_view = out, False
            case "conv":
                assert not flat_view
                out = _chw(out_shape)
                stages.append(_Stage("conv", layer.name, op, cur, out))
                cur = out
            case "pool":
                out = _chw(out_shape)
                stages.append(_Stage("pool", layer.name, op, cur, out))
                cur = out
            case "gap":
                out = (cur[0], 1, 1)
                stages.append(_Stage("gap", layer.name, op, cur, out))
                cur = out
            case _:
                raise AssertionError(f"no lowering named {lowering!r} (core/ops.py)")
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


# ----------------------------------------------------------------------------- decisions


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


def conv_block(s: Schedule, st: _Stage | Step, win: int) -> tuple[int, int, int]:
    """(output-channel vectors, output positions, accumulators) of the conv micro-kernel whose
    output positions are pooling windows of ``win`` conv outputs (``win = 1``: no pooling)."""
    op = st.op
    assert isinstance(op, Conv)
    V = s.vector_width
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


def _fusable_pool(s: Schedule, conv: _Stage, pool: _Stage) -> bool:
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
    return s.fuse_pool == "always" or conv_block(s, conv, kh * kw)[2] >= conv_block(s, conv, 1)[2]


def conv_input_ranges(op: Conv, O: int, V: int) -> tuple[list[int], list[int], bool]:
    """For every output-channel vector block: the first input channel and the count it reads
    (a block may straddle groups), and whether the blocks step uniformly (one loop serves all)."""
    g = op.groups
    Cg, Og = op.c_in // g, O // g
    Ob = -(-O // V)
    lo, ln = [], []
    for ob in range(Ob):
        g0 = (ob * V) // Og
        g1 = (min(ob * V + V, O) - 1) // Og
        lo.append(g0 * Cg)
        ln.append((g1 - g0 + 1) * Cg)
    uniform = len(set(ln)) == 1 and all(lo[i] - lo[0] == i * (lo[1] - lo[0] if Ob > 1 else 0) for i in range(Ob))
    return lo, ln, uniform


def even_block(extent: int, max_block: int) -> int:
    """Block size <= max_block that covers ``extent`` in the fewest, most even blocks."""
    max_block = max(1, min(max_block, extent))
    nblocks = -(-extent // max_block)
    return -(-extent // nblocks)


def _winograd_chunks(s: Schedule, st: _Stage, split: bool) -> tuple[int, int, int, int]:
    """(output-channel vectors, tiles per micro-kernel, tiles per chunk, chunk regions) of the
    Winograd conv ``st``.

    The register block is the direct conv's (accumulators + weight vectors + two broadcast
    registers).  A chunk of tiles is sized so that one of its 16 transformed-input slices
    (``tiles x C``) stays in L2 while every output-channel block reads it; ``U`` and ``M`` hold
    one chunk, or under an intra-image split one region per chunk (the parts share scratch)."""
    V = s.vector_width
    Bc, Bw, _ = conv_block(s, st, 1)
    T = -(-st.out_shape[1] // 2) * -(-st.out_shape[2] // 2)
    Cp = -(-st.in_shape[0] // V) * V
    nt = max(Bw, WINO_SLICE_FLOATS // Cp // Bw * Bw)
    if split:  # several chunks per thread, so the parts balance
        nt = min(nt, max(Bw, -(-T // 8 // Bw) * Bw))
    nt = min(nt, T)
    return Bc, min(Bw, nt), nt, -(-T // nt) if split else 1


def _winograd_scratch(s: Schedule, st: _Stage, split: bool) -> tuple[int, int]:
    """Floats of the transformed-input buffer ``U`` ``[region][16][tile][C_pad]`` and of the GEMM
    result ``M`` ``[region][16][tile][O_pad]`` of ``st`` (see :func:`_winograd_chunks`)."""
    V = s.vector_width
    _, _, nt, regions = _winograd_chunks(s, st, split)
    Cp = -(-st.in_shape[0] // V) * V
    Op = -(-st.out_shape[0] // V) * V
    return regions * 16 * nt * Cp, regions * 16 * nt * Op


def _split_acts(acts: tuple[Act, ...] | list[Act]) -> tuple[tuple[Act, ...], tuple[Act, ...]]:
    """(in the micro-kernel's epilogue, in a pass after it).  ``exp``-based activations need a
    dozen vector constants; inlined next to a block of accumulators they force spills in the hot
    loop, so they run in a separate pass over the image's output, while it is still in L1."""
    acts = tuple(acts)
    return (acts, ()) if all(a == "relu" for a in acts) else ((), acts)


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


_ALGORITHM: dict[str, Algorithm] = {"pack": "copy", "unpack": "copy", "flatten": "copy", "dense": "gemm",
                                     "pool": "window", "gap": "mean", "softmax": "softmax"}


def _freeze(st: _Stage, **decisions) -> Step:
    algorithm: Algorithm = ("winograd" if st.winograd else "direct") if st.kind == "conv" else _ALGORITHM[st.kind]
    return Step(st.kind, st.name, st.op, st.in_shape, st.out_shape, tuple(st.acts), algorithm=algorithm,
                **decisions)


def _step(s: Schedule, st: _Stage, pool: _Stage | None, split: bool, out: Layout | None, fill: float,
          level: Level) -> Step:
    """``st`` (and a pool fused into it) with every decision made."""
    V = s.vector_width
    label = {"pack": "input", "unpack": "output"}.get(st.kind, st.name)
    common = dict(out=out, fill=fill, level=level)
    match st.kind:
        case "conv" if st.winograd:
            Bc, Bw, nt, regions = _winograd_chunks(s, st, split)
            groups = -(-(-(-st.out_shape[1] // 2) * -(-st.out_shape[2] // 2)) // nt)
            return _freeze(st, label=label, epilogue=tuple(st.acts), block=(Bc, Bw), chunk=(nt, regions),
                           split="tile chunks" if split else "", parts=groups if split else 0, **common)
        case "conv":
            op = st.op
            assert isinstance(op, Conv)
            Ob = -(-st.out_shape[0] // V)
            if pool is None:
                win, cols, rows = 1, st.out_shape[2], st.out_shape[1]
                epi = tuple(st.acts)
            else:
                pop = pool.op
                assert isinstance(pop, Pool)
                win, rows, cols = pop.kernel[0] * pop.kernel[1], pool.out_shape[1], pool.out_shape[2]
                label = f"{st.name}+{pool.name}"
                # max: every activation is non-decreasing, act(max(x)) = max(act(x)), one per window;
                # avg: the conv's relu per output in registers (_fusable_pool), the pool's after
                epi = tuple(st.acts + pool.acts) if pop.kind == "max" else tuple(pool.acts)
            Bc, Bw, _ = conv_block(s, st, win)
            _, _, uniform = conv_input_ranges(op, st.out_shape[0], V)
            # intra-image split: over output-channel blocks where there are at least as many as
            # rows (uniform packing only), else over (pooled) output rows
            by_blocks = split and uniform and -(-Ob // Bc) >= rows
            where: Split = ("channel blocks" if by_blocks else "rows") if split else ""
            parts = (-(-Ob // max(1, min(Bc, Ob))) if by_blocks else rows) if split else 0
            reg, after = _split_acts(epi)
            return _freeze(st, label=label, pool=_freeze(pool) if pool else None, epilogue=reg, after=after,
                           block=(Bc, even_block(cols, Bw)), unroll_kw=s.unroll_kernel_w and op.kernel[1] <= 7,
                           oc_outer=s.oc_outer, split=where, parts=parts, **common)
        case "dense":
            Ob = -(-st.out_shape[0] // V)
            regs = s.vector_registers - 1 if V > 1 else 64
            Bo = min(s.dense_out_block, Ob)
            Bn = max(1, min(s.dense_batch_block, (regs - Bo - 1) // Bo, s.batch_tile))
            reg, after = _split_acts(st.acts)
            return _freeze(st, label=label, epilogue=reg, after=after, block=(Bo, Bn),
                           split="output blocks" if split else "",
                           parts=-(-Ob // max(1, min(Bo, Ob))) if split else 0, **common)
        case "pool":
            op = st.op
            assert isinstance(op, Pool)
            return _freeze(st, label=label, epilogue=tuple(st.acts), unroll_kw=s.unroll_kernel_w and op.kernel[1] <= 7,
                           split="rows" if split else "", parts=st.out_shape[1] if split else 0, **common)
        case "pack" | "unpack" | "gap" | "flatten" | "softmax":
            return _freeze(st, label=label, epilogue=tuple(st.acts), **common)
        case _:
            assert_never(st.kind)


def plan(cm: ConcreteModel, schedule: Schedule) -> Plan:
    """Every lowering decision for ``cm`` under ``schedule``.

    The batch tile is the schedule's unless a tile of that many images would need more scratch
    than ``schedule.scratch_budget``: then it is the most images that fit, at least one.  Each
    thread holds one tile, so scratch grows with the images a thread works on and not with a
    fixed tile (a 2048 x 2048 map is ~0.7 GB per image: eight of them would be 5.5 GB a thread).
    Likewise an intra-image split is dropped where its Winograd buffers would break the budget."""
    budget = schedule.scratch_budget
    p = _plan(cm, schedule)
    per_image = _tile_bytes(p) // p.batch_tile
    if p.batch_tile > 1 and per_image * p.batch_tile > budget:
        schedule = replace(schedule, batch_tile=max(1, budget // max(1, per_image)))
        p = _plan(cm, schedule)
    if p.split and _tile_bytes(p) + 4 * sum(p.winograd_scratch) > budget and p.winograd_scratch != (0, 0):
        # An intra-image split gives every Winograd chunk its own U/M region (the parts run at
        # once), which is several times the image itself; past the budget each image runs on one
        # thread instead (a batch still spreads over the threads).
        p = _plan(cm, replace(schedule, split_macs=0))
    return p


def _tile_bytes(p: Plan) -> int:
    """Bytes of the scratch buffers that hold a batch tile (the dense tail's and Winograd's aside)."""
    return 4 * p.batch_tile * sum(st.out.size for st in p.steps if st.out is not None and st.level == "tile")


def _plan(cm: ConcreteModel, schedule: Schedule) -> Plan:
    s = schedule
    V = s.vector_width
    T = s.batch_tile
    stages = _stages(cm)
    for st in stages:
        st.winograd = _winograd_ok(st, s)
    # drop the input copy when the first consumer reads the caller's array as it is
    first = stages[1]
    skip_pack = (not stages[0].acts and first.kind in ("conv", "dense")
                 and _input_requirements(first)[:2] == (True, (0, 0, 0, 0)))
    macs = _macs_per_image(stages)
    split = s.split_macs > 0 and macs >= s.split_macs
    wino = [_winograd_scratch(s, st, split) for st in stages if st.winograd]
    wino_scratch = (max(u for u, _ in wino), max(m for _, m in wino)) if wino else (0, 0)

    # dense tail (see lower's module docstring): the kernel writing its input (the boundary)
    # addresses that buffer like the caller's arrays; it must not read the caller's input itself
    tail = _dense_tail(stages, s)
    T2 = -(-s.dense_tile // T) * T if tail else T
    if tail == 1:  # dense layers right after the input: no activations to keep small, one tile level
        T, tail = T2, 0

    steps: list[Step] = []
    reads_user = True  # the next kernel reads the caller's input
    k = 1 if skip_pack else 0
    while k < len(stages):
        st = stages[k]
        if st.kind == "unpack":
            steps.append(_step(s, st, None, split, None, 0.0, "dense" if tail else "tile"))
            break
        fused: _Stage | None = None
        if (s.fuse_pool != "off" and st.kind == "conv" and stages[k + 1].kind == "pool"
                and _fusable_pool(s, st, stages[k + 1])):
            fused = stages[k + 1]
            k += 1
        result = fused or st
        k += 1
        planar_ok, halo, fill = _input_requirements(stages[k])
        lay = Layout(*result.out_shape, blocked=not (planar_ok and st.kind == "pack"), V=V, halo=halo)
        boundary = bool(tail) and k == tail
        if boundary and reads_user:
            tail, T2, boundary = 0, T, False
        level: Level = "boundary" if boundary else "dense" if tail and k > tail else "tile"
        steps.append(_step(s, st, fused, split, lay, fill, level))
        reads_user = False
    return Plan(cm.model.name, V, Layout(*stages[0].in_shape, blocked=False, V=V),
                Layout(*stages[-1].in_shape, blocked=False, V=V), tuple(steps), T, T2 if tail else 0, split,
                skip_pack, wino_scratch, macs, s.profile, tuple(cm.input_shape), tuple(cm.output_shape))


# ----------------------------------------------------------------------------- printing


def _arg(v: tuple[int, ...]) -> str:
    """A size argument as a program would write it: ``5`` for ``(5, 5)``, ``1`` for ``(1, 1, 1, 1)``."""
    return str(v[0]) if len(set(v)) == 1 else str(v)


def _op_text(st: Step) -> str:
    match st.op:
        case Conv(c_out=o, kernel=k, stride=sd, padding=p, dilation=d, groups=g):
            extra = "".join(f", {n}={_arg(v) if isinstance(v, tuple) else v}" for n, v, dflt in (
                ("stride", sd, (1, 1)), ("padding", p, (0, 0, 0, 0)), ("dilation", d, (1, 1)), ("groups", g, 1))
                if v != dflt)
            return f"conv({o}, kernel={_arg(k)}{extra})"
        case Pool(kind=kind, kernel=k, stride=sd, padding=p, ceil=c, count_pad=cp):
            return (f"{kind}pool({_arg(k)}, stride={_arg(sd)}" + (f", padding={_arg(p)}" if any(p) else "")
                    + (", ceil=true" if c else "") + (", count_pad=false" if not cp else "") + ")")
        case Dense(out_features=o):
            return f"dense({o})"
        case _:
            return st.kind


def format_plan(p: Plan) -> str:
    """The plan as text: one block per kernel, its decisions one per line."""
    tiles = f"batch tile {p.batch_tile}" + (f", dense tile {p.dense_tile}" if p.dense_tile else "")
    out = [f"plan {p.model}  (vector width {p.vector_width}, {tiles}, "
           f"{'intra-image split' if p.split else 'no intra-image split'}, {p.macs:,} MACs/image)",
           f"  input  {p.input.describe()}" + ("  (read in place: no copy in)" if p.skip_pack else "")]
    for i, st in enumerate(p.steps):
        shape = "x".join(map(str, st.result.out_shape))
        out.append(f"{i:>3} {st.label}: {_op_text(st)}" + (f" + {_op_text(st.pool)}" if st.pool else "")
                   + f" -> {shape}")
        facts = [f"algorithm {st.algorithm}"]
        if st.block:
            what = "(output vectors, images)" if st.kind == "dense" else "(channel vectors, positions)"
            facts.append(f"register block {st.block[0]}x{st.block[1]} {what}")
        if st.chunk != (0, 0):
            facts.append(f"{st.chunk[0]} tiles per chunk, {st.chunk[1]} region{'s' if st.chunk[1] > 1 else ''}")
        if st.epilogue:
            facts.append("epilogue " + ", ".join(st.epilogue))
        if st.after:
            facts.append("then a pass of " + ", ".join(st.after))
        if st.unroll_kw:
            facts.append("kernel width unrolled")
        if st.kind == "conv" and st.algorithm == "direct":
            facts.append("loop order " + ("channel blocks, rows" if st.oc_outer else "rows, channel blocks"))
        out.append("      " + "; ".join(facts))
        where = "the caller's output" if st.out is None else f"{st.buffer}: {st.out.describe()}"
        fill = f" fill {st.fill}" if st.fill else ""
        split = f"; split over {st.split} ({st.parts} part{'s' if st.parts != 1 else ''})" if st.split else ""
        out.append(f"      writes {where}{fill}; {st.level} level{split}")
    out.append(f"  output {p.output.describe()}")
    return "\n".join(out) + "\n"
