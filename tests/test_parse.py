"""Tests of convdsl.frontend.parse: the AST of valid programs, exact spans, and syntax errors."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convdsl.core.diagnostics import Span, render
from convdsl.frontend import ast, check_source
from convdsl.frontend.parse import get_parser, parse

LENET = """\
# LeNet, as in the seed's section 8.6 (Dive into Deep Learning)
model LeNet(x: [N, 1, 28, 28]) -> [N, 10] {
    conv1: conv(6, kernel=5, padding=2)   -> [N, 6, 28, 28]
    sigmoid
    pool1: avgpool(2, stride=2)           -> [N, 6, 14, 14]
    conv2: conv(16, kernel=5)             -> [N, 16, 10, 10]
    sigmoid
    pool2: avgpool(2, stride=2)           -> [N, 16, 5, 5]
    flatten                               -> [N, 400]
    dense1: dense(120)
    sigmoid
    dense2: dense(84)
    sigmoid
    dense3: dense(10)
}
"""

BLOCKS = """\
block vgg(convs, channels) {
    repeat convs {
        conv(channels, kernel=3, padding=1)
        relu
    }
    maxpool(2, stride=2)
}

block nin(channels, kernel, stride, padding) : [N, C, H, W] -> [N, channels, (H + 2*padding - kernel) // stride + 1, (W + 2*padding - kernel) // stride + 1] {
    conv(channels, kernel=kernel, stride=stride, padding=padding)
    relu
}

model Net(x: [N, 3, H, W]) -> [N, 10] where H >= 32, W > 7, H == W, H % 4 == 0 {
    stage1: vgg(2, 64)
    nin(10, 3, 1, 1)
    global_avgpool
    flatten
}
"""


def S(line, col, end_line, end_col, file="t.conv"):
    return Span(file, line, col, end_line, end_col)


def ok(text: str) -> ast.Program:
    prog, diags = parse(text, "t.conv")
    assert diags == [], render_all(diags, text)
    assert prog is not None
    return prog


def errors(text: str):
    prog, diags = parse(text, "t.conv")
    assert prog is None
    assert diags, "expected syntax errors"
    assert all(d.severity == "error" for d in diags)
    return diags


def render_all(diags, text):
    return "\n".join(render(d, {"t.conv": text}) for d in diags)


def simple(expr: ast.Expr):
    """An expression as a nested tuple, spans dropped."""
    match expr:
        case ast.Num(v, _):
            return v
        case ast.Name(n, _):
            return n
        case ast.Neg(x, _):
            return ("neg", simple(x))
        case ast.BinOp(op, a, b, _):
            return (op, simple(a), simple(b))
    raise AssertionError(expr)


def dims(shape: ast.Shape):
    return [simple(d) for d in shape.dims]


def args(layer: ast.Layer):
    out = []
    for a in layer.args:
        v = tuple(simple(i) for i in a.value.items) if isinstance(a.value, ast.TupleArg) else simple(a.value)
        out.append(v if a.key is None else (a.key, v))
    return out


# ------------------------------------------------------------------ valid
def test_lenet_ast():
    prog = ok(LENET)
    assert prog.file == "t.conv"
    (model,) = prog.models
    assert prog.blocks == ()
    assert model.name == "LeNet"
    assert model.input.name == "x"
    assert dims(model.input_shape) == ["N", 1, 28, 28]
    assert dims(model.output_shape) == ["N", 10]
    assert model.where == ()
    layers = model.body
    assert [(l.label, l.op) for l in layers] == [
        ("conv1", "conv"), (None, "sigmoid"), ("pool1", "avgpool"), ("conv2", "conv"),
        (None, "sigmoid"), ("pool2", "avgpool"), (None, "flatten"), ("dense1", "dense"),
        (None, "sigmoid"), ("dense2", "dense"), (None, "sigmoid"), ("dense3", "dense"),
    ]  # fmt: skip
    assert args(layers[0]) == [6, ("kernel", 5), ("padding", 2)]
    assert args(layers[2]) == [2, ("stride", 2)]
    assert args(layers[1]) == [] and layers[1].args_span is None
    assert dims(layers[6].declared) == ["N", 400]
    assert layers[7].declared is None


def test_lenet_spans():
    prog = ok(LENET)
    (model,) = prog.models
    assert model.span == S(2, 1, 2, 42)  # model LeNet(...) -> [N, 10]
    assert model.name_span == S(2, 7, 2, 12)
    assert model.input.span == S(2, 13, 2, 14)
    assert model.input_shape.span == S(2, 16, 2, 30)
    assert model.output_shape.span == S(2, 35, 2, 42)
    conv1 = model.body[0]
    assert conv1.label_span == S(3, 5, 3, 10)
    assert conv1.op_span == S(3, 12, 3, 16)
    assert conv1.args_span == S(3, 16, 3, 40)
    assert conv1.span == S(3, 5, 3, 60)
    assert conv1.declared.span == S(3, 46, 3, 60)
    kernel = conv1.args[1]
    assert kernel.span == S(3, 20, 3, 28)
    assert kernel.key_span == S(3, 20, 3, 26)
    assert kernel.value.span == S(3, 27, 3, 28)
    assert conv1.args[0].key_span is None
    sigmoid = model.body[1]
    assert sigmoid.span == sigmoid.op_span == S(4, 5, 4, 12)
    flatten = model.body[6]
    assert flatten.span == S(9, 5, 9, 54)


def test_blocks_repeat_where():
    prog = ok(BLOCKS)
    vgg, nin = prog.blocks
    (net,) = prog.models
    assert [i.name for i in prog.items] == ["vgg", "nin", "Net"]
    assert [p.name for p in vgg.params] == ["convs", "channels"]
    assert vgg.signature is None
    assert vgg.span == S(1, 1, 1, 27)
    assert vgg.name_span == S(1, 7, 1, 10)
    rep = vgg.body[0]
    assert isinstance(rep, ast.Repeat)
    assert simple(rep.count) == "convs"
    assert rep.span == S(2, 5, 2, 17)
    assert [l.op for l in rep.body] == ["conv", "relu"]
    assert args(rep.body[0]) == ["channels", ("kernel", 3), ("padding", 1)]
    assert vgg.body[1].op == "maxpool"

    sig_in, sig_out = nin.signature
    assert dims(sig_in) == ["N", "C", "H", "W"]
    assert dims(sig_out)[2] == ("+", ("//", ("-", ("+", "H", ("*", 2, "padding")), "kernel"), "stride"), 1)
    assert nin.span.line == 9 and nin.span.column == 1 and nin.span.end_column == sig_out.span.end_column

    c = net.where
    assert [type(x).__name__ for x in c] == ["Compare", "Compare", "Compare", "Divisible"]
    assert [(x.op, simple(x.lhs), simple(x.rhs)) for x in c[:3]] == [(">=", "H", 32), (">", "W", 7), ("==", "H", "W")]
    assert (simple(c[3].value), simple(c[3].modulus), simple(c[3].remainder)) == ("H", 4, 0)
    assert c[0].span == S(14, 45, 14, 52)
    assert net.span == S(14, 1, 14, 38)  # the where clause is not part of the head
    assert net.body[0].label == "stage1" and args(net.body[0]) == [2, 64]


def test_expression_precedence_and_unary_minus():
    prog = ok("model M(x: [N, -H + 2*3 - W // 2 // 4, (H + 1) * 2, - -1]) -> [N] {\n relu\n}\n")
    d = dims(prog.models[0].input_shape)
    assert d[1] == ("-", ("+", ("neg", "H"), ("*", 2, 3)), ("//", ("//", "W", 2), 4))
    assert d[2] == ("*", ("+", "H", 1), 2)
    assert d[3] == ("neg", ("neg", 1))


def test_tuples_and_names_as_values():
    prog = ok("model M(x: [N, 3, 8, 8]) -> [N] {\n conv(8, (3, 3), padding=(1, 1, 0, 2), bias=false, stride=(2), p=same)\n}\n")
    layer = prog.models[0].body[0]
    assert args(layer) == [8, (3, 3), ("padding", (1, 1, 0, 2)), ("bias", "false"), ("stride", 2), ("p", "same")]
    assert isinstance(layer.args[1].value, ast.TupleArg)
    assert layer.args[1].value.span == S(2, 10, 2, 16)
    assert isinstance(layer.args[3].value, ast.Name)


def test_multiline_args_and_shapes_comments_blank_lines():
    text = textwrap.dedent(
        """\

        # leading comment

        model M(
            x: [N, 3,   # channels
                H, W],
        ) -> [N, 10]    # head comment
        {
            # a comment line inside the body

            c1: conv(
                16,
                kernel=3,   # trailing comma is fine
            ) -> [N, 16,
                  H - 2, W - 2]
            relu  # comment after a layer
            repeat 2 { relu }
            dense(10) }
        block b { relu }
        block e() {
            relu
        }
        """
    )
    prog = ok(text)
    m = prog.models[0]
    assert dims(m.input_shape) == ["N", 3, "H", "W"]
    c1 = m.body[0]
    assert args(c1) == [16, ("kernel", 3)]
    assert c1.span == S(11, 5, 15, 24)
    assert c1.args_span == S(11, 13, 14, 6)
    assert [getattr(s, "op", "repeat") for s in m.body] == ["conv", "relu", "repeat", "dense"]
    assert m.body[2].body[0].op == "relu"
    b, e = prog.blocks
    assert b.params == () and e.params == ()
    assert b.span == S(19, 1, 19, 8)
    assert e.span == S(20, 1, 20, 10)


def test_where_on_continuation_lines():
    prog = ok("model M(x: [N, 3, H, W]) -> [N]\n    where H >= 16,\n          W >= 16\n{\n relu\n}\n")
    assert len(prog.models[0].where) == 2


def test_keywords_only_reserved_words():
    prog = ok("model M(x: [N]) -> [N] {\n  models: blocks(true, same=valid)\n  repeater\n}\n")
    layer = prog.models[0].body[0]
    assert (layer.label, layer.op) == ("models", "blocks")
    assert args(layer) == ["true", ("same", "valid")]


def test_empty_file_and_only_comments():
    assert ok("").items == ()
    assert ok("# nothing\n\n").items == ()


def test_grammar_loaded_once():
    first = get_parser()
    ok(LENET)
    ok(BLOCKS)
    assert get_parser() is first


def test_crlf_line_endings():
    prog = ok(LENET.replace("\n", "\r\n"))
    assert len(prog.models[0].body) == 12


# ----------------------------------------------------------------- errors
ERRORS = [
    # (source, line, column, message)
    ("model M(x: [N]) -> [N] {\n conv(6 kernel=5)\n}\n", 2, 9,
     "expected ')' or ',' after argument, found 'kernel'"),
    ("model M(x: [N]) -> [N] {\n conv(6, k=)\n}\n", 2, 12, "expected a value after '=', found ')'"),
    ("model M(x: [N]) -> [N] {\n conv(,)\n}\n", 2, 7, "expected an argument, found ','"),
    ("model M(x: [N]) -> [N] {\n relu relu\n}\n", 2, 7,
     "expected end of line after the layer (one layer per line), found 'relu'"),
    ("model M(x: [N]) -> [N] {\n c1:\n}\n", 2, 5, "expected an op after the label, found end of line"),
    ("model M(x: [N]) -> [N] {\n relu ->\n}\n", 2, 9, "expected a shape '[...]', found end of line"),
    ("model M(x: [N]) -> [N] {\n relu -> [N 3]\n}\n", 2, 13, "expected ']' or ',' after dimension, found '3'"),
    ("model M(x: [N]) -> [N] {\n relu -> []\n}\n", 2, 11, "expected a dimension (an integer expression), found ']'"),
    ("model M(x: [N]) -> [N] {\n repeat { relu }\n}\n", 2, 9, "expected a repeat count after 'repeat', found '{'"),
    ("model M(x: [N]) -> [N] {\n = relu\n}\n", 2, 2, "expected a layer, 'repeat' or '}', found '='"),
    ("relu\n", 1, 1, "expected 'model' or 'block', found 'relu'"),
    ("model (x: [N]) -> [N] {\n relu\n}\n", 1, 7, "expected the model's name after 'model', found '('"),
    ("model M(x [N]) -> [N] {\n relu\n}\n", 1, 11, "expected ':', found '['"),
    ("model M(x: [N]) [N] {\n relu\n}\n", 1, 17, "expected '->', found '['"),
    ("model M(x: [N]) -> [N]\n relu\n}\n", 3, 1, "unmatched '}': no '{' is open here"),
    ("model M(x: [N]) -> [N] where H = 3 {\n relu\n}\n", 1, 32, "expected '>=', '>', '==' or '%', found '='"),
    ("model M(x: [N]) -> [N] {\n relu\n}\nmodel\n", 4, 6, "expected the model's name after 'model', found end of file"),
    ("model M(x: [N]) -> [N] {\n model: relu\n}\n", 2, 2, "expected a layer, 'repeat' or '}', found keyword 'model'"),
    ("block b(a, 1) {\n relu\n}\n", 1, 12, "expected a name or ')', found '1'"),
    ("model M(x: [N]) -> [N] {\n conv(6, k=@)\n}\n", 2, 12, "unexpected character '@'"),
    ("model M(x: [N]) -> [N] {\n conv(6, k=3 / 2)\n}\n", 2, 14, "unexpected character '/'"),
    ("model M(x: [N]) -> [N] {\n cönv\n}\n", 2, 3, "unexpected character 'ö' (U+00F6)"),
    ("model M(x: [N]) -> [N] {\n relu )\n}\n", 2, 7, "unmatched ')': no '(' is open here"),
    ("model M(x: [N]) -> [N] {\n relu -> [N, 3)\n}\n", 2, 10,
     "'[' opened at 2:10 is closed by ')' at 2:15; expected ']'"),
    ("model M(x: [N]) -> [N] {\n relu -> [N,\n}\n", 2, 10,
     "'[' opened at 2:10 is never closed: '}' at 3:1 comes first"),
    ("model M(x: [N]) -> [N] {\n relu\n", 1, 24, "unexpected end of file: '{' opened at 1:24 is never closed"),
    ("block b(a) : [N, C\n", 1, 14, "unexpected end of file: '[' opened at 1:14 is never closed"),
    ("model M(x: [N]) -> [N] {\n relu(" + "(" * 100 + "\n}\n", 2, 69, "brackets nested more than 64 deep"),
    ("model M(x: [N]) -> [N] {\n dense(" + "9" * 40 + ")\n}\n", 2, 8, "number too large (40 digits)"),
]  # fmt: skip


@pytest.mark.parametrize("text,line,column,message", ERRORS)
def test_syntax_error(text, line, column, message):
    diags = errors(text)
    d = diags[0]
    assert (d.span.file, d.span.line, d.span.column, d.message) == ("t.conv", line, column, message), render_all(
        diags, text
    )
    assert d.code == "syntax"
    assert len(diags) == 1, render_all(diags, text)


def test_unclosed_paren_points_at_its_opening_with_note_at_mismatch():
    text = "model M(x: [N]) -> [N] {\n    conv(6, kernel=5\n    relu\n}\n"
    (d,) = errors(text)
    assert d.span == S(2, 9, 2, 10)
    assert d.message == "'(' opened at 2:9 is never closed: '}' at 4:1 comes first"
    (note,) = d.notes
    assert note.span == S(4, 1, 4, 2)
    assert note.message == "expected ')' before this '}'"
    assert render(d, {"t.conv": text}).splitlines()[:3] == [
        "t.conv:2:9: error: '(' opened at 2:9 is never closed: '}' at 4:1 comes first",
        "        conv(6, kernel=5",
        "            ^",
    ]


def test_unclosed_brace_note_at_end_of_file():
    text = "model M(x: [N]) -> [N] {\n    relu\n"
    (d,) = errors(text)
    assert d.span == S(1, 24, 1, 25)
    assert d.notes[0].message == "the file ends here"
    assert d.notes[0].span == S(3, 1, 3, 2)


def test_several_independent_errors_are_reported():
    text = textwrap.dedent(
        """\
        model M(x: [N]) -> [N] {
            conv(6 kernel=5)
            relu
            relu relu
            repeat 2 {
                dense(10,,)
            }
            ok
        }
        junk here
        block b(a, 1) {
            relu
        }
        model N(x: [N]) -> [N] where H = 1 {
            relu ->
        }
        model Good(x: [N]) -> [N] {
            relu
        }
        """
    )
    diags = errors(text)
    assert [(d.span.line, d.span.column) for d in diags] == [(2, 12), (4, 10), (6, 18), (10, 1), (11, 12), (14, 32)]


def test_unknown_characters_all_reported():
    diags = errors("model M(x: [N]) -> [N] {\n a@b\n c$\n}\n")
    assert [(d.span.line, d.span.column, d.message) for d in diags] == [
        (2, 3, "unexpected character '@'"),
        (3, 3, "unexpected character '$'"),
    ]


def test_deep_expression_does_not_crash():
    text = "model M(x: [N, " + "+".join(["1"] * 5000) + "]) -> [N] {\n relu\n}\n"
    prog, diags = parse(text, "t.conv")
    assert prog is not None or diags
    text = "model M(x: [N, " + "-" * 5000 + "1]) -> [N] {\n relu\n}\n"
    prog, diags = parse(text, "t.conv")
    assert prog is not None or diags


# ------------------------------------------------------------------- fuzz
ALPHABET = "model block repeat where x N H ( ) [ ] { } , : = -> >= > == % + - * // 12 \n # @ é \t\r"


def _check_never_raises(text: str) -> None:
    prog, diags = parse(text, "fuzz.conv")
    assert (prog is None) == bool(diags)
    for d in diags:
        assert d.severity == "error" and d.code != "internal", d
        assert d.span.line >= 1 and d.span.column >= 1
        render(d, {"fuzz.conv": text})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text(text):
    _check_never_raises(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET.split(" ") + [" ", "\n"]), max_size=60))
def test_fuzz_random_tokens(parts):
    _check_never_raises(" ".join(parts))


@st.composite
def mutated_programs(draw):
    text = draw(st.sampled_from([LENET, BLOCKS]))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "duplicate"]))
        if kind == "delete":
            text = text[:i] + text[i + 1 :]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(list("()[]{},:=->#\n@x1 %/é"))) + text[i:]
        else:
            j = draw(st.integers(i, min(len(text), i + 20)))
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=300, deadline=None)
@given(mutated_programs())
def test_fuzz_mutated_programs(text):
    _check_never_raises(text)


def test_the_scanner_gives_lark_s_tokens():
    """The front end's own scanner (``parse._lex``) against lark's lexer for the same grammar, on
    every example and on random token soups: the same types, values and positions.  (Texts with a
    CR are left out: a CR ends a line for the scanner, as for the diagnostic renderer, and is
    blank space for lark.)"""
    import random

    from conftest import EXAMPLES

    from lark.exceptions import UnexpectedCharacters

    from convdsl.frontend.parse import _lex, _Source

    lark = get_parser()
    texts = [p.read_text() for p in sorted(EXAMPLES.rglob("*.conv"))]
    words = ("model models block repeat where wherex x N H ( ) [ ] { } , : = -> >= > == % + - * // "
             "12 1.5 .5 3. 1.2.3 # \t").split(" ") + ["\n", " ", "\f"]
    rng = random.Random(11)
    texts += ["".join(rng.choice(words) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 40)))
              for _ in range(2000)]

    def key(tokens):
        return [(t.type, str(t), t.line, t.column, t.end_line, t.end_column, t.start_pos) for t in tokens]

    compared = 0
    for text in texts:
        assert "\r" not in text
        ours, diags = _lex(_Source(text, "t.conv"))
        try:
            theirs = list(lark.lex(text))
        except UnexpectedCharacters as e:  # a lone "." of "1.2.3": an error for both
            assert diags and (diags[0].span.line, diags[0].span.column) == (e.line, e.column), text
            continue
        assert not diags, text
        assert key(ours) == key(theirs), text
        compared += 1
    assert compared > 1000


# ------------------------------------------------------------- issue 11 item 7: braces, CR, escapes
def _cli(tmp_path, capsys, text: str | bytes, *argv: str):
    from convdsl.tools.cli import main

    path = tmp_path / "t.conv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["check", *argv, str(path)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("keyword", ["model", "block"])
def test_a_missing_brace_is_reported_at_the_next_item(keyword, tmp_path, capsys):
    nxt = "model B(x: [N, 3, 8, 8]) -> [N, 3, 8, 8]" if keyword == "model" else "block b(c)"
    src = f"model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {{\n    relu\n\n{nxt} {{\n    relu\n}}\n"
    _, diags = parse(src, "t.conv")
    (d,) = diags
    assert (d.span.line, d.span.column, d.message) == (4, 1, f"expected '}}' before '{keyword}'")
    (note,) = d.notes
    assert note.message == "to match this '{'" and note.span is not None
    assert (note.span.line, note.span.column) == (1, 42)
    code, out = _cli(tmp_path, capsys, src)
    assert code == 1 and "Traceback" not in out.err


def test_a_missing_parenthesis_before_the_next_model():
    src = "model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    conv(3, kernel=1,\n\nmodel B(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    relu\n}\n"
    _, diags = parse(src, "t.conv")
    assert [(d.span.line, d.span.column, d.message) for d in diags] == [(4, 1, "expected ')' before 'model'")]
    assert diags[0].notes[0].span.line == 2


def test_a_keyword_used_as_a_label_is_still_worded_as_before():
    src = "model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    model: relu\n}\n"
    _, diags = parse(src, "t.conv")
    assert diags and all("before 'model'" not in d.message for d in diags)


def test_a_cr_only_file_is_read_line_by_line(tmp_path, capsys):
    lines = ["model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {", "    # old Mac line endings", "    relu",
             "    conv(3, kernel=2)", "}", ""]
    for ending in ("\r", "\r\n", "\n"):
        checked = check_source(ending.join(lines), "t.conv")
        (err,) = checked.result.errors
        assert (err.span.line, err.span.column) == (1, 29)
        assert err.notes[0].span.line == 4
        assert "\n          conv(3, kernel=2)\n          ^^^^^^^^^^^^^^^^^" in checked.render()
    ok = "\r".join(["model A(x: [N, 3, 8, 8]) -> [N, 3, 7, 7] {", "    relu", "    conv(3, kernel=2)", "}", ""])
    assert check_source(ok).ok
    code, out = _cli(tmp_path, capsys, "\r".join(lines))
    assert code == 1 and "defines no model" not in out.err and "t.conv:1:29: error" in out.err


def test_control_characters_are_shown_escaped_with_the_carets_under_them(tmp_path, capsys):
    src = "model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    relu \x1b[31m # \x1b]0;title\x07\n}\n"
    code, out = _cli(tmp_path, capsys, src)
    assert code == 1
    assert "\x1b" not in out.err and "\x07" not in out.err
    assert "        relu \\x1b[31m # \\x1b]0;title\\x07\n             ^^^^\n" in out.err
    # the '[' after the escape: its caret moves with the text, by the 3 extra characters of \x1b
    assert "        relu \\x1b[31m # \\x1b]0;title\\x07\n                 ^\n" in out.err


def test_bidi_overrides_and_unicode_line_separators_in_comments():
    """U+2028 and a form feed are not line breaks (str.splitlines would count them), and a bidi
    override is shown as an escape, not obeyed by the terminal."""
    src = ("model A(x: [N, 3, 8, 8]) -> [N, 3, 8, 8] {\n    # \u2028 not a line break\x0c\n"
           "    conv(3, kernel=2)  # \u202e reversed\n}\n")
    checked = check_source(src, "t.conv")
    (err,) = checked.result.errors
    assert err.notes[0].span.line == 3
    text = checked.render()
    assert "\u202e" not in text and "\u2028" not in text
    assert "\n          conv(3, kernel=2)  # \\u202e reversed\n          ^^^^^^^^^^^^^^^^^" in text
