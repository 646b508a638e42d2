"""The training references (tests/reference_grad.py, tests/reference_optim.py) against PyTorch.

Each op's backward on random configurations drawn with hypothesis (the ranges of the forward
differential tests in tests/test_backend.py and tests/test_ops.py: 1-32 channels, sizes 1-20,
kernels 1-7, strides 1-3, dilations 1-3, every padding form, grouped and depthwise convs, pools
with padding, ``ceil`` and both ``count_pad`` rules; batches of 1-3 images, to stay fast), the
gradients of whole networks (both LeNets, a NiN-like net, a softmax head with dropout), and K
optimiser steps of every optimiser and schedule, against ``torch.autograd`` and ``torch.optim``.
The references compute in float64; torch runs in float64 and, for the networks, in float32 too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netbuild import conv, conv_padding, net, out_size, pool

import convdsl
from convdsl.core.ops import OPS, Activation, Conv, Dense, Dropout, Flatten, GlobalAvgPool, Pool, Softmax
from convdsl.data import load_digits_train
from reference import random_weights
from reference_grad import (BACKWARD, activation_backward, avgpool_backward, conv2d_backward, cross_entropy,
                            dense_backward, dropout_backward, dropout_forward, dropout_masks,
                            global_avgpool_backward, maxpool_backward, network_backward, network_forward,
                            softmax_backward)
from reference_optim import (SGD, Adam, AdamW, Schedule, batches_in_order, lr_at, parse_schedule,
                             train_reference)

RTOL, ATOL = 1e-4, 1e-5
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def close(got, expect, what=""):
    expect = expect.detach().numpy() if isinstance(expect, torch.Tensor) else expect
    np.testing.assert_allclose(got, expect, rtol=RTOL, atol=ATOL, err_msg=what)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def vjp(f, dy, *inputs):
    """``torch.autograd``'s gradients of ``sum(f(*inputs) * dy)`` with respect to each input."""
    ts = [t64(a, grad=True) for a in inputs]
    grads = torch.autograd.grad(f(*ts), ts, t64(dy), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, ts)]


def _values(rng, shape, ties):
    """Random inputs; with ``ties`` a few distinct values only, so that windows hold equal maxima
    and relu sees exact zeros."""
    if ties:
        return rng.integers(-2, 3, shape) * 0.5
    return rng.standard_normal(shape)


def test_every_op_has_a_backward():
    # an op added to the registry cannot be trained until its backward is here (dropout's needs its
    # mask, which network_backward holds)
    for name, d in OPS.items():
        assert d.reference in BACKWARD or d.reference == "dropout", f"{name}: no backward {d.reference!r}"


# ----------------------------------------------------------------------------- conv


@st.composite
def conv_case(draw):
    c_in, h, w = draw(st.integers(1, 32)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    form = draw(st.sampled_from(["int", "pair", "quad", "same", "none"]))
    stride = (1, 1) if form == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = {"none": 0, "int": draw(st.integers(0, 3)), "pair": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "quad": tuple(draw(st.integers(0, 3)) for _ in range(4)), "same": "same"}[form]
    pads = conv_padding(padding, kernel, dilation)
    if out_size(h, kernel[0], stride[0], dilation[0], *pads[:2]) < 1 or \
            out_size(w, kernel[1], stride[1], dilation[1], *pads[2:]) < 1:
        kernel, dilation = (draw(st.integers(1, h)), draw(st.integers(1, w))), (1, 1)
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4, c_in) if c_in % g == 0]))
    c_out = groups * draw(st.integers(1, max(1, 32 // groups)))
    spec = conv(c_out, kernel, stride, padding, dilation, groups, draw(st.booleans()))
    _, _, out_shape, op = net((c_in, h, w), spec).bind({}).layers[0]
    return op, (c_in, h, w), out_shape, draw(st.integers(1, 3)), draw(st.integers(0, 2**31))


@settings(max_examples=120, **SETTINGS)
@given(conv_case())
def test_conv_gradients_match_torch(case):
    op, (c, h, w), out_shape, batch, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, h, w))
    wt = rng.standard_normal((op.c_out, c // op.groups, *op.kernel))
    b = rng.standard_normal(op.c_out)
    t, bt, l, r = op.padding

    def f(x, wt, b):
        return F.conv2d(F.pad(x, (l, r, t, bt)), wt, b if op.bias else None, op.stride, 0, op.dilation, op.groups)

    dy = rng.standard_normal((batch, *out_shape))  # the checker's output shape: torch must agree
    dx, dw, db = conv2d_backward(x, wt, dy, op.stride, op.padding, op.dilation, op.groups, op.bias)
    tx, tw, tb = vjp(f, dy, x, wt, b)
    close(dx, tx, f"dx {op}")
    close(dw, tw, f"dw {op}")
    if op.bias:
        close(db, tb, f"db {op}")
    else:
        assert db is None and not tb.abs().sum()


def test_conv_gradient_of_a_known_case():
    # 1x1 input, 3x3 kernel, padding 1: the output is w's centre times x; dx = sum(w_centre * dy)
    w = np.arange(9.0).reshape(1, 1, 3, 3)
    dx, dw, db = conv2d_backward(np.full((1, 1, 1, 1), 2.0), w, np.full((1, 1, 1, 1), 3.0), (1, 1),
                                 (1, 1, 1, 1), (1, 1), 1)
    assert dx.item() == 12.0 and db.tolist() == [3.0]
    assert dw[0, 0, 1, 1] == 6.0 and np.count_nonzero(dw) == 1


# ----------------------------------------------------------------------------- pools


@st.composite
def pool_case(draw):
    c, h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["max", "avg"]))
    kernel = (draw(st.integers(1, min(5, h))), draw(st.integers(1, min(5, w))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    spec = pool(kind, kernel, stride, padding, draw(st.booleans()), draw(st.booleans()) if kind == "avg" else True)
    op = net((c, h, w), spec).bind({}).layers[0][3]
    return op, (c, h, w), draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**31))


@settings(max_examples=150, **SETTINGS)
@given(pool_case())
def test_pool_gradients_match_torch(case):
    op, (c, h, w), batch, ties, seed = case
    rng = np.random.default_rng(seed)
    x = _values(rng, (batch, c, h, w), ties)
    if op.kind == "max":
        def f(x):
            return F.max_pool2d(x, op.kernel, op.stride, op.padding, ceil_mode=op.ceil)
    else:
        def f(x):
            return F.avg_pool2d(x, op.kernel, op.stride, op.padding, ceil_mode=op.ceil,
                                count_include_pad=op.count_pad)
    with torch.no_grad():
        dy = rng.standard_normal(tuple(f(t64(x)).shape))
    (tx,) = vjp(f, dy, x)
    if op.kind == "max":
        dx = maxpool_backward(x, dy, op.kernel, op.stride, op.padding, op.ceil)
    else:
        dx = avgpool_backward(x.shape, dy, op.kernel, op.stride, op.padding, op.ceil, op.count_pad)
    close(dx, tx, f"{op} ties={ties}")


def test_maxpool_gives_the_gradient_to_the_first_maximum():
    x = np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]]]])  # three equal maxima in one 2x3 window
    dx = maxpool_backward(x, np.ones((1, 1, 1, 1)), (2, 3), (2, 3), (0, 0), False)
    assert dx.tolist() == [[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]]
    # all-negative input beside padding: padded cells never win, the first real cell of each of
    # the nine 2x2 windows does (rows 0, 0, 1 and columns 0, 0, 1 come first)
    x = -np.ones((1, 1, 2, 2))
    dx = maxpool_backward(x, np.ones((1, 1, 3, 3)), (2, 2), (1, 1), (1, 1), False)
    assert dx.tolist() == [[[[4.0, 2.0], [2.0, 1.0]]]]
    close(dx, vjp(lambda t: F.max_pool2d(t, 2, 1, 1), np.ones((1, 1, 3, 3)), x)[0])


def test_avgpool_ceil_window_in_the_padding_keeps_pytorch_divisors():
    # n=5, k=2, s=2, p=1, ceil: windows start at -1, 1, 3 (the one at 5 would start in the padding
    # and is dropped); count_pad divides the last window, clipped to the padded input, by 2
    dx = avgpool_backward((1, 1, 1, 5), np.ones((1, 1, 1, 3)), (1, 2), (1, 2), (0, 1), True, True)
    assert dx.tolist() == [[[[0.5, 0.5, 0.5, 0.5, 0.5]]]]
    dx = avgpool_backward((1, 1, 1, 5), np.ones((1, 1, 1, 3)), (1, 2), (1, 2), (0, 1), True, False)
    assert dx.tolist() == [[[[1.0, 0.5, 0.5, 0.5, 0.5]]]]
    # n=4, k=3, s=2, p=1, ceil: windows [-1, 1], [1, 3], [3, 5]; the last is clipped to the padded
    # input's end (4 + 1): it counts one real cell and one padded, so divides by 2, not 3
    dy = np.ones((1, 1, 1, 3))
    dx = avgpool_backward((1, 1, 1, 4), dy, (1, 3), (1, 2), (0, 1), True, True)
    np.testing.assert_allclose(dx, [[[[1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2]]]], rtol=1e-12)
    close(dx, vjp(lambda t: F.avg_pool2d(t, (1, 3), (1, 2), (0, 1), ceil_mode=True), dy, np.zeros((1, 1, 1, 4)))[0])
    dx = avgpool_backward((1, 1, 1, 4), dy, (1, 3), (1, 2), (0, 1), True, False)
    np.testing.assert_allclose(dx, [[[[1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1]]]], rtol=1e-12)


@settings(max_examples=30, **SETTINGS)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**31))
def test_global_avgpool_and_flatten_gradients_match_torch(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((n, c, h, w)), rng.standard_normal((n, c, 1, 1))
    close(global_avgpool_backward(x.shape, dy), vjp(lambda t: F.adaptive_avg_pool2d(t, 1), dy, x)[0])
    close(global_avgpool_backward(x.shape, dy), vjp(lambda t: t.mean((2, 3), keepdim=True), dy, x)[0])
    dflat = rng.standard_normal((n, c * h * w))
    got, params = BACKWARD["flatten"](Flatten(), x, None, dflat, None, None)
    close(got, vjp(lambda t: torch.flatten(t, 1), dflat, x)[0])
    assert params == {}


# ----------------------------------------------------------------------------- dense, activations, softmax


@settings(max_examples=40, **SETTINGS)
@given(st.integers(1, 17), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 2**31))
def test_dense_gradients_match_torch(n, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)), rng.standard_normal(fout)
    dy = rng.standard_normal((n, fout))
    dx, dw, db = dense_backward(x, w, dy, bias)
    tx, tw, tb = vjp(lambda x, w, b: F.linear(x, w, b if bias else None), dy, x, w, b)
    close(dx, tx)
    close(dw, tw)
    if bias:
        close(db, tb)
    else:
        assert db is None


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(["relu", "sigmoid", "tanh"]), st.sampled_from([(5,), (2, 7), (2, 3, 4, 5)]), st.booleans(),
       st.integers(0, 2**31))
def test_activation_gradients_match_torch(kind, shape, ties, seed):
    rng = np.random.default_rng(seed)
    x = _values(rng, shape, ties) * (4 if not ties else 1)
    dy = rng.standard_normal(shape)
    y = {"relu": np.maximum(x, 0), "sigmoid": 1 / (1 + np.exp(-x)), "tanh": np.tanh(x)}[kind]
    close(activation_backward(kind, x, y, dy), vjp(getattr(torch, kind), dy, x)[0], f"{kind} ties={ties}")


def test_relu_gradient_is_zero_at_zero():
    x = np.array([-1.0, 0.0, 1.0])
    assert activation_backward("relu", x, np.maximum(x, 0), np.ones(3)).tolist() == [0.0, 0.0, 1.0]


@settings(max_examples=30, **SETTINGS)
@given(st.integers(1, 17), st.integers(1, 20), st.booleans(), st.integers(0, 2**31))
def test_softmax_inside_a_network_matches_torch(n, k, four_d, seed):
    rng = np.random.default_rng(seed)
    shape = (n, k, 1, 1) if four_d else (n, k)
    z, dy = rng.standard_normal(shape) * 3, rng.standard_normal(shape)
    s = np.exp(z - z.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    close(softmax_backward(s, dy), vjp(lambda t: torch.softmax(t, 1), dy, z)[0])


@settings(max_examples=50, **SETTINGS)
@given(st.integers(1, 17), st.integers(1, 20), st.booleans(), st.floats(0.1, 30), st.integers(0, 2**31))
def test_fused_softmax_cross_entropy_matches_torch(n, k, four_d, scale, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k, 1, 1) if four_d else (n, k)) * scale
    labels = rng.integers(0, k, n)
    loss, dz = cross_entropy(z, labels)
    tz = t64(z, grad=True)
    tl = torch.nn.CrossEntropyLoss()(tz.flatten(1), torch.from_numpy(labels))
    (g,) = torch.autograd.grad(tl, tz)
    close(loss, tl)
    close(dz, g)
    assert dz.shape == z.shape
    # the same as log-softmax then the NLL loss: a softmax-last model's training loss
    tz = t64(z, grad=True)
    tl = F.nll_loss(F.log_softmax(tz.flatten(1), 1), torch.from_numpy(labels))
    close(loss, tl)
    close(dz, torch.autograd.grad(tl, tz)[0])


def test_cross_entropy_refuses_what_is_not_logits():
    for z in (np.zeros((2, 3, 2, 2)), np.zeros(3)):
        with pytest.raises(ValueError, match="logits"):
            cross_entropy(z, np.zeros(len(z), int))
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9])
def test_dropout_with_the_mask_of_torch_dropout(p):
    # torch's own dropout draws the mask; given it, the reference gives torch's output and gradient
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)) + 10  # nonzero everywhere: a zero output means dropped
    dy = rng.standard_normal(x.shape)
    torch.manual_seed(0)
    tx = t64(x, grad=True)
    ty = F.dropout(tx, p, training=True)
    (g,) = torch.autograd.grad(ty, tx, t64(dy))
    keep = ty.detach().numpy() != 0
    assert 0 < keep.mean() <= 1 and (p == 0) == keep.all()
    close(dropout_forward(x, keep, p), ty)
    close(dropout_backward(dy, keep, p), g)


# ----------------------------------------------------------------------------- whole networks


def torch_logits(cm, params, x, masks=None):
    """The network in torch functional ops, up to the loss's input (a last softmax left out)."""
    y = x
    layers = list(cm.layers)
    if isinstance(layers[-1][3], Softmax):
        layers.pop()
    for layer, _, _, op in layers:
        w, b = params.get(f"{layer.name}.weight"), params.get(f"{layer.name}.bias")
        match op:
            case Conv():
                t, bt, l, r = op.padding
                y = F.conv2d(F.pad(y, (l, r, t, bt)), w, b, op.stride, 0, op.dilation, op.groups)
            case Pool(kind="max"):
                y = F.max_pool2d(y, op.kernel, op.stride, op.padding, ceil_mode=op.ceil)
            case Pool():
                y = F.avg_pool2d(y, op.kernel, op.stride, op.padding, ceil_mode=op.ceil, count_include_pad=op.count_pad)
            case GlobalAvgPool():
                y = F.adaptive_avg_pool2d(y, 1)
            case Flatten():
                y = torch.flatten(y, 1)
            case Dense():
                y = F.linear(y, w, b)
            case Activation():
                y = getattr(torch, op.kind)(y)
            case Softmax():
                y = torch.softmax(y, 1)
            case Dropout():
                y = y * torch.from_numpy(masks[layer.name]).to(y.dtype) / (1 - op.p) if op.p else y
    return y


def torch_loss(cm, params, x, labels, masks=None):
    z = torch_logits(cm, params, x, masks).flatten(1)
    if isinstance(cm.layers[-1][3], Softmax):
        return F.nll_loss(F.log_softmax(z, 1), labels)
    return F.cross_entropy(z, labels)


NIN = """
block nin(channels, kernel, stride, padding) {
    conv(channels, kernel=kernel, stride=stride, padding=padding)
    relu
    conv(channels, kernel=1)
    relu
    conv(channels, kernel=1)
    relu
}

model NiNSmall(x: [N, 3, 13, 13]) -> [N, 10, 1, 1] {
    nin(8, kernel=3, stride=2, padding=1)                       -> [N, 8, 7, 7]
    maxpool(3, stride=2, padding=1, ceil=true)                  -> [N, 8, 4, 4]
    nin(6, kernel=3, stride=1, padding=1)                       -> [N, 6, 4, 4]
    avgpool(3, stride=2, padding=1, ceil=true, count_pad=false) -> [N, 6, 3, 3]
    conv(10, kernel=(2, 3), padding=same)
    relu
    conv(10, kernel=1)
    global_avgpool                                              -> [N, 10, 1, 1]
}
"""

HEAD = """
model Head(x: [N, 2, 9, 9]) -> [N, 7] {
    conv(6, kernel=3, dilation=2, groups=2)     -> [N, 6, 5, 5]
    tanh
    dropout(0.5)
    avgpool(2, stride=1)
    flatten
    dense(16, bias=false)
    sigmoid
    dropout(0.25)
    dense(7)
    softmax
}
"""


def _model(which):
    program = convdsl.load(EXAMPLES / f"{which}.conv") if which.startswith("lenet") else convdsl.loads(
        {"nin": NIN, "head": HEAD}[which])
    m = program.model()
    return m.bind(m.sizes())


def _batch(cm, n, rng):
    if cm.input_shape == (1, 28, 28):
        images, labels = load_digits_train()
        pick = rng.choice(len(labels), n, replace=False)
        return images[pick], labels[pick]
    return rng.standard_normal((n, *cm.input_shape)).astype(np.float32), rng.integers(0, 7, n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["lenet", "lenet_relu", "nin", "head"])
def test_network_gradients_match_torch(which, dtype):
    cm = _model(which)
    rng = np.random.default_rng(7)
    weights = random_weights(cm, rng)
    x, labels = _batch(cm, 5, rng)
    masks = dropout_masks(cm, len(labels), rng)
    loss, grads = network_backward(cm, weights, x, labels, masks)
    assert set(grads) == set(weights)
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in weights.items()}
    tl = torch_loss(cm, params, torch.from_numpy(x).to(dtype), torch.from_numpy(labels), masks)
    tg = torch.autograd.grad(tl, list(params.values()))
    close(loss, tl.detach().double(), "loss")
    for name, g in zip(params, tg):
        assert grads[name].shape == tuple(g.shape)
        close(grads[name], g.double(), name)
    assert any(np.abs(g).max() > 1e-3 for g in grads.values()), "a gradient worth comparing"


def test_softmax_last_model_is_trained_on_the_softmax_input():
    cm = _model("head")
    rng = np.random.default_rng(3)
    weights = random_weights(cm, rng)
    x, labels = _batch(cm, 4, rng)
    masks = dropout_masks(cm, 4, rng)
    logits = network_forward(cm, weights, x, masks)[-1]
    assert logits.shape == (4, 7) and not np.allclose(logits.sum(axis=1), 1)
    assert network_backward(cm, weights, x, labels, masks)[0] == pytest.approx(cross_entropy(logits, labels)[0])
    with pytest.raises(ValueError, match="needs a mask"):
        network_backward(cm, weights, x, labels)


# ----------------------------------------------------------------------------- optimisers


def _torch_optimizer(kind, params, lr, hp):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.get("momentum", 0.0), dampening=hp.get("dampening", 0.0),
                               nesterov=hp.get("nesterov", False), weight_decay=hp.get("weight_decay", 0.0))
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    extra = {"weight_decay": hp["weight_decay"]} if "weight_decay" in hp else {}
    return cls(params, lr=lr, betas=hp.get("betas", (0.9, 0.999)), eps=hp.get("eps", 1e-8), **extra)


def _reference_optimizer(kind, hp):
    if kind == "sgd":
        return SGD(**hp)
    extra = {"weight_decay": hp["weight_decay"]} if "weight_decay" in hp else {}
    make = Adam if kind == "adam" else AdamW
    return make(betas=hp.get("betas", (0.9, 0.999)), eps=hp.get("eps", 1e-8), **extra)


@st.composite
def optimizer_case(draw):
    kind = draw(st.sampled_from(["sgd", "adam", "adamw"]))
    hp: dict = {}
    if draw(st.booleans()):
        hp["weight_decay"] = draw(st.sampled_from([0.0, 1e-4, 0.05, 0.5]))
    if kind == "sgd":
        hp["momentum"] = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        if hp["momentum"] and draw(st.booleans()):
            hp["nesterov"] = True
        elif draw(st.booleans()):
            hp["dampening"] = draw(st.sampled_from([0.1, 0.5]))
    else:
        if draw(st.booleans()):
            hp["betas"] = (draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.99, 0.999])))
        if draw(st.booleans()):
            hp["eps"] = draw(st.sampled_from([1e-8, 1e-6, 1e-3]))
    return kind, hp, draw(st.sampled_from([1e-3, 0.01, 0.1, 0.5])), draw(st.integers(0, 2**31))


@settings(max_examples=60, **SETTINGS)
@given(optimizer_case())
def test_optimizer_steps_match_torch_optim(case):
    kind, hp, lr, seed = case
    rng = np.random.default_rng(seed)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tparams = {k: t64(v, grad=True) for k, v in params.items()}
    topt = _torch_optimizer(kind, list(tparams.values()), lr, hp)
    ref = _reference_optimizer(kind, hp)
    for k in range(6):
        grads = {n: rng.standard_normal(v.shape) * (0 if k == 2 else 1) for n, v in params.items()}
        rate = lr * 0.7 ** k  # a rate that changes between steps, as a schedule's does
        params = ref.step(params, grads, rate)
        for g in topt.param_groups:
            g["lr"] = rate
        for n, t in tparams.items():
            t.grad = t64(grads[n])
        topt.step()
        for n, t in tparams.items():
            close(params[n], t, f"{kind} {hp} step {k} {n}")


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(nesterov=True)


# ----------------------------------------------------------------------------- schedules


def test_schedules_parse():
    assert parse_schedule("constant") == Schedule("constant")
    assert parse_schedule("step:3:0.5") == Schedule("step", epochs=3, gamma=0.5)
    assert parse_schedule("inv:0.0001:0.75") == Schedule("inv", gamma=1e-4, power=0.75)
    for bad in ("step", "step:0:0.5", "step:x:1", "cosine:2", "inv:1", "linear"):
        with pytest.raises(ValueError, match="schedule"):
            parse_schedule(bad)


def test_inv_schedule_at_a_few_points():
    # Caffe's LeNet solver: base_lr 0.01, gamma 1e-4, power 0.75
    inv = parse_schedule("inv:0.0001:0.75")
    at = [lr_at(inv, 0.01, step=k, epoch=0, total_steps=10**5) for k in (0, 10_000, 30_000, 70_000)]
    np.testing.assert_allclose(at, [0.01, 0.01 / 2 ** 0.75, 0.01 / 4 ** 0.75, 0.01 / 8 ** 0.75], rtol=1e-12)
    np.testing.assert_allclose(at[1], 0.0059460355750136, rtol=1e-12)  # 2^-0.75 / 100


@pytest.mark.parametrize("spec", ["step:2:0.1", "step:1:0.5", "cosine"])
def test_schedules_match_torch_schedulers(spec):
    steps, per_epoch = 11, 3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    s = parse_schedule(spec)
    sched = (torch.optim.lr_scheduler.StepLR(opt, step_size=s.epochs, gamma=s.gamma) if s.kind == "step"
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))
    for k in range(steps):
        epoch = k // per_epoch
        assert lr_at(s, 0.2, step=k, epoch=epoch, total_steps=steps) == pytest.approx(opt.param_groups[0]["lr"],
                                                                                      rel=1e-12, abs=1e-15)
        opt.step()
        if s.kind == "cosine" or (k + 1) % per_epoch == 0:
            sched.step()
    if s.kind == "cosine":
        assert opt.param_groups[0]["lr"] == pytest.approx(0, abs=1e-15), "cosine reaches 0 after the last step"


# ----------------------------------------------------------------------------- trajectories

TINY = """
model Tiny(x: [N, 2, 8, 8]) -> [N, 4] {
    conv(4, kernel=3, padding=1)
    relu
    maxpool(2, stride=2)
    conv(4, kernel=3, groups=2)
    tanh
    flatten
    dense(4)
}
"""

OPTIMIZERS = [("sgd", {}, 0.1), ("sgd", {"momentum": 0.9}, 0.05), ("sgd", {"momentum": 0.9, "nesterov": True,
              "weight_decay": 1e-3}, 0.05), ("adam", {}, 0.01), ("adam", {"weight_decay": 0.01}, 0.01),
              ("adamw", {}, 0.01), ("adamw", {"weight_decay": 0.1, "betas": (0.8, 0.99)}, 0.01)]
SCHEDULES = ["constant", "step:1:0.5", "cosine", "inv:0.1:0.75"]


def _torch_trajectory(cm, weights, images, labels, batch, steps, kind, hp, lr, schedule, permutations=None,
                      masks=None):
    params = {k: t64(v, grad=True) for k, v in weights.items()}
    opt = _torch_optimizer(kind, list(params.values()), lr, hp)
    s = parse_schedule(schedule)
    per_step = {"cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
                "inv": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (1 + s.gamma * k) ** -s.power)}
    sched_step = per_step[s.kind]() if s.kind in per_step else None
    sched_epoch = torch.optim.lr_scheduler.StepLR(opt, s.epochs, s.gamma) if s.kind == "step" else None
    # PyTorch's own batching: a DataLoader in file order (or over the epoch's permutation) that
    # keeps the last partial batch
    data = torch.utils.data.TensorDataset(torch.from_numpy(images).double(), torch.from_numpy(labels))
    losses: list[float] = []
    while len(losses) < steps:
        order = None if permutations is None else permutations[len(losses) // -(-len(labels) // batch)].tolist()
        for xb, yb in torch.utils.data.DataLoader(data, batch_size=batch, sampler=order, drop_last=False):
            opt.zero_grad()
            loss = torch_loss(cm, params, xb, yb, masks[len(losses)] if masks else None)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if sched_step:
                sched_step.step()
            if len(losses) == steps:
                break
        if sched_epoch:
            sched_epoch.step()
    return {k: v.detach().numpy() for k, v in params.items()}, losses


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind,hp,lr", OPTIMIZERS)
def test_k_steps_match_torch(kind, hp, lr, schedule):
    # 10 samples in batches of 4: epochs of 3 steps (4, 4, then a partial 2); 7 steps cross two
    # epoch boundaries, where the step schedule changes the rate
    cm = convdsl.loads(TINY).model().bind({})
    rng = np.random.default_rng(11)
    weights = random_weights(cm, rng)
    images = rng.standard_normal((10, 2, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 10)
    got, losses = train_reference(cm, weights, images, labels, batch=4, steps=7, base_lr=lr,
                                  optimizer=_reference_optimizer(kind, hp), schedule=parse_schedule(schedule))
    expect, tlosses = _torch_trajectory(cm, weights, images, labels, 4, 7, kind, hp, lr, schedule)
    close(np.array(losses), np.array(tlosses), "losses")
    for name in weights:
        close(got[name], expect[name], f"{name} after 7 steps")
        assert not np.allclose(got[name], weights[name], rtol=0, atol=1e-6), f"{name} moved"


def test_k_steps_with_shuffling_and_dropout_match_torch():
    cm = _model("head")
    rng = np.random.default_rng(5)
    weights = random_weights(cm, rng)
    images = rng.standard_normal((9, *cm.input_shape)).astype(np.float32)
    labels = rng.integers(0, 7, 9)
    perms = [rng.permutation(9) for _ in range(3)]
    masks = [dropout_masks(cm, len(idx), rng) for _, idx in batches_in_order(9, 4, 8, perms)]
    got, losses = train_reference(cm, weights, images, labels, batch=4, steps=8, base_lr=0.01, optimizer=Adam(),
                                  schedule=parse_schedule("cosine"), masks=masks, permutations=perms)
    expect, tlosses = _torch_trajectory(cm, weights, images, labels, 4, 8, "adam", {}, 0.01, "cosine", perms, masks)
    close(np.array(losses), np.array(tlosses), "losses")
    for name in weights:
        close(got[name], expect[name], name)


def test_batches_in_order():
    got = [(e, idx.tolist()) for e, idx in batches_in_order(10, 4, 7)]
    assert got == [(0, [0, 1, 2, 3]), (0, [4, 5, 6, 7]), (0, [8, 9]), (1, [0, 1, 2, 3]), (1, [4, 5, 6, 7]),
                   (1, [8, 9]), (2, [0, 1, 2, 3])]
    # shuffled: epoch e takes its batches from the e-th permutation, in the same positions
    perms = [np.arange(10)[::-1], np.roll(np.arange(10), 3)]
    got = [(e, idx.tolist()) for e, idx in batches_in_order(10, 4, 5, perms)]
    assert got == [(0, [9, 8, 7, 6]), (0, [5, 4, 3, 2]), (0, [1, 0]), (1, [7, 8, 9, 0]), (1, [1, 2, 3, 4])]
    with pytest.raises(ValueError, match="permutation"):
        batches_in_order(10, 4, 7, perms)
