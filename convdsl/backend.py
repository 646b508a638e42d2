"""The back end's driver: lower, generate, JIT, and call the native code.

``compile_model(cm, schedule)`` runs ``lower`` -> ``codegen`` -> ``JitModule``
and returns a :class:`CompiledModel`.  Its native entry point is
``forward(input*, output*, weights*, scratch*, n)`` with the batch size ``n``
a run-time argument; :meth:`CompiledModel.run` calls it through ctypes (which
releases the GIL), splitting the batch across threads if asked, each thread
with its own scratch arena.

Precondition: the public API validated the weights and input before calling
in; here they are only asserted.
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import loopir
from .codegen import codegen, entry_name
from .jit import JitModule
from .lower import Lowered, aligned_zeros, lower
from .model import ConcreteModel
from .schedule import Schedule

_FORWARD = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int64)


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
        self.input_shape = lowered.input_shape
        self.output_shape = lowered.output_shape
        self._in_per_image = int(np.prod(self.input_shape))
        self._out_per_image = int(np.prod(self.output_shape))
        self._local = threading.local()
        self._lock = threading.Lock()
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
        xp, yp = x.__array_interface__["data"][0], out.__array_interface__["data"][0]
        if threads <= 1 or n == 1:
            self._fn(xp, yp, packed.ptr, self._scratch_ptr(), n)
            return out
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


def compile_model(cm: ConcreteModel, schedule: Schedule | None = None) -> CompiledModel:
    """Lower, generate and JIT ``cm`` for the host (default schedule: ``Schedule.for_host()``)."""
    schedule = schedule or Schedule.for_host()
    lowered = lower(cm, schedule)
    module = codegen(lowered.program)
    return CompiledModel(cm, schedule, lowered, JitModule(module))
