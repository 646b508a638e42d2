"""The one place that talks to LLVM's optimiser and JIT.

``JitModule(module)`` parses an ``llvmlite.ir.Module``, verifies it, optimises
it with the new pass manager at O3 (loop and SLP vectorisation on) for the
host target machine (``get_host_cpu_name()`` / ``get_host_cpu_features()``),
and compiles it with MCJIT.  The execution engine lives as long as the
``JitModule``; function addresses are valid only that long.
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
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(),
                                        opt=opt, codemodel="jitdefault")


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
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pto.loop_interleaving = True
        pb = llvm.create_pass_builder(self.target_machine, pto)
        mpm = pb.getModulePassManager()
        mpm.run(mod, pb)
        mod.verify()
        self._module = mod
        self.llvm_ir = str(mod)
        self._engine = llvm.create_mcjit_compiler(mod, self.target_machine)
        self._engine.finalize_object()
        self._pb = pb  # keep the pass builder (and its options) alive with the module

    @property
    def asm(self) -> str:
        return self.target_machine.emit_assembly(self._module)

    def object_code(self) -> bytes:
        return self.target_machine.emit_object(self._module)

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        assert addr, f"no function {name!r} in the JIT module"
        return addr
