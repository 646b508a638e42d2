"""``convdsl bench``: convdsl against PyTorch, torch.compile, ONNX Runtime and numpy, in one process.

What it does, for one model:

1. compiles the model with convdsl (weights from ``--weights``, else ``FILE.npz``
   beside the program, else seeded random) and builds the *same* network, from
   the same weights, in every competitor asked for that is installed (:mod:`.engines`);
2. measures the machine's peaks on each thread count (:mod:`.timing`): the FMA
   peak, by a throughput kernel convdsl generates at the host's vector width
   (the physical limit ``% of FMA peak`` is quoted against), and the practical
   sgemm peak (numpy float32 ``n x n`` matmul, BLAS limited with threadpoolctl);
3. for every thread count x batch size: warms every engine up, checks that
   every engine's output agrees with convdsl's (rtol 1e-4, atol 1e-5 x the
   output's magnitude), then times the engines *alternately* — rounds of
   engine A, engine B, ... — each call timed on its own from the Python call to
   the returned array, and reports medians;
4. prints a table (:mod:`.render`) or one JSON object with ``--json``.

``--layers`` adds a per-layer breakdown of the convdsl model, measured by
compiling the model cut after every layer and differencing the medians.

This module imports nothing heavy at import time (the CLI imports it to build
its parser); numpy, torch, onnx and onnxruntime are imported when used.
``python -m convdsl.tools.bench RESULTS.json`` re-renders saved ``--json`` output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from ..common import (
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    check_size_option,
    load_program,
    parse_sizes,
    pick_model,
    seed_arg,
    threads_option,
    weights_option,
)
from .engines import (
    ATOL,
    COMPETITORS,
    DEFAULT_COMPARE,
    ENGINES,
    RTOL,
    Engine,
    Unavailable,
    agreement,
    convdsl_engine,
    numpy_engine,
    ort_engine,
    torch_compile_engine,
    torch_engine,
)
from .render import LAYERS_NOTE, render
from .timing import (
    BUSY_WARNING,
    MAX_ROUNDS,
    STEAL_WARNING,
    CpuMeter,
    blas_info,
    blas_limits,
    has_threadpoolctl,
    host_info,
    loadavg,
    measure_fma_peak,
    measure_peak,
    median,
    no_gc,
    time_alternating,
    wait_idle,
    warm_up,
)


@dataclass
class Options:
    batches: list[int]
    threads: list[int]
    compare: list[str]
    repeat: int | None
    seconds: float
    layers: bool
    seed: int
    peak_size: int | None
    wait_idle: float = 0.0


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"{what} takes positive integers separated by commas, not {part!r}")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise UsageError(f"{what} needs at least one value")
    return out


def _thread_counts(text: str | None) -> list[int]:
    """``--threads T1,T2,..`` (default: 1 and every core this process may use), each clamped to
    the cap as ``run --threads`` is; counts that the cap makes equal are timed once."""
    from ...api import max_threads

    if text is None:
        return sorted({1, max_threads()})
    out: list[int] = []
    for t in _int_list(text, "--threads"):
        t = threads_option(t)
        if t not in out:
            out.append(t)
    return out


def _engine_list(text: str) -> list[str]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part not in ENGINES:
            raise UsageError(f"--compare: unknown engine {part!r} (known: {', '.join(COMPETITORS)})")
        if part != "convdsl" and part not in out:
            out.append(part)
    return out


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    import convdsl

    opts = Options(
        batches=_int_list(args.batch, "--batch"),
        threads=_thread_counts(args.threads),
        compare=_engine_list(args.compare),
        repeat=args.repeat, seconds=args.seconds, layers=args.layers, seed=args.seed, peak_size=args.peak_size,
        wait_idle=args.wait_idle)
    if opts.repeat is not None and opts.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if not 0 < opts.seconds < 3600:  # (nan and inf too: inf would time forever)
        raise UsageError("--seconds must be a positive number of seconds below 3600")
    if opts.peak_size is not None and opts.peak_size < 16:
        raise UsageError("--peak-size must be at least 16")
    sizes = parse_sizes(args.size)
    program = load_program(args.file)
    model = pick_model(program, args.model)
    env = check_size_option(model, sizes)
    weights = weights_option(args.weights)
    _progress(f"compiling {model.name} with convdsl")
    try:
        net = convdsl.compile(program, weights, model=model.name, seed=args.seed)
        arrays = net.weights(env)  # the competitors are built from the very arrays convdsl runs with
    except convdsl.BoundaryError as e:
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    report = run_bench(net, env, arrays, opts, quiet=False)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return EXIT_OK


def run_bench(net, env: Mapping[str, int], weights: Mapping[str, Any], opts: Options, quiet: bool = True) -> dict:
    """Run the whole benchmark of ``net`` (a :class:`convdsl.Network`) at sizes ``env``; return the report
    (the ``--json`` object).  ``weights`` are ``net.weights(env)``, passed in so that they are made once."""
    import numpy as np

    from ...api import max_threads
    from ...core import symbolic as sy

    program, model = net.program, net.model
    say = (lambda m: None) if quiet else _progress
    # (as the command line's: BLAS, PyTorch and ONNX Runtime would start as many threads as asked)
    cap = max_threads()
    opts = replace(opts, threads=list(dict.fromkeys(min(t, cap) for t in opts.threads)))
    cm = model.bind(env)
    full = {**env, "N": 1}
    macs = int(sy.evaluate(model.macs, full))
    params = int(sy.evaluate(model.params, full))

    net.bind(env)
    convdsl_compile_s = net.last_compile.seconds  # (this binding's: compiled now, or by convdsl.compile)

    engines: list[Engine] = [convdsl_engine(net)]
    skipped: dict[str, str] = {}
    builders = {"torch": lambda: torch_engine(cm, weights),
                "torch-compile": lambda: torch_compile_engine(cm, weights),
                "onnxruntime": lambda: ort_engine(cm, weights, env),
                "numpy": lambda: numpy_engine(cm, weights)}
    for name in opts.compare:
        say(f"building {name}")
        try:
            engines.append(builders[name]())
        except Unavailable as e:
            skipped[name] = str(e)
            say(f"{name} skipped: {e}")

    idle_load = None
    if opts.wait_idle > 0:
        idle_load = wait_idle(opts.wait_idle, say)
        if idle_load is not None and idle_load >= BUSY_WARNING:
            say(f"the machine did not become idle (other processes use {idle_load:.2f} cores); going on")
    say("measuring the FMA peak")
    # 1 and 2 threads always (CLI.md's {"1": g1, "2": g2}, the figures quoted across hosts),
    # with the counts being timed: each table row is read against the peak at its own count
    fma = measure_fma_peak(sorted({1, min(2, max_threads()), *opts.threads}))
    say("measuring the sgemm peak")
    peak = measure_peak(opts.threads, opts.peak_size, repeat=3)

    rng = np.random.default_rng(opts.seed)
    shape = [max(opts.batches)] + [int(sy.evaluate(d, {**env, "N": 1})) for d in model.input_shape[1:]]
    x_all = rng.random(shape, dtype=np.float32)

    torch_mod = sys.modules.get("torch")
    saved_torch_threads = torch_mod.get_num_threads() if torch_mod is not None else None
    results: list[dict] = []
    layer_reports: list[dict] = []
    load_before = loadavg()
    whole = CpuMeter().__enter__()
    try:
        for threads in opts.threads:
            for batch in opts.batches:
                x = x_all[:batch]
                say(f"batch {batch}, {threads} thread{'s' if threads != 1 else ''}")
                results += _run_config(engines, skipped, x, batch, threads, opts, macs, peak, fma, say)
                if opts.layers:
                    layer_reports.append(_layer_times(program, model, env, net, weights, x, batch, threads,
                                                      opts, say))
    finally:
        if torch_mod is not None and saved_torch_threads is not None:
            torch_mod.set_num_threads(saved_torch_threads)
    whole.__exit__(None, None, None)

    results.sort(key=lambda r: (r["batch"], r["threads"], ENGINES.index(r["engine"])))
    _mark_best(results)
    tc = next((e for e in engines if e.name == "torch-compile"), None)
    report = {
        "model": model.name,
        "file": program.file,
        "macs": macs,
        "params": params,
        "weights": net.weights_description,
        "input": f"seeded random uniform [0, 1) (seed {opts.seed}), shape [B, {', '.join(map(str, shape[1:]))}]",
        "fma_peak_gflops": fma["gflops"],
        "fma_peak": {"what": f"{fma['accumulators']} independent <{fma['width']} x float> llvm.fma chains per "
                             f"thread, compiled by convdsl for the host, best of {fma['repeat']}", "width": fma["width"],
                     "accumulators": fma["accumulators"]},
        "peak_gflops": peak["gflops"],
        "peak": {"what": "numpy float32 matmul n x n, 2 n^3 / median time", "n": peak["n"],
                 "repeat": peak["repeat"], "blas": blas_info(),
                 "blas_threads_limited": has_threadpoolctl()},
        "host": {**host_info(), "loadavg_before": load_before, "loadavg_after": loadavg(),
                 "background_load": whole.other_cores, "steal": whole.steal_cores,
                 "background_load_at_start": idle_load},
        "engines": {e.name: e.version for e in engines},
        "skipped": skipped,
        "settings": {"batches": opts.batches, "threads": opts.threads, "repeat": opts.repeat,
                     "seconds": opts.seconds, "alternation_rounds_max": MAX_ROUNDS, "rtol": RTOL,
                     "atol": f"{ATOL} x max(1, max |convdsl output|)"},
        "convdsl_compile_s": convdsl_compile_s,
        "results": results,
        "summary": _summary(results),
    }
    if tc is not None and tc.notes.get("compile_s"):
        report["torch_compile_s"] = {f"{b}x{t}": s for (b, t), s in tc.notes["compile_s"].items()}
    if opts.layers:
        report["layers"] = layer_reports
        report["layers_note"] = LAYERS_NOTE
    return report




def _run_config(engines, skipped, x, batch, threads, opts, macs, peak, fma, say) -> list[dict]:
    """Warm up, check agreement and time every engine alternately for one (batch, threads)."""
    torch_mod = sys.modules.get("torch")
    results = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(blas_limits(threads))
        if torch_mod is not None:
            stack.enter_context(torch_mod.inference_mode())
        calls: dict[str, Callable[[], Any]] = {}
        outputs: dict[str, Any] = {}
        estimates: dict[str, float] = {}
        for eng in list(engines):
            if eng.name in skipped:
                continue
            try:
                fn = eng.call(x, threads)
                outputs[eng.name] = eng.to_numpy(fn())
            except Unavailable as e:
                skipped[eng.name] = str(e)
                say(f"{eng.name} skipped: {e}")
                continue
            calls[eng.name] = fn
            estimates[eng.name] = warm_up(fn)
        ref = outputs["convdsl"]
        if opts.repeat is not None:
            counts = {k: opts.repeat for k in calls}
        else:
            counts = {k: int(min(20000, max(5, math.ceil(opts.seconds / max(t, 1e-7))))) for k, t in estimates.items()}
        with CpuMeter() as meter:
            samples = time_alternating(calls, counts)
    if meter.other_cores is not None and meter.other_cores > BUSY_WARNING:
        say(f"warning: other processes used {meter.other_cores:.2f} cores while batch {batch}, {threads} "
            f"thread(s) was timed: these figures are unreliable")
    if meter.steal_cores is not None and meter.steal_cores > STEAL_WARNING:
        say(f"warning: the hypervisor took {meter.steal_cores:.2f} cores (steal time) while batch {batch}, "
            f"{threads} thread(s) was timed: these figures are unreliable")
    peak_t = peak["gflops"].get(str(threads))
    fma_t = fma["gflops"].get(str(threads))
    for name, s in samples.items():
        med = median(s)
        ok, diff = agreement(outputs[name], ref)
        gflops = 2 * macs * batch / med / 1e9
        results.append({
            "engine": name, "batch": batch, "threads": threads,
            "median_s": med, "min_s": float(min(s)), "runs": len(s),
            "images_per_s": batch / med, "gflops": gflops,
            "pct_fma_peak": 100 * gflops / fma_t if fma_t else None,
            "pct_sgemm_peak": 100 * gflops / peak_t if peak_t else None,
            "agrees": ok, "max_abs_diff": diff,
            "background_load": meter.other_cores, "steal": meter.steal_cores,
        })
    conv_med = next(r["median_s"] for r in results if r["engine"] == "convdsl")
    for r in results:
        r["ratio_vs_convdsl"] = r["median_s"] / conv_med
    return results


def _mark_best(results: list[dict]) -> None:
    by_cfg: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        by_cfg.setdefault((r["batch"], r["threads"]), []).append(r)
    for rows in by_cfg.values():
        comp = [r for r in rows if r["engine"] != "convdsl"]
        best = min(comp, key=lambda r: r["median_s"]) if comp else None
        for r in rows:
            r["best_competitor"] = r is best


def _summary(results: list[dict]) -> list[dict]:
    out = []
    cfgs = sorted({(r["batch"], r["threads"]) for r in results})
    for b, t in cfgs:
        rows = [r for r in results if (r["batch"], r["threads"]) == (b, t)]
        conv = next(r for r in rows if r["engine"] == "convdsl")
        best = next((r for r in rows if r.get("best_competitor")), None)
        item = {"batch": b, "threads": t, "convdsl_s": conv["median_s"]}
        if best is not None:
            item.update(best_competitor=best["engine"], best_competitor_s=best["median_s"],
                        speedup=best["median_s"] / conv["median_s"])
        out.append(item)
    return out


# ====================================================================== --layers
def _layer_times(program, model, env, net, weights, x, batch, threads, opts, say) -> dict:
    """Median time of the network cut after every layer, alternating; per-layer = differences.

    Each prefix is a network of its own (``convdsl.Network`` of the model's first k layers, with
    their share of the weights), called as the full network is, so the Python overhead of a call is
    the same in every prefix and cancels in the differences.
    """
    from ...api import Network

    say(f"  per-layer times (prefixes) for batch {batch}, {threads} thread{'s' if threads != 1 else ''}")
    calls: dict[str, Callable[[], Any]] = {}
    names = []
    for k, layer in enumerate(model.layers):
        prefix = replace(model, layers=model.layers[:k + 1], output_shape=layer.out_shape)
        part = {key: weights[key] for key in prefix.weight_shapes()}
        pnet = Network(program, prefix, part, net.weights_origin, schedule=net.schedule, cache=net.cache)
        pnet.bind(env)
        key = f"{k}:{layer.name}"
        names.append((key, layer))
        calls[key] = functools.partial(pnet, x, threads=threads)
    ests = {}
    with no_gc():
        for key, fn in calls.items():
            ests[key] = warm_up(fn, min_seconds=0.02)
    seconds = opts.seconds / 2
    counts = {k: (opts.repeat if opts.repeat is not None else int(min(20000, max(5, math.ceil(seconds / max(t, 1e-7))))))
              for k, t in ests.items()}
    samples = time_alternating(calls, counts, pause=False)
    rows = []
    prev = 0.0
    for key, layer in names:
        med = median(samples[key])
        rows.append({"layer": layer.name, "op": layer.text, "kind": layer.kind,
                     "shape": [str(d) for d in layer.out_shape], "cumulative_s": med, "layer_s": med - prev})
        prev = med
    result = {"batch": batch, "threads": threads, "rows": rows}
    # The back end's own per-stage cycle counters (one thread only).
    if threads == 1:
        try:
            reps = opts.repeat if opts.repeat is not None else max(3, min(1000, counts[names[-1][0]]))
            stages = net.profile(x, repeat=reps)
        except Exception as e:  # noqa: BLE001 - optional: report, never fail the benchmark
            result["native_error"] = f"{type(e).__name__}: {e}"
        else:
            for row in rows:
                row["native_s"] = stages.get(row["layer"])
            known = {row["layer"] for row in rows}
            result["native_other"] = {k: v for k, v in stages.items() if k not in known}
    return result


# ====================================================================== parser
def add_bench_parser(sub) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers (imports nothing heavy)."""
    b = sub.add_parser("bench", help="time the compiled model against PyTorch, torch.compile, ONNX Runtime "
                       "and numpy, and check they agree")
    b.add_argument("file", metavar="FILE.conv")
    b.add_argument("--model", metavar="NAME", help="which model (default: the only or last one)")
    b.add_argument("--batch", default="1,64,1024", metavar="B1,B2,..", help="batch sizes (default 1,64,1024)")
    b.add_argument("--threads", metavar="T1,T2,..", help="thread counts (default: 1 and all usable cores; each "
                   "clamped to the cap, as run --threads)")
    b.add_argument("--compare", default=DEFAULT_COMPARE, metavar="ENGINES",
                   help=f"competitors, comma-separated, from: {', '.join(COMPETITORS)} (default: all)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b.add_argument("--layers", action="store_true", help="also time convdsl per layer (network prefixes)")
    b.add_argument("--repeat", type=int, metavar="R",
                   help="timed calls per engine and configuration (default: enough for --seconds)")
    b.add_argument("--seconds", type=float, default=0.5, metavar="S",
                   help="timed seconds per engine and configuration when --repeat is not given (default 0.5)")
    b.add_argument("--weights", metavar="W.npz", help="weights (default: FILE.npz beside the program, else "
                   "seeded random weights)")
    b.add_argument("--size", metavar="H=..,W=..", help="symbolic sizes (default: the smallest valid ones)")
    b.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="seed for random weights and input")
    b.add_argument("--peak-size", type=int, metavar="N", help="sgemm size for the peak (default 4096, or 2048 "
                   "where 4096 would be slow)")
    b.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPU idle (default 0)")
    b.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m convdsl.tools.bench RESULTS.json...``: print the tables of saved ``--json`` reports."""
    p = argparse.ArgumentParser(prog="python -m convdsl.tools.bench", description=main.__doc__)
    p.add_argument("reports", nargs="+", metavar="RESULTS.json")
    args = p.parse_args(argv)
    for i, path in enumerate(args.reports):
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{p.prog}: error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        if i:
            print("\n" + "=" * 100 + "\n")
        print(render(report))
    return 0
