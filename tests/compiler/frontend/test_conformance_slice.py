"""A fixed, representative slice of the ONNX backend node tests, through hwcc.

The ``onnx`` package builds these cases in memory with reference inputs and outputs. Integer
inputs that real exporters store as constants (axes, shapes, pads, indices of Reshape/Slice
...) are frozen into initializers first, as they are in exported models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import compiler

SLICE = [
    # convolutions and pooling (CNNs)
    "test_conv_with_strides_padding", "test_conv_with_autopad_same",
    "test_conv_with_strides_and_asymmetric_padding", "test_basic_conv_with_padding",
    "test_convtranspose", "test_maxpool_2d_pads", "test_maxpool_2d_strides",
    "test_averagepool_2d_pads", "test_averagepool_2d_strides", "test_globalaveragepool",
    "test_globalmaxpool", "test_batchnorm_epsilon", "test_batchnorm_example",
    "test_instancenorm_epsilon",
    # dense layers
    "test_gemm_default_single_elem_vector_bias", "test_gemm_transposeB", "test_gemm_alpha",
    "test_matmul_2d", "test_matmul_3d", "test_matmul_4d",
    # activations
    "test_relu", "test_sigmoid", "test_tanh", "test_leakyrelu", "test_hardswish",
    "test_hardsigmoid", "test_prelu_broadcast", "test_elu", "test_selu", "test_softplus",
    "test_gelu_default_1", "test_gelu_tanh_1", "test_erf", "test_clip", "test_clip_splitbounds",
    # transformer pieces
    "test_softmax_axis_1", "test_softmax_default_axis", "test_layer_normalization_2d_axis0",
    "test_layer_normalization_3d_axis_negative_1_epsilon", "test_reduce_mean_keepdims_example",
    "test_sqrt", "test_pow", "test_div_bcast", "test_where_example",
    # (the two layer-norm cases check Mean and InvStdDev too: TVM alone returns wrong values)
    # elementwise and shape ops
    "test_add_bcast", "test_mul_bcast", "test_sub_bcast", "test_concat_2d_axis_0",
    "test_concat_3d_axis_1", "test_reshape_reordered_all_dims", "test_reshape_negative_dim",
    "test_flatten_axis1", "test_transpose_default", "test_transpose_all_permutations_2",
    "test_squeeze", "test_unsqueeze_axis_0", "test_slice", "test_gather_0",
    "test_expand_dim_changed", "test_split_equal_parts_1d_opset18", "test_tile",
    "test_resize_upsample_sizes_nearest",
    # narrow element types (uint8 storage inside, ml_dtypes arrays at the boundary) and BitCast
    "test_cast_FLOAT_to_FLOAT8E4M3FN", "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT", "test_cast_FLOAT_to_INT4",
    "test_cast_FLOAT4E2M1_to_FLOAT", "test_cast_e8m0_FLOAT_to_FLOAT8E8M0",
    "test_quantizelinear_int4", "test_dequantizelinear_e4m3fn", "test_bitcast_float32_to_int32",
    # hwcc's own converters and decompositions (compiler/onnx_converters.py, onnx_decompose.py)
    "test_mod_mixed_sign_float32", "test_cumprod_1d_reverse_exclusive", "test_reversesequence_time",
    "test_dft_irfft", "test_swiglu", "test_rms_normalization_2d_axis0",
    "test_qlinearmatmul_2D_uint8_float16", "test_col2im_strides",
    "test_dequantizelinear_blocked", "test_det_nd", "test_l1normalization_axis_0",
    "test_reduce_max_bool_inputs", "test_constant_pad_axes", "test_tensorscatter_circular",
]


def _cases() -> dict[str, object]:
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in load_model_tests(kind="node")}


CASES = _cases()


def freeze_integer_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]
                          ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Make integer graph inputs initializers (as exporters do for axes, shapes, indices)."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep = []
    rest = {}
    for vi in frozen.graph.input:
        arr = feeds[vi.name]
        if arr.dtype.kind in "iu":
            frozen.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
        else:
            keep.append(vi)
            rest[vi.name] = arr
    del frozen.graph.input[:]
    frozen.graph.input.extend(keep)
    return frozen, rest


def _array(a: object) -> np.ndarray:
    """Reference data as numpy (float8 / int4 data come as TensorProtos)."""
    return numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else np.asarray(a)


@pytest.mark.parametrize("name", SLICE)
def test_node_conformance(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    model = case.model
    inputs, outputs = case.data_sets[0]
    feeds = {vi.name: _array(a) for vi, a in zip(model.graph.input, inputs)}
    model, feeds = freeze_integer_inputs(model, feeds)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)
    for spec, want in zip(art.outputs, outputs):
        want = _array(want)
        have = got[spec.name]
        assert have.dtype == want.dtype, name
        if want.dtype.kind not in "fiub":  # float8 / int4 ...: compare the values they hold
            have, want = have.astype(np.float64), want.astype(np.float64)
        np.testing.assert_allclose(have, want, rtol=max(case.rtol, 1e-4),
                                   atol=max(case.atol, 1e-5), err_msg=name)
