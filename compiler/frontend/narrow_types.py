"""Element types narrower than a byte's worth of TVM support: float8, float4, int4, int2.

TVM holds none of ONNX's FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ,
FLOAT8E8M0, FLOAT4E2M1, INT4, UINT4, INT2, UINT2 correctly (its float8 casts come back
wrong). hwcc carries such a tensor as **uint8 storage**: one byte per element holding the
bit pattern that ``ml_dtypes`` uses for the type (``arr.view(np.uint8)``; a 4-bit or 2-bit
value sits in the low bits). :func:`lower_narrow_types` rewrites the ONNX graph so that

* a graph input, output or initializer of a narrow type becomes uint8 storage (the artifact's
  runtime views the user's arrays as bytes and the results back as the logical type, see
  :func:`storage_dtype` and :func:`logical_view`);
* ``Cast``/``CastLike`` *from* a narrow type becomes a ``Gather`` in a constant table of the
  256 codes, computed by ``onnx.reference`` itself (exact by construction);
* ``Cast``/``CastLike`` *to* a narrow type becomes an ``hwcc.NarrowEncode`` node: a TE kernel
  that rounds exactly with integer bit manipulation of the float32 bit pattern
  (:func:`encode_bits`, round-to-nearest-even, the ONNX rules for saturation, NaN and Inf);
  to int4/uint4/int2/uint2 a float is truncated toward zero and kept if it fits, else (out
  of range, NaN, ±inf) it becomes 0, as ``onnx.reference`` and the ONNX backend tests have it
  (ONNX itself leaves an out-of-range float -> integer cast undefined);
* ``QuantizeLinear``/``DequantizeLinear`` with a narrow quantized type become the float
  arithmetic of the reference (``x / scale`` then the encode; decode, ``- zero_point``,
  ``* scale``); a NaN ``x / scale`` quantizes to the zero point, as in every integer
  QuantizeLinear hwcc compiles (:mod:`compiler.frontend.int_casts`).

Any other op that reads or writes a narrow value keeps its type and is refused afterwards by
:func:`compiler.frontend.prep.check_dtypes`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto as _T
from onnx import helper, numpy_helper

from compiler.artifact.tensors import (  # noqa: F401 - re-exported
    NARROW_DTYPES,
    is_narrow,
    logical_view,
    storage_dtype,
    storage_view,
)
from compiler.errors import UnsupportedOpError

from .graph import NameGen, nan_to_zero, static_shape, value_types

logger = logging.getLogger(__name__)

#: Domain of the nodes this module emits; compiler/frontend.py converts them.
DOMAIN = "hwcc"
ENCODE = "NarrowEncode"


@dataclass(frozen=True)
class NarrowFormat:
    """One narrow ONNX element type and how its codes are laid out in a storage byte."""

    name: str          # numpy / ml_dtypes dtype name (the artifact's logical dtype)
    kind: str          # "float", "int", "e8m0"
    bits: int          # bits per element (low bits of the storage byte)
    mbits: int = 0     # mantissa bits (floats)
    bias: int = 0      # exponent bias (floats)
    max_code: int = 0  # largest finite magnitude code (floats)
    inf_code: int | None = None  # magnitude code of infinity, when the type has one
    nan_code: int | None = None  # code of NaN (uz types: the only one, sign included)
    uz: bool = False   # unsigned zero: no negative zero, 0x80 is NaN
    signed: bool = True  # ints: two's complement


FORMATS: dict[int, NarrowFormat] = {
    _T.FLOAT8E4M3FN: NarrowFormat("float8_e4m3fn", "float", 8, 3, 7, 0x7E, None, 0x7F),
    _T.FLOAT8E4M3FNUZ: NarrowFormat("float8_e4m3fnuz", "float", 8, 3, 8, 0x7F, None, 0x80,
                                    uz=True),
    _T.FLOAT8E5M2: NarrowFormat("float8_e5m2", "float", 8, 2, 15, 0x7B, 0x7C, 0x7E),
    _T.FLOAT8E5M2FNUZ: NarrowFormat("float8_e5m2fnuz", "float", 8, 2, 16, 0x7F, None, 0x80,
                                    uz=True),
    _T.FLOAT4E2M1: NarrowFormat("float4_e2m1fn", "float", 4, 1, 1, 0x7, None, None),
    _T.INT4: NarrowFormat("int4", "int", 4),
    _T.UINT4: NarrowFormat("uint4", "int", 4, signed=False),
}
if hasattr(_T, "INT2"):
    FORMATS[_T.INT2] = NarrowFormat("int2", "int", 2)
    FORMATS[_T.UINT2] = NarrowFormat("uint2", "int", 2, signed=False)
if hasattr(_T, "FLOAT8E8M0"):
    FORMATS[_T.FLOAT8E8M0] = NarrowFormat("float8_e8m0fnu", "e8m0", 8, 0, 127, 0xFE, None, 0xFF)

_BY_NAME = {f.name: f for f in FORMATS.values()}
# the artifact runtime knows these names without importing the frontend; keep both in step
assert set(_BY_NAME) <= NARROW_DTYPES, sorted(set(_BY_NAME) - NARROW_DTYPES)


# ----------------------------------------------------------------------------------------
# the exact encoder, written once for numpy (tests) and TE (the kernel)
# ----------------------------------------------------------------------------------------
class _Numpy:
    """Integer helpers over numpy int64 arrays."""

    @staticmethod
    def c(v: int):
        return np.int64(v)

    where = staticmethod(np.where)

    @staticmethod
    def maximum(a, b):
        return np.maximum(a, b)

    @staticmethod
    def minimum(a, b):
        return np.minimum(a, b)

    @staticmethod
    def bind(v):
        return v

    @staticmethod
    def finish(v):
        return v


class _TE:
    """The same helpers over TIR int64 expressions. ``bind`` names a value once (a ``Let``),
    so that reusing it does not copy its expression tree (which grows exponentially)."""

    def __init__(self) -> None:
        self.binds: list = []

    def bind(self, v):
        from tvm import tirx

        var = tirx.Var(f"t{len(self.binds)}", "int64")  # only int64 values are bound
        self.binds.append((var, v))
        return var

    def finish(self, v):
        from tvm import tirx

        for var, value in reversed(self.binds):
            v = tirx.Let(var, value, v)
        return v

    @staticmethod
    def c(v: int):
        from tvm import tirx

        return tirx.const(v, "int64")

    @staticmethod
    def where(cond, a, b):
        from tvm import tirx

        return tirx.Select(cond, a, b)

    @staticmethod
    def maximum(a, b):
        from tvm import tirx

        return tirx.max(a, b)

    @staticmethod
    def minimum(a, b):
        from tvm import tirx

        return tirx.min(a, b)


def encode_bits(u, fmt: NarrowFormat, saturate: bool, ops=_Numpy):
    """Code of the float32 whose bit pattern is ``u`` (int64, 0..2**32-1) in float ``fmt``.

    Round to nearest, ties to even, on the exact value; then the ONNX rules: out of range
    (after rounding) or infinite gives the largest finite value when ``saturate`` (always for
    float4), else infinity if the type has one, else NaN; NaN gives NaN (float4: a zero
    of the opposite sign, as ml_dtypes does).
    """
    c, where, b = ops.c, ops.where, ops.bind
    s = b((u >> c(31)) & c(1))
    e = b((u >> c(23)) & c(0xFF))
    m = b(u & c(0x7FFFFF))
    sig = b(where(e == c(0), m, m | c(1 << 23)))
    ee = b(ops.maximum(e, c(1)))
    texp = ee - c(127 - fmt.bias)                   # target exponent field if normal
    tq = b(ops.maximum(texp, c(1)))
    st = b(ops.minimum(tq - ee + c(150 - fmt.bias - fmt.mbits), c(40)))  # >= 20 here
    q = b(sig >> st)
    rem = b(sig & ((c(1) << st) - c(1)))
    half = b(c(1) << (st - c(1)))
    q = b(q + where((rem > half) | ((rem == half) & ((q & c(1)) == c(1))), c(1), c(0)))
    mag = b(((tq - c(1)) << c(fmt.mbits)) + q)
    big = c(fmt.max_code)
    sbit = c(1 << (fmt.bits - 1))
    is_nan = (e == c(0xFF)) & (m != c(0))  # (conditions stay unbound: small, and bool)
    over = ((e == c(0xFF)) & (m == c(0))) | (mag > big)
    if saturate or fmt.nan_code is None:  # float4 has neither Inf nor NaN: it saturates
        mag = b(where(over, big, mag))
    elif fmt.inf_code is not None:
        mag = b(where(over, c(fmt.inf_code), mag))
    if fmt.uz:  # no negative zero; NaN is the one code 0x80
        code = where((s == c(1)) & (mag != c(0)), mag | sbit, mag)
    else:
        code = where(s == c(1), mag | sbit, mag)
    if fmt.nan_code is None:
        nan = (c(1) - s) * sbit  # float4: NaN becomes a zero of the other sign (ml_dtypes)
    elif fmt.uz:
        nan = c(fmt.nan_code)
    else:
        nan = c(fmt.nan_code) | (s * sbit)
    nan = b(nan)
    if not saturate and fmt.inf_code is None and fmt.nan_code is not None:
        code = where(over, nan, code)
    return ops.finish(where(is_nan, nan, code))


def encode_e8m0_bits(u, saturate: bool, round_mode: str, ops=_Numpy):
    """FLOAT8E8M0 code (a biased power of two) of the float32 bit pattern ``u``, rounding
    the exponent ``up``, ``down`` or to ``nearest`` exactly as ``onnx.numpy_helper`` does."""
    c, where = ops.c, ops.where
    e = ops.bind((u >> c(23)) & c(0xFF))
    special = e == c(0xFF)
    if round_mode == "up":
        inc = (u & c(0x7FFFFF)) != c(0)
    elif round_mode == "nearest":
        g = (u & c(0x400000)) != c(0)
        rest = (u & c(0x3FFFFF)) != c(0)
        inc = g & (rest | (e > c(0)))
    elif round_mode == "down":
        inc = e < c(0)  # never
    else:
        raise ValueError(f"unknown round_mode '{round_mode}'")
    if saturate:
        inc = inc & (e != c(0xFE))
    return ops.finish(where(special, c(0xFF), e + where(inc, c(1), c(0))))


def int_range(fmt: NarrowFormat) -> tuple[int, int]:
    """Smallest and largest value of the narrow integer type ``fmt``."""
    if fmt.signed:
        return -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
    return 0, (1 << fmt.bits) - 1


def _int_code_numpy(x: np.ndarray, fmt: NarrowFormat) -> np.ndarray:
    """Storage byte of ``x`` cast to the narrow integer type ``fmt``, as ``onnx.reference``
    (``ml_dtypes``) and the ONNX backend tests give it: an integer source wraps around (its
    low bits); a float is truncated toward zero and kept when that fits the type, else (out
    of range, NaN, ±inf) it becomes 0. Every step is a comparison or a conversion of a value
    already in range, so no CPU can answer differently."""
    mod = 1 << fmt.bits
    if x.dtype.kind in "iub":
        return (x.astype(np.int64) & (mod - 1)).astype(np.uint8)
    lo, hi = int_range(fmt)
    with np.errstate(all="ignore"):
        t = np.trunc(x.astype(np.float32))
        fits = (t >= np.float32(lo)) & (t <= np.float32(hi))  # False for NaN and ±inf
        v = np.where(fits, t, np.float32(0)).astype(np.int64)  # only values in [lo, hi]
    return (v & (mod - 1)).astype(np.uint8)


def encode_numpy(x: np.ndarray, fmt: NarrowFormat, saturate: bool = True,
                 round_mode: str = "up") -> np.ndarray:
    """Storage bytes of ``x`` cast to ``fmt`` (the numpy twin of the TE kernel)."""
    if fmt.kind == "int":
        return _int_code_numpy(np.asarray(x), fmt)
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.int64)
    if fmt.kind == "e8m0":
        return encode_e8m0_bits(u, saturate, round_mode).astype(np.uint8)
    return encode_bits(u, fmt, saturate).astype(np.uint8)


#: Integer source types whose every value a float32 holds exactly (no double rounding).
_SMALL_INTS = ("bool", "int8", "uint8", "int16", "uint16")


def encode_te(x: Any, fmt: NarrowFormat, saturate: bool, round_mode: str) -> Any:
    """TE tensor of the storage bytes of TE tensor ``x`` cast to ``fmt``."""
    from tvm import te, tirx

    src = str(x.dtype)
    mod = 1 << fmt.bits

    def one(*idx):
        v = x(*idx)
        if fmt.kind == "int" and not src.startswith(("float", "bfloat")):
            code = v.astype("int64") & tirx.const(mod - 1, "int64")
        elif fmt.kind == "int":  # as _int_code_numpy: truncated, kept if it fits, else 0
            lo, hi = (tirx.const(float(b), "float32") for b in int_range(fmt))
            t = tirx.trunc(v.astype("float32"))
            fits = (t >= lo) & (t <= hi)  # False for NaN and ±inf
            # clamped as well, so the conversion's operand is in range in either branch
            t = tirx.Select(fits, tirx.max(tirx.min(t, hi), lo), tirx.const(0.0, "float32"))
            code = t.astype("int64") & tirx.const(mod - 1, "int64")
        else:
            u = tirx.reinterpret("uint32", v.astype("float32")).astype("int64")
            code = encode_e8m0_bits(u, saturate, round_mode, _TE()) if fmt.kind == "e8m0" \
                else encode_bits(u, fmt, saturate, _TE())
        return code.astype("uint8")

    return te.compute(x.shape, one, name=f"encode_{fmt.name}")


def can_encode(src: str, fmt: NarrowFormat) -> bool:
    """Whether :func:`encode_te` casts a ``src`` value to ``fmt`` with one rounding."""
    if src in ("float32", "float16", "bfloat16"):
        return True
    if fmt.kind == "int":
        return src.startswith(("int", "uint", "bool"))
    return src in _SMALL_INTS


# ----------------------------------------------------------------------------------------
# the graph rewrite
# ----------------------------------------------------------------------------------------
def _np_name(elem_type: int) -> str:
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))


def decode_table(fmt_type: int, to: int) -> np.ndarray:
    """Value in type ``to`` of every storage byte of narrow type ``fmt_type`` (by the
    reference's own Cast; codes above the type's width repeat the low bits)."""
    from onnx.reference import ReferenceEvaluator

    fmt = FORMATS[fmt_type]
    codes = (np.arange(256, dtype=np.uint16) & ((1 << fmt.bits) - 1)).astype(np.uint8)
    x = codes.view(np.dtype(fmt.name))
    node = helper.make_node("Cast", ["x"], ["y"], to=to)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ReferenceEvaluator(node).run(None, {"x": x})[0])


class _Lowering:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.types = value_types(model)
        self.names = NameGen(model)
        self.inits: list[onnx.TensorProto] = []
        self.opset = next((int(o.version) for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 1)

    def elem(self, name: str) -> int | None:
        tp = self.types.get(name)
        if tp is None or tp.WhichOneof("value") != "tensor_type":
            return None
        return tp.tensor_type.elem_type

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.names(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # -- building blocks ------------------------------------------------------------------
    def decode(self, x: str, fmt_type: int, to: int, out: str, base: str) -> list:
        table = self.const(f"{base}_table", decode_table(fmt_type, to))
        idx = self.names(f"{base}_idx")
        return [helper.make_node("Cast", [x], [idx], to=_T.INT32, name=f"{base}_idx"),
                helper.make_node("Gather", [table, idx], [out], axis=0, name=f"{base}_dec")]

    def encode(self, x: str, fmt_type: int, out: str, base: str, saturate: int = 1,
               round_mode: str = "up") -> list:
        return [helper.make_node(ENCODE, [x], [out], domain=DOMAIN, name=f"{base}_enc",
                                 to=fmt_type, saturate=int(saturate), round_mode=round_mode)]

    # -- ops ------------------------------------------------------------------------------
    def cast(self, node: onnx.NodeProto, src: int, to: int, attrs: dict) -> list | None:
        base = node.name or node.output[0]
        x, y = node.input[0], node.output[0]
        sat = int(attrs.get("saturate", 1))
        rmode = attrs.get("round_mode", b"up")
        rmode = rmode.decode() if isinstance(rmode, bytes) else str(rmode)
        if src in FORMATS and to in FORMATS:
            if src == to:
                return [helper.make_node("Identity", [x], [y], name=f"{base}_id")]
            mid = self.names(f"{base}_f32")
            return self.decode(x, src, _T.FLOAT, mid, base) + \
                self.encode(mid, to, y, base, sat, rmode)
        if src in FORMATS:
            if to in (_T.STRING, _T.COMPLEX64, _T.COMPLEX128):
                return None
            return self.decode(x, src, to, y, base)
        if not can_encode(_np_name(src), FORMATS[to]):
            return None
        return self.encode(x, to, y, base, sat, rmode)

    def dequantize(self, node: onnx.NodeProto, src: int, attrs: dict) -> list | None:
        if attrs.get("block_size", 0):
            return None
        base = node.name or node.output[0]
        scale_t = self.elem(node.input[1])
        out_t = attrs.get("output_dtype") or scale_t
        if scale_t is None or out_t is None:
            return None
        nodes: list = []
        dx = self.names(f"{base}_x")
        nodes += self.decode(node.input[0], src, _T.FLOAT, dx, f"{base}_x")
        zp = node.input[2] if len(node.input) > 2 else ""
        if zp and FORMATS[src].kind == "int":
            zf, diff = self.names(f"{base}_zp"), self.names(f"{base}_dx")
            nodes += self.decode(zp, src, _T.FLOAT, zf, f"{base}_zp")
            nodes += [helper.make_node("Sub", [dx, self.bcast(zf, node, attrs, nodes, zp)],
                                       [diff])]
            dx = diff
        scale = node.input[1]
        if scale_t != _T.FLOAT:
            s32 = self.names(f"{base}_s32")
            nodes.append(helper.make_node("Cast", [scale], [s32], to=_T.FLOAT))
            scale = s32
        y32 = self.names(f"{base}_y32")
        nodes.append(helper.make_node("Mul", [dx, self.bcast(scale, node, attrs, nodes,
                                                                    node.input[1])], [y32]))
        nodes.append(helper.make_node("Cast", [y32], [node.output[0]], to=out_t))
        return nodes

    def quantize(self, node: onnx.NodeProto, to: int, attrs: dict) -> list | None:
        if attrs.get("block_size", 0) or attrs.get("precision", 0):
            return None
        fmt = FORMATS[to]
        base = node.name or node.output[0]
        x, scale = node.input[0], node.input[1]
        xt = self.elem(x)
        if xt not in (_T.FLOAT, _T.FLOAT16, _T.BFLOAT16) or self.elem(scale) != xt:
            return None
        nodes: list = []
        q = self.names(f"{base}_q")
        nodes.append(helper.make_node("Div", [x, self.bcast(scale, node, attrs, nodes)], [q]))
        zp = node.input[2] if len(node.input) > 2 else ""
        if fmt.kind == "int":
            lo, hi = (-(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1) if fmt.signed else \
                (0, (1 << fmt.bits) - 1)
            r, r32 = self.names(f"{base}_r"), self.names(f"{base}_r32")
            nodes.append(helper.make_node("Round", [q], [r]))
            nn, r = nan_to_zero(r, xt, self.names)  # NaN: the zero point
            nodes += nn + [helper.make_node("Cast", [r], [r32], to=_T.FLOAT)]
            if zp:
                zf, s = self.names(f"{base}_zp"), self.names(f"{base}_rz")
                nodes += self.decode(zp, to, _T.FLOAT, zf, f"{base}_zp")
                nodes.append(helper.make_node("Add", [r32, self.bcast(zf, node, attrs, nodes, zp)],
                                              [s]))
                r32 = s
            c = self.names(f"{base}_clip")
            nodes.append(helper.make_node(
                "Clip", [r32, self.const(f"{base}_lo", np.float32(lo)),
                         self.const(f"{base}_hi", np.float32(hi))], [c]))
            return nodes + self.encode(c, to, node.output[0], base)
        if fmt.kind != "float":
            return None
        if zp and fmt.bits == 4:
            zf, s = self.names(f"{base}_zp"), self.names(f"{base}_qz")
            q32 = self.names(f"{base}_q32")
            nodes.append(helper.make_node("Cast", [q], [q32], to=_T.FLOAT))
            nodes += self.decode(zp, to, _T.FLOAT, zf, f"{base}_zp")
            nodes.append(helper.make_node("Add", [q32, self.bcast(zf, node, attrs, nodes, zp)],
                                          [s]))
            q = s
        return nodes + self.encode(q, to, node.output[0], base, int(attrs.get("saturate", 1)))

    def bcast(self, v: str, node: onnx.NodeProto, attrs: dict, nodes: list,
              like: str | None = None) -> str:
        """``v`` (a scale or zero point: scalar or 1-D along ``axis``, shaped as the value
        ``like``) shaped to broadcast against the node's first input, as the reference's
        ``reshape_input`` does."""
        shape = static_shape(self.types.get(like or v))
        xshape = static_shape(self.types.get(node.input[0]))
        if shape is None or xshape is None:
            raise _Refuse("static shapes needed")
        if len(shape) == 0 or int(np.prod(shape)) == 1 and len(shape) <= 1:
            return v
        axis = int(attrs.get("axis", 1))
        axis = axis + len(xshape) if axis < 0 else axis
        new = [1] * len(xshape)
        new[axis] = int(np.prod(shape))
        out = self.names(f"{v}_b")
        nodes.append(helper.make_node(
            "Reshape", [v, self.const(f"{v}_shape", np.array(new, np.int64))], [out]))
        return out


class _Refuse(Exception):
    pass


def _touches(node: onnx.NodeProto, narrow: set[str]) -> bool:
    return any(v in narrow for v in list(node.input) + list(node.output))


def lower_narrow_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` with narrow element types carried as uint8 storage (see the module
    docstring), or ``model`` itself when it has none.

    Raises
    ------
    UnsupportedOpError
        For the first node that computes with a narrow type in a way not handled here.
    """
    low = _Lowering(model)
    narrow = {n for n in low.types if low.elem(n) in FORMATS}
    if not narrow:
        return model
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if not _touches(node, narrow):
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out_t = low.elem(node.output[0]) if node.output else None
        in_t = low.elem(node.input[0]) if node.input else None
        repl = None
        try:
            if node.op_type in ("Cast", "CastLike") and node.domain in ("", "ai.onnx") \
                    and in_t is not None and out_t is not None:
                repl = low.cast(node, in_t, out_t, attrs)
            elif node.op_type == "DequantizeLinear" and in_t in FORMATS:
                repl = low.dequantize(node, in_t, attrs)
            elif node.op_type == "QuantizeLinear" and out_t in FORMATS:
                repl = low.quantize(node, out_t, attrs)
        except _Refuse:
            repl = None
        if repl is None:
            bad = next(v for v in list(node.input) + list(node.output) if v in narrow)
            raise UnsupportedOpError(node.op_type, node.name, low.opset,
                                     f"element type {FORMATS[low.elem(bad)].name} of "
                                     f"'{bad}' is supported only by Cast, CastLike, "
                                     "QuantizeLinear and DequantizeLinear (scalar or per-axis)")
        new_nodes.extend(repl)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    g.node.extend(new_nodes)
    inits = []
    for t in g.initializer:
        if t.data_type in FORMATS:
            arr = numpy_helper.to_array(t)
            t = numpy_helper.from_array(np.ascontiguousarray(arr).view(np.uint8), t.name)
        inits.append(t)
    del g.initializer[:]
    g.initializer.extend(inits + low.inits)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FORMATS:
            vi.type.tensor_type.elem_type = _T.UINT8
    logger.info("narrow element types carried as uint8 storage: %d values", len(narrow))
    return out
