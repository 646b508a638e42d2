"""The one place that talks to LLVM's optimiser and JIT.

``JitModule(module)`` parses an ``llvmlite.ir.Module``, verifies it, optimises
it with the new pass manager at O3 for the host target machine
(``get_host_cpu_name()`` / ``get_host_cpu_features()``), emits its object code
once and loads that into MCJIT (so ``object_code()``, which the disk cache
stores, costs nothing more).  The execution engine lives as long as the
``JitModule``; function addresses are valid only that long.

The loop vectoriser and LLVM's loop unroller are off: ``codegen`` writes the
vector code and the register-blocked, unrolled micro-kernels explicitly
(``lower`` decides what to unroll).  The vectoriser spent most of the
optimiser's time on small models re-analysing loops it could not improve, and
the unroller almost halved LeNet's compile time for about 1% of run time
(measured with ``CompiledModel.profile``).  SLP vectorisation stays on (it
merges the per-lane copies of pack / unpack and helps scalar schedules).
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm
from llvmlite import ir

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


class JitModule:
    """An optimised, JIT-compiled LLVM module for the host CPU."""

    def __init__(self, module: ir.Module, opt_level: int = 3) -> None:
        _init()
        self.target_machine = host_target_machine(opt_level)
        module.triple = self.target_machine.triple
        module.data_layout = str(self.target_machine.target_data)
        mod = llvm.parse_assembly(str(module))
        mod.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pto.loop_vectorization = False
        pto.slp_vectorization = True
        pto.loop_unrolling = False
        pto.loop_interleaving = False
        pb = llvm.create_pass_builder(self.target_machine, pto)
        mpm = pb.getModulePassManager()
        mpm.run(mod, pb)
        mod.verify()
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
