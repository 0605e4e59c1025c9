"""Small helpers shared by hwcc's Relax passes: reading and rebuilding ``main``.

ONNX models imported by ``tvm.relax.frontend.onnx.from_onnx`` have one function ``main`` whose
body is a single dataflow block of ``VarBinding``\\ s. The helpers here read that form and rebuild
it binding by binding with a :class:`tvm.relax.BlockBuilder`, so that every rewritten call gets
its type (shapes) inferred again and binding names are kept (later passes and the
recovery step find layers by binding name).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, topi
from tvm.ir.expr import Constant

from targets.errors import ConfigError

logger = logging.getLogger(__name__)

# Errors raised inside a module pass cross TVM's FFI; registered, they come back to the caller
# as the same class (not a RuntimeError), so users see ``ConfigError`` from ``pass_obj(mod)``.
tvm_ffi.register_error("ConfigError", ConfigError)

Rewrite = Callable[[relax.VarBinding, relax.Expr], "relax.Expr | None"]


def is_const(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a Relax constant (a bound weight)."""
    return isinstance(expr, Constant)


def const_array(expr: relax.Expr) -> np.ndarray:
    """The numpy value of a Relax constant."""
    return expr.value.numpy()


def const(arr: np.ndarray) -> relax.Expr:
    """A Relax constant holding a contiguous copy of ``arr`` (its dtype is kept)."""
    return relax.const(np.ascontiguousarray(arr))


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed expression, or None when unknown or not a tensor."""
    if is_const(expr):
        return tuple(const_array(expr).shape)
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    shape = ty.shape
    if not isinstance(shape, relax.ShapeExpr):
        return None
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.ir.prim.expr.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def op_name(expr: relax.Expr) -> str | None:
    """``"relax.nn.conv2d"`` for a call to a registered op, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def main_function(mod: tvm.IRModule) -> relax.Function:
    """The module's ``main`` Relax function; a clear error when there is none."""
    names = [gv.name_hint for gv in mod.get_global_vars()]
    if "main" not in names or not isinstance(mod["main"], relax.Function):
        raise ConfigError(f"expected a Relax function 'main' in the module; found {sorted(names)}")
    return mod["main"]


def bindings(func: relax.Function) -> Iterator[relax.Binding]:
    """All bindings of ``func``'s body, in order."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return
    for block in body.blocks:
        yield from block.bindings


def substitute(expr: relax.Expr, vmap: dict) -> relax.Expr:
    """``expr`` with vars replaced through ``vmap``; calls are rebuilt without types."""
    if isinstance(expr, relax.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, vmap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, vmap), expr.index)
    if isinstance(expr, relax.Call):
        args = [substitute(a, vmap) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    return expr


def rebuild_main(
    mod: tvm.IRModule,
    rewrite: Rewrite | None = None,
    extra_outputs: Sequence[relax.Var] = (),
) -> tvm.IRModule:
    """Rebuild ``main`` binding by binding, optionally rewriting values and adding outputs.

    Parameters
    ----------
    mod
        Module with a Relax ``main`` whose body is a sequence of binding blocks.
    rewrite
        Called as ``rewrite(binding, value)`` with ``value`` the binding's value whose vars are
        already replaced by their rebuilt versions. Returns the expression to emit, or None to
        emit ``value`` unchanged. Types are inferred again for what is emitted.
    extra_outputs
        Vars bound in ``main`` (e.g. intermediate activations). When given, ``main`` returns
        ``(original_output, *extra_outputs)``.

    Returns
    -------
    tvm.IRModule
        A new module; other functions and the attributes of ``main`` are kept, binding names too.
    """
    func = main_function(mod)
    if not isinstance(func.body, relax.SeqExpr):
        raise ConfigError("main's body must be a sequence of binding blocks")
    wanted = list(extra_outputs)
    vmap: dict = {}
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", list(func.params), attrs=attrs, pure=func.is_pure):
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                with bb.dataflow():
                    _emit_block(bb, block, vmap, rewrite, dataflow=True)
                    exposed = {
                        v: bb.emit_output(vmap[v], name_hint=f"{v.name}_out")
                        for v in wanted
                        if v in vmap and isinstance(v, relax.DataflowVar)
                    }
                vmap.update(exposed)
            else:
                _emit_block(bb, block, vmap, rewrite, dataflow=False)
        missing = [v.name for v in wanted if v not in vmap and v not in func.params]
        if missing:
            raise ConfigError(f"values to expose are not bound in main: {missing}")
        out = substitute(func.body.body, vmap)
        if wanted:
            out = relax.Tuple([out] + [vmap.get(v, v) for v in wanted])
        bb.emit_func_output(out)
    new_func = bb.get()["main"]
    new_mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    new_mod[new_mod.get_global_var("main")] = new_func
    return new_mod


def _emit_block(
    bb: relax.BlockBuilder,
    block: relax.BindingBlock,
    vmap: dict,
    rewrite: Rewrite | None,
    dataflow: bool,
) -> None:
    for binding in block.bindings:
        value = substitute(binding.value, vmap)
        if rewrite is not None:
            new = rewrite(binding, value)
            value = value if new is None else new
        name = binding.var.name
        if isinstance(binding, relax.MatchCast):
            new_var = bb.match_cast(value, binding.ty, name_hint=name)
        elif dataflow and not isinstance(binding.var, relax.DataflowVar):
            new_var = bb.emit_output(value, name_hint=name)
        else:
            new_var = bb.emit(value, name_hint=name)
        vmap[binding.var] = new_var


CallRewrite = Callable[[relax.BlockBuilder, relax.Call], "relax.Expr | None"]


def rewrite_op_calls(mod: tvm.IRModule, op: str, rewrite: CallRewrite) -> tuple[tvm.IRModule, int]:
    """Every call of the Relax operator ``op`` (e.g. ``"relax.nn.conv2d"``) in the module's
    Relax functions passed through ``rewrite(builder, call)``, after its arguments are rewritten.

    ``rewrite`` returns the replacement (it may emit bindings with ``builder`` first) or None to
    keep the call. Returns the new module and how many calls were replaced; ``mod`` itself when
    none were.
    """
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewriter(PyExprMutator):
        def __init__(self, mod: tvm.IRModule) -> None:
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == op):
                return call
            new = rewrite(self.builder_, call)
            if new is None:
                return call
            self.count += 1
            return new

    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    if not rewriter.count:
        return mod, 0
    return rewriter.builder_.get(), rewriter.count


def op_rewrite_pass(name: str, op: str, rewrite: CallRewrite, what: str) -> tvm.transform.Pass:
    """A Relax module pass ``name`` applying :func:`rewrite_op_calls` with ``rewrite`` to the
    calls of ``op``; it logs how many calls became ``what``."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod, _ctx):
        mod, count = rewrite_op_calls(mod, op, rewrite)
        if count:
            logger.info("%d %s", count, what)
        return mod

    return apply


#: TOPI elementwise kernels that the importer emits as call_tir, and their Relax op.
_TE_OPS = {
    "maximum": (topi.maximum, relax.op.maximum),
    "minimum": (topi.minimum, relax.op.minimum),
}


def relax_op_of_te_call(mod: tvm.IRModule, call: relax.Call) -> relax.Expr | None:
    """The Relax op call equivalent to ``call_tir(maximum|minimum, (x, c))``, or None (the
    callee is checked to be structurally TOPI's kernel, not just named like it)."""
    if op_name(call) != "relax.call_tir" or not isinstance(call.args[1], relax.Tuple):
        return None
    gv, args = call.args[0], list(call.args[1].fields)
    # the importer names them maximum, maximum1, ...: the structural check below decides
    base = re.sub(r"\d+$", "", gv.name_hint)
    entry = _TE_OPS.get(base)
    if entry is None or len(args) != 2 or not any(is_const(a) for a in args):
        return None
    te_fn, relax_op = entry
    params = [relax.Var(f"a{i}", a.ty) if not is_const(a) else a for i, a in enumerate(args)]
    bb = relax.BlockBuilder()
    with bb.function("probe", [p for p in params if not is_const(p)]):
        bb.emit_func_output(bb.emit_te(te_fn, *params))
    ref = bb.get()[base]
    if not tvm_ffi.structural_equal(ref, mod[gv], map_free_vars=True):
        return None
    return relax_op(*args)


def layer_flops(mod: tvm.IRModule) -> int:
    """Operations (a multiply-add counts 2) of ``main``'s matmuls and 2-D convolutions with
    static shapes: ``2 · |Y| · K`` (``K``: the contracted length; ``C/groups · kh · kw`` for a
    conv). The layers compression changes; elementwise work is not counted."""
    total = 0
    for b in bindings(main_function(mod)):
        name = op_name(b.value)
        if name not in ("relax.matmul", "relax.nn.conv2d"):
            continue
        xs, ws, ys = (static_shape(e) for e in (b.value.args[0], b.value.args[1], b.var))
        if xs is None or ws is None or ys is None:
            continue
        k = xs[-1] if name == "relax.matmul" else int(np.prod(ws[1:]))
        total += 2 * int(np.prod(ys)) * int(k)
    return total
