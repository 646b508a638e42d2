"""The back end: a concrete model and a schedule -> native code.

``schedule`` (how, never what), ``lower`` (model -> loop IR and the weight
packing plan), ``loopir`` (the IR, its printer and verifier) with ``bounds``
(every access proved in bounds), ``codegen`` (loop IR -> ``llvmlite.ir``),
``jit`` (optimise for the host and load), ``cache`` (object code on disk).
"""
