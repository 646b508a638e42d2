"""`convdsl bench`, the ONNX exporter and the numpy engine: agreement and output shape, no timings."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx  # noqa: E402  (the test extra installs onnx, onnxruntime and torch: no skipping)
import onnxruntime as ort  # noqa: E402
import pytest
from conftest import EXAMPLES
from netbuild import act, conv, dense, flatten, gap, lenet, net, pool, softmax
from reference import random_weights, run_reference

import convdsl
from convdsl import api
from convdsl.runtime.boundary import load_weights
from convdsl.runtime.compiled import compile_model
from convdsl.tools.bench.engines import ENGINES, numpy_forward
from convdsl.tools.bench.render import render
from convdsl.tools.cli import main
from convdsl.tools.export_onnx import to_onnx

RTOL, ATOL = 1e-4, 1e-5

# Small models that together use every op and every argument the exporter writes.
MODELS = {
    "lenet": lenet(),
    "lenet_relu": lenet(relu=True),
    "asym_pad_dilation_groups": net((4, 11, 9), conv(6, (3, 2), stride=(2, 1), padding=(0, 2, 1, 0),
                                                     dilation=(2, 3), groups=2),
                                    act("tanh"), conv(6, 1, groups=3, bias=False), act("relu"),
                                    gap(), flatten(), softmax()),
    "ceil_pools": net((3, 13, 10), pool("max", 3, 2, padding=1, ceil=True), act("sigmoid"),
                      pool("avg", 3, 2, padding=1, ceil=True), conv(5, 2, stride=2, padding="same"),
                      pool("avg", (2, 3), (1, 2), ceil=True), flatten(), dense(7, bias=False), softmax()),
    "softmax_4d_same": net((2, 6, 7), conv(4, 3, padding="same", dilation=2), softmax(),
                           pool("max", 2, 1, padding=1), act("tanh")),
    "dense_only": net((1, 5, 4), flatten(), dense(9), act("tanh"), dense(3), softmax()),
}


def _ort(proto, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _close(a, b):
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * scale)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_convdsl_torch_and_numpy(name):
    import torch

    from convdsl.tools.export_torch import to_torch

    model = MODELS[name]
    cm = model.bind({})
    rng = np.random.default_rng(len(name))
    w = random_weights(cm, rng)
    x = rng.standard_normal((3, *cm.input_shape)).astype(np.float32)

    compiled = compile_model(cm)
    y_conv = compiled.run(x, compiled.pack_weights(w))
    y_onnx = _ort(to_onnx(model, w)).run(None, {"x": x})[0]
    with torch.inference_mode():
        y_torch = to_torch(cm, w)(torch.from_numpy(x)).numpy()
    y_np = numpy_forward(cm, w)(x)
    y_ref = run_reference(cm, w, x)

    assert y_onnx.shape == y_conv.shape == y_torch.shape == y_np.shape == (3, *cm.output_shape)
    _close(y_onnx, y_conv)
    _close(y_onnx, y_torch)
    _close(y_np, y_ref)
    _close(y_conv, y_ref)


def test_onnx_graph_attributes():
    model = MODELS["asym_pad_dilation_groups"]
    w = random_weights(model.bind({}), np.random.default_rng(0))
    proto = to_onnx(model, w)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [4, 11, 9]
    first = proto.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in first.attribute}
    assert first.op_type == "Conv"
    assert attrs["pads"] == [0, 1, 2, 0]  # [top, left, bottom, right] from (top 0, bottom 2, left 1, right 0)
    assert attrs["dilations"] == [2, 3] and attrs["group"] == 2 and attrs["strides"] == [2, 1]
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Conv", "Tanh", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Softmax"]
    pools = to_onnx(MODELS["ceil_pools"], random_weights(MODELS["ceil_pools"].bind({}), np.random.default_rng(0)))
    avg = next(n for n in pools.graph.node if n.op_type == "AveragePool")
    a = {x.name: onnx.helper.get_attribute_value(x) for x in avg.attribute}
    assert a["count_include_pad"] == 1 and a["ceil_mode"] == 1 and a["pads"] == [1, 1, 1, 1]


def test_onnx_lenet_digits_accuracy_matches_convdsl():
    """The exported graph of the trained LeNet, on the bundled digits, agrees with convdsl."""
    import convdsl
    from convdsl.data import load_digits

    program = convdsl.load(EXAMPLES / "lenet.conv")
    weights = load_weights(EXAMPLES / "lenet.npz")
    net_ = convdsl.compile(program, weights)
    images, labels = load_digits()
    y = net_(images, threads=1)
    y_onnx = _ort(to_onnx(program.model(), weights)).run(None, {"x": images})[0]
    _close(y_onnx, y)
    assert (y_onnx.argmax(1) == y.argmax(1)).all()


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_json_shape(capsys):
    code, out, err = _cli(capsys, "bench", str(EXAMPLES / "lenet.conv"), "--batch", "1,3", "--threads", "1",
                          "--compare", "torch,onnxruntime,numpy", "--json", "--repeat", "2")
    assert code == 0, err
    rep = json.loads(out)
    assert set(rep["peak_gflops"]) == {"1"} and rep["peak_gflops"]["1"] > 0
    # the physical peak, by convdsl's own FMA kernel at the host's width, beside the sgemm one
    # at 1 and 2 threads whatever is timed (CLI.md), fewer only where fewer cores may be used
    assert set(rep["fma_peak_gflops"]) == {"1", str(min(2, api.max_threads()))}
    assert all(math.isfinite(g) and g > 0 for g in rep["fma_peak_gflops"].values())
    assert rep["fma_peak"]["width"] == convdsl.Schedule.for_host().vector_width
    assert rep["model"] == "LeNet" and rep["macs"] == 416520
    assert {"cpu", "features", "cores"} <= set(rep["host"])
    assert rep["skipped"] == {}
    results = rep["results"]
    assert {(r["engine"], r["batch"], r["threads"]) for r in results} == {
        (e, b, 1) for e in ("convdsl", "torch", "onnxruntime", "numpy") for b in (1, 3)}
    assert len(results) == 8
    keys = {"engine", "batch", "threads", "median_s", "images_per_s", "gflops", "pct_fma_peak", "pct_sgemm_peak",
            "agrees", "max_abs_diff"}
    for r in results:
        assert keys <= set(r), r
        assert r["engine"] in ENGINES
        assert r["agrees"] is True, r
        assert r["max_abs_diff"] is not None and r["max_abs_diff"] < 1e-4
        assert r["median_s"] > 0 and r["images_per_s"] > 0 and r["gflops"] > 0
        assert r["pct_fma_peak"] == pytest.approx(100 * r["gflops"] / rep["fma_peak_gflops"]["1"])
        assert r["pct_sgemm_peak"] == pytest.approx(100 * r["gflops"] / rep["peak_gflops"]["1"])
        if sys.platform.startswith("linux"):  # (from /proc/stat)
            assert r["background_load"] >= 0 and r["steal"] >= 0
        assert r["runs"] == 2
    for s in rep["summary"]:
        assert s["best_competitor"] in ("torch", "onnxruntime", "numpy")
    text = render(rep)  # the saved JSON renders as the same tables
    assert "onnxruntime" in text and "best competitor" in text
    assert "FMA peak" in text and "% FMA" in text and f"{rep['fma_peak_gflops']['1']:.1f} GFLOP/s" in text
    assert "practical peak, sgemm" in text
    blas = rep["peak"]["blas"]
    if blas:  # (threadpoolctl names the BLAS kernel: beside the practical peak)
        assert f"kernel {blas[0]['architecture']}" in text


def test_saved_report_without_fma_peak_renders_its_sgemm_share():
    """A report saved before the FMA peak existed still renders, its one share labelled as it was."""
    rep = {"model": "M", "macs": 10, "peak_gflops": {"1": 50.0},
           "results": [{"engine": "convdsl", "batch": 1, "threads": 1, "median_s": 1e-3, "images_per_s": 1e3,
                        "gflops": 20.0, "pct_peak": 40.0, "agrees": True, "max_abs_diff": 0.0}]}
    text = render(rep)
    assert "% peak" in text and "40.0%" in text and "FMA" not in text and "sgemm peak" in text


def test_bench_text_and_layers(tmp_path, capsys):
    src = tmp_path / "small.conv"
    src.write_text("model Small(x: [N, 3, H, W]) -> [N, 5] {\n  conv(4, kernel=3, padding=1)\n  relu\n"
                   "  maxpool(2, stride=2)\n  global_avgpool\n  flatten\n  dense(5)\n  softmax\n}\n")
    code, out, err = _cli(capsys, "bench", str(src), "--batch", "2", "--threads", "1", "--compare", "numpy",
                          "--repeat", "2", "--layers", "--size", "H=8,W=6", "--peak-size", "128")
    assert code == 0, err
    assert "convdsl" in out and "numpy *" in out and "yes (" in out
    assert "per-layer time" in out and "differences of medians" in out
    for layer in ("conv1", "relu1", "maxpool1", "global_avgpool1", "flatten1", "dense1", "softmax1"):
        assert layer in out


def test_unknown_engine_is_a_usage_error(capsys):
    code, out, err = _cli(capsys, "bench", str(EXAMPLES / "lenet.conv"), "--compare", "torch,tensorflow")
    assert code == 2
    assert "tensorflow" in err and "onnxruntime" in err


def test_bad_batch_is_a_usage_error(capsys):
    code, _, err = _cli(capsys, "bench", str(EXAMPLES / "lenet.conv"), "--batch", "1,zero")
    assert code == 2 and "--batch" in err


def test_missing_engine_is_skipped_not_a_crash(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    code, out, err = _cli(capsys, "bench", str(EXAMPLES / "lenet_relu.conv"), "--batch", "2", "--threads", "1",
                          "--compare", "onnxruntime,numpy", "--json", "--repeat", "1", "--peak-size", "128")
    assert code == 0, err
    rep = json.loads(out)
    assert "onnxruntime" in rep["skipped"] and "not installed" in rep["skipped"]["onnxruntime"]
    assert {r["engine"] for r in rep["results"]} == {"convdsl", "numpy"}


def test_torch_compile_failure_is_reported_not_a_crash(monkeypatch, capsys):
    """Where inductor cannot work (no C compiler, ...) torch-compile is skipped with the reason."""
    import torch

    def broken_compile(module, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    code, out, err = _cli(capsys, "bench", str(EXAMPLES / "lenet.conv"), "--batch", "2", "--threads", "1",
                          "--compare", "torch-compile,torch", "--json", "--repeat", "1", "--peak-size", "128")
    assert code == 0, err
    rep = json.loads(out)
    assert "No working C++ compiler" in rep["skipped"]["torch-compile"]
    assert {r["engine"] for r in rep["results"]} == {"convdsl", "torch"}


def test_threads_beyond_the_cap_are_clamped_not_a_hang():
    """``bench --threads 1000`` hung measuring the peak (1000 BLAS threads on 2 cores): the counts
    follow ``run --threads``'s rule, clamped to the cap with a note, equal counts timed once.  In a
    child process with a timeout, so that a regression fails instead of hanging the suite."""
    import os
    import subprocess

    env = {**os.environ, "CONVDSL_MAX_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "convdsl", "bench", str(EXAMPLES / "lenet.conv"), "--threads",
                           "1000,1,2,3", "--batch", "1", "--compare", "numpy", "--repeat", "1", "--peak-size", "64",
                           "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "note: --threads 1000: using 2, the most this process runs on" in proc.stderr
    assert "--threads 3: using 2" in proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["settings"]["threads"] == [2, 1]
    assert set(rep["fma_peak_gflops"]) == set(rep["peak_gflops"]) == {"1", "2"}
    assert {r["threads"] for r in rep["results"]} == {1, 2}


def test_threads_below_one_is_a_usage_error(capsys):
    code, _, err = _cli(capsys, "bench", str(EXAMPLES / "lenet.conv"), "--threads", "0")
    assert code == 2 and "--threads" in err


def test_versus_table_over_several_engines():
    """bench/tables.py --versus A,B: one row per configuration convdsl ran, each engine's time and
    convdsl's ratio to it, a dash where an engine is missing (old reports have no PyTorch rows)."""
    import subprocess

    root = EXAMPLES.parent
    saved = [str(root / "bench" / "results" / f"{m}.json") for m in ("lenet", "alexnet")]
    r = subprocess.run([sys.executable, str(root / "bench" / "tables.py"), "--versus", "onnxruntime,torch", *saved],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].count("|") == 10 and "convdsl vs ONNX Runtime" in lines[0] and "convdsl vs PyTorch" in lines[0]
    rows = [ln for ln in lines[2:] if ln.startswith("|")]
    lenet = json.loads(Path(saved[0]).read_text())
    alex = json.loads(Path(saved[1]).read_text())
    n = sum(1 for rep in (lenet, alex) for x in rep["results"] if x["engine"] == "convdsl")
    assert len(rows) == n
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9 and cells[6].endswith("×")
    bad = subprocess.run([sys.executable, str(root / "bench" / "tables.py"), "--versus", "tvm", saved[0]],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown engine 'tvm'" in bad.stderr
