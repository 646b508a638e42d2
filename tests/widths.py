"""The vector width of the tests' schedules.

By default the host's (16 lanes on AVX-512, 8 on AVX2); ``pytest --vector-width 16`` (or 8, 4)
forces another, so that code for the other kind of host is also run and checked here: LLVM
splits vectors wider than the host's.  The hypothesis differential tests draw their width from
``BOTH`` whatever the host, so every run exercises 8- and 16-lane code.
"""

from __future__ import annotations

from convdsl.backend.schedule import Schedule

FORCED: int | None = None  # set by conftest.py from --vector-width
BOTH = (8, 16)


def vec() -> Schedule:
    return Schedule.for_width(FORCED) if FORCED else Schedule.for_host()
