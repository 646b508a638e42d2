"""The machine's FMA throughput peak, measured by code this back end generates.

``% of peak`` must be quoted against what the *core* can do, not against a BLAS kernel whose
speed depends on how the library was built and on ``OPENBLAS_CORETYPE``.  The kernel here is the
limit the compiled networks themselves face: ``<W x float>`` ``llvm.fma`` at the schedule's
vector width, compiled by the same JIT for the host CPU name and features.

``convdsl_fma_peak(i64 n, float a, float b, float* out)`` runs ``n`` iterations of
``UNROLL x accumulators`` fused multiply-adds ``acc_k = acc_k * a + b``.  Why this shape:

* each FMA depends on the previous one of its accumulator only, so with ``accumulators >=
  latency x pipes`` (4 cycles x 2 FMA pipes on Zen 3 and Skylake-X: 8) both pipes issue every
  cycle.  Measured on znver3 (1 thread, GFLOP/s): 6 accumulators 75, 8 to 14 accumulators 103,
  16 accumulators 58 (16 accumulators and the two splatted constants do not fit the 16 ymm
  registers: spills).  12 leaves room on both sides (and AVX-512 has 32 registers);
* ``a`` and ``b`` are arguments, so LLVM cannot fold the chain, and the accumulators are stored
  to ``out`` at the end, so nothing is dead;
* with ``0 < a < 1`` the chain converges to ``b / (1 - a)``: the values stay normal floats
  (a denormal would cost a micro-code assist per FMA and measure the wrong thing);
* the body is unrolled ``UNROLL`` times here because the JIT keeps LLVM's unroller off (on znver3
  it measured the same unrolled or not: the loop's increment, compare and branch go to the integer
  pipes; unrolled, a core with fewer of those is not limited by them either).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from llvmlite import ir

from .codegen import _FnAttrs
from .jit import JitModule, _optimised, target_machine

FUNCTION = "convdsl_fma_peak"
ACCUMULATORS = 12
UNROLL = 4
F32 = ir.FloatType()
I64 = ir.IntType(64)


def fma_module(width: int, accumulators: int = ACCUMULATORS, unroll: int = UNROLL) -> ir.Module:
    """The throughput kernel for ``width``-lane float vectors (1: scalar ``float``), as an
    ``llvmlite.ir`` module."""
    if width < 1 or width & (width - 1):
        raise ValueError(f"the vector width must be a power of two, not {width}")
    if accumulators < 1 or unroll < 1:
        raise ValueError("accumulators and unroll must be at least 1")
    vt: ir.Type = F32 if width == 1 else ir.VectorType(F32, width)
    mod = ir.Module(name="fma_peak")
    suffix = "f32" if width == 1 else f"v{width}f32"
    fma = ir.Function(mod, ir.FunctionType(vt, [vt, vt, vt]), name=f"llvm.fma.{suffix}")
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, F32, F32, F32.as_pointer()]), name=FUNCTION)
    n, a, b, out = fn.args
    n.name, a.name, b.name, out.name = "n", "a", "b", "out"
    attrs = _FnAttrs()
    attrs.add("nounwind")
    if width > 1:  # (as the networks' kernels: else AVX-512 hosts that prefer 256 bits split zmm in two)
        attrs.add(f"prefer-vector-width={32 * width}")
        attrs.add(f"min-legal-vector-width={32 * width}")
    fn.attributes = attrs
    out.add_attribute("noalias")

    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    bld = ir.IRBuilder(entry)

    def splat(x: ir.Value) -> ir.Value:
        if width == 1:
            return x
        v = bld.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
        return bld.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                                               [0] * width))

    va, vb = splat(a), splat(b)
    # distinct starting values, so that no two accumulators are provably equal (and merged)
    init = [ir.Constant(vt, 1.0 + k / 64) if width == 1 else ir.Constant(vt, [1.0 + k / 64] * width)
            for k in range(accumulators)]
    bld.cbranch(bld.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)

    bld.position_at_end(loop)
    i = bld.phi(I64, "i")
    accs = [bld.phi(vt, f"acc{k}") for k in range(accumulators)]
    cur: list[ir.Value] = list(accs)
    for _ in range(unroll):
        cur = [bld.call(fma, [c, va, vb]) for c in cur]
    i_next = bld.add(i, ir.Constant(I64, 1))
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(i_next, loop)
    for phi, start, end in zip(accs, init, cur):
        phi.add_incoming(start, entry)
        phi.add_incoming(end, loop)
    bld.cbranch(bld.icmp_signed("<", i_next, n), loop, done)

    bld.position_at_end(done)
    results = [bld.phi(vt, f"res{k}") for k in range(accumulators)]
    for res, start, end in zip(results, init, cur):
        res.add_incoming(start, entry)
        res.add_incoming(end, loop)
    vptr = out if width == 1 else bld.bitcast(out, vt.as_pointer())
    for k, res in enumerate(results):
        bld.store(res, bld.gep(vptr, [ir.Constant(I64, k)], inbounds=True, source_etype=vt), align=4)
    bld.ret_void()
    return mod


@dataclass(frozen=True)
class FmaKernel:
    """The compiled kernel: call ``address`` as ``void (i64 n, float a, float b, float* out)`` with
    ``out`` holding ``out_floats`` floats; one call does ``flops_per_iteration * n`` flops."""

    jit: JitModule
    address: int
    width: int
    accumulators: int
    unroll: int

    @property
    def flops_per_iteration(self) -> int:
        return 2 * self.width * self.accumulators * self.unroll  # (an FMA is two flops)

    @property
    def out_floats(self) -> int:
        return self.width * self.accumulators


@lru_cache(maxsize=8)
def fma_kernel(width: int, accumulators: int = ACCUMULATORS, unroll: int = UNROLL) -> FmaKernel:
    """The kernel compiled for this host (at ``width``; use the host schedule's width to measure
    the host's peak: a wider vector than the host's is split by LLVM)."""
    jit = JitModule(fma_module(width, accumulators, unroll))
    return FmaKernel(jit, jit.address(FUNCTION), width, accumulators, unroll)


def fma_asm(width: int, cpu: str, features: str = "", accumulators: int = ACCUMULATORS,
            unroll: int = UNROLL) -> str:
    """The kernel's assembly for another CPU (``skylake-avx512``, ``znver3``; ``features`` as
    ``+avx512f,...``): how the other width's code is shown without running it."""
    tm = target_machine(cpu, features)
    # the JIT's own optimisation pipeline, so the assembly shown is the code that is measured
    parsed, _pb = _optimised(fma_module(width, accumulators, unroll), tm, 3)
    return tm.emit_assembly(parsed)
