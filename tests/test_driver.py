"""The back-end driver: one pipeline, timed by stage, stages dumped on request, through the cache."""

from __future__ import annotations

from convdsl.backend.driver import build, format_timings, passes
from convdsl.backend.loopir import format_program
from convdsl.backend.schedule import Schedule
from netbuild import lenet

S8 = Schedule.for_width(8)


def test_every_stage_is_timed_and_the_cache_skips_llvm(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path / "cache"))
    cm = lenet().bind({})
    cold = build(cm, S8, source="a program")
    assert not cold.cache_hit
    assert [s for s, _ in cold.timings] == ["plan", "lower + verify", "unroll", "valnum", "verify", "codegen",
                                            "llvm (optimise, object code, load)", "cache store"]
    assert all(t >= 0 for _, t in cold.timings)
    warm = build(cm, S8, source="a program")
    assert warm.cache_hit and [s for s, _ in warm.timings] == ["plan", "lower + verify", "cache load"]
    assert warm.jit.llvm_ir == cold.jit.llvm_ir
    text = format_timings(cold.timings)
    assert "codegen" in text and text.rstrip().endswith("total")


def test_dump_writes_the_requested_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVDSL_DUMP", "plan,loops,llvm,nonsense")
    monkeypatch.setenv("CONVDSL_DUMP_DIR", str(tmp_path))
    b = build(lenet().bind({}), S8)
    files = {p.suffix: p for p in tmp_path.iterdir()}
    assert set(files) == {".plan", ".loops", ".llvm"}
    assert files[".loops"].read_text() == format_program(b.lowered.program)
    assert files[".plan"].read_text().startswith("plan LeNet")
    assert "define" in files[".llvm"].read_text()
    assert "no stage nonsense" in capsys.readouterr().err


def test_dump_of_the_loop_ir_after_the_passes(tmp_path, monkeypatch):
    """``loops-final``: what codegen translates (unrolled, value-numbered), apart from the readable
    ``loops``."""
    monkeypatch.setenv("CONVDSL_DUMP", "loops,loops-final")
    monkeypatch.setenv("CONVDSL_DUMP_DIR", str(tmp_path))
    b = build(lenet().bind({}), S8)
    (final,) = tmp_path.glob("*.loops-final")
    assert final.read_text() == format_program(passes(b.lowered.program))
    assert "unrolled" in format_program(b.lowered.program) and "unrolled" not in final.read_text()
    assert "block (" in final.read_text() and ":=" in final.read_text()
