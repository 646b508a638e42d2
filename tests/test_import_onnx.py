"""``convdsl import``: ONNX models (from torch.onnx.export and from onnx.helper) as .conv programs.

Every imported program is checked by the checker and run through the API, against ONNX Runtime on
the original model (issue 10 item 1).  torch.onnx's legacy exporter (``dynamo=False``) is used:
the dynamo one needs onnxscript, which the test extra does not install.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import convdsl
from convdsl.tools.cli import main
from convdsl.tools.import_onnx import OnnxImportError, identifier, import_onnx

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------- helpers


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # (ONNX's pre-22 shape inference of ceil pools disagrees with ORT's output)
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _convdsl(imported, x: np.ndarray) -> np.ndarray:
    program = convdsl.loads(imported.text, f"{imported.name}.conv")
    return convdsl.compile(program, dict(imported.weights))(x)


def _agrees(proto: onnx.ModelProto, shape, batch: int = 2, seed: int = 0):
    """Import ``proto``, prove its program checks, and compare it with ONNX Runtime."""
    imported = import_onnx(proto)
    checked = convdsl.check_source(imported.text, "imported.conv")
    assert checked.ok, checked.render()
    x = np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)
    want = _ort(proto, x)
    got = _convdsl(imported, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return imported


def _from_torch(module: nn.Module, shape, *, dynamic: bool = True, fold: bool = True, opset: int | None = None,
                sizes: bool = False):
    module.eval()
    f = io.BytesIO()
    axes = {0: "N", 2: "H", 3: "W"} if sizes else {0: "N"}
    kw = dict(dynamic_axes={"x": axes, "y": {0: "N"}}) if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.randn(2 if dynamic else 1, *shape), f, dynamo=False, input_names=["x"],
                          output_names=["y"], do_constant_folding=fold, opset_version=opset, **kw)
    return onnx.load_from_string(f.getvalue())


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _layers(imported) -> list[str]:
    return [layer.op for layer in imported.layers]


# ----------------------------------------------------------------------------- torch.onnx.export


class Reshape(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "view":
            return x.view(x.size(0), -1)
        if self.how == "flatten":
            return torch.flatten(x, 1)
        return x.reshape(-1, x.shape[1] * x.shape[2] * x.shape[3])


def lenet(modern: bool, flat: str = "view") -> nn.Module:
    """D2L's LeNet (sigmoid and average pools) or its modern variant (ReLU and max pools)."""
    act, pool = (nn.ReLU, nn.MaxPool2d) if modern else (nn.Sigmoid, nn.AvgPool2d)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), act(), pool(2, 2), nn.Conv2d(6, 16, 5), act(), pool(2, 2),
                         Reshape(flat), nn.Linear(400, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10))


def test_lenet_sigmoid_avgpool_view():
    proto = _from_torch(lenet(False, "view"), (1, 28, 28))
    assert {"Shape", "Gather", "Concat", "Reshape"} <= set(_ops(proto))  # the x.view(N, -1) chain
    imported = _agrees(proto, (1, 28, 28), batch=3)
    assert _layers(imported)[:3] == ["conv(6, kernel=5, padding=2)", "sigmoid", "avgpool(2)"]
    assert "flatten" in _layers(imported)


def test_lenet_relu_maxpool_flatten_fixed_batch():
    proto = _from_torch(lenet(True, "flatten"), (1, 28, 28), dynamic=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    imported = _agrees(proto, (1, 28, 28), batch=1)
    assert "maxpool(2)" in _layers(imported)
    # the fixed batch of the graph becomes the language's N: the program runs any batch
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28), dtype=np.float32)
    assert _convdsl(imported, x).shape == (4, 10)


def test_reshape_with_a_computed_size():
    _agrees(_from_torch(lenet(True, "reshape"), (1, 28, 28)), (1, 28, 28))


def test_alexnet_like_with_dropout():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(24 * 3 * 3, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 32), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(32, 10))
    _agrees(_from_torch(net, (3, 32, 32)), (3, 32, 32))


@pytest.mark.parametrize("opset", [None, 11])
def test_vgg_like(opset):
    def block(convs, c_in, c_out):
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            c_in = c_out
        return layers + [nn.MaxPool2d(2, 2)]

    net = nn.Sequential(*block(1, 3, 8), *block(2, 8, 16), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
                        nn.Linear(32, 10), nn.Softmax(dim=1))
    imported = _agrees(_from_torch(net, (3, 16, 16), opset=opset), (3, 16, 16))
    assert _layers(imported)[-1] == "softmax"


def test_nin_like_global_pool():
    def nin(c_in, c_out, k, s, p):
        return [nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU(), nn.Conv2d(c_out, c_out, 1), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 1), nn.ReLU()]

    net = nn.Sequential(*nin(1, 8, 5, 2, 0), nn.MaxPool2d(3, 2), *nin(8, 10, 3, 1, 1),
                        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    proto = _from_torch(net, (1, 32, 32))
    assert "GlobalAveragePool" in _ops(proto)
    assert "global_avgpool" in _layers(_agrees(proto, (1, 32, 32)))


def test_symbolic_height_and_width_from_torch():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 10, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Softmax(dim=1))
    proto = _from_torch(net, (3, 12, 12), sizes=True)
    imported = import_onnx(proto)
    assert "(x: [N, 3, H, W])" in imported.text and "[N, 8, H // 2, W // 2]" in imported.text
    net_c = convdsl.compile(convdsl.loads(imported.text), dict(imported.weights))
    for h, w in ((6, 8), (13, 10)):
        x = _rand(2, 3, h, w, seed=h)
        np.testing.assert_allclose(net_c(x), _ort(proto, x), rtol=RTOL, atol=ATOL)


def test_batchnorm_after_conv_is_folded():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():  # statistics far from the identity, so that a wrong fold shows
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    proto = _from_torch(net, (3, 12, 12), fold=False)
    assert _ops(proto).count("BatchNormalization") == 2
    imported = _agrees(proto, (3, 12, 12))
    assert [layer.note for layer in imported.layers if layer.note][0].startswith("BatchNormalization")
    assert sum(1 for layer in imported.layers if "folded" in layer.note) == 2
    assert sum(1 for op in _layers(imported) if op.startswith("conv")) == 2


@pytest.mark.parametrize("include", [True, False])
def test_avgpool_count_include_pad_and_ceil_mode(include):
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=include),
                        nn.MaxPool2d(2, 2, ceil_mode=True))
    proto = _from_torch(net, (2, 12, 13))
    imported = _agrees(proto, (2, 12, 13))
    pool = _layers(imported)[1]
    assert "ceil=true" in pool and ("count_pad=false" in pool) == (not include)


def test_ceil_mode_window_starting_in_the_padding_is_dropped():
    # n=5, k=2, s=2, p=1: rounding up gives 4 windows, the last would start in the end padding
    net = nn.Sequential(nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), nn.AvgPool2d(2, 2, padding=1, ceil_mode=True))
    imported = _agrees(_from_torch(net, (1, 5, 5)), (1, 5, 5))
    assert imported.layers[0].shape[2:] == (3, 3)


def test_grouped_and_dilated_convs():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.Tanh(),
                        nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=8), nn.Sigmoid(),
                        nn.Conv2d(8, 6, 2, dilation=(1, 2), groups=2))
    imported = _agrees(_from_torch(net, (4, 11, 10)), (4, 11, 10))
    assert "dilation=2, groups=2" in _layers(imported)[0]


def test_layer_names_come_from_the_nodes():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
            self.classifier = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    imported = _agrees(_from_torch(Named(), (1, 8, 8)), (1, 8, 8))
    names = [layer.name for layer in imported.layers]
    assert names[0] == "features_0" and names[-1] == "classifier"
    assert set(imported.weights) == {"features_0.weight", "features_0.bias", "classifier.weight", "classifier.bias"}


def test_identifier():
    assert identifier("/features/features.0/Conv", "conv") == "features_0"
    assert identifier("/0/Conv", "conv") == "conv0"
    assert identifier("conv1", "conv") == "conv1"
    assert identifier("model", "conv") == "model_"
    assert identifier("", "relu") == "relu"


# ----------------------------------------------------------------------------- onnx.helper graphs


def _graph(nodes, inits, in_shape, opset: int = 17, out_shape=None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "test", [x], [y], initializer=[numpy_helper.from_array(a, k)
                                                                  for k, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"])
def test_conv_and_pool_auto_pad(auto_pad):
    pads = dict(pads=[1, 0, 2, 1]) if auto_pad == "NOTSET" else {}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv_a", kernel_shape=[3, 2], strides=[2, 2],
                              auto_pad=auto_pad, **pads),
             helper.make_node("MaxPool", ["c"], ["m"], name="pool_a", kernel_shape=[3, 3], strides=[1, 1],
                              auto_pad=auto_pad),
             helper.make_node("AveragePool", ["m"], ["y"], name="pool_b", kernel_shape=[2, 2], strides=[2, 2],
                              auto_pad=auto_pad)]
    model = _graph(nodes, {"w": _rand(4, 3, 3, 2), "b": _rand(4)}, ["N", 3, 15, 12])
    _agrees(model, (3, 15, 12))


def test_same_padding_that_needs_ceil_for_an_average_with_padding_counted_is_refused():
    # SAME_UPPER with an even kernel puts the extra row at the end; counted in the mean it differs
    node = helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2, 2], strides=[1, 1],
                            auto_pad="SAME_UPPER", count_include_pad=1)
    with pytest.raises(OnnxImportError) as e:
        import_onnx(_graph([node], {}, ["N", 1, 6, 6]))
    assert "AveragePool node 'p'" in str(e.value) and "more padding at one end" in str(e.value)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_trans_b_alpha_beta(trans_b):
    w = _rand(6, 12) if trans_b else _rand(12, 6)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "c"], ["y"], name="fc", transB=trans_b, alpha=0.5, beta=2.0)]
    imported = _agrees(_graph(nodes, {"w": w, "c": _rand(1, 6)}, ["N", 3, 2, 2]), (3, 2, 2))
    assert imported.weights["fc.weight"].shape == (6, 12)


def test_gemm_without_bias_and_with_a_scalar_bias():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["g"], name="a", transB=1),
             helper.make_node("Gemm", ["g", "v", "c"], ["y"], name="b", transB=1)]
    imported = _agrees(_graph(nodes, {"w": _rand(5, 8), "v": _rand(3, 5), "c": np.array([0.25], np.float32)},
                              ["N", 2, 2, 2]), (2, 2, 2))
    assert _layers(imported)[1:] == ["dense(5, bias=false)", "dense(3)"]


def test_matmul_add_and_a_bare_matmul():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["m"], name="fc1"),
             helper.make_node("Add", ["bias", "m"], ["a"], name="fc1_add"),  # (the constant first: either order)
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "v"], ["y"], name="fc2")]
    inits = {"w": _rand(18, 7), "bias": _rand(7), "v": _rand(7, 4), "shape": np.array([0, -1], np.int64)}
    imported = _agrees(_graph(nodes, inits, ["N", 2, 3, 3]), (2, 3, 3))
    assert _layers(imported) == ["flatten", "dense(7)", "relu", "dense(4, bias=false)"]


@pytest.mark.parametrize("target", [[-1, 18], [0, 18], [0, -1], [-1, 2, 9]])
def test_constant_reshape_targets(target):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    model = _graph(nodes, {"w": _rand(4, 18), "shape": np.array(target, np.int64)}, ["N", 2, 3, 3])
    if len(target) == 3:  # [N, 2, 9]: not a flatten of each image
        with pytest.raises(OnnxImportError, match=r"Reshape node 'flat': it makes \[N, 2, 9\]"):
            import_onnx(model)
        return
    assert _layers(_agrees(model, (2, 3, 3), batch=3))[0] == "flatten"


def test_a_reshape_that_fixes_the_batch_is_refused():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="flat")]
    model = _graph(nodes, {"shape": np.array([1, -1], np.int64)}, ["N", 2, 3, 3])
    with pytest.raises(OnnxImportError, match=r"it makes \[1, N\*18\]"):
        import_onnx(model)


def test_a_graph_that_computes_nothing_is_refused():
    model = _graph([helper.make_node("Identity", ["x"], ["y"])], {}, ["N", 2, 3, 3])
    with pytest.raises(OnnxImportError, match="needs one layer"):
        import_onnx(model)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_under_both_axis_rules(opset):
    # opset 11: axis 1 flattens [N, F] -> rows of F; opset 13: axis 1 of [N, C, H, W] is per pixel
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1])]
    if opset == 11:
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
                  helper.make_node("Softmax", ["f"], ["y"])]  # (default axis 1)
    else:
        nodes += [helper.make_node("Softmax", ["c"], ["y"], axis=1)]
    imported = _agrees(_graph(nodes, {"w": _rand(5, 3, 1, 1)}, ["N", 3, 4, 4], opset=opset), (3, 4, 4))
    assert _layers(imported)[-1] == "softmax"


def test_softmax_at_opset_11_over_a_4d_map_is_refused_with_the_reason():
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)]
    with pytest.raises(OnnxImportError) as e:
        import_onnx(_graph(nodes, {}, ["N", 3, 4, 4], opset=11))
    assert "Softmax node 'sm'" in str(e.value) and "before opset 13" in str(e.value)
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="sm")]  # opset 13's default axis is -1
    with pytest.raises(OnnxImportError) as e:
        import_onnx(_graph(nodes, {}, ["N", 3, 4, 4], opset=13))
    assert "over axis 3" in str(e.value)


def test_softmax_at_opset_11_over_1x1_maps_is_the_channel_softmax():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Softmax", ["g"], ["y"])]
    _agrees(_graph(nodes, {}, ["N", 6, 3, 3], opset=11), (6, 3, 3))


def test_dropout_identity_and_batchnorm_nodes():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], name="bn", epsilon=1e-4),
             helper.make_node("Identity", ["n"], ["i"], name="id"),
             helper.make_node("Dropout", ["i", "ratio"], ["d"], name="drop"),
             helper.make_node("Sigmoid", ["d"], ["y"])]
    inits = {"w": _rand(4, 2, 3, 3), "b": _rand(4), "g": _rand(4) + 2, "be": _rand(4, seed=1),
             "mu": _rand(4, seed=2), "var": np.abs(_rand(4, seed=3)) + 0.5, "ratio": np.array(0.3, np.float32)}
    imported = _agrees(_graph(nodes, inits, [1, 2, 6, 6]), (2, 6, 6), batch=1)
    assert _layers(imported) == ["conv(4, kernel=3, padding=1)", "sigmoid"]
    assert any("Dropout drop" in r for r in imported.removed) and any("Identity id" in r for r in imported.removed)


def test_every_unsupported_node_is_listed():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky"),
             helper.make_node("Pad", ["l", "pads"], ["p"], name="pad"),
             helper.make_node("BatchNormalization", ["p", "g", "be", "mu", "var"], ["n"], name="lonely_bn"),
             helper.make_node("Add", ["n", "c"], ["a"], name="residual"),
             helper.make_node("Softmax", ["a"], ["y"], name="sm")]
    inits = {"w": _rand(3, 3, 3, 3), "pads": np.zeros(8, np.int64), "g": _rand(3), "be": _rand(3),
             "mu": _rand(3), "var": np.ones(3, np.float32)}
    with pytest.raises(OnnxImportError) as e:
        import_onnx(_graph(nodes, inits, ["N", 3, 5, 5], opset=13))
    text = str(e.value)
    for op, name in (("LeakyRelu", "leaky"), ("Pad", "pad"), ("BatchNormalization", "lonely_bn"),
                     ("Add", "residual"), ("Softmax", "sm")):
        assert f"{op} node '{name}'" in text, text
    assert "5 nodes" in text and "c1" not in text.split("\n", 1)[1]


def test_a_graph_with_two_inputs_is_refused():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 2, 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]))
    with pytest.raises(OnnxImportError, match="one input and one output"):
        import_onnx(model)


def test_symbolic_height_and_width_stay_symbolic():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("GlobalAveragePool", ["m"], ["y"])]
    imported = import_onnx(_graph(nodes, {"w": _rand(4, 3, 3, 3)}, ["batch", 3, "H", "W"]))
    assert "model test(x: [N, 3, H, W])" in imported.text
    assert "-> [N, 4, (H + 1) // 2, (W + 1) // 2]" in imported.text
    program = convdsl.loads(imported.text)
    net = convdsl.compile(program, dict(imported.weights))
    proto = _graph(nodes, {"w": _rand(4, 3, 3, 3)}, ["batch", 3, "H", "W"])
    for h, w in ((7, 9), (10, 6)):
        x = _rand(2, 3, h, w, seed=h)
        np.testing.assert_allclose(net(x), _ort(proto, x), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- random conv / pool graphs


@st.composite
def _window_graphs(draw):
    c_in = draw(st.integers(1, 3))
    h, w = draw(st.integers(5, 12)), draw(st.integers(5, 12))
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if c_in % g == 0]))
    c_out = groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    auto = draw(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    # (ONNX Runtime refuses dilation with SAME padding, and a SAME pool whose stride passes its kernel)
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if auto in ("NOTSET", "VALID") else (1, 1)
    conv_attrs: dict = dict(kernel_shape=list(k), strides=list(s), dilations=list(d), group=groups, auto_pad=auto)
    if auto == "NOTSET":
        conv_attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(4)]
    kind = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    pk = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pool_auto = draw(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    top = 3 if pool_auto in ("NOTSET", "VALID") else 1
    pool_attrs: dict = dict(kernel_shape=list(pk), strides=[draw(st.integers(1, max(top, pk[0]))),
                                                            draw(st.integers(1, max(top, pk[1])))],
                            ceil_mode=draw(st.integers(0, 1)), auto_pad=pool_auto)
    if pool_attrs["auto_pad"] == "NOTSET":
        ph, pw = draw(st.integers(0, pk[0] // 2)), draw(st.integers(0, pk[1] // 2))
        pool_attrs["pads"] = [ph, pw, ph, pw]
    if kind == "AveragePool":
        pool_attrs["count_include_pad"] = draw(st.integers(0, 1))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **conv_attrs),
             helper.make_node(kind, ["c"], ["y"], name="pool", **pool_attrs)]
    seed = draw(st.integers(0, 2**16))
    inits = {"w": _rand(c_out, c_in // groups, *k, seed=seed), "b": _rand(c_out, seed=seed + 1)}
    return nodes, inits, (c_in, h, w)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_window_graphs())
def test_random_conv_pool_graphs_against_onnxruntime(case):
    nodes, inits, shape = case
    try:
        model = _graph(nodes, inits, ["N", *shape])
        x = _rand(2, *shape)
        want = _ort(model, x)
    except Exception:  # a graph ONNX itself refuses (an output size below 1): nothing to compare
        return
    if want.size == 0:
        return
    try:
        imported = import_onnx(model)
    except OnnxImportError as e:  # refused: only for what the language cannot say, and said why
        # (ONNX Runtime sizes a window larger than its input as one output row, where ONNX says none)
        assert any(why in str(e) for why in ("symmetric pool padding", "more than half the kernel", "is empty")), e
        return
    np.testing.assert_allclose(_convdsl(imported, x), want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- the command


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_import_check_and_run(tmp_path, capsys):
    proto = _from_torch(lenet(True), (1, 28, 28))
    src = tmp_path / "lenet.onnx"
    onnx.save(proto, src)
    code, out, err = cli(capsys, "import", src)
    assert code == 0, err
    conv, npz = tmp_path / "lenet.conv", tmp_path / "lenet.npz"
    assert conv.exists() and npz.exists() and "wrote" in out
    assert cli(capsys, "check", conv)[0] == 0
    x = _rand(5, 1, 28, 28)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli(capsys, "run", conv, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                         "--repeat", "1")
    assert code == 0, err
    assert f"weights: {npz}" in out  # the .npz beside the program, as `run` looks for it
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _ort(proto, x), rtol=RTOL, atol=ATOL)


def test_cli_import_options(tmp_path, capsys):
    onnx.save(_from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 5, 5)), tmp_path / "m.onnx")
    code, out, err = cli(capsys, "import", tmp_path / "m.onnx", "-o", tmp_path / "out" / "net.conv")
    assert code == 2 and "no writable directory" in err
    code, _, err = cli(capsys, "import", tmp_path / "m.onnx", "-o", tmp_path / "net.conv", "--weights",
                       tmp_path / "w.npz", "--name", "Tiny")
    assert code == 0, err
    assert "model Tiny(x: [N, 1, 5, 5]) -> [N, 2, 3, 3]" in (tmp_path / "net.conv").read_text()
    assert sorted(np.load(tmp_path / "w.npz")) == ["conv0.bias", "conv0.weight"]  # (torch's node /0/Conv)
    assert cli(capsys, "import", tmp_path / "m.onnx", "--name", "9lives")[0] == 2


def test_cli_import_writes_safetensors(tmp_path, capsys):
    """--weights W.safetensors: the weights in that format, which `run --weights` reads back."""
    from safetensors.numpy import load_file

    proto = _from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)), (1, 5, 5))
    onnx.save(proto, tmp_path / "m.onnx")
    code, _, err = cli(capsys, "import", tmp_path / "m.onnx", "--weights", tmp_path / "w.safetensors")
    assert code == 0, err
    assert sorted(load_file(str(tmp_path / "w.safetensors"))) == sorted(np.load(_npz_of(proto, tmp_path)))
    x = _rand(2, 1, 5, 5)
    np.save(tmp_path / "x.npy", x)
    code, _, err = cli(capsys, "run", tmp_path / "m.conv", "--weights", tmp_path / "w.safetensors",
                       "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--repeat", "1")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _ort(proto, x), rtol=RTOL, atol=ATOL)
    assert cli(capsys, "import", tmp_path / "m.onnx", "--weights", tmp_path / "w.pt")[0] == 2


def _npz_of(proto, tmp_path):
    onnx.save(proto, tmp_path / "again.onnx")
    main(["import", str(tmp_path / "again.onnx")])
    return tmp_path / "again.npz"


def test_cli_import_errors(tmp_path, capsys, monkeypatch):
    code, _, err = cli(capsys, "import", tmp_path / "missing.onnx")
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    code, _, err = cli(capsys, "import", bad)
    assert code == 1 and "not a" in err and "ONNX model" in err and "Traceback" not in err
    assert not (tmp_path / "bad.conv").exists()
    nodes = [helper.make_node("LeakyRelu", ["x"], ["l"], name="a"), helper.make_node("Elu", ["l"], ["y"], name="b")]
    onnx.save(_graph(nodes, {}, ["N", 1, 3, 3], out_shape=["N", 1, 3, 3]), tmp_path / "u.onnx")
    code, _, err = cli(capsys, "import", tmp_path / "u.onnx")
    assert code == 1 and "LeakyRelu node 'a'" in err and "Elu node 'b'" in err
    assert not (tmp_path / "u.conv").exists()
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if the extra were not installed
    code, _, err = cli(capsys, "import", tmp_path / "u.onnx")
    assert code == 1 and "pip install 'convdsl[onnx]'" in err and "Traceback" not in err
