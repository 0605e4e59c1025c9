"""NaN through ``max(x, c)`` / ``min(x, c)`` as ONNX defines it: a NaN input gives NaN.

ONNX's Relu, Clip and the other clamps against a constant return NaN for a NaN input
(onnxruntime and ``onnx.reference`` do). TVM's LLVM code generator writes a float
``max(a, b)`` as ``select(a > b, a, b)`` (``min``: ``a < b``), an ordered compare that is
false when either side is NaN, so the result is ``b``: ``max(x, 0)`` — what Relu legalizes
to — turns a NaN into 0, and a model fed a NaN by a broken preprocessing step answered with
finite numbers.

:func:`constants_first` swaps the operands of every float ``max``/``min`` whose second
operand is a constant (an immediate or one fixed tensor element, e.g. Clip's bounds) and
whose first is not: ``max(0, x)`` is ``select(0 > x, 0, x)``, which is ``x`` — NaN — when
``x`` is NaN, and the same value as before for every other ``x``. Same instructions, same
cost (x86's ``vmaxps`` also returns its second operand on NaN). Clamps inside a float ->
integer conversion keep the constant second (their operand is NaN-free already, and the
clamp bounds it to the integer type).

A running max / min, ``acc = max(acc, x)`` (max pooling, ReduceMax / ReduceMin, ONNX Max /
Min of tensors, which the frontend lowers to a reduction), becomes
``acc = select(isnan(acc), acc, max(acc, x))``: a NaN anywhere in what is reduced gives NaN
(numpy's ``max``; one compare and one blend more per element). Such a reduction starts at
``-inf`` / ``+inf`` instead of TVM's ``∓FLT_MAX`` (the max of ``[-inf, -inf]`` was
``-3.4e38``). Other max/min between two computed values are left alone.

(An earlier version wrapped each clamp in ``let v = x in select(isnan(v), v, max(v, c))``;
one kernel with nested clamps, the gates of an expand + depthwise block, then never finished
compiling. Swapping the operands adds no expression at all.)
"""

from __future__ import annotations

import logging

import numpy as np
import tvm_ffi
from tvm import tirx

logger = logging.getLogger(__name__)

_FLOATS = ("float32", "float16", "float64", "bfloat16")


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


def constants_first(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float ``max(x, c)`` / ``min(x, c)`` written ``max(c, x)`` (the
    same function object when there is none)."""
    count = 0

    def swap(node):
        nonlocal count
        if _dtype(node).split("x")[0] not in _FLOATS:
            return node
        if not _is_const(node.b) or _is_const(node.a):
            return node
        count += 1
        return type(node)(node.b, node.a)

    def sticky(store):
        """A running max/min ``acc = max(acc, x)`` (pooling, ReduceMax) keeps a NaN once it
        has one: ``acc = select(isnan(acc), acc, max(acc, x))`` (acc first: a NaN ``x``
        gives NaN)."""
        nonlocal count
        value = store.value
        if not isinstance(value, (tirx.Max, tirx.Min)) or \
                _dtype(value).split("x")[0] not in _FLOATS:
            return store
        acc = next((v for v in (value.a, value.b)
                    if type(v).__name__ in ("BufferLoad", "TensorLoad")
                    and getattr(v, "source", getattr(v, "buffer", None)).same_as(store.buffer)
                    and len(v.indices) == len(store.indices)
                    and all(tvm_ffi.structural_equal(i, j)
                            for i, j in zip(v.indices, store.indices))), None)
        if acc is None:
            return store
        x = value.b if acc.same_as(value.a) else value.a
        count += 1
        op = type(value)(acc, x)
        return tirx.BufferStore(store.buffer, tirx.Select(tirx.isnan(acc), acc, op),
                                store.indices)

    def unswap(node):
        if _dtype(node).split("x")[0] in _FLOATS and _is_const(node.a) and \
                not _is_const(node.b):
            return type(node)(node.b, node.a)
        return node

    def keep_casts(cast):
        """A float -> integer conversion keeps its clamps constant-second: its operand was
        made NaN-free first (compiler.frontend.int_casts) and the clamp, which then returns
        the constant for a NaN, is what bounds it to the integer type."""
        nonlocal count
        if not (_dtype(cast).split("x")[0].startswith(("int", "uint"))
                and _dtype(cast.value).split("x")[0] in _FLOATS):
            return cast
        value = tvm_ffi.structural_map(cast.value, [(tirx.Max, unswap), (tirx.Min, unswap)])
        if value.same_as(cast.value):
            return cast
        return tirx.Cast(_dtype(cast), value)

    reduced: list = []  # buffers holding a running max / min

    def sticky_seen(store):
        out = sticky(store)
        if not out.same_as(store):
            reduced.append(store.buffer)
        return out

    def infinite_init(store):
        """TVM starts a max / min reduction at the type's finite extreme: the max of
        [-inf, -inf] came out as -3.4e38. Start at -inf / +inf, the identities."""
        nonlocal count
        v = store.value
        if not isinstance(v, tirx.FloatImm) or _dtype(v) not in _FLOATS or \
                not any(store.buffer.same_as(b) for b in reduced):
            return store
        limit = float(np.finfo(_dtype(v)).max) if _dtype(v) != "bfloat16" else None
        if limit is None or abs(float(v.value)) != limit:
            return store
        count += 1
        inf = tirx.FloatImm(_dtype(v), float("inf") if v.value > 0 else float("-inf"))
        return tirx.BufferStore(store.buffer, inf, store.indices)

    new = tvm_ffi.structural_map(func, [(tirx.Max, swap), (tirx.Min, swap),
                                        (tirx.BufferStore, sticky_seen),
                                        (tirx.Cast, keep_casts)])
    if reduced:
        new = tvm_ffi.structural_map(new, [(tirx.BufferStore, infinite_init)])
    if count:
        logger.debug("NaN-propagating max/min: %d", count)
    return new if count else func
