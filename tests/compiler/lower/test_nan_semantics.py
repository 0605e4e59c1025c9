"""NaN through max/min with a constant (Relu, Clip) as ONNX
defines it (compiler.lower.nan_semantics: the constant first), against onnx.reference and
onnxruntime.

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
    graph = helper.make_graph([node], "nan",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
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


def _graph(node: onnx.NodeProto, inputs: dict[str, list[int]], out: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "nan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                        for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _nan_map(seed: int, shape: tuple[int, ...], nan_at: list[tuple[int, ...]]) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for i in nan_at:
        x[i] = np.nan
    x.flat[-1] = np.inf
    return x


REDUCTIONS = {  # running max/min: a NaN anywhere in what is reduced gives NaN
    "ReduceMax": _graph(helper.make_node("ReduceMax", ["x"], ["y"], axes=[2, 3], keepdims=1),
                        {"x": [1, 4, 8, 8]}, [1, 4, 1, 1]),
    "ReduceMin": _graph(helper.make_node("ReduceMin", ["x"], ["y"], axes=[1], keepdims=0),
                        {"x": [1, 4, 8, 8]}, [1, 8, 8]),
    "GlobalMaxPool": _graph(helper.make_node("GlobalMaxPool", ["x"], ["y"]),
                            {"x": [1, 4, 8, 8]}, [1, 4, 1, 1]),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_keep_nan_as_onnx_reference(name: str, tmp_path) -> None:
    model = REDUCTIONS[name]
    x = _nan_map(0, (1, 4, 8, 8), [(0, 1, 2, 3), (0, 2, 7, 0)])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = compiler.compile(model, hostcpu.host_target(), output_dir=tmp_path / name,
                           verify=False, tuning_log=False).run({"x": x})["y"]
    assert np.isnan(want).any()
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


def test_max_pool_window_with_a_nan_is_nan(tmp_path) -> None:
    """Max pooling as a maximum over each window (numpy's np.max, PyTorch's max_pool2d):
    NaN anywhere in the window gives NaN. (onnx.reference's MaxPool keeps a NaN only when it
    comes first in the window, and onnxruntime drops it: neither defines it.)"""
    model = _graph(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                    strides=[2, 2]), {"x": [1, 4, 8, 8]}, [1, 4, 4, 4])
    x = _nan_map(1, (1, 4, 8, 8), [(0, 1, 2, 3), (0, 2, 0, 0), (0, 3, 5, 5)])
    want = x.reshape(1, 4, 4, 2, 4, 2).max(axis=(3, 5))  # np.max propagates NaN
    got = compiler.compile(model, hostcpu.host_target(), output_dir=tmp_path / "mp",
                           verify=False, tuning_log=False).run({"x": x})["y"]
    assert np.isnan(want).sum() == 3
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_elementwise_max_min_of_two_tensors(op: str, tmp_path) -> None:
    model = _graph(helper.make_node(op, ["a", "b"], ["y"]), {"a": [4, 16], "b": [4, 16]},
                   [4, 16])
    a = _nan_map(2, (4, 16), [(0, 3), (2, 2)])
    b = _nan_map(3, (4, 16), [(1, 4), (2, 2)])
    want = ReferenceEvaluator(model).run(None, {"a": a, "b": b})[0]
    got = compiler.compile(model, hostcpu.host_target(), output_dir=tmp_path / op,
                           verify=False, tuning_log=False).run({"a": a, "b": b})["y"]
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


def _rows(node: onnx.NodeProto, inits: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
        initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_ONES = helper.make_tensor("s", TensorProto.FLOAT, [16], np.ones(16))
_ZEROS = helper.make_tensor("b", TensorProto.FLOAT, [16], np.zeros(16))
ROW_OPS = {  # activations, softmax and normalization: NaN and inf where onnx.reference has them
    "Softmax": _rows(helper.make_node("Softmax", ["x"], ["y"], axis=-1)),
    "LogSoftmax": _rows(helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)),
    "LayerNormalization": _rows(helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"],
                                                 axis=-1), [_ONES, _ZEROS]),
    "Sigmoid": _rows(helper.make_node("Sigmoid", ["x"], ["y"])),
    "Tanh": _rows(helper.make_node("Tanh", ["x"], ["y"])),
    "LeakyRelu": _rows(helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)),
    "HardSigmoid": _rows(helper.make_node("HardSigmoid", ["x"], ["y"])),
    "HardSwish": _rows(helper.make_node("HardSwish", ["x"], ["y"])),
    "Elu": _rows(helper.make_node("Elu", ["x"], ["y"])),
}


@pytest.mark.parametrize("name", sorted(ROW_OPS))
def test_activations_softmax_norm_as_onnx_reference(name: str, tmp_path) -> None:
    model = ROW_OPS[name]
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    x[0, 3], x[1, 5], x[1, 7] = np.nan, np.inf, -np.inf
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = compiler.compile(model, hostcpu.host_target(), output_dir=tmp_path / name,
                           verify=False, tuning_log=False).run({"x": x})["y"]
    assert np.isnan(want).any()
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5)


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
