"""Every input the coverage-guided fuzzer (scripts/fuzz_pipeline.py) reported, replayed through
the fuzzer's own oracle, so a finding stays fixed.  Drop a new finding into tests/fuzz_findings/.

timeout-vgg11-small-binary-comment.conv: examples/vgg11_small.conv with raw bytes (0xff, 0x01)
in a comment; reported as a 10 s timeout by the 30-minute run of 2026-12-03 on a loaded machine
(the fuzzer at nice 19 beside five busy processes on 2 cores); it checks, plans, lowers and
verifies in about 1 s of CPU (the fuzzer's replay), so it is kept as an input the whole pipeline must
accept, not as a timing (the suite has no timed assertions)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = sorted((Path(__file__).parent / "fuzz_findings").iterdir())


def _oracle():
    spec = importlib.util.spec_from_file_location("fuzz_pipeline", ROOT / "scripts" / "fuzz_pipeline.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._oracle


@pytest.mark.parametrize("path", FINDINGS, ids=[p.name for p in FINDINGS])
def test_finding_holds_the_oracle(path):
    data = path.read_bytes()
    try:  # as the fuzzer hands its bytes over
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    _oracle()(text)
