"""Helpers over ONNX graphs shared by the frontend's rewrites: value types and static shapes,
fresh value names, and the inputs a node reads (its subgraphs' captures included)."""

from __future__ import annotations

import onnx
from onnx import helper


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Type (with shape when known) of every named value of the main graph."""
    g = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.WhichOneof("value") is not None:
            types[vi.name] = vi.type
    for t in g.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types


def static_shape(tp: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The shape of a tensor type when every dimension is a known integer."""
    if tp is None or tp.WhichOneof("value") != "tensor_type":
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def all_inputs(node: onnx.NodeProto) -> set[str]:
    """Inputs of a node including those its subgraphs capture from the outer scope."""
    names = set(node.input)
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            for inner in sub.node:
                names |= all_inputs(inner)
    return names


class NameGen:
    """Fresh, unique value names derived from a node's name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used = {v for n in model.graph.node for v in list(n.input) + list(n.output)}
        self.used |= {t.name for t in model.graph.initializer}
        self.used |= {v.name for v in model.graph.input}

    def __call__(self, base: str) -> str:
        i = 0
        while f"{base}__hwcc{i}" in self.used:
            i += 1
        name = f"{base}__hwcc{i}"
        self.used.add(name)
        return name


def nan_to_zero(x: str, elem: int, names) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing ``Where(IsNaN(x), 0, x)`` for a float value ``x`` of ONNX type
    ``elem``, and the name of the result: what a quantizer applies to ``round(x / scale)``
    before adding the zero point, so that NaN quantizes to the zero point on every CPU
    (:mod:`compiler.frontend.int_casts`)."""
    zero, isnan, out = names(f"{x}_zero"), names(f"{x}_isnan"), names(f"{x}_nn")
    return [helper.make_node("Constant", [], [zero],
                             value=helper.make_tensor(zero, elem, [], [0])),
            helper.make_node("IsNaN", [x], [isnan]),
            helper.make_node("Where", [isnan, zero, x], [out])], out
