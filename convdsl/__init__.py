"""convdsl: a small language and optimising LLVM compiler for convolutional networks.

    import convdsl
    program = convdsl.load("examples/lenet.conv")          # parse + shape-check
    net = convdsl.compile(program, weights="examples/lenet.npz")
    y = net(x)                                              # numpy float32 [N, C, H, W] -> [N, 10]

See ``convdsl.api`` for the full API and ``docs/`` for the language.
"""

from .core.version import VERSION as __version__

__all__ = ["load", "loads", "compile", "compile_code", "emit", "check_file", "check_source", "Checked", "Program",
           "Network", "BESIDE", "host_cpu", "time_passes", "format_timings", "CompileError", "BoundaryError",
           "Schedule", "save_weights", "fma_peak", "FmaPeak", "compile_library"]

_LAZY = {
    "load": "api", "loads": "api", "compile": "api", "compile_code": "api", "emit": "api", "Program": "api",
    "Network": "api", "BESIDE": "api", "host_cpu": "api", "time_passes": "api", "format_timings": "api",
    "save_weights": "api", "fma_peak": "api", "FmaPeak": "api", "compile_library": "api",
    "check_file": "frontend", "check_source": "frontend", "Checked": "frontend", "CompileError": "core.diagnostics",
    "BoundaryError": "runtime.boundary", "Schedule": "backend.schedule",
}


def __getattr__(name):
    # Imported on first use, so that `convdsl check` does not pay for numpy and LLVM.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convdsl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
