"""The op registry (core/ops.py) and the two ops added through it: avgpool(count_pad=false), dropout(p).

Every entry must name a lowering, a reference, an ONNX and a PyTorch exporter that exist, and
every op dataclass must have an entry: an op cannot be half added.  The two additions are
checked, compiled, exported and run against PyTorch and ONNX Runtime from ``.conv`` source.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convdsl
from convdsl.backend.plan import LOWERINGS
from convdsl.core import ops
from convdsl.core.ops import OPS
from convdsl.tools import export_onnx, export_torch
from reference import REFERENCE, random_weights, run_reference

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list(OPS))
def test_every_entry_names_what_exists(name):
    d = OPS[name]
    assert d.name == name
    assert d.lowering in LOWERINGS, f"{name}: no lowering {d.lowering!r} in backend/plan.py"
    assert d.reference in REFERENCE, f"{name}: no reference {d.reference!r} in tests/reference.py"
    assert d.onnx in export_onnx._EXPORTERS, f"{name}: no ONNX exporter {d.onnx!r}"
    assert d.torch in export_torch._BUILDERS, f"{name}: no PyTorch builder {d.torch!r}"
    assert d.usage.startswith(f"usage: {name}")
    assert len({p.name for p in d.params}) == len(d.params)
    positional = [p.positional for p in d.params]
    assert positional == sorted(positional, reverse=True), "positional parameters come first"


def test_every_op_class_has_an_entry():
    for cls in typing.get_args(ops.Op):
        kinds = {ops.op_kind(op) for op in _instances(cls)}
        assert kinds and kinds <= set(OPS), cls


def _instances(cls):
    if cls is ops.Pool:
        return [ops.Pool(k, (2, 2), (2, 2), (0, 0), False) for k in ("max", "avg")]
    if cls is ops.Activation:
        return [ops.Activation(k) for k in ("relu", "sigmoid", "tanh")]
    defaults = {"c_in": 1, "c_out": 1, "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0),
                "dilation": (1, 1), "groups": 1, "bias": True, "in_features": 1, "out_features": 1, "p": 0.5}
    return [cls(**{f: defaults[f] for f in cls.__dataclass_fields__})]


def test_usage_text_comes_from_the_signature():
    assert OPS["conv"].usage == "usage: conv(c_out, kernel=k, stride=1, padding=0, dilation=1, groups=1, bias=true)"
    assert OPS["avgpool"].usage == "usage: avgpool(k, stride=k, padding=0, ceil=false, count_pad=true)"
    assert OPS["maxpool"].usage == "usage: maxpool(k, stride=k, padding=0, ceil=false)"
    assert OPS["dropout"].usage == "usage: dropout(p)"


# ----------------------------------------------------------------------------- checking


def _check(body: str, shape: str = "[N, 3, 9, 9]", out: str | None = None):
    src = f"model M(x: {shape}) -> {out or shape} {{\n{body}\n}}\n"
    return convdsl.check_source(src).result


def _messages(result) -> list[str]:
    return [d.message for d in result.errors]


def test_count_pad_checks():
    r = _check("    avgpool(3, stride=1, padding=1, count_pad=false)")
    assert r.ok, _messages(r)
    layer = r.model().layers[0]
    assert layer.op.count_pad is False
    assert layer.text == "avgpool(3, stride=1, padding=1, count_pad=false)"
    assert "count_pad" not in convdsl.core.model.format_op(_check("    maxpool(3, stride=1, padding=1)").model()
                                                          .layers[0].op)
    r = _check("    maxpool(3, stride=1, padding=1, count_pad=false)")
    assert _messages(r) == ["maxpool has no argument 'count_pad'"]
    r = _check("    avgpool(3, stride=1, padding=1, count_pad=1)")
    assert _messages(r) == ["count_pad is true or false, not 1"]


def test_dropout_checks():
    for text in ("dropout(0.5)", "dropout(p=.25)", "dropout(0)", "dropout(0.0)", "d: dropout(0.999)"):
        r = _check("    " + text)
        assert r.ok, (text, _messages(r))
        (layer,) = r.model().layers
        assert isinstance(layer.op, ops.Dropout) and 0 <= layer.op.p < 1
        assert layer.params == 0 and layer.macs == 0
    assert _check("    dropout(.25)").model().layers[0].op.p == 0.25
    assert _check("    dropout(0.5)").model().layers[0].name == "dropout1"
    cases = {
        "dropout": "dropout needs the argument 'p'",
        "dropout(1.0)": "the dropout probability must be at least 0 and below 1, not 1.0",
        "dropout(-0.5)": "the dropout probability must be at least 0 and below 1, not -0.5",
        "dropout(1)": "the dropout probability must be at least 0 and below 1, not 1",
        "dropout(same)": "the dropout probability is a decimal number such as 0.5, not same",
        "dropout(0.5, 0.5)": "dropout takes at most 1 positional argument (p)",
        "dropout(q=0.5)": "dropout has no argument 'q'",
        "conv(0.5, kernel=3)": "the number of output channels must be an integer, not 0.5",
    }
    for text, message in cases.items():
        r = _check("    " + text, out="[N, 3, 9, 9]")
        assert message in _messages(r), (text, _messages(r))


def test_a_decimal_where_a_size_goes_is_a_syntax_error():
    r = _check("    conv(4, kernel=3)", shape="[N, 3, 9.5, 9]")
    assert r.errors and r.errors[0].code == "syntax"


# ----------------------------------------------------------------------------- end to end


def _torch(model, w, x):
    import torch

    with torch.inference_mode():
        return export_torch.to_torch(model, w)(torch.from_numpy(x)).numpy()


def _ort(model, w, x):
    import onnxruntime as ort

    proto = export_onnx.to_onnx(model, w)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _everywhere(src: str, batch: int = 3, seed: int = 0):
    """convdsl (compiled), the numpy reference, the bench's numpy engine, PyTorch and ONNX Runtime on
    one program."""
    from convdsl.tools.bench.engines import numpy_forward

    program = convdsl.loads(src)
    m = program.model()
    cm = m.bind(m.sizes())
    rng = np.random.default_rng(seed)
    w = random_weights(cm, rng)
    x = rng.standard_normal((batch, *cm.input_shape)).astype(np.float32)
    net = convdsl.compile(program, w, cache=False)
    got = net(x)
    for name, other in (("reference", run_reference(cm, w, x)), ("numpy engine", numpy_forward(cm, w)(x)),
                        ("torch", _torch(cm, w, x)),
                        ("onnxruntime", _ort(m, w, x))):
        np.testing.assert_allclose(got, other, rtol=RTOL, atol=ATOL, err_msg=name)
    return got


def test_count_pad_false_against_torch_and_onnxruntime():
    got = _everywhere("""
model P(x: [N, 4, 11, 12]) -> [N, 4, 6, 6] {
    avgpool(3, stride=2, padding=1, count_pad=false)   -> [N, 4, 6, 6]
}
""")
    # border windows hold real cells only: a constant input gives the constant back everywhere
    net = convdsl.compile(convdsl.loads("""
model P(x: [N, 2, 7, 7]) -> [N, 2, 4, 4] {
    avgpool(3, stride=2, padding=1, count_pad=false)
}
"""), cache=False)
    np.testing.assert_allclose(net(np.full((1, 2, 7, 7), 3.0, np.float32)), 3.0, rtol=1e-6)
    assert got.shape == (3, 4, 6, 6)


def test_count_pad_both_ways_differ_at_the_border():
    src = """
model P(x: [N, 1, 4, 4]) -> [N, 1, 3, 3] {{
    avgpool(2, stride=2, padding=1, count_pad={})
}}
"""
    ones = np.ones((1, 1, 4, 4), np.float32)
    with_pad = convdsl.compile(convdsl.loads(src.format("true")), cache=False)(ones)
    without = convdsl.compile(convdsl.loads(src.format("false")), cache=False)(ones)
    assert not np.allclose(with_pad, without)
    np.testing.assert_allclose(without, 1.0, rtol=1e-6)


def test_dropout_is_the_identity_when_running():
    got = _everywhere("""
model D(x: [N, 3, 8, 8]) -> [N, 10] {
    conv(6, kernel=3)     -> [N, 6, 6, 6]
    relu
    dropout(0.5)
    flatten
    dropout(p=.25)
    dense(10)
    softmax
}
""")
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_dropout_exports():
    program = convdsl.loads("model D(x: [N, 2, 3, 3]) -> [N, 2, 3, 3] {\n    dropout(0.3)\n}\n")
    proto = export_onnx.to_onnx(program.model(), {})
    (node,) = proto.graph.node
    assert node.op_type == "Dropout"
    ratio = next(t for t in proto.graph.initializer if t.name == node.input[1])
    assert abs(float(np.frombuffer(ratio.raw_data, np.float32)[0]) - 0.3) < 1e-7
    import torch

    module = export_torch.to_torch(program.model(), {})
    assert isinstance(module[0], torch.nn.Dropout) and module[0].p == 0.3 and not module.training


@st.composite
def _avgpool_case(draw):
    c, h, w = draw(st.integers(1, 20)), draw(st.integers(1, 14)), draw(st.integers(1, 14))
    kernel = (draw(st.integers(1, min(5, h))), draw(st.integers(1, min(5, w))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    return (c, h, w), kernel, stride, padding, draw(st.booleans()), draw(st.booleans()), draw(st.booleans())


def _pair(v: tuple[int, int]) -> str:
    return f"({v[0]}, {v[1]})"


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_avgpool_case(), st.integers(1, 5))
def test_random_avgpools_match_torch(case, batch):
    import torch

    (c, h, w), kernel, stride, padding, ceil, count_pad, with_dropout = case
    # the declared output is what torch computes: the checker must prove it too
    y = torch.nn.functional.avg_pool2d(torch.zeros(1, c, h, w), kernel, stride, padding, ceil_mode=ceil,
                                       count_include_pad=count_pad)
    word = {True: "true", False: "false"}
    src = (f"model P(x: [N, {c}, {h}, {w}]) -> [N, {c}, {y.shape[2]}, {y.shape[3]}] {{\n"
           + ("    dropout(0.5)\n" if with_dropout else "")
           + f"    avgpool({_pair(kernel)}, stride={_pair(stride)}, padding={_pair(padding)}, "
             f"ceil={word[ceil]}, count_pad={word[count_pad]})\n}}\n")
    _everywhere(src, batch=batch)
