"""The same network in ``torch.nn``: for differential tests and benchmarks.

``to_torch(model, weights)`` builds an ``nn.Sequential`` with the given
PyTorch-layout weights (``NAME.weight`` / ``NAME.bias``).  Asymmetric conv
padding is an ``nn.ZeroPad2d`` before an unpadded ``nn.Conv2d``; pools use
PyTorch's own padding and ``ceil_mode`` (avg with ``count_include_pad=True``,
the language's meaning).  torch is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

import numpy as np

from ..core.model import Activation, CheckedModel, ConcreteModel, Conv, Dense, Flatten, GlobalAvgPool, Pool, Softmax

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
        match op:
            case Conv(c_out=c_out, kernel=k, stride=s, padding=(t, b, l, r), dilation=d, groups=g,
                      bias=bias):
                if (t, b, l, r) != (0, 0, 0, 0):
                    mods.append(nn.ZeroPad2d((l, r, t, b)))
                w = weights[f"{layer.name}.weight"]
                # Sizes from the array, so a model with symbolic channels works too; skip_init
                # spares initialising weights that are overwritten at once (VGG-11: 128 M of them).
                conv = torch.nn.utils.skip_init(nn.Conv2d, w.shape[1] * g, c_out, k, stride=s, padding=0,
                                                dilation=d, groups=g, bias=bias)
                mods.append(_with_weights(conv, layer.name, weights))
            case Pool(kind="max", kernel=k, stride=s, padding=p, ceil=c):
                mods.append(nn.MaxPool2d(k, s, p, ceil_mode=c))
            case Pool(kind="avg", kernel=k, stride=s, padding=p, ceil=c):
                mods.append(nn.AvgPool2d(k, s, p, ceil_mode=c, count_include_pad=True))
            case Pool():
                raise AssertionError(op)
            case GlobalAvgPool():
                mods.append(nn.AdaptiveAvgPool2d(1))
            case Flatten():
                mods.append(nn.Flatten())
            case Dense(out_features=fo, bias=bias):
                lin = torch.nn.utils.skip_init(nn.Linear, weights[f"{layer.name}.weight"].shape[1], fo, bias=bias)
                mods.append(_with_weights(lin, layer.name, weights))
            case Activation(kind="relu"):
                mods.append(nn.ReLU())
            case Activation(kind="sigmoid"):
                mods.append(nn.Sigmoid())
            case Activation(kind="tanh"):
                mods.append(nn.Tanh())
            case Activation():
                raise AssertionError(op)
            case Softmax():
                mods.append(nn.Softmax(dim=1))
            case _:
                assert_never(op)
    return nn.Sequential(*mods).eval()


def _with_weights(module: "torch.nn.Module", name: str, weights: dict[str, np.ndarray]) -> "torch.nn.Module":
    import torch

    for key in ("weight", "bias"):
        if getattr(module, key, None) is not None:
            arr = np.ascontiguousarray(weights[f"{name}.{key}"], dtype=np.float32)
            getattr(module, key).data = torch.from_numpy(arr)
    return module
