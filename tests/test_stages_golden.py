"""Golden outputs of the ``plan`` and ``loops`` stages for every example.

Each example model at its smallest valid sizes, planned for 8 and 16 lanes
(plan) and lowered for 8 lanes (loops): a change to a lowering decision or to
the generated loops shows as a diff here.  ``pytest --update-golden``
rewrites them after a deliberate change (then read the diff).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import convdsl
from convdsl.backend.loopir import format_program
from convdsl.backend.lower import emit
from convdsl.backend.plan import format_plan, plan
from convdsl.backend.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "stages"
CASES = [(f.stem, m.name) for f in sorted((ROOT / "examples").glob("*.conv"))
         for m in convdsl.load(str(f)).models]


def _compare(path: Path, text: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run pytest --update-golden"
    assert text == path.read_text(), f"{path.name} changed (pytest --update-golden rewrites it; read the diff)"


@pytest.mark.parametrize("example, model", CASES)
def test_plan_and_loops_golden(example, model, update_golden):
    m = convdsl.load(str(ROOT / "examples" / f"{example}.conv")).model(model)
    cm = m.bind(m.sizes())
    for width in (8, 16):
        p = plan(cm, Schedule.for_width(width))
        _compare(GOLDEN / f"{example}.{model}.w{width}.plan", format_plan(p), update_golden)
        if width == 8:
            _compare(GOLDEN / f"{example}.{model}.w8.loops", format_program(emit(p).program), update_golden)
