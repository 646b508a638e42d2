#!/usr/bin/env python3
"""Save, or compare against a saved copy, the loop IR and LLVM IR of every example.

    python scripts/ir_identity.py save /tmp/ir-before      # before a restructuring
    python scripts/ir_identity.py compare /tmp/ir-before   # after it: exit 1 on any difference

Each model of ``examples/*.conv`` at its smallest valid sizes, on the vector schedules of both
widths (8 and 16 lanes, whatever the host), the scalar one and the split (intra-image threading)
one: the printed loop IR and the unoptimised LLVM IR that codegen builds (the optimised IR
depends on the host CPU, the generated one does not).  A restructuring that must not change
behaviour leaves every file byte-identical.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import convdsl  # noqa: E402
from convdsl.backend.schedule import Schedule  # noqa: E402


def _stages():
    """(lower, codegen, format_program): codegen after the loop-IR passes (unroll, valnum), which
    it no longer does itself; where the back end predates them, codegen alone."""
    from convdsl.backend.codegen import codegen as translate
    from convdsl.backend.loopir import format_program
    from convdsl.backend.lower import lower

    try:
        from convdsl.backend.driver import passes
    except ImportError:
        return lower, translate, format_program
    return lower, (lambda prog: translate(passes(prog))), format_program


SCHEDULES = {
    "vec8": Schedule.for_width(8),
    "vec16": Schedule.for_width(16),
    "scalar": Schedule.for_width(1),
    "split8": replace(Schedule.for_width(8), split_macs=1),
    "split16": replace(Schedule.for_width(16), split_macs=1),
}


def snapshot() -> dict[str, str]:
    lower, codegen, format_program = _stages()
    out: dict[str, str] = {}
    for f in sorted((ROOT / "examples").glob("*.conv")):
        program = convdsl.load(str(f))
        for m in program.models:
            cm = m.bind(m.sizes())
            for name, s in SCHEDULES.items():
                prog = lower(cm, s).program
                out[f"{f.stem}.{m.name}.{name}.loops"] = format_program(prog)
                out[f"{f.stem}.{m.name}.{name}.ll"] = str(codegen(prog))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("save", "compare"))
    ap.add_argument("dir", type=Path)
    a = ap.parse_args()
    snap = snapshot()
    if a.action == "save":
        a.dir.mkdir(parents=True, exist_ok=True)
        for k, v in snap.items():
            (a.dir / k).write_text(v)
        print(f"saved {len(snap)} files to {a.dir}")
        return 0
    saved = {p.name: p.read_text() for p in a.dir.iterdir()}
    missing, extra = sorted(saved.keys() - snap.keys()), sorted(snap.keys() - saved.keys())
    differ = [k for k in sorted(saved.keys() & snap.keys()) if saved[k] != snap[k]]
    for k in differ[:3]:
        sys.stdout.writelines(list(difflib.unified_diff(saved[k].splitlines(True), snap[k].splitlines(True),
                                                        f"saved/{k}", f"now/{k}", n=2))[:40])
    print(f"{len(saved.keys() & snap.keys()) - len(differ)} identical, {len(differ)} different, "
          f"{len(missing)} missing, {len(extra)} new")
    for label, names in (("different", differ), ("missing", missing), ("new", extra)):
        for k in names:
            print(f"  {label}: {k}")
    return 1 if differ or missing or extra else 0


if __name__ == "__main__":
    sys.exit(main())
