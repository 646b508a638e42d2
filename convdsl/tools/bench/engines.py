"""The engines ``convdsl bench`` times: convdsl, PyTorch eager, ``torch.compile``, ONNX Runtime and numpy.

Each competitor is built from the *same* weights convdsl runs with: ``torch`` (eager ``nn.Sequential``
from :mod:`convdsl.tools.export_torch`, run in ``torch.inference_mode()``), ``torch-compile``
(``torch.compile`` of that model with ``torch._inductor.config.freezing = True``, compiled once per
batch size and thread count, compile time excluded), ``onnxruntime`` (an ONNX graph from
:mod:`convdsl.tools.export_onnx`, one session per thread count: ``intra_op_num_threads=T``,
``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``, sequential execution) and ``numpy`` (im2col + matmul,
:func:`numpy_forward`, also the tests' second reference).  An engine that cannot run here raises
:class:`Unavailable` and is skipped with the reason.

Nothing heavy is imported at import time: numpy, torch, onnx and onnxruntime load when an engine is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

ENGINES = ("convdsl", "torch", "torch-compile", "onnxruntime", "numpy")
COMPETITORS = ENGINES[1:]
DEFAULT_COMPARE = "torch,torch-compile,onnxruntime,numpy"
RTOL, ATOL = 1e-4, 1e-5  # atol is scaled by max(1, max |convdsl output|)


class Unavailable(Exception):
    """An engine that cannot run here (not installed, or failed to build): skipped, with the reason."""


# ====================================================================== numpy engine
def numpy_forward(cm, weights: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A plain numpy implementation of a :class:`~convdsl.core.model.ConcreteModel`: im2col + one matmul
    per convolution (per group), strided slices for pooling, matmul for dense layers.

    Activations are kept NHWC between layers (so im2col rows are contiguous ``kh, kw, c`` runs and
    no transposes are needed); ``flatten`` reorders to the language's ``c, h, w`` order.  All float32.
    The algorithm is single-threaded except inside BLAS (limit it with threadpoolctl).
    """
    import numpy as np

    from ...core.model import Activation, Conv, Dense, Dropout, Flatten, GlobalAvgPool, Pool, Softmax

    f32 = np.float32
    steps: list[Callable] = []

    for layer, in_shape, out_shape, op in cm.layers:
        match op:
            case Conv(kernel=(kh, kw), stride=(sh, sw), padding=(pt, pb, pl, pr), dilation=(dh, dw), groups=g,
                      bias=has_bias):
                w = np.asarray(weights[f"{layer.name}.weight"], dtype=f32)
                o, cg = w.shape[0], w.shape[1]
                og = o // g
                # rows in (kh, kw, c) order, one matrix per group: [kh*kw*cg, og]
                mats = [np.ascontiguousarray(w[i * og:(i + 1) * og].transpose(2, 3, 1, 0).reshape(kh * kw * cg, og))
                        for i in range(g)]
                bias = np.asarray(weights[f"{layer.name}.bias"], dtype=f32) if has_bias else None
                oc, oh, ow = out_shape
                steps.append(_np_conv(mats, bias, (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw), g, cg, og,
                                      oh, ow))
            case Pool(kind=kind, kernel=k, stride=s, padding=p, count_pad=cp):
                c, h, w_ = in_shape
                _, oh, ow = out_shape
                steps.append(_np_pool(kind, k, s, p, (h, w_), (oh, ow), cp))
            case Dropout():  # the identity when running
                pass
            case GlobalAvgPool():
                steps.append(lambda x: x.mean(axis=(1, 2), keepdims=True, dtype=f32))
            case Flatten():
                steps.append(lambda x: x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1) if x.ndim == 4 else x)
            case Dense(bias=has_bias):
                wt = np.ascontiguousarray(np.asarray(weights[f"{layer.name}.weight"], dtype=f32).T)
                bias = np.asarray(weights[f"{layer.name}.bias"], dtype=f32) if has_bias else None

                def dense(x, wt=wt, bias=bias):
                    y = x @ wt
                    if bias is not None:
                        y += bias
                    return y
                steps.append(dense)
            case Activation(kind="relu"):
                steps.append(lambda x: np.maximum(x, 0, out=x))
            case Activation(kind="sigmoid"):
                def sigmoid(x):
                    with np.errstate(over="ignore"):
                        np.negative(x, out=x)
                        np.exp(x, out=x)
                    x += 1
                    return np.reciprocal(x, out=x)
                steps.append(sigmoid)
            case Activation(kind="tanh"):
                steps.append(lambda x: np.tanh(x, out=x))
            case Softmax():  # axis 1 of NCHW / of [N, F]: the last axis in this engine's layout
                def softmax(x):
                    x -= x.max(axis=-1, keepdims=True)
                    np.exp(x, out=x)
                    x /= x.sum(axis=-1, keepdims=True)
                    return x
                steps.append(softmax)
            case _:
                raise AssertionError(op)

    def forward(x):
        y = x.transpose(0, 2, 3, 1).copy()  # NHWC, owned (activations work in place)
        for step in steps:
            y = step(y)
        if y.ndim == 4:
            y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
        return y

    return forward


def _np_conv(mats, bias, kernel, stride, pads, dilation, groups, cg, og, oh, ow):
    import numpy as np

    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, pads, dilation
    pointwise = kh == kw == 1 and sh == sw == 1 and pads == (0, 0, 0, 0)

    def conv(x):
        n, h, w, c = x.shape
        if pointwise:
            cols = x
        else:
            if pads != (0, 0, 0, 0):
                xp = np.zeros((n, h + pt + pb, w + pl + pr, c), np.float32)
                xp[:, pt:pt + h, pl:pl + w] = x
            else:
                xp = x
            cols = np.empty((n, oh, ow, kh, kw, c), np.float32)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i, j, :] = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                                j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
        rows = n * oh * ow
        if groups == 1:
            y = cols.reshape(rows, -1) @ mats[0]
        else:
            y = np.empty((rows, groups * og), np.float32)
            for gi in range(groups):
                y[:, gi * og:(gi + 1) * og] = cols[..., gi * cg:(gi + 1) * cg].reshape(rows, -1) @ mats[gi]
        if bias is not None:
            y += bias
        return y.reshape(n, oh, ow, groups * og)

    return conv


def _np_pool(kind, kernel, stride, padding, in_hw, out_hw, count_pad=True):
    import numpy as np

    (kh, kw), (sh, sw), (ph, pw), (h, w), (oh, ow) = kernel, stride, padding, in_hw, out_hw
    # padded extent: the symmetric padding, plus what ceil mode's last window needs
    hp, wp = max(h + 2 * ph, (oh - 1) * sh + kh), max(w + 2 * pw, (ow - 1) * sw + kw)
    padded = (hp, wp) != (h, w)
    if kind == "avg":  # divisor: the window clipped to the padded input (count_include_pad, PyTorch's rule)
        # (count_pad=false: the real cells only)
        lo, hi_h, hi_w = (0, h, w) if not count_pad else (None, h + ph, w + pw)
        ch = np.array([min(o * sh - ph + kh, hi_h) - (o * sh - ph if lo is None else max(o * sh - ph, 0))
                       for o in range(oh)], np.float32)
        cw = np.array([min(o * sw - pw + kw, hi_w) - (o * sw - pw if lo is None else max(o * sw - pw, 0))
                       for o in range(ow)], np.float32)
        inv = (1.0 / (ch[:, None] * cw[None, :]))[:, :, None].astype(np.float32)
    fill = -np.inf if kind == "max" else 0.0

    def pool(x):
        n, _, _, c = x.shape
        if padded:
            xp = np.full((n, hp, wp, c), fill, np.float32)
            xp[:, ph:ph + h, pw:pw + w] = x
        else:
            xp = x
        def window(i, j):
            return xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]

        y = window(0, 0).copy()
        for i in range(kh):
            for j in range(kw):
                if i == j == 0:
                    continue
                if kind == "max":
                    np.maximum(y, window(i, j), out=y)
                else:
                    y += window(i, j)
        if kind == "avg":
            y *= inv
        return y

    return pool


# ====================================================================== engines
@dataclass
class Engine:
    """One way to run the network: ``call(x, threads)`` returns the zero-argument function to time."""

    name: str
    make: Callable[[Any, int], Callable[[], Any]]
    to_numpy: Callable[[Any], Any] = lambda y: y
    version: str = ""
    notes: dict = field(default_factory=dict)

    def call(self, x, threads: int) -> Callable[[], Any]:
        return self.make(x, threads)


def convdsl_engine(net) -> Engine:
    import llvmlite

    def make(x, threads):  # the binding was compiled before timing (run_bench); net(x) only looks it up
        return lambda: net(x, threads=threads)

    return Engine("convdsl", make, version=f"convdsl {net_version()} / llvmlite {llvmlite.__version__}")


def net_version() -> str:
    from ... import __version__

    return __version__


def torch_engine(cm, weights) -> Engine:
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None
    from ..export_torch import to_torch

    module = to_torch(cm, weights)

    def make(x, threads):
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)
        return lambda: module(xt)

    return Engine("torch", make, to_numpy=lambda y: y.numpy(), version=f"torch {torch.__version__}")


def torch_compile_engine(cm, weights) -> Engine:
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None
    try:
        import torch._inductor.config as inductor_config
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        raise Unavailable(f"torch inductor cannot be imported: {type(e).__name__}: {e}") from None
    from ..export_torch import to_torch

    inductor_config.freezing = True
    module = to_torch(cm, weights)
    state: dict[str, Any] = {"threads": None, "compile_s": {}}

    def make(x, threads):
        torch.set_num_threads(threads)
        if state["threads"] != threads:
            # inductor bakes the OpenMP thread count into the code it generates: start afresh per count
            torch._dynamo.reset()
            state["threads"] = threads
        compiled = torch.compile(module, dynamic=False)
        xt = torch.from_numpy(x)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(xt)
        except Exception as e:  # noqa: BLE001 - inductor failing on this machine: report, don't crash
            msg = str(e).strip().splitlines()
            raise Unavailable(f"torch.compile failed: {type(e).__name__}: {msg[0] if msg else ''}"[:300]) from None
        state["compile_s"][(x.shape[0], threads)] = time.perf_counter() - t0
        return lambda: compiled(xt)

    eng = Engine("torch-compile", make, to_numpy=lambda y: y.numpy(),
                 version=f"torch {torch.__version__} (inductor, freezing)")
    eng.notes = state
    return eng


def ort_engine(cm, weights, sizes) -> Engine:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"onnx is not installed ({e})") from None
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable(f"onnxruntime is not installed ({e})") from None
    from ..export_onnx import to_onnx

    blob = to_onnx(cm, weights, sizes).SerializeToString()
    sessions: dict[int, Any] = {}

    def make(x, threads):
        sess = sessions.get(threads)
        if sess is None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = sessions[threads] = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        feeds = {sess.get_inputs()[0].name: x}
        outs = [sess.get_outputs()[0].name]
        return lambda: sess.run(outs, feeds)[0]

    return Engine("onnxruntime", make, version=f"onnxruntime {ort.__version__}")


def numpy_engine(cm, weights) -> Engine:
    import numpy as np

    fwd = numpy_forward(cm, weights)

    def make(x, threads):  # BLAS threads are limited per configuration by the caller (threadpoolctl)
        return lambda: fwd(x)

    return Engine("numpy", make, version=f"numpy {np.__version__} (im2col + matmul)")


def agreement(y, ref) -> tuple[bool, float | None]:
    """Whether output ``y`` agrees with the reference ``ref`` (rtol RTOL, atol ATOL x the reference's
    magnitude), and the largest absolute difference (None where the shapes differ or ``y`` is not finite)."""
    import numpy as np

    y = np.asarray(y)
    if y.shape != ref.shape:
        return False, None
    if not np.isfinite(y).all():
        return False, None
    diff = float(np.max(np.abs(y.astype(np.float64) - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return bool(np.allclose(y, ref, rtol=RTOL, atol=ATOL * scale)), diff

