"""Checks at the boundary between Python and native code.

Nothing reaches compiled code before it passes through here: weights are
matched against the model's parameter list (names, shapes, dtypes, finite
values) and input arrays against its input shape and ``valid_for``.  Every
problem is a :class:`BoundaryError` with a message naming the file, the layer
or the axis at fault, never a crash inside native code.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..core import symbolic as sy
from ..core.model import CheckedModel, Conv, Dense
from .errors import BoundaryError
from .limits import fmt_shape as _fmt
from .weights_io import load_weights, weight_problems

__all__ = ["BoundaryError", "load_weights", "validate_weights", "weight_problems", "random_weights",
           "expected_weights", "bind_input", "check_sizes"]  # (load_weights: kept here for its old callers)


# ------------------------------------------------------------------ weights
def expected_weights(model: CheckedModel, env: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every parameter's concrete shape for the given symbol values, in layer order."""
    full = {"N": 1, **env}
    return {k: tuple(sy.evaluate(d, full) for d in v) for k, v in model.weight_shapes().items()}


def validate_weights(model: CheckedModel, env: Mapping[str, int], weights: Mapping[str, np.ndarray],
                     origin: str = "weights") -> dict[str, np.ndarray]:
    """Return float32 C-contiguous copies of ``weights``, or raise listing every problem."""
    want = expected_weights(model, env)
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    problems = weight_problems(want, {k: (a.shape, a.dtype.name) for k, a in arrays.items()})
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
