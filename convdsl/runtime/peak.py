"""Running the FMA throughput kernel (``backend/peak.py``) on one or more threads.

Each thread calls the kernel through ctypes, which releases the GIL, so ``threads`` Python threads
run it concurrently on as many cores.  The figure for ``threads`` is the flops of all of them over
the wall time from the first thread's start (after a barrier) to the last one's end, each thread
reading the clock itself: a thread that started late or was descheduled lowers it, never raises it.  The best of ``repeat`` runs is kept: the
peak is what the machine *can* do, and other processes only ever take from it.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

from ..backend.peak import FmaKernel, fma_kernel

_KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_void_p)
# a < 1 and b > 0: the chain converges to b / (1 - a) = 1 and stays a normal float (no denormal assists)
A, B = 0.999, 0.001


def _run(kernel: FmaKernel, iterations: int, threads: int) -> float:
    """Seconds for ``threads`` concurrent calls of ``iterations`` each, from the first one's start
    to the last one's end, as each thread reads the clock itself (the main thread may wake after a
    worker has already started: timing from its clock would miss that worker's first moments)."""
    fn = _KERNEL(kernel.address)
    outs = [(ctypes.c_float * kernel.out_floats)() for _ in range(threads)]
    start = threading.Barrier(threads)
    spans: list[tuple[float, float]] = []
    # each thread on a core of its own where the OS lets us say so: left to the scheduler, two
    # threads that start together were seen sharing one core for a whole short run (a 2-thread
    # figure equal to the 1-thread one), which a best-of-few does not always escape
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def work(i: int, out: ctypes.Array) -> None:
        if threads > 1 and len(cpus) >= threads:
            try:
                os.sched_setaffinity(0, {cpus[i]})  # (pid 0: this thread only, on Linux)
            except OSError:
                pass
        start.wait()
        t0 = time.perf_counter()
        fn(iterations, A, B, ctypes.addressof(out))
        spans.append((t0, time.perf_counter()))  # (list.append is atomic under the GIL)

    team = [threading.Thread(target=work, args=(i, out), daemon=True) for i, out in enumerate(outs)]
    for t in team:
        t.start()
    for t in team:
        t.join()
    seconds = max(e for _, e in spans) - min(b for b, _ in spans)
    # the chain falls from its start (1 + k/64) towards 1: anything else is a kernel that did not run
    if not all(0.99 < v < 1.25 for out in outs for v in out):
        raise RuntimeError("the FMA peak kernel computed a wrong value")
    return seconds


def fma_peak(width: int, threads: int = 1, seconds: float = 0.1, repeat: int = 3) -> float:
    """GFLOP/s of ``width``-lane FMAs on ``threads`` threads: the best of ``repeat`` runs of about
    ``seconds`` each (the iteration count is calibrated on one thread first)."""
    if threads < 1 or repeat < 1 or not 0 < seconds < 3600:  # (inf would calibrate forever)
        raise ValueError("threads and repeat must be at least 1 and seconds in (0, 3600)")
    kernel = fma_kernel(width)
    iterations = 1000
    while True:  # calibrate: grow until one call takes a tenth of the wanted time, then scale
        dt = _run(kernel, iterations, 1)
        if dt >= seconds / 10 or iterations >= 1 << 40:
            break
        iterations *= 8
    iterations = max(1, int(iterations * seconds / max(dt, 1e-9)))
    best = min(_run(kernel, iterations, threads) for _ in range(repeat))
    return threads * iterations * kernel.flops_per_iteration / best / 1e9
