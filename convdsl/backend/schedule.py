"""The schedule: *how* the back end computes a network, never *what*.

A :class:`Schedule` is handed to :func:`convdsl.backend.lower.lower` next to the
concrete model.  It fixes the SIMD width, the register blocking of the
convolution and dense micro-kernels, the batch tile and a few loop-order
choices.  Every schedule computes the same function; tests run the scalar
schedule (``vector_width=1``) and the vectorised one against one reference.

``Schedule.for_host()`` derives the defaults from the host CPU as LLVM sees it
(``llvmlite.binding.get_host_cpu_features``): 16 lanes with AVX-512F, 8 with
AVX2/FMA (or AVX), 4 otherwise (SSE / NEON class).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal


@dataclass(frozen=True, slots=True)
class Schedule:
    vector_width: int = 8  # floats per SIMD vector; 1 = scalar code
    vector_registers: int = 16  # architectural SIMD registers (register-block budget)
    oc_block: int = 2  # output-channel vectors per conv micro-kernel (max)
    ow_block: int = 7  # output-width positions per conv micro-kernel (max)
    dense_out_block: int = 3  # output-feature vectors per dense micro-kernel (max)
    dense_batch_block: int = 4  # images per dense micro-kernel (max)
    batch_tile: int = 8  # images per pass through the whole network (scratch holds one tile)
    # bytes a batch tile's activations may take per thread; past it the tile shrinks (to one image
    # at worst) so that big images do not cost batch_tile images of scratch each
    scratch_budget: int = 512 << 20
    # a network ending in dense layers with at least this many bytes of weights runs them on tiles of
    # ``dense_tile`` images (rounded up to whole batch tiles), so their weights stream from memory
    # once per dense tile rather than once per batch tile (see convdsl.backend.lower)
    dense_tile: int = 64
    dense_tail_bytes: int = 1 << 20
    # 3x3 stride-1 convs by Winograd F(2x2, 3x3) (2.25x fewer multiplies; vector schedules only)
    # where both channel counts are at least winograd_min_channels and their product at least twice
    # its square
    winograd: bool = True
    winograd_min_channels: int = 16
    unroll_kernel_w: bool = True  # fully unroll the kw loop of conv and pool windows
    oc_outer: bool = True  # conv loop order: output-channel blocks outside rows (else rows outside)
    # a following non-overlapping pool in the conv micro-kernel's epilogue: "auto" where that keeps
    # the register block as large, "always" wherever legal, "off" never
    fuse_pool: Literal["off", "auto", "always"] = "auto"
    profile: bool = False  # the entry accumulates each stage's cycle count (``CompiledModel.profile``)
    # intra-image threading: models of at least this many multiply-adds per image also get per-stage
    # range entries, so a batch smaller than the thread count splits each heavy stage across threads
    # (each split stage costs a thread hand-off, ~10-30 us); 0 = never
    split_macs: int = 20_000_000

    def __post_init__(self) -> None:
        assert self.vector_width >= 1 and self.vector_width & (self.vector_width - 1) == 0
        assert self.oc_block >= 1 and self.ow_block >= 1
        assert self.dense_out_block >= 1 and self.dense_batch_block >= 1
        assert self.batch_tile >= 1 and self.scratch_budget >= 0 and self.dense_tile >= 1 and self.dense_tail_bytes >= 0
        assert self.winograd_min_channels >= 1
        assert self.split_macs >= 0
        assert self.fuse_pool in ("off", "auto", "always")

    @staticmethod
    def for_host() -> "Schedule":
        return _host_schedule()

    @staticmethod
    def for_width(width: int) -> "Schedule":
        """The schedule tuned for hosts of ``width``-lane vectors (16: AVX-512, 8: AVX2, 4: SSE or
        NEON, 1: scalar).  It runs on any host, LLVM splitting vectors wider than the host's, so
        tests of every width run everywhere."""
        if width == 16:
            # 32 zmm registers: wider register blocks fit.
            return Schedule(vector_width=16, vector_registers=32, oc_block=2, ow_block=12, dense_out_block=4,
                            dense_batch_block=6)
        if width == 1:
            return Schedule(vector_width=8, vector_registers=16).scalar()
        return Schedule(vector_width=width, vector_registers=16)

    def scalar(self) -> "Schedule":
        """The same schedule with vectors of one lane (plain scalar code)."""
        return replace(self, vector_width=1)

    @property
    def prefer_vector_bits(self) -> int:
        return 32 * self.vector_width


class TargetError(ValueError):
    """A CPU name LLVM does not know for this target, or one it cannot compile 64-bit code for
    (raised by :func:`convdsl.backend.jit.cpu_target`; here, where it loads no LLVM)."""


def host_features() -> dict[str, bool]:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    return dict(llvm.get_host_cpu_features())


@lru_cache(maxsize=1)
def _host_schedule() -> Schedule:
    feats = host_features()
    if feats.get("avx512f"):
        return Schedule.for_width(16)
    if feats.get("avx2") or feats.get("avx") or feats.get("fma"):
        return Schedule.for_width(8)
    return Schedule.for_width(4)
