"""README's set-up commands are what CI runs and what a user types."""

import re

from conftest import ROOT


def _blocks():
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_starts_with_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first, second = _blocks()[:2]
    assert text.index(first) < 200, "the set-up commands come first"
    assert first.endswith("convdsl run examples/lenet.conv") and "pip install ." in first
    assert "pip install '.[test]'" in second


def test_ci_runs_the_readme_test_command():
    second = _blocks()[1]
    test_cmd = second.split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_cmd
    assert any("python3 -m venv" in line for line in ci) and any("'.[test]'" in line or '".[test]"' in line
                                                                   for line in ci)
