"""Activation capture on calibration data (``passes/calibration.py``), against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from compiler.errors import ConfigError
from compiler.frontend import load_model
from passes._ir import bindings, main_function
from passes.calibration import capture, run


def _model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def test_capture_returns_intermediates_and_outputs() -> None:
    """Numerical: the captured matmul value is x @ w and the output is relu(x @ w), for every
    sample (stacked on a leading axis); the module's structure is left unchanged."""
    model, w = _model()
    mod = load_model(model).mod
    before = mod.script()
    names = [b.var.name for b in bindings(main_function(mod))]
    x = np.random.default_rng(1).standard_normal((3, 2, 6)).astype(np.float32)
    got = capture(mod, {"x": x}, [names[0]])
    assert got.names == [names[0]]
    np.testing.assert_allclose(got[names[0]], x @ w, rtol=1e-5, atol=1e-5)
    ref = np.stack([ReferenceEvaluator(model).run(None, {"x": s})[0] for s in x])
    np.testing.assert_allclose(got.outputs[0], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(mod, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    assert mod.script() == before
    with pytest.raises(KeyError, match="was not captured"):
        got["nope"]


def test_calibration_that_does_not_fit_is_a_config_error() -> None:
    mod = load_model(_model()[0]).mod
    with pytest.raises(ConfigError):
        capture(mod, {"other": np.zeros((3, 2, 6), np.float32)})
    with pytest.raises(ConfigError):
        capture(mod, {"x": np.zeros((3, 2, 7), np.float32)})
    with pytest.raises(ConfigError, match="no binding named"):
        capture(mod, {"x": np.zeros((3, 2, 6), np.float32)}, ["nope"])
