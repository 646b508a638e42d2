"""An ONNX convolutional network as a ``.conv`` program and its weights (``convdsl import``).

``import_onnx(path_or_model, name=None)`` returns an :class:`Imported`: the program's text (one
layer per line, every shape declared) and its weights in PyTorch layouts under ``LAYER.weight`` /
``LAYER.bias``.  The graph must be a single pipeline from one input ``[N, C, H, W]`` (the batch
fixed or symbolic, the other sizes fixed) to one output, through the ops of the table in
``docs/interop.md``.  Every node that the language cannot express is collected, with the reason,
before :class:`OnnxImportError` is raised, so that a user sees the whole list at once.

What is computed follows ONNX Runtime where it and the ONNX specification disagree: a ceil-mode
pool drops a last window that would start in the end padding in every opset (as PyTorch does and
the language says), although ONNX's shape inference before opset 22 keeps it.

Shapes are tracked with the op registry's own shape rules (``core/ops.py``), so a pool padding
the language refuses is refused here with the registry's reason; the text is checked once more
by the checker before it is returned.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..core import symbolic as sy
from ..core.ops import OPS, Context, OpError
from ..core.text import format_shape

if TYPE_CHECKING:
    import onnx

Shape = tuple[sy.Dim, ...]

N = sy.sym("N")


class Batch:
    """The batch size inside a shape computation (``Shape`` of a tensor whose first axis is N)."""

    def __repr__(self) -> str:
        return "N"


BATCH = Batch()


class OnnxImportError(Exception):
    """The model cannot be imported: ``problems`` holds one line per reason (every node listed)."""

    def __init__(self, summary: str, problems: Sequence[str] = ()):
        super().__init__(summary)
        self.summary, self.problems = summary, tuple(problems)

    def __str__(self) -> str:
        return "\n".join([self.summary, *(f"  {p}" for p in self.problems)])


@dataclass(frozen=True, slots=True)
class ImportedLayer:
    name: str
    op: str  # the op as the language writes it: ``conv(6, kernel=5, padding=2)``
    shape: Shape  # after the layer
    nodes: tuple[str, ...]  # the ONNX nodes it stands for (a conv and the batch norm folded into it)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Imported:
    name: str
    input_name: str
    input_shape: Shape
    layers: tuple[ImportedLayer, ...]
    weights: Mapping[str, np.ndarray]
    removed: tuple[str, ...]  # Dropout / Identity / shape-computation nodes that became nothing
    header: tuple[str, ...]  # comment lines about the source

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].shape if self.layers else self.input_shape

    @property
    def text(self) -> str:
        return render(self)


def render(m: Imported) -> str:
    """The program: a comment header and one layer per line, the declared shapes in one column."""
    heads = [f"{layer.name}: {layer.op}" for layer in m.layers]
    width = max((len(h) for h in heads), default=0) + 2
    lines = [f"# {h}" if h else "#" for h in m.header]
    lines.append(f"model {m.name}({m.input_name}: {format_shape(m.input_shape)}) -> {format_shape(m.output_shape)} {{")
    for head, layer in zip(heads, m.layers):
        note = f"  # {layer.note}" if layer.note else ""
        lines.append(f"    {head.ljust(width)}-> {format_shape(layer.shape)}{note}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- names

_KEYWORDS = {"model", "block", "repeat", "where", "true", "false", "same", "valid", "N"}


def identifier(text: str, fallback: str) -> str:
    """An ONNX name as a language identifier: ``/features/features.0/Conv`` -> ``features_0``.

    Exporters name a node after its module path and op type; the op type and a path part that the
    next part repeats (``features/features.0``) are dropped, and what cannot be in an identifier
    becomes ``_``.  ``fallback`` (the op kind) prefixes a name that would start with a digit."""
    parts = [p for p in re.split(r"[/:]", text) if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?", parts[-1]):
        parts = parts[:-1]  # the op type, as torch.onnx appends it
    parts = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    out = re.sub(r"\W+", "_", "_".join(parts)).strip("_")
    if not out:
        return fallback
    if out[0].isdigit():
        out = fallback + out
    return out + "_" if out in _KEYWORDS else out


def _unique(name: str, used: set[str]) -> str:
    k, out = 2, name
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


# ----------------------------------------------------------------------------- argument text


def _pair(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"({v[0]}, {v[1]})"


def _conv_text(c_out: int, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int],
               dilation: tuple[int, int], groups: int, bias: bool) -> str:
    args = [str(c_out), f"kernel={_pair(kernel)}"]
    if stride != (1, 1):
        args.append(f"stride={_pair(stride)}")
    t, b, l, r = pads
    if any(pads):
        args.append("padding=" + (_pair((t, l)) if (t, l) == (b, r) else f"({t}, {b}, {l}, {r})"))
    if dilation != (1, 1):
        args.append(f"dilation={_pair(dilation)}")
    if groups != 1:
        args.append(f"groups={groups}")
    if not bias:
        args.append("bias=false")
    return f"conv({', '.join(args)})"


def _pool_text(kind: str, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int], ceil: bool,
               count_pad: bool) -> str:
    args = [_pair(kernel)]
    if stride != kernel:
        args.append(f"stride={_pair(stride)}")
    if any(pad):
        args.append(f"padding={_pair(pad)}")
    if ceil:
        args.append("ceil=true")
    if kind == "avg" and not count_pad and any(pad):  # (with no padding both divisors are the real cells)
        args.append("count_pad=false")
    return f"{kind}pool({', '.join(args)})"


# ----------------------------------------------------------------------------- the graph


class _Unsupported(Exception):
    """One node the language cannot express, and why."""


@dataclass
class _Importer:
    model: Any  # onnx.ModelProto
    opset: int
    nodes: list[Any] = field(default_factory=list)  # the graph's, held once: fused ones are known by id
    static: dict[str, np.ndarray] = field(default_factory=dict)  # constants and shape values
    alias: dict[str, str] = field(default_factory=dict)  # a removed node's output -> its input
    consumers: dict[str, list[Any]] = field(default_factory=dict)
    inferred: dict[str, Shape | None] = field(default_factory=dict)  # ONNX's shapes, after a node we refuse
    layers: list[ImportedLayer] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    fused: set[int] = field(default_factory=set)  # ids of nodes folded into an earlier one
    used: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)  # of the pipeline's tensors, for Shape nodes
    cur: str = ""  # the pipeline's current tensor
    shape: Shape | None = None  # its shape (None after a refused node that ONNX cannot size either)
    batch: int | None = None  # the fixed batch size, or None for a symbolic one

    # --------------------------------------------------------------- helpers
    def name(self, node: Any, kind: str) -> str:
        ident = identifier(node.name, kind) if node.name else ""
        # (a name that is only the op type, ``/Relu_1``, says less than the language's numbering)
        if ident and not re.fullmatch(re.escape(node.op_type) + r"(_\d+)?", ident):
            return _unique(ident, self.used)
        while True:
            k = self.counters[kind] = self.counters.get(kind, 0) + 1
            if f"{kind}{k}" not in self.used:
                return _unique(f"{kind}{k}", self.used)

    def resolve(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def const(self, node: Any, i: int, what: str) -> np.ndarray:
        if i >= len(node.input) or not node.input[i]:
            raise _Unsupported(f"it has no {what}")
        name = self.resolve(node.input[i])
        if name not in self.static or self.static[name].dtype == object:
            raise _Unsupported(f"its {what} ({node.input[i]}) is computed, not a constant")
        return self.static[name]

    def floats(self, node: Any, i: int, what: str) -> np.ndarray:
        arr = self.const(node, i, what)
        if arr.dtype.kind != "f":
            raise _Unsupported(f"its {what} is {arr.dtype}, not floating point")
        return arr.astype(np.float32)

    def sole_consumer(self, tensor: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        outputs = {o.name for o in self.model.graph.output}
        return users[0] if len(users) == 1 and tensor not in outputs else None

    def add(self, node: Any, kind: str, op: str, shape: Shape, out: str,
            params: Mapping[str, np.ndarray] | None = None, extra: Sequence[Any] = (), note: str = "") -> None:
        if any(isinstance(d, int) and d < 1 for d in shape):
            raise _Unsupported(f"its output {format_shape(shape)} is empty")
        name = self.name(node, kind)
        for key, arr in (params or {}).items():
            self.weights[f"{name}.{key}"] = np.ascontiguousarray(arr, dtype=np.float32)
        self.layers.append(ImportedLayer(name, op, shape, tuple(n.name or n.op_type for n in (node, *extra)), note))
        self.fused.update(id(n) for n in extra)
        self.cur, self.shape = out, shape
        self.shapes[out] = shape

    # --------------------------------------------------------------- walking the nodes
    def run(self) -> None:
        for node in self.nodes:
            if id(node) in self.fused:
                continue
            try:
                self.visit(node)
            except (_Unsupported, KeyError, ValueError, TypeError, IndexError) as e:
                # (the others: a node the checker passed but whose attributes or inputs do not make
                # sense together; said about that node rather than as a traceback)
                why = str(e) if isinstance(e, _Unsupported) else f"it cannot be read ({type(e).__name__}: {e})"
                label = f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (unnamed)"
                self.problems.append(f"{label}: {why}")
                on_path = node.input and self.resolve(node.input[0]) == self.cur
                if on_path and node.output and node.output[0]:  # carry on with ONNX's idea of the shape
                    self.cur, self.shape = node.output[0], self.inferred.get(node.output[0])

    def visit(self, node: Any) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"an operator of the custom domain {node.domain!r}")
        if self.fold_static(node):
            return
        handler = _DATA_OPS.get(node.op_type)
        if handler is None:
            raise _Unsupported(_WHY_NOT.get(node.op_type, "not an operator the language has (see docs/interop.md)"))
        src = node.input[0] if node.input else ""
        if not src or self.resolve(src) != self.cur:
            raise _Unsupported(f"it reads {src or 'nothing'}, not the previous layer's output {self.cur}: the graph "
                               "branches or joins, and a .conv model is a single pipeline")
        if self.shape is None:
            raise _Unsupported("its input's shape is unknown after the unsupported node before it")
        handler(self, node, self.shape)

    def remove(self, node: Any, why: str) -> None:
        self.alias[node.output[0]] = node.input[0]
        if self.shape is not None:
            self.shapes[node.output[0]] = self.shape
        self.removed.append(f"{node.op_type} {node.name or '(unnamed)'} ({why})")

    # --------------------------------------------------------------- constants and shape values
    def fold_static(self, node: Any) -> bool:
        """Evaluate a node on constants and shape values (the ``x.view(N, -1)`` chains): True if it was."""
        from onnx import helper, numpy_helper

        op = node.op_type
        ins = [self.resolve(i) for i in node.input if i]
        if op == "Constant":
            attr = node.attribute[0]
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_floats"):
                value = np.array(helper.get_attribute_value(attr), dtype=np.float32)
            elif attr.name in ("value_int", "value_ints"):
                value = np.array(helper.get_attribute_value(attr), dtype=np.int64)
            else:
                raise _Unsupported(f"a constant given as {attr.name}")
            self.static[node.output[0]] = value
        elif op == "Shape" and ins and ins[0] in self.shapes:
            dims = np.array([BATCH, *_fixed(self.shapes[ins[0]])], dtype=object)
            a = _attrs(node)
            self.static[node.output[0]] = dims[a.get("start", 0):a.get("end", len(dims))]
        elif op not in _STATIC_OPS or not ins or any(i not in self.static for i in ins):
            return False
        else:
            vals = [self.static[i] for i in ins]
            try:
                value = _STATIC_OPS[op](vals, _attrs(node))
            except (TypeError, ValueError, IndexError, KeyError):  # (numpy's AxisError is a ValueError)
                return False  # (arithmetic on the batch size, say: not a shape the language can use)
            # (a Gather of one dimension yields the element itself, which may be the batch)
            self.static[node.output[0]] = value if isinstance(value, np.ndarray) else np.array(value, dtype=object)
        self.removed.append(f"{op} {node.name or '(unnamed)'} (a constant or shape computation)")
        return True


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _axes(vals: list[np.ndarray], a: Mapping[str, Any]) -> list[int]:
    return [int(x) for x in (vals[1] if len(vals) > 1 else a.get("axes", []))]


def _unsqueeze(vals: list[np.ndarray], a: Mapping[str, Any]) -> np.ndarray:
    out = vals[0]
    for ax in sorted(x % (out.ndim + len(_axes(vals, a))) for x in _axes(vals, a)):
        out = np.expand_dims(out, ax)
    return out


def _slice(vals: list[np.ndarray], a: Mapping[str, Any]) -> np.ndarray:
    data = vals[0]
    starts = vals[1] if len(vals) > 1 else a["starts"]
    ends = vals[2] if len(vals) > 2 else a["ends"]
    axes = vals[3] if len(vals) > 3 else a.get("axes", range(len(starts)))
    steps = vals[4] if len(vals) > 4 else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


_STATIC_OPS: dict[str, Any] = {
    "Identity": lambda v, a: v[0],
    "Cast": lambda v, a: v[0] if v[0].dtype == object else v[0].astype(_cast_dtype(a.get("to", 1))),
    "Gather": lambda v, a: np.take(v[0], v[1].astype(np.int64), axis=a.get("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": lambda v, a: np.squeeze(v[0], axis=tuple(_axes(v, a)) or None),
    "Concat": lambda v, a: np.concatenate([x.astype(object) if any(y.dtype == object for y in v) else x for x in v],
                                          axis=a.get("axis", 0)),
    "Slice": _slice,
    "Mul": lambda v, a: v[0] * v[1],
    "Add": lambda v, a: v[0] + v[1],
    "Sub": lambda v, a: v[0] - v[1],
    "Div": lambda v, a: v[0] // v[1] if all(x.dtype.kind in "iuO" for x in v) else v[0] / v[1],
}
"""Ops evaluated where all their inputs are known: what exporters emit to compute a reshape target."""


def _cast_dtype(to: int) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(to)


# ----------------------------------------------------------------------------- the layers


def _spatial(node: Any, shape: Shape, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """ONNX's ``pads`` / ``auto_pad`` as (top, bottom, left, right) for this input."""
    a = _attrs(node)
    auto = a.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise _Unsupported(f"pads {p} are not those of a 2-D window")
        if any(v < 0 for v in p):
            raise _Unsupported(f"negative pads {p} (cropping) are not expressible")
        return p[0], p[2], p[1], p[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={auto!r} is not an ONNX value")
    out: list[int] = []
    for n, k, s, d in zip(shape[2:], kernel, stride, dilation):
        if s == 1:  # (the one case that holds for every size: the output keeps it)
            total = d * (k - 1)
        elif isinstance(n, int):
            total = max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
        else:
            raise _Unsupported(f"auto_pad={auto} with stride {s} pads by an amount that depends on the symbolic "
                               f"size {sy.to_str(n)}")
        small, big = total // 2, total - total // 2
        out += [small, big] if auto == "SAME_UPPER" else [big, small]  # the odd cell at the end, or the start
    return out[0], out[1], out[2], out[3]


def _ints2(a: Mapping[str, Any], key: str, default: tuple[int, int], what: str) -> tuple[int, int]:
    v = [int(x) for x in a.get(key, default)]
    if len(v) != 2:
        raise _Unsupported(f"{what} {v}: only 2-D (height, width) windows are expressible")
    return v[0], v[1]


def _infer(kind: str, args: dict[str, Any], shape: Shape, layer: str) -> Shape:
    try:
        return OPS[kind].infer(args, shape, Context(layer))[1]
    except OpError as e:
        raise _Unsupported(e.message) from None


def _fixed(shape: Shape) -> list[sy.Dim]:
    """The per-image sizes: integers, or expressions of the input's symbolic height and width."""
    return list(shape[1:])


def _need4(shape: Shape, what: str) -> None:
    if len(shape) != 4:
        raise _Unsupported(f"{what} of a {len(shape)}-D tensor: the language's {what} takes [N, C, H, W]")


def _conv(im: _Importer, node: Any, shape: Shape) -> None:
    _need4(shape, "a convolution")
    w = im.floats(node, 1, "weight")
    if w.ndim != 4:
        raise _Unsupported(f"a weight of shape {list(w.shape)}: only 2-D convolutions are expressible")
    a = _attrs(node)
    kernel = _ints2(a, "kernel_shape", (w.shape[2], w.shape[3]), "kernel_shape")
    stride = _ints2(a, "strides", (1, 1), "strides")
    dilation = _ints2(a, "dilations", (1, 1), "dilations")
    groups = int(a.get("group", 1))
    pads = _spatial(node, shape, kernel, stride, dilation)
    b = im.floats(node, 2, "bias") if len(node.input) > 2 and node.input[2] else None
    c_out = int(w.shape[0])
    extra: list[Any] = []
    note = ""
    bn = im.sole_consumer(node.output[0])
    if bn is not None and bn.op_type == "BatchNormalization" and _attrs(bn).get("training_mode", 0) == 0 \
            and not any(o for o in bn.output[1:]):
        try:
            gamma, beta, mean, var = (im.floats(bn, i, what).reshape(-1)
                                      for i, what in enumerate(("scale", "bias", "mean", "variance"), 1))
        except _Unsupported:
            pass
        else:
            # As inference engines fold it: y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta
            scale = gamma / np.sqrt(var.astype(np.float64) + float(_attrs(bn).get("epsilon", 1e-5)))
            w = (w * scale[:, None, None, None]).astype(np.float32)
            b = ((b if b is not None else 0.0) - mean) * scale + beta
            extra, note = [bn], f"BatchNormalization {bn.name or '(unnamed)'} folded in"
    args = dict(c_out=c_out, kernel=kernel, stride=stride, padding=pads, dilation=dilation, groups=groups,
                bias=b is not None)
    if shape[1] != w.shape[1] * groups:
        raise _Unsupported(f"a weight of shape {list(w.shape)} with group={groups} does not fit {shape[1]} "
                           "input channels")
    out = _infer("conv", args, shape, node.name)
    params = {"weight": w} if b is None else {"weight": w, "bias": np.asarray(b).reshape(c_out)}
    im.add(node, "conv", _conv_text(c_out, kernel, stride, pads, dilation, groups, b is not None), out,
           (extra[-1] if extra else node).output[0], params, extra, note)


def _pool_out(n: int, k: int, s: int, pb: int, pa: int, ceil: bool) -> int:
    """ONNX Runtime's output size, with its rule (PyTorch's) of dropping a window that would start
    in the end padding."""
    span = n + pb + pa - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + pb:
        out -= 1
    return out


def _pool(im: _Importer, node: Any, shape: Shape) -> None:
    kind = "max" if node.op_type == "MaxPool" else "avg"
    _need4(shape, "pooling")
    if len(node.output) > 1 and node.output[1]:
        raise _Unsupported("its Indices output is used")
    a = _attrs(node)
    kernel = _ints2(a, "kernel_shape", (0, 0), "kernel_shape")
    stride = _ints2(a, "strides", (1, 1), "strides")
    if _ints2(a, "dilations", (1, 1), "dilations") != (1, 1):
        raise _Unsupported("a dilated pooling window (the language's pools have no dilation)")
    ceil = bool(a.get("ceil_mode", 0))
    count_pad = bool(a.get("count_include_pad", 0))
    t, b, l, r = _spatial(node, shape, kernel, stride, (1, 1))
    dims = _fixed(shape)[1:]
    sizes = [n for n in dims if isinstance(n, int)]
    lang_ceil = ceil
    if len(sizes) < len(dims):
        # For every size the pools agree (ONNX Runtime's rounding is PyTorch's); only unequal pads,
        # whose effect depends on the size, are refused.
        if (t, l) != (b, r):
            raise _Unsupported(f"pads (top, bottom, left, right) = {(t, b, l, r)} on a symbolic input size: the "
                               "language's pool padding is the same at both ends")
    elif (t, l) != (b, r):
        # The language pads both sides alike.  Unequal pads still give the same windows where the
        # start padding, with floor or ceil rounding, gives the same number of windows: the extra
        # end padding then only widens windows over cells that a max never picks and a real-cell
        # mean never counts (a mean that counts padding must not reach it).
        want = [_pool_out(n, k, s, pb, pa, ceil) for n, k, s, pb, pa in zip(sizes, kernel, stride, (t, l), (b, r))]
        for lang_ceil in (ceil, not ceil):
            got = [_pool_out(n, k, s, p, p, lang_ceil) for n, k, s, p in zip(sizes, kernel, stride, (t, l))]
            ends = [(o - 1) * s - pb + k for o, s, pb, k in zip(want, stride, (t, l), kernel)]
            divisor_same = kind == "max" or not count_pad or all(
                min(e, n + pa) == min(e, n + pb) for e, n, pb, pa in zip(ends, sizes, (t, l), (b, r)))
            if got == want and divisor_same:
                break
        else:
            raise _Unsupported(f"pads (top, bottom, left, right) = {(t, b, l, r)} put more padding at one end, "
                               "which the language's symmetric pool padding cannot give for this input")
    args = dict(kernel=kernel, stride=stride, padding=(t, l), ceil=lang_ceil, count_pad=count_pad)
    out = _infer(f"{kind}pool", args, shape, node.name)
    im.add(node, f"{kind}pool", _pool_text(kind, kernel, stride, (t, l), lang_ceil, count_pad), out, node.output[0])


def _gap(im: _Importer, node: Any, shape: Shape) -> None:
    _need4(shape, "global average pooling")
    im.add(node, "global_avgpool", "global_avgpool", _infer("global_avgpool", {}, shape, node.name), node.output[0])


def _flat(im: _Importer, node: Any, shape: Shape, out: list[Any]) -> None:
    """A Flatten or Reshape to ``out``: the language's flatten if it is [N, C*H*W], else refused."""
    features = math.prod(_fixed(shape))
    if len(out) != 2 or out[1] != features or out[0] is not BATCH:
        raise _Unsupported(f"it makes {_shape_text(out)} of {format_shape(shape)}: only [N, C*H*W] (a flatten "
                           "of each image) is expressible")
    if len(shape) == 2:
        im.remove(node, "it keeps the shape")
        return
    im.add(node, "flatten", "flatten", _infer("flatten", {}, shape, node.name), node.output[0])


def _shape_text(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _flatten(im: _Importer, node: Any, shape: Shape) -> None:
    axis = int(_attrs(node).get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 0:
        raise _Unsupported("axis=0 flattens the batch into one row")
    lead = _fixed(shape)[:axis - 1]
    _flat(im, node, shape, [BATCH if all(d == 1 for d in lead) else "N*" + "*".join(map(str, lead)),
                            math.prod(_fixed(shape)[axis - 1:])])


def _reshape(im: _Importer, node: Any, shape: Shape) -> None:
    target = im.static.get(im.resolve(node.input[1])) if len(node.input) > 1 else None
    if target is None:
        raise _Unsupported("its target shape is computed from something other than the input's shape")
    allowzero = int(_attrs(node).get("allowzero", 0))
    dims: list[Any] = []
    for i, t in enumerate(target.reshape(-1).tolist()):
        if t == 0 and not allowzero:
            t = BATCH if i == 0 else (_fixed(shape)[i - 1] if i < len(shape) else 0)
        elif i == 0 and im.batch is not None and t == im.batch:
            t = BATCH  # a fixed batch written as its value
        dims.append(t)
    known = [d for d in dims if d is not BATCH and d != -1]
    if any(not isinstance(d, (int, sy.Expr)) for d in known):
        raise _Unsupported(f"an unusual target shape {_shape_text(dims)}")
    if dims.count(-1) == 1:
        rest = math.prod(known)
        total = math.prod(_fixed(shape))  # per image
        if BATCH in dims:
            fill: Any = total if rest == 1 else total // rest if isinstance(total, int) and isinstance(rest, int) \
                and rest and total % rest == 0 else "?"
        else:  # the -1 takes the batch only where it is all the batch: [-1, C*H*W]
            fill = BATCH if rest == total else f"N*{total // rest}" if isinstance(total, int) and isinstance(
                rest, int) and rest and total % rest == 0 else "?"
        dims = [fill if d == -1 else d for d in dims]
    _flat(im, node, shape, dims)


def _dense(im: _Importer, node: Any, shape: Shape, weight: np.ndarray, bias: np.ndarray | None,
           extra: Sequence[Any] = ()) -> None:
    if len(shape) != 2:
        raise _Unsupported(f"a matrix product of a {len(shape)}-D tensor {format_shape(shape)}: the language's "
                           "dense takes [N, F] (flatten first)")
    if weight.ndim != 2 or weight.shape[1] != shape[1]:
        raise _Unsupported(f"a weight of shape {list(weight.shape)} for {shape[1]} input features")
    out_f = int(weight.shape[0])
    if bias is not None:
        if bias.ndim > 2 or bias.size not in (1, out_f) or (bias.ndim == 2 and bias.shape[0] != 1):
            raise _Unsupported(f"a bias of shape {list(bias.shape)} for {out_f} outputs (it must not depend "
                               "on the row)")
        bias = np.broadcast_to(bias.reshape(-1), (out_f,))
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    out = _infer("dense", dict(out=out_f, bias=bias is not None), shape, node.name)
    im.add(node, "dense", f"dense({out_f})" if bias is not None else f"dense({out_f}, bias=false)", out,
           (extra[-1] if extra else node).output[0], params, extra)


def _gemm(im: _Importer, node: Any, shape: Shape) -> None:
    a = _attrs(node)
    if a.get("transA", 0):
        raise _Unsupported("transA=1 transposes the batch of activations")
    b = im.floats(node, 1, "B operand")
    if b.ndim != 2:
        raise _Unsupported(f"a B operand of shape {list(b.shape)}")
    weight = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
    beta = float(a.get("beta", 1.0))
    c = im.floats(node, 2, "C operand") if len(node.input) > 2 and node.input[2] and beta != 0 else None
    _dense(im, node, shape, weight.astype(np.float32), None if c is None else (c * np.float32(beta)))


def _matmul(im: _Importer, node: Any, shape: Shape) -> None:
    b = im.floats(node, 1, "second operand")
    if b.ndim != 2:
        raise _Unsupported(f"a second operand of shape {list(b.shape)}")
    add = im.sole_consumer(node.output[0])
    bias = None
    if add is not None and add.op_type == "Add":
        other = [i for i in add.input if im.resolve(i) != node.output[0]]
        if len(other) == 1 and im.resolve(other[0]) in im.static:
            bias = im.floats(add, list(add.input).index(other[0]), "bias")
    _dense(im, node, shape, np.ascontiguousarray(b.T), bias, [add] if bias is not None else [])


def _activation(im: _Importer, node: Any, shape: Shape) -> None:
    kind = node.op_type.lower()
    im.add(node, kind, kind, shape, node.output[0])


def _softmax(im: _Importer, node: Any, shape: Shape) -> None:
    rank = len(shape)
    axis = int(_attrs(node).get("axis", 1 if im.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if im.opset < 13:
        rest = math.prod(_fixed(shape)[1:]) if axis == 1 else 0
        if axis != 1 or rest != 1:
            together = "the batch together" if axis == 0 else "several axes together"
            raise _Unsupported(f"Softmax(axis={axis}) before opset 13 normalises each row of the input flattened "
                               f"to 2-D at axis {axis} ({together}); the language's softmax normalises over the "
                               "channels (axis 1) alone")
    elif axis != 1:
        raise _Unsupported(f"Softmax over axis {axis} of {format_shape(shape)}: the language's softmax normalises "
                           "over axis 1 (channels or features)")
    im.add(node, "softmax", "softmax", shape, node.output[0])


def _dropout(im: _Importer, node: Any, shape: Shape) -> None:
    if len(node.output) > 1 and node.output[1] and im.consumers.get(node.output[1]):
        raise _Unsupported("its mask output is used")
    if len(node.input) > 2 and node.input[2]:
        training = im.static.get(im.resolve(node.input[2]))
        if training is None or bool(training):
            raise _Unsupported("it may run in training mode")
    im.remove(node, "the identity when running")


_DATA_OPS: dict[str, Any] = {
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _gap, "Flatten": _flatten,
    "Reshape": _reshape, "Gemm": _gemm, "MatMul": _matmul, "Relu": _activation, "Sigmoid": _activation,
    "Tanh": _activation, "Softmax": _softmax, "Dropout": _dropout,
    "Identity": lambda im, node, shape: im.remove(node, "the identity"),
}

_WHY_NOT = {
    "BatchNormalization": "batch normalisation is folded only into the Conv directly before it (as its one "
                          "consumer); the language has no batch-norm layer",
    "Add": "an element-wise sum of two computed tensors (a residual connection) or an Add not after a MatMul: "
           "a .conv model is a single pipeline",
    "Concat": "joins tensors: a .conv model is a single pipeline",
    "Pad": "the language pads only inside conv and pool layers",
    "LogSoftmax": "the language has softmax but no log-softmax",
    "GlobalMaxPool": "the language has global_avgpool but no global max pool",
    "LeakyRelu": "the language's activations are relu, sigmoid and tanh",
    "LRN": "the language has no local response normalisation",
}


# ----------------------------------------------------------------------------- the entry point


def load_model(path: str | os.PathLike) -> "onnx.ModelProto":
    """Read and check an .onnx file; a file that is not a valid model is an :class:`OnnxImportError`."""
    import onnx

    try:
        model = onnx.load(os.fspath(path))
    except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError, or a model too new for this onnx
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{path}: not a valid ONNX model ({first})") from None
    return model


def _dims(value_info: Any) -> tuple[int | str | None, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def import_onnx(source: "str | os.PathLike | onnx.ModelProto", name: str | None = None) -> Imported:
    """The ONNX model (a path or a ``ModelProto``) as a checked ``.conv`` program and its weights."""
    import onnx
    from onnx import numpy_helper

    model = source if isinstance(source, onnx.ModelProto) else load_model(source)
    origin = "the model" if isinstance(source, onnx.ModelProto) else os.path.basename(os.fspath(source))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxImportError(f"{origin}: a .conv model has one input and one output; this graph has "
                              f"{len(inputs)} input(s) ({', '.join(i.name for i in inputs)}) and {len(graph.output)} "
                              f"output(s) ({', '.join(o.name for o in graph.output)})")
    x = inputs[0]
    dims = _dims(x)
    if x.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or dims is None or len(dims) != 4 \
            or not (isinstance(dims[1], int) and dims[1] > 0) \
            or not all((isinstance(d, int) and d > 0) or (isinstance(d, str) and d.isidentifier() and d != "N")
                       for d in dims[2:]):
        shape = "unknown" if dims is None else _shape_text(["?" if d is None else d for d in dims])
        kind = onnx.TensorProto.DataType.Name(x.type.tensor_type.elem_type)
        raise OnnxImportError(f"{origin}: the input {x.name} must be float32 [N, C, H, W] with C fixed (the "
                              f"batch, height and width may be named symbols); it is {kind} {shape}")
    im = _Importer(model, opset, list(graph.node))
    im.batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    for init in graph.initializer:
        im.static[init.name] = numpy_helper.to_array(init)
    for node in im.nodes:
        for i in node.input:
            if i:
                im.consumers.setdefault(i, []).append(node)
    try:  # ONNX's own shapes, only to go on listing problems past a node we refuse
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in (*inferred.graph.value_info, *inferred.graph.output):
            d = _dims(vi)
            if d is not None and d and all(isinstance(v, int) for v in d[1:]):
                im.inferred[vi.name] = (N, *(int(v) for v in d[1:]))  # type: ignore[arg-type]
    except Exception:  # (inference is a convenience here; a failure only shortens the list)
        pass
    input_shape: Shape = (N, *(d if isinstance(d, int) else sy.sym(str(d)) for d in dims[1:]))
    im.cur, im.shape = x.name, input_shape
    im.shapes[x.name] = input_shape
    im.used.add(identifier(x.name, "x"))
    im.run()
    out = graph.output[0].name
    if not im.problems and im.resolve(out) != im.cur:
        im.problems.append(f"the graph's output {out} is not the end of the pipeline ({im.cur})")
    if not im.problems and not im.layers:
        im.problems.append("no node computes anything that a layer does, and a .conv model needs one layer")
    if im.problems:
        n = len(im.problems)
        raise OnnxImportError(f"{origin}: {n} node{'s' if n != 1 else ''} that a .conv program cannot express:",
                              im.problems)
    stem = None if isinstance(source, onnx.ModelProto) else os.path.splitext(origin)[0]
    model_name = name or _model_name(graph.name, stem)
    header = [f"Imported from {origin} by convdsl import (ONNX opset {opset}"
              + (f", produced by {model.producer_name} {model.producer_version}".rstrip() if model.producer_name
                 else "") + ").",
              "Weights: NAME.weight / NAME.bias in PyTorch layouts, in the .npz beside this file."]
    if im.removed:
        header.append(f"Removed: {len(im.removed)} node(s) that compute nothing when running "
                      "(Dropout, Identity, shape arithmetic).")
    result = Imported(model_name, identifier(x.name, "x"), input_shape, tuple(im.layers), im.weights,
                      tuple(im.removed), tuple(header))
    _check(result)
    return result


def _model_name(graph_name: str, stem: str | None) -> str:
    """The graph's name unless an exporter's placeholder, else the file's, else ``Model``."""
    generic = {"", "main_graph", "torch_jit", "torch-jit-export", "graph", "model"}
    base = graph_name if graph_name not in generic else (stem or "Model")
    return identifier(base.replace("/", "_"), "Model")


def _check(m: Imported) -> None:
    """The text through the checker: a program that does not check is the importer's bug, said so."""
    from .. import check_source

    checked = check_source(m.text, f"{m.name}.conv")
    if not checked.ok:
        raise AssertionError("convdsl import wrote a program that does not check:\n" + checked.render()
                             + "\n" + m.text)


def write_outputs(m: Imported, conv_path: str, weights_path: str) -> None:
    """Both files, each written beside itself and renamed into place: no half-written output.
    The weights go through ``convdsl.save_weights`` (``.npz`` or ``.safetensors`` by the extension)."""
    import tempfile

    from .. import save_weights

    save_weights(weights_path, m.weights)
    folder = os.path.dirname(os.path.abspath(conv_path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".convdsl-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(m.text.encode())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, conv_path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def summarize(m: Imported) -> Iterable[str]:
    n = sum(int(v.size) for v in m.weights.values())
    yield (f"model {m.name}: {len(m.layers)} layers, {n:,} parameters, input {format_shape(m.input_shape)}, "
           f"output {format_shape(m.output_shape)}")
    for layer in m.layers:
        if layer.note:
            yield f"  {layer.name}: {layer.note}"
