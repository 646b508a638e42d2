"""The front end's work caps (``convdsl/frontend/limits.py``, ``docs/limits.md``).

Each case of issue 11 item 3 that made ``check`` build billions of layers, hang or overflow
Python's stack is here as a file, checked to end in one ``limit`` diagnostic at the statement
that passes the cap, naming the variable that raises it.  Small caps are set through the
environment so that the tests stay fast; memory is measured with tracemalloc (no timing)."""

import tracemalloc

import pytest
from conftest import ROOT

import convdsl
from convdsl.frontend import check_source
from convdsl.frontend import check as check_module
from convdsl.frontend.limits import CAPS, MAX_BLOCK_DEPTH, MAX_LAYERS, MAX_TOKENS
from convdsl.frontend.parse import MAX_EXPR_DEPTH, get_parser, parse
from convdsl.tools.cli import main

HEAD = "model m(x: [N, 3, H, W]) -> [N, 3, H, W] {\n"


def _model(*lines: str) -> str:
    return HEAD + "".join(f"  {ln}\n" for ln in lines) + "}\n"


def _doubling_blocks(levels: int, use: str | None = None) -> str:
    blocks = ["block b0 { relu }"] + [f"block b{i} {{\n  b{i - 1}\n  b{i - 1}\n}}" for i in range(1, levels + 1)]
    return "\n".join(blocks) + "\n" + _model(use or f"b{levels}")


def _chain(n: int, *, signature: bool = False, used: bool = True) -> str:
    sig = " : [N, C, H, W] -> [N, C, H, W]" if signature else ""
    blocks = [f"block b0{sig} {{ relu }}"] + [f"block b{i}{sig} {{ b{i - 1} }}" for i in range(1, n)]
    return "\n".join(blocks) + "\n" + _model(f"b{n - 1}" if used else "relu")


def _limit_errors(text: str) -> list:
    checked = check_source(text, "t.conv")
    assert not checked.ok
    errors = checked.result.errors
    assert [d.code for d in errors] == ["limit"], checked.render()
    return list(errors)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ layers
def test_a_billion_repeats_are_counted_not_built():
    text = _model("repeat 1000000000 { relu }")
    peak = _peak_bytes(lambda: _limit_errors(text))
    (d,) = _limit_errors(text)
    assert (d.span.line, d.span.column) == (2, 3)  # the repeat
    assert "more than 2,000 layers" in d.message and "CONVDSL_MAX_LAYERS" in d.message
    assert "docs/limits.md" in d.message
    assert peak < 20 * 2**20  # it reached 7.8 GB


def test_blocks_doubling_forty_times_are_refused_at_the_use():
    (d,) = _limit_errors(_doubling_blocks(40))
    assert d.span.line == 4 * 40 + 3 and d.message.startswith("model 'm' makes the file expand to more than")
    assert any("this use of block 'b40' expands to more than 2,000 layers" in n.message for n in d.notes)


def test_nested_repeats_doubling_forty_times_are_refused():
    body = "repeat 2 { " * 40 + "relu" + " }" * 40
    (d,) = _limit_errors(_model(body))
    assert (d.span.line, d.span.column) == (2, 3)


def test_a_repeat_count_from_a_block_argument_is_counted():
    text = "block b(n) {\n  repeat n { relu }\n}\n" + _model("b(1000000)")
    (d,) = _limit_errors(text)
    assert d.span.line == 5


def test_the_layer_cap_is_exact_and_set_by_its_variable(monkeypatch):
    monkeypatch.setenv("CONVDSL_MAX_LAYERS", "10")
    assert check_source(_model("repeat 10 { relu }")).ok
    (d,) = _limit_errors(_model("repeat 10 { relu }", "relu"))
    assert d.span.line == 3 and "limit of 10 " in d.message
    assert any(n.message == "the layers checked before it make 10" for n in d.notes)
    monkeypatch.setenv("CONVDSL_MAX_LAYERS", "1024")
    assert check_source(_doubling_blocks(10)).ok


def test_the_layer_cap_is_on_the_whole_file(monkeypatch):
    """Models and block signatures are walked one after the other: the cap bounds their sum."""
    monkeypatch.setenv("CONVDSL_MAX_LAYERS", "10")
    two = _model("repeat 6 { relu }") + _model("repeat 6 { relu }").replace("model m(", "model n(")
    (d,) = _limit_errors(two)
    assert d.span.line == 5  # the second model's repeat


def test_an_unused_block_past_the_cap_is_one_error(monkeypatch):
    monkeypatch.setenv("CONVDSL_MAX_LAYERS", "10")
    text = "block big : [N, C, H, W] -> [N, C, H, W] {\n  repeat 11 { relu }\n}\n" + _model("relu")
    (d,) = _limit_errors(text)
    assert d.span.line == 2 and d.message.startswith("block 'big' makes the file expand")


# ------------------------------------------------------------------ depth
@pytest.mark.parametrize("n", [350, 400, 2000])
def test_a_long_chain_of_block_uses_is_a_diagnostic_not_a_recursion_error(n, tmp_path):
    (d,) = _limit_errors(_chain(n))
    assert d.span.line == n + 2  # the use in the model
    assert "nests bodies more than 100 deep" in d.message and "CONVDSL_MAX_BLOCK_DEPTH" in d.message
    path = tmp_path / "chain.conv"
    path.write_text(_chain(n))
    checked = convdsl.check_file(str(path))  # documented never to raise
    assert [e.code for e in checked.result.errors] == ["limit"]


def test_a_long_chain_of_blocks_with_signatures(tmp_path, capsys):
    """Each block's signature is checked on its own: a chain of unused ones past the cap is one
    error (at the outermost), and the command exits 1 without a traceback."""
    (d,) = _limit_errors(_chain(500, signature=True, used=False))
    assert d.span.line == 500  # in the body of b499, the one block nothing uses
    path = tmp_path / "sig.conv"
    path.write_text(_chain(500, signature=True))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "CONVDSL_MAX_BLOCK_DEPTH" in err


def test_the_depth_cap_is_exact_and_counts_repeats(monkeypatch):
    monkeypatch.setenv("CONVDSL_MAX_BLOCK_DEPTH", "5")
    assert check_source(_chain(5)).ok  # the model's use and four more: five levels
    (d,) = _limit_errors(_chain(6))
    assert "limit of 5 " in d.message
    assert check_source(_model("repeat 1 { " * 5 + "relu" + " }" * 5)).ok
    _limit_errors(_model("repeat 1 { " * 6 + "relu" + " }" * 6))
    assert check_source("block b { repeat 1 { repeat 1 { relu } } }\n" + _model("repeat 1 { repeat 1 { b } }")).ok
    _limit_errors("block b { repeat 1 { repeat 1 { relu } } }\n" + _model("repeat 1 { repeat 1 { repeat 1 { b } } }"))


def test_a_long_unused_chain_and_a_late_cycle_need_no_deep_stack():
    assert check_source(_chain(3000, used=False)).ok
    text = _chain(3000, used=False).replace("block b0 { relu }", "block b0 { b2999 }")
    checked = check_source(text)
    assert [d.code for d in checked.result.errors] == ["recursion"]


# ------------------------------------------------------------------ tokens and expressions
def test_the_token_cap(monkeypatch):
    monkeypatch.setenv("CONVDSL_MAX_TOKENS", "30")
    assert check_source(_model("relu")).ok  # 20 tokens
    (d,) = _limit_errors(_model(*["relu"] * 6))
    assert "more than 30 tokens" in d.message and "CONVDSL_MAX_TOKENS" in d.message


def test_expressions_deeper_than_the_cap_are_a_syntax_error():
    ok = _model("relu").replace("-> [N, 3, H, W]", "-> [N, 3, H, W" + " + 0" * MAX_EXPR_DEPTH + "]")
    assert check_source(ok).ok
    deep = _model("relu").replace("-> [N, 3, H, W]", "-> [N, 3, H, W" + " + 0" * (MAX_EXPR_DEPTH + 1) + "]")
    checked = check_source(deep)
    assert [d.message for d in checked.result.errors] == [
        f"an expression nested more than {MAX_EXPR_DEPTH} deep (operators inside operators)"]
    negs = _model("relu").replace("-> [N, 3, H, W]", "-> [N, 3, H, W + " + "-" * 900 + "0]")
    assert [d.code for d in check_source(negs).result.errors] == ["syntax"]


@pytest.mark.parametrize("value", ["0", "-3", "many", "1e9"])
def test_a_bad_setting_is_a_diagnostic(value, monkeypatch):
    for cap in CAPS:
        monkeypatch.setenv(cap.env, value)
        checked = check_source(_model("relu"))
        assert [d.code for d in checked.result.errors] == ["limit"]
        assert cap.env in checked.result.errors[0].message
        monkeypatch.delenv(cap.env)


def test_every_cap_is_documented():
    doc = (ROOT / "docs" / "limits.md").read_text()
    for cap in CAPS:
        assert cap.env in doc and f"{cap.default:,}" in doc, cap.env


# ------------------------------------------------------------------ a megabyte
def test_a_megabyte_of_layers_is_refused_early(tmp_path):
    path = tmp_path / "long.conv"
    path.write_text(_model(*["relu"] * 150_000))
    assert path.stat().st_size > 1_000_000
    get_parser()  # (the grammar's tables are built once a process, not counted)
    box = {}
    peak = _peak_bytes(lambda: box.setdefault("c", convdsl.check_file(str(path))))
    (d,) = box["c"].result.errors
    assert d.code == "limit" and f"more than {MAX_TOKENS.default:,} tokens" in d.message
    assert peak < 100 * 2**20


def test_a_megabyte_file_within_the_caps_checks(tmp_path):
    """1 MB of source that is not past a cap (long names, comments): checked in full."""
    layers = [f"{'layer_' + str(i).rjust(500, 'x')}: {'conv(3, kernel=3, padding=1)' if i % 10 == 0 else 'relu'}"
              f"  # {'.' * 60}" for i in range(1900)]
    path = tmp_path / "wide.conv"
    path.write_text(_model(*layers))
    assert path.stat().st_size > 1_000_000
    checked = convdsl.check_file(str(path))
    assert checked.ok, checked.render()
    assert len(checked.result.model().layers) == 1900


# ------------------------------------------------------------------ never raises
def test_check_never_raises(monkeypatch):
    program, _ = parse(_model("relu"), "t.conv")
    assert program is not None

    def broken(self):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(check_module.Checker, "run", broken)
    result = check_module.check(program)
    assert [d.code for d in result.errors] == ["internal"]
    assert "RecursionError" in result.errors[0].message


def test_caps_read_the_environment_each_time(monkeypatch):
    monkeypatch.setenv("CONVDSL_MAX_LAYERS", "7")
    assert MAX_LAYERS.value() == 7
    monkeypatch.delenv("CONVDSL_MAX_LAYERS")
    assert MAX_LAYERS.value() == MAX_LAYERS.default
    assert MAX_BLOCK_DEPTH.value() == MAX_BLOCK_DEPTH.default


@pytest.mark.parametrize("argv", [["check"], ["check", "--json"], ["run"], ["compile", "--emit", "plan"]])
def test_every_command_refuses_a_file_past_a_cap_with_status_1(argv, tmp_path, capsys):
    path = tmp_path / "big.conv"
    path.write_text(_model("repeat 1000000000 { relu }"))
    assert main([*argv, str(path)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "CONVDSL_MAX_LAYERS" in out.out + out.err
    with pytest.raises(convdsl.CompileError) as e:
        convdsl.load(str(path))
    assert [d.code for d in e.value.diagnostics] == ["limit"]


def test_the_narrowed_domain_kept_as_a_pipeline_grows_is_the_one_searched_afresh():
    """DomainSoFar reuses the smallest sizes while new layers are non-empty at them; checked
    against the search over every layer at each step, on every example with symbolic sizes."""
    from conftest import EXAMPLES

    from convdsl.core import symbolic as sy
    from convdsl.frontend.constraints import DomainSoFar, _conds, _minimal, _narrow

    seen = 0
    for path in sorted(EXAMPLES.glob("*.conv")):
        for m in convdsl.check_file(str(path)).result.models:
            domain = sy.Domain(lower={}, multiple_of=dict(m.multiple_of), fixed=dict(m.fixed))
            so_far, layers = DomainSoFar(), []
            for layer in m.layers:
                layers.append(layer)
                assert so_far(layers, domain) == _narrow(domain, _minimal(_conds(layers), domain)), path.name
                seen += bool(_conds(layers))
    assert seen > 10


def test_a_long_pipeline_of_assertions(monkeypatch):
    """Each layer asserts its shape: 1,999 of them (it was quadratic: 186 s for 4,999)."""
    ok = ("model m(x: [N, 3, H, W]) -> [N, 3, H - 1999, W - 1999] where H >= 10000, W >= 10000 {\n"
          + "".join(f"  conv(3, kernel=2) -> [N, 3, H - {i}, W - {i}]\n" for i in range(1, 2000)) + "}\n")
    monkeypatch.setenv("CONVDSL_MAX_TOKENS", "100000")
    checked = check_source(ok)
    assert checked.ok and len(checked.result.model().layers) == 1999
    bad = ok.replace("-> [N, 3, H - 1500, W - 1500]", "-> [N, 3, H - 1500, W - 1501]")
    (err,) = check_source(bad).result.errors
    assert err.span.line == 1501 and any("for W = 10000: computed 8500, declared 8499" in n.message
                                         for n in err.notes)
