"""The checker and `convdsl check`: golden outputs, exit codes.

What each examples/errors/*.conv reports is written in its comments and checked
by test_error_examples.py."""

import json
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT

from convdsl.frontend import check_source
from convdsl.tools.cli import main

GOLDEN = Path(__file__).parent / "golden"
MODELS = sorted(p.name for p in EXAMPLES.glob("*.conv"))
ERRORS = sorted(p.name for p in (EXAMPLES / "errors").glob("*.conv"))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _compare_golden(name, text, update):
    path = GOLDEN / name
    if update or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path} (rerun with --update-golden to accept)"


@pytest.mark.parametrize("name", MODELS)
def test_examples_golden_text(name, capsys, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = run_cli(capsys, "check", f"examples/{name}")
    assert code == 0, err
    _compare_golden(name.replace(".conv", ".txt"), out + err, update_golden)


@pytest.mark.parametrize("name", MODELS)
def test_examples_golden_json(name, capsys, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = run_cli(capsys, "check", "--json", f"examples/{name}")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["ok"] is True and data["errors"] == []
    _compare_golden(name.replace(".conv", ".json"), out, update_golden)


@pytest.mark.parametrize("name", ERRORS)
def test_error_examples_golden(name, capsys, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = run_cli(capsys, "check", f"examples/errors/{name}")
    assert "Traceback" not in err
    _compare_golden("errors_" + name.replace(".conv", ".txt"), f"exit {code}\n" + out + err, update_golden)


def test_lenet_json_matches_cli_contract(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run_cli(capsys, "check", "--json", "examples/lenet.conv")
    data = json.loads(out)
    (m,) = data["models"]
    assert (m["name"], m["input"], m["output"]) == ("LeNet", ["N", 1, 28, 28], ["N", 10])
    assert m["valid_for"] == {"N": 1}
    assert (m["params"], m["macs"]) == (61706, 416520)
    first = m["layers"][:2]
    assert {k: first[0][k] for k in ("name", "op", "shape", "params", "macs")} == \
        {"name": "conv1", "op": "conv", "shape": ["N", 6, 28, 28], "params": 156, "macs": 117600}
    assert {k: first[1][k] for k in ("name", "op", "shape", "params", "macs")} == \
        {"name": "sigmoid1", "op": "sigmoid", "shape": ["N", 6, 28, 28], "params": 0, "macs": 0}
    assert [ly["name"] for ly in m["layers"]] == [
        "conv1", "sigmoid1", "pool1", "conv2", "sigmoid2", "pool2", "flatten1",
        "dense1", "sigmoid3", "dense2", "sigmoid4", "dense3"]


def test_symbolic_shapes_and_valid_for():
    r = check_source(Path(EXAMPLES / "anysize.conv").read_text(), "anysize.conv").result
    m = r.model()
    assert dict(m.valid_for) == {"N": 1, "H": 12, "W": 12}
    shapes = {ly.name: [str(d) for d in ly.out_shape] for ly in m.layers}
    assert shapes["maxpool2"] == ["N", "32", "H // 4", "W // 4"]
    assert shapes["conv3"] == ["N", "64", "H // 4 - 2", "W // 4 - 2"]


def test_where_clause_sets_valid_for():
    r = check_source(Path(EXAMPLES / "symbolic_where.conv").read_text(), "w.conv").result
    m = r.model()
    assert dict(m.valid_for) == {"N": 1, "H": 16, "W": 16}
    assert dict(m.multiple_of) == {"H": 4, "W": 4}


def test_automatic_names_skip_labels():
    src = """
model M(x: [N, 3, 8, 8]) -> [N, 4] {
    dense1: conv(4, kernel=1)
    conv(4, kernel=1)
    global_avgpool
    flatten
    dense(4)
}
"""
    m = check_source(src).result.model()
    assert [ly.name for ly in m.layers] == ["dense1", "conv1", "global_avgpool1", "flatten1", "dense2"]


def test_block_instances_get_dotted_names():
    src = (EXAMPLES / "vgg11_small.conv").read_text()
    m = check_source(src).result.model()
    names = [ly.name for ly in m.layers]
    assert names[:3] == ["vgg1.conv1", "vgg1.relu1", "vgg1.maxpool1"]
    assert "vgg3.conv2" in names and "vgg5.maxpool1" in names
    assert names[-1] == "dense3"


@pytest.mark.parametrize("argv,code", [
    (["check", "no/such/file.conv"], 2),
    (["check"], 2),
    (["check", "--bogus", "examples/lenet.conv"], 2),
    (["frobnicate"], 2),
])
def test_usage_errors_exit_2(argv, code, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == code
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- regressions
def _errors(src):
    return [(e.span.line, e.span.column, e.message) for e in check_source(src, "t.conv").result.errors]


def test_signature_input_mismatch_is_an_error_not_a_crash():
    src = ("block sq(c) : [N, C, S, S] -> [N, c, S, S] {\n    conv(c, kernel=3, padding=1)\n}\n"
           "model D(x: [N, 8, 32, 16]) -> [N, 4, 32, 16] {\n    sq(4)\n}\n")
    (err,) = _errors(src)
    assert err[:2] == (5, 5) and "'S' would be both 32 and 16" in err[2]


def test_signature_checked_per_use_when_repeat_count_is_a_parameter():
    src = ("block vgg(convs, channels) : [N, C, H, W] -> [N, channels, H, W] {\n"
           "    repeat convs {\n        conv(channels, kernel=3, padding=1)\n        relu\n    }\n"
           "    maxpool(2, stride=2)\n}\n"
           "model M(x: [N, 3, 32, 32]) -> [N, 8, 16, 16] {\n    vgg(2, 8)\n}\n")
    (err,) = _errors(src)
    assert err[0] == 1 and "produces [N, 8, 16, 16] here, but its signature declares [N, 8, 32, 32]" in err[2]


def test_label_inside_repeat_is_one_error():
    src = "model M(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    repeat 2 {\n        c: relu\n    }\n}\n"
    (err,) = _errors(src)
    assert "a label inside 'repeat 2' would name 2 layers 'c'" in err[2]


def test_error_in_block_with_signature_is_reported_once_with_the_use():
    src = ("block stage(c) : [N, C, H, W] -> [N, c] {\n    conv(c, kernel=3)\n    dense(c)\n}\n"
           "model M(x: [N, 3, 32, 32]) -> [N, 16] {\n    s1: stage(16)\n}\n")
    result = check_source(src, "t.conv").result
    (err,) = result.errors
    assert err.span.line == 3 and any(n.span and n.span.line == 6 for n in err.notes)


def test_unknown_op_in_unused_block_is_reported():
    src = "block b() {\n    convv(3, kernel=1)\n}\nmodel M(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    relu\n}\n"
    assert _errors(src) == [(2, 5, "unknown op 'convv'")]


def test_batch_dimension_must_be_N():
    for shape in ("[1, 3, 8, 8]", "[B, 3, 8, 8]"):
        src = f"model M(x: {shape}) -> [N, 3, 8, 8] {{\n    relu\n}}\n"
        (err,) = _errors(src)
        assert err[:2] == (1, 13) and "the batch dimension" in err[2]


def test_contradictory_where_points_at_the_clause():
    src = "model M(x: [N, 3, H, W]) -> [N, 3, H, W] where H == 30, H % 4 == 0 {\n    relu\n}\n"
    (err,) = _errors(src)
    assert err[:2] == (1, 48) and "no valid value for 'H'" in err[2]


def test_broken_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(f"{sys.executable} -m convdsl check --json {EXAMPLES / 'vgg11.conv'} | head -1",
                       shell=True, capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "{" and "Traceback" not in r.stderr


# ------------------------------------------------- declared shapes are never trusted over computed ones
def test_a_declared_empty_size_is_an_error_where_it_is_declared():
    """``-> [N, 1, 0, W]`` under ``where H == 2`` was accepted, hiding conv1's empty output, and the
    error landed on the layer after it (issue 11 item 4(b))."""
    src = ("model M(x: [N, 1, H, W]) -> [N, 1, 1, W] where H == 2 {\n"
           "    conv(1, kernel=(3, 1)) -> [N, 1, 0, W]\n"
           "    relu\n"
           "}\n")
    errors = _errors(src)
    assert (2, 5, "conv1's height H - 2 is 0 for H = 2, which the where clause allows") in errors
    assert (2, 38, "a declared size must be at least 1, not 0") in errors
    assert all(line == 2 for line, _, _ in errors), errors  # nothing on relu's line


@pytest.mark.parametrize("decl, col", [("[N, 1, -1, W]", 36), ("[N, 0, H, W]", 33), ("[N, 1, 2 - 3, W]", 36)])
def test_declared_sizes_below_one_are_errors_in_every_declaration(decl, col):
    model_out = f"model M(x: [N, 1, H, W]) -> {decl} {{\n    relu\n}}\n"
    assert _errors(model_out) == [(1, col, f"a declared size must be at least 1, not "
                                           f"{-1 if '-' in decl else 0}")]
    layer = f"model M(x: [N, 1, H, W]) -> [N, 1, H, W] {{\n    relu -> {decl}\n}}\n"
    assert [e[:2] for e in _errors(layer)] == [(2, col - 16)]
    block = f"block b : [N, C, H, W] -> {decl} {{ relu }}\nmodel M(x: [N, 1, H, W]) -> [N, 1, H, W] {{\n    b\n}}\n"
    assert [e[0] for e in _errors(block)] == [1]


def test_checking_goes_on_from_the_computed_shape_after_a_bad_declaration():
    src = ("model M(x: [N, 1, 8, 8]) -> [N, 1, 6, 8] {\n"
           "    conv(1, kernel=(3, 1)) -> [N, 1, 0, 8]\n"
           "    relu\n"
           "}\n")
    assert _errors(src) == [(2, 38, "a declared size must be at least 1, not 0")]


def test_an_empty_size_fixed_by_where_is_reported_at_the_layer_that_makes_it():
    """Before, the rank error of the later dense came first and the empty conv second."""
    src = ("model M(x: [N, 1, H, W]) -> [N, 4] where H == 2 {\n"
           "    conv(1, kernel=(3, 1))\n"
           "    dense(4)\n"
           "}\n")
    assert _errors(src) == [(2, 5, "conv1's height H - 2 is 0 for H = 2, which the where clause allows")]
    two = src.replace("where H == 2", "where H == 3, W == 2").replace("kernel=(3, 1)", "kernel=(2, 3)")
    assert _errors(two) == [(2, 5, "conv1's width W - 2 is 0 for W = 2, which the where clause allows")]


def test_a_layer_valid_only_past_64_bit_sizes_says_where_the_search_stopped():
    """stride 10^12 then maxpool(999999999994): valid only for H, W of about 10^24, past what 64-bit
    generated code can index; the error says the sizes were searched up to 2^63 - 1, not that no
    size exists at all (the fuzzer's huge-divisor input, answered in 0.3 s and 25 MB)."""
    src = ("model M(x: [N, 1, H, W]) -> [N, 2] {\n"
           "    conv(2, kernel=1, stride=1000000000000)\n"
           "    maxpool(999999999994)\n"
           "    flatten\n"
           "}\n")
    errors = _errors(src)
    (pool,) = [e for e in errors if e[0] == 3]
    assert pool[1] == 5 and pool[2].startswith(
        "maxpool1 has an empty output for every input size up to 2^63 - 1, the largest the generated code "
        "can index (height (H + 999999999999) // 999999999994000000000000)"), pool
    # a stride of 10^9 leaves valid sizes below the limit: then the sizes are found, not refused
    ok = src.replace("1000000000000", "1000000000").replace("999999999994", "1000000000")
    assert not [e for e in _errors(ok) if "empty output" in e[2]]
