"""Ops whose semantics changed across opsets: old models keep their old meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import compiler


def test_opset6_prelu_slope_is_per_channel(tmp_path: Path) -> None:
    # PRelu-6: a slope of C values applies along axis 1 (PRelu-7+ would broadcast it from the
    # right, which fails for (2, 3, 4) and is wrong for (2, 4, 4)); reference written in numpy
    slope = np.array([0.1, -0.5, 2.0, 0.25], np.float32)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])], "prelu6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 4, 4))],
        [numpy_helper.from_array(slope, "slope")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 4  # initializers need not be graph inputs
    x = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run({"x": x})["y"]
    want = np.where(x < 0, x * slope[None, :, None], x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _run_vs_reference(model, feeds: dict[str, np.ndarray], tmp_path: Path) -> None:
    from onnx.reference import ReferenceEvaluator

    want = ReferenceEvaluator(model).run(None, feeds)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)
    names = [o.name for o in model.graph.output]
    for name, w in zip(names, want):
        assert got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w)


def test_opset6_attribute_slice_then_squeeze(tmp_path: Path) -> None:
    # pytorch-operator/test_operator_index: Slice-1 (attributes) feeding Squeeze-1; TVM's
    # Slice converter reads starts/ends as inputs only
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x"], ["s"], axes=[0], starts=[1], ends=[2]),
         helper.make_node("Squeeze", ["s"], ["y"], axes=[0])], "index6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (4,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 4
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    _run_vs_reference(model, {"x": x}, tmp_path)


def test_opset1_attribute_slice_bounds(tmp_path: Path) -> None:
    # no axes (defaults to 0..n-1), a negative start, an end past the dim (INT64_MAX as
    # PyTorch exports it), a negative end, and an end before the start on a third axis
    big = 2**63 - 1
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x"], ["a"], starts=[-2, 1], ends=[big, -1]),
         helper.make_node("Slice", ["x"], ["b"], axes=[-1, 0], starts=[-100, 1], ends=[3, 3]),
         helper.make_node("Slice", ["x"], ["c"], axes=[2], starts=[3], ends=[1])], "slice1",
        [helper.make_tensor_value_info("x", TensorProto.INT32, (3, 5, 4))],
        [helper.make_tensor_value_info("a", TensorProto.INT32, (2, 3, 4)),
         helper.make_tensor_value_info("b", TensorProto.INT32, (2, 5, 3)),
         helper.make_tensor_value_info("c", TensorProto.INT32, (3, 5, 0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    model.ir_version = 3
    x = np.arange(60, dtype=np.int32).reshape(3, 5, 4)
    _run_vs_reference(model, {"x": x}, tmp_path)
