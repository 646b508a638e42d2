"""The FMA-throughput kernel behind ``fma_peak_gflops``: its IR and assembly at 8 and 16 lanes, its
result against the recurrence computed in float64, and the measured figure's sanity (no timed bounds)."""

import ctypes
import math
import re

import numpy as np
import pytest
from widths import BOTH

import convdsl
from convdsl.api import max_threads
from convdsl.backend.peak import ACCUMULATORS, FUNCTION, UNROLL, fma_asm, fma_kernel, fma_module
from convdsl.backend.schedule import host_features
from convdsl.runtime.peak import fma_peak

# a CPU of each width, whatever the host: the other width's code is assembled, never run
CPU_OF_WIDTH = {8: ("znver3", ""), 16: ("skylake-avx512", "")}
REGISTER = {8: "ymm", 16: "zmm"}


@pytest.mark.parametrize("width", BOTH)
def test_ir_is_vector_fma_at_the_width_asked(width):
    text = str(fma_module(width))
    calls = re.findall(rf'call <{width} x float> @"llvm\.fma\.v{width}f32"', text)
    assert len(calls) == ACCUMULATORS * UNROLL
    assert f'"min-legal-vector-width"="{32 * width}"' in text
    # every accumulator is stored: nothing for the optimiser to remove
    assert len(re.findall(rf"store <{width} x float>", text)) == ACCUMULATORS


@pytest.mark.parametrize("width", BOTH)
def test_assembly_is_packed_fma_on_the_widths_registers(width):
    cpu, feats = CPU_OF_WIDTH[width]
    asm = fma_asm(width, cpu, feats)
    body = asm[asm.index(f"{FUNCTION}:"):]
    fmas = re.findall(rf"vfmadd\w+ps\s+[^\n]*%{REGISTER[width]}\d+", body)
    assert len(fmas) == ACCUMULATORS * UNROLL, body[:2000]
    # independent chains: as many distinct destination registers as accumulators (no spills, no merging)
    dests = {re.findall(rf"%{REGISTER[width]}\d+", f)[-1] for f in fmas}
    assert len(dests) == ACCUMULATORS


def _widths_this_host_runs():
    return [w for w in BOTH if w == 8 or host_features().get("avx512f")] + [1]


@pytest.mark.parametrize("width", _widths_this_host_runs())
def test_kernel_computes_the_recurrence(width):
    """acc_k <- acc_k * a + b, from 1 + k/64, for n x UNROLL steps: against float64 (fma rounds once)."""
    k = fma_kernel(width)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_void_p)(k.address)
    out = np.zeros(k.out_floats, np.float32)
    a, b, n = np.float32(0.75), np.float32(0.5), 3
    fn(n, a, b, out.ctypes.data)
    acc = 1.0 + np.repeat(np.arange(ACCUMULATORS), width) / 64
    for _ in range(n * UNROLL):
        acc = acc * float(a) + float(b)
    np.testing.assert_allclose(out, acc, rtol=1e-6)
    fn(0, a, b, out.ctypes.data)  # no iteration: the starting values
    np.testing.assert_allclose(out, 1.0 + np.repeat(np.arange(ACCUMULATORS), width) / 64, rtol=1e-7)


def test_measured_peak_is_positive_and_finite():
    one = fma_peak(8 if not host_features().get("avx512f") else 16, threads=1, seconds=0.01, repeat=1)
    assert math.isfinite(one) and one > 0
    p = convdsl.fma_peak(2, seconds=0.01, repeat=1)
    assert math.isfinite(p.gflops) and p.gflops > 0
    assert p.width == convdsl.Schedule.for_host().vector_width and p.accumulators == ACCUMULATORS
    assert p.threads == min(2, max_threads())


def test_threads_beyond_the_cap_are_clamped_and_bad_ones_refused():
    assert convdsl.fma_peak(10_000, seconds=0.005, repeat=1).threads == max_threads()
    with pytest.raises(convdsl.BoundaryError, match="at least 1"):
        convdsl.fma_peak(0)
