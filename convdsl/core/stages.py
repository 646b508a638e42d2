"""The outputs of the pipeline by name, in pipeline order: what :func:`convdsl.emit` produces and
``convdsl compile --emit`` accepts.

The list lives here, apart from the API that produces the outputs, so that the command line can
offer it as ``--emit``'s choices without loading numpy or LLVM (``convdsl check`` builds the same
parser).  ``TEXT`` stages print as text; ``obj`` is machine code.
"""

from __future__ import annotations

TEXT = ("ast", "model", "plan", "loops", "loops-final", "llvm", "asm")
STAGES = TEXT + ("obj",)
LIB = "lib"  # not a stage: ``compile --emit lib`` writes a C library (:func:`convdsl.api.compile_library`)
BACKEND = ("plan", "loops", "loops-final", "llvm", "asm", "obj", LIB)  # what ``--cpu`` changes (the schedule follows the CPU)
