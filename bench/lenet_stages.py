"""Back-end micro-benchmark: convdsl vs ONNX Runtime vs PyTorch on LeNet (and friends).

    python bench/lenet_stages.py                      # both LeNets, batch 1/64/1024/4096, threads 1/2
    python bench/lenet_stages.py --models examples/alexnet.conv --batch 1,16 --threads 1,2
    python bench/lenet_stages.py --layers             # plus native per-stage profile (convdsl only)
    python bench/lenet_stages.py --torch-compile      # also torch.compile (slow to warm up)

Medians of repeated runs, all engines in one process, so the ratios compare like with like on a
shared machine.  The sgemm peak (numpy float32 4096^2 matmul) runs in a child process with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset and BLAS pinned per thread count (threadpoolctl).
The team's main benchmark is ``convdsl bench``; this one is the back end's quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from convdsl import api  # noqa: E402
from convdsl.runtime.boundary import random_weights  # noqa: E402
from convdsl.runtime.compiled import compile_model  # noqa: E402

SGEMM = r"""
import json, sys, time, numpy as np
from threadpoolctl import threadpool_limits
n = int(sys.argv[1]); out = {}
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32); b = a.copy()
for t in map(int, sys.argv[2].split(",")):
    with threadpool_limits(limits=t, user_api="blas"):
        a @ b
        ts = []
        for _ in range(5):
            t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
    out[t] = 2 * n ** 3 / sorted(ts)[len(ts) // 2] / 1e9
print(json.dumps(out))
"""


def sgemm_peak(threads: list[int], n: int = 4096) -> dict[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    r = subprocess.run([sys.executable, "-c", SGEMM, str(n), ",".join(map(str, threads))], env=env,
                       capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(r.stdout).items()}


def median_time(fn, budget: float, min_reps: int = 5, max_reps: int = 2000) -> float:
    fn()
    ts: list[float] = []
    end = time.perf_counter() + budget
    while len(ts) < min_reps or (time.perf_counter() < end and len(ts) < max_reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def macs(cm) -> int:
    from convdsl.core.model import Conv, Dense

    total = 0
    for _layer, _i, out_shape, op in cm.layers:
        if isinstance(op, Conv):
            o, oh, ow = out_shape[-3:]
            total += o * oh * ow * (op.c_in // op.groups) * op.kernel[0] * op.kernel[1]
        elif isinstance(op, Dense):
            total += op.in_features * op.out_features
    return total


def engines(cm, w, threads: int, use_compile: bool):
    """name -> callable(x) for the engines installed."""
    out = {}
    try:
        import onnxruntime as ort

        from convdsl.tools.export_onnx import to_onnx

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(to_onnx(cm, w).SerializeToString(), so, providers=["CPUExecutionProvider"])
        out["ort"] = lambda x: sess.run(None, {"x": x})[0]
    except ImportError:
        pass
    try:
        import torch

        from convdsl.tools.export_torch import to_torch

        torch.set_num_threads(threads)
        mod = to_torch(cm, w).eval()

        def eager(x):
            with torch.inference_mode():
                return mod(torch.from_numpy(x)).numpy()
        out["torch"] = eager
        if use_compile:
            frozen = torch.compile(mod, dynamic=False)

            def compiled(x):
                with torch.inference_mode():
                    return frozen(torch.from_numpy(x)).numpy()
            out["torch.compile"] = compiled
    except ImportError:
        pass
    return out


def bench_model(path: str, batches, threads_list, budget: float, use_compile: bool, layers: bool,
                peak: dict[int, float]) -> None:
    prog = api.load(path)
    m = prog.model()
    cm = m.bind({s: v for s, v in m.valid_for.items() if s != "N"})
    t0 = time.perf_counter()
    c = compile_model(cm)
    ct = time.perf_counter() - t0
    w = random_weights(m, {s: v for s, v in m.valid_for.items() if s != "N"}, 0)
    pw = c.pack_weights(w)
    flops = 2 * macs(cm)
    print(f"\n== {m.name} ({path}): {flops / 1e6:.2f} MFLOP/image, cold compile {ct:.3f} s")
    rng = np.random.default_rng(0)
    for t in threads_list:
        eng = engines(cm, w, t, use_compile)
        for n in batches:
            x = rng.standard_normal((n, *cm.input_shape)).astype(np.float32)
            ref = c.run(x, pw, threads=t)
            row = {"convdsl": median_time(lambda: c.run(x, pw, threads=t), budget)}
            for name, f in eng.items():
                got = f(x)
                err = float(np.max(np.abs(got.reshape(ref.shape) - ref)))
                assert err < 1e-3, f"{name} disagrees with convdsl by {err}"
                row[name] = median_time(lambda: f(x), budget)
            best = min(v for k, v in row.items() if k != "convdsl") if len(row) > 1 else float("nan")
            gf = flops * n / row["convdsl"] / 1e9
            cells = "  ".join(f"{k} {v * 1e3:9.3f} ms" for k, v in row.items())
            pk = f"  {100 * gf / peak[t]:5.1f}% of sgemm" if t in peak else ""
            print(f"  threads {t} batch {n:5d}: {cells}  | best-other/convdsl {best / row['convdsl']:5.2f}x"
                  f"  {gf:6.1f} GFLOP/s{pk}", flush=True)
    if layers and hasattr(c, "profile"):
        x = rng.standard_normal((max(batches), *cm.input_shape)).astype(np.float32)
        prof = c.profile(x, pw, repeat=5)
        tot = sum(prof.values())
        print(f"  per-stage profile, batch {x.shape[0]} (1 thread):")
        for k, v in prof.items():
            print(f"    {k:28s} {v * 1e3:9.3f} ms  {100 * v / tot:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="examples/lenet.conv,examples/lenet_relu.conv")
    ap.add_argument("--batch", default="1,64,1024,4096")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    ap.add_argument("--torch-compile", action="store_true")
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--no-peak", action="store_true")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    peak = {} if a.no_peak else sgemm_peak(threads)
    for t, g in peak.items():
        print(f"sgemm peak (numpy float32 4096^2), {t} thread(s): {g:.1f} GFLOP/s")
    for p in a.models.split(","):
        bench_model(str(ROOT / p) if not os.path.isabs(p) else p, [int(b) for b in a.batch.split(",")], threads,
                    a.seconds, a.torch_compile, a.layers, peak)


if __name__ == "__main__":
    main()
