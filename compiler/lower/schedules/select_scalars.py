"""Keep vectorized loops vectorized when a ``Select`` picks a scalar tensor element.

The NaN-safe float -> integer conversions (:mod:`compiler.frontend.int_casts`, the quantize
pass) end in ``select(isnan(r), zp, r)``; after legalization a Relax scalar constant such as
``zp`` is a 0-d parameter of the kernel, read as ``param[()]``. TVM 0.27's vectorizer scalarizes
a whole loop whose ``Select`` has such a 0-d load in a branch: BERT's int8 GELU epilogue ran one
lane at a time (40 scalar divisions, ~2.3 ms of a 3 ms kernel on AVX2). Bound to a ``Let``
outside the ``Select`` the load stays a scalar the vectorizer broadcasts, and the loop
vectorizes. :func:`hoist_scalar_select_operands` does that rewrite; values are unchanged.
"""

from __future__ import annotations

import logging

import tvm_ffi
from tvm import tirx

logger = logging.getLogger(__name__)


def _is_scalar_load(expr: tirx.PrimExpr) -> bool:
    """Whether ``expr`` reads an element of a 0-d buffer (``param[()]``)."""
    return type(expr).__name__ in ("BufferLoad", "TensorLoad") and len(expr.indices) == 0


def _dtype(expr: tirx.PrimExpr) -> str:
    """The dtype of a TIR expression (``dtype``, or ``ty.dtype`` in TVM 0.27)."""
    if hasattr(expr, "dtype"):
        return str(expr.dtype)
    return str(expr.ty.dtype)


def hoist_scalar_select_operands(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every ``Select(c, param[()], f)`` (either branch) written as
    ``Let(v, param[()], Select(c, v, f))``; the same function object when there is none."""
    count = 0

    def rewrite(sel):
        nonlocal count
        branches = [sel.true_value, sel.false_value]
        lets = []
        for i, b in enumerate(branches):
            if _is_scalar_load(b):
                v = tirx.Var("select_scalar", _dtype(b))
                lets.append((v, b))
                branches[i] = v
        if not lets:
            return sel
        count += 1
        out = tirx.Select(sel.condition, *branches)
        for v, b in reversed(lets):
            out = tirx.Let(v, b, out)
        return out

    new = tvm_ffi.structural_map(func, [(tirx.Select, rewrite)])
    if count:
        logger.debug("bound %d scalar select operands to lets", count)
    return new if count else func
