"""The front half of the pipeline: source text -> parse -> check.

``check_source`` and ``check_file`` never raise for a bad program: every
problem is a diagnostic in the returned :class:`~convdsl.frontend.check.CheckResult`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.diagnostics import Diagnostic, Span, error, render_all
from . import ast
from .check import CheckResult, check
from .parse import parse
from .report import json_report, text_report


@dataclass(frozen=True)
class Checked:
    """A checked source file: the result plus the text, for rendering diagnostics.

    ``tree`` is the syntax tree the checker read (None where the file did not parse), kept so that
    ``convdsl compile --emit ast`` shows the parse that was checked rather than a second one.
    """

    file: str
    text: str
    result: CheckResult
    tree: ast.Program | None = None

    @property
    def ok(self) -> bool:
        return self.result.ok

    def render(self, diagnostics: tuple[Diagnostic, ...] | None = None) -> str:
        diags = self.result.diagnostics if diagnostics is None else diagnostics
        return render_all(diags, {self.file: self.text})

    def summary(self) -> str:
        """The per-model tables ``convdsl check`` prints (layers, shapes, parameters, MACs, valid sizes)."""
        return text_report(self.result)

    def to_json(self) -> dict:
        """The object ``convdsl check --json`` prints (its form is fixed by the CLI contract)."""
        return json_report(self.result)


def check_source(text: str, file: str = "<input>") -> Checked:
    program, diags = parse(text, file)
    if program is None:
        if not diags:  # the parser promises a diagnostic; keep the promise here too
            diags = [error("syntax", "the file could not be parsed", Span(file, 1, 1, 1, 2))]
        return Checked(file, text, CheckResult((), tuple(diags)))
    result = check(program)
    if diags:
        result = CheckResult(result.models, tuple(diags) + result.diagnostics)
    return Checked(file, text, result, program)


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
