"""Float -> integer conversions that give one answer on every x86-64 (and every other) CPU.

LLVM's ``fptosi``/``fptoui`` of a float the integer type cannot hold (NaN and ±inf included)
is *poison*: the AVX2 and the AVX-512 code of one module return different integers (and
numpy's ``astype``, the reference's tool, differs between CPUs the same way). So no module
hwcc builds converts a float outside the target type's range: each conversion is computed
explicitly, clamp (and round) first, then convert a value that fits.

The definitions. ONNX leaves an out-of-range float -> integer Cast undefined, and its
reference (numpy) answers what the CPU it runs on answers; hwcc defines those cases:

* **Cast / CastLike** float -> int8 ... int64, uint8 ... uint64: truncation toward zero
  (what ONNX and numpy do in range), **saturated** to the type's range (±inf included; a
  float above int32's range gives 2147483647, as Java, WebAssembly's ``trunc_sat`` and
  ARM's ``fcvtzs`` do), **NaN -> 0**. float -> bool stays a comparison (0 and -0 False,
  all else, NaN included, True). To int4/uint4/int2/uint2:
  :mod:`compiler.frontend.narrow_types` (truncated, kept if it fits, else 0: the
  reference's and the ONNX backend tests' answer).
* **QuantizeLinear** (integer types) and **DynamicQuantizeLinear**: the reference's
  ``saturate(round_half_even(x / scale) + zero_point)``, where the reference's
  ``astype(int32)`` of the rounded value is this saturating cast: ±inf and huge values give
  the type's bounds, and a **NaN** ``x / scale`` counts as 0, i.e. quantizes to the
  **zero point**.

Everything here happens in one place, after TVM's importer: :func:`make_explicit` rewrites
every float -> integer ``R.astype`` of the imported module (hwcc's Cast converter,
:func:`cast_converter`, emits a plain ``R.astype``: TVM's own wraps values around through
int32) and every integer ``R.quantize`` into NaN select + ``clip`` + ``astype``. The extra
min/max/select per element fuse into the kernel that computes the value. hwcc's compression
passes write their own conversions the same way (``passes/quantize.py``).
:func:`cast_numpy` is the numpy twin (constant folding uses it, never ``numpy.astype``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Integer types whose float conversions this module makes explicit (bool is a comparison).
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_DTYPES = ("float16", "float32", "float64")


def int_limits(dtype: str) -> tuple[int, int]:
    """Smallest and largest value of integer type ``dtype``."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def float_limits(src: str, dst: str) -> tuple[float, float]:
    """The clamp bounds of a ``src`` float converted to integer type ``dst``: the smallest and
    the largest ``src`` value whose truncation ``dst`` holds (the type's bounds, rounded
    toward zero into ``src``: int32's 2147483647 is 2147483520.0 in float32; float16's
    finite range inside int32's)."""
    ft = np.dtype(src)
    lo_i, hi_i = int_limits(dst)
    fmax = float(np.finfo(ft).max)
    out = []
    for bound in (max(float(lo_i), -fmax), min(float(hi_i), fmax)):
        v = np.array(bound, np.float64).astype(ft)
        while abs(float(v)) > abs(bound) or not lo_i <= int(float(v)) <= hi_i:
            v = np.nextafter(v, ft.type(0))  # rounded away from zero: one step back
        out.append(float(v))
    return out[0], out[1]


def cast_numpy(x: np.ndarray, dtype: str) -> np.ndarray:
    """hwcc's float -> integer Cast on numpy arrays: truncation toward zero, saturated to the
    type's range, NaN -> 0. Any other conversion is numpy's own ``astype``."""
    x = np.asarray(x)
    dtype = str(np.dtype(dtype))
    if x.dtype.kind != "f" or dtype not in INT_DTYPES:
        return x.astype(dtype)
    src = str(x.dtype) if str(x.dtype) in FLOAT_DTYPES else "float32"
    x = x.astype(src)
    lo, hi = float_limits(src, dtype)
    lo_i, hi_i = int_limits(dtype)
    with np.errstate(invalid="ignore"):
        v = np.clip(np.trunc(x), lo, hi)  # NaN stays NaN here ...
        v = np.where(np.isnan(v), 0, v).astype(dtype)  # ... and becomes 0; all else fits
    # beyond the last float the type holds: the type's bound (int32: 2147483647, not the
    # float32 2147483520; float16 ±inf -> int32's bounds)
    return np.where(x > hi, np.array(hi_i, dtype), np.where(x < lo, np.array(lo_i, dtype), v))


# ----------------------------------------------------------------------------------------
# the importer side: hwcc's Cast / CastLike converter
# ----------------------------------------------------------------------------------------
def _tensor_dtype(expr: Any) -> str | None:
    from tvm import relax

    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def _cast_to(bb: Any, x: Any, to: str) -> Any:
    import tvm
    from tvm import relax

    src = _tensor_dtype(x)
    if src not in FLOAT_DTYPES or to not in INT_DTYPES:
        return None  # not a float -> integer conversion: TVM's converter
    if isinstance(x, tvm.ir.GenericConst):
        return relax.const(cast_numpy(x.value.numpy(), to), to)
    return relax.op.astype(x, to)  # made explicit by make_explicit after the import


def cast_converter(bb: Any, inputs: list, attrs: dict) -> Any:
    """ONNX Cast from a float tensor to an integer type: a plain ``R.astype`` (which
    :func:`make_explicit` turns into the saturating cast); None (TVM's converter) otherwise."""
    import onnx

    try:
        to = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"]))))
    except (KeyError, TypeError, ValueError):
        return None
    return _cast_to(bb, inputs[0], to)


def cast_like_converter(bb: Any, inputs: list, attrs: dict) -> Any:
    """ONNX CastLike, as :func:`cast_converter` with the type of the second input."""
    to = _tensor_dtype(inputs[1]) if len(inputs) > 1 else None
    return None if to is None else _cast_to(bb, inputs[0], to)


# ----------------------------------------------------------------------------------------
# the rewrite of the imported module
# ----------------------------------------------------------------------------------------
def _saturate(bb: Any, x: Any, src: str, dst: str) -> Any:
    """``astype(clip(where(isnan(x), 0, x), lo, hi), dst)``: every converted value fits (the
    clip, outermost, has the bounds as immediates); then, where the float bounds are not the
    type's (float32 -> int32: 2147483520.0), a value beyond them gets the type's bound itself
    (2147483647), selected among integers."""
    from tvm import relax

    lo, hi = float_limits(src, dst)
    lo_i, hi_i = int_limits(dst)
    safe = relax.op.where(relax.op.isnan(x), relax.const(0, src), x)
    out = relax.op.astype(relax.op.clip(safe, lo, hi), dst)
    if hi < hi_i:
        out = relax.op.where(relax.op.greater(x, relax.const(hi, src)),
                             relax.const(hi_i, dst), out)
    if lo > lo_i:
        out = relax.op.where(relax.op.less(x, relax.const(lo, src)),
                             relax.const(lo_i, dst), out)
    return out


def _per_axis(v: Any, axis: int, ndim: int) -> Any:
    """A quantization parameter (scalar, or 1-D along ``axis``) shaped to broadcast."""
    from tvm import relax

    shape = [int(d) for d in v.ty.shape.values] if v.ty.shape is not None else None
    if shape is None:
        raise ValueError("quantization parameters need static shapes")
    if len(shape) == 0 or int(np.prod(shape)) == 1:
        return relax.op.reshape(v, ()) if len(shape) else v
    new = [1] * ndim
    new[axis % ndim] = int(np.prod(shape))
    return relax.op.reshape(v, new)


def _quantize(bb: Any, call: Any) -> Any:
    """``R.quantize`` to an integer type, written out: ``q = round_half_even(x / scale)`` in
    the wider of x's and scale's types (as the reference divides and rounds), NaN -> 0, then
    in float32 (exact for every value that matters) ``+ zero_point``, clipped to the type,
    converted."""
    from tvm import relax

    x, scale, zp = call.args
    dst = str(call.attrs.out_dtype)
    src = _tensor_dtype(x)
    if dst not in INT_DTYPES or src not in FLOAT_DTYPES:
        return None
    ndim = len(x.ty.shape.values) if x.ty.shape is not None else None
    if ndim is None:
        return None
    axis = int(call.attrs.axis)
    s, z = _per_axis(scale, axis, ndim), _per_axis(zp, axis, ndim)
    # x / scale in the wider of the two types, as numpy (the reference) divides
    sdt = _tensor_dtype(scale)
    calc = max(src, sdt, key=FLOAT_DTYPES.index) if sdt in FLOAT_DTYPES else src
    if src != calc:
        x = relax.op.astype(x, calc)
    if sdt != calc:
        s = relax.op.astype(s, calc)
    q = relax.op.round(relax.op.divide(x, s))
    q = relax.op.where(relax.op.isnan(q), relax.const(0, calc), q)
    wide = "float64" if calc == "float64" else "float32"
    if calc != wide:
        q = relax.op.astype(q, wide)  # float16: its range does not hold uint16's
    q = relax.op.add(q, relax.op.astype(z, wide))
    lo, hi = int_limits(dst)
    return relax.op.astype(relax.op.clip(q, float(lo), float(hi)), dst)


def make_explicit(mod: Any) -> Any:
    """``mod`` with every float -> integer ``R.astype`` saturating (NaN -> 0) and every
    integer ``R.quantize`` written out (see the module docstring); ``mod`` itself when it has
    neither."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    astype, quantize = tvm.ir.Op.get("relax.astype"), tvm.ir.Op.get("relax.quantize")

    @mutator
    class _Rewriter(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            new = None
            if call.op.same_as(astype):
                src, dst = _tensor_dtype(call.args[0]), str(call.attrs.dtype)
                if src in FLOAT_DTYPES and dst in INT_DTYPES:
                    new = _saturate(self.builder_, call.args[0], src, dst)
            elif call.op.same_as(quantize):
                new = _quantize(self.builder_, call)
            if new is None:
                return call
            self.count += 1
            return self.builder_.normalize(new)

    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    if not rewriter.count:
        return mod
    logger.info("%d float -> integer conversions made explicit (clamped, NaN -> 0)",
                rewriter.count)
    return rewriter.builder_.get()
