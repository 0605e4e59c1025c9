"""Model validation before lowering: invalid models are refused with one line naming the node.

Every invalid case here is also run through onnxruntime, which must refuse it too: hwcc
refuses what onnxruntime refuses (never a model that only one of them calls invalid), and
its message names the op and the node. The valid cases must still import.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import ModelLoadError
from compiler.frontend import load_model
from compiler.frontend.importer import one_line

ort = pytest.importorskip("onnxruntime")


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray],
           inputs: dict[str, list[int]], rank: int | None = None) -> onnx.ModelProto:
    """One-output model; the output's dims are left unknown (``rank``: that of the first
    input unless given)."""
    rank = len(next(iter(inputs.values()))) if rank is None else rank
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * rank)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _f(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _conv(**attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w"], ["y"], name="conv7", **attrs)


X8 = {"x": [1, 2, 8, 8]}
W = {"w": _f(4, 2, 3, 3)}

#: name -> (model, words the message must hold)
INVALID = {
    "conv_kernel_shape_vs_weight": (_model([_conv(kernel_shape=[5, 3])], W, X8),
                                    ["kernel_shape [5, 3]", "[4, 2, 3, 3]"]),
    "conv_group_does_not_divide": (_model([_conv(group=3)], {"w": _f(4, 2, 3, 3)},
                                          {"x": [1, 6, 8, 8]}), ["group 3"]),
    "conv_channels": (_model([_conv()], W, {"x": [1, 3, 8, 8]}), ["3 channels", "expects 2"]),
    "conv_bias_length": (_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv7")],
                                {**W, "b": _f(3)}, X8), ["bias 'b'", "expected [4]"]),
    "conv_kernel_larger_than_input": (_model([_conv()], {"w": _f(4, 2, 7, 7)},
                                             {"x": [1, 2, 4, 8]}), ["output would be empty"]),
    "conv_strides_length": (_model([_conv(strides=[1, 1, 1])], W, X8), ["strides"]),
    "conv_zero_dilation": (_model([_conv(dilations=[0, 1])], W, X8), ["dilations"]),
    "conv_negative_pads": (_model([_conv(pads=[-1, 1, 1, 1])], W, X8), ["pads"]),
    "convtranspose_kernel_shape": (
        _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="conv7",
                                 kernel_shape=[5, 3])], {"w": _f(2, 4, 3, 3)}, X8),
        ["kernel_shape [5, 3]"]),
    "gemm_inner_dims": (_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                               {"w": _f(3, 5)}, {"x": [2, 4]}), ["Gemm", "fc"]),
    "gemm_bias_broadcast": (_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")],
                                   {"w": _f(4, 3), "c": _f(5)}, {"x": [2, 4]}),
                            ["does not broadcast to [2, 3]"]),
    "matmul_inner_dims": (_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                                 {"w": _f(5, 3)}, {"x": [2, 4]}), ["MatMul", "mm"]),
    "maxpool_no_kernel_shape": (_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool")],
                                       {}, X8), ["kernel_shape"]),
    "maxpool_zero_kernel": (_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool",
                                                     kernel_shape=[0, 2])], {}, X8),
                            ["kernel_shape"]),
    "maxpool_kernel_larger_than_input": (
        _model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[20, 2])],
               {}, X8), ["spans 20"]),
    "avgpool_pads_length": (_model([helper.make_node("AveragePool", ["x"], ["y"], name="pool",
                                                     kernel_shape=[2, 2], pads=[1, 1])], {}, X8),
                            ["pads"]),
    "avgpool_pads_not_below_kernel": (
        _model([helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                 pads=[3, 3, 3, 3])], {}, X8),
        ["must be smaller than kernel_shape"]),
    "reshape_two_minus_one": (_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
                                     {"s": np.array([-1, -1], np.int64)}, {"x": [2, 4]}),
                              ["-1"]),
    "reshape_size_mismatch": (_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
                                     {"s": np.array([3, 3], np.int64)}, {"x": [2, 4]}),
                              ["8 elements", "[3, 3]"]),
    "gather_index_out_of_range": (
        _model([helper.make_node("Gather", ["x", "i"], ["y"], name="take")],
               {"i": np.array([0, 7], np.int64)}, {"x": [2, 4]}),
        ["index 7", "[-2, 1]"]),
    "gather_negative_index_out_of_range": (
        _model([helper.make_node("Gather", ["x", "i"], ["y"], name="take", axis=1)],
               {"i": np.array([-5], np.int64)}, {"x": [2, 4]}), ["index -5"]),
}


def _ort_refuses(model: onnx.ModelProto) -> bool:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal at load time
        return True
    feeds = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()}
    try:
        sess.run(None, feeds)
    except Exception:  # noqa: BLE001 - or at run time
        return True
    return False


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_model_refused_naming_the_node(case: str) -> None:
    """hwcc refuses, in one line naming the op and the node, what onnxruntime refuses."""
    model, words = INVALID[case]
    assert _ort_refuses(model), "the case must be invalid for onnxruntime too"
    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    msg = str(info.value)
    assert "\n" not in msg
    node = model.graph.node[0]
    assert node.op_type in msg and node.name in msg, msg
    for w in words:
        assert w in msg, msg


def test_unnamed_node_is_named_by_position() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[5, 3])], W, X8)
    with pytest.raises(ModelLoadError, match=r"Conv node #1 \(unnamed\): kernel_shape"):
        load_model(model)


def test_checker_message_is_whole_and_one_line() -> None:
    """The checker's message names the node on its second line; the error keeps it."""
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="first"),
                    helper.make_node("Relu", ["does_not_exist"], ["y"], name="second_relu")],
                   {}, {"x": [2, 4]})
    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    msg = str(info.value)
    assert "\n" not in msg
    assert "does_not_exist" in msg and "second_relu" in msg and "OpType: Relu" in msg


def test_shape_inference_error_is_one_line_naming_the_node() -> None:
    """Strict shape inference (inside the full check): op type and node name, one line."""
    model = _model([_conv(strides=[1, 1, 1])], W, X8)
    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    msg = str(info.value)
    assert "\n" not in msg and "conv7" in msg and "Conv" in msg and "strides" in msg


def test_one_line_caps_long_messages() -> None:
    assert one_line(ValueError("a\n  b\n\nc")) == "a b c"
    assert len(one_line(ValueError("x " * 5000))) <= 600
    assert one_line(ValueError("")) == "ValueError"


VALID = {
    "conv_auto_pad_same": _model([_conv(auto_pad="SAME_UPPER", strides=[2, 2])], W, X8),
    "conv_grouped_with_bias": _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", group=2, kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1])], {"w": _f(4, 1, 3, 3), "b": _f(4)}, X8),
    "convtranspose_grouped": _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", group=2)],
        {"w": _f(2, 3, 3, 3)}, X8),
    "gemm_trans_bias_row": _model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transA=1, transB=1)],
        {"w": _f(3, 2), "c": _f(1, 3)}, {"x": [2, 5]}),
    "matmul_vector": _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                            {"w": _f(4)}, {"x": [3, 4]}, rank=1),
    "maxpool_ceil_dilated": _model(
        [helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2],
                          dilations=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1])], {}, X8),
    "reshape_copy_and_infer": _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
        {"s": np.array([0, -1], np.int64)}, X8, rank=2),
    "gather_negative_indices": _model(
        [helper.make_node("Gather", ["x", "i"], ["y"], name="g", axis=-1)],
        {"i": np.array([[-8, 7], [0, -1]], np.int64)}, X8, rank=5),
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_model_still_imports(case: str) -> None:
    """Negative cases: valid forms of the same ops pass every check (and onnxruntime runs them)."""
    model = VALID[case]
    assert not _ort_refuses(model)
    imported = load_model(model)
    assert imported.outputs
