"""The loop-IR verifier: what codegen may assume of a program.

``verify(prog)`` runs both checks and raises :class:`~convdsl.backend.loopir.VerifyError` on the
first failure:

* structure (:func:`convdsl.backend.loopir.check_structure`): names bound before use, vector
  widths that agree, loops with sane bounds, buffers inside their arenas, stage entries with the
  parameters the thread team passes;
* bounds (:func:`convdsl.backend.bounds.check_bounds`): every load and store inside its buffer for
  every batch size, so no program the verifier accepts can touch memory outside its buffers.

Kept apart from both so that neither imports the other's user (the bounds prover is built on
the loop IR's node types).
"""

from __future__ import annotations

from .bounds import check_bounds
from .loopir import Program, VerifyError, check_structure

__all__ = ["verify", "VerifyError"]


def verify(prog: Program) -> None:
    """Structure first (the bounds prover relies on it), then bounds."""
    check_structure(prog)
    check_bounds(prog)
