"""The error-code registry (core.diagnostics.CODES): every code the package emits is registered
and every registered code is emitted somewhere, read from the source's calls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convdsl.core.diagnostics import CODES, Diagnostic, Span

PKG = Path(__file__).resolve().parent.parent / "convdsl"
# self.err("code", ...), self.warn(...), error("code", ...), warning(...), OpError(..., code="code")
CALL = re.compile(r"""(?:\b(?:err|warn|error|warning)\(\s*|code=)["']([a-z][a-z-]*)["']""")


def _codes_in_source() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        for m in CALL.finditer(path.read_text()):
            found.setdefault(m.group(1), []).append(path.relative_to(PKG.parent).as_posix())
    return found


def test_every_emitted_code_is_registered():
    unknown = {c: where for c, where in _codes_in_source().items() if c not in CODES}
    assert not unknown, f"codes missing from core.diagnostics.CODES: {unknown}"


def test_every_registered_code_is_emitted():
    assert set(CODES) <= set(_codes_in_source()), set(CODES) - set(_codes_in_source())


def test_an_unregistered_code_is_refused():
    with pytest.raises(ValueError, match="not in core.diagnostics.CODES"):
        Diagnostic("error", "no-such-code", "m", Span("f", 1, 1, 1, 2))
