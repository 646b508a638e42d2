"""The compile cache never changes an answer: a damaged entry is a miss, said once, and rewritten.

Issue 11 item 2: before entries carried a digest, 38 of 46 single-bit flips in an object's
constants changed LeNet's outputs with exit 0, and flips in its code crashed LLVM's loader on
every later run.  Here every kind of damage (code, constants, the IR kept beside the object, the
header, truncation, an entry under another key's name) must give the uncached answer and one
warning; a cache that cannot be written is said once; a writer killed before its rename leaves no
entry.
"""

import os
import subprocess
import sys
import textwrap
import time

import llvmlite.binding as llvm
import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import convdsl
from convdsl.backend import cache

LENET = EXAMPLES / "lenet.conv"
WEIGHTS = str(EXAMPLES / "lenet.npz")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_warned", set())  # (warnings are once per process: start afresh)
    return d


def _digits():
    from convdsl.data import load_digits

    return load_digits()[0][:64]


def _run(program, x, cache_on=True):
    net = convdsl.compile(program, WEIGHTS, cache=cache_on)
    return net(x), net.last_compile.cache_hit


def _entry(d):
    (entry,) = (d / "objects").glob("*.bin")
    return entry


def _section(obj: bytes, predicate) -> tuple[int, int]:
    """(offset, size) within ``obj`` of its first non-empty section that ``predicate(name, is_text)`` picks."""
    llvm.initialize_native_target()
    for s in llvm.ObjectFileRef.from_data(obj).sections():
        if s.size() and predicate(s.name(), s.is_text()):
            off = obj.find(s.data())
            assert off >= 0
            return off, s.size()
    raise AssertionError("no such section")


def _damage(kind: str, data: bytes) -> bytes:
    head = len(cache.MAGIC) + 32 + 8
    n = int.from_bytes(data[head - 8:head], "little")
    obj = data[head:head + n]
    b = bytearray(data)
    if kind in ("code", "constants"):
        off, size = _section(obj, (lambda name, text: text) if kind == "code"
                             else (lambda name, text: name.startswith(b".rodata")))
        b[head + off + size // 2] ^= 0x10
    elif kind == "ir":  # the compressed IR, the metadata kept for --emit llvm/asm on a hit
        b[head + n + 20] ^= 0x01
    elif kind == "length":
        b[head - 8] ^= 0x04
    elif kind == "digest":
        b[len(cache.MAGIC)] ^= 0x80
    elif kind == "magic":
        b[0] ^= 0x01
    elif kind == "truncated":
        return data[:len(data) // 2]
    elif kind == "header only":
        return data[:head - 3]
    elif kind == "empty":
        return b""
    else:
        raise AssertionError(kind)
    return bytes(b)


DAMAGE = ["code", "constants", "ir", "length", "digest", "magic", "truncated", "header only", "empty"]


def test_damaged_entries_are_misses_with_one_warning(private_cache, capsys):
    program = convdsl.load(LENET)
    x = _digits()
    want, _ = _run(program, x, cache_on=False)
    got, hit = _run(program, x)  # writes the entry
    assert not hit
    np.testing.assert_array_equal(got, want)
    entry = _entry(private_cache)
    good = entry.read_bytes()
    assert _run(program, x)[1], "the entry is not used"
    capsys.readouterr()
    for kind in DAMAGE:
        cache._warned.clear()
        entry.write_bytes(_damage(kind, good))
        got, hit = _run(program, x)
        err = capsys.readouterr().err
        assert not hit, kind
        np.testing.assert_array_equal(got, want, err_msg=kind)
        lines = [ln for ln in err.splitlines() if ln]
        assert len(lines) == 1 and lines[0].startswith("convdsl: warning: compile cache entry "), (kind, err)
        assert "damaged" in lines[0] and "compiling afresh" in lines[0], (kind, err)
        # ... and the entry was rewritten: the next run hits, silently
        assert entry.read_bytes() == good, kind
        got, hit = _run(program, x)
        assert hit and capsys.readouterr().err == "", kind
        np.testing.assert_array_equal(got, want, err_msg=kind)


def test_an_entry_under_another_keys_name_is_a_mismatch(private_cache, capsys):
    program = convdsl.load(LENET)
    x = _digits()
    want, _ = _run(program, x, cache_on=False)
    _run(program, x)
    entry = _entry(private_cache)
    other = convdsl.loads("model T(x: [N, 1, 28, 28]) -> [N, 1, 28, 28] {\n    relu\n}\n")
    convdsl.compile(other)
    (entry2,) = [p for p in (private_cache / "objects").glob("*.bin") if p != entry]
    entry.write_bytes(entry2.read_bytes())  # a well-formed entry, for another model
    capsys.readouterr()
    got, hit = _run(program, x)
    assert not hit and "checksum mismatch" in capsys.readouterr().err
    np.testing.assert_array_equal(got, want)


def test_damaged_entry_through_the_command(private_cache, tmp_path):
    """The issue's own case, end to end: a flipped constant, then `convdsl run` again."""
    cmd = [sys.executable, "-m", "convdsl", "run", str(LENET), "--repeat", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    entry = _entry(private_cache)
    entry.write_bytes(_damage("constants", entry.read_bytes()))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "compiled with LLVM" in again.stdout and "is damaged (checksum mismatch)" in again.stderr
    assert "Traceback" not in again.stderr
    assert again.stdout.split("accuracy: ")[1] == first.stdout.split("accuracy: ")[1]


def _store_fails(monkeypatch):
    """A cache directory that refuses new files, as a read-only one does even for root (whom
    permission bits do not stop)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)


def test_unwritable_cache_is_said_once_and_still_works(private_cache, monkeypatch, capsys):
    _store_fails(monkeypatch)
    x = _digits()
    program = convdsl.load(LENET)
    want, _ = _run(program, x, cache_on=False)
    capsys.readouterr()
    for _ in range(2):
        got, hit = _run(program, x)
        assert not hit
        np.testing.assert_array_equal(got, want)
    convdsl.compile(convdsl.loads("model T(x: [N, 1, 4, 4]) -> [N, 1, 4, 4] {\n    relu\n}\n"))
    err = capsys.readouterr().err
    assert err.count("warning") == 1, err
    assert "cannot write the compile cache in" in err and "Permission denied" in err
    assert "CONVDSL_CACHE_DIR" in err


def test_read_only_cache_is_still_read(private_cache, monkeypatch, capsys):
    program = convdsl.load(LENET)
    x = _digits()
    want, _ = _run(program, x)
    _store_fails(monkeypatch)
    got, hit = _run(program, x)
    assert hit and capsys.readouterr().err == ""
    np.testing.assert_array_equal(got, want)


def test_cache_dir_that_is_a_file_is_said_once(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    program = convdsl.load(LENET)
    x = _digits()
    a, _ = _run(program, x)
    b, _ = _run(program, x)
    np.testing.assert_array_equal(a, b)
    err = capsys.readouterr().err
    assert err.count("convdsl: warning: cannot write the compile cache") == 1, err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through mode bits")
def test_read_only_directory(private_cache, capsys):
    (private_cache / "objects").mkdir(parents=True)
    os.chmod(private_cache / "objects", 0o555)
    try:
        program = convdsl.load(LENET)
        _run(program, _digits())
        _run(program, _digits())
        assert capsys.readouterr().err.count("cannot write the compile cache") == 1
    finally:
        os.chmod(private_cache / "objects", 0o755)


def test_writer_killed_before_its_rename_leaves_no_entry(private_cache, tmp_path):
    """SIGKILL at the worst moment (object written to the temp file, rename not done): the next run
    finds no entry, compiles, and gives the right answer; the dead writer's temp file is swept
    once it is stale."""
    script = textwrap.dedent(f"""
        import os, signal
        import convdsl
        from convdsl.backend import cache
        cache.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        convdsl.compile({str(LENET)!r}, {WEIGHTS!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True)
    assert r.returncode == -9, r.stderr
    objects = private_cache / "objects"
    assert list(objects.glob("*.bin")) == []
    (tmp,) = objects.glob(".tmp-*")
    program = convdsl.load(LENET)
    x = _digits()
    want, _ = _run(program, x, cache_on=False)
    got, hit = _run(program, x)
    assert not hit
    np.testing.assert_array_equal(got, want)
    assert tmp.exists(), "a fresh temp file may be a live writer's: kept"
    old = time.time() - 2 * cache._STALE_TMP_SECONDS
    os.utime(tmp, (old, old))
    _entry(private_cache).unlink()
    _run(program, x)  # stores again, and sweeps
    assert not tmp.exists()
    assert _run(program, x)[1]
