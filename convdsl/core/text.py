"""Text for people, shared by every stage and tool: durations and shapes.

Kept in ``core`` (not in the front end's report or a tool) because the check
report, the model printer, ``convdsl run``, ``convdsl bench`` and the
benchmark tables all print them, and they should all read the same.
"""

from __future__ import annotations

from typing import Iterable

from . import symbolic as sy
from .symbolic import Dim


def format_seconds(seconds: float) -> str:
    """A duration with a unit a person reads at a glance (µs, ms or s)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_shape(shape: Iterable[Dim]) -> str:
    """A shape as the language writes it: ``[N, 6, H // 2, W // 2]`` (symbolic sizes simplified)."""
    return "[" + ", ".join(sy.to_str(d) for d in shape) + "]"
