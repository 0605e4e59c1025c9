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
