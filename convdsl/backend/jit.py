"""The one place that talks to LLVM's optimiser, its code generator and the JIT.

``JitModule(module)`` parses an ``llvmlite.ir.Module``, verifies it, optimises
it with the new pass manager at O3 for the host target machine
(``get_host_cpu_name()`` / ``get_host_cpu_features()``), emits its object code
once and loads that into MCJIT (so ``object_code()``, which the disk cache
stores, costs nothing more).  The execution engine lives as long as the
``JitModule``; function addresses are valid only that long.

``NativeObject(module, target)`` is the same optimisation for a :class:`Target`
(the host, or a CPU named by :func:`cpu_target`), emitted as a position-independent
relocatable object and never loaded: what ``--emit obj/asm --cpu`` and the C
library (:mod:`.clib`) ship.

The loop vectoriser and LLVM's loop unroller are off: ``codegen`` writes the
vector code and the register-blocked, unrolled micro-kernels explicitly
(``lower`` decides what to unroll).  The vectoriser spent most of the
optimiser's time on small models re-analysing loops it could not improve, and
the unroller almost halved LeNet's compile time for about 1% of run time
(measured with ``CompiledModel.profile``).  SLP vectorisation stays on (it
merges the per-lane copies of pack / unpack and helps scalar schedules).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as llvm
from llvmlite import ir

from .schedule import TargetError

_init_lock = threading.Lock()
_initialised = False


def _init() -> None:
    global _initialised
    with _init_lock:
        if not _initialised:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialised = True


def host_target_machine(opt: int = 3) -> llvm.TargetMachine:
    _init()
    return target_machine(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(), opt)


def target_machine(cpu: str, features: str, opt: int = 3) -> llvm.TargetMachine:
    """A target machine of this host's triple for ``cpu`` with ``features`` (``+avx2,-avx512f,...``):
    the host's for the JIT; another CPU's only to print the code it would get (``--emit asm`` of
    the other vector width in the tests)."""
    _init()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, codemodel="jitdefault")


@dataclass(frozen=True, slots=True)
class Target:
    """The machine code is made for: an LLVM CPU name, its features and its SIMD width in floats."""

    cpu: str  # LLVM's name: ``znver3``, ``x86-64-v3``, ``skylake-avx512``, ...
    features: str  # LLVM's feature string; "" for the CPU's own (a named CPU)
    vector_width: int  # floats per vector the CPU computes on: 16 (AVX-512), 8 (AVX), 4
    host: bool = False  # this machine (its features as detected, not as the name implies)

    def machine(self, opt: int = 3) -> llvm.TargetMachine:
        """A target machine for position-independent objects (a shared library can hold them)."""
        _init()
        return llvm.Target.from_default_triple().create_target_machine(
            cpu=self.cpu, features=self.features, opt=opt, reloc="pic", codemodel="default")


def host_target() -> Target:
    _init()
    feats = llvm.get_host_cpu_features()
    width = 16 if feats.get("avx512f") else 8 if (feats.get("avx2") or feats.get("avx") or feats.get("fma")) else 4
    return Target(llvm.get_host_cpu_name(), feats.flatten(), width, host=True)


# Run in a child process: LLVM aborts the whole process (``LLVM ERROR: 64-bit code requested on a
# subtarget that doesn't support it``) on a CPU name it does not know or a 32-bit-only CPU, after
# only a warning on stderr, so a name is tried where an abort costs nothing.  The child compiles a
# 16-lane fused multiply-add for the CPU and reports the widest registers LLVM used for it: the
# vector width the schedule should take, as the CPU itself sees it (not as the host does).
_PROBE = r"""
import json, sys
import llvmlite.binding as llvm
from llvmlite import ir
llvm.initialize_native_target(); llvm.initialize_native_asmprinter()
cpu = sys.argv[1]
if cpu == "help":
    tm = llvm.Target.from_default_triple().create_target_machine(cpu="help")
    sys.exit(0)
m = ir.Module("probe")
v = ir.VectorType(ir.FloatType(), 16)
fn = ir.Function(m, ir.FunctionType(v, [v, v, v]), name="probe")
fma = ir.Function(m, ir.FunctionType(v, [v, v, v]), name="llvm.fma.v16f32")
b = ir.IRBuilder(fn.append_basic_block("entry"))
b.ret(b.call(fma, list(fn.args)))
fn.attributes.add("nounwind")
tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, opt=2, reloc="pic", codemodel="default")
m.triple = tm.triple
asm = tm.emit_assembly(llvm.parse_assembly(str(m)))
width = 16 if "%zmm" in asm else 8 if "%ymm" in asm else 4
print(json.dumps({"width": width, "triple": tm.triple}))
"""


def _run_probe(arg: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", _PROBE, arg], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise TargetError(f"could not ask LLVM about CPU {arg!r} (a child Python process, {sys.executable}): "
                          f"{e}") from None


@lru_cache(maxsize=None)
def cpu_names() -> tuple[str, ...]:
    """The CPU names LLVM knows for this target (what ``llc -mcpu=help`` lists)."""
    r = _run_probe("help")
    names = []
    listing = False
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("Available CPUs"):
            listing = True
        elif line.startswith("Available features"):
            break
        elif listing and " - " in line:
            names.append(line.split(" - ", 1)[0].strip())
    return tuple(names)


@lru_cache(maxsize=None)
def cpu_target(name: str) -> Target:
    """The :class:`Target` for the LLVM CPU ``name`` (its own features; the vector width LLVM
    gives it); :class:`TargetError` for a name LLVM does not know here."""
    triple = llvm.get_default_triple()
    how = (f"the valid names are LLVM's processors for {triple}: `llc -mtriple={triple} -mcpu=help` lists "
           "them, as does `convdsl.api.cpu_names()` (x86-64-v2, x86-64-v3, x86-64-v4, znver3, skylake-avx512, ...)")
    if not name or name.strip() != name or name == "help" or name.startswith("-"):
        raise TargetError(f"{name!r} is not a CPU name; {how}")
    r = _run_probe(name)
    if "not a recognized processor" in r.stderr:
        raise TargetError(f"unknown CPU {name!r}: {how}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise TargetError(f"cannot compile for CPU {name!r} on {triple} ({last}); {how}")
    return Target(name, "", int(json.loads(r.stdout)["width"]))


def _optimised(module: ir.Module, tm: llvm.TargetMachine, opt_level: int) -> tuple[llvm.ModuleRef, object]:
    """``module`` parsed, verified and optimised for ``tm`` (and the pass builder, which the module
    must outlive)."""
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    pto.loop_vectorization = False
    pto.slp_vectorization = True
    pto.loop_unrolling = False
    pto.loop_interleaving = False
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)
    mod.verify()
    return mod, pb


class NativeObject:
    """An optimised module compiled for ``target`` as a position-independent object (not loaded)."""

    def __init__(self, module: ir.Module, target: Target, opt_level: int = 3) -> None:
        self.target = target
        self.target_machine = target.machine(opt_level)
        self._module, self._pb = _optimised(module, self.target_machine, opt_level)
        self._obj = self.target_machine.emit_object(self._module)

    @property
    def llvm_ir(self) -> str:
        return str(self._module)

    @property
    def asm(self) -> str:
        return self.target_machine.emit_assembly(self._module)

    def object_code(self) -> bytes:
        return self._obj


class JitModule:
    """An optimised, JIT-compiled LLVM module for the host CPU."""

    def __init__(self, module: ir.Module, opt_level: int = 3) -> None:
        _init()
        self.target_machine = host_target_machine(opt_level)
        mod, pb = _optimised(module, self.target_machine, opt_level)
        self._module = mod
        self._load(self.target_machine.emit_object(mod))
        self._pb = pb  # keep the pass builder (and its options) alive with the module

    @classmethod
    def from_object(cls, obj: bytes, llvm_ir: str) -> "JitModule":
        """Load previously compiled object code (the disk cache): no parsing, optimising or codegen.

        ``llvm_ir`` is the optimised IR the object came from, kept for ``.llvm_ir`` and ``.asm``."""
        self = cls.__new__(cls)
        _init()
        self.target_machine = host_target_machine(3)
        self._module = None
        self._llvm_ir = llvm_ir
        self._load(obj)
        return self

    def _load(self, obj: bytes) -> None:
        self._obj = obj
        empty = llvm.parse_assembly(str(ir.Module(name="jit")))
        self._engine = llvm.create_mcjit_compiler(empty, self.target_machine)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()

    def _parsed(self) -> llvm.ModuleRef:
        if self._module is None:
            self._module = llvm.parse_assembly(self._llvm_ir)
        return self._module

    @property
    def llvm_ir(self) -> str:
        """The optimised module's text (made on first use: it costs a tenth of the compile)."""
        text = self.__dict__.get("_llvm_ir")
        if text is None:
            text = self._llvm_ir = str(self._module)
        return text

    @llvm_ir.setter
    def llvm_ir(self, text: str) -> None:
        self._llvm_ir = text

    @property
    def asm(self) -> str:
        return self.target_machine.emit_assembly(self._parsed())

    def object_code(self) -> bytes:
        return self._obj

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:  # (not an assert: under ``python -O`` a 0 address would be called)
            raise RuntimeError(f"no function {name!r} in the JIT module")
        return addr

    def find(self, name: str) -> int:
        """The address of ``name``, or 0 if the module has no such function."""
        return self._engine.get_function_address(name)
