"""The front end: ``.conv`` text -> AST -> checked model, with diagnostics.

``parse`` (text -> :mod:`~convdsl.frontend.ast`), ``check`` (AST -> checked
models, shapes proved), ``report`` (the ``check`` command's tables and JSON),
``driver`` (``check_file`` / ``check_source``: the three in order).  It never
imports llvmlite or numpy: ``convdsl check`` stays fast and LLVM-free.
"""

from .driver import Checked, check_file, check_source

__all__ = ["Checked", "check_file", "check_source"]
