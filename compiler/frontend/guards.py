"""Cases where TVM's importer returns a wrong value without an error: fixed or refused.

Each function here is a rewrite in :data:`compiler.frontend.rewrites.REWRITES` form. It either
replaces the node by an exact equivalent that TVM computes correctly, raises
:class:`~compiler.errors.UnsupportedOpError` naming the node and the reason, or returns None
when the node is in a form TVM gets right. Found by ``benchmarks/conformance.py``; each has a
case in ``tests/compiler/frontend/test_frontend_conformance.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import UnsupportedOpError

Names = Callable[[str], str]
Result = "tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None"

#: Nodes emitted by a guard carry this name suffix so that a later round leaves them alone.
GUARDED = "__hwcc_guarded"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _type(model: onnx.ModelProto, name: str) -> onnx.TypeProto | None:
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name:
            return vi.type
    for t in g.initializer:
        if t.name == name:
            return helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return None


def _shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    tp = _type(model, name)
    if tp is None or not tp.tensor_type.HasField("shape"):
        return None
    dims = tp.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _refuse(node: onnx.NodeProto, model: onnx.ModelProto, why: str) -> None:
    raise UnsupportedOpError(node.op_type, node.name, _opset(model), why)


def batch_norm(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Training-mode BatchNormalization: TVM normalizes with the running statistics."""
    if _attrs(node).get("training_mode", 0):
        _refuse(node, model, "training_mode=1 (batch statistics) is not supported")
    return None


def dropout(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Dropout: TVM returns a float mask; inference (or ratio 0) is Identity + all-true mask;
    random dropout in training mode is refused."""
    if node.name.endswith(GUARDED):
        return None
    training = False
    if len(node.input) > 2 and node.input[2]:
        t = _const(model, node.input[2])
        if t is None:
            _refuse(node, model, "training_mode is computed at run time")
        training = bool(t)
    if training:
        ratio = _const(model, node.input[1]) if len(node.input) > 1 and node.input[1] else 0.5
        if ratio is None or float(np.asarray(ratio)) != 0.0:
            _refuse(node, model, "random dropout (training_mode=1, ratio > 0) is not supported")
    nodes = [helper.make_node("Identity", [node.input[0]], [node.output[0]],
                              name=f"{node.name}{GUARDED}")]
    inits = []
    if len(node.output) > 1 and node.output[1]:
        shape = _shape(model, node.input[0])
        if shape is None:
            return None
        inits.append(numpy_helper.from_array(np.ones(shape, bool), node.output[1]))
    return nodes, inits


def is_inf(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """IsInf: TVM ignores detect_negative / detect_positive."""
    if node.name.endswith(GUARDED):
        return None
    a = _attrs(node)
    neg, pos = int(a.get("detect_negative", 1)), int(a.get("detect_positive", 1))
    if neg and pos:
        return None
    n = names(node.name or "isinf")
    zero = names(f"{n}_zero")
    tp = _type(model, node.input[0])
    if tp is None:
        return None
    dtype = helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type)
    inf = helper.make_node("IsInf", [node.input[0]], [f"{n}_inf"], name=f"{n}{GUARDED}")
    if not neg and not pos:  # detects nothing: all false
        return [inf, helper.make_node("Not", [f"{n}_inf"], [f"{n}_ninf"]),
                helper.make_node("And", [f"{n}_inf", f"{n}_ninf"], [node.output[0]])], []
    cmp = "Greater" if pos else "Less"
    return [inf, helper.make_node(cmp, [node.input[0], zero], [f"{n}_sign"]),
            helper.make_node("And", [f"{n}_inf", f"{n}_sign"], [node.output[0]])], \
        [numpy_helper.from_array(np.array(0, dtype), zero)]


def bit_shift(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """BitShift by amounts outside [0, bits): ONNX gives 0 (or -1 for a negative value shifted
    right); TVM's shifts do not. Shift amounts are clamped and those cases selected."""
    if node.name.endswith(GUARDED):
        return None
    tp = _type(model, node.input[0])
    if tp is None:
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))
    bits = dtype.itemsize * 8
    shift = _const(model, node.input[1])
    if shift is not None and np.all((shift >= 0) & (shift < bits)):
        return None
    right = _attrs(node).get("direction", b"") in (b"RIGHT", "RIGHT")
    n = names(node.name or "bitshift")
    c = {k: names(f"{n}_{k}") for k in ("zero", "bits", "minus1")}
    inits = [numpy_helper.from_array(np.array(0, dtype), c["zero"]),
             numpy_helper.from_array(np.array(bits, dtype), c["bits"])]
    nodes = [
        helper.make_node("Less", [node.input[1], c["bits"]], [f"{n}_lt"]),
        helper.make_node("Less", [node.input[1], c["zero"]], [f"{n}_neg"]),
        helper.make_node("Not", [f"{n}_neg"], [f"{n}_nonneg"]),
        helper.make_node("And", [f"{n}_lt", f"{n}_nonneg"], [f"{n}_ok"]),
        helper.make_node("Where", [f"{n}_ok", node.input[1], c["zero"]], [f"{n}_b"]),
        helper.make_node("BitShift", [node.input[0], f"{n}_b"], [f"{n}_shifted"],
                         name=f"{n}{GUARDED}", direction="RIGHT" if right else "LEFT"),
    ]
    edge = c["zero"]
    if right and dtype.kind == "i":
        inits.append(numpy_helper.from_array(np.array(-1, dtype), c["minus1"]))
        nodes += [helper.make_node("Less", [node.input[0], c["zero"]], [f"{n}_xneg"]),
                  helper.make_node("Where", [f"{n}_xneg", c["minus1"], c["zero"]], [f"{n}_e"])]
        edge = f"{n}_e"
    nodes.append(helper.make_node("Where", [f"{n}_ok", f"{n}_shifted", edge], [node.output[0]]))
    return nodes, inits


def conv_transpose(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """ConvTranspose with ``output_shape``: TVM ignores it (a wrong output shape); turned into
    explicit pads when they come out non-negative, refused otherwise."""
    a = _attrs(node)
    if "output_shape" not in a:
        return None
    x = _shape(model, node.input[0])
    w = _shape(model, node.input[1])
    if x is None or w is None:
        _refuse(node, model, "output_shape needs static input and weight shapes")
    sp = len(x) - 2
    out = list(a["output_shape"])[-sp:]
    strides = list(a.get("strides", [1] * sp))
    dil = list(a.get("dilations", [1] * sp))
    opad = list(a.get("output_padding", [0] * sp))
    kernel = list(a.get("kernel_shape", w[2:]))
    upper = a.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", "SAME_UPPER")
    begin, end = [], []
    for i in range(sp):
        total = strides[i] * (x[2 + i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
        if total < 0:
            _refuse(node, model, f"output_shape {out} needs negative padding")
        first = total // 2 if upper else total - total // 2
        begin.append(first)
        end.append(total - first)
    new = helper.make_node("ConvTranspose", list(node.input), list(node.output), name=node.name)
    for attr in node.attribute:
        if attr.name not in ("output_shape", "auto_pad", "pads"):
            new.attribute.append(attr)
    new.attribute.append(helper.make_attribute("pads", begin + end))
    return [new], []


def nms(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """NonMaxSuppression: ONNX suppresses boxes with IoU > threshold, TVM with IoU >= threshold.
    A constant float32 threshold is moved up by one ulp: ``iou >= next(t)`` is ``iou > t``."""
    if node.name.endswith(GUARDED):
        return None
    inputs = list(node.input) + [""] * (5 - len(node.input))
    if not inputs[2]:
        return None  # max_output_boxes_per_class defaults to 0: no output at all
    t = _const(model, inputs[3]) if inputs[3] else np.array([0.0], np.float32)
    if t is None:
        _refuse(node, model, "iou_threshold is computed at run time")
    t32 = np.asarray(t, np.float32)
    name = names(f"{node.name or 'nms'}_iou_next")
    nxt = np.nextafter(t32, np.float32(np.inf)).astype(np.float32)
    new = helper.make_node("NonMaxSuppression", inputs[:3] + [name] + inputs[4:5],
                           list(node.output), name=f"{node.name}{GUARDED}")
    new.attribute.extend(node.attribute)
    return [new], [numpy_helper.from_array(nxt.reshape(t32.shape), name)]


def reduce_empty(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """A reduction over an axis of size 0 is the reduction's identity (inf for ReduceMin...):
    replaced by that constant (TVM returns garbage)."""
    x = _shape(model, node.input[0]) if node.input else None
    out = _shape(model, node.output[0])
    if x is None or out is None or 0 not in x or 0 in out:
        return None
    identity = {"ReduceMin": np.inf, "ReduceMax": -np.inf, "ReduceSum": 0.0,
                "ReduceProd": 1.0, "ReduceSumSquare": 0.0, "ReduceL1": 0.0, "ReduceL2": 0.0,
                "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf, "ReduceMean": np.nan}
    tp = _type(model, node.input[0])
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))
    value = identity[node.op_type]
    if dtype == np.bool_:
        value = node.op_type == "ReduceMin"
    if dtype.kind in "iu" and not np.isfinite(value):
        info = np.iinfo(dtype)
        value = info.max if value > 0 else info.min
    return [], [numpy_helper.from_array(np.full(out, value, dtype), node.output[0])]


def reduce_extreme(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """ReduceMax over values that are all -inf (ReduceMin: all +inf): TVM starts from the
    largest finite value and returns it instead of the infinity (e.g. fully masked attention
    rows). Such slices are selected back to the infinity."""
    if node.name.endswith(GUARDED):
        return None
    empty = reduce_empty(node, model, names)
    if empty is not None:
        return empty
    tp = _type(model, node.input[0])
    if tp is None or tp.tensor_type.elem_type not in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16):
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))
    inf = -np.inf if node.op_type == "ReduceMax" else np.inf
    n = names(node.name or node.op_type)
    c_inf = names(f"{n}_inf")
    rest = list(node.input[1:])

    def reduce(src: str, out: str, tag: str) -> onnx.NodeProto:
        r = helper.make_node("ReduceMax", [src, *rest], [out], name=f"{n}_{tag}{GUARDED}")
        r.attribute.extend(node.attribute)
        return r

    main = helper.make_node(node.op_type, list(node.input), [f"{n}_r"], name=f"{n}{GUARDED}")
    main.attribute.extend(node.attribute)
    nodes = [
        main,
        helper.make_node("Equal", [node.input[0], c_inf], [f"{n}_isinf"]),
        helper.make_node("Not", [f"{n}_isinf"], [f"{n}_finite"]),
        helper.make_node("Cast", [f"{n}_finite"], [f"{n}_f"], to=onnx.TensorProto.FLOAT),
        reduce(f"{n}_f", f"{n}_anyf", "any"),
        helper.make_node("Cast", [f"{n}_anyf"], [f"{n}_any"], to=onnx.TensorProto.BOOL),
        helper.make_node("Where", [f"{n}_any", f"{n}_r", c_inf], [node.output[0]]),
    ]
    return nodes, [numpy_helper.from_array(np.array(inf, dtype), c_inf)]


def resize(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """Resize: TVM has no antialiasing, and with ``scales`` it maps coordinates with
    out/in instead of the given scale; such cases are refused."""
    a = _attrs(node)
    if a.get("antialias", 0):
        _refuse(node, model, "antialias=1 is not supported")
    inputs = list(node.input) + [""] * 4
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if inputs[2] and mode != "nearest":
        scales = _const(model, inputs[2])
        x = _shape(model, inputs[0])
        if scales is not None and scales.size and x is not None:
            prod = np.asarray(x, np.float64) * scales.astype(np.float64)
            if not np.allclose(prod, np.round(prod)) or np.any(scales < 1):
                _refuse(node, model, f"{mode} resize by scales {scales.tolist()} that do not "
                        "divide the input evenly is not supported")
    return None


def roi_align(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """RoiAlign mode='max': TVM's pooling differs from ONNX's."""
    mode = _attrs(node).get("mode", b"avg")
    if mode in (b"max", "max"):
        _refuse(node, model, "mode='max' is not supported")
    return None


def space_to_depth(node: onnx.NodeProto, model: onnx.ModelProto, names: Names) -> Result:
    """SpaceToDepth with mode CRD: TVM only implements DCR."""
    mode = _attrs(node).get("mode", b"DCR")
    if mode not in (b"DCR", "DCR"):
        _refuse(node, model, f"mode={mode!r} is not supported")
    return None


GUARDS = {
    "BatchNormalization": batch_norm,
    "Dropout": dropout,
    "IsInf": is_inf,
    "BitShift": bit_shift,
    "ConvTranspose": conv_transpose,
    "NonMaxSuppression": nms,
    "Resize": resize,
    "RoiAlign": roi_align,
    "SpaceToDepth": space_to_depth,
    "ReduceMin": reduce_extreme,
    "ReduceMax": reduce_extreme,
    **{op: reduce_empty for op in ("ReduceSum", "ReduceProd",
                                   "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                                   "ReduceLogSumExp", "ReduceMean")},
}
