"""Each examples/errors/*.conv says, in comments next to the cause, what `convdsl check` reports.

The syntax is described in examples/errors/README.md.  In short::

    conv(8, kernal=5)  # error@13: conv has no argument 'kernal'  # note: did you mean 'kernel'?

* ``# error@COL: MESSAGE`` / ``# warning@COL: MESSAGE``: a diagnostic at
  column COL of the line the comment is on;
* ``# error@LINE:COL: MESSAGE``: the same at an explicit line, for a place
  that cannot hold a comment (an end of file, say);
* ``# note: MESSAGE``: a note of the diagnostic written just before it, at
  that diagnostic's own place; ``# note@COL: ...`` and ``# note@LINE:COL: ...``
  give a note its own place.

Messages are compared exactly (after stripping surrounding spaces).  The
diagnostics reported must be exactly those written: none missing, none extra,
each with exactly the notes written, in the order written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import pytest
from conftest import EXAMPLES, ROOT
from test_check import run_cli

ERROR_FILES = sorted(p.name for p in (EXAMPLES / "errors").glob("*.conv"))

# An expectation starts at a `#` followed by one of these words; it runs to the next one or the end of the line.
_START = re.compile(r"#\s*(?=(?:error|warning|note)\b)")
_ITEM = re.compile(r"(?P<kind>error|warning|note)(?:@(?:(?P<line>\d+):)?(?P<col>\d+))?: (?P<msg>.*)", re.DOTALL)


@dataclass(frozen=True)
class Expected:
    severity: str  # "error" or "warning"
    line: int
    column: int
    message: str
    notes: tuple[tuple[int, int, str], ...] = ()  # (line, column, message), in order

    def as_comment(self) -> str:
        """How the expectation is written (on its line), for failure messages."""
        parts = [f"line {self.line}: # {self.severity}@{self.column}: {self.message}"]
        for line, col, msg in self.notes:
            if (line, col) == (self.line, self.column):
                parts.append(f"# note: {msg}")
            elif line == self.line:
                parts.append(f"# note@{col}: {msg}")
            else:
                parts.append(f"# note@{line}:{col}: {msg}")
        return "  ".join(parts)


class MalformedExpectation(ValueError):
    pass


def parse_expectations(text: str, name: str = "<text>") -> list[Expected]:
    """The diagnostics that the comments of ``text`` say are reported, in the order written."""
    found: list[Expected] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if "#" not in line:  # the language has no strings, so a `#` always starts a comment
            continue
        comment = line[line.index("#"):]
        for chunk in _START.split(comment)[1:]:
            m = _ITEM.fullmatch(chunk.rstrip())
            where = f"{name}:{lineno}: {'#' + chunk.rstrip()!r}"
            if m is None or not m["msg"].strip():
                raise MalformedExpectation(f"{where}: not of the form '# error@COL: message', "
                                           f"'# warning@LINE:COL: message' or '# note: message'")
            line_no = int(m["line"]) if m["line"] else lineno
            message = m["msg"].strip()
            if m["kind"] == "note":
                if not found:
                    raise MalformedExpectation(f"{where}: a note must follow the error or warning it belongs to")
                owner = found[-1]
                at = (line_no, int(m["col"])) if m["col"] else (owner.line, owner.column)
                found[-1] = Expected(owner.severity, owner.line, owner.column, owner.message,
                                     owner.notes + ((*at, message),))
            elif m["col"] is None:
                raise MalformedExpectation(f"{where}: an {m['kind']} needs a column: '# {m['kind']}@COL: ...'")
            else:
                found.append(Expected(m["kind"], line_no, int(m["col"]), message))
    return found


def reported(data: dict, path: str) -> list[Expected]:
    """The diagnostics of one `convdsl check --json` output, in the order reported."""
    out = []
    for severity, key in (("error", "errors"), ("warning", "warnings")):
        for d in data[key]:
            assert d["file"] == path and all(n["file"] == path for n in d["notes"]), d
            notes = tuple((n["line"], n["column"], n["message"]) for n in d["notes"])
            out.append(Expected(severity, d["line"], d["column"], d["message"], notes))
    return out


def difference(expected: list[Expected], actual: list[Expected]) -> str:
    missing = Counter(expected) - Counter(actual)
    extra = Counter(actual) - Counter(expected)
    lines = ["the diagnostics reported differ from the comments"]
    lines += ["  written but not reported:"] + [f"    {e.as_comment()}" for e in missing.elements()]
    lines += ["  reported but not written:"] + [f"    {e.as_comment()}" for e in extra.elements()]
    return "\n".join(lines)


@pytest.mark.parametrize("name", ERROR_FILES)
def test_error_example_reports_what_its_comments_say(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = f"examples/errors/{name}"
    expected = parse_expectations((ROOT / path).read_text(), path)
    assert expected, f"{path} has no '# error@COL: ...' or '# warning@COL: ...' comment (see examples/errors/README.md)"

    code, out, err = run_cli(capsys, "check", "--json", path)
    data = json.loads(out)
    actual = reported(data, path)
    if Counter(actual) != Counter(expected):
        pytest.fail(difference(expected, actual), pytrace=False)

    has_errors = any(e.severity == "error" for e in expected)
    assert (code, data["ok"]) == ((1, False) if has_errors else (0, True)), "warnings alone keep exit status 0"

    # The text form names the same places, quotes each line and underlines it.
    code, out, err = run_cli(capsys, "check", path)
    assert code == (1 if has_errors else 0)
    text = out + err
    assert "Traceback" not in text
    for e in expected:
        head = f"{path}:{e.line}:{e.column}: {e.severity}: {e.message}\n"
        assert head in text
        quoted, caret = text.split(head, 1)[1].split("\n")[:2]
        assert quoted.strip() == (ROOT / path).read_text().split("\n")[e.line - 1].strip()
        assert re.fullmatch(rf" {{{4 + e.column - 1}}}\^+", caret), caret


def test_several_errors_are_reported_in_source_order(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = "examples/errors/several_errors.conv"
    expected = parse_expectations((ROOT / path).read_text(), path)
    _, out, _ = run_cli(capsys, "check", "--json", path)
    places = [(e["line"], e["column"]) for e in json.loads(out)["errors"]]
    assert len(expected) >= 3 and places == [(e.line, e.column) for e in expected]


# ------------------------------------------------------ the comment syntax itself
def test_several_diagnostics_and_notes_on_one_line():
    text = ("model M(x: [N]) -> [N] {\n"
            "    conv(8)  # warning@5: w one  # note: n1  # error@9: e two # note@3:1: n2  # note@7: n3\n"
            "}\n")
    assert parse_expectations(text) == [
        Expected("warning", 2, 5, "w one", ((2, 5, "n1"),)),
        Expected("error", 2, 9, "e two", ((3, 1, "n2"), (2, 7, "n3"))),
    ]


def test_explicit_line_for_a_place_that_cannot_hold_a_comment():
    text = "# error@4:1: expected '}' at the end of the file\nmodel M(x: [N]) -> [N] {\n    relu\n"
    assert parse_expectations(text) == [Expected("error", 4, 1, "expected '}' at the end of the file")]


def test_prose_comments_are_not_expectations():
    assert parse_expectations("# Several errors in one file\n# A warning, not an error: x\nrelu  # fine\n") == []


@pytest.mark.parametrize("comment", [
    "# error: no column",
    "# warning@x: bad column",
    "# error@5:",
    "# error@5 missing colon",
    "# note: a note with no diagnostic before it",
])
def test_malformed_expectations_are_refused(comment):
    with pytest.raises(MalformedExpectation):
        parse_expectations(f"relu  {comment}\n")


def test_a_wrong_comment_is_a_difference():
    right = Expected("error", 3, 13, "conv has no argument 'kernal'", ((3, 13, "did you mean 'kernel'?"),))
    for wrong in (Expected("error", 3, 12, right.message, right.notes),
                  Expected("warning", 3, 13, right.message, right.notes),
                  Expected("error", 3, 13, "conv has no argument", right.notes),
                  Expected("error", 3, 13, right.message)):
        assert Counter([wrong]) != Counter([right])
        report = difference([wrong], [right])
        assert wrong.as_comment() in report and right.as_comment() in report
