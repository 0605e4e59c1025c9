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


# ----------------------------------------------------------------------------------------
# consistency checks: models onnxruntime refuses at run time, refused before import
# ----------------------------------------------------------------------------------------
# ONNX's strict shape inference checks attribute lengths and ranks, but not whether an
# attribute agrees with a weight (a Conv's kernel_shape 5x3 over a 3x3 weight), whether a
# group divides the channels, or whether a constant index or shape fits its tensor.
# onnxruntime refuses such models when it runs them; TVM's importer quietly follows one of
# the two and compiles. Each check below takes the node and a :class:`_Facts` view of the
# model and returns the reason the node is invalid, or None.

class _Facts:
    """Static shapes and constant values of a model's main graph, by value name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from .graph import value_types

        self.types = value_types(model)
        self.consts: dict[str, object] = {}  # TensorProto / Constant node, then decoded
        for t in model.graph.initializer:
            self.consts[t.name] = t
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                self.consts[node.output[0]] = node

    def dims(self, name: str) -> tuple[int | None, ...] | None:
        """The value's dims (None where unknown), or None when even its rank is unknown."""
        tp = self.types.get(name)
        if tp is None or tp.WhichOneof("value") != "tensor_type" or \
                not tp.tensor_type.HasField("shape"):
            return None
        return tuple(int(d.dim_value) if d.HasField("dim_value") else None
                     for d in tp.tensor_type.shape.dim)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output (decoded on demand)."""
        src = self.consts.get(name)
        if src is None or isinstance(src, np.ndarray):
            return src
        try:
            if isinstance(src, onnx.TensorProto):
                value = numpy_helper.to_array(src)
            else:
                a = {x.name: helper.get_attribute_value(x) for x in src.attribute}
                if "value" in a:
                    value = numpy_helper.to_array(a["value"])
                elif "value_ints" in a or "value_int" in a:
                    value = np.array(a.get("value_ints", a.get("value_int")), np.int64)
                else:
                    return None
        except Exception:  # noqa: BLE001 - an undecodable constant is not this check's business
            return None
        self.consts[name] = value
        return value


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _fmt(values) -> str:
    return "[" + ", ".join("?" if v is None else str(v) for v in values) + "]"


def _window(a: dict, spatial: int | None, kernel: list[int] | None) -> str | None:
    """strides, dilations, pads (and their lengths) of a conv or pooling node."""
    for key in ("strides", "dilations"):
        if key in a:
            v = list(a[key])
            if spatial is not None and len(v) != spatial:
                return f"{key} {v} has {len(v)} values; the input has {spatial} spatial axes"
            if any(x < 1 for x in v):
                return f"{key} {v} must be positive"
    if "pads" in a:
        v = list(a["pads"])
        if spatial is not None and len(v) != 2 * spatial:
            return f"pads {v} has {len(v)} values; expected {2 * spatial} (begin and end " \
                   f"of {spatial} spatial axes)"
        if any(x < 0 for x in v):
            return f"pads {v} must not be negative"
    if kernel is not None:
        if spatial is not None and len(kernel) != spatial:
            return f"kernel_shape {kernel} has {len(kernel)} values; the input has " \
                   f"{spatial} spatial axes"
        if any(k < 1 for k in kernel):
            return f"kernel_shape {kernel} must be positive"
    return None


def _auto_pad(a: dict) -> str:
    v = a.get("auto_pad", b"NOTSET")
    return v.decode() if isinstance(v, bytes) else str(v)


def _too_small(a: dict, x: tuple, kernel: list[int], what: str) -> str | None:
    """The (dilated) kernel must fit the explicitly padded input on every spatial axis."""
    if _auto_pad(a) != "NOTSET" or len(x) < 3:
        return None
    sp = len(x) - 2
    pads = list(a.get("pads", [0] * 2 * sp))
    dil = list(a.get("dilations", [1] * sp))
    for i in range(min(sp, len(kernel))):
        if x[2 + i] is None:
            continue
        span = x[2 + i] + pads[i] + pads[i + sp]
        reach = dil[i] * (kernel[i] - 1) + 1
        if reach > span:
            return f"the {what} spans {reach} on spatial axis {i} but the padded input has " \
                   f"only {span}: the output would be empty"
    return None


def check_conv(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Conv: kernel_shape equals the weight's kernel dims; the input has weight channels x
    group channels; group divides the output channels; bias has one value per output channel;
    strides, dilations, pads have one value per spatial axis (pads two) and are in range."""
    a = _attrs(node)
    x, w = facts.dims(_input(node, 0)), facts.dims(_input(node, 1))
    spatial = len(w) - 2 if w is not None else (len(x) - 2 if x is not None else None)
    if spatial is not None and spatial < 1:
        return f"weight '{_input(node, 1)}' has rank {len(w)}; a Conv weight is " \
               "[M, C/group, k1, ...] (rank >= 3)"
    kernel = list(a["kernel_shape"]) if "kernel_shape" in a else None
    why = _window(a, spatial, kernel)
    if why:
        return why
    group = int(a.get("group", 1))
    if group < 1:
        return f"group {group} must be positive"
    if w is None:
        return None
    if kernel is not None and all(k is not None for k in w[2:]) and kernel != list(w[2:]):
        return f"kernel_shape {kernel} disagrees with weight '{_input(node, 1)}' of shape " \
               f"{_fmt(w)} (kernel {_fmt(w[2:])})"
    if w[0] is not None and w[0] % group:
        return f"group {group} does not divide the {w[0]} output channels of weight " \
               f"'{_input(node, 1)}' {_fmt(w)}"
    if x is not None and len(x) > 1 and x[1] is not None and w[1] is not None \
            and x[1] != w[1] * group:
        return f"input '{_input(node, 0)}' has {x[1]} channels but weight " \
               f"'{_input(node, 1)}' {_fmt(w)} with group {group} expects {w[1] * group}"
    b = facts.dims(_input(node, 2)) if _input(node, 2) else None
    if b is not None and (len(b) != 1 or None not in (b[0], w[0]) and b[0] != w[0]):
        return f"bias '{_input(node, 2)}' has shape {_fmt(b)}; expected [{w[0]}] " \
               "(one value per output channel)"
    if x is not None and len(x) == len(w) and None not in w[2:]:
        return _too_small(a, x, list(w[2:]), "kernel")
    return None


def check_conv_transpose(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """ConvTranspose: kernel_shape equals the weight's kernel dims; the input has as many
    channels as the weight's first axis, which group divides; bias has M values."""
    a = _attrs(node)
    x, w = facts.dims(_input(node, 0)), facts.dims(_input(node, 1))
    spatial = len(w) - 2 if w is not None else (len(x) - 2 if x is not None else None)
    if spatial is not None and spatial < 1:
        return f"weight '{_input(node, 1)}' has rank {len(w)}; a ConvTranspose weight is " \
               "[C, M/group, k1, ...] (rank >= 3)"
    kernel = list(a["kernel_shape"]) if "kernel_shape" in a else None
    why = _window(a, spatial, kernel)
    if why:
        return why
    for key in ("output_padding", "output_shape"):
        if key in a and spatial is not None and len(a[key]) not in (spatial, spatial + 2):
            return f"{key} {list(a[key])} has {len(a[key])} values; the input has " \
                   f"{spatial} spatial axes"
    group = int(a.get("group", 1))
    if group < 1:
        return f"group {group} must be positive"
    if w is None:
        return None
    if kernel is not None and all(k is not None for k in w[2:]) and kernel != list(w[2:]):
        return f"kernel_shape {kernel} disagrees with weight '{_input(node, 1)}' of shape " \
               f"{_fmt(w)} (kernel {_fmt(w[2:])})"
    if x is not None and len(x) > 1 and None not in (x[1], w[0]) and x[1] != w[0]:
        return f"input '{_input(node, 0)}' has {x[1]} channels but weight " \
               f"'{_input(node, 1)}' {_fmt(w)} expects {w[0]}"
    if w[0] is not None and w[0] % group:
        return f"group {group} does not divide the {w[0]} input channels of weight " \
               f"'{_input(node, 1)}' {_fmt(w)}"
    b = facts.dims(_input(node, 2)) if _input(node, 2) else None
    m = w[1] * group if w[1] is not None else None
    if b is not None and m is not None and (len(b) != 1 or b[0] not in (None, m)):
        return f"bias '{_input(node, 2)}' has shape {_fmt(b)}; expected [{m}] " \
               "(one value per output channel)"
    return None


def check_gemm(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Gemm: A and B are matrices whose inner dims agree; C broadcasts to [M, N]."""
    a = _attrs(node)
    ma, mb = facts.dims(_input(node, 0)), facts.dims(_input(node, 1))
    for name, m in ((_input(node, 0), ma), (_input(node, 1), mb)):
        if m is not None and len(m) != 2:
            return f"input '{name}' has rank {len(m)} ({_fmt(m)}); Gemm takes matrices"
    if ma is None or mb is None:
        return None
    rows, k1 = (ma[1], ma[0]) if a.get("transA", 0) else ma
    k2, cols = (mb[1], mb[0]) if a.get("transB", 0) else mb
    if None not in (k1, k2) and k1 != k2:
        return f"inner dims disagree: A '{_input(node, 0)}' {_fmt(ma)} (transA=" \
               f"{a.get('transA', 0)}) and B '{_input(node, 1)}' {_fmt(mb)} (transB=" \
               f"{a.get('transB', 0)}) give K = {k1} and {k2}"
    c = facts.dims(_input(node, 2)) if _input(node, 2) else None
    if c is not None:
        if len(c) > 2:
            return f"C '{_input(node, 2)}' has rank {len(c)}; it must broadcast to " \
                   f"[{rows}, {cols}]"
        for have, want in zip(reversed(c), (cols, rows)):
            if None not in (have, want) and have not in (1, want):
                return f"C '{_input(node, 2)}' of shape {_fmt(c)} does not broadcast to " \
                       f"[{rows}, {cols}]"
    return None


def check_matmul(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """MatMul: the inner dims agree when both are static."""
    ma, mb = facts.dims(_input(node, 0)), facts.dims(_input(node, 1))
    if ma is None or mb is None:
        return None
    if not ma or not mb:
        return "MatMul does not take scalars"
    k1 = ma[-1]
    k2 = mb[0] if len(mb) == 1 else mb[-2]
    if None not in (k1, k2) and k1 != k2:
        return f"inner dims disagree: '{_input(node, 0)}' {_fmt(ma)} and " \
               f"'{_input(node, 1)}' {_fmt(mb)} ({k1} vs {k2})"
    return None


def check_pool(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """MaxPool / AveragePool / LpPool: kernel_shape given, positive, one per spatial axis;
    pads smaller than the kernel; the kernel fits the padded input."""
    a = _attrs(node)
    x = facts.dims(_input(node, 0))
    if "kernel_shape" not in a:
        return "kernel_shape is required"
    kernel = list(a["kernel_shape"])
    if x is not None and len(x) < 3:
        return f"input '{_input(node, 0)}' has rank {len(x)}; pooling needs [N, C, D1, ...]"
    spatial = len(x) - 2 if x is not None else len(kernel)
    why = _window(a, spatial, kernel)
    if why:
        return why
    pads = list(a.get("pads", []))
    for i, k in enumerate(kernel):
        if pads and (pads[i] >= k or pads[i + len(kernel)] >= k):
            return f"pads {pads} must be smaller than kernel_shape {kernel}"
    return _too_small(a, x, kernel, "kernel") if x is not None else None


def check_global_pool(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """GlobalAveragePool / GlobalMaxPool / GlobalLpPool: an [N, C, D1, ...] input."""
    x = facts.dims(_input(node, 0))
    if x is not None and len(x) < 3:
        return f"input '{_input(node, 0)}' has rank {len(x)}; pooling needs [N, C, D1, ...]"
    return None


def check_reshape(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Reshape with a constant shape: at most one -1, nothing below -1, and the element count
    of the input when it is static."""
    shape = facts.const(_input(node, 1))
    if shape is None:
        return None
    target = [int(v) for v in np.asarray(shape).reshape(-1)]
    if any(v < -1 for v in target):
        return f"shape {target} holds a value below -1"
    if target.count(-1) > 1:
        return f"shape {target} holds more than one -1"
    allowzero = int(_attrs(node).get("allowzero", 0))
    if allowzero and 0 in target and -1 in target:
        return f"shape {target} holds both 0 and -1 with allowzero=1"
    x = facts.dims(_input(node, 0))
    if x is None:
        return None
    dims: list[int | None] = []
    for i, v in enumerate(target):
        if v == 0 and not allowzero:
            if i >= len(x):
                return f"shape {target} copies axis {i} (a 0) but input " \
                       f"'{_input(node, 0)}' has rank {len(x)}"
            dims.append(x[i])
        else:
            dims.append(v)
    if None in x or None in dims:
        return None
    size = int(np.prod(x, dtype=np.int64))
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if -1 in dims:
        if (known == 0 and size != 0) or (known and size % known):
            return f"input '{_input(node, 0)}' {_fmt(x)} ({size} elements) cannot be " \
                   f"reshaped to {target}"
    elif known != size:
        return f"input '{_input(node, 0)}' {_fmt(x)} has {size} elements; shape {target} " \
               f"holds {known}"
    return None


def check_gather(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Gather: axis within the data's rank; constant indices within the axis."""
    x = facts.dims(_input(node, 0))
    if x is None:
        return None
    axis = int(_attrs(node).get("axis", 0))
    if not -len(x) <= axis < len(x):
        return f"axis {axis} is out of range for input '{_input(node, 0)}' of rank {len(x)}"
    size = x[axis]
    idx = facts.const(_input(node, 1))
    if size is None or idx is None or idx.size == 0 or idx.dtype.kind not in "iu":
        return None
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -size or hi >= size:
        bad = lo if lo < -size else hi
        return f"index {bad} of '{_input(node, 1)}' is out of range [{-size}, {size - 1}] " \
               f"for axis {axis} of '{_input(node, 0)}' {_fmt(x)}"
    return None


CHECKS: dict[str, Callable[[onnx.NodeProto, _Facts], str | None]] = {
    "Conv": check_conv,
    "ConvTranspose": check_conv_transpose,
    "Gemm": check_gemm,
    "MatMul": check_matmul,
    "MaxPool": check_pool,
    "AveragePool": check_pool,
    "LpPool": check_pool,
    "GlobalAveragePool": check_global_pool,
    "GlobalMaxPool": check_global_pool,
    "GlobalLpPool": check_global_pool,
    "Reshape": check_reshape,
    "Gather": check_gather,
}


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How an error names a node: ``Conv node 'name'``, or its position when unnamed."""
    if node.name:
        return f"{node.op_type} node '{node.name}'"
    return f"{node.op_type} node #{index} (unnamed)"


def check_consistency(model: onnx.ModelProto, source: str) -> None:
    """Refuse a model whose attributes, weights or constant inputs contradict each other
    (see :data:`CHECKS`); shapes should be inferred first.

    Raises
    ------
    ModelLoadError
        Naming the model, the op, the node and what disagrees.
    """
    from compiler.errors import ModelLoadError

    facts = _Facts(model)
    for i, node in enumerate(model.graph.node):
        check = CHECKS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        why = check(node, facts) if check else None
        if why:
            raise ModelLoadError(f"invalid ONNX model {source}: {node_label(node, i)}: {why}")
