"""Exact decompositions of ONNX ops TVM's importer lacks or refuses, into ops it imports.

Each function is a rewrite in :data:`compiler.frontend.rewrites.REWRITES` form: it returns
replacement nodes and initializers, or None to leave the node alone. The decompositions follow
the ONNX reference implementation (``onnx.reference.ops``) formula by formula; they are never
approximations (a 16-bit float op may be computed in float32 and rounded once, which is at
least as accurate as the reference's own 16-bit arithmetic). Ops that need a kernel of their
own (``CumProd``, ``ReverseSequence``, float ``Mod``) are converted by
:data:`compiler.frontend.converters.CONVERTERS` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from .graph import nan_to_zero
from .guards import _const, _opset, _shape, _type, reduce_extreme, resize

Names = Callable[[str], str]
Result = "tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None"

_FLOATS = (T.FLOAT, T.FLOAT16, T.BFLOAT16, T.DOUBLE)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tensor_type(model: onnx.ModelProto, name: str) -> onnx.TypeProto.Tensor | None:
    tp = _type(model, name)
    return tp.tensor_type if tp is not None and tp.HasField("tensor_type") else None


def _elem(model: onnx.ModelProto, name: str) -> int | None:
    tt = _tensor_type(model, name)
    return tt.elem_type if tt is not None else None


def _np(elem: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem))


def swish(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Swish(x, alpha) = x * Sigmoid(alpha * x) (no converter in TVM)."""
    elem = _elem(model, node.input[0])
    if elem not in _FLOATS:
        return None
    alpha = float(_attrs(node).get("alpha", 1.0))
    n = node.name or node.output[0]
    a, ax, sig = names(f"{n}_alpha"), names(f"{n}_ax"), names(f"{n}_sig")
    nodes = [helper.make_node("Mul", [node.input[0], a], [ax]),
             helper.make_node("Sigmoid", [ax], [sig]),
             helper.make_node("Mul", [node.input[0], sig], [node.output[0]])]
    return nodes, [numpy_helper.from_array(np.array(alpha, _np(elem)), a)]


def eye_like(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """EyeLike depends only on its input's (static) shape: a constant."""
    shape = _shape(model, node.input[0])
    if shape is None or len(shape) not in (1, 2):
        return None
    attrs = _attrs(node)
    elem = attrs.get("dtype") or _elem(model, node.input[0]) or T.FLOAT
    if elem == T.STRING:
        return None
    rows, cols = (shape[0], shape[0]) if len(shape) == 1 else shape
    value = np.eye(rows, cols, k=int(attrs.get("k", 0)), dtype=_np(elem))
    c = names(f"{node.name or node.output[0]}_eye")
    return ([helper.make_node("Identity", [c], [node.output[0]])],
            [numpy_helper.from_array(value, c)])


def elu_16bit(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Elu on float16 (TVM's converter mixes a float32 alpha in): computed in float32 and
    rounded once. (bfloat16 stays refused: its casts crash TVM's CPU build.)"""
    elem = _elem(model, node.input[0])
    if elem != T.FLOAT16:
        return None
    n = node.name or node.output[0]
    x32, y32 = names(f"{n}_x32"), names(f"{n}_y32")
    inner = helper.make_node("Elu", [x32], [y32], name=f"{n}_f32")
    inner.attribute.extend(node.attribute)
    return [helper.make_node("Cast", [node.input[0]], [x32], to=T.FLOAT), inner,
            helper.make_node("Cast", [y32], [node.output[0]], to=elem)], []


def pow_mixed(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Pow with an integer operand (TVM: mixed types fail to import, int ** int fails to
    build). As numpy does: float ** int in the base's type; int ** anything in float64, then
    truncated to the base's integer type."""
    xt, yt = _elem(model, node.input[0]), _elem(model, node.input[1])
    if xt is None or yt is None or (xt == yt and xt in _FLOATS):
        return None
    n = node.name or node.output[0]
    if xt in _FLOATS:
        y = names(f"{n}_y")
        return [helper.make_node("Cast", [node.input[1]], [y], to=xt),
                helper.make_node("Pow", [node.input[0], y], [node.output[0]])], []
    if yt not in _FLOATS and yt not in (T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16,
                                        T.UINT32, T.UINT64):
        return None
    x, y, p = names(f"{n}_x64"), names(f"{n}_y64"), names(f"{n}_p64")
    return [helper.make_node("Cast", [node.input[0]], [x], to=T.DOUBLE),
            helper.make_node("Cast", [node.input[1]], [y], to=T.DOUBLE),
            helper.make_node("Pow", [x, y], [p]),
            helper.make_node("Cast", [p], [node.output[0]], to=xt)], []


def lp_normalization(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """LpNormalization: x / norm along ``axis`` (p=2: sqrt(sum x**2); p=1: sum |x|, the
    L1 norm as the spec and onnxruntime define it; ``onnx.reference`` sums x itself, which
    differs on negative inputs only), 0 where the norm is 0."""
    elem = _elem(model, node.input[0])
    tt = _tensor_type(model, node.input[0])
    attrs = _attrs(node)
    p = int(attrs.get("p", 2))
    if elem not in _FLOATS or tt is None or not tt.HasField("shape") or p not in (1, 2):
        return None
    rank = len(tt.shape.dim)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    n = node.name or node.output[0]
    ax, norm, zero, is0, q = (names(f"{n}_{k}") for k in ("axes", "norm", "zero", "is0", "q"))
    x = node.input[0]
    sq = names(f"{n}_sumsq")
    nodes = [helper.make_node("ReduceL1", [x, ax], [norm], keepdims=1)] if p == 1 else [
        helper.make_node("ReduceSumSquare", [x, ax], [sq], keepdims=1),
        helper.make_node("Sqrt", [sq], [norm])]
    nodes += [helper.make_node("Equal", [norm, zero], [is0]),
             helper.make_node("Div", [x, norm], [q]),
             helper.make_node("Where", [is0, zero, q], [node.output[0]])]
    if _opset(model) < 18:
        return None  # ReduceL1 / ReduceSumSquare take their axes as an input from opset 18
    return nodes, [numpy_helper.from_array(np.array([axis], np.int64), ax),
                   numpy_helper.from_array(np.array(0, _np(elem)), zero)]


def rms_norm_leading_axes(node: onnx.NodeProto, model: onnx.ModelProto, names: Names
                          ) -> Result:
    """RMSNormalization over more than the last axis (TVM's kernel fails to build): the
    reference's formula, X * 1/sqrt(mean(X**2) + epsilon) * scale, in float32."""
    elem = _elem(model, node.input[0])
    tt = _tensor_type(model, node.input[0])
    if elem not in (T.FLOAT, T.FLOAT16) or tt is None or not tt.HasField("shape"):
        return None
    rank = len(tt.shape.dim)
    attrs = _attrs(node)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if axis >= rank - 1 or _opset(model) < 18 or len(node.output) > 1 and node.output[1]:
        return None
    n = node.name or node.output[0]
    v = {k: names(f"{n}_{k}") for k in ("x", "s", "sq", "ms", "mse", "rms", "inv", "xn", "y",
                                        "axes", "eps")}
    nodes = []
    x, scale = node.input[0], node.input[1]
    if elem != T.FLOAT:
        nodes += [helper.make_node("Cast", [x], [v["x"]], to=T.FLOAT),
                  helper.make_node("Cast", [scale], [v["s"]], to=T.FLOAT)]
        x, scale = v["x"], v["s"]
    y = v["y"] if elem != T.FLOAT else node.output[0]
    nodes += [helper.make_node("Mul", [x, x], [v["sq"]]),
              helper.make_node("ReduceMean", [v["sq"], v["axes"]], [v["ms"]], keepdims=1),
              helper.make_node("Add", [v["ms"], v["eps"]], [v["mse"]]),
              helper.make_node("Sqrt", [v["mse"]], [v["rms"]]),
              helper.make_node("Reciprocal", [v["rms"]], [v["inv"]]),
              helper.make_node("Mul", [x, v["inv"]], [v["xn"]]),
              helper.make_node("Mul", [v["xn"], scale], [y])]
    if elem != T.FLOAT:
        nodes.append(helper.make_node("Cast", [y], [node.output[0]], to=elem))
    eps = float(attrs.get("epsilon", 1e-5))
    return nodes, [numpy_helper.from_array(np.arange(axis, rank, dtype=np.int64), v["axes"]),
                   numpy_helper.from_array(np.array(eps, np.float32), v["eps"])]


def resize_axes(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Resize with ``axes`` (TVM indexes scales/sizes by dimension): the same Resize with
    full-rank roi/scales/sizes (1 / the input size / [0, 1] on the other axes). Without
    ``axes``: compiler/onnx_guards.py's checks."""
    attrs = _attrs(node)
    if "axes" not in attrs:
        return resize(node, model, names)
    shape = _shape(model, node.input[0])
    policy = attrs.get("keep_aspect_ratio_policy", b"stretch")
    if shape is None or (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        return None
    rank = len(shape)
    axes = [a + rank if a < 0 else a for a in attrs["axes"]]
    ins = list(node.input) + [""] * (4 - len(node.input))
    vals = [_const(model, v) if v else None for v in ins[1:4]]
    if any(v is None for v, name in zip(vals, ins[1:4]) if name):
        return None
    roi, scales, sizes = vals
    n = node.name or node.output[0]
    new_inputs, inits = [ins[0]], []
    if roi is not None and roi.size:
        full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(roi.dtype)
        for i, a in enumerate(axes):
            full[a], full[rank + a] = roi[i], roi[len(axes) + i]
        inits.append(numpy_helper.from_array(full, names(f"{n}_roi")))
        new_inputs.append(inits[-1].name)
    else:
        new_inputs.append(ins[1])
    if scales is not None and scales.size:
        full = np.ones(rank, scales.dtype)
        full[axes] = scales
        inits.append(numpy_helper.from_array(full, names(f"{n}_scales")))
        new_inputs.append(inits[-1].name)
    else:
        new_inputs.append(ins[2])
    if sizes is not None and sizes.size:
        full = np.array(shape, sizes.dtype)
        full[axes] = sizes
        inits.append(numpy_helper.from_array(full, names(f"{n}_sizes")))
        new_inputs.append(inits[-1].name)
    while new_inputs and not new_inputs[-1]:
        new_inputs.pop()
    new = helper.make_node("Resize", new_inputs, list(node.output), name=node.name)
    new.attribute.extend(a for a in node.attribute if a.name != "axes")
    return [new], inits


def dft(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """DFT (no converter in TVM) as matrix products with the cos/sin matrices of its length
    (computed in float64): forward, inverse (1/N), one-sided forward (the first N//2+1 bins)
    and one-sided inverse (np.fft.irfft: the half spectrum weighted 1, 2, ..., 2, 1)."""
    shape = _shape(model, node.input[0])
    elem = _elem(model, node.input[0])
    if shape is None or elem not in (T.FLOAT, T.DOUBLE) or shape[-1] not in (1, 2):
        return None
    attrs = _attrs(node)
    ins = list(node.input) + [""] * 3
    if _opset(model) >= 20:
        if ins[2] and _const(model, ins[2]) is None:
            return None
        axis = int(_const(model, ins[2]).reshape(-1)[0]) if ins[2] else -2
    else:
        axis = int(attrs.get("axis", 1))
    r = len(shape)
    axis = axis % r
    if axis == r - 1:
        return None
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    n_in = shape[axis]
    n = 2 * (n_in - 1) if inverse and onesided else n_in
    if ins[1]:
        length = _const(model, ins[1])
        if length is None or int(length.reshape(-1)[0]) != n:
            return None
    dt = _np(elem)
    name = node.name or node.output[0]
    v = lambda k: names(f"{name}_{k}")  # noqa: E731
    inits: list[onnx.TensorProto] = []

    def const(k: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), v(k)))
        return inits[-1].name

    d = r - 1
    perm = [i for i in range(d) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(d)]
    last = const("last", np.array([r - 1], np.int64))
    nodes: list[onnx.NodeProto] = []

    def part(k: int) -> str:
        sl, sq, tr = v(f"sl{k}"), v(f"sq{k}"), v(f"tr{k}")
        nodes.extend([
            helper.make_node("Slice", [node.input[0], const(f"b{k}", np.array([k], np.int64)),
                                       const(f"e{k}", np.array([k + 1], np.int64)), last],
                             [sl]),
            helper.make_node("Squeeze", [sl, last], [sq]),
            helper.make_node("Transpose", [sq], [tr], perm=perm)])
        return tr

    def matmul(a: str, m: np.ndarray, k: str) -> str:
        out = v(k)
        nodes.append(helper.make_node("MatMul", [a, const(f"m_{k}", m.astype(dt))], [out]))
        return out

    def combine(op: str, a: str, b: str | None, k: str) -> str:
        if b is None:
            return a
        out = v(k)
        nodes.append(helper.make_node(op, [a, b], [out]))
        return out

    re = part(0)
    im = part(1) if shape[-1] == 2 else None
    k_out = n // 2 + 1 if onesided and not inverse else n
    if inverse and onesided:
        kk, nn = np.meshgrid(np.arange(n_in), np.arange(n), indexing="ij")
        w = np.full(n_in, 2.0)
        w[0] = 1.0
        if n % 2 == 0:
            w[-1] = 1.0
        theta = 2 * np.pi * kk * nn / n
        a = (w[:, None] * np.cos(theta)) / n
        b = -(w[:, None] * np.sin(theta)) / n
        y = combine("Add", matmul(re, a, "ra"), matmul(im, b, "ib") if im else None, "y")
        outs = [y]
    else:
        nn, kk = np.meshgrid(np.arange(n), np.arange(k_out), indexing="ij")
        theta = 2 * np.pi * nn * kk / n
        c, sn = np.cos(theta), np.sin(theta)
        if inverse:
            c, sn = c / n, -sn / n  # e^{+i theta} / N: the sine's sign flips below
        # (re + i im)(cos - i sin) = re cos + im sin + i (im cos - re sin)
        y_re = combine("Add", matmul(re, c, "rc"), matmul(im, sn, "is") if im else None, "yr")
        neg = matmul(re, -sn, "rs")
        y_im = combine("Add", neg, matmul(im, c, "ic") if im else None, "yi")
        outs = [y_re, y_im]
    back = []
    for i, o in enumerate(outs):
        t, u = v(f"bt{i}"), v(f"bu{i}")
        nodes += [helper.make_node("Transpose", [o], [t], perm=inv),
                  helper.make_node("Unsqueeze", [t, last], [u])]
        back.append(u)
    if len(back) == 1:
        nodes.append(helper.make_node("Identity", back, [node.output[0]]))
    else:
        nodes.append(helper.make_node("Concat", back, [node.output[0]], axis=-1))
    return nodes, inits


_INT_RANGES = {T.UINT8: (0, 255), T.INT8: (-128, 127), T.UINT16: (0, 65535),
               T.INT16: (-32768, 32767)}


def _block_gather(v: str, shape: tuple[int, ...], axis: int, block: int, names: Names,
                  nodes: list, inits: list) -> str:
    """``v`` (one value per block along ``axis``) repeated to the full extent of ``shape``,
    as the reference's ``reshape_input`` does: Gather of index // block_size."""
    idx = names(f"{v}_blk")
    inits.append(numpy_helper.from_array(np.arange(shape[axis], dtype=np.int64) // block, idx))
    out = names(f"{v}_full")
    nodes.append(helper.make_node("Gather", [v, idx], [out], axis=axis))
    return out


def blocked_quantize(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """QuantizeLinear with ``block_size`` (TVM refuses it), integer types: the reference's
    x / scale, rounded half to even, plus the zero point, clipped, per block."""
    attrs = _attrs(node)
    block = int(attrs.get("block_size", 0))
    shape = _shape(model, node.input[0])
    xt = _elem(model, node.input[0])
    zp = node.input[2] if len(node.input) > 2 else ""
    out_t = _elem(model, node.output[0])
    if not block or shape is None or xt not in (T.FLOAT, T.FLOAT16) or \
            out_t not in _INT_RANGES or attrs.get("precision", 0):
        return None
    axis = int(attrs.get("axis", 1)) % len(shape)
    nodes: list = []
    inits: list = []
    n = node.name or node.output[0]
    scale = _block_gather(node.input[1], shape, axis, block, names, nodes, inits)
    q, r, r32, c = (names(f"{n}_{k}") for k in ("q", "r", "r32", "clip"))
    nodes += [helper.make_node("Div", [node.input[0], scale], [q]),
              helper.make_node("Round", [q], [r])]
    nn, r = nan_to_zero(r, xt, names)  # NaN quantizes to the zero point (int_casts)
    nodes += nn + [helper.make_node("Cast", [r], [r32], to=T.FLOAT)]
    if zp:
        zf, s = names(f"{n}_zf"), names(f"{n}_rz")
        nodes.append(helper.make_node("Cast", [_block_gather(zp, shape, axis, block, names,
                                                             nodes, inits)], [zf], to=T.FLOAT))
        nodes.append(helper.make_node("Add", [r32, zf], [s]))
        r32 = s
    lo, hi = _INT_RANGES[out_t]
    lo_n, hi_n = names(f"{n}_lo"), names(f"{n}_hi")
    inits += [numpy_helper.from_array(np.array(lo, np.float32), lo_n),
              numpy_helper.from_array(np.array(hi, np.float32), hi_n)]
    nodes += [helper.make_node("Clip", [r32, lo_n, hi_n], [c]),
              helper.make_node("Cast", [c], [node.output[0]], to=out_t)]
    return nodes, inits


def blocked_dequantize(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """DequantizeLinear with ``block_size`` (TVM refuses it), integer types: the reference's
    (x - zero_point) * scale in float32, per block."""
    attrs = _attrs(node)
    block = int(attrs.get("block_size", 0))
    shape = _shape(model, node.input[0])
    xt = _elem(model, node.input[0])
    out_t = _elem(model, node.output[0])
    if not block or shape is None or xt not in (*_INT_RANGES, T.INT32) or out_t is None:
        return None
    axis = int(attrs.get("axis", 1)) % len(shape)
    nodes: list = []
    inits: list = []
    n = node.name or node.output[0]
    x32, y32 = names(f"{n}_x32"), names(f"{n}_y32")
    nodes.append(helper.make_node("Cast", [node.input[0]], [x32], to=T.FLOAT))
    zp = node.input[2] if len(node.input) > 2 else ""
    if zp:
        zf, d = names(f"{n}_zf"), names(f"{n}_dx")
        nodes.append(helper.make_node("Cast", [_block_gather(zp, shape, axis, block, names,
                                                             nodes, inits)], [zf], to=T.FLOAT))
        nodes.append(helper.make_node("Sub", [x32, zf], [d]))
        x32 = d
    scale = _block_gather(node.input[1], shape, axis, block, names, nodes, inits)
    if _elem(model, node.input[1]) != T.FLOAT:
        s32 = names(f"{n}_s32")
        nodes.append(helper.make_node("Cast", [scale], [s32], to=T.FLOAT))
        scale = s32
    nodes += [helper.make_node("Mul", [x32, scale], [y32]),
              helper.make_node("Cast", [y32], [node.output[0]], to=out_t)]
    return nodes, inits


def if_constant(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """If whose condition folded to a constant: the taken branch's nodes, inline (ONNX names
    are unique across nested graphs, so they keep theirs)."""
    cond = _const(model, node.input[0])
    if cond is None or cond.size != 1:
        return None
    branch = next(a.g for a in node.attribute
                  if a.name == ("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"))
    if len(branch.output) != len(node.output):
        return None
    nodes = list(branch.node)
    for inner, outer in zip(branch.output, node.output):
        if outer:
            nodes.append(helper.make_node("Identity", [inner.name], [outer]))
    return nodes, list(branch.initializer)


def det_2x2(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Det of 2x2 matrices (no converter in TVM): a*d - b*c."""
    shape = _shape(model, node.input[0])
    if shape is None or shape[-2:] != (2, 2) or _elem(model, node.input[0]) not in _FLOATS:
        return None
    n = node.name or node.output[0]
    flat, shp = names(f"{n}_flat"), names(f"{n}_shape")
    inits = [numpy_helper.from_array(np.array([*shape[:-2], 4], np.int64), shp)]
    nodes = [helper.make_node("Reshape", [node.input[0], shp], [flat])]
    e = []
    for i in range(4):
        idx, out = names(f"{n}_i{i}"), names(f"{n}_e{i}")
        inits.append(numpy_helper.from_array(np.array(i, np.int64), idx))
        nodes.append(helper.make_node("Gather", [flat, idx], [out], axis=-1))
        e.append(out)
    ad, bc = names(f"{n}_ad"), names(f"{n}_bc")
    nodes += [helper.make_node("Mul", [e[0], e[3]], [ad]),
              helper.make_node("Mul", [e[1], e[2]], [bc]),
              helper.make_node("Sub", [ad, bc], [node.output[0]])]
    return nodes, inits


def reduce_bool(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """ReduceMax / ReduceMin of booleans (TVM fails to build them): on uint8, cast back.
    Other types: compiler/onnx_guards.py's checks."""
    if _elem(model, node.input[0]) != T.BOOL:
        return reduce_extreme(node, model, names)
    n = node.name or node.output[0]
    u, r = names(f"{n}_u8"), names(f"{n}_r8")
    inner = helper.make_node(node.op_type, [u, *node.input[1:]], [r], name=f"{n}_u8")
    inner.attribute.extend(node.attribute)
    return [helper.make_node("Cast", [node.input[0]], [u], to=T.UINT8), inner,
            helper.make_node("Cast", [r], [node.output[0]], to=T.BOOL)], []


def pad_runtime_value(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Constant Pad whose pad value is computed at run time (TVM takes constants only):
    pad with 0, then Where(constant mask of the original region, padded, value)."""
    ins = list(node.input) + [""] * (4 - len(node.input))
    mode = _attrs(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant" or not ins[2] or _const(model, ins[2]) is not None:
        return None
    shape, pads = _shape(model, ins[0]), _const(model, ins[1])
    axes = _const(model, ins[3]) if ins[3] else np.arange(len(shape or ()))
    elem = _elem(model, ins[0])
    if shape is None or pads is None or axes is None or elem is None or np.any(pads < 0):
        return None
    rank = len(shape)
    axes = [int(a) % rank for a in axes.reshape(-1)]
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (int(pads[i]), int(pads[len(axes) + i]))
    mask = np.pad(np.ones(shape, bool), widths)
    n = node.name or node.output[0]
    zero, m, padded = names(f"{n}_zero"), names(f"{n}_mask"), names(f"{n}_padded")
    inits = [numpy_helper.from_array(np.array(0, _np(elem)), zero),
             numpy_helper.from_array(mask, m)]
    inputs = [ins[0], ins[1], zero] + ([ins[3]] if ins[3] else [])
    return [helper.make_node("Pad", inputs, [padded], mode="constant"),
            helper.make_node("Where", [m, padded, ins[2]], [node.output[0]])], inits


DECOMPOSITIONS = {
    "ReduceMax": reduce_bool,
    "ReduceMin": reduce_bool,
    "Pad": pad_runtime_value,
    "If": if_constant,
    "Det": det_2x2,
    "QuantizeLinear": blocked_quantize,
    "DequantizeLinear": blocked_dequantize,
    "DFT": dft,
    "Resize": resize_axes,
    "RMSNormalization": rms_norm_leading_axes,
    "Swish": swish,
    "EyeLike": eye_like,  # TVM: dtype attribute different from the input's fails
    "Elu": elu_16bit,
    "Pow": pow_mixed,
    "LpNormalization": lp_normalization,
}
