"""Weights files: ``.npz``, ``.safetensors`` and PyTorch ``state_dict`` files, read and written.

The format is chosen by the extension (``../shared/CLI.md``).  Every reader judges the file from
its directory or header first -- names, dtypes, shapes, sizes and where the data lies -- and reads
only the arrays the model has, so that a lying header, a truncated file or a huge declared array
is a :class:`BoundaryError` (or a :class:`LimitError`) naming the file and the array, never a
traceback or an allocation of the size a header claims.  Nothing is ever unpickled: ``.npz``
members are parsed as ``.npy`` headers, and a ``.pt`` goes through ``torch.load(weights_only=True)``,
whose unpickler builds tensors and containers only.

Arrays are named ``LAYER.weight`` / ``LAYER.bias`` in PyTorch layouts.  A file saved from an
``nn.Sequential`` (``0.weight``, ``3.bias``, maybe under a prefix such as ``net.``) is matched to
the model's parameterised layers by order (:func:`match_names`), and the mapping is reported.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, cast

import numpy as np

from ..core.model import CheckedModel
from .errors import BoundaryError
from .limits import MAX_ELEMENTS, concrete, fmt_shape

READ_EXTENSIONS = (".npz", ".safetensors", ".pt", ".pth")
WRITE_EXTENSIONS = (".npz", ".safetensors")

Note = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def load_weights(path: str | os.PathLike, model: CheckedModel | None = None,
                 note: Note | None = _stderr) -> dict[str, np.ndarray]:
    """The named arrays of a weights file, by its extension: ``.npz``, ``.safetensors``, ``.pt``/``.pth``.

    With ``model``, the arrays are matched to its parameters before any data is read: names
    (directly, without a common prefix, or an ``nn.Sequential``'s indices by order, each renamed
    layer reported to ``note``), dtypes, and the shapes the model fixes; every mismatch is listed
    in one :class:`BoundaryError`, and only the model's arrays are read.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if ext not in READ_EXTENSIONS:
        raise BoundaryError(f"{path}: not a weights file convdsl knows (by its extension: .npz, .safetensors, "
                            ".pt or .pth)")
    if os.path.isdir(path):
        raise BoundaryError(f"{path}: is a directory, not a {ext} weights file")
    if not os.path.exists(path):
        raise BoundaryError(f"{path}: no such weights file")
    if ext == ".npz":
        return _read_npz(path, model, note)
    if ext == ".safetensors":
        return _read_safetensors(path, model, note)
    return _read_torch(path, model, note)


# ------------------------------------------------------------------ matching names to the model
def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "bfloat16", "float32", "float64", "float128")


def weight_problems(want: Mapping[str, tuple[int, ...] | None],
                    found: Mapping[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """Every mismatch between the parameters a model wants (a shape, or None where it is not known
    yet) and the arrays there are (shape, dtype name): missing, extra, misshapen, not floating point."""
    problems: list[str] = []
    for key, shape in want.items():
        layer = key.rsplit(".", 1)[0]
        if key not in found:
            expected = f" (expected shape {fmt_shape(shape)})" if shape is not None else ""
            problems.append(f"layer {layer}: missing array '{key}'{expected}")
            continue
        got, dtype = found[key]
        if not _is_float(dtype):  # integer weights are almost always a mistake (a label array, say)
            problems.append(f"layer {layer}: '{key}' has dtype {dtype}, expected float32 "
                            "(float16, bfloat16 and float64 are converted)")
        elif shape is not None and tuple(got) != shape:
            problems.append(f"layer {layer}: '{key}' has shape {fmt_shape(got)}, expected {fmt_shape(shape)}")
    known = {k.rsplit(".", 1)[0] for k in want}
    for key in sorted(set(found) - set(want)):
        layer = key.rsplit(".", 1)[0]
        why = "the model has no layer of that name" if layer not in known else f"layer {layer} has no such parameter"
        problems.append(f"unexpected array '{key}' with shape {fmt_shape(found[key][0])}: {why}")
    return problems


def match_names(path: str, keys: Iterable[str], model: CheckedModel, ordered: bool,
                note: Note | None) -> dict[str, str]:
    """The file's array names as the model's: ``{file key: model key}``.

    Names that already are the model's stay.  Otherwise a prefix common to every key (``net.``,
    ``module.`` of ``DataParallel``) is dropped, and if what is left names the model's layers, that
    is the match.  Else, if every layer of the file is numbered like an ``nn.Sequential``'s child
    (``0``, ``3``; ``features.0``, ``1.0`` inside nested ones), the file's layers are given to the
    model's parameterised layers in order: by number for one ``Sequential``; for nested ones in the
    order the file was saved in, where it keeps it (``ordered``: a ``state_dict``, an ``.npz``),
    else by the numbers where they are all numbers.  Each renamed layer is one line to ``note``.
    Anything else is left to :func:`weight_problems` to report as missing and unexpected arrays.
    """
    keys = list(keys)
    layers = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in model.weight_shapes()))
    paths = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys if "." in k))
    same = {k: k for k in keys}
    if not paths or any("." not in k for k in keys) or set(paths) & set(layers):
        return same
    prefix = os.path.commonprefix([p.split(".") for p in paths])
    if len(prefix) == min(len(p.split(".")) for p in paths):
        prefix = prefix[:-1]  # (every path keeps at least its last part)
    cut = len(".".join(prefix)) + 1 if prefix else 0
    local = {p: p[cut:] for p in paths}
    if set(local.values()) & set(layers):
        if note is not None:
            note(f"{path}: names under '{'.'.join(prefix)}.' read without that prefix")
        return {k: k[cut:] for k in keys}
    parts = {p: q.split(".") for p, q in local.items()}
    if not all(q[-1].isdigit() for q in parts.values()):
        return same
    if all(len(q) == 1 for q in parts.values()):
        paths.sort(key=lambda p: int(parts[p][0]))
    elif not ordered:  # (nested modules are in execution order only where the file keeps its order)
        if not all(d.isdigit() for q in parts.values() for d in q):
            return same
        paths.sort(key=lambda p: tuple(int(d) for d in parts[p]))
    if len(paths) != len(layers):
        raise BoundaryError(
            f"{path}: its arrays are numbered like an nn.Sequential's, so they would be matched to the "
            f"layers by order, but it has {len(paths)} layers with parameters ({', '.join(paths)}) and model "
            f"{model.name} has {len(layers)} ({', '.join(layers)})")
    rename = dict(zip(paths, layers))
    if note is not None:
        for p, layer in rename.items():
            mine = ", ".join(f"'{k}'" for k in keys if k.rsplit(".", 1)[0] == p)
            note(f"{path}: {mine} -> layer {layer}")
    return {k: f"{rename[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}" for k in keys}


def _select(path: str, model: CheckedModel | None, found: Mapping[str, tuple[tuple[int, ...], str]],
            ordered: bool, note: Note | None) -> dict[str, str]:
    """``{file key: name}`` of the arrays to read: all of them without a model; with one, the
    model's, after every mismatch has been raised from the shapes and dtypes alone."""
    if model is None:
        return {k: k for k in found}
    names = match_names(path, found, model, ordered, note)
    want = {k: concrete(v) for k, v in model.weight_shapes().items()}
    problems = weight_problems(want, {names[k]: v for k, v in found.items()})
    if problems:
        raise BoundaryError(f"{path} do not fit model {model.name}:\n  " + "\n  ".join(problems))
    return {k: n for k, n in names.items() if n in want}


def _check_count(path: str, name: str, shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS.value():
        raise MAX_ELEMENTS.exceeded(f"shape {fmt_shape(shape)} is {count:,} elements", f"{path}: '{name}' (not read): ")
    return count


# ------------------------------------------------------------------ .npz
@dataclass(frozen=True, slots=True)
class _Member:
    """One array of an ``.npz`` as its zip directory entry and ``.npy`` header describe it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int  # bytes of the member before the array data (magic + header)


def _read_npz(path: str, model: CheckedModel | None, note: Note | None) -> dict[str, np.ndarray]:
    """Everything is judged from the zip directory and each member's ``.npy`` header before any
    array data is decompressed: a duplicate member, a member that is not an ``.npy`` array, a
    header that disagrees with the member's size, an object dtype, or an array past the
    elements-per-array cap (``docs/limits.md``) is an error without reading the data."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise BoundaryError(f"{path}: cannot read ({e.strerror})") from None
    if magic == b"\x93NUMPY":
        raise BoundaryError(f"{path}: holds a single array; weights are an .npz of named arrays "
                            "(numpy.savez(path, **{'conv1.weight': ..., ...}))")
    if not magic.startswith(b"PK"):
        raise BoundaryError(f"{path}: not a valid .npz weights file (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _members(path, zf)
            names = _select(path, model, {k: (m.shape, m.dtype.name) for k, m in members.items()}, True, note)
            return {n: _read_member(path, zf, k, members[k]) for k, n in names.items()}
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
        if isinstance(e, BoundaryError):
            raise
        raise BoundaryError(f"{path}: not a valid .npz weights file ({e})") from None


def _members(path: str, zf: zipfile.ZipFile) -> dict[str, _Member]:
    """Every array of the archive, from its directory entry and header alone."""
    out: dict[str, _Member] = {}
    seen: set[str] = set()
    for info in zf.infolist():
        if info.filename in seen:  # (zipfile would silently use the last one)
            raise BoundaryError(f"{path}: holds two members named '{info.filename}'; "
                                "which one is meant is not clear")
        seen.add(info.filename)
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise BoundaryError(f"{path}: member '{info.filename}' is not an .npy array")
        name = info.filename[:-4]
        with zf.open(info) as f:  # (reads, and decompresses, only the first block: the header)
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            except ValueError as e:
                if "pickle" in str(e).lower() or "object" in str(e).lower():
                    raise BoundaryError(f"{path}: '{name}' holds pickled objects, which convdsl does not load "
                                        "(save plain arrays with numpy.savez)") from None
                raise BoundaryError(f"{path}: '{name}' is not a readable .npy array ({e})") from None
            offset = f.tell()
        if dtype.hasobject:
            raise BoundaryError(f"{path}: '{name}' holds pickled objects, which convdsl does not load "
                                "(save plain arrays with numpy.savez)")
        count = _check_count(path, name, tuple(shape))
        if info.file_size != offset + count * dtype.itemsize:
            raise BoundaryError(f"{path}: '{name}' is damaged: its header says {fmt_shape(shape)} {dtype} "
                                f"({offset + count * dtype.itemsize:,} bytes), the archive {info.file_size:,}")
        out[name] = _Member(info, tuple(shape), dtype, fortran, offset)
    return out


def _read_member(path: str, zf: zipfile.ZipFile, name: str, m: _Member) -> np.ndarray:
    """The array data of one member, read into a fresh array of exactly the size its header gave."""
    flat = np.empty(int(np.prod(m.shape, dtype=np.int64)), m.dtype)
    view = flat.data.cast("B")
    with zf.open(m.info) as raw:
        f = cast(io.BufferedIOBase, raw)  # (a ZipExtFile: it has readinto)
        f.read(m.data_offset)
        got = 0
        while got < len(view):
            k = f.readinto(view[got:])
            if not k:
                raise BoundaryError(f"{path}: '{name}' is damaged: it ends after {got:,} of {len(view):,} bytes")
            got += k
        if f.read(1):
            raise BoundaryError(f"{path}: '{name}' is damaged: it holds more data than its header says")
    if m.fortran:
        return flat.reshape(m.shape[::-1]).T
    return flat.reshape(m.shape)


# ------------------------------------------------------------------ .safetensors
# The format: an 8-byte little-endian header length, a JSON object {name: {dtype, shape,
# data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data, offsets counted from
# its start.  The names of its dtypes, as numpy knows them (bfloat16: by hand, below).
_ST_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2",
}
_ST_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
ST_MAX_HEADER = 100_000_000  # (what the safetensors library itself accepts)


@dataclass(frozen=True, slots=True)
class _Tensor:
    """One tensor of a ``.safetensors`` as its header describes it."""

    st_dtype: str
    shape: tuple[int, ...]
    begin: int  # bytes from the start of the file
    end: int


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(Exception):
    """A name twice in a JSON object (``json`` would silently keep the last)."""


def safetensors_header(path: str) -> dict[str, _Tensor]:
    """Every tensor of a ``.safetensors`` file, from its header alone, checked against the file."""
    bad = f"{path}: not a valid .safetensors weights file"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise BoundaryError(f"{bad} (it is {size} bytes long, shorter than the 8-byte header length)")
            n = int.from_bytes(head, "little")
            if n > ST_MAX_HEADER:
                raise BoundaryError(f"{bad} (its header length says {n:,} bytes, more than the "
                                    f"{ST_MAX_HEADER:,} the format allows)")
            if n > size - 8:
                raise BoundaryError(f"{bad} (its header length says {n:,} bytes, but only {size - 8:,} follow: "
                                    "truncated?)")
            text = f.read(n)
    except OSError as e:
        raise BoundaryError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_pairs)
    except _Duplicate as e:
        raise BoundaryError(f"{path}: its header names '{e.args[0]}' twice; which one is meant is not clear") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BoundaryError(f"{bad} (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise BoundaryError(f"{bad} (its header is not a JSON object)")
    data_start, data_size = 8 + n, size - 8 - n
    out: dict[str, _Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise BoundaryError(f"{bad} (its __metadata__ is not a map of strings)")
            continue
        out[name] = _tensor_entry(path, name, entry, data_start, data_size)
    spans = sorted((t.begin, t.end, k) for k, t in out.items())
    at, last = data_start, ""
    for begin, end, name in spans:
        if begin < at:
            raise BoundaryError(f"{path}: is damaged: the data of '{last}' and '{name}' overlap (the header lies)")
        if begin > at:
            raise BoundaryError(f"{path}: is damaged: {begin - at:,} bytes before '{name}' belong to no tensor "
                                "(the header lies)")
        at, last = end, name
    if at != data_start + data_size:
        raise BoundaryError(f"{path}: is damaged: {data_start + data_size - at:,} bytes after the last tensor belong "
                            "to no tensor")
    return out


def _tensor_entry(path: str, name: str, entry: object, data_start: int, data_size: int) -> _Tensor:
    where = f"{path}: '{name}'"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise BoundaryError(f"{where} is damaged: its header entry is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise BoundaryError(f"{where} has dtype {dtype!r}, which is not a safetensors dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BoundaryError(f"{where} is damaged: its shape {shape!r} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise BoundaryError(f"{where} is damaged: its data_offsets {offsets!r} are not [begin, end]")
    count = _check_count(path, name, tuple(shape))
    nbytes = count * _ST_SIZES[dtype]
    if offsets[1] > data_size:
        raise BoundaryError(f"{where} is damaged: its data ends at byte {offsets[1]:,} of a data section of "
                            f"{data_size:,} bytes (truncated, or the header lies)")
    if offsets[1] - offsets[0] != nbytes:
        raise BoundaryError(f"{where} is damaged: its header says {fmt_shape(shape)} {_ST_DTYPES[dtype]} "
                            f"({nbytes:,} bytes), its data_offsets {offsets[1] - offsets[0]:,}")
    return _Tensor(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _read_safetensors(path: str, model: CheckedModel | None, note: Note | None) -> dict[str, np.ndarray]:
    tensors = safetensors_header(path)
    found = {k: (t.shape, _ST_DTYPES[t.st_dtype]) for k, t in tensors.items()}
    names = _select(path, model, found, False, note)
    for k in names:
        if tensors[k].st_dtype.startswith("F8"):
            raise BoundaryError(f"{path}: '{k}' has dtype {_ST_DTYPES[tensors[k].st_dtype]}, which convdsl does not "
                                "read (store float32, float16 or bfloat16)")
    out: dict[str, np.ndarray] = {}
    by_library = [k for k in names if tensors[k].st_dtype != "BF16"]
    if by_library:
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError:
            raise BoundaryError(f"{path}: reading .safetensors needs the safetensors package "
                                "(pip install safetensors)") from None
        try:
            with safe_open(path, framework="numpy") as f:
                for k in by_library:
                    arr = np.array(f.get_tensor(k), copy=True)  # (its own memory, not the file's map)
                    if arr.shape != tensors[k].shape:  # (the file changed since its header was read)
                        raise BoundaryError(f"{path}: '{k}' changed while it was read")
                    out[names[k]] = arr
        except BoundaryError:
            raise
        except (SafetensorError, OSError, TypeError, ValueError) as e:  # (TypeError: a dtype numpy lacks)
            raise BoundaryError(f"{path}: not a valid .safetensors weights file ({e})") from None
    for k in names:
        if tensors[k].st_dtype == "BF16":
            out[names[k]] = _read_bfloat16(path, k, tensors[k])
    return {n: out[n] for n in names.values()}


def _read_bfloat16(path: str, name: str, t: _Tensor) -> np.ndarray:
    """A bfloat16 tensor as float32 (exact: bfloat16 is the top half of a float32), which numpy
    cannot hold as it is."""
    with open(path, "rb") as f:
        f.seek(t.begin)
        raw = f.read(t.end - t.begin)
    if len(raw) != t.end - t.begin:
        raise BoundaryError(f"{path}: '{name}' is damaged: it ends after {len(raw):,} of {t.end - t.begin:,} bytes")
    halves = np.frombuffer(raw, "<u2").astype(np.uint32)
    return (halves << 16).view(np.float32).reshape(t.shape)


# ------------------------------------------------------------------ PyTorch .pt / .pth
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")  # (where training loops keep the weights)


def _read_torch(path: str, model: CheckedModel | None, note: Note | None) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise BoundaryError(f"{path}: reading a PyTorch state_dict needs torch (pip install torch); or convert "
                            "it to .safetensors where torch is: safetensors.torch.save_file(torch.load(PATH, "
                            "weights_only=True), 'W.safetensors')") from None
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BoundaryError(f"{path}: cannot read ({e.strerror})") from None
    zipped = magic.startswith(b"PK")
    if not zipped and magic[:3] != b"\x80\x02\x8a":  # (torch.save's zip format, or its legacy pickle's magic)
        raise BoundaryError(f"{path}: not a valid PyTorch weights file (neither of the formats torch.save writes)")
    try:
        # Mapped where the format allows: no tensor's data is read until it is used, so that the
        # names, dtypes and shapes are judged first.
        with warnings.catch_warnings():  # (a damaged file can make torch warn before it fails: the error says it)
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu", mmap=zipped)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        text = str(e)
        if "Unsupported global" in text:
            raise BoundaryError(f"{path}: holds Python objects beyond tensors, which torch.load(weights_only=True) "
                                "refuses to unpickle (a whole model saved with torch.save(model)?); save "
                                "model.state_dict() instead, or convert to .safetensors") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise BoundaryError(f"{path}: not a valid PyTorch weights file ({first})") from None
    state = _state_dict(path, state, torch, note)
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for k, t in state.items():
        shape = tuple(int(d) for d in t.shape)
        _check_count(path, k, shape)
        found[k] = (shape, str(t.dtype).removeprefix("torch."))
    names = _select(path, model, found, True, note)
    out: dict[str, np.ndarray] = {}
    try:
        for k, n in names.items():
            t = state[k].detach()
            if t.dtype == torch.bfloat16:
                t = t.float()  # (numpy has no bfloat16; exact)
            out[n] = np.array(t.numpy(), copy=True)
    except Exception as e:  # (a mapped file cut short fails only here, when its data is touched)
        raise BoundaryError(f"{path}: not a valid PyTorch weights file ({e})") from None
    return out


def _state_dict(path: str, state: object, torch: Any, note: Note | None) -> dict[str, Any]:
    """The ``{name: tensor}`` a ``.pt`` holds: itself, or a checkpoint's ``state_dict`` entry."""
    if not isinstance(state, dict):
        raise BoundaryError(f"{path}: holds a {type(state).__name__}, not a state_dict (a dict of named tensors)")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k in _CHECKPOINT_KEYS if isinstance(state.get(k), dict)]
        if inner:
            if note is not None:
                note(f"{path}: a checkpoint; reading its '{inner[0]}' entry")
            return _state_dict(path, state[inner[0]], torch, None)
        odd = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise BoundaryError(f"{path}: not a state_dict: entries {', '.join(repr(k) for k in odd[:5])}"
                            f"{' ...' if len(odd) > 5 else ''} are not tensors")
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise BoundaryError(f"{path}: not a state_dict: key {bad[0]!r} is not a name")
    return dict(state)


# ------------------------------------------------------------------ writing
_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")


def save_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write named arrays as float32, by the extension: ``.npz`` or ``.safetensors``.

    Atomic: the file appears complete or not at all (written beside the target, then renamed
    over it), so a reader never sees half a file and an interrupted write leaves the old one.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        hint = (" (a .pt would be a pickle; PyTorch reads .safetensors with safetensors.torch.load_file)"
                if ext in (".pt", ".pth") else "")
        raise BoundaryError(f"{path}: convdsl writes weights as .npz or .safetensors, chosen by the extension{hint}")
    arrays: dict[str, np.ndarray] = {}
    for k, v in weights.items():
        a = np.asarray(v)
        if not isinstance(k, str) or not _NAME.match(k):
            raise BoundaryError(f"{path}: cannot save an array named {k!r} (names are LAYER.weight / LAYER.bias)")
        if a.dtype.kind != "f":
            raise BoundaryError(f"{path}: '{k}' has dtype {a.dtype}; weights are floating point")
        arrays[k] = np.ascontiguousarray(a, dtype=np.float32)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # Made with the mode any new file gets (0666 less the umask), which mkstemp's 0600 is not.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if ext == ".npz":
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            try:
                from safetensors.numpy import save_file
            except ImportError:
                raise BoundaryError(f"{path}: writing .safetensors needs the safetensors package "
                                    "(pip install safetensors)") from None
            save_file(arrays, tmp)
            with open(tmp, "rb") as g:
                os.fsync(g.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
