"""The documented Python API.

    import convdsl, numpy as np

    program = convdsl.load("examples/lenet.conv")       # parse + check (CompileError on errors)
    net = convdsl.compile(program, weights="examples/lenet.npz")
    y = net(np.zeros((8, 1, 28, 28), np.float32))        # -> float32 [8, 10]

``load`` / ``loads`` run the front end; ``compile`` binds a checked model to
its weights and returns a :class:`Network`, a callable that checks every input
array before native code sees it.  Symbolic sizes (``H``, ``W``) are bound
from each input array; every new binding is compiled once and kept in memory
(and, through :mod:`convdsl.backend.cache`, on disk).  The batch size is an argument of
the compiled code, so a new ``N`` compiles nothing.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .backend.schedule import Schedule, TargetError, host_features
from .core import stages
from .core.diagnostics import CompileError
from .core.model import CheckedModel, format_model, valid_for_text
from .frontend import Checked, check_file, check_source
from .frontend import ast as syntax
from .frontend.check import CheckResult
from .runtime.boundary import BoundaryError, bind_input, check_sizes, load_weights, random_weights, validate_weights
from .runtime.limits import check_model, threads_cap
from .runtime.weights_io import save_weights

if TYPE_CHECKING:  # (imported when compiling: it loads LLVM)
    from .backend.jit import Target
    from .runtime.compiled import CompiledModel, PackedWeights


@dataclass(frozen=True)
class Program:
    """A checked ``.conv`` file: every model in it, ready to compile."""

    checked: Checked

    @property
    def file(self) -> str:
        return self.checked.file

    @property
    def result(self) -> CheckResult:
        return self.checked.result

    @property
    def models(self) -> tuple[CheckedModel, ...]:
        return self.result.models

    @property
    def warnings(self) -> str:
        return self.checked.render(self.result.warnings)

    @property
    def ast(self) -> syntax.Program:
        """The syntax tree the models were checked from (``convdsl.frontend.ast``)."""
        assert self.checked.tree is not None  # (a Program is made only from a file that parsed and checked)
        return self.checked.tree

    def model(self, name: str | None = None) -> CheckedModel:
        """The model called ``name``; by default the only or last one in the file."""
        try:
            return self.result.model(name)
        except KeyError as e:
            raise KeyError(f"{self.file}: {e.args[0]}") from None


class Beside:
    """The type of :data:`BESIDE` (a sentinel, so that no path or dict can be mistaken for it)."""

    def __repr__(self) -> str:
        return "convdsl.BESIDE"


BESIDE = Beside()
"""``weights=BESIDE``: the weights file beside the program (:func:`weights_beside`) if there is one,
else seeded random weights.  The rule every command that needs weights (``convdsl run``, ``convdsl
bench``) follows without ``--weights``; kept here so that it is written once."""

BESIDE_EXTENSIONS = (".npz", ".safetensors")
"""The weights files :data:`BESIDE` looks for next to ``FILE.conv``, in this order (a ``.pt`` is
not among them: it needs torch, which convdsl does not)."""


def weights_beside(program: "Program | str | os.PathLike") -> str:
    """Where :data:`BESIDE` finds weights: the first of ``FILE.npz``, ``FILE.safetensors`` next to
    ``FILE.conv`` that exists, else ``FILE.npz`` (which then does not exist)."""
    file = program.file if isinstance(program, Program) else os.fspath(program)
    stem = os.path.splitext(file)[0]
    return next((stem + e for e in BESIDE_EXTENSIONS if os.path.isfile(stem + e)), stem + BESIDE_EXTENSIONS[0])


def resolve_sizes(model: CheckedModel, sizes: Mapping[str, int] | None = None, origin: str = "sizes") -> dict[str, int]:
    """Every symbol of ``model`` but the batch ``N``: its value in ``sizes``, else the smallest valid one.

    The values are checked against ``valid_for``, ``where`` multiples and fixed values, and a
    symbol the model does not have is refused: a :class:`BoundaryError` (its message starting with
    ``origin``) rather than code compiled for sizes the model cannot take.
    """
    env = model.sizes(sizes)
    check_sizes(model, env, origin)
    return env


def check_limits(model: CheckedModel, sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """:func:`resolve_sizes`, and then every size of the model at those values (each layer's output
    per image, its weights, its op's arguments) against the caps of ``docs/limits.md``: a
    :class:`~convdsl.runtime.limits.LimitError` (a ``BoundaryError``) naming the layer, the cap and
    the environment variable that raises it.  What compiling does first; for checking sizes before
    making anything of them (``convdsl run`` draws its random batch after this)."""
    env = resolve_sizes(model, sizes)
    check_model(model.bind(env))
    return env


def max_threads() -> int:
    """The most threads a network runs on: ``$CONVDSL_MAX_THREADS``, else the cores this process may
    use.  ``threads=`` beyond it is clamped to it (more threads than cores only wait for each other)."""
    return threads_cap()


def _threads(t: object) -> int:
    """A ``threads=`` argument as the count to run on: an integer of at least 1, clamped to
    :func:`max_threads` (the one meaning both ``compile`` and ``Network.__call__`` give it)."""
    if type(t) is not int:
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool):
            raise BoundaryError(f"threads must be an integer, got {type(t).__name__} {t!r}")
        t = int(t)
    if t < 1:
        raise BoundaryError(f"threads must be at least 1 (or None for every core), got {t}")
    return min(t, threads_cap())


def _frozen(weights: Mapping[str, np.ndarray], owned: bool) -> dict[str, np.ndarray]:
    """The weights as read-only arrays no caller can change: a network compiles each new binding
    from them, so an array edited after ``compile`` would otherwise change only the sizes not
    compiled yet.  ``owned`` (fresh arrays read from a file) are frozen in place, others copied."""
    out = {}
    for k, v in weights.items():
        arr = v if owned and isinstance(v, np.ndarray) else np.array(v, copy=True)
        arr.flags.writeable = False
        out[k] = arr
    return out


@dataclass(frozen=True)
class HostCPU:
    """The machine the code is compiled for, as LLVM sees it."""

    name: str  # LLVM's CPU name: ``skylake-avx512``, ``znver3``, ...
    features: frozenset[str]  # the enabled features: ``avx2``, ``fma``, ``avx512f``, ...


def host_cpu() -> HostCPU:
    """This machine's CPU as LLVM names it, and its features (what ``Schedule.for_host()`` reads)."""
    import llvmlite.binding as llvm

    feats = host_features()  # (initialises LLVM's native target, which the CPU name needs too)
    return HostCPU(llvm.get_host_cpu_name(), frozenset(k for k, on in feats.items() if on))


def cpu_names() -> tuple[str, ...]:
    """The CPU names ``cpu=`` (``--cpu``) takes: LLVM's processors for this target, as
    ``llc -mcpu=help`` lists them."""
    from .backend.jit import cpu_names as names

    return names()


def target(cpu: str | None = None) -> "Target":
    """The machine code is compiled for: this host (``cpu=None``: its name and detected features),
    else the LLVM CPU ``cpu`` with its own features.  Its ``vector_width`` is the width the
    schedule takes (16 floats with AVX-512, 8 with AVX, 4 otherwise).  An unknown name, or one
    that cannot run 64-bit code, raises :class:`TargetError` saying where the valid names are."""
    from .backend.jit import cpu_target, host_target

    return host_target() if cpu is None else cpu_target(cpu)


@dataclass(frozen=True)
class FmaPeak:
    """The FMA throughput this machine reaches with code convdsl generates (:func:`fma_peak`)."""

    gflops: float  # all threads together
    threads: int
    width: int  # floats per vector
    accumulators: int  # independent FMA chains per thread


def fma_peak(threads: int = 1, *, width: int | None = None, seconds: float = 0.1, repeat: int = 3) -> FmaPeak:
    """The machine's float32 FMA peak: a kernel of independent ``<width x float>`` ``llvm.fma``
    chains (``backend/peak.py``; ``width`` default: the host schedule's), compiled for this host,
    run on ``threads`` threads at once (clamped to :func:`max_threads`, as a network's
    ``threads=``), the best of ``repeat`` runs of about ``seconds``.  The limit ``% of FMA peak``
    in ``convdsl bench`` is quoted against."""
    from .backend.peak import ACCUMULATORS
    from .runtime.peak import fma_peak as measure

    t = _threads(threads)
    w = Schedule.for_host().vector_width if width is None else width
    return FmaPeak(measure(w, t, seconds=seconds, repeat=repeat), t, w, ACCUMULATORS)


def _program(checked: Checked) -> Program:
    if not checked.ok:
        raise CompileError(checked.result.errors, {checked.file: checked.text})
    return Program(checked)


def load(path: str | os.PathLike) -> Program:
    """Parse and check a ``.conv`` file; raise :class:`CompileError` (holding every diagnostic) if it is wrong."""
    return _program(check_file(path))


def loads(text: str, file: str = "<string>") -> Program:
    """As :func:`load`, from source text."""
    return _program(check_source(text, file))


class Network:
    """A compiled model with its weights: call it on a float32 ``[N, C, H, W]`` array."""

    def __init__(self, program: Program, model: CheckedModel, weights: Mapping[str, np.ndarray] | None,
                 weights_origin: str, *, seed: int = 0, schedule: Schedule | None = None,
                 cache: bool = True, threads: int | None = None, _owned: bool = False) -> None:
        self.program = program
        self.model = model
        self.schedule = schedule or Schedule.for_host()
        self.cache = cache
        self.threads = threads_cap() if threads is None else _threads(threads)
        if threads is not None and self.threads < threads:
            warnings.warn(f"threads={threads}: using {self.threads}, the most this process runs on "
                          "(its usable cores; CONVDSL_MAX_THREADS raises the cap)", RuntimeWarning, stacklevel=3)
        self.seed = seed
        self.weights_origin = weights_origin
        self._weights = None if weights is None else _frozen(weights, _owned)
        self._bindings: dict[tuple[tuple[str, int], ...], _Binding] = {}
        self._lock = threading.Lock()
        self.last_compile: "CompileStats | None" = None
        self._last: tuple[tuple[int, ...], _Binding] | None = None  # (per-image shape, binding) of the last call

    @property
    def random_weights(self) -> bool:
        return self._weights is None

    @property
    def weights_description(self) -> str:
        """Where the weights came from, for a person: the file, or the random initialisation and its seed."""
        if self._weights is None:
            return f"seeded random weights (PyTorch's default initialisation, seed {self.seed})"
        return self.weights_origin

    def weights(self, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """The float32 arrays the network computes with at these sizes (default: the smallest valid).

        The given weights as checked against the model, or the seeded random ones (the same
        arrays every time): what another implementation needs to compute the same function
        (``convdsl bench`` builds its competitors from them).  Raises :class:`BoundaryError` for
        weights that do not fit.  The arrays are the caller's: writable, and shared with nothing
        (the network's own are frozen, and another framework may write to what it is given).
        """
        return {k: v if v.flags.writeable else v.copy()
                for k, v in self._weights_at(resolve_sizes(self.model, sizes)).items()}

    def save_weights(self, path: str | os.PathLike, sizes: Mapping[str, int] | None = None) -> None:
        """Write :meth:`weights` to ``path``, as ``.npz`` or ``.safetensors`` by its extension
        (atomically: the file is complete or not there; :func:`save_weights`)."""
        save_weights(path, self._weights_at(resolve_sizes(self.model, sizes)))

    def _weights_at(self, env: Mapping[str, int]) -> dict[str, np.ndarray]:
        if self._weights is None:
            return random_weights(self.model, env, self.seed)
        return validate_weights(self.model, env, self._weights, self.weights_origin)

    # ------------------------------------------------------------------ binding
    def _env_of(self, x_shape: tuple[int, ...]) -> dict[str, int]:
        env = {}
        for d, n in zip(self.model.input_shape, x_shape):
            if not isinstance(d, int):
                env[str(d)] = int(n)
        env.pop("N", None)
        return env

    def bind(self, sizes: Mapping[str, int] | None = None) -> "_Binding":
        """Compile (or fetch) the code for the given symbol values (default: ``valid_for``).

        The sizes are checked first (:func:`resolve_sizes`); ``last_compile`` then holds this
        binding's compile time.
        """
        env = resolve_sizes(self.model, sizes)
        key = tuple(sorted(env.items()))
        with self._lock:
            b = self._bindings.get(key)
            if b is None:
                b = self._bindings[key] = self._compile(env)
        return b

    def _compile(self, env: dict[str, int]) -> "_Binding":
        weights = self._weights_at(env)
        compiled, stats = compile_code(self.program, self.model, env, schedule=self.schedule, cache=self.cache)
        self.last_compile = stats
        return _Binding(compiled, compiled.pack_weights(weights), env, stats)

    # ------------------------------------------------------------------ calling
    def __call__(self, x: object, threads: int | None = None) -> np.ndarray:
        """Run the network; ``x`` is checked (rank, dtype, sizes) before native code sees it."""
        t = self.threads if threads is None else _threads(threads)
        last = self._last
        # Fast path for the common loop over same-sized batches: an array of exactly the kind the
        # last call validated (float32, C-contiguous, same rank and per-image shape, N >= 1) needs
        # no new checks; it saves about half the Python overhead of a batch-1 call.
        if (last is not None and type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
                and x.shape[1:] == last[0] and x.ndim == len(last[0]) + 1 and x.shape[0] >= 1):
            b = last[1]
            arr = x
        else:
            arr, b = self._checked_input(x)
            self._last = (arr.shape[1:], b)
        out = b.compiled.run(arr, b.packed, threads=t)
        return out.reshape((arr.shape[0], *b.compiled.output_shape))

    def _checked_input(self, x: object) -> tuple[np.ndarray, "_Binding"]:
        """``x`` checked against the model (as float32, C-contiguous) and the binding for its sizes."""
        arr, env = bind_input(self.model, x)
        env.pop("N", None)
        return arr, self.bind(env)

    def profile(self, x: object, repeat: int = 10) -> dict[str, float]:
        """Seconds per call spent in each stage of the native code, on one thread, over ``repeat`` calls on ``x``.

        Keyed by layer name (a layer fused into the one before it has no entry of its own), plus
        ``input`` / ``output`` for the copies in and out.  From cycle counters that a profiled
        twin of the binding's code keeps (compiled on the first profile, same weights).
        """
        arr, b = self._checked_input(x)
        return b.compiled.profile(arr, b.packed, repeat)

    # ------------------------------------------------------------------ introspection
    def llvm_ir(self, sizes: Mapping[str, int] | None = None) -> str:
        return self.bind(sizes).compiled.llvm_ir

    def asm(self, sizes: Mapping[str, int] | None = None) -> str:
        return self.bind(sizes).compiled.asm

    def object_code(self, sizes: Mapping[str, int] | None = None) -> bytes:
        return self.bind(sizes).compiled.object_code()

    def loops(self, sizes: Mapping[str, int] | None = None) -> str:
        """The loop-level IR the LLVM module was generated from."""
        return self.bind(sizes).compiled.loops


@dataclass(frozen=True)
class CompileStats:
    seconds: float
    cache_hit: bool


@dataclass(frozen=True)
class _Binding:
    compiled: "CompiledModel"
    packed: "PackedWeights"
    env: Mapping[str, int]
    stats: CompileStats


def compile_code(program: Program, model: CheckedModel, sizes: Mapping[str, int] | None = None, *,
                 schedule: Schedule | None = None, cache: bool = True):
    """Generate native code for ``model`` at the given symbol values (default: ``valid_for``; checked by
    :func:`resolve_sizes`).

    Returns ``(backend.CompiledModel, CompileStats)``; no weights are needed.
    """
    from .runtime.compiled import compile_model

    env = resolve_sizes(model, sizes)
    schedule = schedule or Schedule.for_host()
    concrete = model.bind(env)
    check_model(concrete)  # (before anything of those sizes is made)
    start = time.perf_counter()
    compiled = compile_model(concrete, schedule, program.checked.text if cache else None)
    return compiled, CompileStats(time.perf_counter() - start, compiled.cache_hit)


def network(program: Program | str | os.PathLike,
            weights: Mapping[str, np.ndarray] | str | os.PathLike | Beside | None = None,
            *, model: str | None = None, seed: int = 0, schedule: Schedule | None = None, cache: bool = True,
            threads: int | None = None) -> Network:
    """:func:`compile`'s network before anything is compiled: its weights read by the same rules
    (``BESIDE``, a path, a dict, None), for tools that need the arrays but no code (``convdsl
    export``).  ``Network.weights(sizes)`` checks them against the model."""
    if not isinstance(program, Program):
        program = load(program)
    m = program.model(model)
    if isinstance(weights, Beside):
        beside = weights_beside(program)
        weights = beside if os.path.isfile(beside) else None
    origin = "weights"
    owned = False
    if isinstance(weights, (str, os.PathLike)):
        origin = os.fspath(weights)
        weights = load_weights(weights, m)  # (only the model's arrays are read, each checked first)
        owned = True
    return Network(program, m, weights, origin, seed=seed, schedule=schedule, cache=cache, threads=threads,
                   _owned=owned)


def compile(program: Program | str | os.PathLike,
            weights: Mapping[str, np.ndarray] | str | os.PathLike | Beside | None = None,
            *, model: str | None = None, seed: int = 0, schedule: Schedule | None = None, cache: bool = True,
            threads: int | None = None) -> Network:
    """Bind a checked model to its weights.

    ``program``: a :class:`Program` or a path to a ``.conv`` file.  ``weights``:
    a dict of arrays named ``LAYER.weight`` / ``LAYER.bias`` in PyTorch layouts,
    a path to a weights file holding them (``.npz``, ``.safetensors``, or a PyTorch
    ``state_dict`` ``.pt``/``.pth`` where torch is installed; see ``docs/weights.md``),
    None for seeded random weights (PyTorch's default initialisation), or :data:`BESIDE`
    for the weights file beside the program if there is one, else seeded random ones
    (``Network.weights_description`` says which).  Weights are checked against the model
    (names, shapes, dtypes) when a binding is compiled: a mismatch raises
    :class:`~convdsl.runtime.boundary.BoundaryError` naming the layer, the expected and
    the found shape.  A model whose input sizes are all fixed (but the batch)
    is compiled here; one with symbolic sizes compiles each binding on the
    first call with those sizes (or ``bind``).  The weights are frozen here
    (arrays given are copied): changing them afterwards changes nothing.
    A file is judged from its directory or header first, and only the model's arrays
    are read (:func:`~convdsl.runtime.weights_io.load_weights`); where its names are an
    ``nn.Sequential``'s indices, the mapping to the model's layers is printed on stderr.

    ``threads``: None for every core this process may use, else an integer of
    at least 1, clamped (with a ``RuntimeWarning``) to :func:`max_threads`;
    ``net(x, threads=T)`` takes the same values and clamps silently.
    Sizes past a cap of ``docs/limits.md`` raise
    :class:`~convdsl.runtime.limits.LimitError` when a binding is compiled.
    """
    net = network(program, weights, model=model, seed=seed, schedule=schedule, cache=cache, threads=threads)
    m, weights, origin = net.model, net._weights, net.weights_origin
    if all(isinstance(d, int) for d in m.input_shape[1:]):
        net.bind()  # one binding serves every call: compile now (and check the weights)
    elif weights is not None and all(isinstance(d, int) for shape in m.weight_shapes().values() for d in shape):
        # Fail early where the weight shapes do not depend on the input size.
        validate_weights(m, m.sizes(), weights, origin)
    return net


def emit(program: Program | str | os.PathLike, stage: str, *, model: str | None = None,
         sizes: Mapping[str, int] | None = None, schedule: Schedule | None = None, cache: bool = True,
         cpu: str | None = None) -> str | bytes:
    """One stage of the pipeline, as ``convdsl compile --emit STAGE`` writes it.

    ``stage`` is one of ``convdsl.core.stages.STAGES``, in pipeline order: ``ast`` (the syntax
    tree of the whole file, :func:`convdsl.frontend.ast.format_program`), ``model`` (the checked,
    flattened model, :func:`convdsl.core.model.format_model`), ``plan`` (the per-stage lowering
    decisions, :func:`convdsl.backend.plan.format_plan`), ``loops`` (the loop IR as lowered),
    ``loops-final`` (the loop IR after the unroll and value-numbering passes: what codegen
    translates, :func:`convdsl.backend.driver.passes`), ``llvm``
    (the optimised LLVM IR), ``asm`` (host assembly), all text, and ``obj`` (an ELF object for the
    host, bytes).  ``model`` picks the model (default: the only or last one); ``sizes`` binds
    symbolic sizes for the stages from ``loops`` on (default: the smallest valid); ``ast`` and
    ``model`` are printed symbolic.  No weights are needed.

    ``cpu``: an LLVM CPU name (``x86-64-v3``, ``znver3``, ``skylake-avx512``; :func:`cpu_names`
    lists them) to make ``plan``, ``loops``, ``llvm``, ``asm`` and ``obj`` for that CPU instead
    of this one: its features, and a schedule of its vector width (:func:`target`); the object is
    position-independent and never cached.  An unknown name raises :class:`TargetError`.
    """
    if stage not in stages.STAGES:
        raise ValueError(f"unknown stage {stage!r} (the stages: {', '.join(stages.STAGES)})")
    if not isinstance(program, Program):
        program = load(program)
    if stage == "ast":
        return syntax.format_program(program.ast)
    m = program.model(model)
    if stage == "model":
        return format_model(m)
    tgt = target(cpu) if cpu is not None else None
    if tgt is not None:
        schedule = schedule or Schedule.for_width(tgt.vector_width)
    if stage == "plan":
        from .backend.plan import format_plan, plan

        return format_plan(plan(m.bind(resolve_sizes(m, sizes)), schedule or Schedule.for_host()))
    if tgt is not None and stage in ("llvm", "asm", "obj"):
        from .backend.driver import build_object

        concrete = m.bind(resolve_sizes(m, sizes))
        check_model(concrete)
        native = build_object(concrete, schedule or Schedule.for_width(tgt.vector_width), tgt).native
        if stage == "obj":
            return native.object_code()
        return native.llvm_ir if stage == "llvm" else native.asm
    compiled, _ = compile_code(program, m, sizes, schedule=schedule, cache=cache)
    if stage == "obj":
        return compiled.object_code()
    if stage == "loops-final":
        from .backend.driver import passes
        from .backend.loopir import format_program

        return format_program(passes(compiled.program))
    return {"loops": compiled.loops, "llvm": compiled.llvm_ir, "asm": compiled.asm}[stage]


def time_passes(program: Program | str | os.PathLike, *, model: str | None = None,
                sizes: Mapping[str, int] | None = None,
                schedule: Schedule | None = None) -> tuple[tuple[str, float], ...]:
    """How long each stage of the pipeline takes on ``program``: ``(stage, seconds)`` in pipeline
    order (parse, check, bind, plan, lower+verify, unroll, valnum, verify, codegen, llvm), as LLVM's
    ``-time-passes``.

    The stages run once more from the program's text, the back end without the compile cache, so
    that every figure is a real run of its stage.  :func:`format_timings` prints them.
    """
    from .backend.driver import build
    from .frontend.check import check
    from .frontend.parse import parse

    if not isinstance(program, Program):
        program = load(program)
    times: list[tuple[str, float]] = []
    t = time.perf_counter()
    tree, _ = parse(program.checked.text, program.checked.file)
    times.append(("parse", time.perf_counter() - t))
    t = time.perf_counter()
    if tree is not None:
        check(tree)
    times.append(("check", time.perf_counter() - t))
    m = program.model(model)
    t = time.perf_counter()
    concrete = m.bind(resolve_sizes(m, sizes))
    times.append(("bind", time.perf_counter() - t))
    return tuple(times) + build(concrete, schedule or Schedule.for_host()).timings


def format_timings(timings: tuple[tuple[str, float], ...]) -> str:
    """A :func:`time_passes` result as a table: milliseconds, share of the total, stage."""
    from .backend.driver import format_timings as fmt

    return fmt(timings)


# ----------------------------------------------------------------------------- the C library


class LibraryError(BoundaryError):
    """A C library that cannot be made as asked: symbolic sizes left open, no C compiler, a link or
    a write that failed.  Nothing of the library is written then."""


@dataclass(frozen=True)
class Library:
    """What :func:`compile_library` wrote, and the facts of its header."""

    shared: str  # OUT.so
    object: str  # OUT.o (the same code, for static linking)
    header: str  # OUT.h
    model: str  # the model's name; the C names are its lower case (``lenet_run``) and upper case
    run: str  # ``p_run``'s name
    workspace_size_fn: str  # ``p_workspace_size``'s name
    exported: tuple[str, ...]  # every symbol the library defines for its users
    input_shape: tuple[int, ...]  # per image
    output_shape: tuple[int, ...]  # per image
    workspace_size: int  # bytes, for every batch of at least one image
    batch_tile: int  # images per pass through the network
    sizes: Mapping[str, int]  # the symbols fixed
    cpu: str  # the LLVM CPU the code is for
    vector_width: int
    weights_description: str
    random_weights: bool  # seeded random weights (none given, none beside the program)


def library_sizes(model: CheckedModel, sizes: Mapping[str, int] | None = None, origin: str = "sizes") -> dict[str, int]:
    """The sizes a C library of ``model`` is compiled for: every symbol but ``N`` must be given in
    ``sizes`` or fixed by the model's ``where`` clause (a library takes one image size: its header
    defines it), and is checked as :func:`check_limits` checks it; else :class:`LibraryError` (or the
    :class:`BoundaryError` of the check, its message starting with ``origin``)."""
    from .core import symbolic as sy

    given = dict(sizes or {})
    open_syms = sorted({str(x) for d in model.input_shape[1:] for x in sy.free_symbols(d)} - set(given)
                       - set(model.fixed) - {"N"})
    if open_syms:
        example = ",".join(f"{k}={model.valid_for.get(k, 1)}" for k in open_syms)
        raise LibraryError(f"model {model.name} has symbolic input sizes {', '.join(open_syms)}: a C library is "
                           f"compiled for one image size, so give {'them' if len(open_syms) > 1 else 'it'} "
                           f"(--size {example}, or sizes={{...}}; {valid_for_text(model)})")
    env = resolve_sizes(model, given, origin)
    check_model(model.bind(env))
    return env


def _weights_note(net: "Network") -> str:
    """The weights' origin for the header's comment: a file by its base name (a shipped header
    should not carry the builder's paths), and never a ``*/`` or control character that would end
    or break the C comment."""
    text = net.weights_description
    if os.path.sep in text and os.path.exists(text):
        text = os.path.basename(text)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text.replace("*/", "* /")


def library_paths(out: str | os.PathLike) -> tuple[str, str, str]:
    """``OUT.so``, ``OUT.o``, ``OUT.h`` for ``out`` (an ``out`` ending in one of those extensions
    names the same three files)."""
    stem = os.fspath(out)
    for ext in (".so", ".o", ".h"):
        if stem.endswith(ext) and len(stem) > len(ext):
            stem = stem[:-len(ext)]
            break
    return stem + ".so", stem + ".o", stem + ".h"


def compile_library(program: Program | str | os.PathLike, out: str | os.PathLike,
                    weights: Mapping[str, np.ndarray] | str | os.PathLike | Beside | None = BESIDE,
                    *, model: str | None = None, sizes: Mapping[str, int] | None = None, cpu: str | None = None,
                    seed: int = 0) -> Library:
    """Compile ``model`` with its weights into a C library that runs without Python: ``OUT.so`` (a
    shared library, linked with the system C compiler), ``OUT.o`` (the same code, for static
    linking) and ``OUT.h`` (``docs/interop.md``, "The C library").

    ``weights`` as for :func:`compile`, by default :data:`BESIDE` (what ``convdsl run`` uses):
    packed into the library at compile time.  ``sizes`` must fix every symbolic size but ``N``
    (:func:`library_sizes`).  ``cpu``: an LLVM CPU name (``x86-64-v3``, ``skylake-avx512``, ...)
    to compile for instead of this host (:func:`target`): its features and its vector width.

    The code is the JIT's (the same plan, kernels and forward entry), with two entry points added:
    ``p_workspace_size`` and ``p_run`` (``p`` the model's name in lower case).  The three files
    are written beside their names and renamed into place at the end: on any error
    (:class:`LibraryError`, :class:`TargetError`, a :class:`BoundaryError` for weights that do not
    fit) none of them is written or changed.
    """
    import shutil
    import tempfile

    from .backend import clib
    from .backend.driver import build_object

    net = network(program, weights, model=model, seed=seed)
    m = net.model
    env = library_sizes(m, sizes)
    tgt = target(cpu)
    schedule = Schedule.for_host() if cpu is None else Schedule.for_width(tgt.vector_width)
    arrays = net.weights(env)  # (checked against the model here, before anything is compiled)
    names = clib.Names(m.name)
    so, obj, hdr = library_paths(out)
    if not os.path.basename(os.fspath(out)) or os.fspath(out).endswith(os.sep):
        raise LibraryError(f"{os.fspath(out)!r} names a directory, not the library: give OUT (OUT.so, OUT.o "
                           f"and OUT.h are written)")
    folder = os.path.dirname(os.path.abspath(so))
    if not os.path.isdir(folder):
        raise LibraryError(f"cannot write {so}: no directory {folder}")
    # every destination checked before anything is built, so that no rename can fail half-way (a
    # rename needs the folder writable, not the file it replaces)
    if not os.access(folder, os.W_OK):
        raise LibraryError(f"cannot write in {folder}: permission denied")
    for dst in (so, obj, hdr):
        if os.path.isdir(dst):
            raise LibraryError(f"cannot write {dst}: it is a directory")
    try:
        clib.c_compiler()  # (before the compile, which would be thrown away without one)
    except clib.LinkError as e:
        raise LibraryError(str(e)) from None
    concrete = m.bind(env)
    check_model(concrete)

    def extend(module, lowered) -> None:
        clib.add_entries(module, lowered, lowered.packing.pack(arrays), names)

    built = build_object(concrete, schedule, tgt, extend)
    lowered = built.lowered
    fixed = ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
    about = (f"Model {m.name} of {os.path.basename(net.program.file)}{f' ({fixed})' if fixed else ''}, "
             f"for CPU {tgt.cpu} ({tgt.vector_width}-lane vectors); weights: {_weights_note(net)}.")
    try:
        tmp = tempfile.mkdtemp(dir=folder, prefix=".convdsl-lib-")
    except OSError as e:
        raise LibraryError(f"cannot write in {folder}: {e.strerror}") from None
    try:
        t_obj, t_so, t_hdr = (os.path.join(tmp, "lib" + ext) for ext in (".o", ".so", ".h"))
        with open(t_obj, "wb") as fb:
            fb.write(built.native.object_code())
        with open(t_hdr, "w") as ft:
            ft.write(clib.header(names, lowered, about))
        clib.link_shared(t_obj, t_so)
        dst = so
        for src, dst in ((t_obj, obj), (t_hdr, hdr), (t_so, so)):
            os.replace(src, dst)
    except clib.LinkError as e:
        raise LibraryError(str(e)) from None
    except OSError as e:
        # (the temporary's name means nothing to the caller: name the destination)
        raise LibraryError(f"cannot write {dst}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Library(so, obj, hdr, m.name, names.run, names.workspace_size, names.exported, lowered.input_shape,
                   lowered.output_shape, clib.workspace_bytes(lowered), lowered.batch_tile, env, tgt.cpu,
                   tgt.vector_width, net.weights_description, net.random_weights)
