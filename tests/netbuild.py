"""Build checked models directly (no parser/checker) for back-end tests.

``net((C, H, W), conv(6, 5, padding=2), act("sigmoid"), pool("avg", 2), ...)``
computes every output shape with LANGUAGE.md's formula and returns a
:class:`convdsl.core.model.CheckedModel` whose shapes are plain ints (the batch
axis is a placeholder ``1``; the compiled code takes N at run time).
"""

from __future__ import annotations

from typing import Callable

from convdsl.core.diagnostics import Span
from convdsl.core.model import CheckedModel, Layer, Op
from convdsl.core import ops
from convdsl.core.ops import OPS, Context

SPAN = Span("<test>", 1, 1, 1, 2)
Shape = tuple[int, ...]  # per image: (C, H, W) or (F,)
LayerSpec = tuple[str, Callable[[Shape], tuple[Op, Shape]]]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _op(kind: str, **args) -> LayerSpec:
    """An op of the registry with arguments in the resolved form its rule takes (core/ops.py);
    the shape rule is the registry's, as the checker's is."""
    d = OPS[kind]
    resolved = {p.name: args.get(p.name, p.default) for p in d.params}

    def make(shape: Shape):
        op, out = d.infer(resolved, (1, *shape), Context(kind))
        return op, tuple(out[1:])
    return kind, make


def _padding_arg(padding) -> "tuple[int, int, int, int] | str":
    if padding == "same":
        return "same"
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def conv_padding(padding, kernel, dilation) -> tuple[int, int, int, int]:
    """The four pads a conv's padding argument comes to (``same`` sized for kernel and dilation)."""
    (kh, kw), (dh, dw) = _pair(kernel), _pair(dilation)
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    return _padding_arg(padding)  # type: ignore[return-value]


def out_size(n: int, k: int, s: int, d: int, before: int, after: int) -> int:
    return ops.out_size(n, k, s, before, after, d, False)  # type: ignore[return-value]


def pool_out_size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    return ops.out_size(n, k, s, p, p, 1, ceil)  # type: ignore[return-value]


def conv(c_out: int, kernel=3, stride=1, padding=0, dilation=1, groups=1, bias=True) -> LayerSpec:
    return _op("conv", c_out=c_out, kernel=_pair(kernel), stride=_pair(stride), padding=conv_padding(padding, kernel, dilation),
               dilation=_pair(dilation), groups=groups, bias=bias)


def pool(kind: str, kernel=2, stride=None, padding=0, ceil=False, count_pad=True) -> LayerSpec:
    extra = {"count_pad": count_pad} if kind == "avg" else {}
    return _op(f"{kind}pool", kernel=_pair(kernel), stride=None if stride is None else _pair(stride),
               padding=_pair(padding), ceil=ceil, **extra)


def gap() -> LayerSpec:
    return _op("global_avgpool")


def flatten() -> LayerSpec:
    return _op("flatten")


def dense(out: int, bias=True) -> LayerSpec:
    return _op("dense", out=out, bias=bias)


def act(kind: str) -> LayerSpec:
    return _op(kind)


def softmax() -> LayerSpec:
    return _op("softmax")


def dropout(p: float = 0.5) -> LayerSpec:
    return _op("dropout", p=p)


def net(input_shape: Shape, *layers: LayerSpec, name: str = "Net") -> CheckedModel:
    shape = tuple(input_shape)
    counts: dict[str, int] = {}
    built = []
    for kind, make in layers:
        op, out = make(shape)
        counts[kind] = counts.get(kind, 0) + 1
        lname = f"{kind}{counts[kind]}"
        built.append(Layer(lname, op, (1, *shape), (1, *out), 0, 0, kind, SPAN))
        shape = out
    return CheckedModel(name, "x", (1, *input_shape), (1, *shape), tuple(built), {"N": 1})


def lenet(relu: bool = False) -> CheckedModel:
    a = "relu" if relu else "sigmoid"
    p = "max" if relu else "avg"
    return net((1, 28, 28),
               conv(6, 5, padding=2), act(a), pool(p, 2, 2),
               conv(16, 5), act(a), pool(p, 2, 2),
               flatten(), dense(120), act(a), dense(84), act(a), dense(10), name="LeNet")
