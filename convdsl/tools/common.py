"""What the ``convdsl`` subcommands share: their errors, exit codes and the handling of common options.

``cli`` (check, run, compile) and ``bench`` both turn a file name into a checked program with its
diagnostics printed, a ``--model`` name into a model and ``--size H=..,W=..`` into checked sizes,
and both report a bad option the same way.  That lives here so that neither command borrows the
other's internals: ``cli`` imports ``bench`` only to register the subcommand, and ``bench`` imports
nothing from ``cli``.

Only the public API is used (``convdsl``, ``convdsl.api``).  This module imports nothing heavy:
``convdsl check`` builds the same parser and must not load numpy or LLVM, so the API is imported
inside the functions that need it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import Checked
    from ..api import Beside, Program
    from ..core.model import CheckedModel

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad option or a missing file: printed as ``convdsl: error: ...``, exit status 2."""


class InputError(Exception):
    """The program or its inputs are wrong (exit status 1); the message (if any) was not printed yet."""


def check_source_file(path: str) -> "Checked":
    """Parse and check ``path``; a missing or unreadable file is a usage error, a wrong program is not."""
    from .. import check_file

    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a .conv file")
    try:
        return check_file(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def load_program(path: str) -> "Program":
    """A checked program for the commands that compile it; its warnings are printed on stderr.

    A wrong program prints every diagnostic (warnings among them, in source order) and raises
    :class:`InputError`: exit status 1, and nothing compiled.
    """
    from ..api import Program

    checked = check_source_file(path)
    if not checked.ok:
        print(checked.render(), file=sys.stderr)
        raise InputError(None)
    if checked.result.warnings:
        print(checked.render(checked.result.warnings), file=sys.stderr)
    return Program(checked)


def pick_model(program: "Program", name: str | None) -> "CheckedModel":
    """``--model NAME`` (default: the only or last model); an unknown name is a usage error."""
    try:
        return program.model(name)
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def parse_sizes(text: str | None) -> dict[str, int]:
    """``--size H=64,W=48`` -> ``{"H": 64, "W": 48}`` (not yet checked against a model)."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, eq, val = part.partition("=")
        if not eq or not key.strip().isidentifier() or not val.strip().lstrip("-").isdigit():
            raise UsageError(f"--size takes NAME=INT pairs separated by commas, not {part!r}")
        out[key.strip()] = int(val)
    return out


def check_size_option(model: "CheckedModel", sizes: dict[str, int]) -> dict[str, int]:
    """``--size`` values against the model; every size to use (the rest the smallest valid).

    A bad value is the user's option, not their program: a usage error (exit status 2), raised
    before anything is compiled.  ``N`` is refused because the batch size is ``--batch``.
    """
    from ..api import BoundaryError, resolve_sizes

    if "N" in sizes:
        raise UsageError("--size sets H, W and other symbols; the batch size N is --batch")
    try:
        return resolve_sizes(model, sizes, "--size")
    except BoundaryError as e:
        raise UsageError(str(e)) from None


def weights_option(path: str | None) -> "str | Beside":
    """The ``weights=`` argument of :func:`convdsl.compile` for ``--weights PATH``.

    Without the option, :data:`convdsl.BESIDE` (``FILE.npz`` beside the program, else seeded
    random weights: the rule lives in the API).  A ``--weights`` file that does not exist is a
    usage error (exit status 2), where a file that exists but does not fit is an input error.
    """
    from .. import BESIDE

    if path is None:
        return BESIDE
    if not os.path.exists(path):
        raise UsageError(f"no such weights file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"--weights {path} is a directory, not an .npz weights file")
    return path


def threads_option(threads: int, option: str = "--threads") -> int:
    """A thread count from the command line as the API takes it: below 1 is a usage error, above
    :func:`convdsl.api.max_threads` is clamped to it with a note (more threads than cores only wait
    for each other; ``bench --threads 1000`` once hung measuring the peak on 1000 BLAS threads)."""
    from ..api import max_threads

    if threads < 1:
        raise UsageError(f"{option} must be at least 1")
    cap = max_threads()
    if threads > cap:
        print(f"note: {option} {threads}: using {cap}, the most this process runs on (its usable cores; "
              "CONVDSL_MAX_THREADS raises the cap)", file=sys.stderr)
        return cap
    return threads


def seed_arg(text: str) -> int:
    """``--seed S``: a non-negative integer (what numpy's seeded generator takes), so a bad seed is
    a usage error here rather than numpy's traceback later."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {value}")
    return value
