"""Sequence ops eliminated before import, where each sequence's structure is static.

A sequence built by ``SequenceEmpty``, ``SequenceConstruct``, ``SequenceInsert``,
``SequenceErase`` and ``SplitToSequence`` with constant positions and splits (constant after
hwcc's folding) is a known list of tensors. :func:`eliminate_sequences` tracks every sequence
value of the main graph as a list of tensor names and rewrites

* ``SequenceAt`` into an ``Identity`` of the selected tensor,
* ``SequenceLength`` into a constant,
* ``ConcatFromSequence`` into ``Concat`` (of ``Unsqueeze`` d tensors for ``new_axis=1``),
* ``SplitToSequence`` into ``Split`` (then ``Squeeze`` for ``keepdims=0``),

and drops the ops that only build sequences. Positions count as ONNX says: a negative
position counts from the end (``-1`` inserts before the last element, erases the last one).
TVM's importer gets negative insert positions wrong and cannot take the length of a sequence
that comes from ``SplitToSequence``; after this step it never sees a sequence.

The rewrite is all or nothing: while some sequence is not static (a position that folding may
still make constant), the graph is left alone; with ``strict=True`` (the last call in
:func:`compiler.frontend.prep.prepare`) such a sequence is refused with an
:class:`~compiler.errors.UnsupportedOpError` naming its node.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import UnsupportedOpError

from .graph import NameGen, all_inputs, static_shape, value_types

logger = logging.getLogger(__name__)

#: Ops that build a sequence from tensors or other sequences.
PRODUCERS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase",
                       "SplitToSequence"})
#: Ops that read a sequence and produce a tensor.
CONSUMERS = frozenset({"SequenceAt", "SequenceLength", "ConcatFromSequence"})
SEQUENCE_OPS = PRODUCERS | CONSUMERS


class NotStatic(Exception):
    """A sequence whose structure is not known before run time; carries the node."""

    def __init__(self, node: onnx.NodeProto, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


class _Eliminator:
    """One pass over the main graph; :meth:`run` returns the new node list."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = _opset(model)
        self.names = NameGen(model)
        self.types = value_types(model)
        self.static_shape = static_shape
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.seqs: dict[str, list[str]] = {}
        self.inits: list[onnx.TensorProto] = []

    # -- helpers -----------------------------------------------------------------------
    def _const_int(self, node: onnx.NodeProto, slot: int, what: str) -> int | None:
        if len(node.input) <= slot or not node.input[slot]:
            return None
        value = self.consts.get(node.input[slot])
        if value is None:
            raise NotStatic(node, f"its {what} '{node.input[slot]}' is computed at run time; "
                                  "only constant positions are supported")
        if value.size != 1:
            raise NotStatic(node, f"its {what} has {value.size} values; expected one")
        return int(value.reshape(-1)[0])

    def _seq(self, node: onnx.NodeProto) -> list[str]:
        name = node.input[0]
        if name not in self.seqs:
            raise NotStatic(node, f"its input sequence '{name}' is not built in this graph "
                                  "from tensors (a graph input or a control-flow result)")
        return self.seqs[name]

    def _const(self, base: str, value: np.ndarray) -> str:
        name = self.names(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    @staticmethod
    def _position(node: onnx.NodeProto, pos: int, n: int, upper: int) -> int:
        """``pos`` in [-n, upper], made non-negative, or NotStatic."""
        if not -n <= pos <= upper:
            raise NotStatic(node, f"position {pos} is out of range [{-n}, {upper}] for a "
                                  f"sequence of {n} tensors")
        return pos + n if pos < 0 else pos

    # -- the ops -----------------------------------------------------------------------
    def _split_to_sequence(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = self.static_shape(self.types.get(node.input[0]))
        if shape is None:
            raise NotStatic(node, f"its input '{node.input[0]}' has no static shape")
        axis = int(attrs.get("axis", 0))
        axis = axis + len(shape) if axis < 0 else axis
        dim = shape[axis]
        keepdims = int(attrs.get("keepdims", 1))
        if len(node.input) > 1 and node.input[1]:
            split = self.consts.get(node.input[1])
            if split is None:
                raise NotStatic(node, f"its split '{node.input[1]}' is computed at run time; "
                                      "only constant splits are supported")
            keepdims = 1  # ignored when split is given
            if split.ndim == 0:
                step = int(split)
                if step <= 0:
                    raise NotStatic(node, f"split {step} must be positive")
                sizes = [step] * (dim // step) + ([dim % step] if dim % step else [])
            else:
                sizes = [int(s) for s in split.reshape(-1)]
        else:
            sizes = [1] * dim
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise NotStatic(node, f"split sizes {sizes} do not add up to dimension {dim}")
        if not sizes:  # a dimension of 0 without a split: an empty sequence
            self.seqs[node.output[0]] = []
            return []
        base = node.output[0] or "split_to_sequence"
        parts = [self.names(f"{base}_part{i}") for i in range(len(sizes))]
        nodes = []
        if len(sizes) == 1:
            nodes.append(helper.make_node("Identity", [node.input[0]], parts))
        elif self.opset >= 13:
            split_name = self._const(f"{base}_split", np.array(sizes, np.int64))
            nodes.append(helper.make_node("Split", [node.input[0], split_name], parts,
                                          axis=axis))
        else:
            nodes.append(helper.make_node("Split", [node.input[0]], parts, axis=axis,
                                          split=sizes))
        if not keepdims:
            squeezed = [self.names(f"{base}_item{i}") for i in range(len(sizes))]
            for part, out in zip(parts, squeezed):
                nodes.append(self._axis_node("Squeeze", part, out, axis))
            parts = squeezed
        self.seqs[node.output[0]] = parts
        return nodes

    def _axis_node(self, op: str, x: str, y: str, axis: int) -> onnx.NodeProto:
        """Squeeze/Unsqueeze of one axis, in the form the model's opset takes."""
        if self.opset >= 13:
            axes = self._const(f"{y}_axes", np.array([axis], np.int64))
            return helper.make_node(op, [x, axes], [y])
        return helper.make_node(op, [x], [y], axes=[axis])

    def _concat_from_sequence(self, node: onnx.NodeProto, items: list[str]
                              ) -> list[onnx.NodeProto]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "axis" not in attrs:
            raise NotStatic(node, "the required attribute 'axis' is missing")
        if not items:
            raise NotStatic(node, "the sequence is empty (nothing to concatenate)")
        axis = int(attrs["axis"])
        if not int(attrs.get("new_axis", 0)):
            return [helper.make_node("Concat", items, [node.output[0]], axis=axis)]
        nodes, expanded = [], []
        for i, item in enumerate(items):
            out = self.names(f"{node.output[0]}_unsqueezed{i}")
            nodes.append(self._axis_node("Unsqueeze", item, out, axis))
            expanded.append(out)
        nodes.append(helper.make_node("Concat", expanded, [node.output[0]], axis=axis))
        return nodes

    def _rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        op, out = node.op_type, node.output[0]
        if op == "SequenceEmpty":
            self.seqs[out] = []
        elif op == "SequenceConstruct":
            self.seqs[out] = list(node.input)
        elif op == "SequenceInsert":
            items = list(self._seq(node))
            pos = self._const_int(node, 2, "position")
            pos = len(items) if pos is None else self._position(node, pos, len(items),
                                                                len(items))
            items.insert(pos, node.input[1])
            self.seqs[out] = items
        elif op == "SequenceErase":
            items = list(self._seq(node))
            pos = self._const_int(node, 1, "position")
            pos = self._position(node, -1 if pos is None else pos, len(items), len(items) - 1)
            del items[pos]
            self.seqs[out] = items
        elif op == "SplitToSequence":
            return self._split_to_sequence(node)
        elif op == "SequenceAt":
            items = self._seq(node)
            pos = self._const_int(node, 1, "position")
            if pos is None:
                raise NotStatic(node, "the required input 'position' is missing")
            pos = self._position(node, pos, len(items), len(items) - 1)
            return [helper.make_node("Identity", [items[pos]], [out])]
        elif op == "SequenceLength":
            value = helper.make_tensor(f"{out}_value", onnx.TensorProto.INT64, [],
                                       [len(self._seq(node))])
            return [helper.make_node("Constant", [], [out], value=value)]
        elif op == "ConcatFromSequence":
            return self._concat_from_sequence(node, self._seq(node))
        return []

    def run(self) -> list[onnx.NodeProto]:
        g = self.model.graph
        new_nodes: list[onnx.NodeProto] = []
        for node in g.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in SEQUENCE_OPS:
                used = all_inputs(node) & set(self.seqs)
                if used:
                    raise NotStatic(node, f"it reads the sequence '{min(used)}'; only "
                                          f"{', '.join(sorted(CONSUMERS))} can")
                new_nodes.append(node)
                continue
            for i, name in enumerate(node.input):
                if i > 0 and name in self.seqs:
                    raise NotStatic(node, f"input {i} '{name}' is a sequence")
            new_nodes.extend(self._rewrite(node))
        for o in g.output:
            if o.name in self.seqs:
                producer = next(n for n in g.node if o.name in n.output)
                raise NotStatic(producer, f"output '{o.name}' is a sequence; only tensor "
                                          "outputs are supported")
        return new_nodes


def has_sequences(model: onnx.ModelProto) -> bool:
    return any(n.domain in ("", "ai.onnx") and n.op_type in SEQUENCE_OPS
               for n in model.graph.node)


def eliminate_sequences(model: onnx.ModelProto, strict: bool = False
                        ) -> tuple[onnx.ModelProto, int]:
    """Replace the sequence ops of ``model``'s main graph by tensor ops.

    Returns the model (``model`` itself when nothing changed) and the number of sequence
    ops removed.

    Raises
    ------
    UnsupportedOpError
        With ``strict=True``, when some sequence is not static, naming the node and why.
    """
    if not has_sequences(model):
        return model, 0
    elim = _Eliminator(model)
    try:
        nodes = elim.run()
    except NotStatic as err:
        if not strict:
            logger.debug("sequences kept for now: %s '%s': %s", err.node.op_type,
                         err.node.name, err.reason)
            return model, 0
        raise UnsupportedOpError(err.node.op_type, err.node.name, _opset(model),
                                 f"sequence not static: {err.reason}") from None
    removed = sum(1 for n in model.graph.node if n.op_type in SEQUENCE_OPS)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(elim.inits)
    # sequence-typed intermediate values are gone: drop their type annotations
    seq_values = set(elim.seqs)
    keep = [vi for vi in out.graph.value_info if vi.name not in seq_values]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    logger.info("eliminated %d sequence ops before import", removed)
    return out, removed
