"""How ``convdsl bench`` measures: quiet machine, alternating rounds, medians, the machine's peaks.

* :func:`settle` waits, between engines, until this process's own thread pools stop spinning;
  :class:`CpuMeter` measures the CPU other processes and the hypervisor took meanwhile, and
  :func:`wait_idle` waits for the machine to be idle before starting;
* :func:`time_alternating` times engines in rounds (engine A, engine B, ...), one sample per call from
  the Python call to the returned array, with the garbage collector off; :func:`warm_up` estimates a
  call's time first, so that every engine gets about the same seconds;
* :func:`measure_fma_peak` is the physical peak (convdsl's own FMA-throughput kernel at the host's
  vector width, on each thread count), :func:`measure_peak` the practical one (numpy float32 sgemm,
  BLAS limited to each thread count with threadpoolctl); :func:`host_info` describes the machine.

Standard library only at import time; numpy and threadpoolctl load when used.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

MAX_ROUNDS = 10  # alternation rounds per configuration
# seconds: the slice in which the process must be idle before the next engine runs.  The kernel brings
# the CPU time of the process's *other* threads up to date only at scheduler ticks (every 4 ms here),
# so a slice must span several ticks: 2 ms slices alternately read 0 and 2 cores while OpenBLAS's
# helper spun, and let the next engine start beside it.
SWITCH_PAUSE = 0.025
SETTLE_MAX = 0.5  # seconds: the longest wait for spinning thread pools to go to sleep
BUSY_WARNING = 0.25  # cores used by other processes during a configuration that make it unreliable
STEAL_WARNING = 0.1  # cores of hypervisor steal time during a configuration that make it unreliable


def blas_limits(threads: int):
    """A context limiting BLAS (numpy's OpenBLAS/MKL) to ``threads``, or a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def blas_info() -> list[dict]:
    """The BLAS libraries numpy loaded, as threadpoolctl describes them (kernel ``architecture``,
    version, threads); empty without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "prefix")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info() if d.get("user_api") == "blas"]


def median(xs: Sequence[float]) -> float:
    """The median as a plain float (the statistic every figure of the report is)."""
    return float(statistics.median(xs))


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The garbage collector off (after one collection) while timing: a collection inside a timed
    call would land in one engine's samples only."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    with no_gc():
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
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_seconds and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times[1:] if len(times) > 1 else times)


def measure_peak(threads_list: Sequence[int], size: int | None = None, repeat: int = 3) -> dict:
    """numpy float32 sgemm GFLOP/s per thread count: 2 n^3 / median time (n = 4096, or 2048 if slow)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"gflops": {}, "n": {}, "repeat": repeat}
    for t in threads_list:
        with blas_limits(t):
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
        out["gflops"][str(t)] = 2 * n ** 3 / median(times) / 1e9
        out["n"][str(t)] = n
    return out



def measure_fma_peak(threads_list: Sequence[int], repeat: int = 5) -> dict:
    """The physical peak per thread count: convdsl's FMA-throughput kernel at the host's vector
    width (:func:`convdsl.api.fma_peak`), the best of ``repeat`` runs."""
    from ...api import fma_peak

    out: dict[str, Any] = {"gflops": {}, "repeat": repeat}
    for t in threads_list:
        settle()
        p = fma_peak(t, repeat=repeat)
        out["gflops"][str(t)] = p.gflops
        out.update(width=p.width, accumulators=p.accumulators)
    return out


# ====================================================================== host
def host_info() -> dict:
    """The machine for the report: CPU (as /proc/cpuinfo and LLVM name it), features, cores, BLAS, and
    the environment variables that change BLAS's speed."""
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
        from ... import host_cpu

        cpu = host_cpu()
        info["llvm_cpu"] = cpu.name
        wanted = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                  "avx512bf16", "amx-tile", "neon", "sve")
        info["features"] = [f for f in wanted if f in cpu.features]
    except Exception:  # noqa: BLE001 - host description is best effort
        pass
    info["blas"] = blas_info()
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    info["env"] = env
    return info


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def has_threadpoolctl() -> bool:
    """Whether BLAS threads can be limited (without threadpoolctl every configuration runs on all cores)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True

