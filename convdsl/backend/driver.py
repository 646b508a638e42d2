"""The back-end pipeline, written once: plan -> lower -> unroll -> valnum -> verify -> codegen -> LLVM,
through the cache.

``build(cm, schedule)`` is what the API, the runtime and the cache all go
through; ``build_object(cm, schedule, target)`` is the same pipeline ending in
an object file for a :class:`~.jit.Target` instead of the JIT (``--emit obj/asm
--cpu``, and the C library, whose entry points it lets :mod:`.clib` add to the
module before LLVM sees it).  Planning and lowering always run (they are cheap, and give the plan,
the loop IR and the weight-packing plan); codegen and LLVM run only on a
cache miss.

Looking inside while compiling:

* every build records how long each stage took (``Build.timings``; printed by
  :func:`format_timings`, as LLVM's ``-time-passes``);
* ``CONVDSL_CHECK_BOUNDS=1`` compiles every load and store checked against
  its buffer (a trap that names the kernel and buffer), for debugging;
* ``CONVDSL_DUMP=plan,loops,loops-final,llvm`` writes those stages of every model compiled
  to ``CONVDSL_DUMP_DIR`` (default ``./convdsl-dump``), one file per stage,
  named by model and cache key (``loops`` is the loop IR as lowered, the
  readable one; ``loops-final`` the loop IR after the passes, what codegen
  translates; ``llvm`` is the optimised IR).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llvmlite import ir

from ..core.model import ConcreteModel
from . import cache
from .codegen import codegen
from .jit import JitModule, NativeObject, Target
from .loopir import check_structure, format_program
from .lower import Lowered, emit
from .plan import format_plan, plan
from . import loopir as L
from .schedule import Schedule
from .unroll import unroll
from .valnum import valnum

DUMP_STAGES = ("plan", "loops", "loops-final", "llvm")


def passes(prog: L.Program, lap: Callable[[str], None] | None = None) -> L.Program:
    """The loop-IR passes between lowering and codegen: unroll, value-number, check the structure
    again (names bound before use, widths, arenas: what codegen assumes).  ``lap`` is told when
    each stage ends.

    The bounds proof is made once, on the lowered program (:func:`.lower.emit` verifies it): the
    passes preserve every load's and store's address (tests/test_passes.py), and the prover is more
    precise on the lowered form, where an index is one expression rather than a chain of shared
    names -- on value-numbered Winograd kernels it could no longer prove stores it had proved."""
    done = lap or (lambda stage: None)
    prog = unroll(prog)
    done("unroll")
    prog = valnum(prog)
    done("valnum")
    check_structure(prog)
    done("verify")
    return prog


@dataclass(frozen=True, slots=True)
class Build:
    """The back end's product: the lowered program (plan, loop IR, packing plan) and its native code."""

    lowered: Lowered
    jit: JitModule
    cache_hit: bool = False
    timings: tuple[tuple[str, float], ...] = ()  # (stage, seconds), in pipeline order


def build(cm: ConcreteModel, schedule: Schedule, source: str | None = None,
          check_bounds: bool | None = None, admit: Callable[[Lowered], None] | None = None) -> Build:
    """Compile ``cm`` under ``schedule``; with ``source`` (the program's text, part of the key) the
    native code comes from, and goes to, the disk cache.  ``check_bounds`` (default: the
    environment's ``CONVDSL_CHECK_BOUNDS=1``) builds the bounds-checked debugging code
    (:func:`.codegen.codegen`), never cached.  ``admit`` sees the lowered program before any code
    is made for it, and may raise (the runtime refuses a scratch arena past its cap there)."""
    if check_bounds is None:
        check_bounds = os.environ.get("CONVDSL_CHECK_BOUNDS", "") not in ("", "0")
    lap = _Laps()
    lowered = _lowered(cm, schedule, lap)
    if admit is not None:
        admit(lowered)
    key = cache.cache_key(cm, schedule, source) if source is not None and not check_bounds else None
    jit = cache.load(key) if key is not None else None
    hit = jit is not None
    if jit is not None:
        lap("cache load")
    else:
        module = codegen(passes(lowered.program, lap), check_bounds)
        lap("codegen")
        jit = JitModule(module)
        lap("llvm (optimise, object code, load)")
        if key is not None:
            cache.store(key, jit)
            lap("cache store")
    _dump(cm, schedule, lowered, jit)
    return Build(lowered, jit, hit, tuple(lap.times))


class _Laps:
    """Stage times: each call records the time since the previous one under the stage's name."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._t = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.times.append((stage, now - self._t))
        self._t = now


def _lowered(cm: ConcreteModel, schedule: Schedule, lap: Callable[[str], None]) -> Lowered:
    p = plan(cm, schedule)
    lap("plan")
    lowered = emit(p)
    lap("lower + verify")
    return lowered


@dataclass(frozen=True, slots=True)
class ObjectBuild:
    """:func:`build_object`'s product: the lowered program and its object code for a target."""

    lowered: Lowered
    native: NativeObject
    timings: tuple[tuple[str, float], ...] = ()


def build_object(cm: ConcreteModel, schedule: Schedule, target: Target,
                 extend: Callable[[ir.Module, Lowered], None] | None = None) -> ObjectBuild:
    """Compile ``cm`` under ``schedule`` to a position-independent object for ``target`` (never
    cached, never loaded: it may be for another CPU than this one).  ``extend`` may add to the
    module codegen made (the C library's entry points) before it is optimised."""
    lap = _Laps()
    lowered = _lowered(cm, schedule, lap)
    module = codegen(passes(lowered.program, lap))
    if extend is not None:
        extend(module, lowered)
    lap("codegen")
    native = NativeObject(module, target)
    lap("llvm (optimise, object code)")
    _dump(cm, schedule, lowered, native)
    return ObjectBuild(lowered, native, tuple(lap.times))


def format_timings(timings: tuple[tuple[str, float], ...]) -> str:
    total = sum(s for _, s in timings) or 1e-12
    rows = [f"{s * 1e3:9.1f} ms  {100 * s / total:5.1f}%  {stage}" for stage, s in timings]
    return "\n".join(["compile time by stage:", *rows, f"{total * 1e3:9.1f} ms  total"]) + "\n"


def _dump(cm: ConcreteModel, schedule: Schedule, lowered: Lowered, jit: JitModule | NativeObject) -> None:
    wanted = {w.strip() for w in os.environ.get("CONVDSL_DUMP", "").split(",") if w.strip()}
    if not wanted:
        return
    unknown = wanted - set(DUMP_STAGES)
    if unknown:  # (a debugging switch: say so, dump the rest, never fail the compile)
        print(f"convdsl: CONVDSL_DUMP: no stage {', '.join(sorted(unknown))} (stages: {', '.join(DUMP_STAGES)})",
              file=sys.stderr)
    where = Path(os.environ.get("CONVDSL_DUMP_DIR") or "convdsl-dump")
    where.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(f"{cm!r} {schedule!r}".encode()).hexdigest()[:10]
    texts = {"loops": lambda: format_program(lowered.program), "llvm": lambda: jit.llvm_ir,
             "loops-final": lambda: format_program(passes(lowered.program))}
    made = lowered.plan
    if made is not None:
        texts["plan"] = lambda: format_plan(made)
    for stage in sorted(wanted):
        if stage in texts:
            (where / f"{cm.model.name}.{tag}.{stage}").write_text(texts[stage]())
