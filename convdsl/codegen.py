"""Code generation: a verified loop-IR program becomes an ``llvmlite.ir.Module``.

Precondition: ``loopir.verify(prog)`` passes.  Built with ``llvmlite.ir``
builders only (the single textual piece is the rendering of string function
attributes such as ``"prefer-vector-width"="256"``, which ``llvmlite.ir``
does not model).

* every kernel is its own ``internal noinline`` function taking its buffers as
  ``noalias`` pointers (they are disjoint regions) and ``(n0, nt)``;
* ``<V x float>`` vector types are explicit, FMA is ``llvm.fma``;
* mutable locals are ``alloca``\\ s in the entry block (promoted to registers
  by SROA / mem2reg at O3);
* the entry function ``<model>_forward(input*, output*, weights*, scratch*,
  i64 n)`` offsets the arenas and walks the batch tiles.

``exp`` is computed in IR, for scalars and vectors alike: clamp ``x`` to
``[-87.33, 88.37]`` (so the result stays a normal float and saturates
sigmoid/tanh cleanly), ``n = rint(x * log2 e)``, ``r = x - n ln2`` (ln 2 split
in a high and a low part, Cody-Waite), ``e^r`` by its degree-7 Taylor
polynomial in Horner form with FMAs (truncation < 5e-9 on ``|r| <= ln2/2``),
scaled by ``2^n`` built in the exponent bits.  Measured maximum relative
error against numpy's float64 ``exp`` over ``[-87, 88]``: below 3e-7
(about 2.5 ulp; see ``tests/test_backend.py::test_exp_accuracy``).
"""

from __future__ import annotations

import re
from typing import assert_never

from llvmlite import ir
from llvmlite.ir.values import FunctionAttributes

from . import loopir as L

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
I1 = ir.IntType(1)
PTR = ir.PointerType()

EXP_LO, EXP_HI = -87.33, 88.37
LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # exactly representable, few mantissa bits
LN2_LO = 1.4286068203094172e-06


class _FnAttrs(FunctionAttributes):
    """Function attributes plus LLVM string attributes given as ``key=value``."""

    def add(self, name: str) -> None:
        if "=" in name:
            set.add(self, name)
        else:
            super().add(name)

    def _expand(self, name: str, typ) -> str:
        if "=" in name:
            k, v = name.split("=", 1)
            return f'"{k}"="{v}"'
        return name


def entry_name(prog: L.Program) -> str:
    return re.sub(r"\W", "_", prog.name) + "_forward"


def _vec(width: int) -> ir.Type:
    return F32 if width == 1 else ir.VectorType(F32, width)


class _FnGen:
    """Emits one function body from loop-IR statements."""

    def __init__(self, module: ir.Module, fn: ir.Function, ptrs: dict[str, ir.Value], ints: dict[str, ir.Value],
                 kernels: dict[str, tuple[ir.Function, tuple[str, ...]]] | None = None) -> None:
        self.module = module
        self.fn = fn
        entry = fn.append_basic_block("entry")
        self.alloca_b = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self.entry = entry
        self.ptrs = ptrs
        self.kernels = kernels or {}
        self.scopes_i: list[dict[str, ir.Value]] = [dict(ints)]
        self.scopes_l: list[dict[str, tuple[ir.Value, int]]] = [{}]
        self.loop_id = 0

    def finish(self) -> None:
        self.b.ret_void()
        self.alloca_b.branch(self.fn.blocks[1])

    # -- lookup
    def ivar(self, name: str) -> ir.Value:
        for sc in reversed(self.scopes_i):
            if name in sc:
                return sc[name]
        raise AssertionError(name)

    def local(self, name: str) -> tuple[ir.Value, int]:
        for sc in reversed(self.scopes_l):
            if name in sc:
                return sc[name]
        raise AssertionError(name)

    # -- intrinsics
    def intrinsic(self, name: str, width: int) -> ir.Function:
        """``name.f32`` / ``name.vNf32``, declared once per module."""
        nargs = {"llvm.fma": 3}.get(name, 1)
        full = f"{name}.{'f32' if width == 1 else f'v{width}f32'}"
        fn = self.module.globals.get(full)
        if fn is None:
            t = _vec(width)
            fn = ir.Function(self.module, ir.FunctionType(t, [t] * nargs), name=full)
        return fn

    # -- index expressions
    def index(self, e: L.Index) -> ir.Value:
        b = self.b
        match e:
            case L.IConst(value=v):
                return ir.Constant(I64, v)
            case L.IVar(name=n):
                return self.ivar(n)
            case L.IBin(op=op, a=x, b=y):
                va, vb = self.index(x), self.index(y)
                if isinstance(va, ir.Constant) and isinstance(vb, ir.Constant) and op != "min":
                    pyop = {"add": int.__add__, "sub": int.__sub__, "mul": int.__mul__}[op]
                    return ir.Constant(I64, pyop(va.constant, vb.constant))
                match op:
                    case "add":
                        return b.add(va, vb)
                    case "sub":
                        return b.sub(va, vb)
                    case "mul":
                        return b.mul(va, vb)
                    case "min":
                        return b.select(b.icmp_signed("<", va, vb), va, vb)
                raise AssertionError(op)
            case L.IDivC(a=x, c=c, mod=m):
                va = self.index(x)
                if isinstance(va, ir.Constant):
                    return ir.Constant(I64, va.constant % c if m else va.constant // c)
                return b.urem(va, ir.Constant(I64, c)) if m else b.udiv(va, ir.Constant(I64, c))
            case _:
                assert_never(e)

    # -- float values
    def splat(self, x: ir.Value, width: int) -> ir.Value:
        if width == 1:
            return x
        vt = ir.VectorType(F32, width)
        v = self.b.insert_element(ir.Constant(vt, None), x, ir.Constant(I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(vt, None), ir.Constant(ir.VectorType(I32, width), [0] * width))

    def const(self, x: float, width: int) -> ir.Value:
        return ir.Constant(_vec(width), float(x) if width == 1 else [float(x)] * width)

    def width_of(self, v: ir.Value) -> int:
        return v.type.count if isinstance(v.type, ir.VectorType) else 1

    def fmax(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)

    def fmin(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered("<", a, b), a, b)

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.call(self.intrinsic("llvm.fma", self.width_of(a)), [a, b, c])

    def exp(self, x: ir.Value) -> ir.Value:
        b, w = self.b, self.width_of(x)
        x = self.fmin(self.fmax(x, self.const(EXP_LO, w)), self.const(EXP_HI, w))
        n = b.call(self.intrinsic("llvm.rint", w), [b.fmul(x, self.const(LOG2E, w))])
        r = self.fma(n, self.const(-LN2_HI, w), x)
        r = self.fma(n, self.const(-LN2_LO, w), r)
        p = self.const(1.0 / 5040.0, w)
        for k in (720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
            p = self.fma(p, r, self.const(1.0 / k, w))
        it = I32 if w == 1 else ir.VectorType(I32, w)
        ni = b.fptosi(n, it)
        bits = b.shl(b.add(ni, ir.Constant(it, 127 if w == 1 else [127] * w)),
                     ir.Constant(it, 23 if w == 1 else [23] * w))
        return b.fmul(p, b.bitcast(bits, _vec(w)))

    def value(self, v: L.Value) -> ir.Value:
        b = self.b
        match v:
            case L.FConst(value=x, width=w):
                return self.const(x, w)
            case L.Load(buf=name, index=i, width=w):
                p = b.gep(self.ptrs[name], [self.index(i)], inbounds=True, source_etype=F32)
                return b.load(p, typ=_vec(w), align=4)
            case L.Broadcast(value=x, width=w):
                return self.splat(self.value(x), w)
            case L.Local(name=n):
                slot, w = self.local(n)
                return b.load(slot, typ=_vec(w))
            case L.FMA(a=x, b=y, c=z):
                return self.fma(self.value(x), self.value(y), self.value(z))
            case L.Bin(op=op, a=x, b=y):
                va, vb = self.value(x), self.value(y)
                match op:
                    case "add":
                        return b.fadd(va, vb)
                    case "sub":
                        return b.fsub(va, vb)
                    case "mul":
                        return b.fmul(va, vb)
                    case "div":
                        return b.fdiv(va, vb)
                    case "max":
                        return self.fmax(va, vb)
                    case "min":
                        return self.fmin(va, vb)
                raise AssertionError(op)
            case L.Unary(op=op, a=x):
                va = self.value(x)
                w = self.width_of(va)
                one = self.const(1.0, w)
                match op:
                    case "exp":
                        return self.exp(va)
                    case "relu":
                        return self.fmax(va, self.const(0.0, w))
                    case "sigmoid":
                        return b.fdiv(one, b.fadd(one, self.exp(b.fneg(va))))
                    case "tanh":
                        t = self.exp(b.fmul(va, self.const(2.0, w)))
                        return b.fdiv(b.fsub(t, one), b.fadd(t, one))
                raise AssertionError(op)
            case L.ToFloat(index=i, width=w):
                return self.splat(b.sitofp(self.index(i), F32), w)
            case L.SelectLanes(n_valid=k, a=x, b=y):
                va, vb = self.value(x), self.value(y)
                w = self.width_of(va)
                if w == 1:
                    return va if k >= 1 else vb
                mask = ir.Constant(ir.VectorType(I1, w), [1 if lane < k else 0 for lane in range(w)])
                return b.select(mask, va, vb)
            case L.Reduce(op=op, a=x):
                va = self.value(x)
                w = self.width_of(va)
                if w == 1:
                    return va
                acc = b.extract_element(va, ir.Constant(I32, 0))
                for lane in range(1, w):
                    e = b.extract_element(va, ir.Constant(I32, lane))
                    acc = b.fadd(acc, e) if op == "add" else self.fmax(acc, e)
                return acc
            case _:
                assert_never(v)

    # -- statements
    def block(self, body: tuple[L.Stmt, ...]) -> None:
        self.scopes_i.append({})
        self.scopes_l.append({})
        for s in body:
            self.stmt(s)
        self.scopes_i.pop()
        self.scopes_l.pop()

    def stmt(self, s: L.Stmt) -> None:
        b = self.b
        match s:
            case L.For(var=var, start=start, stop=stop, step=step, body=body, unroll=unroll):
                if unroll:
                    assert isinstance(start, L.IConst) and isinstance(stop, L.IConst)
                    for k in range(start.value, stop.value, step):
                        self.scopes_i.append({var: ir.Constant(I64, k)})
                        self.block(body)
                        self.scopes_i.pop()
                    return
                lo, hi = self.index(start), self.index(stop)
                self.loop_id += 1
                pre = b.block
                head = self.fn.append_basic_block(f"{var}.head{self.loop_id}")
                loop = self.fn.append_basic_block(f"{var}.body{self.loop_id}")
                done = self.fn.append_basic_block(f"{var}.done{self.loop_id}")
                b.branch(head)
                b.position_at_end(head)
                iv = b.phi(I64, name=var)
                iv.add_incoming(lo, pre)
                b.cbranch(b.icmp_signed("<", iv, hi), loop, done)
                b.position_at_end(loop)
                self.scopes_i.append({var: iv})
                self.block(body)
                self.scopes_i.pop()
                nxt = b.add(iv, ir.Constant(I64, step), flags=["nsw"])
                iv.add_incoming(nxt, b.block)
                b.branch(head)
                b.position_at_end(done)
            case L.LetIndex(name=n, value=e):
                self.scopes_i[-1][n] = self.index(e)
            case L.DeclLocal(name=n, width=w, init=e):
                slot = self.alloca_b.alloca(_vec(w), name=n)
                b.store(self.value(e), slot)
                self.scopes_l[-1][n] = (slot, w)
            case L.Assign(name=n, value=e):
                slot, _ = self.local(n)
                b.store(self.value(e), slot)
            case L.Store(buf=name, index=i, value=e):
                val = self.value(e)
                p = b.gep(self.ptrs[name], [self.index(i)], inbounds=True, source_etype=F32)
                b.store(val, p, align=4)
            case L.Call(kernel=k, args=args):
                fn, bufs = self.kernels[k]
                b.call(fn, [self.ptrs[x] for x in bufs] + [self.index(a) for a in args])
            case L.Comment():
                pass
            case _:
                assert_never(s)


def _attrs(fn: ir.Function, prog: L.Program) -> None:
    attrs = _FnAttrs()
    for a in fn.attributes:
        attrs.add(a)
    attrs.add("nounwind")
    if prog.vector_width > 1:
        attrs.add(f"prefer-vector-width={32 * prog.vector_width}")
        attrs.add(f"min-legal-vector-width={32 * prog.vector_width}")
    fn.attributes = attrs


def codegen(prog: L.Program) -> ir.Module:
    """The LLVM module of ``prog``; its entry point is :func:`entry_name` ``(prog)``."""
    module = ir.Module(name=prog.name)
    kernels: dict[str, tuple[ir.Function, tuple[str, ...]]] = {}
    for k in prog.kernels:
        fty = ir.FunctionType(ir.VoidType(), [PTR] * len(k.buffers) + [I64] * len(k.params))
        fn = ir.Function(module, fty, name=f"{prog.name}.{k.name}")
        fn.linkage = "internal"
        _attrs(fn, prog)
        fn.attributes.add("noinline")
        for arg, bn in zip(fn.args, k.buffers):
            arg.name = bn
            arg.add_attribute("noalias")
        for arg, pn in zip(fn.args[len(k.buffers):], k.params):
            arg.name = pn
        kernels[k.name] = (fn, k.buffers)
    for k in prog.kernels:
        fn, _ = kernels[k.name]
        ptrs = dict(zip(k.buffers, fn.args))
        ints = dict(zip(k.params, fn.args[len(k.buffers):]))
        g = _FnGen(module, fn, ptrs, ints, kernels)
        g.block(k.body)
        g.finish()

    fty = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, I64])
    fn = ir.Function(module, fty, name=entry_name(prog))
    _attrs(fn, prog)
    for arg, nm in zip(fn.args, ("input", "output", "weights", "scratch", "n")):
        arg.name = nm
    for arg in fn.args[:4]:
        arg.add_attribute("noalias")
    x, y, w, s, n = fn.args
    g = _FnGen(module, fn, {}, {"n": n}, kernels)
    for buf in prog.buffers:
        match buf.kind:
            case "input":
                g.ptrs[buf.name] = x
            case "output":
                g.ptrs[buf.name] = y
            case "weights":
                g.ptrs[buf.name] = g.b.gep(w, [ir.Constant(I64, buf.offset)], inbounds=True, source_etype=F32)
            case "scratch":
                g.ptrs[buf.name] = g.b.gep(s, [ir.Constant(I64, buf.offset)], inbounds=True, source_etype=F32)
    g.block(prog.entry)
    g.finish()
    return module
