"""`convdsl compile --emit {ast,model,loops}`, the printers behind them, and the API the thin CLI relies on.

The LeNet outputs of ``ast`` and ``model`` are golden files (``tests/golden/emit``; ``pytest
--update-golden`` rewrites them after a deliberate change: then read the diff).  The other
examples are checked for the properties each printer promises.
"""

import subprocess
import sys

import numpy as np
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT
from test_check import _compare_golden
from test_check import run_cli as cli

import convdsl
from convdsl.tools.cli import main

LENET = str(EXAMPLES / "lenet.conv")
LENET_LAYERS = ("conv1", "sigmoid1", "pool1", "conv2", "sigmoid2", "pool2", "flatten1", "dense1", "sigmoid3",
                "dense2", "sigmoid4", "dense3")


@pytest.mark.parametrize("stage", ["ast", "model"])
def test_lenet_golden(stage, capsys, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)  # the file name in the output is the one given
    code, out, err = cli(capsys, "compile", "examples/lenet.conv", "--emit", stage)
    assert code == 0 and err == ""
    _compare_golden(f"emit/lenet.{stage}", out, update_golden)


def test_lenet_ast_is_the_parse_before_checking(capsys):
    _, out, _ = cli(capsys, "compile", LENET, "--emit", "ast")
    lines = out.splitlines()
    assert lines[0] == f"program {LENET}"
    assert lines[1] == "  model LeNet  @2:1"
    assert "    input x: [N, 1, 28, 28]" in lines and "    output [N, 10]" in lines
    layers = [ln.strip() for ln in lines if ln.strip().startswith("layer ")]
    assert len(layers) == 12
    # labels only where the source has them (no automatic names yet), declared shapes kept, positions kept
    assert layers[0] == "layer conv1: conv(6, kernel=5, padding=2) -> [N, 6, 28, 28]  @3:5"
    assert layers[1] == "layer sigmoid  @4:5"
    assert layers[6] == "layer flatten -> [N, 400]  @9:5"


def test_lenet_model_one_line_per_layer(capsys):
    _, out, _ = cli(capsys, "compile", LENET, "--emit", "model")
    head, valid, *rows = out.splitlines()
    assert head == "model LeNet(x: [N, 1, 28, 28]) -> [N, 10]"
    assert valid == "valid for N >= 1"
    assert [r.split()[0] for r in rows] == list(LENET_LAYERS)  # automatic names, execution order
    conv1 = rows[0]
    assert "[N, 1, 28, 28]  -> [N, 6, 28, 28]" in conv1  # input and output shapes
    # every argument resolved: defaults filled in, padding=2 as four pads
    assert conv1.endswith("conv(c_in=1, c_out=6, kernel=(5, 5), stride=(1, 1), padding=(2, 2, 2, 2), "
                          "dilation=(1, 1), groups=1, bias=true)")
    assert rows[7].endswith("dense(in_features=400, out_features=120, bias=true)")
    assert rows[2].endswith("avgpool(kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil=false, count_pad=true)")
    assert rows[1].endswith("sigmoid")


def test_ast_shows_grouping_blocks_and_repeat(capsys):
    _, out, _ = cli(capsys, "compile", str(EXAMPLES / "nin.conv"), "--emit", "ast")
    assert "  block nin(channels, kernel, stride, padding)  @5:1" in out
    assert "(((H + (2 * padding)) - kernel) // stride) + 1" in out  # the parser's grouping, explicit
    assert "layer nin(96, kernel=11, stride=4, padding=0) -> [N, 96, 54, 54]" in out  # not expanded
    _, out, _ = cli(capsys, "compile", str(EXAMPLES / "vgg11.conv"), "--emit", "ast")
    assert "    repeat convs  @5:5\n      layer conv(channels, kernel=3, padding=1)  @6:9\n" in out
    _, out, _ = cli(capsys, "compile", str(EXAMPLES / "symbolic_where.conv"), "--emit", "ast")
    assert "    where H % 4 == 0  @4:90" in out and "    output [N, 8, (H // 4) - 1, (W // 4) - 1]" in out


def test_model_is_flattened_and_symbolic(capsys):
    _, out, _ = cli(capsys, "compile", str(EXAMPLES / "vgg11_small.conv"), "--emit", "model")
    assert "\n  vgg3.conv2 " in out  # block instances expanded, dotted names
    _, out, _ = cli(capsys, "compile", str(EXAMPLES / "symbolic_where.conv"), "--emit", "model", "--size", "H=32")
    assert "valid for N >= 1, H >= 16 (a multiple of 4), W >= 16 (a multiple of 4)" in out
    conv3 = next(ln for ln in out.splitlines() if ln.startswith("  conv3 "))
    assert conv3.split()[1:11] == ["[N,", "8,", "H", "//", "4,", "W", "//", "4]", "->", "[N,"]  # --size binds
    assert "H // 4 - 1, W // 4 - 1]" in conv3  # only the stages from loops on: the model stays symbolic


def test_loops_are_the_networks_loop_ir(capsys, tmp_path):
    code, out, err = cli(capsys, "compile", LENET, "--emit", "loops")
    assert code == 0 and err == ""
    assert out.startswith("program LeNet")
    assert "buffer conv1.weight" in out and "buffer dense3.bias" in out
    assert out == convdsl.compile(LENET).loops()
    path = tmp_path / "lenet.loops"
    code, _, err = cli(capsys, "compile", LENET, "--emit", "loops", "-o", str(path))
    assert code == 0 and path.read_text() == out and f"wrote {path}" in err


def test_plan_is_the_planning_pass(capsys):
    """``--emit plan`` prints what backend.plan decided, at the host's width (the golden files of
    tests/golden/stages hold both widths)."""
    from convdsl.backend.plan import format_plan, plan
    from convdsl.backend.schedule import Schedule

    code, out, err = cli(capsys, "compile", LENET, "--emit", "plan")
    assert code == 0 and err == ""
    m = convdsl.load(LENET).model()
    assert out == format_plan(plan(m.bind(m.sizes()), Schedule.for_host()))
    assert out.startswith("plan LeNet") and "conv1: conv(6, kernel=5, padding=2)" in out
    assert convdsl.emit(LENET, "plan", schedule=Schedule.for_width(8)) == \
        (Path(__file__).parent / "golden" / "stages" / "lenet.LeNet.w8.plan").read_text()


def test_time_passes_lists_every_stage(capsys):
    code, out, err = cli(capsys, "compile", LENET, "--emit", "model", "--time-passes")
    assert code == 0 and out.startswith("model LeNet")
    stages = [line.split("%", 1)[1].strip() for line in err.splitlines() if "%" in line]
    assert stages == ["parse", "check", "bind", "plan", "lower + verify", "unroll", "valnum", "verify", "codegen",
                      "llvm (optimise, object code, load)"]
    assert "total" in err.splitlines()[-1]
    timings = convdsl.time_passes(LENET)
    assert [name for name, _ in timings][:3] == ["parse", "check", "bind"] and all(s >= 0 for _, s in timings)


def test_emit_api_and_bad_stage(capsys):
    program = convdsl.load(LENET)
    assert convdsl.emit(program, "model") == convdsl.emit(LENET, "model")
    assert isinstance(convdsl.emit(program, "obj"), bytes)
    with pytest.raises(ValueError, match="unknown stage 'plans'"):
        convdsl.emit(program, "plans")
    with pytest.raises(SystemExit) as e:  # (argparse's exit, as for every bad option)
        main(["compile", LENET, "--emit", "plans"])
    assert e.value.code == 2 and "invalid choice: 'plans'" in capsys.readouterr().err
    assert cli(capsys, "compile", str(EXAMPLES / "anysize.conv"), "--emit", "model", "--size", "H=3")[0] == 2


def test_check_command_loads_no_numpy_or_llvm():
    """The whole `convdsl check` command (its parser registers run, compile and bench too) stays light."""
    code = ("import sys\nfrom convdsl.tools.cli import main\n"
            "assert main(['check', 'examples/lenet.conv', '--json']) == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('llvmlite', 'numpy'))\n"
            "print(heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stderr.strip() == "[]", r.stderr


def test_weights_beside_the_program_or_seeded_random(tmp_path):
    src = tmp_path / "lenet.conv"
    src.write_text((EXAMPLES / "lenet.conv").read_text())
    net = convdsl.compile(str(src), convdsl.BESIDE)
    assert net.random_weights and "seed 0" in net.weights_description
    random = convdsl.compile(str(src), None).weights()
    np.testing.assert_array_equal(net.weights()["conv1.weight"], random["conv1.weight"])  # seeded: the same
    (tmp_path / "lenet.npz").write_bytes((EXAMPLES / "lenet.npz").read_bytes())
    net = convdsl.compile(str(src), convdsl.BESIDE)
    assert not net.random_weights and net.weights_description == str(tmp_path / "lenet.npz")
    np.testing.assert_array_equal(net.weights()["dense3.bias"], np.load(EXAMPLES / "lenet.npz")["dense3.bias"])


def test_sizes_are_checked_before_code_is_made():
    net = convdsl.compile(str(EXAMPLES / "anysize.conv"))
    with pytest.raises(convdsl.BoundaryError, match="H >= 12"):
        net.bind({"H": 4, "W": 12})
    with pytest.raises(convdsl.BoundaryError, match="has no size 'C'"):
        convdsl.api.resolve_sizes(net.model, {"C": 3})
    assert convdsl.host_cpu().name
