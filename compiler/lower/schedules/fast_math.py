"""Vectorizable float32 ``erf``, ``exp`` and ``sigmoid`` for the default CPU schedules.

LLVM lowers ``T.erf`` / ``T.exp`` (and ``T.sigmoid``, through ``exp``) to calls of libm's
``erff`` / ``expf``: a vectorized loop is scalarized into one call per lane (BERT's GELU
epilogue spent ~1.4 ms of a 2 ms kernel in ``erff``; Swish epilogues in ``expf``).
:func:`vectorizable_math` replaces them, in a PrimFunc about to be scheduled, with pure
arithmetic that vectorizes:

* ``erf``: the rational approximation TVM's ``topi.fast_erf`` and Eigen use (argument clamped to
  [-4, 4]; max abs error ~1e-7 against float64 erf);
* ``exp``: Cody-Waite range reduction ``x = n ln2 + r``, a degree-5 polynomial for ``e^r`` and
  ``2^n`` built in the exponent bits (as ``topi.fast_exp``; relative error ~2e-7). Results
  below the smallest normal float (``x < -87.34``) flush to 0, overflow gives ``+inf``;
* ``sigmoid``: ``1 / (1 + exp(-x))`` with that ``exp`` on [-87, 87] (1 and ~1.6e-38 far out).

NaN propagates through all three.

Only float32 calls are rewritten; other dtypes keep the libm calls.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import tirx

logger = logging.getLogger(__name__)

_ERF = tvm.ir.Op.get("tirx.erf")
_EXP = tvm.ir.Op.get("tirx.exp")
_SIGMOID = tvm.ir.Op.get("tirx.sigmoid")
_CALL = tvm.ir.expr.Call

# topi::fast_erf_float_expr (Eigen's generic_fast_erf_float) coefficients
_ERF_ALPHA = (  # odd numerator, x^13 .. x^1
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_BETA = (  # even denominator, x^8 .. x^0
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
# topi::fast_exp_float32 coefficients (e^r on [-ln2/2, ln2/2])
_EXP_P = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
_EXP_UNDERFLOW = -87.33654475055310  # ln(FLT_MIN): smaller results flush to 0
_EXP_OVERFLOW = 88.72283935546875  # expf(x) is +inf above this
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4


def _f(value: float) -> tirx.PrimExpr:
    return tirx.const(value, "float32")


def _horner(x: tirx.PrimExpr, coeffs: tuple[float, ...]) -> tirx.PrimExpr:
    acc = _f(coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + _f(c)
    return acc


def fast_erf(arg: tirx.PrimExpr) -> tirx.PrimExpr:
    """A float32 ``erf(arg)`` made of clamps, multiply-adds and one division."""
    x = tirx.Var("erf_x", "float32")
    x2 = tirx.Var("erf_x2", "float32")
    num = x * _horner(x2, _ERF_ALPHA)
    den = _horner(x2, _ERF_BETA)
    clamped = tirx.max(tirx.min(arg, _f(4.0)), _f(-4.0))
    value = tirx.Let(x, clamped, tirx.Let(x2, x * x, num / den))
    return tirx.Select(tirx.isnan(arg), arg, value)


def _pow2(e: tirx.PrimExpr) -> tirx.PrimExpr:
    """``2^e`` for an int32 ``e`` in [-126, 127], built in the exponent bits."""
    bits = (e + tirx.const(127, "int32")) << tirx.const(23, "int32")
    return tirx.reinterpret("float32", bits)


def _exp_in_range(arg: tirx.PrimExpr, low: float, high: float, halves: bool) -> tirx.PrimExpr:
    """``exp(clamp(arg, low, high))``: Cody-Waite range reduction ``x = n ln2 + r``, the
    polynomial for ``e^r``, and ``2^n`` in the exponent bits -- in two halves when ``n`` may
    reach 128, one more value than a normal exponent field holds."""
    x = tirx.Var("exp_x", "float32")
    n = tirx.Var("exp_n", "float32")
    r = tirx.Var("exp_r", "float32")
    ni = tirx.Var("exp_ni", "int32")
    clamped = tirx.max(tirx.min(arg, _f(high)), _f(low))
    reduced = x - n * _f(_LN2_HI) - n * _f(_LN2_LO)
    poly = (_horner(r, _EXP_P) * r * r + r) + _f(1.0)
    if halves:
        # 2^n = 2^h * 2^(n-h), h = n >> 1: both exponent fields stay normal for n in [-126, 128]
        half = tirx.Var("exp_h", "int32")
        scaled = tirx.Let(half, ni >> tirx.const(1, "int32"),
                          tirx.Let(r, reduced, poly * _pow2(half) * _pow2(ni - half)))
    else:
        scaled = tirx.Let(r, reduced, poly * _pow2(ni))
    body = tirx.Let(ni, tirx.Cast("int32", n), scaled)
    return tirx.Let(x, clamped, tirx.Let(n, tirx.floor(x * _f(_LOG2E) + _f(0.5)), body))


def fast_exp(arg: tirx.PrimExpr) -> tirx.PrimExpr:
    """A float32 ``exp(arg)``: range reduction, polynomial, exponent bits.

    ``n`` spans [-126, 128], so ``2^n`` is built from two halves; results below the smallest
    normal float are flushed to 0, overflow gives ``+inf``, NaN stays NaN.
    """
    value = _exp_in_range(arg, _EXP_UNDERFLOW, _EXP_OVERFLOW, halves=True)
    value = tirx.Select(arg < _f(_EXP_UNDERFLOW), _f(0.0), value)
    value = tirx.Select(arg > _f(_EXP_OVERFLOW), _f(float("inf")), value)
    return tirx.Select(tirx.isnan(arg), arg, value)


#: ``sigmoid`` evaluates ``exp`` on [-87, 87] only: ``2^n`` then needs one exponent field, no
#: overflow or underflow test, and the result stays a normal float (>= 1.6e-38; 1 exactly
#: above 17).
_SIGMOID_EXP_RANGE = 87.0


def fast_sigmoid(arg: tirx.PrimExpr) -> tirx.PrimExpr:
    """A float32 ``sigmoid(arg) = 1 / (1 + exp(-arg))`` with the :func:`fast_exp` polynomial
    (relative error ~2e-7). Far out it gives 1 and ~1.6e-38 (a normal float, not 0: no
    denormals downstream); NaN stays NaN. Fewer operations than ``1 / (1 + fast_exp(-x))``:
    the clamp to [-87, 87] makes the range tests and the split ``2^n`` unnecessary."""
    one = _f(1.0)
    e = _exp_in_range(_f(0.0) - arg, -_SIGMOID_EXP_RANGE, _SIGMOID_EXP_RANGE, halves=False)
    return tirx.Select(tirx.isnan(arg), arg, one / (one + e))


def _dtype(expr) -> str:
    """The scalar dtype of a TIR expression (``dtype``, or ``ty.dtype`` in TVM 0.27)."""
    if hasattr(expr, "dtype"):
        return str(expr.dtype)
    ty = getattr(expr, "ty", None)
    return str(getattr(ty, "dtype", ""))


def vectorizable_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float32 ``T.erf`` / ``T.exp`` / ``T.sigmoid`` call replaced by
    :func:`fast_erf` / :func:`fast_exp` / :func:`fast_sigmoid` (the same function object when
    there is none)."""
    count = 0

    def rewrite(call):
        nonlocal count
        if len(call.args) != 1 or _dtype(call) != "float32":
            return call
        if call.op.same_as(_ERF):
            count += 1
            return fast_erf(call.args[0])
        if call.op.same_as(_EXP):
            count += 1
            return fast_exp(call.args[0])
        if call.op.same_as(_SIGMOID):
            count += 1
            return fast_sigmoid(call.args[0])
        return call

    new = tvm_ffi.structural_map(func, [(_CALL, rewrite)])
    if count:
        logger.debug("replaced %d erf/exp/sigmoid calls by vectorizable expressions", count)
    return new if count else func
