"""The back end's driver: lower, generate, JIT, and call the native code.

``compile_model(cm, schedule)`` runs ``lower`` -> ``codegen`` -> ``JitModule``
and returns a :class:`CompiledModel`.  Its native entry point is
``forward(input*, output*, weights*, scratch*, n)`` with the batch size ``n``
a run-time argument; :meth:`CompiledModel.run` calls it through ctypes (which
releases the GIL), splitting the batch across threads if asked, each thread
with its own scratch arena.  A single-thread call goes through
``forward_arrays``, which takes the two numpy array objects and reads their
data pointers natively (at an offset confirmed once at import), sparing two
``__array_interface__`` look-ups per call.

Intra-image threading: a model of at least ``Schedule.split_macs``
multiply-adds per image is also compiled with one entry per stage
(``codegen.stage_name``), each heavy stage computing a run-time range
``[r0, r1)`` of its outermost loop (output-channel blocks or output rows of a
conv, rows of a pool, output blocks of a dense layer).  A batch smaller than
the thread count then runs stage by stage from Python, each stage's range
split across the caller and helper threads that sit in the module's native
spin loop (``codegen.worker_name``) for the call: a hand-off costs well under
a microsecond, where waking a pooled thread per stage cost 0.1-0.4 ms here.

:meth:`CompiledModel.profile` returns seconds per stage, from cycle counters
the entry keeps when compiled with ``Schedule(profile=True)``.

Precondition: the public API validated the weights and input before calling
in; here they are only asserted.
"""

from __future__ import annotations

import ctypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from . import loopir
from .codegen import arrays_entry_name, codegen, cycles_name, entry_name, stage_name, wait_name, worker_name
from .jit import JitModule
from .lower import Lowered, aligned_zeros, lower
from .model import ConcreteModel
from .schedule import Schedule

_FORWARD = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int64)
_FORWARD_ARRAYS = ctypes.CFUNCTYPE(None, ctypes.py_object, ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_int64, ctypes.c_int64)
_STAGE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
_WORKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_WAIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_CYCLES = ctypes.CFUNCTYPE(ctypes.c_int64)
_CTL = 16  # int64s per helper thread's control block (two cache lines: no false sharing)


def _find_data_offset() -> int | None:
    """Byte offset of the data pointer in a numpy array object (``PyArrayObject_fields.data``, right
    after the object header), checked on live arrays; None if it cannot be confirmed."""
    probes = [np.empty(k, np.float32) for k in (3, 17, 64)]
    for off in (16, 24, 32, 40):
        if all(ctypes.c_void_p.from_address(id(a) + off).value == _data(a) for a in probes):
            return off
    return None


def _data(a: np.ndarray) -> int:
    """The address of ``a``'s first element (cheaper than ``a.ctypes.data``)."""
    return a.__array_interface__["data"][0]


@dataclass(frozen=True, slots=True)
class PackedWeights:
    """The weight arena in the kernels' layouts (made once per weight set)."""

    arena: np.ndarray
    ptr: int


class CompiledModel:
    def __init__(self, cm: ConcreteModel, schedule: Schedule, lowered: Lowered, jit: JitModule) -> None:
        self.model = cm
        self.schedule = schedule
        self.lowered = lowered
        self.program: loopir.Program = lowered.program
        self._jit = jit
        self._fn = _FORWARD(jit.address(entry_name(self.program)))
        # the array-object entry (absent from code cached by older versions)
        arrays = jit.find(arrays_entry_name(self.program))
        self._fn_arrays = _FORWARD_ARRAYS(arrays) if arrays and _DATA_OFFSET is not None else None
        self._profiled: CompiledModel | None = None
        # per-stage entries (heavy models only, see Schedule.split_macs): (function, parts)
        self._stages: list[tuple[object, int]] = []
        for k, (_, extent) in enumerate(self.program.stages):
            addr = jit.find(stage_name(self.program, k))
            if not addr:
                self._stages = []
                break
            self._stages.append((_STAGE(addr), extent))
        worker = jit.find(worker_name(self.program)) if self._stages else 0
        wait = jit.find(wait_name(self.program)) if self._stages else 0
        self._worker = _WORKER(worker) if worker else None
        self._wait = _WAIT(wait) if wait else None
        if self._wait is None:
            self._worker = None
        if self._worker is None:
            self._stages = []
        self.input_shape = lowered.input_shape
        self.output_shape = lowered.output_shape
        self._in_per_image = int(np.prod(self.input_shape))
        self._out_per_image = int(np.prod(self.output_shape))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._split_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    # -- introspection
    @property
    def llvm_ir(self) -> str:
        return self._jit.llvm_ir

    @property
    def asm(self) -> str:
        return self._jit.asm

    def object_code(self) -> bytes:
        return self._jit.object_code()

    @property
    def loops(self) -> str:
        return loopir.format_program(self.program)

    # -- weights
    def pack_weights(self, weights: dict[str, np.ndarray]) -> PackedWeights:
        arena = self.lowered.packing.pack(weights)
        return PackedWeights(arena, arena.ctypes.data)

    # -- scratch arenas: one per thread (halos pre-filled once), reused across calls
    def _new_scratch(self) -> np.ndarray:
        s = aligned_zeros(self.program.scratch_size)
        for b in self.program.buffers:
            if b.kind == "scratch" and b.fill != 0.0:
                s[b.offset:b.offset + b.size] = b.fill
        return s

    def _scratch_ptr(self) -> int:
        local = self._local
        ptr = getattr(local, "ptr", None)
        if ptr is None:
            local.arena = self._new_scratch()  # kept alive by the thread-local
            ptr = local.ptr = local.arena.ctypes.data
        return ptr

    def _call(self, xp: int, yp: int, wp: int, n: int) -> None:
        self._fn(xp, yp, wp, self._scratch_ptr(), n)

    # -- running
    def run(self, x: np.ndarray, packed: PackedWeights, threads: int = 1) -> np.ndarray:
        assert x.dtype == np.float32 and x.flags.c_contiguous, "input must be C-contiguous float32"
        assert x.shape[1:] == self.input_shape, x.shape
        n = x.shape[0]
        out = np.empty((n, *self.output_shape), dtype=np.float32)
        if n == 0:
            return out
        if threads > 1 and n < threads and self._stages and self._split_lock.acquire(blocking=False):
            # (one split run at a time per model: its helpers spin; a concurrent call runs alone)
            try:
                self._run_split(_data(x), _data(out), packed.ptr, n, threads)
            finally:
                self._split_lock.release()
            return out
        if threads <= 1 or n == 1:
            # the common single-thread call: one ctypes call on the array objects themselves
            sp = getattr(self._local, "ptr", None) or self._scratch_ptr()
            if self._fn_arrays is not None:
                self._fn_arrays(x, out, packed.ptr, sp, n, _DATA_OFFSET)
            else:
                self._fn(_data(x), _data(out), packed.ptr, sp, n)
            return out
        xp, yp = _data(x), _data(out)
        threads = min(threads, n)
        # chunks in whole batch tiles where possible, so no thread gets a ragged tile needlessly
        per = -(-n // threads)
        tile = self.lowered.batch_tile
        if per > tile:
            per = -(-per // tile) * tile
        bounds = [(a, min(a + per, n)) for a in range(0, n, per)]
        pool = self._executor(len(bounds))
        futs = [pool.submit(self._call, xp + 4 * a * self._in_per_image, yp + 4 * a * self._out_per_image,
                            packed.ptr, b - a) for a, b in bounds[1:]]
        a, b = bounds[0]
        self._call(xp, yp, packed.ptr, b - a)
        for f in futs:
            f.result()
        return out

    def _run_split(self, xp: int, yp: int, wp: int, n: int, threads: int) -> None:
        """Each batch tile stage by stage, every split stage's parts spread over ``threads``
        threads sharing this thread's scratch (the parts write disjoint outputs; each stage starts
        once the previous one is complete).  The helpers run the native worker loop (see
        :func:`~convdsl.codegen.worker_name`) for the whole call, spinning between stages: a
        pool hand-off per stage (a sleeping thread's wake-up) cost 0.1-0.4 ms each here."""
        sp = self._scratch_ptr()
        helpers = threads - 1
        pool = self._executor(helpers)
        raw = np.zeros(helpers * _CTL + 8, np.int64)
        ctl = raw[(-raw.ctypes.data % 64) // 8:][:helpers * _CTL].reshape(helpers, _CTL)
        addrs = [ctl[j].ctypes.data for j in range(helpers)]
        futs = [pool.submit(self._worker, a) for a in addrs]
        wait = self._wait
        seq = 0
        T = self.lowered.batch_tile
        try:
            for n0 in range(0, n, T):
                nt = min(T, n - n0)
                for k, (fn, extent) in enumerate(self._stages):
                    parts = min(threads, extent)
                    if parts <= 1:
                        fn(xp, yp, wp, sp, n0, nt, 0, extent)
                        continue
                    seq += 1
                    cuts = [extent * j // parts for j in range(parts + 1)]
                    for j in range(1, parts):
                        ctl[j - 1, 2:11] = (k, xp, yp, wp, sp, n0, nt, cuts[j], cuts[j + 1])
                        ctl[j - 1, 0] = seq  # posted after its arguments (x86-64: stores stay in order)
                    fn(xp, yp, wp, sp, n0, nt, cuts[0], cuts[1])
                    for j in range(1, parts):
                        wait(addrs[j - 1], seq)
        finally:
            ctl[:, 0] = -1
            for f in futs:
                f.result()

    # -- per-stage profile
    def profile(self, x: np.ndarray, packed: PackedWeights, repeat: int = 10) -> dict[str, float]:
        """Seconds per call spent in each stage (``{layer name: s}``, plus ``input`` / ``output``
        for the copies in and out), one thread, averaged over ``repeat`` calls on ``x``.

        The native entry times every stage call with ``llvm.readcyclecounter`` into a counter
        region of this thread's scratch; cycles become seconds by the counter's rate, measured
        against ``time.perf_counter``.  A model compiled without ``Schedule(profile=True)`` compiles
        a profiled twin once (same weight layout, so ``packed`` serves both)."""
        if not self.schedule.profile:
            if self._profiled is None:
                self._profiled = compile_model(self.model, replace(self.schedule, profile=True))
            return self._profiled.profile(x, packed, repeat)
        off = self.lowered.profile_offset
        names = self.lowered.stage_names
        self.run(x, packed)  # warm up (and make this thread's scratch)
        counters = self._local.arena[off:off + 2 * len(names)].view(np.int64)
        counters[:] = 0
        for _ in range(repeat):
            self.run(x, packed)
        hz = _cycle_rate(_CYCLES(self._jit.address(cycles_name(self.program))))
        out: dict[str, float] = {}
        for name, cyc in zip(names, counters.tolist()):
            out[name] = out.get(name, 0.0) + cyc / hz / repeat
        return out

    def _executor(self, k: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_size < k:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="convdsl")
                self._pool_size = k
            return self._pool

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


_DATA_OFFSET = _find_data_offset()
_RATE: list[float] = []


def _cycle_rate(clock) -> float:
    """Counter ticks per second (measured once per process: median of three 7 ms spins)."""
    if not _RATE:
        rates = []
        for _ in range(3):
            c0, t0 = clock(), time.perf_counter()
            while time.perf_counter() - t0 < 0.007:
                pass
            rates.append((clock() - c0) / (time.perf_counter() - t0))
        _RATE.append(float(np.median(rates)))
    return _RATE[0]


def compile_model(cm: ConcreteModel, schedule: Schedule | None = None) -> CompiledModel:
    """Lower, generate and JIT ``cm`` for the host (default schedule: ``Schedule.for_host()``)."""
    schedule = schedule or Schedule.for_host()
    lowered = lower(cm, schedule)
    module = codegen(lowered.program)
    return CompiledModel(cm, schedule, lowered, JitModule(module))
