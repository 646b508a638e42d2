"""The same network as an ONNX graph: for ONNX Runtime benchmarks and differential tests.

``to_onnx(model, weights, sizes)`` builds an ``onnx.ModelProto`` directly from
a checked model with ``onnx.helper`` (no PyTorch in the loop), with the given
PyTorch-layout weights (``NAME.weight`` / ``NAME.bias``) as initializers:

* ``conv``: one ``Conv`` with ``pads = [top, left, bottom, right]`` (ONNX's
  begin-then-end order, so asymmetric padding needs no separate ``Pad``),
  ``strides``, ``dilations``, ``group``;
* ``maxpool`` / ``avgpool``: ``MaxPool`` / ``AveragePool`` with symmetric
  ``pads``, ``ceil_mode`` and (average) ``count_include_pad`` from ``count_pad``
  (1, the language's default: PyTorch's divisor, the window clipped to the
  padded input; 0: the real cells), windows that would start in the
  bottom/right padding dropped;
* ``global_avgpool``: ``GlobalAveragePool``; ``flatten``: ``Flatten(axis=1)``;
* ``dense``: ``Gemm(transB=1)``; ``relu`` / ``sigmoid`` / ``tanh``: the ops of
  those names; ``softmax``: ``Softmax(axis=1)``; ``dropout``: ``Dropout`` with
  its ratio (an inference engine runs it as the identity, as convdsl does).

One exporter per op, in ``_EXPORTERS`` under the op registry's ``onnx`` name
(``core/ops.py``).

The input is ``x`` and the output ``y``; the batch axis is the symbolic
dimension ``N``, every other size is bound (symbols such as ``H`` from
``sizes``, default ``valid_for``).  Opset 17 by default.  onnx is imported
lazily; onnxruntime is not needed to build a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..core import symbolic as sy
from ..core.model import CheckedModel, ConcreteModel, Layer, Op
from ..core.ops import Activation, Conv, Dense, Dropout, Pool, definition, out_size

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 17


def _concrete(model: CheckedModel | ConcreteModel, sizes: Mapping[str, int] | None) -> ConcreteModel:
    if isinstance(model, ConcreteModel):
        return model
    return model.bind(model.sizes(sizes))


Rows = tuple[tuple[Layer, tuple[sy.Dim, ...], tuple[sy.Dim, ...], Op], ...]


def symbolic_obstacle(model: CheckedModel, sizes: Mapping[str, int] | None = None) -> str | None:
    """Why the sizes that ``sizes`` leaves open cannot stay symbolic in an ONNX graph (None if they can).

    An ONNX initializer has a fixed shape, so a weight whose shape depends on a symbol (a dense
    layer after a flatten of an H x W map, a conv over C input channels) needs that symbol fixed.
    Everything else the exporters write holds for every size: pads, strides and kernels are
    attributes, and a ceil-mode pool over a symbolic axis uses opset 22's rule, PyTorch's."""
    env = _given(model, sizes)
    for name, shape in model.weight_shapes().items():
        free = sorted(set().union(*(sy.free_symbols(sy.substitute(d, env)) for d in shape)) - {"N"})
        if free:
            return f"the shape of {name} depends on {', '.join(free)}"
    return None


def _given(model: CheckedModel, sizes: Mapping[str, int] | None) -> dict[str, int]:
    """The sizes fixed for the graph: those given, and those a ``where H == 32`` fixes."""
    return {k: v for k, v in {**model.fixed, **(sizes or {})}.items() if k != "N"}


def _partial(model: CheckedModel, sizes: Mapping[str, int] | None) -> tuple[tuple[sy.Dim, ...], Rows]:
    """The per-image shapes with the sizes given bound and the others left as expressions."""
    env: dict[str, sy.Dim] = dict(_given(model, sizes))

    def sub(shape: tuple[sy.Dim, ...]) -> tuple[sy.Dim, ...]:
        return tuple(sy.substitute(d, env) for d in shape[1:])

    return sub(model.input_shape), tuple((ly, sub(ly.in_shape), sub(ly.out_shape), ly.op) for ly in model.layers)


def _dim(d: sy.Dim) -> int | str:
    return d if isinstance(d, int) else sy.to_str(d)


def _safe(name: str) -> str:
    return name.replace(".", "_")


def to_onnx(model: CheckedModel | ConcreteModel, weights: Mapping[str, np.ndarray],
            sizes: Mapping[str, int] | None = None, *, opset: int | None = None,
            input_name: str = "x", output_name: str = "y", symbolic: bool = False) -> "onnx.ModelProto":
    """The network as a checked ONNX model with a symbolic batch dimension ``N``.

    ``symbolic``: the sizes that ``sizes`` does not give (``H``, ``W``) stay symbolic too, the
    input's dimensions named after them and the output's written as their expressions
    (``H // 4 - 2``); a ``ValueError`` where :func:`symbolic_obstacle` says they cannot.

    ``opset``: by default :data:`DEFAULT_OPSET`, or 22 where a ceil-mode pool needs that opset's
    rule (:func:`_ceil_mode_needs_opset_22`); an explicit lower opset for such a network is a
    ``ValueError``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if symbolic and isinstance(model, CheckedModel):
        why = symbolic_obstacle(model, sizes)
        if why is not None:
            raise ValueError(f"the sizes cannot stay symbolic in ONNX: {why}")
        in_dims, rows = _partial(model, sizes)
        name, out_dims = model.name, rows[-1][2] if rows else in_dims
    else:
        cm = _concrete(model, sizes)
        in_dims, rows, name, out_dims = cm.input_shape, cm.layers, cm.model.name, cm.output_shape
    needs_22 = [layer.name for layer, in_shape, _, op in rows if _ceil_mode_needs_opset_22(op, in_shape)]
    if opset is None:
        opset = 22 if needs_22 else DEFAULT_OPSET
    elif needs_22 and opset < 22:
        raise ValueError(f"{needs_22[0]}: ceil mode adds a last window on one axis and drops one on the other, "
                         f"which ONNX expresses from opset 22 on (asked for {opset})")
    g = _Graph(helper, numpy_helper, weights, opset)
    cur = input_name
    last = len(rows) - 1
    for i, (layer, in_shape, _out_shape, op) in enumerate(rows):
        out = output_name if i == last else _safe(layer.name)
        _EXPORTERS[definition(op).onnx](g, layer, op, in_shape, cur, out)
        cur = out
    nodes, inits = g.nodes, g.inits
    if not rows:  # an empty model is the identity
        nodes.append(helper.make_node("Identity", [input_name], [output_name], name="identity"))

    x_info = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *map(_dim, in_dims)])
    y_info = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", *map(_dim, out_dims)])
    graph = helper.make_graph(nodes, name, [x_info], [y_info], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="convdsl")
    proto.ir_version = min(proto.ir_version, 8 if opset <= 17 else proto.ir_version)
    onnx.checker.check_model(proto, full_check=True)
    return proto


@dataclass
class _Graph:
    """The graph being built: nodes, initializers, and the weights they come from."""

    helper: Any
    numpy_helper: Any
    weights: Mapping[str, np.ndarray]
    opset: int
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)

    def node(self, op_type: str, inputs: list[str], out: str, layer: Layer, **attrs: Any) -> None:
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=_safe(layer.name), **attrs))

    def params(self, layer: Layer, bias: bool) -> list[str]:
        """The initializer names of the layer's weight (and bias)."""
        names = []
        for key in ("weight", "bias") if bias else ("weight",):
            name = f"{_safe(layer.name)}.{key}"
            arr = np.ascontiguousarray(self.weights[f"{layer.name}.{key}"], dtype=np.float32)
            self.inits.append(self.numpy_helper.from_array(arr, name))
            names.append(name)
        return names


def _conv(g: _Graph, layer: Layer, op: Op, shape: tuple[sy.Dim, ...], x: str, y: str) -> None:
    assert isinstance(op, Conv)
    t, b, l, r = op.padding
    g.node("Conv", [x, *g.params(layer, op.bias)], y, layer, kernel_shape=list(op.kernel),
           strides=list(op.stride), pads=[t, l, b, r], dilations=list(op.dilation), group=op.groups)


def _ceil_mode_needs_opset_22(op: Op, shape: tuple[sy.Dim, ...]) -> bool:
    """Before opset 22 ONNX's ceil mode keeps a last window that starts in the end padding, which
    PyTorch (and the language) drop.  Where ceil mode adds no window to floor mode the pooling is
    floor mode's (exported so); where it adds one that starts inside the input, every opset
    agrees.  Only an axis that adds a window beside one that would keep a dropped one needs 22, and
    so does a symbolic axis, which may be either."""
    if not isinstance(op, Pool) or not op.ceil:
        return False
    if not all(isinstance(n, int) for n in shape[1:]):
        return True
    axes = list(zip(shape[1:], op.kernel, op.stride, op.padding))
    adds = [out_size(n, k, s, p, p, 1, True) != out_size(n, k, s, p, p, 1, False) for n, k, s, p in axes]
    keeps = [out_size(n, k, s, p, p, 1, True) != -(-(n + 2 * p - k) // s) + 1 for n, k, s, p in axes]
    return any(adds) and any(keeps)


def _pool(g: _Graph, layer: Layer, op: Op, shape: tuple[sy.Dim, ...], x: str, y: str) -> None:
    assert isinstance(op, Pool)
    ph, pw = op.padding
    # (over a symbolic size the graph is opset 22, whose ceil mode is the language's: kept as given)
    adds_window = not all(isinstance(n, int) for n in shape[1:]) or any(
        out_size(n, k, s, p, p, 1, True) != out_size(n, k, s, p, p, 1, False)
        for n, k, s, p in zip(shape[1:], op.kernel, op.stride, op.padding))
    attrs: dict[str, Any] = dict(kernel_shape=list(op.kernel), strides=list(op.stride), pads=[ph, pw, ph, pw],
                                 ceil_mode=int(op.ceil and (adds_window or g.opset >= 22)))
    if op.kind == "max":
        g.node("MaxPool", [x], y, layer, **attrs)
    else:
        g.node("AveragePool", [x], y, layer, count_include_pad=int(op.count_pad), **attrs)


def _dense(g: _Graph, layer: Layer, op: Op, shape: tuple[sy.Dim, ...], x: str, y: str) -> None:
    assert isinstance(op, Dense)
    g.node("Gemm", [x, *g.params(layer, op.bias)], y, layer, transB=1)


def _activation(g: _Graph, layer: Layer, op: Op, shape: tuple[sy.Dim, ...], x: str, y: str) -> None:
    assert isinstance(op, Activation)
    g.node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[op.kind], [x], y, layer)


def _dropout(g: _Graph, layer: Layer, op: Op, shape: tuple[sy.Dim, ...], x: str, y: str) -> None:
    assert isinstance(op, Dropout)
    if g.opset >= 12:  # the ratio became an input; training_mode defaults to false
        ratio = f"{_safe(layer.name)}.ratio"
        g.inits.append(g.numpy_helper.from_array(np.array(op.p, dtype=np.float32), ratio))
        g.node("Dropout", [x, ratio], y, layer)
    else:
        g.node("Dropout", [x], y, layer, ratio=op.p)


_EXPORTERS: dict[str, Callable[[_Graph, Layer, Op, tuple[sy.Dim, ...], str, str], None]] = {
    "conv": _conv,
    "pool": _pool,
    "global_avgpool": lambda g, layer, op, shape, x, y: g.node("GlobalAveragePool", [x], y, layer),
    "flatten": lambda g, layer, op, shape, x, y: g.node("Flatten", [x], y, layer, axis=1),
    "dense": _dense,
    "activation": _activation,
    "softmax": lambda g, layer, op, shape, x, y: g.node("Softmax", [x], y, layer, axis=1),
    "dropout": _dropout,
}
"""One exporter per op, under the op registry's ``onnx`` name (``core/ops.py``)."""


def save_onnx(model: CheckedModel | ConcreteModel, weights: Mapping[str, np.ndarray], path: str,
              sizes: Mapping[str, int] | None = None, *, opset: int | None = None) -> None:
    import onnx

    onnx.save(to_onnx(model, weights, sizes, opset=opset), path)
