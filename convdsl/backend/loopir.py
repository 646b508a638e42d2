"""Loop IR: the back end's explicit loop nests, between ``lower`` and ``codegen``.

Three closed unions of frozen dataclasses:

* :data:`Index` -- 64-bit integer expressions (loop variables, constants,
  ``+ - *``, floor division / remainder by a positive constant, ``min``);
* :data:`Value` -- float32 scalars or ``<width x float>`` vectors (loads,
  broadcasts, FMA, arithmetic, elementwise math, lane selects, reductions);
* :data:`Stmt` -- loops with constant or run-time bounds, mutable register
  locals, stores, kernel calls.

A :class:`Program` is a set of :class:`Buffer` regions (the caller's input and
output, views into the packed-weight arena and the scratch arena), a set of
:class:`Kernel` functions (one per network stage; each gets its buffers as
separate ``noalias`` pointers) and an entry body that walks the batch in tiles
and calls the kernels.  Sizes are in floats.  ``verify`` checks scoping and
vector widths; ``format_program`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union, assert_never

# ----------------------------------------------------------------------------- index expressions


@dataclass(frozen=True, slots=True)
class IConst:
    value: int


@dataclass(frozen=True, slots=True)
class IVar:
    name: str


@dataclass(frozen=True, slots=True)
class IBin:
    op: Literal["add", "sub", "mul", "min"]
    a: "Index"
    b: "Index"


@dataclass(frozen=True, slots=True)
class IDivC:
    """``a // c`` (``mod=False``) or ``a % c`` (``mod=True``) for a constant ``c > 0`` and ``a >= 0``."""

    a: "Index"
    c: int
    mod: bool = False


@dataclass(frozen=True, slots=True)
class ILet:
    """``value``, also bound to ``name`` for the rest of the innermost enclosing block, from the
    point where it is evaluated (:mod:`.valnum` makes shared index expressions explicit with it).
    Evaluation order is codegen's: a store's value before its index, operands left to right."""

    name: str
    value: "Index"


Index = Union[IConst, IVar, IBin, IDivC, ILet]


def ix(v: "Index | int | str") -> Index:
    if isinstance(v, int):
        return IConst(v)
    if isinstance(v, str):
        return IVar(v)
    return v


def iadd(*terms: "Index | int | str") -> Index:
    """Sum with constant folding (keeps printed IR and generated code tidy)."""
    const = 0
    rest: list[Index] = []
    for t in terms:
        t = ix(t)
        if isinstance(t, IConst):
            const += t.value
        else:
            rest.append(t)
    out: Index | None = None
    for t in rest:
        out = t if out is None else IBin("add", out, t)
    if out is None:
        return IConst(const)
    return out if const == 0 else IBin("add", out, IConst(const))


def imul(a: "Index | int | str", b: "Index | int | str") -> Index:
    a, b = ix(a), ix(b)
    if isinstance(a, IConst) and isinstance(b, IConst):
        return IConst(a.value * b.value)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, IConst):
            if x.value == 0:
                return IConst(0)
            if x.value == 1:
                return y
    return IBin("mul", a, b)


def imin(a: "Index | int | str", b: "Index | int | str") -> Index:
    a, b = ix(a), ix(b)
    if isinstance(a, IConst) and isinstance(b, IConst):
        return IConst(min(a.value, b.value))
    return IBin("min", a, b)


def isub(a: "Index | int | str", b: "Index | int | str") -> Index:
    a, b = ix(a), ix(b)
    if isinstance(a, IConst) and isinstance(b, IConst):
        return IConst(a.value - b.value)
    if isinstance(b, IConst):
        return iadd(a, -b.value)
    return IBin("sub", a, b)


# ----------------------------------------------------------------------------- float values


@dataclass(frozen=True, slots=True)
class FConst:
    value: float
    width: int = 1  # splat when > 1


@dataclass(frozen=True, slots=True)
class Load:
    """``width`` consecutive floats of ``buf`` starting at element ``index``."""

    buf: str
    index: Index
    width: int = 1


@dataclass(frozen=True, slots=True)
class Broadcast:
    value: "Value"  # a scalar
    width: int


@dataclass(frozen=True, slots=True)
class Local:
    name: str


@dataclass(frozen=True, slots=True)
class FMA:
    """``a * b + c``, fused (``llvm.fma``)."""

    a: "Value"
    b: "Value"
    c: "Value"


@dataclass(frozen=True, slots=True)
class Bin:
    op: Literal["add", "sub", "mul", "div", "max", "min"]
    a: "Value"
    b: "Value"


@dataclass(frozen=True, slots=True)
class Unary:
    """Elementwise math; ``exp`` is the vectorised polynomial from ``codegen``.  ``log`` (the
    loss's log-sum-exp) and ``step`` (``1.0`` where ``a > 0``, else ``0.0``: relu's derivative,
    PyTorch's choice of 0 at 0) serve the backward pass (:mod:`.train`)."""

    op: Literal["exp", "relu", "sigmoid", "tanh", "log", "step"]
    a: "Value"


@dataclass(frozen=True, slots=True)
class ToFloat:
    """An index expression converted to float, splat to ``width`` lanes."""

    index: Index
    width: int = 1


@dataclass(frozen=True, slots=True)
class SelectLanes:
    """Lanes ``< n_valid`` from ``a``, the others from ``b``."""

    n_valid: int
    a: "Value"
    b: "Value"


@dataclass(frozen=True, slots=True)
class Reduce:
    """Horizontal ``add`` / ``max`` of a vector to a scalar."""

    op: Literal["add", "max"]
    a: "Value"


Value = Union[FConst, Load, Broadcast, Local, FMA, Bin, Unary, ToFloat, SelectLanes, Reduce]


# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class For:
    """``for var in range(start, stop, step)``; ``unroll`` asks :mod:`.unroll` to expand it (constant bounds)."""

    var: str
    start: Index
    stop: Index
    step: int
    body: tuple["Stmt", ...]
    unroll: bool = False


@dataclass(frozen=True, slots=True)
class LetIndex:
    """An immutable integer binding, visible to the rest of the enclosing block."""

    name: str
    value: Index


@dataclass(frozen=True, slots=True)
class DeclLocal:
    """A mutable register (accumulator) of ``width`` lanes, visible to the rest of the block."""

    name: str
    width: int
    init: Value


@dataclass(frozen=True, slots=True)
class Assign:
    name: str
    value: Value


@dataclass(frozen=True, slots=True)
class Store:
    """``buf[index : +width] = value``; ``lanes > 0`` stores only the first ``lanes`` lanes."""

    buf: str
    index: Index
    value: Value
    lanes: int = 0


PROFILE_BUFFER = "profile.cycles"  # scratch buffer of int64 cycle counters (``Call.timer`` slots)


@dataclass(frozen=True, slots=True)
class Call:
    """A kernel call; ``timer >= 0`` adds its cycle count (``llvm.readcyclecounter``) to int64 slot
    ``timer`` of the :data:`PROFILE_BUFFER` (entry only)."""

    kernel: str
    args: tuple[Index, ...]  # the kernel's integer parameters; buffers are passed implicitly
    timer: int = -1


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(frozen=True, slots=True)
class Block:
    """A nested scope: its bindings end with it.  ``binds`` names constants for the body: the
    unrolled loop variable of one iteration (:mod:`.unroll` makes one block per iteration)."""

    body: tuple["Stmt", ...]
    binds: tuple[tuple[str, int], ...] = ()


Stmt = Union[For, LetIndex, DeclLocal, Assign, Store, Call, Comment, Block]


def map_indices(body: tuple["Stmt", ...], f: Callable[[Index], Index]) -> tuple["Stmt", ...]:
    """``body`` with ``f`` applied to every index expression, in evaluation order (a store's value
    before its index)."""

    def val(v: Value) -> Value:
        match v:
            case FConst() | Local():
                return v
            case Load(buf=b, index=i, width=w):
                return Load(b, f(i), w)
            case Broadcast(value=x, width=w):
                return Broadcast(val(x), w)
            case FMA(a=a, b=b, c=c):
                return FMA(val(a), val(b), val(c))
            case Bin(op=op, a=a, b=b):
                return Bin(op, val(a), val(b))
            case Unary(op=op, a=a):
                return Unary(op, val(a))
            case ToFloat(index=i, width=w):
                return ToFloat(f(i), w)
            case SelectLanes(n_valid=k, a=a, b=b):
                return SelectLanes(k, val(a), val(b))
            case Reduce(op=op, a=a):
                return Reduce(op, val(a))
            case _:
                assert_never(v)

    out: list[Stmt] = []
    for s in body:
        match s:
            case For(var=v, start=a, stop=b, step=st, body=inner, unroll=u):
                a = f(a)
                out.append(For(v, a, f(b), st, map_indices(inner, f), u))
            case LetIndex(name=n, value=e):
                out.append(LetIndex(n, f(e)))
            case DeclLocal(name=n, width=w, init=e):
                out.append(DeclLocal(n, w, val(e)))
            case Assign(name=n, value=e):
                out.append(Assign(n, val(e)))
            case Store(buf=b, index=i, value=e, lanes=k):
                e = val(e)
                out.append(Store(b, f(i), e, k))
            case Call(kernel=k, args=args, timer=t):
                out.append(Call(k, tuple(f(x) for x in args), t))
            case Comment():
                out.append(s)
            case Block(body=inner, binds=bs):
                out.append(Block(map_indices(inner, f), bs))
            case _:
                assert_never(s)
    return tuple(out)


# ----------------------------------------------------------------------------- containers


BufferKind = Literal["input", "output", "weights", "scratch"]


@dataclass(frozen=True, slots=True)
class Buffer:
    """A float region.  ``input`` / ``output`` are the caller's arrays (``per_image`` floats per
    image, any batch); ``weights`` / ``scratch`` are ``size`` floats at ``offset`` in their arena.
    ``fill`` is the value the scratch halo must hold (it is written once, when scratch is made)."""

    name: str
    kind: BufferKind
    size: int
    offset: int = 0
    fill: float = 0.0


@dataclass(frozen=True, slots=True)
class Kernel:
    name: str
    buffers: tuple[str, ...]  # pointer parameters, in order
    params: tuple[str, ...]  # i64 parameters, in order
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class Program:
    """``entry(input*, output*, weights*, scratch*, n)``: the whole network for ``n`` images.
    Kernels may call kernels (passing the buffers of the same names)."""

    name: str
    vector_width: int
    buffers: tuple[Buffer, ...]
    kernels: tuple[Kernel, ...]
    entry: tuple[Stmt, ...]  # may use the index variable ``n``
    weights_size: int
    scratch_size: int
    # stage entries for intra-image threading: ``(kernel, extent)`` per stage kernel, in entry order;
    # a kernel with ``extent > 0`` takes ``(n0, nt, r0, r1)`` and computes the part ``[r0, r1)`` of
    # its outermost split loop (``extent`` parts in all; disjoint parts write disjoint outputs)
    stages: tuple[tuple[str, int], ...] = ()

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)


# ----------------------------------------------------------------------------- verifier


class VerifyError(AssertionError):
    pass


def check_structure(prog: Program) -> None:
    """Check names are bound before use, widths agree and loops are sane; raise :class:`VerifyError`.

    The first half of :func:`convdsl.backend.verify.verify`; the second, that every load and store
    stays inside its buffer, is :mod:`convdsl.backend.bounds` (which builds on this module)."""
    bufs = {b.name: b for b in prog.buffers}
    if len(bufs) != len(prog.buffers):
        raise VerifyError("duplicate buffer names")
    for b in prog.buffers:
        if b.kind in ("weights", "scratch"):
            limit = prog.weights_size if b.kind == "weights" else prog.scratch_size
            if not (0 <= b.offset and b.offset + b.size <= limit):
                raise VerifyError(f"buffer {b.name} outside its arena")
    timers = [s.timer for s in _walk(prog.entry) if isinstance(s, Call) and s.timer >= 0]
    if timers and (PROFILE_BUFFER not in bufs or 2 * (max(timers) + 1) > bufs[PROFILE_BUFFER].size):
        raise VerifyError(f"timed calls need a {PROFILE_BUFFER} scratch buffer of 2 floats per timer")
    kernels = {k.name: k for k in prog.kernels}
    for k in prog.kernels:
        for bn in k.buffers:
            if bn not in bufs:
                raise VerifyError(f"kernel {k.name}: unknown buffer {bn}")
        _verify_block(k.body, set(k.params), {}, set(k.buffers), kernels, f"kernel {k.name}")
    _verify_block(prog.entry, {"n"}, {}, set(), kernels, "entry")
    for kn, extent in prog.stages:
        if kn not in kernels:
            raise VerifyError(f"stage entry for unknown kernel {kn}")
        want = ("n0", "nt", "r0", "r1") if extent > 0 else ("n0", "nt")
        if kernels[kn].params != want:
            raise VerifyError(f"stage kernel {kn}: parameters {kernels[kn].params}, want {want}")


def _walk(body: tuple[Stmt, ...]):
    for s in body:
        yield s
        if isinstance(s, (For, Block)):
            yield from _walk(s.body)


def _verify_index(e: Index, ints: set[str], where: str) -> None:
    match e:
        case IConst():
            pass
        case IVar(name=n):
            if n not in ints:
                raise VerifyError(f"{where}: index variable {n!r} unbound")
        case IBin(a=a, b=b):
            _verify_index(a, ints, where)
            _verify_index(b, ints, where)
        case IDivC(a=a, c=c):
            if c <= 0:
                raise VerifyError(f"{where}: division by {c}")
            _verify_index(a, ints, where)
        case ILet(name=n, value=a):
            _verify_index(a, ints, where)
            if n in ints:
                raise VerifyError(f"{where}: {n!r} rebound")
            ints.add(n)  # (the enclosing block's set: visible from here to the block's end)
        case _:
            assert_never(e)


def _width(v: Value, ints: set[str], locs: dict[str, int], bufs: set[str], where: str) -> int:
    def w(x: Value) -> int:
        return _width(x, ints, locs, bufs, where)

    def same(*xs: Value) -> int:
        ws = {w(x) for x in xs}
        if len(ws) != 1:
            raise VerifyError(f"{where}: width mismatch {sorted(ws)} in {type(v).__name__}")
        return ws.pop()

    match v:
        case FConst(width=n):
            return n
        case Load(buf=b, index=i, width=n):
            if b not in bufs:
                raise VerifyError(f"{where}: load from buffer {b!r} not passed to the kernel")
            _verify_index(i, ints, where)
            return n
        case Broadcast(value=x, width=n):
            if w(x) != 1:
                raise VerifyError(f"{where}: broadcast of a vector")
            return n
        case Local(name=n):
            if n not in locs:
                raise VerifyError(f"{where}: local {n!r} undeclared")
            return locs[n]
        case FMA(a=a, b=b, c=c):
            return same(a, b, c)
        case Bin(a=a, b=b):
            return same(a, b)
        case Unary(a=a):
            return w(a)
        case ToFloat(index=i, width=n):
            _verify_index(i, ints, where)
            return n
        case SelectLanes(n_valid=k, a=a, b=b):
            n = same(a, b)
            if not 0 <= k <= n:
                raise VerifyError(f"{where}: select of {k} lanes of {n}")
            return n
        case Reduce(a=a):
            w(a)
            return 1
        case _:
            assert_never(v)


def _verify_block(body: tuple[Stmt, ...], ints: set[str], locs: dict[str, int], bufs: set[str],
                  kernels: dict[str, Kernel], where: str) -> None:
    ints = set(ints)
    locs = dict(locs)
    for s in body:
        match s:
            case For(var=v, start=a, stop=b, step=st, body=inner, unroll=u):
                _verify_index(a, ints, where)
                _verify_index(b, ints, where)
                if st < 1:
                    raise VerifyError(f"{where}: loop {v} has step {st}")
                if v in ints:
                    raise VerifyError(f"{where}: loop variable {v!r} shadows a binding")
                if u and not (isinstance(a, IConst) and isinstance(b, IConst)):
                    raise VerifyError(f"{where}: unrolled loop {v} needs constant bounds")
                _verify_block(inner, ints | {v}, locs, bufs, kernels, where)
            case LetIndex(name=n, value=e):
                _verify_index(e, ints, where)
                if n in ints:
                    raise VerifyError(f"{where}: {n!r} rebound")
                ints.add(n)
            case DeclLocal(name=n, width=wd, init=e):
                if n in locs:
                    raise VerifyError(f"{where}: local {n!r} declared twice")
                if _width(e, ints, locs, bufs, where) != wd:
                    raise VerifyError(f"{where}: local {n!r} initialised with the wrong width")
                locs[n] = wd
            case Assign(name=n, value=e):
                if n not in locs:
                    raise VerifyError(f"{where}: assignment to undeclared {n!r}")
                if _width(e, ints, locs, bufs, where) != locs[n]:
                    raise VerifyError(f"{where}: assignment to {n!r} changes its width")
            case Store(buf=b, index=i, value=e, lanes=k):
                if b not in bufs:
                    raise VerifyError(f"{where}: store to buffer {b!r} not passed to the kernel")
                we = _width(e, ints, locs, bufs, where)  # (the value is evaluated before the index)
                _verify_index(i, ints, where)
                if not 0 <= k <= we:
                    raise VerifyError(f"{where}: store of {k} lanes of a narrower value")
            case Call(kernel=k, args=args):
                if k not in kernels:
                    raise VerifyError(f"{where}: call of unknown kernel {k!r}")
                if len(args) != len(kernels[k].params):
                    raise VerifyError(f"{where}: {k} takes {len(kernels[k].params)} arguments")
                if where != "entry" and not set(kernels[k].buffers) <= bufs:
                    raise VerifyError(f"{where}: {k} needs buffers the caller does not have")
                for a in args:
                    _verify_index(a, ints, where)
                if s.timer >= 0 and where != "entry":
                    raise VerifyError(f"{where}: timed call of {k} outside the entry")
            case Block(body=inner, binds=bs):
                for n, _ in bs:
                    if n in ints:
                        raise VerifyError(f"{where}: block binding {n!r} shadows a binding")
                _verify_block(inner, ints | {n for n, _ in bs}, locs, bufs, kernels, where)
            case Comment():
                pass
            case _:
                assert_never(s)


# ----------------------------------------------------------------------------- printer


def format_index(e: Index) -> str:
    match e:
        case IConst(value=v):
            return str(v)
        case IVar(name=n):
            return n
        case IBin(op="min", a=a, b=b):
            return f"min({format_index(a)}, {format_index(b)})"
        case IBin(op=op, a=a, b=b):
            sym = {"add": "+", "sub": "-", "mul": "*"}[op]
            return f"({format_index(a)} {sym} {format_index(b)})"
        case IDivC(a=a, c=c, mod=m):
            return f"({format_index(a)} {'%' if m else '//'} {c})"
        case ILet(name=n, value=a):
            return f"({n} := {format_index(a)})"
        case _:
            assert_never(e)


def format_value(v: Value) -> str:
    match v:
        case FConst(value=x, width=1):
            return repr(x)
        case FConst(value=x, width=n):
            return f"splat<{n}>({x!r})"
        case Load(buf=b, index=i, width=1):
            return f"{b}[{format_index(i)}]"
        case Load(buf=b, index=i, width=n):
            return f"{b}[{format_index(i)} : +{n}]"
        case Broadcast(value=x, width=n):
            return f"bcast<{n}>({format_value(x)})"
        case Local(name=n):
            return n
        case FMA(a=a, b=b, c=c):
            return f"fma({format_value(a)}, {format_value(b)}, {format_value(c)})"
        case Bin(op=op, a=a, b=b):
            return f"{op}({format_value(a)}, {format_value(b)})"
        case Unary(op=op, a=a):
            return f"{op}({format_value(a)})"
        case ToFloat(index=i, width=n):
            return f"float<{n}>({format_index(i)})"
        case SelectLanes(n_valid=k, a=a, b=b):
            return f"lanes<{k}>({format_value(a)}, {format_value(b)})"
        case Reduce(op=op, a=a):
            return f"reduce_{op}({format_value(a)})"
        case _:
            assert_never(v)


def _format_block(body: tuple[Stmt, ...], indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for s in body:
        match s:
            case For(var=v, start=a, stop=b, step=st, body=inner, unroll=u):
                step = f", step {st}" if st != 1 else ""
                out.append(f"{pad}for {v} in {format_index(a)}..{format_index(b)}{step}"
                           f"{' unrolled' if u else ''}:")
                _format_block(inner, indent + 1, out)
            case LetIndex(name=n, value=e):
                out.append(f"{pad}let {n} = {format_index(e)}")
            case DeclLocal(name=n, width=w, init=e):
                out.append(f"{pad}var {n}: f32x{w} = {format_value(e)}")
            case Assign(name=n, value=e):
                out.append(f"{pad}{n} = {format_value(e)}")
            case Store(buf=b, index=i, value=e, lanes=k):
                part = f" (lanes < {k})" if k else ""
                out.append(f"{pad}{b}[{format_index(i)}]{part} = {format_value(e)}")
            case Call(kernel=k, args=args, timer=t):
                timed = f"  # timer {t}" if t >= 0 else ""
                out.append(f"{pad}call {k}({', '.join(format_index(a) for a in args)}){timed}")
            case Comment(text=t):
                out.append(f"{pad}# {t}")
            case Block(body=inner, binds=bs):
                label = ", ".join(f"{n} = {k}" for n, k in bs)
                out.append(f"{pad}block{f' ({label})' if label else ''}:")
                _format_block(inner, indent + 1, out)
            case _:
                assert_never(s)


def format_program(prog: Program) -> str:
    out = [f"program {prog.name}  (vector width {prog.vector_width}, weights {prog.weights_size} floats, "
           f"scratch {prog.scratch_size} floats)"]
    for b in prog.buffers:
        where = f" @{b.offset}" if b.kind in ("weights", "scratch") else " per image"
        fill = f" fill {b.fill}" if b.fill != 0.0 else ""
        out.append(f"  buffer {b.name}: {b.kind} {b.size}{where}{fill}")
    for k in prog.kernels:
        out.append(f"kernel {k.name}({', '.join(k.buffers)}; {', '.join(k.params)}):")
        _format_block(k.body, 1, out)
    out.append("entry(n):")
    _format_block(prog.entry, 1, out)
    return "\n".join(out) + "\n"
