"""The text of a ``convdsl bench`` report: the host and peaks, one table of every engine per
configuration, the summary, and the per-layer tables (``--layers``).  Works on a saved ``--json``
report as on a fresh one (``python -m convdsl.tools.bench RESULTS.json``)."""

from __future__ import annotations

from typing import Any, Mapping

from ...core.text import format_seconds
from .engines import ENGINES
from .timing import BUSY_WARNING, STEAL_WARNING

LAYERS_NOTE = ("per-layer times are differences of medians of the network cut after each layer; an "
               "activation fused into the layer before it shows as that difference (near zero, can be "
               "negative within noise)")


def _fmt_signed_time(seconds: float) -> str:
    return ("-" if seconds < 0 else "") + format_seconds(abs(seconds))


def render(report: Mapping[str, Any]) -> str:
    """The benchmark report as text tables (also for a saved ``--json`` report)."""
    lines = []
    host = report.get("host", {})
    lines.append(f"{report['model']} ({report.get('file', '?')}): {report['macs']:,} MACs/image, "
                 f"{report.get('params', 0):,} params; weights: {report.get('weights', '?')}")
    feats = ", ".join(host.get("features", []))
    lines.append(f"host: {host.get('cpu', '?')} ({host.get('llvm_cpu', '?')}; {feats}), "
                 f"{host.get('cores', '?')} cores")
    blas = report.get("peak", {}).get("blas") or []
    blas_s = "; ".join(f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')}" for b in blas)
    fma = report.get("fma_peak_gflops")
    if fma:
        f = report.get("fma_peak", {})
        lines.append(f"FMA peak (convdsl's kernel: {f.get('accumulators', '?')} chains of <{f.get('width', '?')} x "
                     "float> fma per thread): " + ", ".join(
                         f"{t} thread{'s' if t != '1' else ''} {g:.1f} GFLOP/s" for t, g in fma.items()))
    peaks = report["peak_gflops"]
    ns = report.get("peak", {}).get("n", {})
    lines.append(("practical peak, sgemm" if fma else "sgemm peak") + " (numpy float32 matmul, 2n³/median): "
                 + ", ".join(f"{t} thread{'s' if t != '1' else ''} {g:.1f} GFLOP/s (n={ns.get(t, '?')})"
                             for t, g in peaks.items())
                 + (f" [{blas_s}]" if blas_s else ""))
    # (reports saved before the FMA peak have one share, of the sgemm peak, as ``pct_peak``)
    shares = [("% FMA", "pct_fma_peak"), ("% sgemm", "pct_sgemm_peak")] if fma else [("% peak", "pct_peak")]
    if report.get("peak", {}).get("blas_threads_limited") is False:
        lines.append("warning: threadpoolctl is not installed, so BLAS ran with its own thread count in every "
                     "configuration: the 1-thread peak and numpy rows used all cores (pip install threadpoolctl)")
    bg = host.get("background_load")
    if bg is not None:
        lines.append(f"background load (other processes, mean over the timed runs): {bg:.2f} cores"
                     + ("  <-- the machine was not quiet: figures are unreliable" if bg > BUSY_WARNING else ""))
    steal = host.get("steal")
    if steal is not None:
        lines.append(f"steal time (CPU the hypervisor gave elsewhere, mean over the run): {steal:.2f} cores"
                     + ("  <-- figures are unreliable" if steal > STEAL_WARNING else ""))
    if host.get("env"):
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in host["env"].items()))
    for name, why in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    lines.append("")
    head = (f"{'engine':<15} {'threads':>7} {'batch':>6} {'median':>10} {'images/s':>11} {'GFLOP/s':>8} "
            + "".join(f"{h:>7} " for h, _ in shares) + f"{'vs convdsl':>10}  agrees (max |diff|)")
    lines.append(head)
    lines.append("-" * len(head))
    prev = None
    noisy: set = set()
    for r in sorted(report["results"], key=lambda r: (r["batch"], r["threads"], ENGINES.index(r["engine"]))):
        cfg = (r["batch"], r["threads"])
        if prev is not None and cfg != prev:
            lines.append("")
        prev = cfg
        name = r["engine"] + (" *" if r.get("best_competitor") else "")
        pct = "".join(f"{(f'{r[k]:.1f}%' if r.get(k) is not None else '-'):>7} " for _, k in shares)
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        if r.get("background_load") is not None and r["background_load"] > BUSY_WARNING:
            noisy.add(cfg)
        if (r.get("steal") or 0.0) > STEAL_WARNING:
            noisy.add(cfg)
        agree = "reference" if r["engine"] == "convdsl" else (f"yes ({diff})" if r["agrees"]
                                                             else f"NO  ({diff})  <-- disagrees")
        ratio = r.get("ratio_vs_convdsl")
        lines.append(f"{name:<15} {r['threads']:>7} {r['batch']:>6} {format_seconds(r['median_s']):>10} "
                     f"{r['images_per_s']:>11,.0f} {r['gflops']:>8.2f} {pct}"
                     f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>10}  {agree}")
    lines.append("-" * len(head))
    lines.append("* best competitor; 'vs convdsl' = engine median / convdsl median (> 1: convdsl is faster)")
    for b, t in sorted(noisy):
        lines.append(f"warning: other processes or the hypervisor were using CPU while batch {b}, {t} thread(s) "
                     "was timed")
    lines.append("")
    for s in report.get("summary", []):
        t = s["threads"]
        pre = f"batch {s['batch']:>5}, {t} thread{'s' if t != 1 else ' '}: convdsl {format_seconds(s['convdsl_s'])}"
        if "best_competitor" in s:
            sp = s["speedup"]
            verdict = f"convdsl {sp:.2f}x faster" if sp >= 1 else f"convdsl {1 / sp:.2f}x SLOWER"
            lines.append(f"{pre} vs {s['best_competitor']} {format_seconds(s['best_competitor_s'])} -> {verdict}")
        else:
            lines.append(f"{pre} (no competitor ran)")
    for lr in report.get("layers", []):
        lines.append("")
        t = lr["threads"]
        lines.append(f"per-layer time, convdsl, batch {lr['batch']}, {t} thread{'s' if t != 1 else ''} "
                     f"(network cut after each layer; differences of medians)")
        total = lr["rows"][-1]["cumulative_s"] if lr["rows"] else 0.0
        native = any("native_s" in row for row in lr["rows"])
        h = f"{'layer':<16} {'op':<32} {'cumulative':>11} {'layer':>11} {'share':>7}"
        if native:
            h += f" {'native':>11}"
        lines.append(h)
        lines.append("-" * len(h))
        for row in lr["rows"]:
            share = f"{100 * row['layer_s'] / total:.1f}%" if total > 0 else "-"
            line = (f"{row['layer']:<16} {row['op'][:32]:<32} {format_seconds(row['cumulative_s']):>11} "
                    f"{_fmt_signed_time(row['layer_s']):>11} {share:>7}")
            if native:
                ns = row.get("native_s")
                line += f" {(format_seconds(ns) if ns is not None else '(fused)'):>11}"
            lines.append(line)
        for k, v in lr.get("native_other", {}).items():
            lines.append(f"{k:<16} {'(copy ' + ('in)' if k == 'input' else 'out)') if k in ('input', 'output') else '':<32} "
                         f"{'':>11} {'':>11} {'':>7} {format_seconds(v):>11}")
        lines.append("-" * len(h))
        if native:
            lines.append("native: the back end's own cycle counters per stage (one thread); '(fused)': "
                         "computed inside the stage before")
        if lr.get("native_error"):
            lines.append(f"native per-stage timers failed: {lr['native_error']}")
    if report.get("layers"):
        lines.append("note: " + report.get("layers_note", LAYERS_NOTE))
    return "\n".join(lines)

