"""Random symbolic conv programs, as `.conv` text and as PyTorch calls.

A program is a list of layer specs (plain tuples); :func:`conv_text` writes it
as a model over ``x: [N, C, H, W]`` (optionally with ``where`` clauses and
declared shapes), and :func:`torch_shapes` pushes a zero tensor of given sizes
through ``torch.nn.functional`` on the ``meta`` device (shapes propagate,
nothing is computed), returning every layer's output shape -- or None where
PyTorch refuses the size or a layer comes out empty.  The two are written
independently of the checker, from LANGUAGE.md's layer semantics and torch's.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

Spec = tuple  # ("conv", c, k, s, p, d) | ("pool", "max"|"avg", k, s, p, ceil) | ("flatten",) | ("dense", n)
              # | ("gap",) | ("relu",)


def _pair(v) -> str:
    return str(v[0]) if v[0] == v[1] else f"({v[0]}, {v[1]})"


def layer_text(spec: Spec) -> str:
    kind = spec[0]
    if kind == "conv":
        _, c, k, s, p, d = spec
        return f"conv({c}, kernel={_pair(k)}, stride={_pair(s)}, padding={_pair(p)}, dilation={_pair(d)})"
    if kind == "pool":
        _, how, k, s, p, ceil = spec
        return f"{how}pool({_pair(k)}, stride={_pair(s)}, padding={_pair(p)}, ceil={'true' if ceil else 'false'})"
    if kind == "gap":
        return "global_avgpool"
    if kind == "dense":
        return f"dense({spec[1]})"
    return kind


def conv_text(specs: Sequence[Spec], channels: int = 2, where: Sequence[str] = (),
              declared: Sequence[Optional[str]] = (), output: Optional[str] = None, name: str = "M") -> str:
    """The model as source; ``declared[i]`` (a shape text or None) follows layer i."""
    out = f" -> {output}" if output else ""
    clause = f" where {', '.join(where)}" if where else ""
    lines = [f"model {name}(x: [N, {channels}, H, W]){out}{clause} {{"]
    for i, spec in enumerate(specs):
        decl = declared[i] if i < len(declared) else None
        lines.append(f"    {layer_text(spec)}" + (f"  -> {decl}" if decl else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def torch_shapes(specs: Sequence[Spec], n: int, c: int, h: int, w: int) -> Optional[list]:
    """Each layer's output shape from PyTorch, or None if PyTorch refuses or a size is 0."""
    x = torch.empty((n, c, h, w), device="meta")
    shapes = []
    try:
        for spec in specs:
            kind = spec[0]
            if kind == "conv":
                _, co, k, s, p, d = spec
                x = F.conv2d(x, torch.empty((co, x.shape[1], *k), device="meta"), stride=s, padding=p, dilation=d)
            elif kind == "pool":
                _, how, k, s, p, ceil = spec
                if how == "max":
                    x = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
                else:
                    x = F.avg_pool2d(x, k, s, p, ceil_mode=ceil)
            elif kind == "gap":
                x = F.adaptive_avg_pool2d(x, 1)
            elif kind == "flatten":
                x = torch.flatten(x, 1)
            elif kind == "dense":
                x = F.linear(x, torch.empty((spec[1], x.shape[1]), device="meta"))
            else:
                x = F.relu(x)
            if any(v < 1 for v in x.shape):
                return None
            shapes.append(tuple(x.shape))
    except RuntimeError:
        return None
    return shapes


def random_program(rng: random.Random, max_layers: int = 5) -> list:
    """Conv and pool layers (small kernels, strides, paddings), maybe a flatten + dense tail."""
    specs: list = []
    for _ in range(rng.randint(1, max_layers)):
        if rng.random() < 0.6:
            k = (rng.randint(1, 4), rng.randint(1, 4))
            d = (rng.choice((1, 1, 2)), 1)
            p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
            s = (rng.randint(1, 3), rng.randint(1, 3))
            specs.append(("conv", rng.randint(1, 3), k, s, p, d))
        else:
            k = (rng.randint(1, 3),) * 2 if rng.random() < 0.7 else (rng.randint(1, 3), rng.randint(1, 3))
            s = (rng.randint(1, 3),) * 2
            p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
            specs.append(("pool", rng.choice(("max", "avg")), k, s, p, rng.random() < 0.3))
        if rng.random() < 0.2:
            specs.append(("relu",))
    r = rng.random()
    if r < 0.4:
        specs += [("flatten",), ("dense", rng.randint(1, 5))]
    elif r < 0.55:
        specs += [("gap",), ("flatten",), ("dense", rng.randint(1, 5))]
    return specs


def _size(n, k: int, s: int, p: int, d: int, ceil: bool):
    """PyTorch's output size (its docs' formula; ceil_mode drops a last window
    that would start past the input and the left padding)."""
    keff = d * (k - 1) + 1
    if not ceil:
        return (n + 2 * p - keff) // s + 1
    # windows start at t*s for t*s <= n + 2p - keff + s - 1 and t*s < n + p: the
    # tighter of the two bounds has the smaller numerator
    return (n + p - 1) // s + 1 if p + s > keff else (n + 2 * p - keff + s - 1) // s + 1


def sym_shapes(specs: Sequence[Spec], c: int, h, w) -> list:
    """Each layer's output shape (without the batch axis) over the sizes h, w
    (ints or convdsl.core.symbolic expressions)."""
    shape: tuple = (c, h, w)
    out = []
    for spec in specs:
        kind = spec[0]
        if kind == "conv":
            _, co, k, s, p, d = spec
            shape = (co, _size(shape[1], k[0], s[0], p[0], d[0], False), _size(shape[2], k[1], s[1], p[1], d[1], False))
        elif kind == "pool":
            _, _how, k, s, p, ceil = spec
            shape = (shape[0], _size(shape[1], k[0], s[0], p[0], 1, ceil), _size(shape[2], k[1], s[1], p[1], 1, ceil))
        elif kind == "gap":
            shape = (shape[0], 1, 1)
        elif kind == "flatten":
            shape = (shape[0] * shape[1] * shape[2],)
        elif kind == "dense":
            shape = (spec[1],)
        out.append(shape)
    return out
