"""The compile cache on disk: a second run of the same model skips LLVM.

An entry is the optimised module's object code plus its LLVM IR (for
``--emit llvm``/``asm`` on a cache hit), stored in the user's cache directory
(:func:`convdsl.core.paths.cache_dir`) under a SHA-256 key of everything that
changes the generated code: the program's source text, the concrete model
(ops, arguments, shapes, names), the schedule, the host CPU's name and
features, and the convdsl, llvmlite and LLVM versions.  Weights *values* are
not part of the key: they are packed at run time and passed by pointer.

Every entry carries a SHA-256 digest of its key, object code and IR, checked before LLVM sees a
byte of it: a damaged entry (a flipped bit, a truncated file) is a miss, said in one line on
stderr, and rewritten; never a crash or a different answer.  Entries are written atomically (temp
file + rename), so concurrent runs, and a run killed while writing, never leave half a file.  A
cache directory that cannot be written is said once per process, and the compile goes on without
it (entries already there are still read).  ``docs/limits.md`` states the promise.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
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


# An entry: MAGIC | SHA-256 digest | object length (8 bytes, little-endian) | object | zlib(IR).
# The digest covers the key, the length, the object and the IR: a flipped bit anywhere, a truncated
# file, or an entry copied under another key's name is a mismatch.  Without it a flip in the
# object's constants gave wrong outputs with exit 0, and one in its code crashed LLVM's loader
# (an abort, not an exception) on every later run.
MAGIC = b"convdsl-object\x00\x01"  # (the last byte: the entry format)
_HEAD = len(MAGIC) + 32 + 8
_STALE_TMP_SECONDS = 3600.0  # a temp file this old belongs to a process that died writing it

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, message: str) -> None:
    """One line on stderr, once per process for each ``what``: the cache is a speed-up, so its
    problems never stop a compile, but they are not silent either."""
    with _warned_lock:
        if what in _warned:
            return
        _warned.add(what)
    print(f"convdsl: warning: {message}", file=sys.stderr)


def _objects() -> Path:
    from ..core.paths import cache_root

    return cache_root() / "objects"


def _digest(key: str, body: bytes) -> bytes:
    return hashlib.sha256(MAGIC + key.encode() + body).digest()


def _pack(key: str, obj: bytes, llvm_ir: str) -> bytes:
    body = len(obj).to_bytes(8, "little") + obj + zlib.compress(llvm_ir.encode(), 1)
    return MAGIC + _digest(key, body) + body


def _unpack(key: str, data: bytes) -> tuple[bytes, str]:
    """The object code and IR of an entry, or ValueError saying what is wrong with it."""
    if len(data) < _HEAD:
        raise ValueError(f"truncated: {len(data)} bytes")
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("not a convdsl cache entry")
    digest, body = data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if _digest(key, body) != digest:
        raise ValueError("checksum mismatch")
    n = int.from_bytes(body[:8], "little")
    if n <= 0 or 8 + n > len(body):  # (a consistent digest makes this our own bug: still a miss)
        raise ValueError("bad object length")
    return body[8:8 + n], zlib.decompress(body[8 + n:]).decode()


def load(key: str) -> JitModule | None:
    """The cached native code under ``key``, or None: no entry, or one that is damaged (its
    digest does not match; a one-line warning says so, and the caller rebuilds and overwrites it)."""
    path = _objects() / f"{key}.bin"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        _warn_once(f"read {path}", f"cannot read compile cache entry {path} ({e.strerror}); compiling afresh")
        return None
    try:
        obj, text = _unpack(key, data)
    except (ValueError, zlib.error, UnicodeDecodeError) as e:
        _warn_once(f"damaged {path}", f"compile cache entry {path} is damaged ({e}); compiling afresh and "
                   "replacing it")
        return None
    try:
        return JitModule.from_object(obj, text)
    except RuntimeError as e:  # (verified bytes LLVM still refuses: an entry from an incompatible LLVM)
        _warn_once(f"damaged {path}", f"compile cache entry {path} does not load ({e}); compiling afresh")
        return None


def store(key: str, jit: JitModule) -> None:
    """Write the entry atomically (temp file, then rename): a process killed at any point leaves the
    old entry or the new one, never part of one.  A cache that cannot be written is said once."""
    d = _objects()
    try:
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / f"{key}.bin", _pack(key, jit.object_code(), jit.llvm_ir))
    except OSError as e:
        _warn_once(f"write {d}", f"cannot write the compile cache in {d} ({e.strerror or e}); every run "
                   "compiles afresh (set CONVDSL_CACHE_DIR to a writable directory)")
        return
    _sweep(d)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _sweep(d: Path) -> None:
    """Remove the temp files of writers that died before their rename (they are never read)."""
    now = time.time()
    try:
        for p in d.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                    p.unlink()
            except OSError:
                pass
    except OSError:
        pass
