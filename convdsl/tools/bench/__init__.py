"""``convdsl bench``: the command (:mod:`.command`), the engines it times (:mod:`.engines`), how it
times them and measures the machine (:mod:`.timing`), and the text of its report (:mod:`.render`).

Standard library only at import time: the CLI imports this package to build its parser.
"""

from .command import Options, add_bench_parser, cmd_bench, main, run_bench
from .render import render

__all__ = ["Options", "add_bench_parser", "cmd_bench", "main", "render", "run_bench"]
