"""Random symbolic `.conv` programs and their PyTorch oracle, for the differential test.

``generate(seed)`` draws a model over ``x: [N, C, H, W]`` with ``H`` and ``W`` symbolic: maybe a
``where`` clause (``H >= k``, ``H > k``, ``H % m == 0``, ``H == v``), layers of every shape-changing
kind the language has (conv with kernel, padding -- int, pair, four sides or ``same`` --, stride,
dilation and groups; max and average pools with stride, padding, ``ceil`` and ``count_pad``;
``global_avgpool``; activations; ``flatten``; ``dense``; ``dropout``; ``softmax``), and declared
shapes after some layers and after the signature, each either written from the output-size
definition (right) or perturbed (wrong: off by one, an axis swapped, a literal 0 or negative
size).  Sometimes a layer is deliberately illegal (pool padding over half the kernel, groups that
do not divide the channels, ``same`` with a stride, ``dense`` on a 4-D input).

``oracle(case)`` decides from PyTorch alone (``torch.nn.functional`` on the ``meta`` device:
shapes propagate, nothing is computed) what the checker must say, and ``compare(case)`` runs
``convdsl.check_source`` and lists every disagreement.  The declared expressions are evaluated
here with Python's own integer arithmetic (the language's ``+ - * //`` and parentheses are
Python's), never with the checker's algebra.

What "agree" means (the sampled sizes are every allowed H in 1..40 and a few larger ones, the
same for W, and a grid of H x W pairs near the smallest valid sizes and beyond):

* the program is accepted exactly when (a) some allowed size is valid for PyTorch (every layer
  non-empty and legal), (b) for a symbol the ``where`` clause names, every allowed value of it is
  valid on its axis (the clause is a promise), and (c) every declared shape -- after a layer or
  the model's output -- equals PyTorch's at every sampled size where the whole model is valid;
* when accepted, every layer's symbolic output shape, evaluated at each valid sampled size,
  equals PyTorch's there, and the sizes the checked model admits (``valid_for``,
  ``multiple_of``, ``fixed``) are exactly the sampled allowed sizes at which PyTorch succeeds.

Validity is per axis (conv and pool rules act on H and W separately, and a product of positive
sizes is positive), so it is sampled along each axis with the other one large; the oracle checks
that assumption itself on the grid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

SMALL = 40  # every allowed size up to this is sampled
LARGE = (48, 61, 64, 96, 128, 257, 500, 1024, 4096)  # and these: a minimum above SMALL is seen too
BIG = 4096  # "large": the other axis while one axis is sampled (meta tensors cost nothing)

# Layer specs (plain tuples):
#   ("conv", c_out, (kh, kw), (sh, sw), pad, (dh, dw), groups)   pad: (t, b, l, r) or "same"
#   ("pool", "max"|"avg", (kh, kw), (sh, sw), (ph, pw), ceil, count_pad)
#   ("gap",) ("act", name) ("flatten",) ("dense", n) ("dropout", p) ("softmax",)


@dataclass
class Case:
    seed: int
    channels: int
    specs: list
    where: list  # (symbol, op, value): op in ">=", ">", "==", "%"
    declared: list  # per layer: shape text or None
    output: str  # the signature's declared output shape
    text: str = ""
    notes: list = field(default_factory=list)  # how each declaration was made (for reading a failure)


# ---------------------------------------------------------------------------- text
def _pair_text(rng: random.Random, v: tuple) -> str:
    if v[0] == v[1] and rng.random() < 0.7:
        return str(v[0])
    return f"({v[0]}, {v[1]})"


def _layer_text(rng: random.Random, spec: tuple) -> str:
    kind = spec[0]
    if kind == "conv":
        _, c, k, s, pad, d, g = spec
        args = [str(c)]
        args.append(_pair_text(rng, k) if rng.random() < 0.4 else f"kernel={_pair_text(rng, k)}")
        if s != (1, 1) or rng.random() < 0.2:
            args.append(f"stride={_pair_text(rng, s)}")
        if pad == "same":
            args.append("padding=same")
        else:
            t, b, left, r = pad
            if (t, b, left, r) == (0, 0, 0, 0):
                if rng.random() < 0.3:
                    args.append(rng.choice(("padding=0", "padding=valid")))
            elif t == b and left == r:
                args.append(f"padding={_pair_text(rng, (t, left))}")
            else:
                args.append(f"padding=({t}, {b}, {left}, {r})")
        if d != (1, 1) or rng.random() < 0.1:
            args.append(f"dilation={_pair_text(rng, d)}")
        if g != 1 or rng.random() < 0.1:
            args.append(f"groups={g}")
        if rng.random() < 0.1:
            args.append("bias=false")
        return f"conv({', '.join(args)})"
    if kind == "pool":
        _, how, k, s, p, ceil, count_pad = spec
        args = [_pair_text(rng, k)]
        if s != k or rng.random() < 0.3:
            args.append(f"stride={_pair_text(rng, s)}")
        if p != (0, 0) or rng.random() < 0.2:
            args.append(f"padding={_pair_text(rng, p)}")
        if ceil or rng.random() < 0.1:
            args.append(f"ceil={'true' if ceil else 'false'}")
        if how == "avg" and (not count_pad or rng.random() < 0.1):
            args.append(f"count_pad={'true' if count_pad else 'false'}")
        return f"{how}pool({', '.join(args)})"
    if kind == "gap":
        return "global_avgpool"
    if kind == "act":
        return spec[1]
    if kind == "dense":
        return f"dense({spec[1]})"
    if kind == "dropout":
        return f"dropout({spec[1]})"
    return kind  # flatten, softmax


def _where_text(w: tuple) -> str:
    s, op, v = w
    return f"{s} % {v} == 0" if op == "%" else f"{s} {op} {v}"


def render(case: Case, rng: random.Random) -> str:
    clause = f" where {', '.join(_where_text(w) for w in case.where)}" if case.where else ""
    lines = [f"model M(x: [N, {case.channels}, H, W]) -> {case.output}{clause} {{"]
    for spec, decl in zip(case.specs, case.declared):
        lines.append(f"    {_layer_text(rng, spec)}" + (f"  -> {decl}" if decl else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- shapes as text
def _axis_text(n: str, spec: tuple, axis: int) -> str:
    """The output size on one axis as a language expression, written from the definitions
    (LANGUAGE.md's formula; PyTorch's ceil_mode rule) -- not from the checker."""
    if spec[0] == "conv":
        _, _c, k, s, pad, d, _g = spec
        if pad == "same":
            return n
        total = pad[0] + pad[1] if axis == 0 else pad[2] + pad[3]
        return f"(({n}) + {total} - {d[axis] * (k[axis] - 1)} - 1) // {s[axis]} + 1"
    _, _how, k, s, p, ceil, _cp = spec
    k, s, p = k[axis], s[axis], p[axis]
    if not ceil:
        return f"(({n}) + {2 * p} - {k}) // {s} + 1"
    # ceil: windows start at t*s for t*s <= n + 2p - k + s - 1 (rounded up) and t*s < n + p (not
    # in the bottom padding); whichever bound is tighter for every n decides the expression.
    if p + s > k:
        return f"(({n}) + {p} - 1) // {s} + 1"
    return f"(({n}) + {2 * p - k + s - 1}) // {s} + 1"


def _shape_texts(specs: list, channels: int) -> list:
    """Per layer: the output shape as a list of texts (batch axis first), or None once a layer is
    one the language refuses whatever the size (a dense on a 4-D input)."""
    shape: Optional[list] = ["N", str(channels), "H", "W"]
    out = []
    for spec in specs:
        kind = spec[0]
        if shape is None:
            out.append(None)
            continue
        if kind in ("conv", "pool"):
            if len(shape) != 4:
                shape = None
            else:
                c = str(spec[1]) if kind == "conv" else shape[1]
                shape = ["N", c, _axis_text(shape[2], spec, 0), _axis_text(shape[3], spec, 1)]
        elif kind == "gap":
            shape = ["N", shape[1], "1", "1"] if len(shape) == 4 else None
        elif kind == "flatten":
            shape = ["N", f"{shape[1]} * ({shape[2]}) * ({shape[3]})"] if len(shape) == 4 else None
        elif kind == "dense":
            shape = ["N", str(spec[1])] if len(shape) == 2 else None
        out.append(None if shape is None else list(shape))
    return out


def _declare(rng: random.Random, shape: Optional[list]) -> tuple[str, str]:
    """A declared shape for a layer whose true shape is ``shape``: (text, how it was made)."""
    if shape is None:
        return "[N, 1]", "arbitrary"
    r = rng.random()
    s = list(shape)
    how = "right"
    if r < 0.55:
        pass
    elif r < 0.7 and len(s) >= 3:
        i = rng.randrange(1, len(s))
        s[i] = f"{s[i]} {rng.choice(('+', '-'))} 1"
        how = f"off by one on axis {i}"
    elif r < 0.78 and len(s) == 4:
        s[2], s[3] = s[3], s[2]
        how = "H and W swapped"
    elif r < 0.86:
        i = rng.randrange(1, len(s))
        s[i] = rng.choice(("0", "-1", "0 * H"))
        how = f"empty size on axis {i}"
    elif r < 0.93 and len(s) == 2:
        s[1] = f"{s[1]} + 1"
        how = "feature count off by one"
    else:
        i = rng.randrange(1, len(s))
        s[i] = f"({s[i]}) * 2 - ({s[i]})"  # the same size, spelled differently: right
        how = "right (respelled)"
    return "[" + ", ".join(s) + "]", how


# ---------------------------------------------------------------------------- the generator
def _conv(rng: random.Random, c_in: int) -> tuple:
    k = (rng.randint(1, 5), rng.randint(1, 5)) if rng.random() < 0.3 else (rng.randint(1, 5),) * 2
    d = (1, 1) if rng.random() < 0.75 else (rng.randint(1, 3), rng.randint(1, 2))
    r = rng.random()
    if r < 0.15:
        s = (1, 1)
        pad: object = "same"
        if rng.random() < 0.05:
            s = (2, 2)  # illegal: same needs stride 1
    else:
        s = (rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.3 else (rng.choice((1, 1, 2, 3)),) * 2
        if r < 0.5:
            pad = (0, 0, 0, 0)
        elif r < 0.85:
            ph, pw = rng.randint(0, 3), rng.randint(0, 3)
            pad = (ph, ph, pw, pw)
        else:
            pad = tuple(rng.randint(0, 3) for _ in range(4))
    c_out = rng.randint(1, 4)
    g = 1
    if rng.random() < 0.2:
        g = rng.choice([x for x in (1, 2, 3, 4) if c_in % x == 0 and c_out % x == 0] or [1])
        if rng.random() < 0.15:
            g = rng.choice((2, 3))  # may not divide: illegal then
    return ("conv", c_out, k, s, pad, d, g)


def _pool(rng: random.Random) -> tuple:
    k = (rng.randint(1, 4),) * 2 if rng.random() < 0.7 else (rng.randint(1, 4), rng.randint(1, 4))
    if rng.random() < 0.5:
        s = k
    else:
        s = (rng.randint(1, 4),) * 2 if rng.random() < 0.7 else (rng.randint(1, 4), rng.randint(1, 4))
    limit = 1 if rng.random() < 0.05 else 0  # sometimes over half the kernel: illegal
    p = (rng.randint(0, k[0] // 2 + limit), rng.randint(0, k[1] // 2 + limit)) if rng.random() < 0.4 else (0, 0)
    return ("pool", rng.choice(("max", "avg")), k, s, p, rng.random() < 0.35, rng.random() < 0.7)


def _where(rng: random.Random) -> list:
    out = []
    for s in ("H", "W"):
        r = rng.random()
        if r < 0.55:
            continue
        if r < 0.7:
            out.append((s, rng.choice((">=", ">")), rng.randint(1, 24)))
        elif r < 0.82:
            out.append((s, "%", rng.choice((2, 3, 4, 8))))
            if rng.random() < 0.5:
                out.append((s, ">=", rng.randint(1, 24)))
        elif r < 0.92:
            out.append((s, "==", rng.randint(1, 24)))
        else:
            out.append((s, "%", rng.choice((2, 4))))
            out.append((s, ">", rng.randint(1, 16)))
    rng.shuffle(out)
    return out


def generate(seed: int, max_layers: int = 6) -> Case:
    rng = random.Random(seed)
    channels = rng.choice((1, 2, 2, 3, 4))
    specs: list = []
    c = channels
    for _ in range(rng.randint(1, max_layers)):
        r = rng.random()
        if r < 0.5:
            spec = _conv(rng, c)
            c = spec[1]
        elif r < 0.85:
            spec = _pool(rng)
        elif r < 0.92:
            spec = ("act", rng.choice(("relu", "sigmoid", "tanh")))
        else:
            spec = rng.choice((("dropout", rng.choice(("0.5", ".25", "0.0"))), ("softmax",)))
        specs.append(spec)
    r = rng.random()
    if r < 0.35:
        specs += [("flatten",), ("dense", rng.randint(1, 5))]
    elif r < 0.5:
        specs += [("gap",), ("flatten",), ("dense", rng.randint(1, 5))]
    elif r < 0.6:
        specs += [("flatten",)]
        if rng.random() < 0.5:
            specs.append(("act", "relu"))
    elif r < 0.63:
        specs += [("dense", rng.randint(1, 5))]  # illegal: a dense on a 4-D input
    texts = _shape_texts(specs, channels)
    declared, notes = [], []
    for i, shape in enumerate(texts):
        if rng.random() < 0.3 or specs[i][0] == "flatten" and rng.random() < 0.6:
            t, how = _declare(rng, shape)
            declared.append(t)
            notes.append(f"layer {i + 1}: {how}")
        else:
            declared.append(None)
    output, how = _declare(rng, texts[-1])
    notes.append(f"output: {how}")
    case = Case(seed, channels, specs, _where(rng), declared, output, notes=notes)
    case.text = render(case, rng)
    return case


# ---------------------------------------------------------------------------- the oracle
def torch_run(case: Case, h: int, w: int) -> Optional[list]:
    """Every layer's output shape from PyTorch at H = h, W = w (batch 1), or None where PyTorch
    refuses a layer, a size comes out empty, or the language forbids the layer (a dense on a
    4-D input, which torch would apply to the last axis)."""
    x = torch.empty((1, case.channels, h, w), device="meta")
    shapes = []
    try:
        for spec in case.specs:
            kind = spec[0]
            if kind == "conv":
                _, co, k, s, pad, d, g = spec
                if x.dim() != 4:
                    return None
                weight = torch.empty((co, x.shape[1] // g, *k), device="meta")
                if x.shape[1] % g or co % g:
                    return None
                if pad == "same":
                    x = F.conv2d(x, weight, stride=s, padding="same", dilation=d, groups=g)
                else:
                    t, b, left, r = pad
                    x = F.conv2d(F.pad(x, (left, r, t, b)), weight, stride=s, dilation=d, groups=g)
            elif kind == "pool":
                _, how, k, s, p, ceil, count_pad = spec
                if x.dim() != 4:
                    return None
                if how == "max":
                    x = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
                else:
                    x = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=count_pad)
            elif kind == "gap":
                if x.dim() != 4:
                    return None
                x = F.adaptive_avg_pool2d(x, 1)
            elif kind == "flatten":
                if x.dim() != 4:
                    return None
                x = torch.flatten(x, 1)
            elif kind == "dense":
                if x.dim() != 2:
                    return None
                x = F.linear(x, torch.empty((spec[1], x.shape[1]), device="meta"))
            elif kind == "act":
                x = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[spec[1]](x)
            elif kind == "dropout":
                x = F.dropout(x, float(spec[1]), training=False)
            elif kind == "softmax":
                x = F.softmax(x, dim=1)
            if any(v < 1 for v in x.shape):
                return None
            shapes.append(tuple(x.shape))
    except (RuntimeError, ValueError):
        return None
    return shapes


def _allowed(case: Case, s: str, v: int) -> bool:
    for sym_, op, k in case.where:
        if sym_ != s:
            continue
        if op == ">=" and v < k or op == ">" and v <= k or op == "==" and v != k or op == "%" and v % k:
            return False
    return True


def _values(case: Case, s: str) -> list:
    return [v for v in (*range(1, SMALL + 1), *LARGE) if _allowed(case, s, v)]


def _big(case: Case, s: str, big: int = BIG) -> Optional[int]:
    """The fixed value of ``s``, else an allowed value from ``big`` on; None if none is allowed."""
    fixed = [k for sym_, op, k in case.where if sym_ == s and op == "=="]
    if fixed:
        return fixed[0] if _allowed(case, s, fixed[0]) else None
    v = big
    while not _allowed(case, s, v):
        v += 1
        if v > big * 4:
            return None
    return v


def _eval_shape(text: str, h: int, w: int) -> Optional[tuple]:
    return tuple(eval(text, {"__builtins__": {}}, {"N": 1, "H": h, "W": w}))  # noqa: S307 (our own text)


@dataclass
class Verdict:
    accept: Optional[bool]  # None: inconclusive (valid only above the sampled sizes)
    why: str
    valid: dict  # (h, w) -> torch shapes, at every sampled valid pair
    valid_h: dict  # h -> bool over the sampled H
    valid_w: dict


def oracle(case: Case) -> Verdict:
    hs, ws = _values(case, "H"), _values(case, "W")
    hb, wb = _big(case, "H"), _big(case, "W")
    valid_h = {h: wb is not None and torch_run(case, h, wb) is not None for h in hs}
    valid_w = {w: hb is not None and torch_run(case, hb, w) is not None for w in ws}
    good_h = [h for h in hs if valid_h[h]]
    good_w = [w for w in ws if valid_w[w]]
    # A grid near the edges (the last invalid and the first valid sizes) and beyond.
    def pick(vals: list, good: list) -> list:
        if not good:
            return vals[:2]
        i = vals.index(good[0])
        return sorted(set(vals[max(0, i - 2):i + 3] + good[-2:] + good[len(good) // 2:len(good) // 2 + 1]))
    grid = {}
    for h in pick(hs, good_h):
        for w in pick(ws, good_w):
            got = torch_run(case, h, w)
            expected = valid_h[h] and valid_w[w]
            assert (got is not None) == expected, f"validity is not per axis at H={h}, W={w}:\n{case.text}"
            if got is not None:
                grid[(h, w)] = got
    if not grid:
        hh, ww = _big(case, "H", BIG * 16), _big(case, "W", BIG * 16)
        if hh is not None and ww is not None and torch_run(case, hh, ww) is not None:
            # valid only past the sampled sizes: nothing here can tell right from wrong
            return Verdict(None, "valid only above the sampled sizes", grid, valid_h, valid_w)
        return Verdict(False, "no sampled size is valid for PyTorch", grid, valid_h, valid_w)
    for s, valid in (("H", valid_h), ("W", valid_w)):
        if any(sym_ == s for sym_, _, _ in case.where):
            bad = [v for v, ok in valid.items() if not ok]
            if bad:
                return Verdict(False, f"the where clause allows {s} = {bad[0]}, invalid for PyTorch", grid,
                               valid_h, valid_w)
    for (h, w), shapes in grid.items():
        for i, decl in enumerate(case.declared):
            if decl and _eval_shape(decl, h, w) != shapes[i]:
                return Verdict(False, f"layer {i + 1} declares {decl}, PyTorch gives {shapes[i]} at H={h}, W={w}",
                               grid, valid_h, valid_w)
        if _eval_shape(case.output, h, w) != shapes[-1]:
            return Verdict(False, f"the output declares {case.output}, PyTorch gives {shapes[-1]} at H={h}, W={w}",
                           grid, valid_h, valid_w)
    return Verdict(True, "valid and every declaration matches PyTorch", grid, valid_h, valid_w)


def compare(case: Case) -> list:
    """Every way ``convdsl.check_source`` disagrees with the oracle on this case (empty: agrees)."""
    from convdsl.core.symbolic import evaluate
    from convdsl.frontend import check_source

    try:
        checked = check_source(case.text, f"case{case.seed}.conv")
    except Exception as e:  # check_source is documented never to raise
        return [f"check_source raised {type(e).__name__}: {e}"]
    verdict = oracle(case)
    if verdict.accept is None:
        return []
    problems = []
    if checked.ok != verdict.accept:
        what = "accepted" if checked.ok else "rejected:\n" + checked.render()
        problems.append(f"checker {what}; PyTorch says {'valid' if verdict.accept else 'invalid'} "
                        f"({verdict.why})")
        return problems
    if not checked.ok:
        if not checked.result.errors:
            problems.append("rejected without an error")
        return problems
    model = checked.result.model()
    for (h, w), shapes in verdict.valid.items():
        env = {"N": 1, "H": h, "W": w}
        for i, layer in enumerate(model.layers):
            mine = tuple(evaluate(d, env) for d in layer.out_shape)
            if mine != shapes[i]:
                problems.append(f"{layer.name}: {layer.out_shape} is {mine} at H={h}, W={w}; PyTorch {shapes[i]}")
    for s, valid in (("H", verdict.valid_h), ("W", verdict.valid_w)):
        lo, mult, fixed = model.valid_for.get(s, 1), model.multiple_of.get(s, 1), model.fixed.get(s)
        for v, ok in valid.items():
            admits = v >= lo and v % mult == 0 and (fixed is None or v == fixed)
            if admits != ok:
                problems.append(f"the checked model {'admits' if admits else 'excludes'} {s} = {v} "
                                f"(valid_for {lo}, multiple of {mult}, fixed {fixed}); PyTorch "
                                f"{'succeeds' if ok else 'fails'} there")
                break
    return problems
