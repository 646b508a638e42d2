"""``convdsl bench``: convdsl against PyTorch, torch.compile, ONNX Runtime and numpy, in one process.

What it does, for one model:

1. compiles the model with convdsl (weights from ``--weights``, else ``FILE.npz``
   beside the program, else seeded random) and builds the *same* network, from
   the same weights, in every competitor asked for that is installed:
   ``torch`` (eager ``nn.Sequential`` from :mod:`convdsl.tools.export_torch`, run in
   ``torch.inference_mode()``), ``torch-compile`` (``torch.compile`` of that
   model with ``torch._inductor.config.freezing = True``, compiled once per
   batch size and thread count, compile time excluded), ``onnxruntime`` (an ONNX
   graph from :mod:`convdsl.tools.export_onnx`, one session per thread count:
   ``intra_op_num_threads=T``, ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``,
   sequential execution) and ``numpy`` (im2col + matmul, below);
2. measures the machine's sgemm peak (numpy float32 ``n x n`` matmul, BLAS
   limited to each thread count with threadpoolctl);
3. for every thread count x batch size: warms every engine up, checks that
   every engine's output agrees with convdsl's (rtol 1e-4, atol 1e-5 x the
   output's magnitude), then times the engines *alternately* — rounds of
   engine A, engine B, ... — each call timed on its own from the Python call to
   the returned array, and reports medians;
4. prints a table (or one JSON object with ``--json``).

``--layers`` adds a per-layer breakdown of the convdsl model, measured by
compiling the model cut after every layer and differencing the medians.

This module imports nothing heavy at import time (the CLI imports it to build
its parser); numpy, torch, onnx and onnxruntime are imported when used.
``python -m convdsl.tools.bench RESULTS.json`` re-renders saved ``--json`` output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..core.text import format_seconds
from .common import (
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    check_size_option,
    load_program,
    parse_sizes,
    pick_model,
    weights_option,
)

ENGINES = ("convdsl", "torch", "torch-compile", "onnxruntime", "numpy")
COMPETITORS = ENGINES[1:]
DEFAULT_COMPARE = "torch,torch-compile,onnxruntime,numpy"
RTOL, ATOL = 1e-4, 1e-5  # atol is scaled by max(1, max |convdsl output|)
MAX_ROUNDS = 10  # alternation rounds per configuration
# seconds: the slice in which the process must be idle before the next engine runs.  The kernel brings
# the CPU time of the process's *other* threads up to date only at scheduler ticks (every 4 ms here),
# so a slice must span several ticks: 2 ms slices alternately read 0 and 2 cores while OpenBLAS's
# helper spun, and let the next engine start beside it.
SWITCH_PAUSE = 0.025
SETTLE_MAX = 0.5  # seconds: the longest wait for spinning thread pools to go to sleep
BUSY_WARNING = 0.25  # cores used by other processes during a configuration that make it unreliable
STEAL_WARNING = 0.1  # cores of hypervisor steal time during a configuration that make it unreliable
LAYERS_NOTE = ("per-layer times are differences of medians of the network cut after each layer; an "
               "activation fused into the layer before it shows as that difference (near zero, can be "
               "negative within noise)")


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

    from ..core.model import Activation, Conv, Dense, Dropout, Flatten, GlobalAvgPool, Pool, Softmax

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
        y = None
        for i in range(kh):
            for j in range(kw):
                win = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
                if y is None:
                    y = win.copy()
                elif kind == "max":
                    np.maximum(y, win, out=y)
                else:
                    y += win
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


def _convdsl_engine(net) -> Engine:
    import llvmlite

    def make(x, threads):  # the binding was compiled before timing (run_bench); net(x) only looks it up
        return lambda: net(x, threads=threads)

    return Engine("convdsl", make, version=f"convdsl {net_version()} / llvmlite {llvmlite.__version__}")


def net_version() -> str:
    from .. import __version__

    return __version__


def _torch_engine(cm, weights) -> Engine:
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None
    from .export_torch import to_torch

    module = to_torch(cm, weights)

    def make(x, threads):
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)
        return lambda: module(xt)

    return Engine("torch", make, to_numpy=lambda y: y.numpy(), version=f"torch {torch.__version__}")


def _torch_compile_engine(cm, weights) -> Engine:
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None
    try:
        import torch._inductor.config as inductor_config
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        raise Unavailable(f"torch inductor cannot be imported: {type(e).__name__}: {e}") from None
    from .export_torch import to_torch

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


def _ort_engine(cm, weights, sizes) -> Engine:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"onnx is not installed ({e})") from None
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable(f"onnxruntime is not installed ({e})") from None
    from .export_onnx import to_onnx

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


def _numpy_engine(cm, weights) -> Engine:
    import numpy as np

    fwd = numpy_forward(cm, weights)

    def make(x, threads):  # BLAS threads are limited per configuration by the caller (threadpoolctl)
        return lambda: fwd(x)

    return Engine("numpy", make, version=f"numpy {np.__version__} (im2col + matmul)")


# ====================================================================== timing
def _blas_limits(threads: int):
    """A context limiting BLAS (numpy's OpenBLAS/MKL) to ``threads``, or a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "prefix")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info() if d.get("user_api") == "blas"]


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _no_gc():
    @contextlib.contextmanager
    def ctx():
        was = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            yield
        finally:
            if was:
                gc.enable()
    return ctx()


def settle(max_seconds: float = SETTLE_MAX, slice_seconds: float = SWITCH_PAUSE) -> float:
    """Sleep until this process's own threads are idle; return the seconds waited.

    Thread pools spin after their work (OpenBLAS for up to ~0.13 s, OpenMP, ONNX Runtime and
    convdsl's helpers for less): left alone, the engine that ran before would steal cores from the
    one timed next.  Sleep in slices (see SWITCH_PAUSE for their length) until a slice passes in
    which the whole process used under a quarter of a core.
    """
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(slice_seconds)
        busy = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
        waited = time.perf_counter() - start
        if busy < 0.25 or waited >= max_seconds:
            return waited


class CpuMeter:
    """CPU used by *other* processes while a block runs, and CPU the hypervisor gave to other
    machines (steal time: on a virtual machine a vCPU can stall with no process of its own to
    blame), both in cores (from /proc/stat; Linux only)."""

    def __init__(self) -> None:
        self.other_cores: float | None = None
        self.steal_cores: float | None = None

    @staticmethod
    def _busy_seconds() -> tuple[float, float] | None:
        """(seconds busy, seconds stolen) since boot, over all CPUs."""
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        vals = [int(v) for v in fields[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        steal = vals[7] if len(vals) > 7 else 0
        guest = sum(vals[8:10]) if len(vals) > 9 else 0  # already counted in user/nice
        hz = os.sysconf("SC_CLK_TCK")
        return (sum(vals) - idle - guest - steal) / hz, steal / hz

    def __enter__(self) -> "CpuMeter":
        self._b0, self._t0, self._w0 = self._busy_seconds(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        b1, t1, w1 = self._busy_seconds(), os.times(), time.perf_counter()
        if self._b0 is None or b1 is None:
            return
        own = (t1.user - self._t0.user) + (t1.system - self._t0.system)
        wall = max(w1 - self._w0, 1e-9)
        self.other_cores = max(0.0, (b1[0] - self._b0[0] - own) / wall)
        self.steal_cores = max(0.0, (b1[1] - self._b0[1]) / wall)


def wait_idle(max_seconds: float, say=lambda m: None, sample: float = 1.0) -> float | None:
    """Wait (up to ``max_seconds``) until other processes use under BUSY_WARNING cores over ``sample``
    seconds; return the last measured background load (None where it cannot be measured)."""
    deadline = time.perf_counter() + max_seconds
    told = False
    while True:
        with CpuMeter() as m:
            time.sleep(sample)
        if m.other_cores is None or m.other_cores < BUSY_WARNING or time.perf_counter() >= deadline:
            return m.other_cores
        if not told:
            say(f"other processes use {m.other_cores:.2f} cores: waiting up to {max_seconds:.0f} s for the "
                "machine to be idle")
            told = True


def time_alternating(calls: Mapping[str, Callable[[], Any]], counts: Mapping[str, int],
                     pause: bool = True) -> dict[str, list[float]]:
    """Time every call ``counts[name]`` times, alternating engines in rounds; one sample per call.

    Between engines (untimed) the process waits until its thread pools stop spinning (:func:`settle`).
    """
    perf = time.perf_counter
    samples: dict[str, list[float]] = {k: [] for k in calls}
    rounds = max(1, min(MAX_ROUNDS, min(counts.values())))
    with _no_gc():
        for r in range(rounds):
            for name, fn in calls.items():
                n = counts[name] * (r + 1) // rounds - counts[name] * r // rounds
                if pause:
                    settle()
                s = samples[name]
                for _ in range(n):
                    t0 = perf()
                    y = fn()
                    t1 = perf()
                    s.append(t1 - t0)
                    del y
    return samples


def warm_up(fn: Callable[[], Any], min_calls: int = 3, min_seconds: float = 0.05, max_calls: int = 50) -> float:
    """Run ``fn`` a few times; return an estimate of one call's time (median of the later calls)."""
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_seconds and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _median(times[1:] if len(times) > 1 else times)


def measure_peak(threads_list: Sequence[int], size: int | None = None, repeat: int = 3) -> dict:
    """numpy float32 sgemm GFLOP/s per thread count: 2 n^3 / median time (n = 4096, or 2048 if slow)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"gflops": {}, "n": {}, "repeat": repeat}
    for t in threads_list:
        with _blas_limits(t):
            n = size
            if n is None:
                a = rng.random((2048, 2048), dtype=np.float32)
                a @ a
                t0 = time.perf_counter()
                a @ a
                trial = time.perf_counter() - t0
                n = 4096 if trial < 0.1 else 2048  # 4096^2 costs 8x: only where it stays under ~1 s a call
            a = rng.random((n, n), dtype=np.float32)
            b = rng.random((n, n), dtype=np.float32)
            c = a @ b
            settle()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                np.matmul(a, b, out=c)
                times.append(time.perf_counter() - t0)
        out["gflops"][str(t)] = 2 * n ** 3 / _median(times) / 1e9
        out["n"][str(t)] = n
    return out


def agreement(y, ref) -> tuple[bool, float | None]:
    import numpy as np

    y = np.asarray(y)
    if y.shape != ref.shape:
        return False, None
    if not np.isfinite(y).all():
        return False, None
    diff = float(np.max(np.abs(y.astype(np.float64) - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return bool(np.allclose(y, ref, rtol=RTOL, atol=ATOL * scale)), diff


# ====================================================================== host
def host_info() -> dict:
    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(),
                            "python": platform.python_version(), "cores": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info.setdefault("cpu", platform.processor() or platform.machine())
    try:
        from .. import host_cpu

        cpu = host_cpu()
        info["llvm_cpu"] = cpu.name
        wanted = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                  "avx512bf16", "amx-tile", "neon", "sve")
        info["features"] = [f for f in wanted if f in cpu.features]
    except Exception:  # noqa: BLE001 - host description is best effort
        pass
    info["blas"] = _blas_info()
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    info["env"] = env
    return info


# ====================================================================== the command
@dataclass
class Options:
    batches: list[int]
    threads: list[int]
    compare: list[str]
    repeat: int | None
    seconds: float
    layers: bool
    seed: int
    peak_size: int | None
    wait_idle: float = 0.0


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"{what} takes positive integers separated by commas, not {part!r}")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise UsageError(f"{what} needs at least one value")
    return out


def _engine_list(text: str) -> list[str]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part not in ENGINES:
            raise UsageError(f"--compare: unknown engine {part!r} (known: {', '.join(COMPETITORS)})")
        if part != "convdsl" and part not in out:
            out.append(part)
    return out


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    import convdsl

    opts = Options(
        batches=_int_list(args.batch, "--batch"),
        threads=_int_list(args.threads or f"1,{os.cpu_count() or 1}", "--threads"),
        compare=_engine_list(args.compare),
        repeat=args.repeat, seconds=args.seconds, layers=args.layers, seed=args.seed, peak_size=args.peak_size,
        wait_idle=args.wait_idle)
    if opts.repeat is not None and opts.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if not opts.seconds > 0:
        raise UsageError("--seconds must be positive")
    if opts.peak_size is not None and opts.peak_size < 16:
        raise UsageError("--peak-size must be at least 16")
    sizes = parse_sizes(args.size)
    program = load_program(args.file)
    model = pick_model(program, args.model)
    env = check_size_option(model, sizes)
    weights = weights_option(args.weights)
    _progress(f"compiling {model.name} with convdsl")
    try:
        net = convdsl.compile(program, weights, model=model.name, seed=args.seed)
        arrays = net.weights(env)  # the competitors are built from the very arrays convdsl runs with
    except convdsl.BoundaryError as e:
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    report = run_bench(net, env, arrays, opts, quiet=False)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return EXIT_OK


def run_bench(net, env: Mapping[str, int], weights: Mapping[str, Any], opts: Options, quiet: bool = True) -> dict:
    """Run the whole benchmark of ``net`` (a :class:`convdsl.Network`) at sizes ``env``; return the report
    (the ``--json`` object).  ``weights`` are ``net.weights(env)``, passed in so that they are made once."""
    import numpy as np

    from ..core import symbolic as sy

    program, model = net.program, net.model
    say = (lambda m: None) if quiet else _progress
    cm = model.bind(env)
    full = {**env, "N": 1}
    macs = int(sy.evaluate(model.macs, full))
    params = int(sy.evaluate(model.params, full))

    net.bind(env)
    convdsl_compile_s = net.last_compile.seconds  # (this binding's: compiled now, or by convdsl.compile)

    engines: list[Engine] = [_convdsl_engine(net)]
    skipped: dict[str, str] = {}
    builders = {"torch": lambda: _torch_engine(cm, weights),
                "torch-compile": lambda: _torch_compile_engine(cm, weights),
                "onnxruntime": lambda: _ort_engine(cm, weights, env),
                "numpy": lambda: _numpy_engine(cm, weights)}
    for name in opts.compare:
        say(f"building {name}")
        try:
            engines.append(builders[name]())
        except Unavailable as e:
            skipped[name] = str(e)
            say(f"{name} skipped: {e}")

    idle_load = None
    if opts.wait_idle > 0:
        idle_load = wait_idle(opts.wait_idle, say)
        if idle_load is not None and idle_load >= BUSY_WARNING:
            say(f"the machine did not become idle (other processes use {idle_load:.2f} cores); going on")
    say("measuring the sgemm peak")
    peak = measure_peak(opts.threads, opts.peak_size, repeat=3)

    rng = np.random.default_rng(opts.seed)
    shape = [max(opts.batches)] + [int(sy.evaluate(d, {**env, "N": 1})) for d in model.input_shape[1:]]
    x_all = rng.random(shape, dtype=np.float32)

    torch_mod = sys.modules.get("torch")
    saved_torch_threads = torch_mod.get_num_threads() if torch_mod is not None else None
    results: list[dict] = []
    layer_reports: list[dict] = []
    load_before = _loadavg()
    whole = CpuMeter().__enter__()
    try:
        for threads in opts.threads:
            for batch in opts.batches:
                x = x_all[:batch]
                say(f"batch {batch}, {threads} thread{'s' if threads != 1 else ''}")
                results += _run_config(engines, skipped, x, batch, threads, opts, macs, peak, say)
                if opts.layers:
                    layer_reports.append(_layer_times(program, model, env, net, weights, x, batch, threads,
                                                      opts, say))
    finally:
        if saved_torch_threads is not None:
            torch_mod.set_num_threads(saved_torch_threads)
    whole.__exit__(None, None, None)

    results.sort(key=lambda r: (r["batch"], r["threads"], ENGINES.index(r["engine"])))
    _mark_best(results)
    tc = next((e for e in engines if e.name == "torch-compile"), None)
    report = {
        "model": model.name,
        "file": program.file,
        "macs": macs,
        "params": params,
        "weights": net.weights_description,
        "input": f"seeded random uniform [0, 1) (seed {opts.seed}), shape [B, {', '.join(map(str, shape[1:]))}]",
        "peak_gflops": peak["gflops"],
        "peak": {"what": "numpy float32 matmul n x n, 2 n^3 / median time", "n": peak["n"],
                 "repeat": peak["repeat"], "blas": _blas_info(),
                 "blas_threads_limited": _has_threadpoolctl()},
        "host": {**host_info(), "loadavg_before": load_before, "loadavg_after": _loadavg(),
                 "background_load": whole.other_cores, "steal": whole.steal_cores,
                 "background_load_at_start": idle_load},
        "engines": {e.name: e.version for e in engines},
        "skipped": skipped,
        "settings": {"batches": opts.batches, "threads": opts.threads, "repeat": opts.repeat,
                     "seconds": opts.seconds, "alternation_rounds_max": MAX_ROUNDS, "rtol": RTOL,
                     "atol": f"{ATOL} x max(1, max |convdsl output|)"},
        "convdsl_compile_s": convdsl_compile_s,
        "results": results,
        "summary": _summary(results),
    }
    if tc is not None and tc.notes.get("compile_s"):
        report["torch_compile_s"] = {f"{b}x{t}": s for (b, t), s in tc.notes["compile_s"].items()}
    if opts.layers:
        report["layers"] = layer_reports
        report["layers_note"] = LAYERS_NOTE
    return report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _has_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def _run_config(engines, skipped, x, batch, threads, opts, macs, peak, say) -> list[dict]:
    """Warm up, check agreement and time every engine alternately for one (batch, threads)."""
    torch_mod = sys.modules.get("torch")
    results = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_blas_limits(threads))
        if torch_mod is not None:
            stack.enter_context(torch_mod.inference_mode())
        calls: dict[str, Callable[[], Any]] = {}
        outputs: dict[str, Any] = {}
        estimates: dict[str, float] = {}
        for eng in list(engines):
            if eng.name in skipped:
                continue
            try:
                fn = eng.call(x, threads)
                outputs[eng.name] = eng.to_numpy(fn())
            except Unavailable as e:
                skipped[eng.name] = str(e)
                say(f"{eng.name} skipped: {e}")
                continue
            calls[eng.name] = fn
            estimates[eng.name] = warm_up(fn)
        ref = outputs["convdsl"]
        if opts.repeat is not None:
            counts = {k: opts.repeat for k in calls}
        else:
            counts = {k: int(min(20000, max(5, math.ceil(opts.seconds / max(t, 1e-7))))) for k, t in estimates.items()}
        with CpuMeter() as meter:
            samples = time_alternating(calls, counts)
    if meter.other_cores is not None and meter.other_cores > BUSY_WARNING:
        say(f"warning: other processes used {meter.other_cores:.2f} cores while batch {batch}, {threads} "
            f"thread(s) was timed: these figures are unreliable")
    if meter.steal_cores is not None and meter.steal_cores > STEAL_WARNING:
        say(f"warning: the hypervisor took {meter.steal_cores:.2f} cores (steal time) while batch {batch}, "
            f"{threads} thread(s) was timed: these figures are unreliable")
    peak_t = peak["gflops"].get(str(threads))
    for name, s in samples.items():
        med = _median(s)
        ok, diff = agreement(outputs[name], ref)
        gflops = 2 * macs * batch / med / 1e9
        results.append({
            "engine": name, "batch": batch, "threads": threads,
            "median_s": med, "min_s": float(min(s)), "runs": len(s),
            "images_per_s": batch / med, "gflops": gflops,
            "pct_peak": 100 * gflops / peak_t if peak_t else None,
            "agrees": ok, "max_abs_diff": diff,
            "background_load": meter.other_cores, "steal": meter.steal_cores,
        })
    conv_med = next(r["median_s"] for r in results if r["engine"] == "convdsl")
    for r in results:
        r["ratio_vs_convdsl"] = r["median_s"] / conv_med
    return results


def _mark_best(results: list[dict]) -> None:
    by_cfg: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        by_cfg.setdefault((r["batch"], r["threads"]), []).append(r)
    for rows in by_cfg.values():
        comp = [r for r in rows if r["engine"] != "convdsl"]
        best = min(comp, key=lambda r: r["median_s"]) if comp else None
        for r in rows:
            r["best_competitor"] = r is best


def _summary(results: list[dict]) -> list[dict]:
    out = []
    cfgs = sorted({(r["batch"], r["threads"]) for r in results})
    for b, t in cfgs:
        rows = [r for r in results if (r["batch"], r["threads"]) == (b, t)]
        conv = next(r for r in rows if r["engine"] == "convdsl")
        best = next((r for r in rows if r.get("best_competitor")), None)
        item = {"batch": b, "threads": t, "convdsl_s": conv["median_s"]}
        if best is not None:
            item.update(best_competitor=best["engine"], best_competitor_s=best["median_s"],
                        speedup=best["median_s"] / conv["median_s"])
        out.append(item)
    return out


# ====================================================================== --layers
def _layer_times(program, model, env, net, weights, x, batch, threads, opts, say) -> dict:
    """Median time of the network cut after every layer, alternating; per-layer = differences.

    Each prefix is a network of its own (``convdsl.Network`` of the model's first k layers, with
    their share of the weights), called as the full network is, so the Python overhead of a call is
    the same in every prefix and cancels in the differences.
    """
    from ..api import Network

    say(f"  per-layer times (prefixes) for batch {batch}, {threads} thread{'s' if threads != 1 else ''}")
    calls: dict[str, Callable[[], Any]] = {}
    names = []
    for k, layer in enumerate(model.layers):
        prefix = replace(model, layers=model.layers[:k + 1], output_shape=layer.out_shape)
        part = {key: weights[key] for key in prefix.weight_shapes()}
        pnet = Network(program, prefix, part, net.weights_origin, schedule=net.schedule, cache=net.cache)
        pnet.bind(env)
        key = f"{k}:{layer.name}"
        names.append((key, layer))
        calls[key] = functools.partial(pnet, x, threads=threads)
    ests = {}
    with _no_gc():
        for key, fn in calls.items():
            ests[key] = warm_up(fn, min_seconds=0.02)
    seconds = opts.seconds / 2
    counts = {k: (opts.repeat if opts.repeat is not None else int(min(20000, max(5, math.ceil(seconds / max(t, 1e-7))))))
              for k, t in ests.items()}
    samples = time_alternating(calls, counts, pause=False)
    rows = []
    prev = 0.0
    for key, layer in names:
        med = _median(samples[key])
        rows.append({"layer": layer.name, "op": layer.text, "kind": layer.kind,
                     "shape": [str(d) for d in layer.out_shape], "cumulative_s": med, "layer_s": med - prev})
        prev = med
    result = {"batch": batch, "threads": threads, "rows": rows}
    # The back end's own per-stage cycle counters (one thread only).
    if threads == 1:
        try:
            reps = opts.repeat if opts.repeat is not None else max(3, min(1000, counts[names[-1][0]]))
            stages = net.profile(x, repeat=reps)
        except Exception as e:  # noqa: BLE001 - optional: report, never fail the benchmark
            result["native_error"] = f"{type(e).__name__}: {e}"
        else:
            for row in rows:
                row["native_s"] = stages.get(row["layer"])
            known = {row["layer"] for row in rows}
            result["native_other"] = {k: v for k, v in stages.items() if k not in known}
    return result


# ====================================================================== text output
def _fmt_signed_time(seconds: float) -> str:
    return ("-" if seconds < 0 else "") + format_seconds(abs(seconds))


def render(report: Mapping[str, Any]) -> str:
    """The benchmark report as text tables (also for a saved ``--json`` report)."""
    lines = []
    host = report.get("host", {})
    lines.append(f"{report['model']} ({report.get('file', '?')}): {report['macs']:,} MACs/image, "
                 f"{report.get('params', 0):,} params; weights: {report.get('weights', '?')}")
    feats = ", ".join(host.get("features", []))
    lines.append(f"host: {host.get('cpu', '?')} ({host.get('llvm_cpu', '?')}; {feats}), "
                 f"{host.get('cores', '?')} cores")
    blas = report.get("peak", {}).get("blas") or []
    blas_s = "; ".join(f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')}" for b in blas)
    peaks = report["peak_gflops"]
    ns = report.get("peak", {}).get("n", {})
    lines.append("sgemm peak (numpy float32 matmul, 2n³/median): " + ", ".join(
        f"{t} thread{'s' if t != '1' else ''} {g:.1f} GFLOP/s (n={ns.get(t, '?')})" for t, g in peaks.items())
        + (f" [{blas_s}]" if blas_s else ""))
    if report.get("peak", {}).get("blas_threads_limited") is False:
        lines.append("warning: threadpoolctl is not installed, so BLAS ran with its own thread count in every "
                     "configuration: the 1-thread peak and numpy rows used all cores (pip install threadpoolctl)")
    bg = host.get("background_load")
    if bg is not None:
        lines.append(f"background load (other processes, mean over the timed runs): {bg:.2f} cores"
                     + ("  <-- the machine was not quiet: figures are unreliable" if bg > BUSY_WARNING else ""))
    steal = host.get("steal")
    if steal is not None:
        lines.append(f"steal time (CPU the hypervisor gave elsewhere, mean over the run): {steal:.2f} cores"
                     + ("  <-- figures are unreliable" if steal > STEAL_WARNING else ""))
    if host.get("env"):
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in host["env"].items()))
    for name, why in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    lines.append("")
    head = (f"{'engine':<15} {'threads':>7} {'batch':>6} {'median':>10} {'images/s':>11} {'GFLOP/s':>8} "
            f"{'% peak':>7} {'vs convdsl':>10}  agrees (max |diff|)")
    lines.append(head)
    lines.append("-" * len(head))
    prev = None
    noisy: set = set()
    for r in sorted(report["results"], key=lambda r: (r["batch"], r["threads"], ENGINES.index(r["engine"]))):
        cfg = (r["batch"], r["threads"])
        if prev is not None and cfg != prev:
            lines.append("")
        prev = cfg
        name = r["engine"] + (" *" if r.get("best_competitor") else "")
        pct = f"{r['pct_peak']:.1f}%" if r.get("pct_peak") is not None else "-"
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        if r.get("background_load") is not None and r["background_load"] > BUSY_WARNING:
            noisy.add(cfg)
        if (r.get("steal") or 0.0) > STEAL_WARNING:
            noisy.add(cfg)
        agree = "reference" if r["engine"] == "convdsl" else (f"yes ({diff})" if r["agrees"]
                                                             else f"NO  ({diff})  <-- disagrees")
        ratio = r.get("ratio_vs_convdsl")
        lines.append(f"{name:<15} {r['threads']:>7} {r['batch']:>6} {format_seconds(r['median_s']):>10} "
                     f"{r['images_per_s']:>11,.0f} {r['gflops']:>8.2f} {pct:>7} "
                     f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>10}  {agree}")
    lines.append("-" * len(head))
    lines.append("* best competitor; 'vs convdsl' = engine median / convdsl median (> 1: convdsl is faster)")
    for b, t in sorted(noisy):
        lines.append(f"warning: other processes or the hypervisor were using CPU while batch {b}, {t} thread(s) "
                     "was timed")
    lines.append("")
    for s in report.get("summary", []):
        t = s["threads"]
        pre = f"batch {s['batch']:>5}, {t} thread{'s' if t != 1 else ' '}: convdsl {format_seconds(s['convdsl_s'])}"
        if "best_competitor" in s:
            sp = s["speedup"]
            verdict = f"convdsl {sp:.2f}x faster" if sp >= 1 else f"convdsl {1 / sp:.2f}x SLOWER"
            lines.append(f"{pre} vs {s['best_competitor']} {format_seconds(s['best_competitor_s'])} -> {verdict}")
        else:
            lines.append(f"{pre} (no competitor ran)")
    for lr in report.get("layers", []):
        lines.append("")
        t = lr["threads"]
        lines.append(f"per-layer time, convdsl, batch {lr['batch']}, {t} thread{'s' if t != 1 else ''} "
                     f"(network cut after each layer; differences of medians)")
        total = lr["rows"][-1]["cumulative_s"] if lr["rows"] else 0.0
        native = any("native_s" in row for row in lr["rows"])
        h = f"{'layer':<16} {'op':<32} {'cumulative':>11} {'layer':>11} {'share':>7}"
        if native:
            h += f" {'native':>11}"
        lines.append(h)
        lines.append("-" * len(h))
        for row in lr["rows"]:
            share = f"{100 * row['layer_s'] / total:.1f}%" if total > 0 else "-"
            line = (f"{row['layer']:<16} {row['op'][:32]:<32} {format_seconds(row['cumulative_s']):>11} "
                    f"{_fmt_signed_time(row['layer_s']):>11} {share:>7}")
            if native:
                ns = row.get("native_s")
                line += f" {(format_seconds(ns) if ns is not None else '(fused)'):>11}"
            lines.append(line)
        for k, v in lr.get("native_other", {}).items():
            lines.append(f"{k:<16} {'(copy ' + ('in)' if k == 'input' else 'out)') if k in ('input', 'output') else '':<32} "
                         f"{'':>11} {'':>11} {'':>7} {format_seconds(v):>11}")
        lines.append("-" * len(h))
        if native:
            lines.append("native: the back end's own cycle counters per stage (one thread); '(fused)': "
                         "computed inside the stage before")
        if lr.get("native_error"):
            lines.append(f"native per-stage timers failed: {lr['native_error']}")
    if report.get("layers"):
        lines.append("note: " + report.get("layers_note", LAYERS_NOTE))
    return "\n".join(lines)


# ====================================================================== parser
def add_bench_parser(sub) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers (imports nothing heavy)."""
    b = sub.add_parser("bench", help="time the compiled model against PyTorch, torch.compile, ONNX Runtime "
                       "and numpy, and check they agree")
    b.add_argument("file", metavar="FILE.conv")
    b.add_argument("--model", metavar="NAME", help="which model (default: the only or last one)")
    b.add_argument("--batch", default="1,64,1024", metavar="B1,B2,..", help="batch sizes (default 1,64,1024)")
    b.add_argument("--threads", metavar="T1,T2,..", help="thread counts (default: 1 and all cores)")
    b.add_argument("--compare", default=DEFAULT_COMPARE, metavar="ENGINES",
                   help=f"competitors, comma-separated, from: {', '.join(COMPETITORS)} (default: all)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b.add_argument("--layers", action="store_true", help="also time convdsl per layer (network prefixes)")
    b.add_argument("--repeat", type=int, metavar="R",
                   help="timed calls per engine and configuration (default: enough for --seconds)")
    b.add_argument("--seconds", type=float, default=0.5, metavar="S",
                   help="timed seconds per engine and configuration when --repeat is not given (default 0.5)")
    b.add_argument("--weights", metavar="W.npz", help="weights (default: FILE.npz beside the program, else "
                   "seeded random weights)")
    b.add_argument("--size", metavar="H=..,W=..", help="symbolic sizes (default: the smallest valid ones)")
    b.add_argument("--seed", type=int, default=0, metavar="S", help="seed for random weights and input")
    b.add_argument("--peak-size", type=int, metavar="N", help="sgemm size for the peak (default 4096, or 2048 "
                   "where 4096 would be slow)")
    b.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPU idle (default 0)")
    b.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m convdsl.tools.bench RESULTS.json...``: print the tables of saved ``--json`` reports."""
    p = argparse.ArgumentParser(prog="python -m convdsl.tools.bench", description=main.__doc__)
    p.add_argument("reports", nargs="+", metavar="RESULTS.json")
    args = p.parse_args(argv)
    for i, path in enumerate(args.reports):
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{p.prog}: error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        if i:
            print("\n" + "=" * 100 + "\n")
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
