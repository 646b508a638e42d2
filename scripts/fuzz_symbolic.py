"""Differential fuzzing of the symbolic checker against PyTorch, at length.

    python scripts/fuzz_symbolic.py --cases 3000 --seed 0

draws ``--cases`` random symbolic programs (``tests/symgen.py``; seeds ``seed .. seed+cases-1``),
decides each from PyTorch alone and compares ``convdsl.check_source``'s answer, its layers' output
expressions and its valid sizes with PyTorch's at sampled sizes.  Prints every mismatch (the seed,
the program, what disagreed), then the figures: cases, accepted/rejected by the oracle,
mismatches, seconds.  Exit status 1 when there is a mismatch.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import symgen  # noqa: E402  (tests/ is put on the path above)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-layers", type=int, default=6)
    ap.add_argument("--show", type=int, default=20, help="print at most this many mismatches in full")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # torch's note on padding='same' with even kernels
    start = time.perf_counter()
    counts: collections.Counter = collections.Counter()
    mismatches = []
    for seed in range(args.seed, args.seed + args.cases):
        case = symgen.generate(seed, args.max_layers)
        problems = symgen.compare(case)
        answer = symgen.oracle(case).accept
        counts["inconclusive" if answer is None else "oracle accepts" if answer else "oracle rejects"] += 1
        if problems:
            mismatches.append(seed)
            if len(mismatches) <= args.show:
                print(f"=== seed {seed} ({'; '.join(case.notes)})\n{case.text}" + "\n".join(problems) + "\n",
                      flush=True)
    took = time.perf_counter() - start
    print(f"cases {args.cases} (seeds {args.seed}..{args.seed + args.cases - 1}), "
          f"{counts['oracle accepts']} valid and {counts['oracle rejects']} invalid for PyTorch, "
          f"{counts['inconclusive']} valid only above the sampled sizes (not compared); "
          f"mismatches {len(mismatches)}{' (seeds ' + ', '.join(map(str, mismatches[:50])) + ')' if mismatches else ''}; "
          f"{took:.1f} s")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
