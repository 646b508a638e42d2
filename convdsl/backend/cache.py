"""The compile cache on disk: a second run of the same model skips LLVM.

An entry is the optimised module's object code plus its LLVM IR (for
``--emit llvm``/``asm`` on a cache hit), stored in the user's cache directory
(:func:`convdsl.core.paths.cache_dir`) under a SHA-256 key of everything that
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

from ..core.version import VERSION as __version__
from ..core.model import ConcreteModel
from .jit import JitModule, _init
from .schedule import Schedule


@lru_cache(maxsize=1)
def backend_fingerprint() -> str:
    """A hash of the whole back-end package's source (every module of ``convdsl.runtime.compiled`` and the
    checked model it reads), so that any change to it invalidates old entries; a new module is
    covered the day it is added.  The version number alone would trust object code from an
    edited checkout."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for path in sorted([*here.glob("*.py"), here.parent / "core" / "model.py"]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
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
    from ..core.paths import cache_dir

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


def load(key: str) -> JitModule | None:
    """The cached native code under ``key``, or None (no cache, a miss, or an unreadable entry)."""
    path = _entry(key)
    if path is None or not path.exists():
        return None
    try:
        obj, text = _unpack(path.read_bytes())
        return JitModule.from_object(obj, text)
    except (OSError, ValueError, zlib.error, RuntimeError):
        return None  # corrupt or stale: the caller rebuilds and overwrites it


def store(key: str, jit: JitModule) -> None:
    path = _entry(key)
    if path is not None:
        _write_atomic(path, _pack(jit.object_code(), jit.llvm_ir))
