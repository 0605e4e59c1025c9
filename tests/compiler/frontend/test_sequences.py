"""Sequence ops eliminated before import (compiler/onnx_sequences.py), each case compared
with onnx.reference.ReferenceEvaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.errors import UnsupportedOpError
from compiler.frontend import load_model
from compiler.frontend.sequences import SEQUENCE_OPS, eliminate_sequences

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, consts=(), opset=17):
    graph = helper.make_graph(nodes, "seq", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds, tmp_path: Path) -> None:
    want = ReferenceEvaluator(model).run(None, feeds)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)
    for out, w in zip(model.graph.output, want):
        w = np.asarray(w)
        assert got[out.name].shape == w.shape, out.name
        assert got[out.name].dtype == w.dtype, out.name
        np.testing.assert_array_equal(got[out.name], w, err_msg=out.name)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_negative_positions_and_insert_without_position(tmp_path: Path) -> None:
    # erase -3 (the first of 3), insert at -1 (before the last), append with no position,
    # read at -2, and the length: the cases TVM counted differently from ONNX
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b", "c"], ["s1"]),
        helper.make_node("SequenceErase", ["s1", "m3"], ["s2"]),   # [b, c]
        helper.make_node("SequenceInsert", ["s2", "a", "m1"], ["s3"]),  # [b, a, c]
        helper.make_node("SequenceInsert", ["s3", "b"], ["s4"]),  # [b, a, c, b]
        helper.make_node("SequenceErase", ["s4"], ["s5"]),  # [b, a, c]
        helper.make_node("SequenceAt", ["s5", "m2"], ["y"]),  # a
        helper.make_node("SequenceAt", ["s4", "m1"], ["z"]),  # b
        helper.make_node("SequenceLength", ["s5"], ["n"]),
    ]
    ins = [helper.make_tensor_value_info(k, F, (2, 3)) for k in "abc"]
    outs = [helper.make_tensor_value_info("y", F, (2, 3)),
            helper.make_tensor_value_info("z", F, (2, 3)),
            helper.make_tensor_value_info("n", TensorProto.INT64, ())]
    consts = [("m3", np.int64(-3)), ("m1", np.int64(-1)), ("m2", np.int32(-2))]
    model = _model(nodes, ins, outs, consts)
    _check(model, {k: _x(2, 3) for k in "abc"}, tmp_path)


def test_split_to_sequence_keepdims0_and_concat_new_axis(tmp_path: Path) -> None:
    # SplitToSequence without split and keepdims=0 drops the axis; ConcatFromSequence with
    # new_axis=1 at a negative axis stacks the items back along a new last axis
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["s"], axis=1, keepdims=0),
        helper.make_node("SequenceAt", ["s", "two"], ["y"]),
        helper.make_node("ConcatFromSequence", ["s"], ["z"], axis=-1, new_axis=1),
        helper.make_node("SequenceLength", ["s"], ["n"]),
    ]
    outs = [helper.make_tensor_value_info("y", F, (2, 5)),
            helper.make_tensor_value_info("z", F, (2, 5, 4)),
            helper.make_tensor_value_info("n", TensorProto.INT64, ())]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, (2, 4, 5))], outs,
                   [("two", np.int64(2))])
    _check(model, {"x": _x(2, 4, 5)}, tmp_path)


def test_split_to_sequence_scalar_split_with_remainder(tmp_path: Path) -> None:
    # a scalar split of 3 over 8 rows: chunks 3, 3, 2 (keepdims is ignored with a split)
    nodes = [
        helper.make_node("SplitToSequence", ["x", "three"], ["s"], axis=-2, keepdims=0),
        helper.make_node("SequenceAt", ["s", "m1"], ["last"]),
        helper.make_node("ConcatFromSequence", ["s"], ["back"], axis=0),
        helper.make_node("SequenceLength", ["s"], ["n"]),
    ]
    outs = [helper.make_tensor_value_info("last", F, (2, 3)),
            helper.make_tensor_value_info("back", F, (8, 3)),
            helper.make_tensor_value_info("n", TensorProto.INT64, ())]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, (8, 3))], outs,
                   [("three", np.int64(3)), ("m1", np.int64(-1))])
    _check(model, {"x": _x(8, 3)}, tmp_path)


def test_split_to_sequence_sizes_at_opset12_from_empty(tmp_path: Path) -> None:
    # opset 12: Split takes its sizes as an attribute; a sequence started with SequenceEmpty
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["s"], axis=0),
        helper.make_node("SequenceEmpty", [], ["e"], dtype=F),
        helper.make_node("SequenceAt", ["s", "one"], ["mid"]),
        helper.make_node("SequenceInsert", ["e", "mid"], ["e1"]),
        helper.make_node("SequenceInsert", ["e1", "x", "zero"], ["e2"]),  # [x, mid]
        helper.make_node("ConcatFromSequence", ["e2"], ["y"], axis=0),
    ]
    outs = [helper.make_tensor_value_info("y", F, (9, 2))]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, (6, 2))], outs,
                   [("sizes", np.array([1, 3, 2], np.int64)), ("one", np.int64(1)),
                    ("zero", np.int64(0))], opset=12)
    _check(model, {"x": _x(6, 2)}, tmp_path)


def test_no_sequence_op_reaches_the_importer() -> None:
    # property: after preparation the main graph holds no sequence op
    nodes = [helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
             helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=1)]
    model = _model(nodes, [helper.make_tensor_value_info(k, F, (2, 3)) for k in "ab"],
                   [helper.make_tensor_value_info("y", F, (2, 6))])
    imported = load_model(model)
    assert not [n for n in imported.onnx_model.graph.node if n.op_type in SEQUENCE_OPS]


def test_run_time_position_is_refused_naming_the_node() -> None:
    nodes = [helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
             helper.make_node("SequenceAt", ["s", "pos"], ["y"], name="pick")]
    model = _model(nodes, [helper.make_tensor_value_info("a", F, (2,)),
                           helper.make_tensor_value_info("b", F, (2,)),
                           helper.make_tensor_value_info("pos", TensorProto.INT64, ())],
                   [helper.make_tensor_value_info("y", F, (2,))])
    with pytest.raises(UnsupportedOpError, match="SequenceAt.*pick.*run time"):
        load_model(model)


def test_out_of_range_position_is_refused() -> None:
    nodes = [helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
             helper.make_node("SequenceErase", ["s", "p"], ["t"], name="erase"),
             helper.make_node("SequenceAt", ["t", "zero"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info(k, F, (2,)) for k in "ab"],
                   [helper.make_tensor_value_info("y", F, (2,))],
                   [("p", np.int64(2)), ("zero", np.int64(0))])
    with pytest.raises(UnsupportedOpError, match=r"SequenceErase.*erase.*out of range"):
        load_model(model)


def test_leaves_a_graph_without_sequences_alone() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", F, (2,))],
                   [helper.make_tensor_value_info("y", F, (2,))])
    out, removed = eliminate_sequences(model, strict=True)
    assert out is model and removed == 0


def test_non_strict_keeps_a_sequence_that_is_not_static_yet() -> None:
    nodes = [helper.make_node("SequenceConstruct", ["a"], ["s"]),
             helper.make_node("SequenceAt", ["s", "pos"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("a", F, (2,)),
                           helper.make_tensor_value_info("pos", TensorProto.INT64, ())],
                   [helper.make_tensor_value_info("y", F, (2,))])
    out, removed = eliminate_sequences(model)
    assert out is model and removed == 0


def test_split_to_sequence_of_an_empty_axis_is_an_empty_sequence() -> None:
    # a dimension of 0 without a split: no Split node with zero outputs, length 0
    nodes = [helper.make_node("SplitToSequence", ["x"], ["s"], axis=1),
             helper.make_node("SequenceLength", ["s"], ["n"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, (2, 0))],
                   [helper.make_tensor_value_info("n", TensorProto.INT64, ())])
    out, removed = eliminate_sequences(model, strict=True)
    assert removed == 2
    assert [n.op_type for n in out.graph.node] == ["Constant"]
    assert ReferenceEvaluator(out).run(None, {"x": np.zeros((2, 0), np.float32)})[0] == 0
