"""Caps on the work one source file may ask of the front end, each named and each raisable.

A 45-byte file can say ``repeat 1000000000 { relu }``, a chain of blocks can double its layers
forty times, and a long file costs parse time per token: without caps, checking such a file would
take all the machine's memory or never end.  Each cap is checked *before* the work it bounds (the
layers a model expands to are counted, not built), and a file past one gets a diagnostic (code
``limit``) at the repeat, block use or token that passes it, naming the cap and the environment
variable that raises it.  ``docs/limits.md`` lists them.

The pattern is ``runtime.limits``' (the front end may not import the runtime): read from the
environment on every check, so a test or a long-lived process can change them, and no state is
kept at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DOC = "docs/limits.md"


@dataclass(frozen=True, slots=True)
class Cap:
    what: str  # as messages say it: "layers"
    env: str  # the variable that overrides it
    default: int

    def read(self) -> tuple[int, str | None]:
        """The cap's value, and the complaint about an unusable setting (then the default is used)."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default, None
        try:
            v = int(raw)
        except ValueError:
            v = 0
        if v < 1:
            return self.default, (f"{self.env}={raw!r} is not a positive integer: the {self.what} limit stays "
                                  f"{self.default:,} (see {DOC})")
        return v, None

    def value(self) -> int:
        return self.read()[0]

    def exceeded(self, found: str) -> str:
        """The message for ``found`` past this cap."""
        return f"{found}, past the {self.what} limit of {self.value():,} (set {self.env} to raise it; see {DOC})"


# A file expands to at most this many layers (repeats and block uses multiplied out, over every
# model and every block signature checked).  Checking costs up to ~0.4 ms a layer.
MAX_LAYERS = Cap("layers", "CONVDSL_MAX_LAYERS", 2_000)
# Block uses nest at most this deep (the checker's walk recurses once per level).
MAX_BLOCK_DEPTH = Cap("block-depth", "CONVDSL_MAX_BLOCK_DEPTH", 100)
# A file holds at most this many tokens (names, numbers and symbols): parsing costs ~20 us a token.
# With the layers cap, a file at both caps checks in about 2 s.
MAX_TOKENS = Cap("tokens", "CONVDSL_MAX_TOKENS", 20_000)
CAPS = (MAX_LAYERS, MAX_BLOCK_DEPTH, MAX_TOKENS)
