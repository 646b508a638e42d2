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
from typing import Mapping

import numpy as np

from ..core import symbolic as sy
from ..core.model import CheckedModel, Conv, Dense


class BoundaryError(ValueError):
    """A weights file or input array that does not fit the model."""


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ------------------------------------------------------------------ weights
def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of named arrays (never unpickling anything)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise BoundaryError(f"{path}: no such weights file") from None
    except OSError as e:
        raise BoundaryError(f"{path}: cannot read ({e.strerror})") from None
    if magic == b"\x93NUMPY":
        raise BoundaryError(f"{path}: holds a single array; weights are an .npz of named arrays "
                            "(numpy.savez(path, **{'conv1.weight': ..., ...}))")
    if not magic.startswith(b"PK"):
        raise BoundaryError(f"{path}: not a valid .npz weights file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise BoundaryError(f"{path}: not an .npz archive of named arrays")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise BoundaryError(f"{path}: no such weights file") from None
    except BoundaryError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise BoundaryError(f"{path}: holds pickled objects, which convdsl does not load "
                                "(save plain arrays with numpy.savez)") from None
        raise BoundaryError(f"{path}: not a valid .npz weights file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise BoundaryError(f"{path}: not a valid .npz weights file ({e})") from None


def expected_weights(model: CheckedModel, env: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every parameter's concrete shape for the given symbol values, in layer order."""
    full = {"N": 1, **env}
    return {k: tuple(sy.evaluate(d, full) for d in v) for k, v in model.weight_shapes().items()}


def validate_weights(model: CheckedModel, env: Mapping[str, int], weights: Mapping[str, np.ndarray],
                     origin: str = "weights") -> dict[str, np.ndarray]:
    """Return float32 C-contiguous copies of ``weights``, or raise listing every problem."""
    want = expected_weights(model, env)
    problems: list[str] = []
    out: dict[str, np.ndarray] = {}
    for key, shape in want.items():
        layer = key.rsplit(".", 1)[0]
        if key not in weights:
            problems.append(f"layer {layer}: missing array '{key}' (expected shape {_fmt(shape)})")
            continue
        arr = np.asarray(weights[key])
        if arr.dtype.kind != "f":  # integer weights are almost always a mistake (a label array, say)
            problems.append(f"layer {layer}: '{key}' has dtype {arr.dtype}, expected float32 "
                            "(float16 and float64 are converted)")
            continue
        if tuple(arr.shape) != shape:
            problems.append(f"layer {layer}: '{key}' has shape {_fmt(arr.shape)}, expected {_fmt(shape)}")
            continue
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            problems.append(f"layer {layer}: '{key}' holds NaN or infinite values")
            continue
        out[key] = arr
    extra = sorted(set(weights) - set(want))
    for key in extra:
        layer = key.rsplit(".", 1)[0]
        known = {k.rsplit(".", 1)[0] for k in want}
        why = "the model has no layer of that name" if layer not in known else f"layer {layer} has no such parameter"
        problems.append(f"unexpected array '{key}' with shape {_fmt(np.shape(weights[key]))}: {why}")
    if problems:
        raise BoundaryError(f"{origin} do not fit model {model.name}:\n  " + "\n  ".join(problems))
    return out


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
