"""The ``convdsl`` command: a thin layer over the Python API.

Exit status: 0 success, 1 the program or its inputs are wrong (printed as a
diagnostic), 2 a usage error (bad option, missing file).

Each subcommand reads its options, calls the public API (``convdsl``,
``convdsl.api``) and prints what it returns; the rules (which weights, which
sizes, what a stage looks like) live in the API, so that the command and a
Python user get the same answers.  What the subcommands share is in
:mod:`convdsl.tools.common`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .. import __version__
from ..core import stages
from ..core.text import format_seconds
from .common import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    UsageError,
    check_size_option,
    check_source_file,
    load_program,
    parse_sizes,
    pick_model,
    seed_arg,
    threads_option,
    weights_option,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is already 2; keep its text short
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def cmd_check(args: argparse.Namespace) -> int:
    checked = check_source_file(args.file)
    result = checked.result
    args.exit_status = EXIT_OK if result.ok else EXIT_INPUT  # kept if the reader closes the pipe
    if args.json:
        print(json.dumps(checked.to_json(), indent=2))
    else:
        text = checked.summary() if result.ok else ""
        if text:
            print(text)
        if result.diagnostics:
            print(checked.render(), file=sys.stderr)
        n_err, n_warn = len(result.errors), len(result.warnings)
        if n_err or n_warn:
            parts = [f"{n} {w}{'s' if n != 1 else ''}" for n, w in ((n_err, "error"), (n_warn, "warning")) if n]
            print(", ".join(parts) + " generated.", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_INPUT


def _fits_digits(model) -> bool:
    """Whether the model takes the bundled digits as they are: ``[N, 1, 28, 28]`` (sizes of 28 allowed)."""
    from ..api import BoundaryError, resolve_sizes

    shape = model.input_shape
    if len(shape) != 4 or shape[1] != 1 or any(isinstance(d, int) and d != 28 for d in shape[2:]):
        return False
    try:
        resolve_sizes(model, {str(d): 28 for d in shape[2:] if not isinstance(d, int)})
    except BoundaryError:
        return False
    return True


def _default_input(model, args, sizes):
    """The bundled digits where the model takes [N, 1, 28, 28], else a seeded random batch."""
    import numpy as np

    from ..core import symbolic as sy
    from ..data import load_digits

    if _fits_digits(model) and not sizes:
        images, labels = load_digits()
        note = ""
        if args.batch is not None:  # asked for a batch size: the first B digits
            if args.batch > len(images):
                note = f"; --batch {args.batch} asked for more than the {len(images)} there are"
            images, labels = images[:args.batch], labels[:args.batch]
        k = len(images)
        return images, labels, (f"{k} bundled handwritten digit{'s' if k != 1 else ''} (held-out part of "
                                f"scikit-learn's load_digits){note}")
    from ..api import check_limits

    env = check_limits(model, check_size_option(model, sizes))  # (before drawing a batch of those sizes)
    batch = args.batch or 1
    dims = [batch] + [sy.evaluate(d, {**env, "N": batch}) for d in model.input_shape[1:]]
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(dims, dtype=np.float32)
    return x, None, f"a random batch of {batch} (seed {args.seed}), shape {list(dims)}"


def _read_input(path: str, sizes: dict[str, int]):
    """``--input X.npy``: one array, read without unpickling; its problems are input errors."""
    import numpy as np

    from ..api import BoundaryError

    if not os.path.exists(path):
        raise UsageError(f"no such input file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"--input {path} is a directory, not a .npy array file")
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise BoundaryError(f"{path}: not a .npy array file (save one with numpy.save)")
            f.seek(0)
            # The header alone first: a shape of 2^40 elements in a 100-byte file is refused
            # before anything of that size is allocated.
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            shape, _, dtype = read_header(f)
            need = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
            have = os.fstat(f.fileno()).st_size
        if dtype.hasobject:
            raise ValueError("it holds Python objects, which would need pickle")
        if have != need:
            raise ValueError(f"its header says shape {list(shape)} {dtype} ({need:,} bytes), the file is {have:,}")
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, BoundaryError):
            raise
        raise BoundaryError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(x, np.ndarray):
        raise BoundaryError(f"{path}: holds several arrays; --input takes one .npy array")
    if sizes:
        raise UsageError("--size sets the sizes of a random batch; with --input the array's shape gives them")
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum()) if x.ndim else 1
        print(f"warning: {path}: {bad} image{'s' if bad != 1 else ''} hold NaN or infinite values; "
              "their outputs will be NaN or infinite", file=sys.stderr)
    return x, f"{path}, shape {list(x.shape)}"


def cmd_run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    import convdsl
    import convdsl.api
    from ..api import weights_beside

    if args.batch is not None and args.batch < 1:
        raise UsageError("--batch must be at least 1")
    if args.threads is not None:
        args.threads = threads_option(args.threads)
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    sizes = parse_sizes(args.size)
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            raise UsageError(f"--output {args.output} is a directory; give the name of the .npy file to write")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write --output {args.output}: no writable directory {folder}")
    program = load_program(args.file)
    model = pick_model(program, args.model)
    weights = weights_option(args.weights)
    try:
        labels = None
        if args.input is not None:
            x, desc = _read_input(args.input, sizes)
        else:
            x, labels, desc = _default_input(model, args, sizes)
        # compiles here where the sizes are fixed, else on the first call (which checks x first)
        net = convdsl.compile(program, weights, model=model.name, seed=args.seed, cache=not args.no_cache,
                              threads=args.threads)
        if net.random_weights:
            stem = os.path.splitext(os.path.basename(weights_beside(program)))[0]
            beside = " or ".join(stem + e for e in convdsl.api.BESIDE_EXTENSIONS)
            print(f"no weights given and no {beside} beside the program: using {net.weights_description}")
        else:
            print(f"weights: {net.weights_description}")
        print(f"input: {desc}")
        y = net(x)
        stats = net.last_compile
        how = "loaded from the compile cache" if stats.cache_hit else "compiled with LLVM"
        print(f"{how} in {format_seconds(stats.seconds)} (model {model.name}, host {convdsl.host_cpu().name}, "
              f"{net.schedule.vector_width}-lane vectors)")
        arr = np.ascontiguousarray(x, dtype=np.float32)  # (as net(x) took it: the timed calls take the fast path)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            net(arr)
            times.append(time.perf_counter() - t)
    except convdsl.BoundaryError as e:
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    times.sort()
    med = times[len(times) // 2]
    n = arr.shape[0]
    print(f"run time: {format_seconds(med)} for {n} image{'s' if n != 1 else ''} "
          f"({format_seconds(med / n)} per image, median of {args.repeat}, {net.threads} thread"
          f"{'s' if net.threads != 1 else ''})")
    print(f"output: shape {list(y.shape)}, float32")
    rows = min(len(y), 3)
    with np.printoptions(precision=4, suppress=True, linewidth=100, threshold=60, edgeitems=5):
        for i in range(rows):
            print(f"  [{i}] {np.array2string(y[i].reshape(-1), separator=' ')}")
    if rows < len(y):
        more = len(y) - rows
        print(f"  ... ({more} more row{'s' if more != 1 else ''})")
    if labels is not None and y.ndim == 2 and y.shape[1] == 10:
        pred = y.argmax(axis=1)
        k = min(20, len(pred))
        print("predicted: " + " ".join(str(p) for p in pred[:k]) + (" ..." if len(pred) > k else ""))
        print("true:      " + " ".join(str(t) for t in labels[:k]) + (" ..." if len(labels) > k else ""))
        correct = int((pred == labels).sum())
        note = " (random weights: chance is 10%)" if net.random_weights else ""
        print(f"accuracy: {correct}/{len(labels)} = {100 * correct / len(labels):.1f}%{note}")
    if args.output:
        try:
            with open(args.output, "wb") as f:  # (the name as given: numpy.save would add .npy to it)
                np.save(f, y)
        except OSError as e:
            raise UsageError(f"cannot write {args.output}: {e.strerror}") from None
        print(f"saved output to {args.output}")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    """``--emit STAGE``: one stage of the pipeline (:func:`convdsl.emit`), to ``-o OUT`` or stdout;
    ``--emit lib``: a C library (:func:`convdsl.api.compile_library`)."""
    import convdsl
    import convdsl.api

    if args.cpu is not None and args.emit not in stages.BACKEND:
        raise UsageError(f"--cpu chooses the machine the code is for: it applies to --emit "
                         f"{', '.join(stages.BACKEND)}, not {args.emit}")
    if args.weights is not None and args.emit != stages.LIB:
        raise UsageError("--weights applies to --emit lib (the library holds them); the other stages need none")
    program = load_program(args.file)
    model = pick_model(program, args.model)
    if args.emit == stages.LIB:
        return _compile_lib(args, program, model)
    sizes = check_size_option(model, parse_sizes(args.size))
    try:
        data = convdsl.emit(program, args.emit, model=model.name, sizes=sizes, cache=not args.no_cache,
                            cpu=args.cpu)
    except convdsl.api.TargetError as e:
        raise UsageError(f"--cpu: {e}") from None
    _time_passes(args, program, model.name, sizes)
    out = args.output
    if args.emit == "obj" and out is None:  # machine code is not for a terminal
        out = os.path.splitext(os.path.basename(args.file))[0] + ".o"
    if isinstance(data, str):
        if out is None or out == "-":
            sys.stdout.write(data)
            return EXIT_OK
        data = data.encode()
    elif out == "-":
        binary = getattr(sys.stdout, "buffer", None)
        if binary is None:
            raise UsageError("-o -: this standard output takes text only; write the object to a file with -o FILE")
        if sys.stdout.isatty():
            raise UsageError("-o -: not writing an object file to a terminal; redirect it (> FILE) or use -o FILE")
        sys.stdout.flush()
        binary.write(data)
        binary.flush()
        return EXIT_OK
    try:
        with open(out, "wb") as f:
            f.write(data)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror}") from None
    print(f"wrote {out} ({len(data):,} bytes, {args.emit}, model {model.name})", file=sys.stderr)
    return EXIT_OK


def _compile_lib(args: argparse.Namespace, program, model) -> int:
    """``--emit lib -o OUT``: OUT.so, OUT.o and OUT.h (all three, or none on an error)."""
    import convdsl.api

    sizes = parse_sizes(args.size)
    if "N" in sizes:
        raise UsageError("--size sets H, W and other symbols; the batch size N is an argument of the library's "
                         "run function")
    try:
        convdsl.api.library_sizes(model, sizes, "--size")
    except convdsl.api.BoundaryError as e:  # (an open or a bad size: the option's fault)
        raise UsageError(str(e)) from None
    out = args.output or os.path.splitext(os.path.basename(args.file))[0]
    so, obj, hdr = convdsl.api.library_paths(out)
    if out == "-":
        raise UsageError("-o -: a library is three files (OUT.so, OUT.o, OUT.h); give their name with -o OUT")
    for path in (so, obj, hdr):
        _writable(path, "-o")
    try:
        lib = convdsl.api.compile_library(program, out, weights_option(args.weights), model=model.name,
                                          sizes=sizes, cpu=args.cpu, seed=args.seed)
    except convdsl.api.TargetError as e:
        raise UsageError(f"--cpu: {e}") from None
    _time_passes(args, program, model.name, sizes)
    # (a library is shipped: say so louder than in the summary line; a model without parameters
    # has no weights to be random)
    if lib.random_weights and model.params != 0:
        stem = os.path.splitext(os.path.basename(convdsl.api.weights_beside(program)))[0]
        beside = " or ".join(stem + e for e in convdsl.api.BESIDE_EXTENSIONS)
        print(f"note: no weights given and no {beside} beside the program: the library holds "
              f"{lib.weights_description}", file=sys.stderr)
    print(f"wrote {lib.shared}, {lib.object} and {lib.header} (model {lib.model} for CPU {lib.cpu}, "
          f"{lib.vector_width}-lane vectors; input [N, {', '.join(map(str, lib.input_shape))}], output "
          f"[N, {', '.join(map(str, lib.output_shape))}]; {lib.run}() needs a workspace of "
          f"{lib.workspace_size:,} bytes; weights: {lib.weights_description})", file=sys.stderr)
    return EXIT_OK


def _time_passes(args: argparse.Namespace, program, model: str, sizes) -> None:
    """``--time-passes``: the time of each stage, on stderr (the stages run once more, uncached)."""
    if getattr(args, "time_passes", False):
        import convdsl

        timings = convdsl.time_passes(program, model=model, sizes=sizes)
        print(convdsl.format_timings(timings), file=sys.stderr, end="")


# ----------------------------------------------------------------------------- import / export (ONNX)


def _need_onnx(command: str) -> None:
    """onnx is an optional extra: without it, a message and exit status 1 (not a traceback)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise InputError(f"convdsl {command} needs the onnx package, which is not installed: "
                         "pip install 'convdsl[onnx]' (or pip install onnx)") from None


def _writable(path: str, option: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory; give the name of the file to write")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {option} {path}: no writable directory {folder}")


def cmd_import(args: argparse.Namespace) -> int:
    """``convdsl import MODEL.onnx``: the network as a ``.conv`` program and its weights (``.npz`` by
    default, ``.safetensors`` by ``--weights``'s extension)."""
    if not os.path.exists(args.file):
        raise UsageError(f"no such file: {args.file}")
    if os.path.isdir(args.file):
        raise UsageError(f"{args.file} is a directory, not an .onnx model")
    if args.name is not None and (not args.name.isidentifier() or args.name in ("model", "block", "repeat",
                                                                              "where", "N")):
        raise UsageError(f"--name {args.name!r} is not a name a .conv model can have (letters, digits, _)")
    out = args.output or os.path.splitext(args.file)[0] + ".conv"
    weights = args.weights or os.path.splitext(out)[0] + ".npz"
    if not weights.endswith((".npz", ".safetensors")):
        raise UsageError(f"--weights {weights}: convdsl import writes .npz or .safetensors weights")
    _writable(out, "-o")
    _writable(weights, "--weights")
    _need_onnx("import")
    from .import_onnx import OnnxImportError, import_onnx, summarize, write_outputs

    try:
        imported = import_onnx(args.file, name=args.name)
    except OnnxImportError as e:
        raise InputError(str(e)) from None
    try:
        write_outputs(imported, out, weights)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or out}: {e.strerror}") from None
    for line in summarize(imported):
        print(line)
    print(f"wrote {out} and {weights}; check it with: convdsl check {out}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``convdsl export FILE.conv --onnx OUT.onnx``: the network and its weights as an ONNX model."""
    import tempfile

    import convdsl.api
    from ..core import symbolic as sy
    from .export_onnx import symbolic_obstacle, to_onnx

    sizes = parse_sizes(args.size)
    _writable(args.onnx, "--onnx")
    program = load_program(args.file)
    model = pick_model(program, args.model)
    env = check_size_option(model, sizes)  # (every size: the given ones checked, the rest the smallest valid)
    _need_onnx("export")
    net = convdsl.api.network(program, weights_option(args.weights), model=model.name, seed=args.seed)
    open_syms = sorted({str(s) for d in model.input_shape[1:] for s in sy.free_symbols(d)} - set(sizes)
                       - set(model.fixed))
    symbolic = bool(open_syms)
    if open_syms and (why := symbolic_obstacle(model, sizes)) is not None:
        symbolic = False
        fixed = ", ".join(f"{k}={env[k]}" for k in open_syms)
        print(f"note: {why}, which an ONNX initializer cannot leave open: exporting for {fixed} (the smallest "
              "valid sizes; --size picks others)", file=sys.stderr)
    weights = net.weights(env)
    if net.random_weights:
        beside = os.path.basename(convdsl.api.weights_beside(program))
        print(f"no weights given and no {beside} beside the program: using {net.weights_description}")
    proto = to_onnx(model, weights, sizes if symbolic else env, symbolic=symbolic)
    data = proto.SerializeToString()
    folder = os.path.dirname(os.path.abspath(args.onnx))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".convdsl-", suffix=".onnx.tmp")
    try:  # written beside the target and renamed: never a half-written model
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, args.onnx)
    except OSError as e:
        os.unlink(tmp)
        raise UsageError(f"cannot write {args.onnx}: {e.strerror}") from None
    dims = [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (proto.graph.input[0], proto.graph.output[0])]
    print(f"wrote {args.onnx} ({len(data):,} bytes, opset {proto.opset_import[0].version}, model {model.name}: "
          f"input [{', '.join(map(str, dims[0]))}], output [{', '.join(map(str, dims[1]))}]; weights: "
          f"{net.weights_description})")
    return EXIT_OK


def _add_interop_parsers(sub) -> None:
    i = sub.add_parser("import", help="turn an ONNX convolutional network into a .conv program and its weights")
    i.add_argument("file", metavar="MODEL.onnx")
    i.add_argument("-o", dest="output", metavar="OUT.conv", help="the program to write (default: MODEL.conv)")
    i.add_argument("--weights", metavar="OUT.npz", help="the weights to write (default: OUT.npz beside OUT.conv)")
    i.add_argument("--name", metavar="NAME", help="the model's name (default: the graph's or the file's)")
    i.set_defaults(func=cmd_import)

    e = sub.add_parser("export", help="write a model and its weights as an ONNX graph (dynamic batch size)")
    e.add_argument("file", metavar="FILE.conv")
    e.add_argument("--onnx", metavar="OUT.onnx", required=True, help="the ONNX model to write")
    e.add_argument("--weights", metavar="W.npz", help="weights as NAME.weight / NAME.bias arrays "
                   "(default: FILE.npz beside the program, else seeded random weights)")
    e.add_argument("--model", metavar="NAME", help="which model (default: the only or last one)")
    e.add_argument("--size", metavar="H=..,W=..", help="fix symbolic sizes (default: they stay symbolic where "
                   "ONNX can express that)")
    e.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="seed for random weights")
    e.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convdsl", description="Check and compile .conv convolutional network programs.")
    p.add_argument("--version", action="version", version=f"convdsl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("check", help="parse and shape-check a .conv file; print a summary per model")
    c.add_argument("file", metavar="FILE.conv")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="compile a model to native code with LLVM and run it")
    r.add_argument("file", metavar="FILE.conv")
    r.add_argument("--model", metavar="NAME", help="which model (default: the only or last one)")
    r.add_argument("--weights", metavar="W.npz", help="weights as NAME.weight / NAME.bias arrays in .npz or "
                   ".safetensors, or a PyTorch state_dict .pt/.pth (needs torch); default: FILE.npz or "
                   "FILE.safetensors beside the program, else seeded random weights")
    r.add_argument("--input", metavar="X.npy", help="input batch, float32 [N, C, H, W] "
                   "(default: the bundled digits for [N, 1, 28, 28] models, else a random batch)")
    r.add_argument("--batch", type=int, metavar="B", help="size of a random batch (default 1); with the "
                   "bundled digits, how many of them (default: all 359)")
    r.add_argument("--output", metavar="Y.npy", help="save the output array")
    r.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="seed for random weights and inputs")
    r.add_argument("--threads", type=int, metavar="T", help="worker threads (default: all cores)")
    r.add_argument("--size", metavar="H=..,W=..", help="symbolic sizes for a random batch (default: the "
                   "smallest valid ones)")
    r.add_argument("--repeat", type=int, default=10, metavar="R", help="timed runs (median reported)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write the compile cache")
    r.set_defaults(func=cmd_run)

    k = sub.add_parser("compile", help="write a stage of the pipeline: the syntax tree, the checked model, the "
                       "loop IR, the optimised LLVM IR, assembly or an object file")
    k.add_argument("file", metavar="FILE.conv")
    k.add_argument("--emit", choices=(*stages.STAGES, stages.LIB), required=True,
                   help="what to write: a stage of the pipeline as text (ast, model, plan, loops, loops-final), "
                   "the optimised LLVM IR (llvm), assembly (asm) or an object file (obj) for the host or --cpu, or "
                   "a C library with its weights inside (lib: OUT.so, OUT.o, OUT.h)")
    k.add_argument("-o", dest="output", metavar="OUT", help="output file (default: stdout; FILE.o for obj; "
                   "FILE.so, FILE.o, FILE.h for lib)")
    k.add_argument("--model", metavar="NAME", help="which model (default: the only or last one)")
    k.add_argument("--size", metavar="H=..,W=..", help="bind symbolic sizes (default: the smallest valid; "
                   "for lib, every symbol but N must be given)")
    k.add_argument("--cpu", metavar="NAME", help="compile for this LLVM CPU (x86-64-v3, znver3, skylake-avx512, "
                   "...; default: the host): its features and vector width")
    k.add_argument("--weights", metavar="W.npz", help="for lib: the weights to pack into the library (default: "
                   "FILE.npz or FILE.safetensors beside the program, else seeded random weights)")
    k.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="for lib: seed for random weights")
    k.add_argument("--no-cache", action="store_true", help="do not read or write the compile cache")
    k.add_argument("--time-passes", action="store_true", help="print how long each stage of the pipeline takes "
                   "(to stderr), as LLVM's -time-passes")
    k.set_defaults(func=cmd_compile)

    _add_interop_parsers(sub)

    from .bench import add_bench_parser  # stdlib-only at import; numpy/torch load when bench runs

    add_bench_parser(sub)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler below
        return code
    except UsageError as e:
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as e:
        if e.args and e.args[0]:
            print(f"convdsl: error: {e.args[0]}", file=sys.stderr)
        return EXIT_INPUT
    except ValueError as e:
        # A weights file, input or size the model cannot take (a BoundaryError, a LimitError among
        # them) wherever a command meets it; any other ValueError is a bug and keeps its traceback.
        from ..api import BoundaryError

        if not isinstance(e, BoundaryError):
            raise
        print(f"convdsl: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except MemoryError as e:  # numpy's allocation failures subclass MemoryError
        what = str(e).strip() or "out of memory"
        print(f"convdsl: error: not enough memory: {what}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        # The reader (say `| head`) went away: not an error of ours.  Point stdout
        # at devnull so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return getattr(args, "exit_status", EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
