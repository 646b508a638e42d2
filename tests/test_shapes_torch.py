"""Every concrete example's shapes, params and MACs cross-checked against PyTorch.

Each checked layer is rebuilt independently here as a torch.nn module (on the
`meta` device: shapes propagate, nothing is computed or allocated), a tensor
is pushed through, and torch's shape and parameter count are compared with
the checker's, layer by layer.  MACs are recomputed from torch's shapes.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES

from convdsl.core.model import Activation, Conv, Dense, Flatten, GlobalAvgPool, Pool, Softmax
from convdsl.frontend import check_source

CONCRETE = ["lenet.conv", "lenet_relu.conv", "lenet5.conv", "alexnet.conv", "vgg11.conv", "vgg11_small.conv",
            "nin.conv"]


def torch_layer(op):
    if isinstance(op, Conv):
        t, b, l, r = op.padding
        conv = torch.nn.Conv2d(op.c_in, op.c_out, op.kernel, stride=op.stride, dilation=op.dilation,
                               groups=op.groups, bias=op.bias, device="meta")
        if t == b and l == r:
            conv.padding = (t, l)
            return conv
        return torch.nn.Sequential(torch.nn.ZeroPad2d((l, r, t, b)), conv)
    if isinstance(op, Pool):
        cls = torch.nn.MaxPool2d if op.kind == "max" else torch.nn.AvgPool2d
        return cls(op.kernel, op.stride, op.padding, ceil_mode=op.ceil)
    if isinstance(op, GlobalAvgPool):
        return torch.nn.AdaptiveAvgPool2d(1)
    if isinstance(op, Flatten):
        return torch.nn.Flatten()
    if isinstance(op, Dense):
        return torch.nn.Linear(op.in_features, op.out_features, bias=op.bias, device="meta")
    if isinstance(op, Activation):
        return {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[op.kind]()
    if isinstance(op, Softmax):
        return torch.nn.Softmax(dim=1)
    raise AssertionError(op)


@pytest.mark.parametrize("name", CONCRETE)
@pytest.mark.parametrize("batch", [1, 3])
def test_concrete_example_matches_torch(name, batch):
    model = check_source((EXAMPLES / name).read_text(), name).result.model()
    x = torch.empty((batch, *model.input_shape[1:]), device="meta")
    total_params = total_macs = 0
    for layer in model.layers:
        module = torch_layer(layer.op)
        y = module(x)
        assert list(y.shape) == [batch, *layer.out_shape[1:]], layer.name
        params = sum(p.numel() for p in module.parameters())
        assert params == layer.params, layer.name
        if isinstance(layer.op, Conv):
            macs = y[0].numel() * (x.shape[1] // layer.op.groups) * layer.op.kernel[0] * layer.op.kernel[1]
        elif isinstance(layer.op, Dense):
            macs = y.shape[1] * x.shape[1]
        else:
            macs = 0
        assert macs == layer.macs, layer.name
        total_params += params
        total_macs += macs
        x = y
    assert (total_params, total_macs) == (model.params, model.macs)
    assert list(x.shape) == [batch, *model.output_shape[1:]]


@pytest.mark.parametrize("name,sizes", [("anysize.conv", [(12, 12), (13, 17), (31, 64), (100, 45)]),
                                        ("symbolic_where.conv", [(16, 16), (20, 32), (64, 44)])])
def test_symbolic_example_matches_torch_at_many_sizes(name, sizes):
    model = check_source((EXAMPLES / name).read_text(), name).result.model()
    for h, w in sizes:
        env = {"N": 2, "H": h, "W": w}
        bound = model.bind(env)
        x = torch.empty((2, *bound.input_shape), device="meta")
        for layer, _, out_shape, op in bound.layers:
            x = torch_layer(op)(x)
            assert tuple(x.shape[1:]) == out_shape, (layer.name, h, w)


def test_valid_for_is_the_true_minimum():
    """One pixel below valid_for, torch itself refuses (or yields an empty map)."""
    model = check_source((EXAMPLES / "anysize.conv").read_text(), "a.conv").result.model()
    h = model.valid_for["H"]
    for size, ok in ((h, True), (h - 1, False)):
        x = torch.empty((1, 3, size, 40), device="meta")
        try:
            for layer in model.bind({"H": size, "W": 40}).layers:
                x = torch_layer(layer[3])(x)
            good = all(d > 0 for d in x.shape)
        except RuntimeError:
            good = False
        assert good == ok


@pytest.mark.parametrize("op", ["maxpool", "avgpool", "conv"])
@pytest.mark.parametrize("k,s,p,ceil,n", [(k, s, p, c, n) for k in (1, 2, 3, 5) for s in (1, 2, 3)
                                          for p in range(0, k // 2 + 1) for c in (False, True)
                                          for n in (k, k + 1, 7, 10, 11)])
def test_output_sizes_match_torch(op, k, s, p, ceil, n):
    """Declare torch's output shape: the checker must prove it, and reject it off by one."""
    if op == "conv" and ceil:
        return
    x = torch.empty(1, 2, n, n + 3, device="meta")
    if op == "conv":
        y = F.conv2d(x, torch.empty(4, 2, k, k, device="meta"), stride=s, padding=p)
        call = f"conv(4, kernel={k}, stride={s}, padding={p})"
    else:
        fn = F.max_pool2d if op == "maxpool" else F.avg_pool2d
        y = fn(x, k, s, p, ceil_mode=ceil)
        call = f"{op}({k}, stride={s}, padding={p}, ceil={str(ceil).lower()})"
    c, h, w = y.shape[1:]
    good = f"model M(x: [N, 2, {n}, {n + 3}]) -> [N, {c}, {h}, {w}] {{\n    {call}\n}}\n"
    bad = f"model M(x: [N, 2, {n}, {n + 3}]) -> [N, {c}, {h + 1}, {w}] {{\n    {call}\n}}\n"
    assert check_source(good).ok, check_source(good).render()
    assert [e.code for e in check_source(bad).result.errors] == ["shape-mismatch"]
