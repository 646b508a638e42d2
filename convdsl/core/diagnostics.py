"""Source spans and compiler diagnostics.

Every AST node and every diagnostic carries a :class:`Span`.  Diagnostics are
collected (never raised one at a time from deep inside a pass) and rendered in
one place, the way modern compilers print them::

    lenet.conv:6:46: error: conv2 produces [N, 16, 10, 10], but the line declares [N, 16, 12, 12]
        conv2: conv(16, kernel=5)             -> [N, 16, 12, 12]
                                                 ^^^^^^^^^^^^^^^
      note: height: (14 + 0 + 0 - 5) // 1 + 1 = 10

Lines and columns are 1-based; ``end_column`` is exclusive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping


@dataclass(frozen=True, slots=True)
class Span:
    """A region of one source file. ``end_column`` is one past the last character."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def to(self, other: "Span") -> "Span":
        """The span from the start of ``self`` to the end of ``other``."""
        return Span(self.file, self.line, self.column, other.end_line, other.end_column)


Severity = Literal["error", "warning"]

CODES: Mapping[str, str] = {
    # the code of every diagnostic convdsl emits (``Diagnostic.code``, in ``check --json``), with
    # what it means: one registry, so that codes are not spelled differently in two places and a
    # tool reading the JSON can rely on the list
    "syntax": "the text is not a program: an unexpected character or token, a bracket left open",
    "not-text": "the file is not UTF-8 text",
    "bad-expression": "an expression a shape or an argument cannot hold (a division by zero, ...)",
    "bad-shape": "a shape that is not [N, C, H, W] or [N, F] where one is needed",
    "bad-argument": "an op's or block's argument is missing, repeated, of the wrong kind or out of range",
    "unknown-argument": "an op has no argument of that name",
    "unknown-name": "a name that is neither a shape symbol nor a block parameter",
    "unknown-op": "a layer whose op is neither a built-in op nor a block",
    "duplicate-name": "two models, blocks or layers with one name",
    "empty": "a model, block or repeat body with no layer",
    "no-model": "the file defines no model",
    "rank": "an op given a tensor of the wrong rank (dense on [N, C, H, W], ...)",
    "size": "a layer whose output would be empty (a size below 1)",
    "shape-mismatch": "a declared shape that is not the computed one",
    "signature": "a block's declared signature that its body does not produce",
    "where": "a where clause that cannot hold, or a layer it does not keep non-empty",
    "recursion": "a block that uses itself, directly or through others",
    "drop": "(warning) input rows or columns that no window reads",
    "limit": "a file past one of the front end's work caps (layers after expansion, block depth, tokens): "
             "the message names the environment variable that raises it",
    "internal": "a bug in convdsl: please report it with the file",
}


@dataclass(frozen=True, slots=True)
class Note:
    message: str
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    span: Span
    notes: tuple[Note, ...] = ()

    def __post_init__(self) -> None:
        if self.code not in CODES:  # a slip in convdsl, caught by its tests
            raise ValueError(f"diagnostic code {self.code!r} is not in core.diagnostics.CODES")

    def to_json(self) -> dict:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "code": self.code,
            "message": self.message,
            "notes": [
                {
                    "file": n.span.file if n.span else self.span.file,
                    "line": (n.span or self.span).line,
                    "column": (n.span or self.span).column,
                    "message": n.message,
                }
                for n in self.notes
            ],
        }


def error(code: str, message: str, span: Span, *notes: Note) -> Diagnostic:
    return Diagnostic("error", code, message, span, tuple(notes))


def warning(code: str, message: str, span: Span, *notes: Note) -> Diagnostic:
    return Diagnostic("warning", code, message, span, tuple(notes))


class CompileError(Exception):
    """Raised by the public API when a program has errors; holds every diagnostic."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(render_all(self.diagnostics, self.sources))


@dataclass
class SourceMap:
    """File name -> text, so the renderer can quote lines."""

    texts: dict[str, str] = field(default_factory=dict)

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            return None
        # The parser's line breaks (LF, CRLF, a lone CR) and no others: str.splitlines also breaks
        # at form feeds, U+2028 and more, which would quote the wrong line after one.
        lines = _LINE_BREAK.split(text)
        if lines[-1] == "":  # (a final line break ends the last line; it does not start one)
            lines.pop()
        if 1 <= line <= len(lines):
            return lines[line - 1].expandtabs(1)
        return None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _shown(ch: str) -> str:
    """A character as an excerpt shows it: itself if printable, else an escape (``\x1b``,
    ``\u202e``), so that a file cannot send escape codes or bidi overrides to the terminal."""
    if ch.isprintable() or ch == " ":
        return ch
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"


def _caret_block(src: SourceMap, span: Span) -> list[str]:
    text = src.line(span.file, span.line)
    if text is None:
        return []
    start = max(span.column, 1)
    if span.end_line == span.line:
        end = max(span.end_column, start + 1)
    else:  # multi-line span: underline to the end of the first line
        end = max(len(text) + 1, start + 1)
    end = min(end, len(text) + 2)
    # Columns count characters of the file; an escaped one is several on screen, so the carets
    # move with the text: ``at[i]`` is where the file's column i + 1 starts on screen.
    shown = [_shown(ch) for ch in text]
    at = [0]
    for piece in shown:
        at.append(at[-1] + len(piece))
    at.append(at[-1] + 1)  # (one past the end: a span may point just after the line)
    left, right = at[min(start, len(at)) - 1], at[min(end, len(at)) - 1]
    return ["    " + "".join(shown), "    " + " " * left + "^" * max(right - left, 1)]


def render(diag: Diagnostic, sources: Mapping[str, str] | SourceMap) -> str:
    src = sources if isinstance(sources, SourceMap) else SourceMap(dict(sources))
    s = diag.span
    out = [f"{s.file}:{s.line}:{s.column}: {diag.severity}: {diag.message}"]
    out += _caret_block(src, s)
    for note in diag.notes:
        if note.span is not None and note.span != s:
            n = note.span
            out.append(f"  {n.file}:{n.line}:{n.column}: note: {note.message}")
            out += ["  " + line for line in _caret_block(src, n)]
        else:
            out.append(f"  note: {note.message}")
    return "\n".join(out)


def render_all(diags: Iterable[Diagnostic], sources: Mapping[str, str] | SourceMap) -> str:
    return "\n".join(render(d, sources) for d in diags)
