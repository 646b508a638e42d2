"""Build checked models directly (no parser/checker) for back-end tests.

``net((C, H, W), conv(6, 5, padding=2), act("sigmoid"), pool("avg", 2), ...)``
computes every output shape with LANGUAGE.md's formula and returns a
:class:`convdsl.core.model.CheckedModel` whose shapes are plain ints (the batch
axis is a placeholder ``1``; the compiled code takes N at run time).
"""

from __future__ import annotations

from typing import Callable

from convdsl.core.diagnostics import Span
from convdsl.core.model import Activation, CheckedModel, Conv, Dense, Flatten, GlobalAvgPool, Layer, Op, Pool, Softmax

SPAN = Span("<test>", 1, 1, 1, 2)
Shape = tuple[int, ...]  # per image: (C, H, W) or (F,)
LayerSpec = tuple[str, Callable[[Shape], tuple[Op, Shape]]]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(n: int, k: int, s: int, d: int, before: int, after: int) -> int:
    return (n + before + after - d * (k - 1) - 1) // s + 1


def pool_out_size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    if not ceil:
        return out_size(n, k, s, 1, p, p)
    o = -(-(n + 2 * p - k) // s) + 1
    if (o - 1) * s >= n + p:  # last window would start in the bottom/right padding
        o -= 1
    return o


def conv_padding(padding, kernel, dilation) -> tuple[int, int, int, int]:
    (kh, kw), (dh, dw) = _pair(kernel), _pair(dilation)
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def conv(c_out: int, kernel=3, stride=1, padding=0, dilation=1, groups=1, bias=True) -> LayerSpec:
    def make(shape: Shape):
        c, h, w = shape
        k, s, d = _pair(kernel), _pair(stride), _pair(dilation)
        p = conv_padding(padding, k, d)
        op = Conv(c, c_out, k, s, p, d, groups, bias)
        return op, (c_out, out_size(h, k[0], s[0], d[0], p[0], p[1]), out_size(w, k[1], s[1], d[1], p[2], p[3]))
    return "conv", make


def pool(kind: str, kernel=2, stride=None, padding=0, ceil=False) -> LayerSpec:
    def make(shape: Shape):
        c, h, w = shape
        k = _pair(kernel)
        s = _pair(stride) if stride is not None else k
        p = _pair(padding)
        op = Pool(kind, k, s, p, ceil)
        return op, (c, pool_out_size(h, k[0], s[0], p[0], ceil), pool_out_size(w, k[1], s[1], p[1], ceil))
    return f"{kind}pool", make


def gap() -> LayerSpec:
    return "global_avgpool", lambda shape: (GlobalAvgPool(), (shape[0], 1, 1))


def flatten() -> LayerSpec:
    def make(shape: Shape):
        f = 1
        for d in shape:
            f *= d
        return Flatten(), (f,)
    return "flatten", make


def dense(out: int, bias=True) -> LayerSpec:
    return "dense", lambda shape: (Dense(shape[0], out, bias), (out,))


def act(kind: str) -> LayerSpec:
    return kind, lambda shape: (Activation(kind), shape)


def softmax() -> LayerSpec:
    return "softmax", lambda shape: (Softmax(), shape)


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
