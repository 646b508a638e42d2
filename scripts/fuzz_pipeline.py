"""Coverage-guided fuzzing of parse -> check -> plan -> lower -> verify, with atheris (libFuzzer).

    pip install atheris
    python scripts/fuzz_pipeline.py --minutes 30            # corpus in fuzz/corpus, findings in fuzz/findings
    python scripts/fuzz_pipeline.py --minutes 5 --jobs 2    # two fuzzing processes sharing the corpus
    python scripts/fuzz_pipeline.py --replay fuzz/findings/crash-...   # one input through the oracle

Seeds are every program under examples/ (errors included), so mutations start from real syntax.
The oracle is the project's promise, not "no exception anywhere":

* ``check_source`` never raises, returns a diagnostic for every failure, and its text and JSON
  reports render;
* for every model that checks, at its smallest valid sizes and within the caps of
  docs/limits.md, planning, lowering and the loop-IR verifier (which proves every load and store
  in bounds) accept it on the 8- and 16-lane schedules and the scalar one; a ``LimitError`` (a
  documented cap) is an answer, anything else a finding;
* no input takes more than ``-timeout`` seconds or ``-rss_limit_mb`` megabytes (libFuzzer
  reports those as findings too).

No LLVM is run: codegen is a one-to-one translation of the verified loop IR, and fuzzing LLVM
itself is not this project's job.  At the end the script prints the inputs executed, the
coverage (libFuzzer's ``cov:`` edges and ``ft:`` features) and the findings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _oracle(text: str) -> None:
    from convdsl.api import check_limits
    from convdsl.backend.lower import lower
    from convdsl.backend.schedule import Schedule
    from convdsl.frontend import check_source
    from convdsl.frontend.report import json_report, text_report
    from convdsl.runtime.limits import LimitError

    checked = check_source(text, "fuzz.conv")
    result = checked.result
    checked.render()
    text_report(result)
    json.dumps(json_report(result))
    if not result.ok:
        assert result.errors, "a failed check must say why"
        return
    for model in result.models:
        try:
            env = check_limits(model)
        except LimitError:
            continue
        cm = model.bind(env)
        if sum(ly_out[0] * _prod(ly_out[1:]) for _, _, ly_out, _ in cm.layers) > 4_000_000:
            continue  # big enough to be slow, not more interesting
        for s in (Schedule.for_width(8), Schedule.for_width(16), Schedule.for_width(1)):
            lower(cm, s)  # (verifies the loop program and its bounds proof)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _fuzz_one(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    _oracle(text)


def _child(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["convdsl", "lark"]):
        import convdsl.api  # noqa: F401
        import convdsl.backend.lower  # noqa: F401
        import convdsl.frontend  # noqa: F401
        import convdsl.frontend.report  # noqa: F401
    atheris.Setup([sys.argv[0], *argv], _fuzz_one)
    atheris.Fuzz()


def _seed(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for p in sorted((ROOT / "examples").rglob("*.conv")):
        (corpus / f"seed-{p.parent.name}-{p.name}").write_bytes(p.read_bytes())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=ROOT / "fuzz")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--rss-mb", type=int, default=2048, help="memory one process may take")
    ap.add_argument("--replay", type=Path, help="run one input through the oracle and exit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args()
    if a.child:
        _child(rest)
        return 0
    if a.replay:
        _fuzz_one(a.replay.read_bytes())
        print("the oracle holds for", a.replay)
        return 0
    corpus, findings = a.dir / "corpus", a.dir / "findings"
    _seed(corpus)
    findings.mkdir(parents=True, exist_ok=True)
    flags = [f"-max_total_time={int(a.minutes * 60)}", f"-timeout={a.timeout}", f"-rss_limit_mb={a.rss_mb}",
             f"-artifact_prefix={findings}/", "-max_len=4096", "-print_final_stats=1"]
    if a.jobs > 1:
        flags += [f"-jobs={a.jobs}", f"-workers={a.jobs}", "-fork=0"]
    log = a.dir / "fuzz.log"
    with open(log, "w") as out:
        rc = subprocess.run([sys.executable, __file__, "--child", *flags, str(corpus)],
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    text = log.read_text(errors="replace")
    execs = sum(int(m) for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", text))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    found = sorted(p.name for p in findings.iterdir())
    print(f"inputs executed: {execs:,}")
    if cov:
        print(f"coverage at the end: {cov[-1][0]} edges, {cov[-1][1]} features (libFuzzer cov/ft)")
    print(f"corpus: {len(list(corpus.iterdir()))} inputs; findings: {len(found)}")
    for f in found:
        print("  ", findings / f)
    print(f"log: {log} (libFuzzer exit status {rc})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
