"""Canonicalize an imported model so that compression passes see plain weighted layers.

Pass ``hwcc.Canonicalize``:

1. folds constants (``relax.transform.FoldConstant``), so constant transposes of Gemm weights
   and reshapes of biases become plain constants;
2. folds every inference ``R.nn.batch_norm`` into the conv2d / matmul that produces its input
   (weights scaled per output channel, bias ``(b - mean) * scale + beta``), when that layer has a
   constant weight and feeds only the BatchNorm (directly or through its constant bias add);
3. rewrites any other BatchNorm into ``x * scale + shift`` with per-channel constants;
4. turns ``R.call_tir`` of an elementwise ``maximum`` / ``minimum`` PrimFunc with a constant
   operand (what the importer emits for ``Clip``) back into ``R.maximum`` / ``R.minimum``,
   after checking the PrimFunc is structurally equal to the TOPI kernel it claims to be;
5. removes the aliases and dead bindings this leaves (``CanonicalizeBindings``,
   ``DeadCodeElimination``).

Expects: a Relax module with ``main`` from ``from_onnx(..., keep_params_in_input=False)``
(weights bound as constants). A BatchNorm whose statistics are not constants, or whose running
mean/variance outputs are used, is left as is and reported in the log.

Guarantees: the module computes the same function (up to float rounding, ~1e-6 relative);
no ``R.nn.batch_norm`` with constant statistics remains; binding names of kept layers are
unchanged.

Options (:class:`CanonicalizeConfig`): ``fold_batch_norm`` (default True),
``fold_constants`` (default True).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from ._ir import (
    bindings,
    const,
    const_array,
    is_const,
    main_function,
    op_name,
    rebuild_main,
    relax_op_of_te_call,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanonicalizeConfig:
    """Options of :class:`Canonicalize`.

    Attributes
    ----------
    fold_batch_norm
        Fold BatchNorm into the preceding conv2d / matmul, or decompose it. Default True.
    fold_constants
        Run ``FoldConstant`` first. Default True.
    """

    fold_batch_norm: bool = True
    fold_constants: bool = True

    def __post_init__(self) -> None:
        for name in ("fold_batch_norm", "fold_constants"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"CanonicalizeConfig.{name} must be a bool")


def _users(func: relax.Function) -> dict:
    """Var → number of uses in bindings and in the function's result."""
    counts: dict = {}

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                visit(f)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                visit(a)

    for b in bindings(func):
        visit(b.value)
    visit(func.body.body)
    return counts


def _bn_affine(call: relax.Call) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) of an inference BatchNorm with constant statistics."""
    if not all(is_const(a) for a in call.args[1:5]):
        return None
    gamma, beta, mean, var = (const_array(a).astype(np.float64) for a in call.args[1:5])
    attrs = call.attrs
    if not bool(attrs.scale):
        gamma = np.ones_like(gamma)
    if not bool(attrs.center):
        beta = np.zeros_like(beta)
    scale = gamma / np.sqrt(var + float(attrs.epsilon))
    return scale, beta - mean * scale


def _per_channel(arr: np.ndarray, axis: int, ndim: int, size: int) -> bool:
    """Whether ``arr`` broadcast against an ``ndim``-d tensor varies only along ``axis``."""
    if arr.ndim > ndim or arr.size != size:
        return False
    shape = (1,) * (ndim - arr.ndim) + arr.shape
    return all(d == 1 for i, d in enumerate(shape) if i != axis) and shape[axis] == size


def _broadcast_shape(ndim: int, axis: int, size: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = size
    return tuple(shape)


class _BatchNormPlan:
    """Which bindings change when BatchNorms are folded or decomposed (built once per module)."""

    def __init__(self, func: relax.Function) -> None:
        self.weight_scale: dict = {}  # layer var -> (scale, out axis of the weight)
        self.bias_update: dict = {}  # bias-add var -> (scale, shift)
        self.bn_result: dict = {}  # bn var -> ("fold", var to forward) | ("affine", s, sh)
        self.getitem: dict = {}  # getitem var -> bn var
        producer = {b.var: b.value for b in bindings(func)}
        uses = _users(func)
        getitems: dict = {}
        for b in bindings(func):
            v = b.value
            if isinstance(v, relax.TupleGetItem) and isinstance(v.tuple_value, relax.Var):
                getitems.setdefault(v.tuple_value, []).append((b.var, int(v.index)))
        for b in bindings(func):
            if op_name(b.value) != "relax.nn.batch_norm":
                continue
            items = getitems.get(b.var, [])
            affine = _bn_affine(b.value)
            if affine is None or any(i != 0 for _, i in items) or uses.get(b.var, 0) != len(items):
                logger.warning("BatchNorm '%s' left as is (non-constant or stats used)", b.var.name)
                continue
            for gv, _ in items:
                self.getitem[gv] = b.var
            scale, shift = affine
            x = b.value.args[0]
            ndim = len(x.ty.shape.values) if isinstance(x.ty, relax.TensorType) else 0
            axis = int(b.value.attrs.axis) % max(ndim, 1)
            folded = self._try_fold(x, axis, ndim, scale, shift, producer, uses)
            if folded is not None:
                self.bn_result[b.var] = ("fold", folded)
            else:
                self.bn_result[b.var] = ("affine", scale, shift, axis, ndim)

    def _try_fold(
        self,
        x: relax.Expr,
        axis: int,
        ndim: int,
        scale: np.ndarray,
        shift: np.ndarray,
        producer: dict,
        uses: dict,
    ) -> relax.Var | None:
        """Record the fold of a BN on ``x``; returns the var to forward, or None."""
        if not isinstance(x, relax.Var) or uses.get(x, 0) != 1 or x not in producer:
            return None
        value, bias_var = producer[x], None
        if op_name(value) == "relax.add" and is_const(value.args[1]):
            inner = value.args[0]
            if not isinstance(inner, relax.Var) or uses.get(inner, 0) != 1:
                return None
            if not _per_channel(const_array(value.args[1]), axis, ndim, scale.size):
                return None
            if inner not in producer:
                return None
            bias_var, layer_var, value = x, inner, producer[inner]
        else:
            layer_var = x
        name = op_name(value)
        if name == "relax.nn.conv2d" and is_const(value.args[1]):
            attrs = value.attrs
            if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or axis != 1:
                return None
            w_axis = 0
        elif name == "relax.matmul" and is_const(value.args[1]):
            if const_array(value.args[1]).ndim != 2 or axis != ndim - 1:
                return None
            w_axis = 1
        else:
            return None
        if bias_var is not None:
            self.bias_update[bias_var] = (scale, shift, axis, ndim)
        self.weight_scale[layer_var] = (scale, w_axis, shift, bias_var is None, axis, ndim)
        return bias_var if bias_var is not None else layer_var

    def rewrite(self, binding: relax.VarBinding, value: relax.Expr) -> relax.Expr | None:
        """Rewrite callback for :func:`passes._ir.rebuild_main`."""
        var = binding.var
        if var in self.weight_scale:
            scale, w_axis = self.weight_scale[var][:2]
            w = const_array(value.args[1])
            shape = [1] * w.ndim
            shape[w_axis] = -1
            new_w = (w * scale.reshape(shape)).astype(w.dtype)
            return relax.Call(value.op, [value.args[0], const(new_w)], value.attrs, value.ty_args)
        if var in self.bias_update:
            scale, shift, axis, ndim = self.bias_update[var]
            b = const_array(value.args[1])
            flat = b.reshape(-1).astype(np.float64) * scale + shift
            new_b = flat.reshape(b.shape).astype(b.dtype)
            return relax.op.add(value.args[0], const(new_b))
        if var in self.bn_result:
            result = self.bn_result[var]
            x = value.args[0]
            if result[0] == "fold":
                layer = self.weight_scale.get(result[1])
                if layer is not None and layer[3]:  # no bias add: add the shift here
                    _, _, shift, _, axis, ndim = layer
                    dtype = const_array(binding.value.args[1]).dtype
                    sh = shift.reshape(_broadcast_shape(ndim, axis, shift.size)).astype(dtype)
                    return relax.Tuple([relax.op.add(x, const(sh))])
                return relax.Tuple([x])
            _, scale, shift, axis, ndim = result
            dtype = const_array(binding.value.args[1]).dtype
            bshape = _broadcast_shape(ndim, axis, scale.size)
            s = const(scale.reshape(bshape).astype(dtype))
            sh = const(shift.reshape(bshape).astype(dtype))
            return relax.Tuple([relax.op.add(relax.op.multiply(x, s), sh)])
        if var in self.getitem:
            return relax.TupleGetItem(value.tuple_value, 0)
        return None


def _rewrite_te_ops(mod: tvm.IRModule) -> tvm.IRModule:
    func = main_function(mod)
    found = {b.var: relax_op_of_te_call(mod, b.value) for b in bindings(func)}
    found = {k: v for k, v in found.items() if v is not None}
    if not found:
        return mod

    def rewrite(binding: relax.VarBinding, value: relax.Expr) -> relax.Expr | None:
        if binding.var not in found:
            return None
        return relax.Call(found[binding.var].op, value.args[1].fields, found[binding.var].attrs)

    logger.info("call_tir -> Relax op: %d bindings", len(found))
    mod = rebuild_main(mod, rewrite)
    return relax.transform.DeadCodeElimination()(mod)


@tvm.transform.module_pass(opt_level=0, name="hwcc.Canonicalize")
class Canonicalize:
    """Fold constants and BatchNorm so that pruning sees plain conv2d / matmul layers.

    See the module docstring for what it expects, guarantees and its options.
    """

    def __init__(self, config: CanonicalizeConfig | None = None) -> None:
        self.config = config or CanonicalizeConfig()

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        main_function(mod)
        if self.config.fold_constants:
            mod = relax.transform.FoldConstant()(mod)
        mod = _rewrite_te_ops(mod)
        if self.config.fold_batch_norm:
            plan = _BatchNormPlan(main_function(mod))
            if plan.bn_result:
                logger.info(
                    "BatchNorm: %d folded, %d decomposed",
                    sum(r[0] == "fold" for r in plan.bn_result.values()),
                    sum(r[0] == "affine" for r in plan.bn_result.values()),
                )
                mod = rebuild_main(mod, plan.rewrite)
                mod = relax.transform.CanonicalizeBindings()(mod)
                mod = relax.transform.DeadCodeElimination()(mod)
        return mod


def batch_norm_count(mod: tvm.IRModule) -> int:
    """Number of ``R.nn.batch_norm`` calls left in ``main`` (used as a precondition check)."""
    return sum(op_name(b.value) == "relax.nn.batch_norm" for b in bindings(main_function(mod)))

