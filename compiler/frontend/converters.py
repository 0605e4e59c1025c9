"""hwcc's own converters in TVM's ONNX importer, for ops it lacks or computes wrongly.

:data:`CONVERTERS` maps an ONNX op type to ``converter(bb, inputs, attrs)`` (TVM's converter
signature, minus the params). compiler/frontend.py's importer calls it before TVM's own
converter; a converter returns a Relax expression, or None to leave the node to TVM. Each
kernel is a small TE compute written from the ONNX reference implementation, exact by
construction (integer indexing, C ``fmod``), and tested against ``onnx.reference`` in
tests/compiler/frontend/test_onnx_converters.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from compiler.frontend import int_casts
from compiler.frontend import narrow_types as narrow

Converter = Callable[[Any, list, dict], Any]


def _dtype(expr: Any) -> str:
    return str(expr.ty.dtype)


def _shape(expr: Any) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _const_int(expr: Any, what: str) -> int:
    import tvm

    if not isinstance(expr, tvm.ir.GenericConst):
        raise ValueError(f"{what} must be a constant (an initializer)")
    return int(np.asarray(expr.value.numpy()).reshape(-1)[0])


def narrow_encode(bb, inputs, attrs):
    """hwcc.NarrowEncode: a cast into float8/float4/int4/int2 storage bytes."""
    fmt = narrow.FORMATS[int(attrs["to"])]
    rmode = attrs.get("round_mode", "up")
    rmode = rmode.decode() if isinstance(rmode, bytes) else str(rmode)
    sat = bool(attrs.get("saturate", 1))
    return bb.emit_te(lambda x: narrow.encode_te(x, fmt, sat, rmode), inputs[0],
                      primfunc_name_hint=f"encode_{fmt.name}")


def bitcast(bb, inputs, attrs):
    """BitCast: the same bits seen as another type of the same size."""
    from tvm import te, tirx

    to = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"]))))
    x = inputs[0]
    src = _dtype(x)
    if to == "bool" or src == "bool" and to not in ("uint8", "int8"):
        raise ValueError(f"BitCast from {src} to {to} is not supported")
    if src == "bool":  # a bool is the byte 0 or 1
        return bb.emit_te(lambda t: te.compute(t.shape, lambda *i: t(*i).astype(to)), x,
                          primfunc_name_hint="bitcast")
    if np.dtype(src).itemsize != np.dtype(to).itemsize:
        raise ValueError(f"BitCast needs types of one size; got {src} and {to}")
    return bb.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(to, t(*i))),
                      x, primfunc_name_hint="bitcast")


def cum_prod(bb, inputs, attrs):
    """CumProd (constant axis): TVM's cumprod, flipped for ``reverse``."""
    from tvm import relax

    x = inputs[0]
    rank = len(_shape(x))
    axis = _const_int(inputs[1], "CumProd's axis")
    axis = axis + rank if axis < 0 else axis
    reverse = bool(attrs.get("reverse", 0))
    if reverse:
        x = bb.normalize(relax.op.flip(x, axis))
    y = bb.normalize(relax.op.cumprod(x, axis=axis, dtype=_dtype(x),
                                      exclusive=bool(attrs.get("exclusive", 0))))
    return relax.op.flip(y, axis) if reverse else y


def reverse_sequence(bb, inputs, attrs):
    """ReverseSequence: along ``time_axis``, the first ``sequence_lens[b]`` steps of batch
    entry b reversed, the rest copied."""
    from tvm import te, tirx

    b_axis = int(attrs.get("batch_axis", 1))
    t_axis = int(attrs.get("time_axis", 0))

    def compute(x, lens):
        def one(*i):
            src = [tirx.Cast("int64", v) for v in i]
            n = tirx.Cast("int64", lens(src[b_axis]))
            t = src[t_axis]
            src[t_axis] = tirx.Select(t < n, n - 1 - t, t)
            return x(*src)

        return te.compute(x.shape, one, name="reverse_sequence")

    return bb.emit_te(compute, inputs[0], inputs[1], primfunc_name_hint="reverse_sequence")


def float_mod(bb, inputs, attrs):
    """Float Mod, exactly: C's ``fmod`` (fmod=1) or numpy's ``mod`` (fmod=0: the sign of the
    divisor, ``fmod`` corrected by adding b once, a zero carries b's sign). float16/bfloat16
    are computed in float32, where both ``fmod`` and the one addition are exact or rounded
    once. TVM's own Mod differs on infinities and zeros."""
    from tvm import relax, te, tirx

    a, b = inputs
    dt = _dtype(a)
    if not dt.startswith(("float", "bfloat")) or _dtype(b) != dt:
        return None  # integers: TVM's converter is right
    shape = list(np.broadcast_shapes(tuple(_shape(a)), tuple(_shape(b))))
    a = bb.normalize(relax.op.broadcast_to(a, shape)) if _shape(a) != shape else a
    b = bb.normalize(relax.op.broadcast_to(b, shape)) if _shape(b) != shape else b
    wide = "float64" if dt == "float64" else "float32"
    python_style = not int(attrs.get("fmod", 0))

    def compute(x, y):
        def one(*i):
            p, q = x(*i).astype(wide), y(*i).astype(wide)
            m = tirx.call_pure_extern(wide, "fmod" if wide == "float64" else "fmodf", p, q)
            if python_style:
                zero = tirx.const(0.0, wide)
                flip = ((q < zero) & (m > zero)) | ((q > zero) & (m < zero))
                m = tirx.Select(flip, m + q, m)
                m = tirx.Select(m == zero, tirx.copysign(zero, q), m)
            return m.astype(dt)

        return te.compute(x.shape, one, name="float_mod")

    return bb.emit_te(compute, a, b, primfunc_name_hint="float_mod")


def _const_ints(expr: Any, what: str) -> list[int]:
    import tvm

    if not isinstance(expr, tvm.ir.GenericConst):
        raise ValueError(f"{what} must be a constant (an initializer)")
    return [int(v) for v in np.asarray(expr.value.numpy()).reshape(-1)]


def col2im(bb, inputs, attrs):
    """Col2Im: every output pixel sums the column entries whose block covers it (a gather
    over the kernel offsets, the inverse of Im2Col's scatter)."""
    from tvm import te, tirx

    x = inputs[0]
    image = _const_ints(inputs[1], "Col2Im's image_shape")
    block = _const_ints(inputs[2], "Col2Im's block_shape")
    nd = len(image)
    dil = list(attrs.get("dilations", [1] * nd))
    strides = list(attrs.get("strides", [1] * nd))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    n, ck, length = _shape(x)
    k_total = int(np.prod(block))
    if ck % k_total:
        raise ValueError(f"Col2Im: {ck} channels do not divide into blocks of {k_total}")
    counts = [(image[i] + pads[i] + pads[nd + i] - (dil[i] * (block[i] - 1) + 1))
              // strides[i] + 1 for i in range(nd)]
    if int(np.prod(counts)) != length:
        raise ValueError(f"Col2Im: {length} columns, expected {int(np.prod(counts))}")
    channels = ck // k_total

    def compute(col):
        ks = [te.reduce_axis((0, b), name=f"k{i}") for i, b in enumerate(block)]

        def one(b_, c, *pix):
            ok = tirx.const(True, "bool")
            lidx = tirx.const(0, "int64")
            kidx = tirx.const(0, "int64")
            for i in range(nd):
                t = tirx.Cast("int64", pix[i]) + pads[i] - tirx.Cast("int64", ks[i]) * dil[i]
                q = tirx.floordiv(t, strides[i])
                ok = ok & (t >= 0) & (tirx.floormod(t, strides[i]) == 0) & (q < counts[i])
                lidx = lidx * counts[i] + q
                kidx = kidx * block[i] + tirx.Cast("int64", ks[i])
            row = tirx.Cast("int64", c) * k_total + kidx
            val = tirx.if_then_else(ok, col[b_, row, lidx], tirx.const(0, col.dtype))
            return te.sum(val, axis=ks)

        return te.compute([n, channels, *image], one, name="col2im")

    return bb.emit_te(compute, x, primfunc_name_hint="col2im")


def tensor_scatter(bb, inputs, attrs):
    """TensorScatter (a KV-cache write): position s of the cache along ``axis`` takes the
    update row j that the reference writes there last (j = s - write_index[batch], modulo
    the cache length in ``circular`` mode), else keeps the past value."""
    from tvm import te, tirx

    past, update = inputs[0], inputs[1]
    widx = inputs[2] if len(inputs) > 2 else None
    mode = attrs.get("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("linear", "circular"):
        raise ValueError(f"TensorScatter mode '{mode}' is not supported")
    shape = _shape(past)
    axis = int(attrs.get("axis", -2)) % len(shape)
    cache_len, seq = shape[axis], _shape(update)[axis]
    if seq > cache_len:
        raise ValueError(f"TensorScatter: {seq} update rows exceed the cache length {cache_len}")

    def compute(cache, upd, *w):
        def one(*i):
            s = tirx.Cast("int64", i[axis])
            start = tirx.Cast("int64", w[0][i[0]]) if w else tirx.const(0, "int64")
            j = s - start
            if mode == "circular":  # rows wrap around the cache end
                j = tirx.floormod(j, cache_len)
            ok = (j >= 0) & (j < seq)
            src = list(i)
            src[axis] = tirx.max(tirx.min(j, seq - 1), 0)
            return tirx.if_then_else(ok, upd(*src), cache(*i))

        return te.compute(cache.shape, one, name="tensor_scatter")

    args = [past, update] + ([widx] if widx is not None else [])
    return bb.emit_te(compute, *args, primfunc_name_hint="tensor_scatter")


def attribute_slice(bb, inputs, attrs):
    """Slice before opset 10: ``starts``/``ends``/``axes`` are attributes and steps are 1.
    TVM's converter only reads them as inputs (its one implementation is opset 13's), so the
    bounds are clamped here as ONNX does (a negative bound counts from the end, then both are
    clipped to [0, dim]) and the slice is a ``strided_slice`` with constant bounds."""
    from tvm import relax

    if "starts" not in attrs:
        return None  # the input form (opset 10+): TVM's converter
    x = inputs[0]
    shape = _shape(x)
    rank = len(shape)
    starts = [int(v) for v in attrs["starts"]]
    ends = [int(v) for v in attrs["ends"]]
    axes = [int(v) for v in attrs.get("axes", range(len(starts)))]
    if not len(starts) == len(ends) == len(axes):
        raise ValueError(f"Slice: starts, ends and axes differ in length "
                         f"({len(starts)}, {len(ends)}, {len(axes)})")
    axes = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"Slice: axes {list(attrs.get('axes'))} are invalid for rank {rank}")
    begin, end = [], []
    for axis, b, e in zip(axes, starts, ends):
        dim = shape[axis]
        b = min(max(b + dim if b < 0 else b, 0), dim)
        e = min(max(e + dim if e < 0 else e, 0), dim)
        begin.append(b)
        end.append(max(e, b))
    return relax.op.strided_slice(x, axes, begin, end, [1] * len(axes), assume_inbound=True)


#: Element types TVM's sort kernel lacks, and the exact, order-preserving key used instead.
_TOPK_KEYS = {"int16": "int32", "uint16": "int32", "uint32": "int64", "uint64": "int64"}


def topk_by_key(bb, inputs, attrs):
    """TopK on int16/uint16/uint32/uint64, which TVM's sort kernel refuses at run time:
    the indices come from a TopK on a key that orders like the data (the value widened, or
    for uint64 the bits seen as int64 with the sign bit flipped); the values are gathered
    from the data at those indices. Ties keep ONNX's order (lower index first) since equal
    values have equal keys."""
    from tvm import relax, te, tirx

    x = inputs[0]
    key_dtype = _TOPK_KEYS.get(_dtype(x))
    if key_dtype is None:
        return None  # TVM's converter and kernel handle it
    if int(attrs.get("sorted", 1)) != 1:
        raise ValueError("TopK with sorted=0 is not supported")
    k = int(attrs["k"]) if len(inputs) < 2 else _const_int(inputs[1], "TopK's k")
    axis = int(attrs.get("axis", -1))
    axis = axis + len(_shape(x)) if axis < 0 else axis
    if _dtype(x) == "uint64":
        flip = tirx.const(-(1 << 63), "int64")
        key = bb.emit_te(lambda t: te.compute(
            t.shape, lambda *i: tirx.bitwise_xor(tirx.reinterpret("int64", t(*i)), flip),
            name="topk_key"), x, primfunc_name_hint="topk_key")
    else:
        key = bb.normalize(relax.op.astype(x, key_dtype))
    idx = bb.normalize(relax.op.topk(key, k, axis, ret_type="indices",
                                     largest=bool(attrs.get("largest", 1)), dtype="int64"))
    values = bb.normalize(relax.op.gather_elements(x, idx, axis))
    return relax.Tuple([values, idx])


CONVERTERS: dict[str, Converter] = {
    "TensorScatter": tensor_scatter,
    "Col2Im": col2im,
    narrow.ENCODE: narrow_encode,  # casts into float8/int4... storage (onnx_narrow_types.py)
    "BitCast": bitcast,
    "CumProd": cum_prod,
    "ReverseSequence": reverse_sequence,
    "Mod": float_mod,  # floats only; integer Mod stays with TVM
    "TopK": topk_by_key,  # int16/uint16/uint32/uint64 only
    "Slice": attribute_slice,  # opset < 10 only; TVM reads starts/ends as inputs
    # float -> integer: a plain astype, made saturating by int_casts.make_explicit (TVM's
    # own converter wraps values around through an int32 whose conversion is undefined)
    "Cast": int_casts.cast_converter,
    "CastLike": int_casts.cast_like_converter,
}
