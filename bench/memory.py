"""Peak memory of one forward pass on big images: convdsl against PyTorch eager.

    python bench/memory.py examples/anysize.conv --size H=2048,W=2048 --batch 1 --threads 1,2

Each engine runs in its own fresh process (so one's allocations cannot hide the other's) on the
same seeded weights and input; each reports its peak resident set (``ru_maxrss``) before and
after the forward pass, and the difference is what the pass itself needed.  Prints a table and
the ratio convdsl / PyTorch of those differences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import contextlib, json, resource, sys
import numpy as np
import convdsl
engine, path, sizes, batch, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
net = convdsl.compile(path, threads=threads, cache=False)
w = net.weights(sizes)
shape = [batch, *net.model.bind(sizes).input_shape]
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
ctx = contextlib.nullcontext()
if engine == "torch":
    import torch
    from convdsl.tools.export_torch import to_torch
    torch.set_num_threads(threads)
    m = to_torch(net.model, w)
    ctx = torch.no_grad()
    run = lambda: m(torch.from_numpy(x)).numpy()
else:
    net.bind(sizes)  # compiled before the baseline: code and packed weights are not the pass's memory
    run = lambda: net(x, threads=threads)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with ctx:
    y = run()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "checksum": float(np.asarray(y, np.float64).sum())}))
"""


def _sizes(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--size", default="", help="symbolic sizes, H=..,W=..")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args(argv)
    sizes = _sizes(a.size)
    print(f"{a.file} {sizes} batch {a.batch}: peak resident memory of one forward pass (MB)")
    print(f"{'engine':<8} {'threads':>7} {'before':>9} {'peak':>9} {'pass':>9}")
    for t in (int(s) for s in a.threads.split(",")):
        got = {}
        for engine in ("convdsl", "torch"):
            r = subprocess.run([sys.executable, "-c", _CHILD, engine, a.file, json.dumps(sizes), str(a.batch), str(t)],
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            got[engine] = json.loads(r.stdout.strip().splitlines()[-1])
            g = got[engine]
            print(f"{engine:<8} {t:>7} {g['before_kb'] / 1024:>9.0f} {g['after_kb'] / 1024:>9.0f} "
                  f"{(g['after_kb'] - g['before_kb']) / 1024:>9.0f}")
        c, p = (got[e]["after_kb"] - got[e]["before_kb"] for e in ("convdsl", "torch"))
        print(f"{'':<8} {t:>7} convdsl / torch for the pass: {c / max(p, 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
