"""Lowering decisions, tested on the plan alone (no LLVM: convdsl.backend.plan imports none)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from convdsl.backend.lower import lower
from convdsl.backend.plan import format_plan, plan
from convdsl.backend.schedule import Schedule
from netbuild import act, conv, dense, flatten, gap, lenet, net, pool

S8, S16 = Schedule.for_width(8), Schedule.for_width(16)


def labels(model, s=S8):
    return [st.label for st in plan(model.bind({}), s).steps]


def test_plan_needs_no_llvm():
    code = ("import sys; from convdsl.backend.plan import plan; "
            "print([m for m in sys.modules if m.split('.')[0] == 'llvmlite'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pool_fusion_follows_the_register_block():
    """LeNetReLU at 8 lanes: conv1 (one channel vector, 2 windows x 4 = 8 accumulators >= the
    plain 7) fuses with its pool; conv2 (two channel vectors: 8 < 12) does not; a sigmoid before
    an average pool never does (it would be taken per conv output)."""
    assert labels(lenet(relu=True))[1:4] == ["conv1+maxpool1", "conv2", "maxpool2"]
    assert labels(lenet(relu=True), replace(S8, fuse_pool="off"))[1:5] == ["conv1", "maxpool1", "conv2", "maxpool2"]
    assert labels(lenet())[1:3] == ["conv1", "avgpool1"]
    # 16 lanes: one channel vector of 10 positions plain, 2 windows x 4 fused: the plain block wins
    assert labels(lenet(relu=True), S16)[1:3] == ["conv1", "maxpool1"]
    fused = plan(lenet(relu=True).bind({}), S8).steps[1]
    assert fused.pool is not None and fused.pool.name == "maxpool1" and fused.epilogue == ("relu",)
    assert fused.out is not None and fused.out.C == 6 and (fused.out.H, fused.out.W) == (14, 14)


def test_exp_activations_run_in_a_pass_after_the_micro_kernel():
    st = plan(lenet().bind({}), S8).steps[1]
    assert (st.name, st.epilogue, st.after) == ("conv1", (), ("sigmoid",))
    st = plan(lenet(relu=True).bind({}), S8).steps[2]
    assert (st.name, st.epilogue, st.after) == ("conv2", ("relu",), ())


def test_algorithm_choice():
    big = net((32, 8, 8), conv(32, 3, padding=1), act("relu"))
    assert [st.algorithm for st in plan(big.bind({}), S8).steps] == ["copy", "winograd", "copy"]
    assert plan(big.bind({}), replace(S8, winograd=False)).steps[1].algorithm == "direct"
    assert plan(big.bind({}), S8.scalar()).steps[1].algorithm == "direct"
    small = net((16, 8, 8), conv(16, 3, padding=1))  # 16 -> 16 was measured slower
    assert plan(small.bind({}), S8).steps[1].algorithm == "direct"
    assert plan(net((3, 6, 6), flatten(), dense(5)).bind({}), S8).steps[-2].algorithm == "gemm"


def test_register_blocks_by_width():
    def conv2(s):
        return next(st for st in plan(lenet(relu=True).bind({}), s).steps if st.name == "conv2")

    assert conv2(S8).block == (2, 5)  # two 8-lane vectors of 16 channels, 5 positions: 10 + 2 + 2 <= 15
    assert conv2(S16).block == (1, 10)  # one 16-lane vector, 10 positions (the output width)


def test_halos_and_layouts_come_from_the_consumer():
    p = plan(net((3, 10, 10), conv(8, 3), pool("max", 3, 2, padding=1)).bind({}), S8)
    assert p.skip_pack and p.steps[0].name == "conv1"  # an unpadded conv reads the caller's array
    conv_step = p.steps[0]
    assert conv_step.out is not None and conv_step.out.blocked and conv_step.out.halo == (1, 1, 1, 1)
    assert conv_step.fill == float("-inf")  # the max pool's padding
    p = plan(net((3, 10, 10), conv(8, 3, padding=1)).bind({}), S8)
    assert not p.skip_pack and p.steps[0].out is not None and not p.steps[0].out.blocked
    assert p.steps[0].out.halo == (1, 1, 1, 1)  # the copy in makes the conv's padding


def test_split_axis_and_parts():
    m = lenet(relu=True).bind({})
    p = plan(m, replace(S8, split_macs=1))
    assert p.split
    by = {st.label: (st.split, st.parts) for st in p.steps}
    assert by["conv1+maxpool1"] == ("rows", 14) and by["conv2"] == ("rows", 10) and by["maxpool2"] == ("rows", 5)
    assert by["dense1"] == ("output blocks", 5)  # 120 outputs = 15 vectors in blocks of 3
    assert not plan(m, S8).split
    # each split kernel's extent in the loop program is the plan's part count
    low = lower(m, replace(S8, split_macs=1))
    assert [e for _, e in low.program.stages] == [st.parts for st in p.steps]


def test_dense_tail_levels():
    big = net((3, 8, 8), conv(8, 3, padding=1), pool("max", 2), flatten(), dense(4000), dense(10))  # 1.3 MB
    p = plan(big.bind({}), S8)
    assert p.dense_tile == S8.dense_tile
    assert [(st.label, st.level) for st in p.steps] == [
        ("input", "tile"), ("conv1+maxpool1", "boundary"), ("dense1", "dense"), ("dense2", "dense"),
        ("output", "dense")]
    # the same layers reading the caller's input directly: no boundary kernel may do that
    direct = net((3, 8, 8), conv(8, 3), pool("max", 2), flatten(), dense(4000), dense(10))
    assert plan(direct.bind({}), S8).dense_tile == 0
    assert plan(lenet().bind({}), S8).dense_tile == 0  # 0.24 MB of dense weights: no tail


def test_batch_tile_shrinks_to_the_scratch_budget():
    """Scratch holds one batch tile per thread: past the budget the tile holds as many images as
    fit (at least one), so big images do not cost a fixed 8 images of scratch per thread."""
    m = net((3, 64, 64), conv(16, 3, padding=1), act("relu"), pool("max", 2), conv(32, 3), gap(), flatten(), dense(10))
    cm = m.bind({})
    full = plan(cm, S8)
    per_image = 4 * sum(st.out.size for st in full.steps if st.out is not None and st.level == "tile")
    assert full.batch_tile == S8.batch_tile
    for images in (1, 3, 7):
        p = plan(cm, replace(S8, scratch_budget=images * per_image + per_image // 2))
        assert p.batch_tile == images
        assert f"batch tile {images}" in format_plan(p)
    assert plan(cm, replace(S8, scratch_budget=1)).batch_tile == 1  # never fewer than one image
    assert plan(cm, replace(S8, scratch_budget=8 * per_image)).batch_tile == 8


def test_intra_image_split_dropped_when_its_winograd_regions_break_the_budget():
    m = net((16, 256, 256), conv(32, 3, padding=1), act("relu"), conv(32, 3, padding=1), gap(), flatten(), dense(10))
    cm = m.bind({})
    s = replace(S8, split_macs=1)
    wide = plan(cm, s)
    assert wide.split and wide.winograd_scratch != (0, 0)
    need = 4 * sum(wide.winograd_scratch)
    tight = plan(cm, replace(s, scratch_budget=need // 2))
    assert not tight.split and tight.batch_tile == 1
    assert 4 * sum(tight.winograd_scratch) < need // 4  # one chunk's U and M, not one per chunk
