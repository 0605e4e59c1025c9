"""QOperator ONNX ops rewritten to QDQ form before import (TVM 0.27 cannot import them).

``QLinearConv``, ``QLinearMatMul`` and ``ConvInteger`` become ``DequantizeLinear`` →
``Conv``/``MatMul`` → ``QuantizeLinear`` (or ``Cast`` to int32 for ``ConvInteger``): the exact
float meaning of the op, which TVM imports as simulated quantization. The ``qdq`` mode of the
``quantize`` pass (:mod:`passes.quantize`) then turns every ``dequantize → conv/matmul`` back
into an integer conv/matmul with int32 accumulation, so QOperator and QDQ models compile to
the same integer kernels. Registered in :data:`compiler.frontend.rewrites.REWRITES`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import nan_to_zero, static_shape, value_types

logger = logging.getLogger(__name__)


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _arg(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _dq(x: str, scale: str, zp: str, out: str, axis: int | None = None) -> onnx.NodeProto:
    inputs = [x, scale] + ([zp] if zp else [])
    attrs = {"axis": axis} if axis is not None else {}
    return helper.make_node("DequantizeLinear", inputs, [out], **attrs)


def _per_channel_axis(model: onnx.ModelProto, scale: str, axis: int) -> int | None:
    arr = _initializer(model, scale)
    return axis if arr is not None and arr.size > 1 else None


def qlinear_conv(node: onnx.NodeProto, model: onnx.ModelProto, names):
    """QLinearConv(x, xs, xz, w, ws, wz, ys, yz, [B]) → DQ, DQ, Conv(+DQ bias), Q."""
    x, xs, xz, w, ws, wz, ys, yz = (_arg(node, i) for i in range(8))
    bias = _arg(node, 8)
    n = names(node.name or "qlinearconv")
    nodes = [
        _dq(x, xs, xz, f"{n}_x"),
        _dq(w, ws, wz, f"{n}_w", _per_channel_axis(model, ws, 0)),
    ]
    conv_in = [f"{n}_x", f"{n}_w"]
    if bias:
        nodes.append(helper.make_node("Mul", [xs, ws], [f"{n}_bs"]))
        nodes.append(_dq(bias, f"{n}_bs", "", f"{n}_b", _per_channel_axis(model, ws, 0)))
        conv_in.append(f"{n}_b")
    conv = helper.make_node("Conv", conv_in, [f"{n}_y"])
    conv.attribute.extend(node.attribute)
    nodes.append(conv)
    nodes.append(helper.make_node("QuantizeLinear", [f"{n}_y", ys, yz], [node.output[0]]))
    return nodes, []


def _static_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    return static_shape(value_types(model).get(name))


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    shape = _static_shape(model, name)
    return None if shape is None else len(shape)


def _size(model: onnx.ModelProto, name: str) -> int | None:
    shape = _static_shape(model, name)
    return None if shape is None else int(np.prod(shape))


def _elem(model: onnx.ModelProto, name: str) -> int | None:
    tp = value_types(model).get(name)
    return tp.tensor_type.elem_type if tp is not None and tp.HasField("tensor_type") else None


def qlinear_matmul_exact(node: onnx.NodeProto, model: onnx.ModelProto, names):
    """QLinearMatMul as the reference computes it: the integer product (MatMulInteger, exact
    int32), times the multiplier ``a_scale * b_scale / y_scale`` evaluated in the scales'
    type, in float64; plus the zero point, rounded half to even, clipped."""
    a, as_, az, b, bs, bz, ys, yz = (_arg(node, i) for i in range(8))
    n = names(node.name or "qlinearmatmul")
    out_t = _elem(model, yz) if yz else _elem(model, a)
    lo, hi = (0, 255) if out_t == onnx.TensorProto.UINT8 else (-128, 127)
    T = onnx.TensorProto
    c_lo, c_hi = names(f"{n}_lo"), names(f"{n}_hi")
    nodes = [
        helper.make_node("MatMulInteger", [a, b] + ([az, bz] if bz else [az] if az else []),
                         [f"{n}_c"]),
        helper.make_node("Mul", [as_, bs], [f"{n}_ab"]),
        helper.make_node("Div", [f"{n}_ab", ys], [f"{n}_m"]),
        helper.make_node("Cast", [f"{n}_m"], [f"{n}_m64"], to=T.DOUBLE),
        helper.make_node("Cast", [f"{n}_c"], [f"{n}_c64"], to=T.DOUBLE),
        helper.make_node("Mul", [f"{n}_c64", f"{n}_m64"], [f"{n}_d"]),
    ]
    nn, d = nan_to_zero(f"{n}_d", T.DOUBLE, names)  # NaN (invalid scales): the zero point
    nodes += nn
    if yz:
        nodes += [helper.make_node("Cast", [yz], [f"{n}_z64"], to=T.DOUBLE),
                  helper.make_node("Add", [d, f"{n}_z64"], [f"{n}_dz"])]
        d = f"{n}_dz"
    nodes += [helper.make_node("Round", [d], [f"{n}_r"]),
              helper.make_node("Clip", [f"{n}_r", c_lo, c_hi], [f"{n}_q"]),
              helper.make_node("Cast", [f"{n}_q"], [node.output[0]], to=out_t)]
    inits = [numpy_helper.from_array(np.array(lo, np.float64), c_lo),
             numpy_helper.from_array(np.array(hi, np.float64), c_hi)]
    return nodes, inits


def qlinear_matmul(node: onnx.NodeProto, model: onnx.ModelProto, names):
    """QLinearMatMul(a, as, az, b, bs, bz, ys, yz) → DQ, DQ, MatMul, Q (float32 scales; with
    float16 scales the float path rounds differently: :func:`qlinear_matmul_exact`)."""
    a, as_, az, b, bs, bz, ys, yz = (_arg(node, i) for i in range(8))
    if _elem(model, as_) not in (None, onnx.TensorProto.FLOAT):
        return qlinear_matmul_exact(node, model, names)
    n = names(node.name or "qlinearmatmul")
    b_arr = _initializer(model, b)
    b_axis = _per_channel_axis(model, bs, (b_arr.ndim - 1) if b_arr is not None else 1)
    nodes = [
        _dq(a, as_, az, f"{n}_a"),
        _dq(b, bs, bz, f"{n}_b", b_axis),
        helper.make_node("MatMul", [f"{n}_a", f"{n}_b"], [f"{n}_y"]),
        helper.make_node("QuantizeLinear", [f"{n}_y", ys, yz], [node.output[0]]),
    ]
    return nodes, []


def conv_integer(node: onnx.NodeProto, model: onnx.ModelProto, names):
    """ConvInteger(x, w, [xz], [wz]) → DQ(scale 1), DQ(scale 1), Conv, Cast(int32).

    Exact while every accumulator stays below 2**24 in magnitude (float32 integers); with the
    ``qdq`` quantize pass the conv itself runs on integers and only the final cast is float.
    """
    x, w, xz, wz = (_arg(node, i) for i in range(4))
    n = names(node.name or "convinteger")
    one = names("one")
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), one)]
    w_arr = _initializer(model, wz) if wz else None
    w_axis = 0 if w_arr is not None and w_arr.size > 1 else None
    nodes = [_dq(x, one, xz, f"{n}_x")]
    if wz and w_arr is None and _size(model, wz) != 1:
        # per-channel zero points computed at run time: no DequantizeLinear takes them
        # (TVM's dequantize needs a constant per-axis zero point), so w - wz in float32
        # (exact: both are 8-bit integers), wz laid out as [C, 1, ..., 1]
        rank = _rank(model, w)
        if rank is None:
            return None
        shape = names("wz_shape")
        inits.append(numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64),
                                             shape))
        f32 = onnx.TensorProto.FLOAT
        nodes += [helper.make_node("Cast", [w], [f"{n}_wf"], to=f32),
                  helper.make_node("Cast", [wz], [f"{n}_wzf"], to=f32),
                  helper.make_node("Reshape", [f"{n}_wzf", shape], [f"{n}_wzc"]),
                  helper.make_node("Sub", [f"{n}_wf", f"{n}_wzc"], [f"{n}_w"])]
    else:
        if w_axis is not None:
            ones = names("ones")
            inits.append(numpy_helper.from_array(np.ones(w_arr.size, np.float32), ones))
        nodes.append(_dq(w, ones if w_axis is not None else one, wz, f"{n}_w", w_axis))
    conv = helper.make_node("Conv", [f"{n}_x", f"{n}_w"], [f"{n}_y"])
    conv.attribute.extend(node.attribute)
    nodes.append(conv)
    nodes.append(helper.make_node("Cast", [f"{n}_y"], [node.output[0]], to=onnx.TensorProto.INT32))
    return nodes, inits


QOP_REWRITES = {
    "QLinearConv": qlinear_conv,
    "QLinearMatMul": qlinear_matmul,
    "ConvInteger": conv_integer,
}
