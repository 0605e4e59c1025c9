"""NaN through ``max(x, c)`` / ``min(x, c)`` as ONNX defines it: a NaN input gives NaN.

ONNX's Relu, Clip, LeakyRelu-style clamps and Max/Min with a constant return NaN for a NaN
input (onnxruntime and ``onnx.reference`` do). TIR's float ``max``/``min`` become LLVM's
``maxnum``/``minnum`` or x86's ``vmaxps``/``vminps``, which return the *other* operand when
one is NaN: ``relu(NaN)`` was 0, and a model fed a NaN by a broken preprocessing step answered
with finite numbers.

:func:`propagate_nan` rewrites every float ``max(x, c)`` / ``min(x, c)`` with ``c`` a constant
(an immediate or one fixed tensor element)
into ``let v = x in select(isnan(v), v, max(v, c))``: one compare and one blend more per
element, in vector form (``isnan`` is declared vectorizable, :mod:`.vector_ops`). Values other
than NaN are unchanged. Clamps inside a float -> integer conversion are left as they are (the
conversion's operand is NaN-free already, and the clamp bounds it to the integer type). Max/min
between two computed values (max pooling, ReduceMax) keep LLVM's semantics: a NaN there may
still be dropped.
"""

from __future__ import annotations

import logging

import tvm_ffi
from tvm import tirx

logger = logging.getLogger(__name__)

_FLOATS = ("float32", "float16", "float64", "bfloat16")
#: Name of the variable the rewrite binds (how :func:`propagate_nan` recognises its own work).
_VAR = "nan_in"


def _dtype(expr) -> str:
    if hasattr(expr, "dtype"):
        return str(expr.dtype)
    return str(expr.ty.dtype)


def _is_const(expr) -> bool:
    """A float immediate or one fixed element of a tensor (a Relax scalar constant, e.g.
    Clip's bounds after legalization), or either broadcast."""
    if type(expr).__name__ == "Broadcast":
        expr = expr.value
    if isinstance(expr, tirx.FloatImm):
        return True
    return type(expr).__name__ in ("BufferLoad", "TensorLoad") and all(
        isinstance(i, tirx.IntImm) for i in expr.indices)  # one fixed element


def propagate_nan(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with NaN-propagating float ``max``/``min`` against constants (the same
    function object when there is none)."""
    count = 0

    def rewrite(node):
        nonlocal count
        if not _dtype(node).split("x")[0] in _FLOATS:
            return node
        if _is_const(node.b) and not _is_const(node.a):
            x, c = node.a, node.b
        elif _is_const(node.a) and not _is_const(node.b):
            x, c = node.b, node.a
        else:
            return node
        count += 1
        v = tirx.Var(_VAR, _dtype(x))
        op = tirx.max if isinstance(node, tirx.Max) else tirx.min
        return tirx.Let(v, x, tirx.Select(tirx.isnan(v), v, op(v, c)))

    def restore(let):
        """Our rewrite undone: ``max(x, c)`` back from ``let v = x in select(isnan(v), ...)``."""
        body = let.body
        if (let.var.name == _VAR and isinstance(body, tirx.Select)
                and isinstance(body.false_value, (tirx.Max, tirx.Min))):
            op = tirx.max if isinstance(body.false_value, tirx.Max) else tirx.min
            return op(let.value, body.false_value.b)
        return let

    def keep_casts(cast):
        """A float -> integer conversion keeps plain clamps: its operand was made NaN-free
        first (compiler.frontend.int_casts), and the clamp is what bounds it to the type."""
        nonlocal count
        if not (_dtype(cast).split("x")[0].startswith(("int", "uint"))
                and _dtype(cast.value).split("x")[0] in _FLOATS):
            return cast
        value = tvm_ffi.structural_map(cast.value, [(tirx.Let, restore)])
        if value.same_as(cast.value):
            return cast
        count -= 1
        return tirx.Cast(_dtype(cast), value)

    new = tvm_ffi.structural_map(func, [(tirx.Max, rewrite), (tirx.Min, rewrite),
                                        (tirx.Cast, keep_casts)])
    if count:
        logger.debug("NaN-propagating max/min: %d", count)
    return new if count else func
