"""The same network in ``torch.nn``: for differential tests and benchmarks.

``to_torch(model, weights)`` builds an ``nn.Sequential`` with the given
PyTorch-layout weights (``NAME.weight`` / ``NAME.bias``).  Asymmetric conv
padding is an ``nn.ZeroPad2d`` before an unpadded ``nn.Conv2d``; pools use
PyTorch's own padding and ``ceil_mode`` (avg with ``count_include_pad`` from
``count_pad``); ``dropout`` is ``nn.Dropout(p)`` (the module is returned in eval
mode, where it is the identity, as convdsl runs it).  One builder per op, in
``_BUILDERS`` under the op registry's ``torch`` name (``core/ops.py``).  torch
is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..core.model import CheckedModel, ConcreteModel, Layer, Op
from ..core.ops import Activation, Conv, Dense, Dropout, Pool, definition

if TYPE_CHECKING:
    import torch


def to_torch(model: CheckedModel | ConcreteModel, weights: dict[str, np.ndarray]) -> "torch.nn.Module":
    import torch
    from torch import nn

    if isinstance(model, ConcreteModel):
        pairs = [(ly, op) for ly, _, _, op in model.layers]
    else:
        pairs = [(ly, ly.op) for ly in model.layers]
    mods: list[nn.Module] = []
    for layer, op in pairs:
        mods.extend(_BUILDERS[definition(op).torch](layer, op, weights))
    return nn.Sequential(*mods).eval()


Builder = Callable[[Layer, Op, dict[str, np.ndarray]], "list[torch.nn.Module]"]


def _conv(layer: Layer, op: Op, weights: dict[str, np.ndarray]) -> "list[torch.nn.Module]":
    import torch
    from torch import nn

    assert isinstance(op, Conv)
    mods: list[nn.Module] = []
    t, b, l, r = op.padding
    if (t, b, l, r) != (0, 0, 0, 0):
        mods.append(nn.ZeroPad2d((l, r, t, b)))
    w = weights[f"{layer.name}.weight"]
    # Sizes from the array, so a model with symbolic channels works too; skip_init
    # spares initialising weights that are overwritten at once (VGG-11: 128 M of them).
    conv = torch.nn.utils.skip_init(nn.Conv2d, w.shape[1] * op.groups, op.c_out, op.kernel, stride=op.stride,
                                    padding=0, dilation=op.dilation, groups=op.groups, bias=op.bias)
    return mods + [_with_weights(conv, layer.name, weights)]


def _pool(layer: Layer, op: Op, weights: dict[str, np.ndarray]) -> "list[torch.nn.Module]":
    from torch import nn

    assert isinstance(op, Pool)
    if op.kind == "max":
        return [nn.MaxPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.ceil)]
    return [nn.AvgPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.ceil, count_include_pad=op.count_pad)]


def _dense(layer: Layer, op: Op, weights: dict[str, np.ndarray]) -> "list[torch.nn.Module]":
    import torch
    from torch import nn

    assert isinstance(op, Dense)
    lin = torch.nn.utils.skip_init(nn.Linear, weights[f"{layer.name}.weight"].shape[1], op.out_features,
                                   bias=op.bias)
    return [_with_weights(lin, layer.name, weights)]


def _activation(layer: Layer, op: Op, weights: dict[str, np.ndarray]) -> "list[torch.nn.Module]":
    from torch import nn

    assert isinstance(op, Activation)
    return [{"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[op.kind]()]


def _simple(make: Callable[[Op], "torch.nn.Module"]) -> Builder:
    return lambda layer, op, weights: [make(op)]


def _dropout(op: Op) -> "torch.nn.Module":
    from torch import nn

    assert isinstance(op, Dropout)
    return nn.Dropout(op.p)


def _nn(name: str, *args: object) -> Callable[[Op], "torch.nn.Module"]:
    def make(op: Op) -> "torch.nn.Module":
        from torch import nn

        return getattr(nn, name)(*args)

    return make


_BUILDERS: dict[str, Builder] = {
    "conv": _conv,
    "pool": _pool,
    "global_avgpool": _simple(_nn("AdaptiveAvgPool2d", 1)),
    "flatten": _simple(_nn("Flatten")),
    "dense": _dense,
    "activation": _activation,
    "softmax": _simple(_nn("Softmax", 1)),
    "dropout": _simple(_dropout),
}
"""One builder per op, under the op registry's ``torch`` name (``core/ops.py``)."""


def _with_weights(module: "torch.nn.Module", name: str, weights: dict[str, np.ndarray]) -> "torch.nn.Module":
    import torch

    for key in ("weight", "bias"):
        if getattr(module, key, None) is not None:
            arr = np.ascontiguousarray(weights[f"{name}.{key}"], dtype=np.float32)
            getattr(module, key).data = torch.from_numpy(arr)
    return module
