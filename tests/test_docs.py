"""The language reference's complete programs still check (its examples stay true)."""

import re

import pytest
from conftest import ROOT

from convdsl.frontend import check_source

BLOCKS = re.findall(r"```conv\n(.*?)```", (ROOT / "docs" / "language.md").read_text(), re.S)
PROGRAMS = [b for b in BLOCKS if re.search(r"^model ", b, re.M)]


def test_the_reference_has_programs():
    assert len(PROGRAMS) >= 8


@pytest.mark.parametrize("i", range(len(PROGRAMS)))
def test_reference_program_checks(i):
    checked = check_source(PROGRAMS[i], f"docs/language.md#program{i}")
    assert checked.ok, checked.render()
