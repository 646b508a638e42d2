"""The back-end pipeline, written once: ``lower`` -> ``codegen`` -> ``jit``, through the cache.

``build(cm, schedule)`` is what the API, the runtime and the cache all go
through.  Lowering always runs (it is cheap, and gives the loop IR and the
weight-packing plan); LLVM runs only on a cache miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model import ConcreteModel
from . import cache
from .codegen import codegen
from .jit import JitModule
from .lower import Lowered, lower
from .schedule import Schedule


@dataclass(frozen=True, slots=True)
class Build:
    """The back end's product: the lowered program (loop IR, packing plan) and its native code."""

    lowered: Lowered
    jit: JitModule
    cache_hit: bool = False


def build(cm: ConcreteModel, schedule: Schedule, source: str | None = None) -> Build:
    """Compile ``cm`` under ``schedule``; with ``source`` (the program's text, part of the key) the
    native code comes from, and goes to, the disk cache."""
    lowered = lower(cm, schedule)
    key = cache.cache_key(cm, schedule, source) if source is not None else None
    if key is not None:
        jit = cache.load(key)
        if jit is not None:
            return Build(lowered, jit, True)
    jit = JitModule(codegen(lowered.program))
    if key is not None:
        cache.store(key, jit)
    return Build(lowered, jit, False)
