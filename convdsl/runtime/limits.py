"""Caps on what one model may ask of the machine, each named and each raisable.

A 60-byte file can declare an input of 2^40 x 2^40 pixels or a padding of 10^9: the checker
proves such a model consistent, and without a cap the first sign of trouble would be a numpy
traceback (or a terabyte allocation) far from the line that asked for it.  So every size is
checked against a cap before anything of that size is made -- when a binding is compiled, before
an ``.npz`` member is decompressed, before a random input batch is drawn -- and a model past one
is a :class:`LimitError` that names the layer (``file:line:col``), the cap, and the environment
variable that raises it.  ``docs/limits.md`` lists them.

The caps are read from the environment on every check (cheap, and a test or a long-lived process
can change them), so there is no import-time state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod
from typing import Callable, Iterable, Mapping

from ..core.diagnostics import Span
from ..core.model import CheckedModel, ConcreteModel, Conv, Dense, Pool, weight_shapes
from .errors import BoundaryError

DOC = "docs/limits.md"


class LimitError(BoundaryError):
    """A model, weights file or input that is past one of the documented caps."""

    def __init__(self, message: str, limit: "Limit") -> None:
        super().__init__(message)
        self.limit = limit


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (not every platform has these names)
        return 16 << 30


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Limit:
    what: str  # as the message says it: "dimension size"
    env: str  # the variable that overrides it
    default: Callable[[], int]
    unit: str = ""  # after the number: "bytes"

    def value(self) -> int:
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default()
        try:
            v = int(raw)
        except ValueError:
            v = 0
        if v < 1:
            raise LimitError(f"{self.env}={raw!r}: the {self.what} limit must be a positive integer (see {DOC})", self)
        return v

    def exceeded(self, found: str, where: str = "") -> LimitError:
        """The error for ``found`` past this cap; ``where`` (a location and subject) leads the message."""
        unit = f" {self.unit}" if self.unit else ""
        return LimitError(f"{where}{found}, past the {self.what} limit of {self.value():,}{unit} "
                          f"(set {self.env} to raise it; see {DOC})", self)


MAX_DIM = Limit("dimension-size", "CONVDSL_MAX_DIM", lambda: 2**31 - 1)
MAX_ELEMENTS = Limit("elements-per-array", "CONVDSL_MAX_ELEMENTS", lambda: 2**31)  # (an image's layer output, a weight)
MAX_SCRATCH = Limit("scratch", "CONVDSL_MAX_SCRATCH_BYTES", _physical_memory, "bytes")
MAX_THREADS = Limit("threads", "CONVDSL_MAX_THREADS", usable_cores)
LIMITS = (MAX_DIM, MAX_ELEMENTS, MAX_SCRATCH, MAX_THREADS)


def _at(span: Span | None, subject: str) -> str:
    place = f"{span.file}:{span.line}:{span.column}: " if span is not None else ""
    return f"{place}{subject}: "


def concrete(shape: Iterable[object]) -> tuple[int, ...] | None:
    """``shape`` as integers, or None where a size is still symbolic."""
    out = tuple(shape)
    return out if all(isinstance(d, int) for d in out) else None  # type: ignore[return-value]


def fmt_shape(shape: Iterable[object]) -> str:
    """A shape as messages print it: ``[6, 1, 5, 5]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_array(shape: tuple[int, ...], where: str) -> None:
    """One array of one image (a layer's output, a weight, an input image) against the size caps."""
    dim, elems = MAX_DIM.value(), MAX_ELEMENTS.value()
    for d in shape:
        if d > dim:
            raise MAX_DIM.exceeded(f"{fmt_shape(shape)} has a size of {d:,}", where)
    n = prod(shape)
    if n > elems:
        raise MAX_ELEMENTS.exceeded(f"{fmt_shape(shape)} is {n:,} elements", where)


def _op_arguments(op: object) -> tuple[int, ...]:
    """The integers an op's loops are made of (kernel, stride, padding, dilation): a stride of 10^20
    needs no memory but does not fit the generated code's 64-bit arithmetic either."""
    if isinstance(op, Conv):
        return (*op.kernel, *op.stride, *op.padding, *op.dilation, op.groups)
    if isinstance(op, Pool):
        return (*op.kernel, *op.stride, *op.padding)
    return ()


def check_model(cm: ConcreteModel) -> None:
    """Every size of a bound model against the caps: the input image, each layer's output and
    weights, and its op's arguments.  Raises :class:`LimitError` for the first one past a cap."""
    m = cm.model
    check_array(cm.input_shape, _at(m.span, f"model {m.name}: input {m.input_name} per image"))
    dim = MAX_DIM.value()
    for layer, _, out_shape, op in cm.layers:
        check_array(out_shape, _at(layer.span, f"layer {layer.name}: output per image"))
        for a in _op_arguments(op):
            if a > dim:
                raise MAX_DIM.exceeded(f"an argument of {a:,}", _at(layer.span, f"layer {layer.name}: {layer.text}"))
        if isinstance(op, (Conv, Dense)):
            for key, shape in weight_shapes(op).items():
                ints = concrete(shape)
                assert ints is not None  # (a bound model's ops hold integer sizes)
                check_array(ints, _at(layer.span, f"layer {layer.name}: {layer.name}.{key}"))


def check_sizes(model: CheckedModel, env: Mapping[str, int]) -> None:
    """:func:`check_model` for ``model`` bound to ``env`` (symbol values; ``N`` is not needed)."""
    check_model(model.bind(env))


def check_scratch(floats: int, model: CheckedModel) -> None:
    """One thread's scratch arena (``floats`` float32s) against ``CONVDSL_MAX_SCRATCH_BYTES``."""
    if 4 * floats > MAX_SCRATCH.value():
        raise MAX_SCRATCH.exceeded(f"needs {4 * floats:,} bytes of scratch per thread",
                                   _at(model.span, f"model {model.name}"))


def threads_cap() -> int:
    return MAX_THREADS.value()
