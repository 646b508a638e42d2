"""The package type-checks: mypy over all of ``convdsl`` with the project's configuration
(``[tool.mypy]`` in pyproject.toml), 0 errors.

Exhaustiveness in the compiler rests on ``assert_never``, which only a type checker enforces; run
here, so the README's test command and CI catch a slip (a missed IR node, a ``-> None`` function
that returns a value) the day it is made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_errors(tmp_path):
    # a private cache: a stale one in the source tree must not hide an error, nor this run write there
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                        "--config-file", str(ROOT / "pyproject.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mypy found errors:\n{r.stdout}{r.stderr}"
    assert "Success: no issues found" in r.stdout, r.stdout


def test_mypy_sees_a_slip(tmp_path):
    """The check can fail: the same configuration rejects a typical slip in a module like ours."""
    bad = tmp_path / "slip.py"
    bad.write_text("from typing import assert_never, Literal\n"
                   "def f(op: Literal['add', 'mul']) -> int:\n"
                   "    if op == 'add':\n"
                   "        return 1\n"
                   "    assert_never(op)\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                        "--config-file", str(ROOT / "pyproject.toml"), str(bad)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "assert_never" in r.stdout, r.stdout
