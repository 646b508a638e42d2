"""The compiled training step (convdsl/backend/train.py, convdsl/runtime/training.py) against the
numpy references (tests/reference_grad.py, tests/reference_optim.py) and PyTorch.

Random dense / activation stacks drawn with hypothesis (1-3 dense layers, widths 1-40, batches of
1-17 in batch tiles of 1, 3 or 64, with or without a flatten in front and a softmax at the end,
both vector widths): the loss
and every parameter's gradient against the float64 reference and ``torch.autograd``; K SGD steps
with momentum and weight decay against ``torch.optim.SGD``; the first layer the step cannot train
named in its error.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netbuild import act, conv, dense, flatten, net, softmax
from reference_grad import network_backward
from reference_optim import SGD
from widths import BOTH

from convdsl.backend.loopir import VerifyError, format_program
from convdsl.backend.schedule import Schedule
from convdsl.backend.train import TrainingError, format_train_plan, lower_training, plan_training
from convdsl.backend.verify import verify
from convdsl.core.ops import Activation, Dense, Flatten, Softmax
from convdsl.runtime.errors import BoundaryError
from convdsl.runtime.training import TrainingStep

RTOL, ATOL = 1e-4, 1e-5
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def close(got, expect, what=""):
    expect = expect.detach().numpy() if isinstance(expect, torch.Tensor) else expect
    np.testing.assert_allclose(got, expect, rtol=RTOL, atol=ATOL, err_msg=what)


@st.composite
def heads(draw):
    """A checked model of 1-3 dense layers (widths 1-40) with activations between, a batch, labels."""
    spatial = draw(st.booleans())
    in_shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))) if spatial \
        else (draw(st.integers(1, 40)),)
    layers = [flatten()] if spatial else []
    n_dense = draw(st.integers(1, 3))
    for k in range(n_dense):
        layers.append(dense(draw(st.integers(1, 40)), bias=draw(st.booleans())))
        if k < n_dense - 1 or draw(st.booleans()):
            kind = draw(st.sampled_from(["relu", "sigmoid", "tanh", "none"]))
            if kind != "none":
                layers.append(act(kind))
    if draw(st.booleans()):
        layers.append(softmax())
    cm = net(in_shape, *layers).bind({})
    batch = draw(st.integers(1, 17))
    # (a batch tile of 1 or 3 images runs several tiles and a partial last one; 64, the default, one)
    schedule = replace(Schedule.for_width(draw(st.sampled_from(BOTH))), dense_tile=draw(st.sampled_from([1, 3, 64])))
    return cm, batch, schedule, draw(st.integers(0, 2**31 - 1))


def _data(cm, batch, seed):
    rng = np.random.default_rng(seed)
    tp = plan_training(cm, Schedule.for_width(8))
    weights = {p.name: (rng.standard_normal(p.shape) / np.sqrt(p.shape[-1])).astype(np.float32) for p in tp.params}
    x = rng.standard_normal((batch, *cm.input_shape)).astype(np.float32)
    labels = rng.integers(0, tp.classes, batch)
    return weights, x, labels


def torch_loss(cm, params, x, labels):
    """The model's cross-entropy in PyTorch (functional, from the layers; a last softmax's input
    is the loss's, as CLI.md says)."""
    y = x
    layers = list(cm.layers)
    if isinstance(layers[-1][3], Softmax):
        layers.pop()
    for layer, _, _, op in layers:
        if isinstance(op, Flatten):
            y = y.reshape(y.shape[0], -1)
        elif isinstance(op, Dense):
            y = F.linear(y, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"))
        elif isinstance(op, Activation):
            y = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op.kind](y)
        else:
            raise AssertionError(op)
    return F.cross_entropy(y, torch.as_tensor(labels))


@settings(max_examples=60, **SETTINGS)
@given(heads())
def test_gradients_match_reference_and_autograd(case):
    cm, batch, schedule, seed = case
    weights, x, labels = _data(cm, batch, seed)
    step = TrainingStep(cm, weights, lr=0.1, schedule=schedule)
    loss, grads = step.gradients(x, labels)
    ref_loss, ref_grads = network_backward(cm, weights, x, labels)
    params = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in weights.items()}
    t_loss = torch_loss(cm, params, torch.tensor(x.astype(np.float64)), labels)
    t_grads = dict(zip(params, torch.autograd.grad(t_loss, list(params.values()))))
    close(loss, ref_loss, "loss vs reference")
    close(loss, t_loss, "loss vs torch")
    assert set(grads) == set(ref_grads) == set(weights)
    for name in grads:
        close(grads[name], ref_grads[name], f"{name} vs reference")
        close(grads[name], t_grads[name], f"{name} vs torch")
    assert step.weights().keys() == weights.keys()
    for name, w in step.weights().items():  # (gradients() leaves the state alone)
        np.testing.assert_array_equal(w, weights[name])


@pytest.mark.parametrize("width", BOTH)
def test_wide_layers_use_every_accumulator_path(width):
    """Widths past 4 vectors of 16 (the blocks of independent accumulators), a vector remainder
    and a scalar tail at both widths; 21 images in tiles of 8."""
    cm = net((3, 10, 10), flatten(), dense(77), act("relu"), dense(10)).bind({})
    weights, x, labels = _data(cm, 21, 3)
    step = TrainingStep(cm, weights, lr=0.1, schedule=replace(Schedule.for_width(width), dense_tile=8))
    loss, grads = step.gradients(x, labels)
    ref_loss, ref_grads = network_backward(cm, weights, x, labels)
    close(loss, ref_loss, "loss")
    for name in ref_grads:
        close(grads[name], ref_grads[name], name)


@pytest.mark.parametrize("width, tile", [(8, 4), (16, 64)])
def test_sgd_steps_match_torch_optim(width, tile):
    cm = net((2, 3, 3), flatten(), dense(23), act("tanh"), dense(17), act("relu"), dense(5), softmax()).bind({})
    K, lr, mu, wd = 3, 0.1, 0.9, 1e-2
    weights, _, _ = _data(cm, 1, 7)
    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((b, 2, 3, 3)).astype(np.float32), rng.integers(0, 5, b)) for b in (9, 16, 3)]
    step = TrainingStep(cm, weights, lr=lr, momentum=mu, weight_decay=wd, schedule=replace(Schedule.for_width(width), dense_tile=tile))
    params = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    opt = torch.optim.SGD(list(params.values()), lr=lr, momentum=mu, weight_decay=wd)
    ref, ref_w = SGD(momentum=mu, weight_decay=wd), {k: v.astype(np.float64) for k, v in weights.items()}
    for k in range(K):
        x, labels = batches[k]
        loss = step.step(x, labels)
        opt.zero_grad()
        t_loss = torch_loss(cm, params, torch.tensor(x), labels)
        t_loss.backward()
        opt.step()
        ref_loss, g = network_backward(cm, ref_w, x, labels)
        ref_w = ref.step(ref_w, g, lr)
        close(loss, t_loss, f"loss of step {k}")
        close(loss, ref_loss, f"loss of step {k} vs reference")
        for name, w in step.weights().items():
            close(w, params[name], f"{name} after step {k + 1}")
            close(w, ref_w[name], f"{name} after step {k + 1} vs reference")


def test_unsupported_layer_is_named():
    cm = net((1, 6, 6), conv(2, 3), flatten(), dense(3)).bind({})
    with pytest.raises(TrainingError, match=r"layer conv1 \(conv\).*does not train this op yet"):
        TrainingStep(cm, {}, lr=0.1)


def test_bad_batches_and_weights_are_refused():
    cm = net((4,), dense(3)).bind({})
    weights, x, labels = _data(cm, 2, 1)
    step = TrainingStep(cm, weights, lr=0.1)
    with pytest.raises(BoundaryError, match="labels must be 2 integers in 0 .. 2"):
        step.step(x, np.array([0, 3]))
    with pytest.raises(BoundaryError, match=r"float32 \[N, 4\]"):
        step.step(x.astype(np.float64), labels)
    with pytest.raises(BoundaryError, match=r"dense1.weight has shape \[4, 3\]"):
        TrainingStep(cm, {**weights, "dense1.weight": weights["dense1.weight"].T}, lr=0.1)
    with pytest.raises(BoundaryError, match="no dense1.bias"):
        TrainingStep(cm, {"dense1.weight": weights["dense1.weight"]}, lr=0.1)


def test_plan_and_loops_print_every_stage():
    cm = net((5,), dense(4), act("sigmoid"), dense(3)).bind({})
    tp = plan_training(cm, Schedule.for_width(16))
    text = format_train_plan(tp)
    phases = [s.phase for s in tp.stages]
    assert phases == ["forward"] * 3 + ["loss"] + ["backward"] * 4 + ["update"] * 4
    assert "dense input gradient" in text and "sigmoid gradient" in text and "mean loss @" in text
    loops = format_program(lower_training(tp).program)
    assert "batch tile 64" in text
    assert "kernel tile(" in loops and "log(esum)" in loops and "kernel sgd(" in loops


def test_verifier_proves_the_training_program_in_bounds():
    """The bounds proof is not vacuous for the training kernels: a value slot one float short
    (the last image of a tile would write past it) is rejected."""
    cm = net((6,), dense(5), act("tanh"), dense(3)).bind({})
    prog = lower_training(plan_training(cm, replace(Schedule.for_width(8), dense_tile=4))).program
    verify(prog)
    short = tuple(replace(b, size=b.size - 1) if b.name == "v2" else b for b in prog.buffers)
    with pytest.raises(VerifyError, match="v2"):
        verify(replace(prog, buffers=short))
