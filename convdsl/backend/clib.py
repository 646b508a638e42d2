"""The C library: the compiled network as ``p_run`` / ``p_workspace_size``, with its weights inside.

``add_entries(module, lowered, weights, prefix)`` extends the module that
:func:`.codegen.codegen` made for the JIT (the same kernels and the same entry
``<model>_forward``, so the library computes exactly what ``convdsl run``
computes) with

* the packed weight arena as a 64-byte aligned constant global: the library
  needs no weights file, and the pages are shared by every process using it;
* ``size_t p_workspace_size(int64_t batch)``: the bytes of the scratch arena
  (one batch tile's activations: the same for every batch of at least one
  image, 0 for a batch below one);
* ``int p_run(const float *input, float *output, int64_t batch, void *workspace)``:
  the arguments checked (:class:`Status`), the workspace made into a fresh
  scratch arena (zeroed, halos filled: what ``runtime.compiled.new_scratch``
  does once per thread, done on every call because the library keeps no state
  and a workspace may have held anything since), then the forward entry,
  which walks the batch in the plan's tiles on the calling thread.

Every other symbol of the module becomes ``internal``: the JIT's thread-team
entries are then unused and LLVM drops them, so the library starts no threads
and exports its two entry points only (``nm -D``).

:func:`header` writes the matching ``.h``; :func:`link_shared` makes the
``.so`` from the object with the system C compiler.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from enum import IntEnum
from math import prod

import numpy as np
from llvmlite import ir

from .codegen import entry_name
from .lower import Lowered

I8 = ir.IntType(8)
I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
PTR = ir.PointerType()

WORKSPACE_ALIGN = 64  # bytes: the arena's regions sit at multiples of 64 bytes (lower.ALIGN floats)


class Status(IntEnum):
    """``p_run``'s return values (``P_OK``, ``P_ERR_BATCH``, ... in the header)."""

    OK = 0
    ERR_BATCH = 1  # batch < 1, or so large that the arrays' byte sizes overflow int64
    ERR_NULL = 2  # input, output or workspace is a null pointer
    ERR_ALIGN = 3  # the workspace is not 64-byte aligned


@dataclass(frozen=True, slots=True)
class Names:
    """The C names of a model's library: ``LeNet`` -> ``lenet_run``, ``LENET_IN_C``."""

    model: str

    @property
    def lower(self) -> str:
        return self.model.lower()

    @property
    def upper(self) -> str:
        return self.model.upper()

    @property
    def run(self) -> str:
        return f"{self.lower}_run"

    @property
    def workspace_size(self) -> str:
        return f"{self.lower}_workspace_size"

    @property
    def exported(self) -> tuple[str, ...]:
        """Every symbol the library defines for its users (what ``nm -D`` lists as defined)."""
        return (self.run, self.workspace_size)


def workspace_bytes(lowered: Lowered) -> int:
    """What ``p_workspace_size(batch)`` returns for a batch of at least one image."""
    return 4 * lowered.program.scratch_size


def add_entries(module: ir.Module, lowered: Lowered, weights: np.ndarray, names: Names) -> None:
    """Add the library's entry points and weight constant to ``module`` (codegen's, of ``lowered``),
    and make everything else in it internal.  ``weights``: the packed arena
    (``lowered.packing.pack``), float32."""
    prog = lowered.program
    for g in list(module.global_values):
        if not g.is_declaration:
            g.linkage = "internal"
    forward = module.globals[entry_name(prog)]
    assert isinstance(forward, ir.Function)

    data = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    arena_t = ir.ArrayType(I8, len(data))
    # (a space: no model, kernel or entry name has one, so this name is free in any module)
    arena = ir.GlobalVariable(module, arena_t, name=f"{names.lower} weights")
    arena.linkage = "internal"
    arena.global_constant = True
    arena.align = WORKSPACE_ALIGN  # (the kernels' packed layouts assume a 64-byte aligned arena)
    arena.initializer = ir.Constant(arena_t, bytearray(data))

    scratch = workspace_bytes(lowered)
    fn = ir.Function(module, ir.FunctionType(I64, [I64]), name=names.workspace_size)
    fn.attributes.add("nounwind")
    (batch,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(b.select(b.icmp_signed("<", batch, ir.Constant(I64, 1)), ir.Constant(I64, 0), ir.Constant(I64, scratch)))

    fn = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, I64, PTR]), name=names.run)
    fn.attributes.add("nounwind")
    x, y, n, ws = fn.args
    for arg, nm in zip(fn.args, ("input", "output", "batch", "workspace")):
        arg.name = nm
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def fail_unless(ok: ir.Value, status: Status) -> None:
        bad = fn.append_basic_block(f"err{int(status)}")
        good = fn.append_basic_block(f"ok{int(status)}")
        b.cbranch(ok, good, bad)
        b.position_at_end(bad)
        b.ret(ir.Constant(I32, int(status)))
        b.position_at_end(good)

    # the forward entry computes image offsets as batch * floats per image, in int64
    per_image = max(prog.buffer("input").size, prog.buffer("output").size, 1)
    most = (2 ** 63 - 1) // (4 * per_image)
    fail_unless(b.and_(b.icmp_signed(">=", n, ir.Constant(I64, 1)), b.icmp_signed("<=", n, ir.Constant(I64, most))),
                Status.ERR_BATCH)
    null = ir.Constant(PTR, None)
    none_null = b.and_(b.and_(b.icmp_unsigned("!=", x, null), b.icmp_unsigned("!=", y, null)),
                       b.icmp_unsigned("!=", ws, null))
    fail_unless(none_null, Status.ERR_NULL)
    low = b.and_(b.ptrtoint(ws, I64), ir.Constant(I64, WORKSPACE_ALIGN - 1))
    fail_unless(b.icmp_unsigned("==", low, ir.Constant(I64, 0)), Status.ERR_ALIGN)

    memset = module.globals.get("llvm.memset.p0.i64") or ir.Function(
        module, ir.FunctionType(ir.VoidType(), [PTR, I8, I64, I1]), name="llvm.memset.p0.i64")
    b.call(memset, [ws, ir.Constant(I8, 0), ir.Constant(I64, scratch), ir.Constant(I1, 0)])
    for buf in prog.buffers:
        if buf.kind == "scratch" and buf.fill != 0.0:
            _fill(fn, b, ws, buf.offset, buf.size, buf.fill)
    b.call(forward, [x, y, arena, ws, n])
    b.ret(ir.Constant(I32, int(Status.OK)))


def _fill(fn: ir.Function, b: ir.IRBuilder, ws: ir.Value, offset: int, size: int, value: float) -> None:
    """``ws[offset : offset + size] = value`` (floats), as a loop at the builder's position."""
    head = b.block
    loop = fn.append_basic_block(f"fill{offset}")
    done = fn.append_basic_block(f"filled{offset}")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, offset), head)
    b.store(ir.Constant(F32, value), b.gep(ws, [i], inbounds=True, source_etype=F32), align=4)
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, ir.Constant(I64, offset + size)), loop, done)
    b.position_at_end(done)


def header(names: Names, lowered: Lowered, about: str) -> str:
    """The C header of the library (C99; names and meanings as ``docs/interop.md`` gives them).
    ``about``: a line saying what was compiled (model, file, sizes, weights, CPU)."""
    p, P = names.lower, names.upper
    shape = lowered.input_shape
    c, h, w = shape  # (a model's input is [N, C, H, W]: the checker requires it)
    out = lowered.output_shape
    guard = f"CONVDSL_{P}_H"
    lines = [
        f"/* {p}: a convolutional network compiled by convdsl into a C library.",
        f"   {about}",
        "   The weights are inside the library; it needs nothing at run time but",
        "   libc.  Every buffer is the caller's: the library allocates nothing, keeps",
        "   no state between calls and starts no threads. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {P}_IN_C {c}              /* input  [N, {P}_IN_C, {P}_IN_H, {P}_IN_W] */",
        f"#define {P}_IN_H {h}",
        f"#define {P}_IN_W {w}",
        f"#define {P}_IN_SIZE {prod(shape)}  /* floats per image of the input           */",
        f"#define {P}_OUT_SIZE {prod(out)}  /* floats per image of the output: [N, {', '.join(map(str, out))}] */",
        f"#define {P}_WORKSPACE_ALIGN {WORKSPACE_ALIGN}  /* bytes: the workspace's alignment */",
        "",
        f"/* {p}_run's return values */",
        *(f"#define {P}_{s.name} {int(s)}" + {
            Status.OK: "          /* success */",
            Status.ERR_BATCH: "   /* batch < 1 (or past what int64 byte sizes hold) */",
            Status.ERR_NULL: "    /* input, output or workspace is NULL */",
            Status.ERR_ALIGN: "   /* workspace is not 64-byte aligned */",
        }[s] for s in Status),
        "",
        f"/* Bytes of scratch for a batch: the same for every batch >= 1 (the network",
        f"   runs in tiles of {lowered.batch_tile} images), 0 for a batch < 1. */",
        f"size_t {p}_workspace_size(int64_t batch);",
        "",
        "/* Runs the network on `batch` images (NCHW float32, contiguous) into",
        f"   `output` (batch * {P}_OUT_SIZE floats), using `workspace` (at least",
        f"   {p}_workspace_size(batch) bytes, 64-byte aligned; its contents on entry",
        "   do not matter and are garbage after).  Returns 0 on success, non-zero",
        "   for a bad argument (batch < 1, a null pointer, a misaligned workspace),",
        "   touching nothing then.  `output` must not overlap `input` or `workspace`.",
        "   Thread-safe for distinct workspaces; allocates nothing and starts no",
        "   threads: it runs on the calling thread. */",
        f"int {p}_run(const float *input, float *output, int64_t batch, void *workspace);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)


class LinkError(RuntimeError):
    """No C compiler, or the compiler failed to link the object into a shared library."""


def c_compiler() -> list[str]:
    """The system C compiler as the start of a command line: ``$CC`` if set (split as a shell
    would: ``ccache gcc``, ``gcc -m64``), else the first of ``cc``, ``gcc``, ``clang`` found;
    :class:`LinkError` if there is none."""
    env = os.environ.get("CC", "").strip()
    try:
        words = shlex.split(env)
    except ValueError:
        words = [env]
    if words:
        found = shutil.which(words[0])
        command = [found, *words[1:]] if found else None
    else:
        cc = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
        command = [cc] if cc else None
    if command is None:
        where = f"$CC ({env!r})" if env else "cc, gcc or clang"
        raise LinkError(f"no C compiler found to link the shared library (looked for {where}): install one "
                        "(apt-get install gcc) or set CC to one")
    return command


def link_shared(obj: str, so: str) -> None:
    """``cc -shared OBJ -o SO -lm -lpthread``: the shared library of an object."""
    cc = c_compiler()
    try:
        r = subprocess.run([*cc, "-shared", obj, "-o", so, "-lm", "-lpthread"], capture_output=True, text=True,
                           timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise LinkError(f"{cc} could not link the shared library: {e}") from None
    if r.returncode != 0:
        raise LinkError(f"{cc} -shared failed (exit status {r.returncode}):\n{(r.stderr or r.stdout).strip()}")
