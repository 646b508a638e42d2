"""Markdown tables for README.md from saved `convdsl bench --json` objects.

    python bench/tables.py bench/results/lenet.json bench/results/lenet_relu.json
    python bench/tables.py --versus onnxruntime bench/results/alexnet.json bench/results/vgg11*.json

The first form prints, per file, one row per (batch, threads) with every engine's median, convdsl's
ratio to the best competitor and its share of the FMA peak (of the sgemm peak in reports saved before
there was one); the second, one table of convdsl
against one competitor over several models.  Figures come from the JSON only (nothing is rerun).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from convdsl.core.text import format_seconds as fmt_time

ENGINES = ("convdsl", "torch", "torch-compile", "onnxruntime", "numpy")
TITLES = {"convdsl": "convdsl", "torch": "PyTorch", "torch-compile": "torch.compile",
          "onnxruntime": "ONNX Runtime", "numpy": "numpy"}


def configs(report: dict) -> list[tuple[int, int]]:
    return sorted({(r["batch"], r["threads"]) for r in report["results"]})


def result(report: dict, engine: str, batch: int, threads: int) -> dict | None:
    return next((r for r in report["results"]
                 if (r["engine"], r["batch"], r["threads"]) == (engine, batch, threads)), None)


def engine_table(report: dict) -> str:
    engines = [e for e in ENGINES if any(r["engine"] == e for r in report["results"])]
    peak = report.get("peak_gflops", {})
    fma = report.get("fma_peak_gflops")

    def peaks(p: dict) -> str:
        return ", ".join(f"{g:.1f} GFLOP/s on {t} thread{'s' if t != '1' else ''}" for t, g in p.items())

    blas = "; ".join(f"{b.get('internal_api')} kernel {b.get('architecture')}"
                     for b in report.get("peak", {}).get("blas") or [])
    sgemm = f"sgemm (practical) peak {peaks(peak)}" + (f" [{blas}]" if blas else "")
    # (reports saved before the FMA peak: the one share there is, of the sgemm peak)
    title, key = ("convdsl % of FMA peak", "pct_fma_peak") if fma else ("convdsl % of peak", "pct_peak")
    lines = [f"{report['model']}: " + (f"FMA peak {peaks(fma)}; " if fma else "") + sgemm, "",
             "| batch | threads | " + " | ".join(TITLES[e] for e in engines) + f" | convdsl vs best | {title} |",
             "| ---: | ---: | " + " | ".join("---:" for _ in engines) + " | ---: | ---: |"]
    for batch, threads in configs(report):
        rows = {e: result(report, e, batch, threads) for e in engines}
        conv = rows.get("convdsl")
        others = [r["median_s"] for e, r in rows.items() if e != "convdsl" and r]
        best = f"{min(others) / conv['median_s']:.2f}×" if others and conv else "—"
        pct = f"{conv[key]:.0f}%" if conv and conv.get(key) is not None else "—"
        cells = [fmt_time(r["median_s"]) if r else "—" for r in rows.values()]
        lines.append(f"| {batch} | {threads} | " + " | ".join(cells) + f" | {best} | {pct} |")
    return "\n".join(lines)


def versus_table(reports: list[dict], others: list[str]) -> str:
    """convdsl against each engine of ``others`` over several reports, with convdsl's share of the FMA
    peak at each thread count (where the report has one)."""
    heads = " | ".join(TITLES[o] for o in others)
    vs = " | ".join(f"convdsl vs {TITLES[o]}" for o in others)
    lines = [f"| model | batch | threads | convdsl | {heads} | {vs} | convdsl % of FMA peak |",
             "| --- | ---: | ---: | ---: | " + "---: | " * (2 * len(others)) + "---: |"]
    for report in reports:
        m = re.search(r"shape \[B, ([^\]]*)\]", str(report.get("input", "")))
        shape = m.group(1).replace(", ", "×") if m else ""
        first = True
        for batch, threads in configs(report):
            conv = result(report, "convdsl", batch, threads)
            comps = [result(report, o, batch, threads) for o in others]
            if conv is None:
                continue
            name = f"{report['model']}, {shape}" if first else ""
            first = False
            pct = conv.get("pct_fma_peak")
            # (an engine the run skipped or could not build shows as a dash, its row kept)
            times = " | ".join(fmt_time(c["median_s"]) if c else "–" for c in comps)
            ratios = " | ".join(f"{c['median_s'] / conv['median_s']:.2f}×" if c else "–" for c in comps)
            lines.append(f"| {name} | {batch} | {threads} | {fmt_time(conv['median_s'])} | {times} | {ratios} | "
                         + (f"{pct:.0f}% |" if pct is not None else "– |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--versus", metavar="ENGINE[,ENGINE..]",
                    help="one table of convdsl against these engines over all files")
    args = ap.parse_args(argv)
    others = [e for e in (args.versus or "").split(",") if e]
    for e in others:
        if e not in TITLES:
            ap.error(f"--versus: unknown engine {e!r} (known: {', '.join(TITLES)})")
    reports = []
    for f in args.files:
        with open(f) as fh:
            reports.append(json.load(fh))
    if others:
        print(versus_table(reports, others))
    else:
        print("\n\n".join(engine_table(r) for r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
