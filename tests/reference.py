"""A plain numpy reference for every op, written from the definitions.

Loops run over output positions; each step is vectorised over the batch and
channels with numpy.  Clarity over speed.  ``run_reference(cm, weights, x)``
runs a whole :class:`~convdsl.core.model.ConcreteModel` on ``x`` ``[N, C, H, W]``.
"""

from __future__ import annotations

import numpy as np

from typing import Callable

from convdsl.core.model import ConcreteModel, Op
from convdsl.core.ops import Conv, Dense, definition


def conv2d(x, w, b, stride, padding, dilation, groups):
    """Cross-correlation summed over each group's input channels (float64 accumulation)."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    t, bt, l, r = padding
    xp = np.zeros((N, C, H + t + bt, W + l + r))
    xp[:, :, t:t + H, l:l + W] = x
    OH = (H + t + bt - dh * (KH - 1) - 1) // sh + 1
    OW = (W + l + r - dw * (KW - 1) - 1) // sw + 1
    Og = O // groups
    y = np.zeros((N, O, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            # window[n, c, kh, kw] = xp[n, c, oh*sh + kh*dh, ow*sw + kw*dw]
            win = xp[:, :, oh * sh:oh * sh + dh * (KH - 1) + 1:dh, ow * sw:ow * sw + dw * (KW - 1) + 1:dw]
            for g in range(groups):
                wg = w[g * Og:(g + 1) * Og].astype(np.float64)
                xg = win[:, g * Cg:(g + 1) * Cg]
                y[:, g * Og:(g + 1) * Og, oh, ow] = np.einsum("nckl,ockl->no", xg, wg)
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    return y


def _pool_len(n, k, s, p, ceil):
    if not ceil:
        return (n + 2 * p - k) // s + 1
    o = -(-(n + 2 * p - k) // s) + 1
    if (o - 1) * s >= n + p:
        o -= 1
    return o


def pool_windows(shape, kernel, stride, padding, ceil):
    """Each output cell's window: ``(oh, ow, (h0, h1, w0, w1), (rh0, rh1, rw0, rw1))``, first the
    window clipped to the padded input, then its real cells (``[h0, h1)`` rows, ``[w0, w1)``
    columns, in input coordinates; padding is negative or past the end).  The backward pass
    (tests/reference_grad.py) walks the same windows."""
    H, W = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = _pool_len(H, kh, sh, ph, ceil), _pool_len(W, kw, sw, pw, ceil)
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh - ph, ow * sw - pw
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)  # window within the padded input
            yield oh, ow, (h0, h1, w0, w1), (max(h0, 0), min(h1, H), max(w0, 0), min(w1, W))


def pool_divisor(window, real, count_pad):
    """An average's divisor: the window clipped to the padded input with ``count_pad`` (what
    PyTorch's count_include_pad does, also in ceil mode), else the number of real cells."""
    (h0, h1, w0, w1), (rh0, rh1, rw0, rw1) = window, real
    return (h1 - h0) * (w1 - w0) if count_pad else (rh1 - rh0) * (rw1 - rw0)


def pool2d(x, kind, kernel, stride, padding, ceil, count_pad=True):
    """Max: padded cells never win.  Avg: the sum of the real cells over :func:`pool_divisor`."""
    N, C, H, W = x.shape
    OH, OW = _pool_len(H, kernel[0], stride[0], padding[0], ceil), _pool_len(W, kernel[1], stride[1], padding[1], ceil)
    y = np.zeros((N, C, OH, OW))
    for oh, ow, window, real in pool_windows((H, W), kernel, stride, padding, ceil):
        rh0, rh1, rw0, rw1 = real
        cells = x[:, :, rh0:rh1, rw0:rw1]
        if kind == "max":
            y[:, :, oh, ow] = cells.max(axis=(2, 3))
        else:
            y[:, :, oh, ow] = cells.sum(axis=(2, 3)) / pool_divisor(window, real, count_pad)
    return y


def activation(x, kind):
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    raise AssertionError(kind)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


Ref = Callable[[np.ndarray, Op, "np.ndarray | None", "np.ndarray | None"], np.ndarray]

# keyed by the op registry's reference names (core/ops.py: OpDef.reference); tests/test_ops.py
# checks that every op has one
REFERENCE: dict[str, Ref] = {
    "conv": lambda y, op, w, b: conv2d(y, w, b, op.stride, op.padding, op.dilation, op.groups),
    "pool": lambda y, op, w, b: pool2d(y, op.kind, op.kernel, op.stride, op.padding, op.ceil, op.count_pad),
    "global_avgpool": lambda y, op, w, b: y.mean(axis=(2, 3), keepdims=True),
    "flatten": lambda y, op, w, b: y.reshape(y.shape[0], -1),
    "dense": lambda y, op, w, b: y @ w.astype(np.float64).T + (b if b is not None else 0),
    "activation": lambda y, op, w, b: activation(y, op.kind),
    "softmax": lambda y, op, w, b: softmax(y),
    "dropout": lambda y, op, w, b: y,  # running, not training: the identity
}


def run_reference(cm: ConcreteModel, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float64)
    for layer, _, _, op in cm.layers:
        w = weights.get(f"{layer.name}.weight")
        b = weights.get(f"{layer.name}.bias")
        y = REFERENCE[definition(op).reference](y, op, w, b)
    return y.astype(np.float32)


def random_weights(cm: ConcreteModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-like scaled random weights for every parameter of ``cm``."""
    out = {}
    for layer, _, _, op in cm.layers:
        match op:
            case Conv():
                fan = (op.c_in // op.groups) * op.kernel[0] * op.kernel[1]
                out[f"{layer.name}.weight"] = (rng.standard_normal(
                    (op.c_out, op.c_in // op.groups, *op.kernel)) / np.sqrt(fan)).astype(np.float32)
                if op.bias:
                    out[f"{layer.name}.bias"] = (0.1 * rng.standard_normal(op.c_out)).astype(np.float32)
            case Dense():
                out[f"{layer.name}.weight"] = (rng.standard_normal((op.out_features, op.in_features))
                                               / np.sqrt(op.in_features)).astype(np.float32)
                if op.bias:
                    out[f"{layer.name}.bias"] = (0.1 * rng.standard_normal(op.out_features)).astype(np.float32)
            case _:
                pass
    return out
