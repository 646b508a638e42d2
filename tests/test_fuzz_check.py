"""Random and mutated programs never crash `check`: a diagnostic or a result, always."""

import json
import time

from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convdsl.frontend import check_source
from convdsl.frontend.report import json_report, text_report
from convdsl.tools.cli import main

SEEDS = [p.read_text() for p in sorted(EXAMPLES.glob("*.conv"))] + \
        [p.read_text() for p in sorted((EXAMPLES / "errors").glob("*.conv"))]

TOKENS = ["model", "block", "repeat", "where", "conv", "maxpool", "avgpool", "dense", "flatten", "relu",
          "softmax", "global_avgpool", "sigmoid", "tanh", "(", ")", "[", "]", "{", "}", ",", ":", "->", "=",
          "+", "-", "*", "//", "%", "==", ">=", ">", "\n", " ", "N", "H", "W", "x", "0", "1", "2", "3", "5",
          "28", "-1", "kernel", "stride", "padding", "dilation", "groups", "bias", "ceil", "same", "valid",
          "true", "false", "#", "é", "\t", "999999999999"]


def _check_never_crashes(text: str) -> None:
    start = time.perf_counter()
    checked = check_source(text, "fuzz.conv")
    result = checked.result
    # Rendering and reporting are part of the contract too.
    checked.render()
    text_report(result)
    json.dumps(json_report(result))
    if not result.ok:
        assert result.errors, "a failed check must say why"
    else:
        assert result.models or not text.strip()
    assert time.perf_counter() - start < 20, "check took too long"


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_soup(tokens):
    _check_never_crashes(" ".join(tokens))


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "replace_number"]))
        if kind == "delete":
            j = min(len(text), i + draw(st.integers(1, 12)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "duplicate":
            j = min(len(text), i + draw(st.integers(1, 40)))
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + str(draw(st.integers(-3, 300))) + text[i + 1:]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_programs(text):
    _check_never_crashes(text)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_cli_exit_codes_on_mutations(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "m.conv"
    path.write_text(text)
    assert main(["check", str(path)]) in (0, 1)
    assert main(["check", "--json", str(path)]) in (0, 1)
