"""Rewrites of the ONNX graph before import, for ops TVM's importer gets wrong.

Each rewrite is registered by op type in :data:`REWRITES` and receives the node, the model
(already shape-inferred) and a name generator; it returns replacement nodes and initializers,
or None to leave the node alone. Rewrites replace an op by an exact decomposition into ops
that TVM imports correctly: never an approximation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .decompose import DECOMPOSITIONS
from .graph import NameGen
from .guards import GUARDS
from .qop import QOP_REWRITES
from .rnn import recurrent

logger = logging.getLogger(__name__)

Rewrite = Callable[[onnx.NodeProto, onnx.ModelProto, "NameGen"],
                   "tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None"]


def _rank(model: onnx.ModelProto, value: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == value and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    for init in model.graph.initializer:
        if init.name == value:
            return len(init.dims)
    return None


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _reduce_mean(x: str, y: str, axes: list[int], model: onnx.ModelProto, names: NameGen,
                 inits: list[onnx.TensorProto]) -> onnx.NodeProto:
    if _opset(model) >= 18:
        axes_name = names("axes")
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        return helper.make_node("ReduceMean", [x, axes_name], [y], keepdims=1)
    return helper.make_node("ReduceMean", [x], [y], axes=axes, keepdims=1)


def layer_norm_with_stats(node: onnx.NodeProto, model: onnx.ModelProto, names: NameGen):
    """LayerNormalization whose Mean / InvStdDev outputs are used: TVM returns wrong values
    for them, so decompose it exactly as the ONNX function body does (stash_type float32)."""
    outputs = [o for o in node.output]
    if len(outputs) < 2 or not any(outputs[1:]):
        return None
    rank = _rank(model, node.input[0])
    if rank is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    eps = float(attrs.get("epsilon", 1e-5))
    axes = list(range(axis, rank))
    n = names(node.name or "layernorm")
    inits: list[onnx.TensorProto] = []
    mean = outputs[1] if len(outputs) > 1 and outputs[1] else f"{n}_mean"
    inv = outputs[2] if len(outputs) > 2 and outputs[2] else f"{n}_inv_std"
    eps_name = names("epsilon")
    inits.append(numpy_helper.from_array(np.array(eps, np.float32), eps_name))
    nodes = [
        _reduce_mean(node.input[0], mean, axes, model, names, inits),
        helper.make_node("Sub", [node.input[0], mean], [f"{n}_d"]),
        helper.make_node("Mul", [f"{n}_d", f"{n}_d"], [f"{n}_d2"]),
        _reduce_mean(f"{n}_d2", f"{n}_var", axes, model, names, inits),
        helper.make_node("Add", [f"{n}_var", eps_name], [f"{n}_var_eps"]),
        helper.make_node("Sqrt", [f"{n}_var_eps"], [f"{n}_std"]),
        helper.make_node("Reciprocal", [f"{n}_std"], [inv]),
        helper.make_node("Mul", [f"{n}_d", inv], [f"{n}_norm"]),
    ]
    y = outputs[0] or f"{n}_y"
    if len(node.input) > 2 and node.input[2]:
        nodes.append(helper.make_node("Mul", [f"{n}_norm", node.input[1]], [f"{n}_scaled"]))
        nodes.append(helper.make_node("Add", [f"{n}_scaled", node.input[2]], [y]))
    else:
        nodes.append(helper.make_node("Mul", [f"{n}_norm", node.input[1]], [y]))
    return nodes, inits


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def one_hot(node: onnx.NodeProto, model: onnx.ModelProto, names: NameGen):
    """OneHot as Equal(indices, arange(depth)) + Where: TVM only takes constant values and
    depth; depth must be constant here (after folding), values may be computed."""
    depth = _const(model, node.input[1])
    rank = _rank(model, node.input[0])
    if depth is None or rank is None or depth.size != 1:
        return None
    d = int(depth.reshape(-1)[0])
    axis = next((int(helper.get_attribute_value(a)) for a in node.attribute
                 if a.name == "axis"), -1)
    axis = axis + rank + 1 if axis < 0 else axis
    n = names(node.name or "onehot")
    c = {k: names(f"{n}_{k}") for k in ("zero", "d", "ax", "rng", "i0", "i1")}
    arange = np.arange(d, dtype=np.int64).reshape([d if i == axis else 1
                                                   for i in range(rank + 1)])
    inits = [numpy_helper.from_array(np.array(0, np.int64), c["zero"]),
             numpy_helper.from_array(np.array(d, np.int64), c["d"]),
             numpy_helper.from_array(arange, c["rng"]),
             numpy_helper.from_array(np.array(0, np.int64), c["i0"]),
             numpy_helper.from_array(np.array(1, np.int64), c["i1"])]
    if _opset(model) >= 13:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), c["ax"]))
        unsq = helper.make_node("Unsqueeze", [f"{n}_norm", c["ax"]], [f"{n}_u"])
    else:
        unsq = helper.make_node("Unsqueeze", [f"{n}_norm"], [f"{n}_u"], axes=[axis])
    nodes = [
        helper.make_node("Cast", [node.input[0]], [f"{n}_i"], to=onnx.TensorProto.INT64),
        helper.make_node("Less", [f"{n}_i", c["zero"]], [f"{n}_neg"]),
        helper.make_node("Add", [f"{n}_i", c["d"]], [f"{n}_wrapped"]),
        helper.make_node("Where", [f"{n}_neg", f"{n}_wrapped", f"{n}_i"], [f"{n}_norm"]),
        unsq,
        helper.make_node("Equal", [f"{n}_u", c["rng"]], [f"{n}_hot"]),
        helper.make_node("Gather", [node.input[2], c["i0"]], [f"{n}_off"], axis=0),
        helper.make_node("Gather", [node.input[2], c["i1"]], [f"{n}_on"], axis=0),
        helper.make_node("Where", [f"{n}_hot", f"{n}_on", f"{n}_off"], [node.output[0]]),
    ]
    return nodes, inits


def legacy_prelu(node: onnx.NodeProto, model: onnx.ModelProto, names: NameGen):
    """PRelu before opset 7: a 1-D slope of C values is per channel (axis 1), where numpy-style
    broadcasting (TVM) would align it with the last axis; the constant slope becomes
    [C, 1, ..., 1]."""
    if _opset(model) >= 7 or len(node.input) < 2:
        return None
    slope, rank = _const(model, node.input[1]), _rank(model, node.input[0])
    if slope is None or rank is None or slope.ndim != 1 or slope.size == 1 or rank < 3:
        return None
    name = names(node.input[1])
    init = numpy_helper.from_array(slope.reshape(slope.size, *([1] * (rank - 2))), name)
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = name
    return [new], [init]


REWRITES: dict[str, Rewrite] = {
    "PRelu": legacy_prelu,
    "LayerNormalization": layer_norm_with_stats,
    "LSTM": recurrent,  # no converter in TVM: unrolled over the static sequence length
    "GRU": recurrent,
    "RNN": recurrent,
    "OneHot": one_hot,  # TVM: constant depth and values only
}

# QOperator ops (QLinearConv, QLinearMatMul, ConvInteger) become QDQ: see qop.py
REWRITES.update(QOP_REWRITES)
# Exact decompositions of ops TVM lacks or refuses (Swish, EyeLike, LpNormalization...)
REWRITES.update(DECOMPOSITIONS)
# Cases where TVM is silently wrong: exact rewrites or clear refusals (guards.py)
for _op, _guard in GUARDS.items():
    REWRITES.setdefault(_op, _guard)


def _iter_rewrites(model: onnx.ModelProto) -> Iterator[tuple[int, list, list]]:
    names = NameGen(model)
    for i, node in enumerate(model.graph.node):
        rule = REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            continue
        result = rule(node, model, names)
        if result is not None:
            yield i, result[0], result[1]


def apply_rewrites(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every applicable rewrite applied (or ``model`` itself)."""
    plan = list(_iter_rewrites(model))
    if not plan:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_index = {i: (nodes, inits) for i, nodes, inits in plan}
    new_nodes = []
    for i, node in enumerate(model.graph.node):
        if i in by_index:
            new_nodes.extend(by_index[i][0])
            out.graph.initializer.extend(by_index[i][1])
            logger.info("rewrote %s node '%s' before import", node.op_type, node.name)
        else:
            new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return out
