"""The compiled network: native code called from Python, on one thread or a team.

``compile_model(cm, schedule)`` runs the back end (:func:`convdsl.backend.driver.build`)
and returns a :class:`CompiledModel`.  Its native entry point is
``forward(input*, output*, weights*, scratch*, n)`` with the batch size ``n``
a run-time argument; :meth:`CompiledModel.run` calls it through ctypes (which
releases the GIL), splitting the batch across threads if asked, each thread
with its own scratch arena.  A single-thread call goes through
``forward_arrays``, which takes the two numpy array objects and reads their
data pointers natively (at an offset confirmed once at import), sparing two
``__array_interface__`` look-ups per call.

Threads: a call with ``threads > 1`` runs on helper threads that stay with the
model (:class:`_Team`).  Each spins in the module's native job loop
(``codegen.worker_name``) for a while after its last job, then blocks: calls in
a loop hand over in well under a microsecond, and an idle model uses no CPU.
A batch is cut into chunks of about a batch tile that the threads take as they
go (``codegen.batch_name``), each thread with its own scratch arena, so a
thread slowed down by another process takes fewer chunks.

Intra-image threading: a model of at least ``Schedule.split_macs``
multiply-adds per image is also compiled with one entry per stage
(``codegen.stage_name``), each heavy stage computing a run-time range
``[r0, r1)`` of its outermost loop (output-channel blocks or output rows of a
conv, rows of a pool, output blocks of a dense layer).  A batch smaller than
the thread count then runs stage by stage from Python, each stage's range
split across the caller and the helpers, sharing the caller's scratch.

:meth:`CompiledModel.profile` returns seconds per stage, from cycle counters
the entry keeps when compiled with ``Schedule(profile=True)``.

Precondition: the public API validated the weights and input before calling
in; here they are only asserted.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..backend import loopir
from ..backend.abi import ASLEEP, CTL_WORDS, EXIT, JOB_WORDS, Ctl, Job
from ..backend.codegen import (
    arrays_entry_name,
    batch_name,
    cycles_name,
    entry_name,
    post_name,
    stage_name,
    wait_name,
    worker_name,
)
from ..backend.driver import build
from ..backend.jit import JitModule
from ..backend.lower import Lowered, aligned_zeros
from ..backend.schedule import Schedule
from ..core.model import ConcreteModel
from .limits import MAX_SCRATCH, check_scratch

_FORWARD = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int64)
_FORWARD_ARRAYS = ctypes.CFUNCTYPE(None, ctypes.py_object, ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_int64, ctypes.c_int64)
_STAGE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
_WORKER = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
_WAIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_POST = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_BATCH = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_CYCLES = ctypes.CFUNCTYPE(ctypes.c_int64)
# How long an idle helper spins before it blocks, in turns of pause + sched_yield (0.8 us each on
# this project's machine, so 0.8 ms): longer than the Python overhead between two calls in a loop,
# short enough that a model called once in a while does not hold a core.
SPIN_TURNS = 1000


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
    def __init__(self, cm: ConcreteModel, schedule: Schedule, lowered: Lowered, jit: JitModule,
                 cache_hit: bool = False) -> None:
        self.model = cm
        self.cache_hit = cache_hit
        self.timings: tuple[tuple[str, float], ...] = ()  # compile time by stage (backend.driver.build)
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
        self._stages: list[tuple[Callable[..., None], int]] = []
        for k, (_, extent) in enumerate(self.program.stages):
            self._stages.append((_STAGE(jit.address(stage_name(self.program, k))), extent))
        self._batch = _BATCH(jit.address(batch_name(self.program)))
        self._team_fns = (_WORKER(jit.address(worker_name(self.program))),
                          _POST(jit.address(post_name(self.program))),
                          _WAIT(jit.address(wait_name(self.program))))
        self.input_shape = lowered.input_shape
        self.output_shape = lowered.output_shape
        self._local = threading.local()
        self._team_lock = threading.Lock()  # one multi-thread call at a time owns the helpers
        self._team: _Team | None = None
        self._pid = os.getpid()

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
    def _scratch_ptr(self) -> int:
        local = self._local
        ptr = getattr(local, "ptr", None)
        if ptr is None:
            local.arena = new_scratch(self.program)  # kept alive by the thread-local
            ptr = local.ptr = local.arena.ctypes.data
        return ptr

    # -- running
    def run(self, x: np.ndarray, packed: PackedWeights, threads: int = 1) -> np.ndarray:
        assert x.dtype == np.float32 and x.flags.c_contiguous, "input must be C-contiguous float32"
        assert x.shape[1:] == self.input_shape, x.shape
        n = x.shape[0]
        out = np.empty((n, *self.output_shape), dtype=np.float32)
        if n == 0:
            return out
        if threads > 1 and (n > 1 or self._stages):
            if self._pid != os.getpid():  # a forked child: no helpers, maybe a lock held by one
                self._team, self._team_lock, self._pid = None, threading.Lock(), os.getpid()
            # (a concurrent multi-thread call finds the helpers busy and runs on its own thread)
            if self._team_lock.acquire(blocking=False):
                try:
                    # Stage entries run one batch tile from image 0 (see codegen.stage_name): with
                    # a dense tail the later stages see other image offsets than the entry's loop
                    if n < threads and self._stages and n <= self.lowered.batch_tile:
                        self._run_split(_data(x), _data(out), packed.ptr, n, threads)
                    else:
                        self._run_batch(_data(x), _data(out), packed.ptr, n, threads)
                finally:
                    self._team_lock.release()
                return out
        # the common single-thread call: one ctypes call on the array objects themselves
        sp = getattr(self._local, "ptr", None) or self._scratch_ptr()
        if self._fn_arrays is not None:
            self._fn_arrays(x, out, packed.ptr, sp, n, _DATA_OFFSET)
        else:
            self._fn(_data(x), _data(out), packed.ptr, sp, n)
        return out

    def _helpers(self, k: int) -> "_Team":
        if self._team is None:
            self._team = _Team(self._jit, self._team_fns, self.program)
        self._team.grow(k)
        return self._team

    def _run_batch(self, xp: int, yp: int, wp: int, n: int, threads: int) -> None:
        """The batch in chunks the threads take as they go: chunks of about a batch tile (a dense
        tile, for a model with a dense tail), evened out so every thread gets the same number of
        whole chunks; a batch of fewer than ``threads`` tiles gives each thread one chunk."""
        tile = self.lowered.outer_tile or self.lowered.batch_tile
        # every thread of a batch job has its own arena: no more of them than the scratch cap holds
        threads = max(1, min(threads, MAX_SCRATCH.value() // max(1, 4 * self.program.scratch_size)))
        rounds = -(-n // (threads * tile))
        per = -(-n // (threads * rounds))
        helpers = min(threads, -(-n // per)) - 1
        team = self._helpers(helpers)
        job = team.job
        job[Job.NEXT] = 0
        job[Job.INPUT], job[Job.OUTPUT], job[Job.WEIGHTS], job[Job.N], job[Job.CHUNK] = xp, yp, wp, n, per
        kind = len(self._stages)
        posted = 0
        try:
            for j in range(helpers):
                team.post(j, kind, (team.job_addr, team.scratch_ptr(j)))
                posted += 1
            self._batch(team.job_addr, self._scratch_ptr())
        finally:
            # (also on an exception, e.g. KeyboardInterrupt after a native call: the helpers are
            # still writing into ``out`` and taking chunks of this job)
            for j in range(posted):
                team.wait(j)

    def _run_split(self, xp: int, yp: int, wp: int, n: int, threads: int) -> None:
        """The batch tile (``n <= batch_tile``) stage by stage, every split stage's parts spread
        over ``threads`` threads sharing this thread's scratch (the parts write disjoint outputs;
        each stage starts once the previous one is complete)."""
        sp = self._scratch_ptr()
        team = self._helpers(max(min(threads, e) for _, e in self._stages) - 1)
        for k, (fn, extent) in enumerate(self._stages):
            parts = min(threads, extent)
            if parts <= 1:
                fn(xp, yp, wp, sp, 0, n, 0, extent)
                continue
            cuts = [extent * j // parts for j in range(parts + 1)]
            posted = 0
            try:
                for j in range(1, parts):
                    team.post(j - 1, k, (xp, yp, wp, sp, 0, n, cuts[j], cuts[j + 1]))
                    posted += 1
                fn(xp, yp, wp, sp, 0, n, cuts[0], cuts[1])
            finally:
                for j in range(posted):
                    team.wait(j)

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

    def __del__(self) -> None:
        team = getattr(self, "_team", None)
        if team is not None:
            team.close()


def new_scratch(program: loopir.Program) -> np.ndarray:
    """A scratch arena for ``program``, its halos pre-filled."""
    s = aligned_zeros(program.scratch_size)
    for b in program.buffers:
        if b.kind == "scratch" and b.fill != 0.0:
            s[b.offset:b.offset + b.size] = b.fill
    return s


class _Team:
    """Helper threads for one compiled model, each with a control block, a wake-up event and (made
    on its first batch job) its own scratch arena.  A helper thread alternates between blocking on
    its event and the native job loop (:func:`~convdsl.backend.codegen.worker_name`), which returns when it
    has been idle for ``SPIN_TURNS``.

    Posting job ``seq`` to a helper: its arguments go into the control block, then a compare-and-swap
    of ``Ctl.POSTED`` from ``seq - 1`` to ``seq`` hands it to a spinning helper; if the helper has
    marked itself asleep instead, ``Ctl.POSTED = seq`` and its event wakes it.  The threads keep the JIT module
    (nothing that refers to the model) alive, so the model is freed as soon as it is dropped, and
    :meth:`close` then ends them."""

    def __init__(self, jit: JitModule, fns: tuple, program: loopir.Program) -> None:
        self._jit = jit
        self._worker, self._post, self._wait = fns
        self._program = program
        self._raw: list[np.ndarray] = []
        self.ctl: list[np.ndarray] = []
        self.addr: list[int] = []
        self.seq: list[int] = []
        self.events: list[threading.Event] = []
        self.arenas: list[np.ndarray | None] = []
        self.threads: list[threading.Thread] = []
        raw = np.zeros(JOB_WORDS + 8, np.int64)
        self.job = raw[(-raw.ctypes.data % 64) // 8:][:JOB_WORDS]  # Job.NEXT alone on its cache line
        self._job_raw = raw
        self.job_addr = self.job.ctypes.data

    def grow(self, k: int) -> None:
        while len(self.ctl) < k:
            raw = np.zeros(CTL_WORDS + 8, np.int64)
            ctl = raw[(-raw.ctypes.data % 64) // 8:][:CTL_WORDS]
            ctl[Ctl.POSTED] = ASLEEP
            ev = threading.Event()
            t = threading.Thread(target=_helper_main, args=(self._worker, ctl.ctypes.data, ev, (self._jit, raw)),
                                 name=f"convdsl-{len(self.ctl) + 1}", daemon=True)
            t.start()  # (first: a thread that fails to start leaves no helper behind to wait for)
            self._raw.append(raw)
            self.ctl.append(ctl)
            self.addr.append(ctl.ctypes.data)
            self.seq.append(0)
            self.events.append(ev)
            self.arenas.append(None)
            self.threads.append(t)

    def scratch_ptr(self, j: int) -> int:
        arena = self.arenas[j]
        if arena is None:
            arena = self.arenas[j] = new_scratch(self._program)
        return arena.ctypes.data

    def post(self, j: int, kind: int, args: tuple[int, ...]) -> None:
        ctl = self.ctl[j]
        ctl[Ctl.KIND] = kind
        ctl[Ctl.ARGS:Ctl.ARGS + len(args)] = args
        seq = self.seq[j] + 1
        old = self._post(self.addr[j], seq - 1, seq)
        if old != seq - 1:
            if old != ASLEEP:
                raise RuntimeError(f"convdsl helper {j + 1}: control word {old}, expected {seq - 1} or asleep")
            ctl[Ctl.POSTED] = seq  # (the event's lock orders this after the arguments for the woken thread)
            self.events[j].set()
        self.seq[j] = seq

    def wait(self, j: int) -> None:
        self._wait(self.addr[j], self.seq[j])

    def close(self) -> None:
        for ctl, ev in zip(self.ctl, self.events):
            ctl[Ctl.POSTED] = EXIT
            ev.set()


def _helper_main(worker, ctl: int, event: threading.Event, keep: tuple) -> None:
    while True:
        event.wait()
        event.clear()
        if worker(ctl, SPIN_TURNS):
            return


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


def compile_model(cm: ConcreteModel, schedule: Schedule | None = None, source: str | None = None,
                  check_bounds: bool | None = None) -> CompiledModel:
    """``cm`` compiled for the host (default schedule: ``Schedule.for_host()``); with ``source`` (the
    program text) through the disk cache (``CompiledModel.cache_hit`` says whether it hit)."""
    schedule = schedule or Schedule.for_host()
    # (refused before any code is generated: a program whose one scratch arena is past the cap)
    b = build(cm, schedule, source, check_bounds,
              admit=lambda lowered: check_scratch(lowered.program.scratch_size, cm.model))
    compiled = CompiledModel(cm, schedule, b.lowered, b.jit, b.cache_hit)
    compiled.timings = b.timings
    return compiled
