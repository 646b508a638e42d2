"""The same network as an ONNX graph: for ONNX Runtime benchmarks and differential tests.

``to_onnx(model, weights, sizes)`` builds an ``onnx.ModelProto`` directly from
a checked model with ``onnx.helper`` (no PyTorch in the loop), with the given
PyTorch-layout weights (``NAME.weight`` / ``NAME.bias``) as initializers:

* ``conv``: one ``Conv`` with ``pads = [top, left, bottom, right]`` (ONNX's
  begin-then-end order, so asymmetric padding needs no separate ``Pad``),
  ``strides``, ``dilations``, ``group``;
* ``maxpool`` / ``avgpool``: ``MaxPool`` / ``AveragePool`` with symmetric
  ``pads``, ``ceil_mode`` and (average) ``count_include_pad = 1`` — the
  language's meaning, PyTorch's divisor: the window clipped to the padded
  input, windows that would start in the bottom/right padding dropped;
* ``global_avgpool``: ``GlobalAveragePool``; ``flatten``: ``Flatten(axis=1)``;
* ``dense``: ``Gemm(transB=1)``; ``relu`` / ``sigmoid`` / ``tanh``: the ops of
  those names; ``softmax``: ``Softmax(axis=1)``.

The input is ``x`` and the output ``y``; the batch axis is the symbolic
dimension ``N``, every other size is bound (symbols such as ``H`` from
``sizes``, default ``valid_for``).  Opset 17 by default.  onnx is imported
lazily; onnxruntime is not needed to build a graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, assert_never

import numpy as np

from ..core.model import Activation, CheckedModel, ConcreteModel, Conv, Dense, Flatten, GlobalAvgPool, Pool, Softmax

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 17


def _concrete(model: CheckedModel | ConcreteModel, sizes: Mapping[str, int] | None) -> ConcreteModel:
    if isinstance(model, ConcreteModel):
        return model
    return model.bind(model.sizes(sizes))


def _safe(name: str) -> str:
    return name.replace(".", "_")


def to_onnx(model: CheckedModel | ConcreteModel, weights: Mapping[str, np.ndarray],
            sizes: Mapping[str, int] | None = None, *, opset: int = DEFAULT_OPSET,
            input_name: str = "x", output_name: str = "y") -> "onnx.ModelProto":
    """The network as a checked ONNX model with a symbolic batch dimension ``N``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cm = _concrete(model, sizes)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    cur = input_name
    last = len(cm.layers) - 1

    def init(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    for i, (layer, _in_shape, _out_shape, op) in enumerate(cm.layers):
        out = output_name if i == last else _safe(layer.name)
        nm = _safe(layer.name)
        match op:
            case Conv(kernel=(kh, kw), stride=(sh, sw), padding=(t, b, l, r), dilation=(dh, dw), groups=g,
                      bias=bias):
                ins = [cur, init(f"{nm}.weight", weights[f"{layer.name}.weight"])]
                if bias:
                    ins.append(init(f"{nm}.bias", weights[f"{layer.name}.bias"]))
                nodes.append(helper.make_node("Conv", ins, [out], name=nm, kernel_shape=[kh, kw],
                                              strides=[sh, sw], pads=[t, l, b, r], dilations=[dh, dw],
                                              group=g))
            case Pool(kind=kind, kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil=ceil):
                attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                             ceil_mode=int(ceil))
                if kind == "max":
                    nodes.append(helper.make_node("MaxPool", [cur], [out], name=nm, **attrs))
                else:
                    nodes.append(helper.make_node("AveragePool", [cur], [out], name=nm, count_include_pad=1,
                                                  **attrs))
            case GlobalAvgPool():
                nodes.append(helper.make_node("GlobalAveragePool", [cur], [out], name=nm))
            case Flatten():
                nodes.append(helper.make_node("Flatten", [cur], [out], name=nm, axis=1))
            case Dense(bias=bias):
                ins = [cur, init(f"{nm}.weight", weights[f"{layer.name}.weight"])]
                if bias:
                    ins.append(init(f"{nm}.bias", weights[f"{layer.name}.bias"]))
                nodes.append(helper.make_node("Gemm", ins, [out], name=nm, transB=1))
            case Activation(kind=kind):
                onnx_op = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[kind]
                nodes.append(helper.make_node(onnx_op, [cur], [out], name=nm))
            case Softmax():
                nodes.append(helper.make_node("Softmax", [cur], [out], name=nm, axis=1))
            case _:
                assert_never(op)
        cur = out
    if not cm.layers:  # an empty model is the identity
        nodes.append(helper.make_node("Identity", [input_name], [output_name], name="identity"))

    x_info = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *cm.input_shape])
    y_info = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", *cm.output_shape])
    graph = helper.make_graph(nodes, cm.model.name, [x_info], [y_info], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="convdsl")
    proto.ir_version = min(proto.ir_version, 8 if opset <= 17 else proto.ir_version)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(model: CheckedModel | ConcreteModel, weights: Mapping[str, np.ndarray], path: str,
              sizes: Mapping[str, int] | None = None, *, opset: int = DEFAULT_OPSET) -> None:
    import onnx

    onnx.save(to_onnx(model, weights, sizes, opset=opset), path)
