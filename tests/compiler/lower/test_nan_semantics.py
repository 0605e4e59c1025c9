"""NaN through max/min with a constant (Relu, Clip) as ONNX
defines it (compiler.lower.nan_semantics), against onnx.reference and onnxruntime.

Before, a NaN input to Relu gave 0 (LLVM's maxnum / x86's vmaxps return the other operand):
the digits CNN answered a NaN pixel with finite logits while onnxruntime said NaN.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import compiler
from tests import hostcpu

N = 24
X = np.linspace(-8, 8, N).astype(np.float32)
X[[2, 9, 17]] = np.nan
X[5], X[12] = np.inf, -np.inf


def _model(node: onnx.NodeProto, inits: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])],
                              initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scalar(name: str, v: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [v])


CASES = {
    "relu": _model(helper.make_node("Relu", ["x"], ["y"])),
    "clip": _model(helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
                   [_scalar("lo", 0.0), _scalar("hi", 6.0)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_and_inf_as_onnx_reference(name: str, tmp_path) -> None:
    model = CASES[name]
    want = ReferenceEvaluator(model).run(None, {"x": X})[0]
    art = compiler.compile(model, hostcpu.host_target(), output_dir=tmp_path / name,
                           verify=False, tuning_log=False)
    got = art.run({"x": X})["y"]
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_cnn"])
def test_example_cnn_answers_a_nan_pixel_with_nan_like_onnxruntime(name: str, tmp_path) -> None:
    from examples import example_model

    path = str(example_model(name))
    art = compiler.compile(path, hostcpu.host_target(), output_dir=tmp_path / name,
                           verify=False, tuning_log=False)
    spec = art.inputs[0]
    x = np.random.default_rng(0).standard_normal([int(d) for d in spec.shape]).astype(np.float32)
    x.flat[7] = np.nan
    ours = next(iter(art.run({spec.name: x}).values()))
    ref = ort.InferenceSession(path).run(None, {spec.name: x})[0]
    assert np.isnan(ref).any()
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
