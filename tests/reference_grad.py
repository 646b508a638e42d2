"""A plain numpy reference of the backward pass of every op, written from the definitions.

What native training (``convdsl train``) is checked against, beside ``torch.autograd``: each
function takes a layer's input (and output, where the derivative is best written with it) and
the gradient of the loss with respect to the layer's output, ``dy``, and returns the gradient
with respect to its input and parameters.  Everything is float64, in the conventions of
``tests/reference.py`` (which holds the forward pass): PyTorch layouts, conv padding as
``(top, bottom, left, right)``, pool padding ``(ph, pw)`` on both sides.

The choices where a derivative is not unique are PyTorch's: relu's gradient at 0 is 0, and a
max pool's gradient goes to the first maximum of its window in row-major order (ties are common
after relu).  The loss is ``torch.nn.CrossEntropyLoss()``'s, the mean over the batch.

``network_backward(cm, weights, x, labels, masks)`` chains them for a whole
:class:`~convdsl.core.model.ConcreteModel`: the loss and every parameter's gradient.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from convdsl.core.model import ConcreteModel, Op
from convdsl.core.ops import Dropout, Softmax, definition
from reference import REFERENCE, pool_divisor, pool_windows

Grads = dict[str, np.ndarray]  # "weight" / "bias" -> gradient


# ----------------------------------------------------------------------------- convolution


def conv2d_backward(x, w, dy, stride, padding, dilation, groups, bias=True):
    """``(dx, dw, db)`` of ``y = conv2d(x, w, b)`` given ``dy`` (``db`` is None without a bias).

    From the definition ``y[n, o, i, j] = b[o] + sum_{c, p, q} w[o, c, p, q] *
    xp[n, g(o)*Cg + c, i*sh + p*dh, j*sw + q*dw]`` (``xp`` the zero-padded input): for one kernel
    tap ``(p, q)`` the input cells read by all outputs form one strided slice ``X_pq`` of ``xp``,
    so ``dw[..., p, q] = sum_{n, i, j} dy * X_pq`` and ``dy`` times ``w[..., p, q]`` flows back
    into that slice.  Gradient that lands in the padding is dropped.
    """
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    (sh, sw), (dh, dw_), (t, bt, l, r) = stride, dilation, padding
    OH, OW = dy.shape[2:]
    G, Og = groups, O // groups
    xp = np.zeros((N, C, H + t + bt, W + l + r))
    xp[:, :, t:t + H, l:l + W] = x
    dxp = np.zeros_like(xp)
    dwt = np.zeros((O, Cg, KH, KW))
    dyg = dy.reshape(N, G, Og, OH, OW).astype(np.float64)
    wg = w.reshape(G, Og, Cg, KH, KW).astype(np.float64)
    for p in range(KH):
        for q in range(KW):
            rows = slice(p * dh, p * dh + sh * (OH - 1) + 1, sh)
            cols = slice(q * dw_, q * dw_ + sw * (OW - 1) + 1, sw)
            tap = xp[:, :, rows, cols].reshape(N, G, Cg, OH, OW)  # X_pq, per group
            dwt[:, :, p, q] = np.einsum("ngoij,ngcij->goc", dyg, tap).reshape(O, Cg)
            dxp[:, :, rows, cols] += np.einsum("ngoij,goc->ngcij", dyg, wg[..., p, q]).reshape(N, C, OH, OW)
    db = dy.sum(axis=(0, 2, 3)) if bias else None
    return dxp[:, :, t:t + H, l:l + W], dwt, db


# ----------------------------------------------------------------------------- pooling


def maxpool_backward(x, dy, kernel, stride, padding, ceil):
    """Each output's gradient goes to the first maximum of its window's real cells, scanning rows
    then columns (padded cells never win); windows that overlap add up."""
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H, W))
    for oh, ow, _, (rh0, rh1, rw0, rw1) in pool_windows((H, W), kernel, stride, padding, ceil):
        cells = x[:, :, rh0:rh1, rw0:rw1].reshape(N, C, -1)
        first = cells.argmax(axis=2)[..., None]  # numpy's argmax returns the first of equal maxima
        local = np.zeros(cells.shape)
        np.put_along_axis(local, first, dy[:, :, oh, ow, None], axis=2)
        dx[:, :, rh0:rh1, rw0:rw1] += local.reshape(N, C, rh1 - rh0, rw1 - rw0)
    return dx


def avgpool_backward(x_shape, dy, kernel, stride, padding, ceil, count_pad=True):
    """Each output's gradient, divided by the forward's divisor, to every real cell of its window
    (the padded zeros it counted have no gradient to receive)."""
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H, W))
    for oh, ow, window, real in pool_windows((H, W), kernel, stride, padding, ceil):
        rh0, rh1, rw0, rw1 = real
        dx[:, :, rh0:rh1, rw0:rw1] += dy[:, :, oh, ow, None, None] / pool_divisor(window, real, count_pad)
    return dx


def global_avgpool_backward(x_shape, dy):
    N, C, H, W = x_shape
    return np.broadcast_to(dy.reshape(N, C, 1, 1) / (H * W), x_shape).copy()


# ----------------------------------------------------------------------------- the rest


def dense_backward(x, w, dy, bias=True):
    """``(dx, dw, db)`` of ``y = x @ w.T + b``."""
    w = w.astype(np.float64)
    return dy @ w, dy.T @ x, (dy.sum(axis=0) if bias else None)


def activation_backward(kind, x, y, dy):
    """relu: 1 where the input is positive, 0 elsewhere (0 at 0, as PyTorch); sigmoid
    ``y (1 - y)``; tanh ``1 - y^2`` (``y`` the output)."""
    if kind == "relu":
        return dy * (x > 0)
    if kind == "sigmoid":
        return dy * y * (1 - y)
    if kind == "tanh":
        return dy * (1 - y * y)
    raise AssertionError(kind)


def softmax_backward(y, dy):
    """A softmax over axis 1 that is not fused into the loss: ``dx = y * (dy - sum_k dy_k y_k)``."""
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def dropout_forward(x, keep, p):
    """Training-mode dropout with a given mask (``keep`` true where the value survives)."""
    return x * keep / (1 - p)


def dropout_backward(dy, keep, p):
    return dy * keep / (1 - p)


# ----------------------------------------------------------------------------- the loss


def cross_entropy(logits, labels):
    """``(loss, dlogits)`` of ``torch.nn.CrossEntropyLoss()`` (mean over the batch) on logits
    ``[N, K]`` or ``[N, K, 1, 1]``: ``loss = mean_n (logsumexp(z_n) - z_n[label_n])`` and
    ``dz = (softmax(z) - onehot(label)) / N``.  Also log-softmax followed by the NLL loss: what a
    model whose last layer is softmax is trained with, on that layer's input."""
    z = np.asarray(logits, np.float64)
    if not (z.ndim == 2 or (z.ndim == 4 and z.shape[2:] == (1, 1))):
        raise ValueError(f"the loss takes logits [N, K] or [N, K, 1, 1], not {list(z.shape)}")
    z2 = z.reshape(z.shape[0], z.shape[1])
    n, k = z2.shape
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must be {n} integers in 0 .. {k - 1}")
    shifted = z2 - z2.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(n), labels].mean()
    dz = np.exp(log_p)
    dz[np.arange(n), labels] -= 1
    return float(loss), (dz / n).reshape(z.shape)


# ----------------------------------------------------------------------------- per op and network

# (op, x, y, dy, weight, bias) -> (dx, parameter gradients); keyed like reference.REFERENCE
Backward = Callable[[Op, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"],
                    tuple[np.ndarray, Grads]]


def _conv(op, x, y, dy, w, b):
    dx, dw, db = conv2d_backward(x, w, dy, op.stride, op.padding, op.dilation, op.groups, op.bias)
    return dx, {"weight": dw, **({"bias": db} if op.bias else {})}


def _pool(op, x, y, dy, w, b):
    if op.kind == "max":
        return maxpool_backward(x, dy, op.kernel, op.stride, op.padding, op.ceil), {}
    return avgpool_backward(x.shape, dy, op.kernel, op.stride, op.padding, op.ceil, op.count_pad), {}


def _dense(op, x, y, dy, w, b):
    dx, dw, db = dense_backward(x, w, dy, op.bias)
    return dx, {"weight": dw, **({"bias": db} if op.bias else {})}


BACKWARD: dict[str, Backward] = {
    "conv": _conv,
    "pool": _pool,
    "global_avgpool": lambda op, x, y, dy, w, b: (global_avgpool_backward(x.shape, dy), {}),
    "flatten": lambda op, x, y, dy, w, b: (dy.reshape(x.shape), {}),
    "dense": _dense,
    "activation": lambda op, x, y, dy, w, b: (activation_backward(op.kind, x, y, dy), {}),
    "softmax": lambda op, x, y, dy, w, b: (softmax_backward(y, dy), {}),
    # dropout needs its mask: network_backward handles it
}


def trained_layers(cm: ConcreteModel):
    """The layers the loss is computed after: all of them, except a last softmax, whose input
    the loss takes instead (log-softmax fused into the loss, as CLI.md says)."""
    layers = list(cm.layers)
    if layers and isinstance(layers[-1][3], Softmax):
        layers.pop()
    return layers


def dropout_masks(cm: ConcreteModel, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random keep-mask (true with probability ``1 - p``) for every dropout layer of ``cm``."""
    return {layer.name: rng.random((batch, *in_shape)) >= op.p
            for layer, in_shape, _, op in cm.layers if isinstance(op, Dropout)}


def network_forward(cm: ConcreteModel, weights: Mapping[str, np.ndarray], x: np.ndarray,
                    masks: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """The training-mode forward pass up to the loss's input: every layer's input, then the
    logits (float64).  A dropout layer with ``p > 0`` needs its mask in ``masks``."""
    acts = [np.asarray(x, np.float64)]
    for layer, _, _, op in trained_layers(cm):
        y = acts[-1]
        if isinstance(op, Dropout):
            keep = _mask(masks, layer.name, op, y.shape)
            acts.append(dropout_forward(y, keep, op.p))
            continue
        w, b = weights.get(f"{layer.name}.weight"), weights.get(f"{layer.name}.bias")
        acts.append(REFERENCE[definition(op).reference](y, op, w, b))
    return acts


def network_backward(cm: ConcreteModel, weights: Mapping[str, np.ndarray], x: np.ndarray, labels: np.ndarray,
                     masks: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """``(loss, gradients)``: the mean cross-entropy of ``cm`` on ``(x, labels)`` and the
    gradient of every parameter, under its weights-file name (``conv1.weight``, ...), float64."""
    layers = trained_layers(cm)
    acts = network_forward(cm, weights, x, masks)
    loss, dy = cross_entropy(acts[-1], labels)
    grads: dict[str, np.ndarray] = {}
    for (layer, _, _, op), xin, yout in zip(reversed(layers), reversed(acts[:-1]), reversed(acts[1:])):
        if isinstance(op, Dropout):
            dy = dropout_backward(dy, _mask(masks, layer.name, op, xin.shape), op.p)
            continue
        w, b = weights.get(f"{layer.name}.weight"), weights.get(f"{layer.name}.bias")
        dy, pgrads = BACKWARD[definition(op).reference](op, xin, yout, dy, w, b)
        grads.update({f"{layer.name}.{k}": v for k, v in pgrads.items()})
    return loss, grads


def _mask(masks, name, op: Dropout, shape) -> np.ndarray:
    if masks is not None and name in masks:
        keep = np.asarray(masks[name], bool)
        if keep.shape != tuple(shape):
            raise ValueError(f"dropout {name}: mask of shape {list(keep.shape)}, expected {list(shape)}")
        return keep
    if op.p == 0:
        return np.ones(shape, bool)
    raise ValueError(f"dropout {name} (p={op.p}) needs a mask")

