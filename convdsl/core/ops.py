"""The op registry: one definition per operation of the language.

Each op is two things side by side here: the frozen dataclass the checked model carries (its
arguments, resolved) and an :class:`OpDef` entry in :data:`OPS` holding everything else the
pipeline needs to know about it:

* its **signature** (:class:`Param`: name, kind of value, default, positional or not), from which
  the checker binds and reads arguments and builds the usage note;
* its **shape rule** (``infer``: resolved arguments and input shape -> op and output shape,
  raising :class:`OpError` for what the arguments or the input do not allow);
* its **cost** (parameters and MACs per image) and its **weights** (PyTorch layouts);
* the **names** of its lowering in the back end (``backend.plan`` dispatches on it), of its
  reference semantics (``tests/reference.py``) and of its ONNX and PyTorch exporters
  (``tools/export_onnx.py``, ``tools/export_torch.py``).  Those modules keep a table keyed by
  these names; ``tests/test_ops.py`` proves every name of every entry is in every table, so an op
  cannot be half added.

Adding an op is one entry here plus its kernel (see ``docs/architecture.md``).  This module
imports only the symbolic algebra: the front end and the back end both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Mapping, Union

from .diagnostics import Note
from .symbolic import Dim, to_str
from .text import format_shape

Pair = tuple[int, int]


# ----------------------------------------------------------------------------- the ops' IR nodes


@dataclass(frozen=True, slots=True)
class Conv:
    c_in: Dim
    c_out: int
    kernel: Pair  # (kh, kw)
    stride: Pair  # (sh, sw)
    padding: tuple[int, int, int, int]  # (top, bottom, left, right)
    dilation: Pair  # (dh, dw)
    groups: int
    bias: bool


@dataclass(frozen=True, slots=True)
class Pool:
    kind: Literal["max", "avg"]
    kernel: Pair
    stride: Pair
    padding: Pair  # (ph, pw), on both sides
    ceil: bool
    # average only: padded zeros count in the divisor (PyTorch's count_include_pad); False
    # divides by the real cells of the window.  Meaningless for max, which keeps the default.
    count_pad: bool = True


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    pass


@dataclass(frozen=True, slots=True)
class Flatten:
    pass


@dataclass(frozen=True, slots=True)
class Dense:
    in_features: Dim
    out_features: int
    bias: bool


@dataclass(frozen=True, slots=True)
class Activation:
    kind: Literal["relu", "sigmoid", "tanh"]


@dataclass(frozen=True, slots=True)
class Softmax:
    """Softmax over axis 1 (channels of a 4-D tensor, features of a 2-D one)."""


@dataclass(frozen=True, slots=True)
class Dropout:
    """Zeroes each value with probability ``p`` and scales the rest by ``1/(1-p)`` in training;
    the identity when running."""

    p: float


Op = Union[Conv, Pool, GlobalAvgPool, Flatten, Dense, Activation, Softmax, Dropout]


# ----------------------------------------------------------------------------- signatures

ArgKind = Literal["count", "pair", "bool", "conv_padding", "pool_padding", "probability"]
"""How the checker reads an argument's value before the op's rule sees it:

* ``count``: an integer >= 1;
* ``pair``: an integer >= 1 or a pair ``(h, w)`` of them, resolved to a pair;
* ``bool``: ``true`` / ``false``;
* ``conv_padding``: an integer >= 0, ``(ph, pw)``, ``(top, bottom, left, right)``, ``valid``
  (resolved to four pads) or ``same`` (resolved to the string ``"same"``, for the rule to size);
* ``pool_padding``: an integer >= 0, ``(ph, pw)`` or ``valid``, resolved to a pair;
* ``probability``: a decimal literal (or the integer 0) with ``0 <= p < 1``, resolved to a float.
"""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of an argument that must be given."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: ArgKind
    what: str  # the argument in a message: "the kernel size"
    usage: str  # the argument in the usage note: "kernel=k", "stride=1"
    default: Any = REQUIRED  # resolved form; None: optional with no value (the rule decides)
    positional: bool = False


class OpError(Exception):
    """What an op's rule rejects: reported at argument ``arg``'s span (the op's name when None)."""

    def __init__(self, message: str, arg: str | None = None, *notes: Note, code: str = "bad-argument"):
        super().__init__(message)
        self.message, self.arg, self.notes, self.code = message, arg, notes, code


@dataclass(frozen=True, slots=True)
class Context:
    """What an op's rule may know beyond its arguments and input shape."""

    layer: str  # the layer's full name, for messages
    generic: bool = False  # checking a block's signature for any parameter values (sizes symbolic)


Args = Mapping[str, Any]
Infer = Callable[[Args, tuple[Dim, ...], Context], tuple[Op, tuple[Dim, ...]]]


def _no_cost(op: Op, out: tuple[Dim, ...]) -> tuple[Dim, Dim]:
    return 0, 0


def _no_weights(op: Op) -> dict[str, tuple[Dim, ...]]:
    return {}


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str  # as the language spells it
    summary: str  # one line: what the op computes
    params: tuple[Param, ...]
    infer: Infer
    lowering: str  # back-end stage kind (backend.plan)
    reference: str  # tests/reference.py
    onnx: str  # tools/export_onnx.py
    torch: str  # tools/export_torch.py
    cost: Callable[[Op, tuple[Dim, ...]], tuple[Dim, Dim]] = _no_cost
    weights: Callable[[Op], dict[str, tuple[Dim, ...]]] = _no_weights
    hidden: tuple[str, ...] = ()  # dataclass fields that do not apply to this op (not printed)

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.positional)

    @property
    def usage(self) -> str:
        return f"usage: {self.name}({', '.join(p.usage for p in self.params)})" if self.params else \
            f"usage: {self.name}"

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)


# ----------------------------------------------------------------------------- shape rules


def out_size(n: Dim, k: Dim, s: Dim, pb: Dim, pa: Dim, d: Dim, ceil: bool) -> Dim:
    """LANGUAGE.md's output-size formula; ``ceil`` as PyTorch's ceil_mode (pooling, pb == pa)."""
    keff = d * (k - 1) + 1
    if not ceil:
        return (n + pb + pa - keff) // s + 1
    # PyTorch rounds up, then drops a last window that would start in the bottom
    # padding.  Both bounds are floors by the same s, so their min is a constant
    # choice: the window cap binds exactly when p + s > keff.
    if isinstance(pb, int) and isinstance(s, int) and isinstance(keff, int) and pb + s > keff:
        return (n + pb - 1) // s + 1
    return (n + pb + pa - keff + s - 1) // s + 1


def _need_4d(name: str, x: tuple[Dim, ...], ctx: Context) -> None:
    if len(x) != 4:
        raise OpError(f"{name} needs a 4-D input [N, C, H, W], but {ctx.layer}'s input is {format_shape(x)}",
                      code="rank")


def _conv(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    _need_4d("conv", x, ctx)
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
    c_out, groups = a["c_out"], a["groups"]
    padding = a["padding"]
    if padding == "same":
        if (sh, sw) != (1, 1):
            raise OpError("padding=same needs stride 1 (the output could not keep the input size)", "padding")
        th, tw = dh * (kh - 1), dw * (kw - 1)
        padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    c_in = x[1]
    if isinstance(groups, int) and groups > 1:
        for what, val in (("input channels", c_in), ("output channels", c_out)):
            if isinstance(val, int) and val % groups:
                raise OpError(f"groups={groups} must divide the number of {what} ({val})", "groups")
            if not isinstance(val, int) and not ctx.generic:
                raise OpError(f"groups={groups} needs a known number of {what}, not {to_str(val)}", "groups")
    op = Conv(c_in, c_out, (kh, kw), (sh, sw), padding, (dh, dw), groups, a["bias"])
    h = out_size(x[2], kh, sh, padding[0], padding[1], dh, False)
    w = out_size(x[3], kw, sw, padding[2], padding[3], dw, False)
    return op, (x[0], c_out, h, w)


def _pool(kind: Literal["max", "avg"]) -> Infer:
    def infer(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
        _need_4d(f"{kind}pool", x, ctx)
        kh, kw = a["kernel"]
        sh, sw = a["stride"] if a.get("stride") is not None else (kh, kw)
        ph, pw = a["padding"]
        for p, k in ((ph, kh), (pw, kw)):
            if isinstance(p, int) and isinstance(k, int) and 2 * p > k:
                raise OpError(f"pool padding {p} is more than half the kernel ({k})", "padding",
                              Note(f"use padding <= {k // 2} (a window must hold at least one real cell)"))
        op = Pool(kind, (kh, kw), (sh, sw), (ph, pw), a["ceil"], a.get("count_pad", True))
        h = out_size(x[2], kh, sh, ph, ph, 1, op.ceil)
        w = out_size(x[3], kw, sw, pw, pw, 1, op.ceil)
        return op, (x[0], x[1], h, w)

    return infer


def _gap(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    _need_4d("global_avgpool", x, ctx)
    return GlobalAvgPool(), (x[0], x[1], 1, 1)


def _flatten(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    if len(x) == 2:  # as torch.nn.Flatten: already flat
        return Flatten(), x
    if len(x) != 4:
        raise OpError(f"flatten takes a 4-D input, not {format_shape(x)}", code="rank")
    return Flatten(), (x[0], x[1] * x[2] * x[3])


def _dense(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    if len(x) != 2:
        raise OpError(f"dense needs a 2-D input [N, F], but {ctx.layer}'s input is {format_shape(x)}", None,
                      Note(f"insert flatten before {ctx.layer}"), code="rank")
    out = a["out"]
    if not isinstance(out, int) and not ctx.generic:
        raise AssertionError(out)  # model arguments are integers once block parameters are bound
    return Dense(x[1], out, a["bias"]), (x[0], out)


def _activation(kind: Literal["relu", "sigmoid", "tanh"]) -> Infer:
    def infer(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
        return Activation(kind), x

    return infer


def _softmax(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    if len(x) < 2:
        raise OpError("softmax needs a channel or feature axis", code="rank")
    return Softmax(), x


def _dropout(a: Args, x: tuple[Dim, ...], ctx: Context) -> tuple[Op, tuple[Dim, ...]]:
    return Dropout(a["p"]), x


# ----------------------------------------------------------------------------- costs and weights


def _conv_cost(op: Op, out: tuple[Dim, ...]) -> tuple[Dim, Dim]:
    assert isinstance(op, Conv)
    per = (op.c_in // op.groups) * op.kernel[0] * op.kernel[1]
    return op.c_out * per + (op.c_out if op.bias else 0), op.c_out * out[2] * out[3] * per


def _conv_weights(op: Op) -> dict[str, tuple[Dim, ...]]:
    assert isinstance(op, Conv)
    shapes: dict[str, tuple[Dim, ...]] = {"weight": (op.c_out, op.c_in // op.groups, *op.kernel)}
    if op.bias:
        shapes["bias"] = (op.c_out,)
    return shapes


def _dense_cost(op: Op, out: tuple[Dim, ...]) -> tuple[Dim, Dim]:
    assert isinstance(op, Dense)
    fi, fo = op.in_features, op.out_features
    return fo * fi + (fo if op.bias else 0), fo * fi


def _dense_weights(op: Op) -> dict[str, tuple[Dim, ...]]:
    assert isinstance(op, Dense)
    shapes: dict[str, tuple[Dim, ...]] = {"weight": (op.out_features, op.in_features)}
    if op.bias:
        shapes["bias"] = (op.out_features,)
    return shapes


# ----------------------------------------------------------------------------- the registry

_KERNEL = Param("kernel", "pair", "the kernel size", "k", positional=True)
_POOL_COMMON = (
    _KERNEL,
    Param("stride", "pair", "the stride", "stride=k", default=None),
    Param("padding", "pool_padding", "padding", "padding=0", default=(0, 0)),
    Param("ceil", "bool", "ceil", "ceil=false", default=False),
)


def _act(kind: Literal["relu", "sigmoid", "tanh"], summary: str) -> OpDef:
    return OpDef(kind, summary, (), _activation(kind), lowering="activation", reference="activation",
                 onnx="activation", torch="activation")


OPS: dict[str, OpDef] = {d.name: d for d in (
    OpDef("conv", "2-D cross-correlation over each group's input channels, plus a bias",
          (Param("c_out", "count", "the number of output channels", "c_out", positional=True),
           Param("kernel", "pair", "the kernel size", "kernel=k", positional=True),
           Param("stride", "pair", "the stride", "stride=1", default=(1, 1)),
           Param("padding", "conv_padding", "padding", "padding=0", default=(0, 0, 0, 0)),
           Param("dilation", "pair", "the dilation", "dilation=1", default=(1, 1)),
           Param("groups", "count", "groups", "groups=1", default=1),
           Param("bias", "bool", "bias", "bias=true", default=True)),
          _conv, lowering="conv", reference="conv", onnx="conv", torch="conv",
          cost=_conv_cost, weights=_conv_weights),
    OpDef("maxpool", "the largest value of each window (padded cells never win)", _POOL_COMMON, _pool("max"),
          lowering="pool", reference="pool", onnx="pool", torch="pool", hidden=("count_pad",)),
    OpDef("avgpool", "the mean of each window", _POOL_COMMON + (
              Param("count_pad", "bool", "count_pad", "count_pad=true", default=True),),
          _pool("avg"), lowering="pool", reference="pool", onnx="pool", torch="pool"),
    OpDef("global_avgpool", "the mean of each channel", (), _gap,
          lowering="gap", reference="global_avgpool", onnx="global_avgpool", torch="global_avgpool"),
    OpDef("flatten", "[N, C, H, W] -> [N, C*H*W] (row-major)", (), _flatten,
          lowering="flatten", reference="flatten", onnx="flatten", torch="flatten"),
    OpDef("dense", "a fully connected layer: x @ weight.T + bias",
          (Param("out", "count", "the number of outputs", "out", positional=True),
           Param("bias", "bool", "bias", "bias=true", default=True)),
          _dense, lowering="dense", reference="dense", onnx="dense", torch="dense",
          cost=_dense_cost, weights=_dense_weights),
    _act("relu", "max(x, 0)"),
    _act("sigmoid", "1 / (1 + exp(-x))"),
    _act("tanh", "tanh(x)"),
    OpDef("softmax", "exp(x) / sum(exp(x)) over axis 1", (), _softmax,
          lowering="softmax", reference="softmax", onnx="softmax", torch="softmax"),
    OpDef("dropout", "the identity when running; in training zeroes with probability p, scales by 1/(1-p)",
          (Param("p", "probability", "the dropout probability", "p", positional=True),),
          _dropout, lowering="identity", reference="dropout", onnx="dropout", torch="dropout"),
)}


# ----------------------------------------------------------------------------- queries


def op_kind(op: Op) -> str:
    """The op's name as the language spells it (``conv``, ``maxpool``, ``relu``, ...)."""
    if isinstance(op, (Pool,)):
        return f"{op.kind}pool"
    if isinstance(op, Activation):
        return op.kind
    return _KIND[type(op)]


_KIND: dict[type, str] = {Conv: "conv", GlobalAvgPool: "global_avgpool", Flatten: "flatten", Dense: "dense",
                          Softmax: "softmax", Dropout: "dropout"}


def definition(op: Op) -> OpDef:
    """The registry entry of a checked op."""
    return OPS[op_kind(op)]


def cost(op: Op, out: tuple[Dim, ...]) -> tuple[Dim, Dim]:
    """(learned parameters, multiply-accumulates per image) of ``op`` producing ``out``."""
    return definition(op).cost(op, out)


def weight_shapes(op: Op) -> dict[str, tuple[Dim, ...]]:
    """PyTorch layouts of the op's parameters, keyed ``weight`` / ``bias``."""
    return definition(op).weights(op)


def shown_fields(op: Op) -> list[str]:
    """The op's dataclass fields that apply to it, in order (``kind`` is in the op's name)."""
    hidden = definition(op).hidden
    return [f.name for f in fields(op) if f.name != "kind" and f.name not in hidden]
