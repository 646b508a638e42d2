"""The runtime's user errors, in a module of their own so that both the boundary checks and the
size caps (:mod:`.limits`, which the boundary uses) can raise them without importing each other."""

from __future__ import annotations


class BoundaryError(ValueError):
    """A weights file or input array that does not fit the model."""
