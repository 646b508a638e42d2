"""The compile cache on disk: a second run of the same model skips LLVM.

An entry is the optimised module's object code plus its LLVM IR (for
``--emit llvm``/``asm`` on a cache hit), stored in the user's cache directory
(:func:`convdsl.paths.cache_dir`) under a SHA-256 key of everything that
changes the generated code: the program's source text, the concrete model
(ops, arguments, shapes, names), the schedule, the host CPU's name and
features, and the convdsl, llvmlite and LLVM versions.  Weights *values* are
not part of the key: they are packed at run time and passed by pointer.

Entries are written atomically (temp file + rename), so concurrent runs never
see half a file; an unreadable entry is treated as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir

from . import __version__
from .jit import JitModule, _init, host_target_machine
from .model import ConcreteModel
from .schedule import Schedule


def cache_key(cm: ConcreteModel, schedule: Schedule, source: str) -> str:
    _init()
    parts = [
        f"convdsl {__version__}",
        f"llvmlite {llvmlite.__version__}",
        "llvm " + ".".join(map(str, llvm.llvm_version_info)),
        "cpu " + llvm.get_host_cpu_name(),
        "features " + llvm.get_host_cpu_features().flatten(),
        "schedule " + repr(schedule),
        "input " + repr(cm.input_shape),
        "source " + hashlib.sha256(source.encode()).hexdigest(),
    ]
    for layer, in_shape, out_shape, op in cm.layers:
        parts.append(f"layer {layer.name} {op!r} {in_shape} -> {out_shape}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class CachedJit(JitModule):
    """A JIT module loaded from cached object code: no parsing, optimising or code generation."""

    def __init__(self, obj: bytes, llvm_ir: str) -> None:  # noqa: D107 (deliberately skips JitModule.__init__)
        _init()
        self.target_machine = host_target_machine(3)
        self.llvm_ir = llvm_ir
        self._module = None
        empty = llvm.parse_assembly(str(ir.Module(name="cached")))
        self._engine = llvm.create_mcjit_compiler(empty, self.target_machine)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self._obj = obj

    @property
    def asm(self) -> str:
        if self._module is None:
            self._module = llvm.parse_assembly(self.llvm_ir)
        return self.target_machine.emit_assembly(self._module)

    def object_code(self) -> bytes:
        return self._obj


def _entry(key: str) -> Path | None:
    from .paths import cache_dir

    root = cache_dir()
    if root is None:
        return None
    d = root / "objects"
    try:
        d.mkdir(exist_ok=True)
    except OSError:
        return None
    return d / f"{key}.bin"


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written is only a slower start


def _pack(obj: bytes, llvm_ir: str) -> bytes:
    text = zlib.compress(llvm_ir.encode(), 1)
    return len(obj).to_bytes(8, "little") + obj + text


def _unpack(data: bytes) -> tuple[bytes, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("truncated cache entry")
    return data[8:8 + n], zlib.decompress(data[8 + n:]).decode()


def compile_cached(cm: ConcreteModel, schedule: Schedule, source: str):
    """``backend.compile_model`` through the disk cache; returns ``(compiled, hit)``."""
    from .backend import CompiledModel, compile_model
    from .lower import lower

    path = _entry(cache_key(cm, schedule, source))
    if path is not None and path.exists():
        try:
            obj, text = _unpack(path.read_bytes())
            lowered = lower(cm, schedule)
            return CompiledModel(cm, schedule, lowered, CachedJit(obj, text)), True
        except (OSError, ValueError, zlib.error, RuntimeError):
            pass  # corrupt or stale: rebuild below
    compiled = compile_model(cm, schedule)
    if path is not None:
        _write_atomic(path, _pack(compiled.object_code(), compiled.llvm_ir))
    return compiled, False
