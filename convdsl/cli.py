"""The ``convdsl`` command: a thin layer over the Python API.

Exit status: 0 success, 1 the program or its inputs are wrong (printed as a
diagnostic), 2 a usage error (bad option, missing file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from . import __version__
from .frontend import Checked, check_file

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is already 2; keep its text short
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _source(path: str) -> Checked:
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a .conv file")
    try:
        return check_file(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def cmd_check(args: argparse.Namespace) -> int:
    from .report import json_report, text_report

    checked = _source(args.file)
    result = checked.result
    if args.json:
        print(json.dumps(json_report(result), indent=2))
    else:
        text = text_report(result)
        if text:
            print(text)
        if result.diagnostics:
            print(checked.render(), file=sys.stderr)
        n_err, n_warn = len(result.errors), len(result.warnings)
        if n_err or n_warn:
            parts = [f"{n} {w}{'s' if n != 1 else ''}" for n, w in ((n_err, "error"), (n_warn, "warning")) if n]
            print(", ".join(parts) + " generated.", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_INPUT


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convdsl", description="Check and compile .conv convolutional network programs.")
    p.add_argument("--version", action="version", version=f"convdsl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("check", help="parse and shape-check a .conv file; print a summary per model")
    c.add_argument("file", metavar="FILE.conv")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    c.set_defaults(func=cmd_check)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
