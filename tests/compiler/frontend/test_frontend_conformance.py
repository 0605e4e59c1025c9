"""Frontend conformance: ops TVM lacks or gets wrong, checked on every CI run.

Three kinds of cases:

* ONNX node tests for the converters and rewrites hwcc adds (LSTM, GRU, RNN, Attention, Celu,
  Mish, OneHot, LayerNormalization with its statistics, ONNX function ops...), with shape
  inputs frozen as exporters store them (``benchmarks/conformance.py``'s ``exported`` mode);
* graphs where plain TVM returns a wrong value without any error (Expand to a run-time
  shape holding 1s, LayerNormalization's Mean/InvStdDev): hwcc must compute the right
  value or refuse with an ``HwccError``;
* whole models: an LSTM model built with ``onnx.helper`` the way PyTorch exports one (initial
  states from ``Shape``/``ConstantOfShape`` chains) and a tiny BERT-like model exported by
  ``torch.onnx.export(dynamo=False)`` (``tests/data/bert_tiny.onnx``), against onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from benchmarks.conformance import input_shapes, prepare
from compiler.errors import HwccError

from .test_conformance_slice import CASES

DATA = Path(__file__).resolve().parents[2] / "data"

NODE_CASES = [
    # recurrent ops: no converter in TVM; unrolled over the pinned sequence length
    "test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_with_peepholes",
    "test_lstm_batchwise", "test_lstm_bidirectional", "test_lstm_reverse",
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
    "test_gru_batchwise", "test_gru_bidirectional", "test_gru_reverse",
    "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias", "test_rnn_seq_length",
    "test_simple_rnn_batchwise", "test_simple_rnn_bidirectional", "test_simple_rnn_reverse",
    # ONNX Attention: TVM's converter is com.microsoft's; expanded into its function body
    "test_attention_3d", "test_attention_4d", "test_attention_4d_attn_mask",
    # function ops TVM lacks, expanded from onnx.defs
    "test_celu", "test_celu_expanded", "test_mish", "test_mish_expanded",
    # LayerNormalization's optional Mean / InvStdDev (TVM: wrong shape, no error)
    "test_layer_normalization_4d_axis1", "test_layer_normalization_3d_axis1_epsilon",
    "test_layer_normalization_2d_axis0_expanded",
    # shape subgraphs folded to constants before import
    "test_shape", "test_shape_start_1_end_negative_1", "test_size_example",
    "test_range_int32_type_negative_delta",
    "test_constantofshape_float_ones", "test_constantofshape_int_zeros",
    "test_onehot_with_axis", "test_onehot_negative_indices",
    "test_expand_dim_unchanged",
    # silently wrong in plain TVM, fixed by exact rewrites (compiler/onnx_guards.py)
    "test_isinf_negative", "test_isinf_positive",
    "test_bitshift_left_int32_negative_shift", "test_bitshift_left_int32_shift_ge_width",
    "test_reduce_min_empty_set", "test_reduce_max_empty_set_bool",
    "test_attention_causal_boolmask_nan_robustness",  # ReduceMax of all -inf rows
    "test_nonmaxsuppression_iou_threshold_boundary",  # IoU > t, not >= t
    "test_dropout_default_mask",
    "test_mod_float_edge_cases_fmod_0_float32",  # float Mod: hwcc's exact kernel (fmodf)
]

#: Silently wrong in plain TVM and not fixable by a rewrite: hwcc must refuse them.
REFUSED_CASES = [
    "test_batchnorm_example_training_mode", "test_convtranspose_output_shape",
    "test_resize_downsample_scales_linear",
    "test_resize_downsample_sizes_linear_antialias", "test_roialign_mode_max",
    "test_spacetodepth_crd_mode_example", "test_training_dropout",
    "test_split_to_sequence_1",  # (float8 casts: now exact, see test_narrow_types.py)
]


def _run_case(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    inputs, outputs = case.data_sets[0]
    # shapes, axes, depth... become initializers, as exporters store them
    model, feeds = prepare({"model": case.model, "inputs": inputs}, "exported")
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False,
                           input_shapes=input_shapes(model, feeds) or None)
    got = art.run(feeds)
    assert len(art.outputs) == len(outputs), name
    for spec, want in zip(art.outputs, outputs):
        want = np.asarray(want)
        assert got[spec.name].shape == want.shape, (name, spec.name)
        np.testing.assert_allclose(got[spec.name], want, rtol=max(case.rtol, 1e-3),
                                   atol=max(case.atol, 1e-5), err_msg=f"{name}: {spec.name}")


@pytest.mark.parametrize("name", NODE_CASES)
def test_node_case(name: str, tmp_path: Path) -> None:
    """Each case compiles and matches the ONNX reference outputs."""
    _run_case(name, tmp_path)


@pytest.mark.parametrize("name", REFUSED_CASES)
def test_refused_case(name: str, tmp_path: Path) -> None:
    """Each case is refused with an HwccError rather than compiled to wrong values."""
    with pytest.raises(HwccError):
        _run_case(name, tmp_path)


# ---------------------------------------------------------------------------------------
# silently wrong in plain TVM
# ---------------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_expand_to_computed_shape_of_ones(tmp_path: Path) -> None:
    """Expand to a shape computed at run time as [1, 1]: ONNX keeps x's [2, 3]; plain TVM
    returns a [1, 1] tensor without error. hwcc folds the shape and gets [2, 3]."""
    model = _model(
        [helper.make_node("Shape", ["y"], ["s"]),
         helper.make_node("Div", ["s", "s"], ["ones"]),
         helper.make_node("Expand", ["x", "ones"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 7])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3),
             "y": np.zeros((5, 7), np.float32)}
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)["z"]
    np.testing.assert_array_equal(got, feeds["x"])


def test_expand_to_runtime_shape_input_is_refused(tmp_path: Path) -> None:
    """Expand to a shape fed at run time: the output shape is data-dependent; hwcc refuses
    (plain TVM computes a wrong shape silently when the shape holds 1s)."""
    model = _model(
        [helper.make_node("Expand", ["x", "shape"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b"])])
    with pytest.raises(HwccError, match="Expand"):
        compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)


def test_layer_norm_statistics_match_reference(tmp_path: Path) -> None:
    """Mean and InvStdDev of LayerNormalization (TVM alone returns wrong shapes)."""
    _run_case("test_layer_normalization_4d_axis_negative_2", tmp_path)


def test_unsupported_dtype_is_a_clear_error(tmp_path: Path) -> None:
    """float8 arithmetic (only casts and Q/DQ are lowered to uint8 storage) is refused naming
    the node and the type."""
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN, name="to_f8"),
         helper.make_node("Mul", ["y", "y"], ["w"], name="square_f8"),
         helper.make_node("Cast", ["w"], ["z"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])], opset=19)
    with pytest.raises(HwccError, match="square_f8.*float8_?e4m3fn"):
        compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def lstm_model(seq: int = 5, batch: int = 2, feat: int = 4, hidden: int = 6,
               classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """An LSTM classifier as PyTorch exports it: dynamic batch/sequence, zero initial states
    from Shape → Gather → Unsqueeze → Concat → ConstantOfShape, Y squeezed, a last-step head.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [
        init("W", (1, 4 * hidden, feat)), init("R", (1, 4 * hidden, hidden)),
        init("B", (1, 8 * hidden)), init("head_w", (hidden, classes)), init("head_b", (classes,)),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([1], np.int64), "num_dir"),
        numpy_helper.from_array(np.array([hidden], np.int64), "hid"),
        numpy_helper.from_array(np.array(-1, np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "one"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
        helper.make_node("Concat", ["num_dir", "batch1", "hid"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("ConstantOfShape", ["state_shape"], ["c0"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"],
                         hidden_size=hidden, name="lstm"),
        helper.make_node("Squeeze", ["Y", "ax1"], ["Y3"]),
        helper.make_node("Gather", ["Y3", "last"], ["last_step"], axis=0),
        helper.make_node("MatMul", ["last_step", "head_w"], ["mm"]),
        helper.make_node("Add", ["mm", "head_b"], ["logits"]),
    ]
    return _model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", feat])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden]),
         helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, "batch", hidden])],
        inits, opset=14)


def test_lstm_model_matches_onnxruntime(tmp_path: Path) -> None:
    """The PyTorch-style LSTM model imports, compiles and matches onnxruntime."""
    model = lstm_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)}
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False,
                           input_shapes={"x": (5, 2, 4)})
    got = art.run(feeds)
    for spec, want in zip(art.outputs, _ort(model, feeds)):
        np.testing.assert_allclose(got[spec.name], want, rtol=1e-4, atol=1e-5,
                                   err_msg=spec.name)


def test_bert_tiny_torchscript_export_matches_onnxruntime(tmp_path: Path) -> None:
    """A BERT-like model from torch.onnx.export(dynamo=False): Shape/Range/ConstantOfShape/
    Expand over dynamic axes, pinned to batch 2 x sequence 8."""
    path = DATA / "bert_tiny.onnx"
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (2, 8)).astype(np.int64),
             "token_type_ids": rng.integers(0, 2, (2, 8)).astype(np.int64)}
    art = compiler.compile(path, "host", output_dir=tmp_path / "a", verify=False,
                           input_shapes={k: v.shape for k, v in feeds.items()})
    got = art.run(feeds)
    for spec, want in zip(art.outputs, _ort(onnx.load(str(path)), feeds)):
        np.testing.assert_allclose(got[spec.name], want, rtol=1e-4, atol=1e-5,
                                   err_msg=spec.name)


def test_shape_subgraphs_are_folded() -> None:
    """After preparation the BERT graph has no Shape/ConstantOfShape/Range left: TVM sees
    constants where the exporter computed shapes at run time."""
    imported = compiler.load_model(DATA / "bert_tiny.onnx",
                                   {"input_ids": (2, 8), "token_type_ids": (2, 8)})
    ops = {n.op_type for n in imported.onnx_model.graph.node}
    assert not ops & {"Shape", "ConstantOfShape", "Range", "Expand", "Constant"}, ops
