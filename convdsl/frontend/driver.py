"""The front half of the pipeline: source text -> parse -> check.

``check_source`` and ``check_file`` never raise for a bad program: every
problem is a diagnostic in the returned :class:`~convdsl.frontend.check.CheckResult`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.diagnostics import Diagnostic, Span, error, render_all
from .check import CheckResult, check
from .parse import parse


@dataclass(frozen=True)
class Checked:
    """A checked source file: the result plus the text, for rendering diagnostics."""

    file: str
    text: str
    result: CheckResult

    @property
    def ok(self) -> bool:
        return self.result.ok

    def render(self, diagnostics: tuple[Diagnostic, ...] | None = None) -> str:
        diags = self.result.diagnostics if diagnostics is None else diagnostics
        return render_all(diags, {self.file: self.text})


def check_source(text: str, file: str = "<input>") -> Checked:
    program, diags = parse(text, file)
    if program is None:
        if not diags:  # the parser promises a diagnostic; keep the promise here too
            diags = [error("syntax", "the file could not be parsed", Span(file, 1, 1, 1, 2))]
        return Checked(file, text, CheckResult((), tuple(diags)))
    result = check(program)
    if diags:
        result = CheckResult(result.models, tuple(diags) + result.diagnostics)
    return Checked(file, text, result)


def read_source(path: str | os.PathLike) -> str:
    """Read a .conv file; undecodable bytes become U+FFFD so the parser can point at them.

    A leading byte-order mark (Windows editors write one) is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def check_file(path: str | os.PathLike) -> Checked:
    text = read_source(path)
    if "\x00" in text:  # one clear error, not one per unreadable character
        span = Span(str(path), 1, 1, 1, 2)
        diag = error("not-text", f"{path} is not a text file (it holds NUL bytes); .conv programs are UTF-8 text",
                     span)
        return Checked(str(path), "", CheckResult((), (diag,)))
    return check_source(text, str(path))
