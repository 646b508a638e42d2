"""Checks at the boundary between Python and native code.

Nothing reaches compiled code before it passes through here: weights are
matched against the model's parameter list (names, shapes, dtypes, finite
values) and input arrays against its input shape and ``valid_for``.  Every
problem is a :class:`BoundaryError` with a message naming the file, the layer
or the axis at fault, never a crash inside native code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..core import symbolic as sy
from ..core.model import CheckedModel, Conv, Dense
from .errors import BoundaryError
from .limits import MAX_ELEMENTS



def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ------------------------------------------------------------------ weights
@dataclass(frozen=True, slots=True)
class _Member:
    """One array of an ``.npz`` as its zip directory entry and ``.npy`` header describe it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int  # bytes of the member before the array data (magic + header)


def load_weights(path: str | os.PathLike, model: CheckedModel | None = None) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of named arrays (never unpickling anything).

    Everything is judged from the zip directory and each member's ``.npy`` header before any array
    data is decompressed: a duplicate member, a member that is not an ``.npy`` array, a header that
    disagrees with the member's size, an object dtype, or an array past the elements-per-image cap
    (``docs/limits.md``) is an error without reading the data.  With ``model``, only the arrays it
    has are read: an unexpected one, and one whose shape is known (from the model alone) to be
    wrong, are reported from their headers, with the model's other mismatches.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise BoundaryError(f"{path}: no such weights file") from None
    except IsADirectoryError:
        raise BoundaryError(f"{path}: is a directory, not an .npz weights file") from None
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
            if model is not None:
                want: dict[str, tuple[int, ...] | None] = {
                    k: tuple(v) if all(isinstance(d, int) for d in v) else None  # type: ignore[misc]
                    for k, v in model.weight_shapes().items()}
                found = {k: (m.shape, m.dtype) for k, m in members.items()}
                problems = weight_problems(want, found)
                if problems:
                    raise BoundaryError(f"{path} do not fit model {model.name}:\n  " + "\n  ".join(problems))
                members = {k: m for k, m in members.items() if k in want}
            return {k: _read_member(path, zf, k, m) for k, m in members.items()}
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
        count = 1
        for d in shape:
            count *= d
        if count > MAX_ELEMENTS.value():
            raise MAX_ELEMENTS.exceeded(f"shape {_fmt(shape)} is {count:,} elements",
                                        f"{path}: '{name}' (not read): ")
        if info.file_size != offset + count * dtype.itemsize:
            raise BoundaryError(f"{path}: '{name}' is damaged: its header says {_fmt(shape)} {dtype} "
                                f"({offset + count * dtype.itemsize:,} bytes), the archive {info.file_size:,}")
        out[name] = _Member(info, tuple(shape), dtype, fortran, offset)
    return out


def _read_member(path: str, zf: zipfile.ZipFile, name: str, m: _Member) -> np.ndarray:
    """The array data of one member, read into a fresh array of exactly the size its header gave."""
    flat = np.empty(int(np.prod(m.shape, dtype=np.int64)), m.dtype)
    view = memoryview(flat).cast("B")
    with zf.open(m.info) as f:
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


def expected_weights(model: CheckedModel, env: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every parameter's concrete shape for the given symbol values, in layer order."""
    full = {"N": 1, **env}
    return {k: tuple(sy.evaluate(d, full) for d in v) for k, v in model.weight_shapes().items()}


def validate_weights(model: CheckedModel, env: Mapping[str, int], weights: Mapping[str, np.ndarray],
                     origin: str = "weights") -> dict[str, np.ndarray]:
    """Return float32 C-contiguous copies of ``weights``, or raise listing every problem."""
    want = expected_weights(model, env)
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    problems = weight_problems(want, {k: (a.shape, a.dtype) for k, a in arrays.items()})
    out: dict[str, np.ndarray] = {}
    for key, shape in want.items():
        arr = arrays.get(key)
        if arr is None or arr.dtype.kind != "f" or tuple(arr.shape) != shape:
            continue  # (reported above)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            problems.append(f"layer {key.rsplit('.', 1)[0]}: '{key}' holds NaN or infinite values")
        out[key] = arr
    if problems:
        raise BoundaryError(f"{origin} do not fit model {model.name}:\n  " + "\n  ".join(problems))
    return out


def weight_problems(want: Mapping[str, tuple[int, ...] | None],
                    found: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> list[str]:
    """Every mismatch between the parameters a model wants (a shape, or None where it is not known
    yet) and the arrays there are (shape, dtype): missing, extra, misshapen, not floating point."""
    problems: list[str] = []
    for key, shape in want.items():
        layer = key.rsplit(".", 1)[0]
        if key not in found:
            expected = f" (expected shape {_fmt(shape)})" if shape is not None else ""
            problems.append(f"layer {layer}: missing array '{key}'{expected}")
            continue
        got, dtype = found[key]
        if dtype.kind != "f":  # integer weights are almost always a mistake (a label array, say)
            problems.append(f"layer {layer}: '{key}' has dtype {dtype}, expected float32 "
                            "(float16 and float64 are converted)")
        elif shape is not None and tuple(got) != shape:
            problems.append(f"layer {layer}: '{key}' has shape {_fmt(got)}, expected {_fmt(shape)}")
    known = {k.rsplit(".", 1)[0] for k in want}
    for key in sorted(set(found) - set(want)):
        layer = key.rsplit(".", 1)[0]
        why = "the model has no layer of that name" if layer not in known else f"layer {layer} has no such parameter"
        problems.append(f"unexpected array '{key}' with shape {_fmt(found[key][0])}: {why}")
    return problems


def random_weights(model: CheckedModel, env: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    rng = np.random.default_rng(seed)
    full = {"N": 1, **env}
    out: dict[str, np.ndarray] = {}
    for layer in model.layers:
        op = layer.op
        if isinstance(op, Conv):
            fan_in = sy.evaluate(op.c_in, full) // op.groups * op.kernel[0] * op.kernel[1]
        elif isinstance(op, Dense):
            fan_in = sy.evaluate(op.in_features, full)
        else:
            continue
        bound = 1.0 / np.sqrt(fan_in)
        for key, shape in layer.weight_shapes().items():
            concrete = tuple(sy.evaluate(d, full) for d in shape)
            # Drawn in float32 directly: VGG-11's 128 M weights would need a 1 GB float64 temporary.
            w = rng.random(concrete, dtype=np.float32)
            w *= np.float32(2 * bound)
            w -= np.float32(bound)
            out[key] = w
    return out


# ------------------------------------------------------------------ inputs
def bind_input(model: CheckedModel, x: object, origin: str = "input") -> tuple[np.ndarray, dict[str, int]]:
    """Check an input batch against the model; return it as float32 C-contiguous and the symbol values."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:  # arbitrary objects: say what they are
            raise BoundaryError(f"{origin}: expected a numpy array, got {type(x).__name__} ({e})") from None
    if x.dtype.kind not in "fiu" or x.dtype.kind == "c":
        raise BoundaryError(f"{origin}: has dtype {x.dtype}; the model takes float32 "
                            "(integer and other float arrays are converted; bool, complex and objects are not)")
    want = model.input_shape
    if x.ndim != len(want):
        raise BoundaryError(f"{origin}: has shape {_fmt(x.shape)} ({x.ndim}-D); model {model.name} takes "
                            f"{len(want)}-D input {_fmt(sy.to_str(d) for d in want)}")
    env: dict[str, int] = {}
    axes = ("batch", "channels", "height", "width")
    for axis, (d, n) in enumerate(zip(want, x.shape)):
        name = axes[axis] if axis < 4 else f"axis {axis}"
        if isinstance(d, int):
            if n != d:
                raise BoundaryError(f"{origin}: {name} is {n}, but model {model.name} takes {d} "
                                    f"(input {_fmt(sy.to_str(d) for d in want)}, got {_fmt(x.shape)})")
            continue
        (s,) = sy.free_symbols(d)  # input dims are plain symbols (the checker ensures it)
        if s in env and env[s] != n:
            raise BoundaryError(f"{origin}: {s} is both {env[s]} and {n}")
        env[s] = n
    check_sizes(model, env, origin)
    return np.ascontiguousarray(x, dtype=np.float32), env


def check_sizes(model: CheckedModel, env: Mapping[str, int], origin: str = "sizes") -> None:
    """Symbol values against ``valid_for``, ``where`` multiples and fixed values."""
    for s, n in env.items():
        if s not in model.valid_for:
            raise BoundaryError(f"{origin}: model {model.name} has no size '{s}' "
                                f"(its symbols: {', '.join(model.valid_for)})")
        low = model.valid_for.get(s, 1)
        if s in model.fixed and n != model.fixed[s]:
            raise BoundaryError(f"{origin}: model {model.name} needs {s} == {model.fixed[s]}, got {n}")
        if n < low:
            what = "a batch of at least 1 image" if s == "N" else f"{s} >= {low}"
            raise BoundaryError(f"{origin}: model {model.name} is valid for {what}, got {s} = {n}")
        k = model.multiple_of.get(s, 1)
        if n % k:
            raise BoundaryError(f"{origin}: model {model.name} needs {s} to be a multiple of {k}, got {n}")
