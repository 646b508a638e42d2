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
from functools import lru_cache
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from . import __version__
from .jit import JitModule, _init
from .model import ConcreteModel
from .schedule import Schedule


_BACKEND_SOURCES = ("loopir.py", "lower.py", "codegen.py", "jit.py", "schedule.py", "backend.py")


@lru_cache(maxsize=1)
def backend_fingerprint() -> str:
    """A hash of the code generator's own source, so that any change to it invalidates old entries.

    The version number alone would trust object code from an edited checkout."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _BACKEND_SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def cache_key(cm: ConcreteModel, schedule: Schedule, source: str) -> str:
    _init()
    parts = [
        f"convdsl {__version__}",
        "backend " + backend_fingerprint(),
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
            return CompiledModel(cm, schedule, lowered, JitModule.from_object(obj, text)), True
        except (OSError, ValueError, zlib.error, RuntimeError):
            pass  # corrupt or stale: rebuild below
    compiled = compile_model(cm, schedule)
    if path is not None:
        _write_atomic(path, _pack(compiled.object_code(), compiled.llvm_ir))
    return compiled, False
