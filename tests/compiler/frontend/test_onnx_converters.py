"""hwcc's own converters (compiler/onnx_converters.py) and exact decompositions
(compiler/onnx_decompose.py), each compared with ``onnx.reference`` on edge-case inputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import compiler


def _model(node, inputs, outputs, inits=(), opset: int = 26) -> onnx.ModelProto:
    g = helper.make_graph([node], "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _check(model: onnx.ModelProto, feeds: dict, tmp_path, exact: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ReferenceEvaluator(model).run(None, feeds)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)
    for spec, w in zip(art.outputs, want):
        g = got[spec.name]
        assert g.dtype == w.dtype
        if exact:
            np.testing.assert_array_equal(g, w)
            if g.dtype.kind == "f":  # the sign of a zero counts too
                assert (np.signbit(g) == np.signbit(w))[~np.isnan(w)].all()
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_mod_is_exact_on_edge_cases(fmod: int, dtype, tmp_path) -> None:
    # signs, zeros, infinities, NaN; b broadcast along the last axis
    vals = np.array([5.5, -5.5, 0.0, -0.0, np.inf, -np.inf, np.nan, 3.0, 1e-3, -7.25])
    a = np.repeat(vals[:, None], len(vals), axis=1).astype(dtype)
    b = vals.astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = _model(helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod),
                   [_vi("a", elem, a.shape), _vi("b", elem, b.shape)], [_vi("y", elem, a.shape)])
    _check(model, {"a": a, "b": b}, tmp_path)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod_matches_reference(exclusive: int, reverse: int, tmp_path) -> None:
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4) / 3
    axis = numpy_helper.from_array(np.array(-1, np.int64), "axis")
    model = _model(helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive,
                                    reverse=reverse),
                   [_vi("x", T.FLOAT, x.shape)], [_vi("y", T.FLOAT, x.shape)], [axis])
    _check(model, {"x": x}, tmp_path, exact=False)


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence_matches_reference(batch_axis: int, time_axis: int, tmp_path) -> None:
    x = np.arange(20, dtype=np.float32).reshape(4, 5) if batch_axis == 1 else \
        np.arange(20, dtype=np.float32).reshape(5, 4)
    lens = np.array([4, 0, 1, 3, 2], np.int64)
    model = _model(helper.make_node("ReverseSequence", ["x", "lens"], ["y"],
                                    batch_axis=batch_axis, time_axis=time_axis),
                   [_vi("x", T.FLOAT, x.shape), _vi("lens", T.INT64, [5])],
                   [_vi("y", T.FLOAT, x.shape)])
    _check(model, {"x": x, "lens": lens}, tmp_path)


def test_swish_eyelike_lpnorm_match_reference(tmp_path) -> None:
    # three decompositions in one artifact; EyeLike becomes a constant of another dtype
    x = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1e-3, 2.0, -2.0]], np.float32)
    nodes = [helper.make_node("Swish", ["x"], ["s"], alpha=0.5),
             helper.make_node("EyeLike", ["x"], ["e"], k=1, dtype=T.INT32),
             helper.make_node("LpNormalization", ["x"], ["l2"], axis=1, p=2),
             helper.make_node("LpNormalization", ["x"], ["l0"], axis=0, p=2)]
    g = helper.make_graph(nodes, "g", [_vi("x", T.FLOAT, [3, 3])],
                          [_vi("s", T.FLOAT, [3, 3]), _vi("e", T.INT32, [3, 3]),
                           _vi("l2", T.FLOAT, [3, 3]), _vi("l0", T.FLOAT, [3, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 24)])
    _check(model, {"x": x}, tmp_path, exact=False)


@pytest.mark.parametrize("xt,yt", [(np.float32, np.int64), (np.int32, np.float32),
                                   (np.int64, np.int64)])
def test_pow_with_integer_operands_matches_reference(xt, yt, tmp_path) -> None:
    x = np.array([1, 2, 3, -2, 5], xt)
    y = np.array([4, 5, 0, 3, 2], yt)
    ex, ey = (helper.np_dtype_to_tensor_dtype(np.dtype(t)) for t in (xt, yt))
    model = _model(helper.make_node("Pow", ["x", "y"], ["z"]), [_vi("x", ex, [5]),
                   _vi("y", ey, [5])], [_vi("z", ex, [5])], opset=15)
    _check(model, {"x": x, "y": y}, tmp_path)


def test_elu_float16_matches_reference(tmp_path) -> None:
    x = np.linspace(-4, 4, 33).astype(np.float16)
    model = _model(helper.make_node("Elu", ["x"], ["y"], alpha=0.7),
                   [_vi("x", T.FLOAT16, [33])], [_vi("y", T.FLOAT16, [33])], opset=22)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run({"x": x})["y"]
    assert got.dtype == np.float16
    # one rounding of the float32 result vs the reference's float16 steps: within 1 ulp
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                               rtol=2 ** -10, atol=2 ** -24)


def test_qlinearmatmul_float16_scales_match_reference(tmp_path) -> None:
    # the float path rounds the requantization differently: the exact integer form is used
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 5), dtype=np.uint8)
    inits = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in [
        ("as", 0.0213, np.float16), ("az", 113, np.uint8), ("bs", 0.0079, np.float16),
        ("bz", 98, np.uint8), ("ys", 0.391, np.float16), ("yz", 117, np.uint8)]]
    model = _model(helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys",
                                                      "yz"], ["y"]),
                   [_vi("a", T.UINT8, a.shape), _vi("b", T.UINT8, b.shape)],
                   [_vi("y", T.UINT8, [4, 5])], inits, opset=21)
    _check(model, {"a": a, "b": b}, tmp_path)


@pytest.mark.parametrize("axis", [0, -2])
def test_rms_normalization_over_leading_axes_matches_reference(axis: int, tmp_path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    scale_shape = x.shape[axis:]
    scale = numpy_helper.from_array(np.linspace(0.5, 2, int(np.prod(scale_shape)), dtype=np.float32)
                                    .reshape(scale_shape), "scale")
    model = _model(helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=axis,
                                    epsilon=1e-3),
                   [_vi("x", T.FLOAT, x.shape)], [_vi("y", T.FLOAT, x.shape)], [scale],
                   opset=23)
    _check(model, {"x": x}, tmp_path, exact=False)


def test_resize_with_axes_matches_reference(tmp_path) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    scales = numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "scales")
    model = _model(helper.make_node("Resize", ["x", "", "scales"], ["y"], axes=[3, 2],
                                    mode="nearest"),
                   [_vi("x", T.FLOAT, x.shape)], [_vi("y", T.FLOAT, [1, 1, 12, 8])], [scales],
                   opset=19)
    _check(model, {"x": x}, tmp_path)


@pytest.mark.parametrize("inverse,onesided,channels", [(0, 0, 2), (0, 1, 1), (1, 0, 2),
                                                       (1, 1, 2)])
def test_dft_matches_reference(inverse: int, onesided: int, channels: int, tmp_path) -> None:
    # as matrix products with float64-computed cos/sin tables; along axis 1 of [2, n, 3, c]
    n_in = 5 if inverse and onesided else 8
    x = np.random.default_rng(2).standard_normal((2, n_in, 3, channels)).astype(np.float32)
    out_n = 8 if inverse and onesided else (n_in // 2 + 1 if onesided else n_in)
    out_c = 1 if inverse and onesided else 2
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    model = _model(helper.make_node("DFT", ["x", "", "axis"], ["y"], inverse=inverse,
                                    onesided=onesided),
                   [_vi("x", T.FLOAT, x.shape)], [_vi("y", T.FLOAT, [2, out_n, 3, out_c])],
                   [axis], opset=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    np.testing.assert_allclose(art.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_blocked_quantize_dequantize_match_reference(tmp_path) -> None:
    # blocks of 2 along axis 1 of extent 5 (a remainder block); scale and zero point at run time
    x = (np.arange(-15, 15, dtype=np.float32).reshape(3, 5, 2) * 0.75)
    scale = np.array([0.5, 1.5, 2.0, 0.25, 1.0, 3.0], np.float32).reshape(1, 3, 2) \
        .repeat(3, axis=0)
    zp = np.arange(18, dtype=np.int8).reshape(3, 3, 2) - 9
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1, block_size=2),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1,
                              block_size=2)]
    g = helper.make_graph(nodes, "g", [_vi("x", T.FLOAT, x.shape), _vi("s", T.FLOAT, [3, 3, 2]),
                                       _vi("zp", T.INT8, [3, 3, 2])],
                          [_vi("q", T.INT8, x.shape), _vi("y", T.FLOAT, x.shape)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    _check(model, {"x": x, "s": scale, "zp": zp}, tmp_path)


def test_col2im_matches_reference(tmp_path) -> None:
    # strides, dilations and asymmetric pads together
    image, block = np.array([7, 6], np.int64), np.array([2, 3], np.int64)
    dil, strides, pads = [2, 1], [1, 2], [1, 0, 0, 2]
    counts = [(image[i] + pads[i] + pads[2 + i] - (dil[i] * (block[i] - 1) + 1)) // strides[i] + 1
              for i in range(2)]
    x = np.random.default_rng(3).standard_normal((2, 3 * 6, counts[0] * counts[1])) \
        .astype(np.float32)
    model = _model(helper.make_node("Col2Im", ["x", "image", "block"], ["y"], dilations=dil,
                                    strides=strides, pads=pads),
                   [_vi("x", T.FLOAT, x.shape)], [_vi("y", T.FLOAT, [2, 3, 7, 6])],
                   [numpy_helper.from_array(image, "image"),
                    numpy_helper.from_array(block, "block")], opset=18)
    _check(model, {"x": x}, tmp_path, exact=False)


def test_det_2x2_and_constant_if_match_reference(tmp_path) -> None:
    # Det of a batch of 2x2 matrices; an If on a condition that folds to a constant is inlined
    x = np.random.default_rng(4).standard_normal((3, 2, 2)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("Neg", ["d"], ["t"])], "then", [],
                               [_vi("t", T.FLOAT, [3])])
    else_g = helper.make_graph([helper.make_node("Abs", ["d"], ["e"])], "else", [],
                               [_vi("e", T.FLOAT, [3])])
    nodes = [helper.make_node("Det", ["x"], ["d"]),
             helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Equal", ["n", "twelve"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [_vi("x", T.FLOAT, [3, 2, 2])],
                          [_vi("d", T.FLOAT, [3]), _vi("y", T.FLOAT, [3])],
                          [numpy_helper.from_array(np.array(12, np.int64), "twelve")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 22)])
    _check(model, {"x": x}, tmp_path, exact=False)


def test_l1_normalization_matches_onnxruntime_on_negative_values(tmp_path) -> None:
    # the L1 norm is sum |x| (spec, onnxruntime); onnx.reference sums x, so ORT is the judge
    ort = pytest.importorskip("onnxruntime")
    x = np.array([[3.0, -4.0, 1.0], [-1.0, 0.5, 0.0], [0.0, 0.0, 0.0]], np.float32)
    model = _model(helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=1),
                   [_vi("x", T.FLOAT, [3, 3])], [_vi("y", T.FLOAT, [3, 3])], opset=22)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    np.testing.assert_allclose(art.run({"x": x})["y"], want, rtol=1e-6)


def test_bool_reduce_and_pad_with_runtime_value_match_reference(tmp_path) -> None:
    x = np.array([[True, False, False], [False, False, False]])
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    pads = numpy_helper.from_array(np.array([1, 2, 0, 1], np.int64), "pads")
    axes = numpy_helper.from_array(np.array([1, 0], np.int64), "axes")
    nodes = [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("ReduceMin", ["x"], ["mn"], keepdims=0),
             helper.make_node("Pad", ["f", "pads", "v", "axes"], ["p"], mode="constant")]
    g = helper.make_graph(nodes, "g", [_vi("x", T.BOOL, [2, 3]), _vi("f", T.FLOAT, [2, 3]),
                                       _vi("v", T.FLOAT, [])],
                          [_vi("mx", T.BOOL, []), _vi("mn", T.BOOL, []),
                           _vi("p", T.FLOAT, [5, 4])], [pads, axes])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    _check(model, {"x": x, "f": f, "v": np.array(-7.5, np.float32)}, tmp_path)


@pytest.mark.parametrize("mode,seq", [("linear", 2), ("circular", 3), ("circular", 6)])
def test_tensor_scatter_matches_reference(mode: str, seq: int, tmp_path) -> None:
    # circular writes wrap around the cache end; more rows than the cache holds is refused
    past = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    update = -np.arange(1, 2 * 3 * seq * 2 + 1, dtype=np.float32).reshape(2, 3, seq, 2)
    widx = np.array([1, 2] if mode == "linear" else [3, 1], np.int64)
    model = _model(helper.make_node("TensorScatter", ["past", "upd", "w"], ["y"], mode=mode),
                   [_vi("past", T.FLOAT, past.shape), _vi("upd", T.FLOAT, update.shape),
                    _vi("w", T.INT64, [2])], [_vi("y", T.FLOAT, past.shape)], opset=24)
    if seq > past.shape[2]:
        with pytest.raises(compiler.HwccError, match="TensorScatter"):
            compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
        return
    _check(model, {"past": past, "upd": update, "w": widx}, tmp_path)


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint32, np.uint64])
def test_topk_on_types_tvm_cannot_sort_matches_reference(dtype, largest: int, tmp_path) -> None:
    # the extremes of the type (uint64 above 2**63, where a plain cast to int64 would wrap),
    # ties (the lower index first), along a negative axis
    info = np.iinfo(dtype)
    row = np.array([info.max, 0, info.min, 7, info.max, 7, info.max // 2 + 1, 1], dtype)
    x = np.stack([row, row[::-1], np.roll(row, 3)])
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    k = numpy_helper.from_array(np.array([5], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=largest)
    model = _model(node, [_vi("x", elem, x.shape)],
                   [_vi("v", elem, (3, 5)), _vi("i", T.INT64, (3, 5))], [k])
    _check(model, {"x": x}, tmp_path)


@pytest.mark.parametrize("runtime_zero_points", [False, True])
def test_conv_integer_with_per_channel_zero_points_matches_reference(
        runtime_zero_points: bool, tmp_path) -> None:
    # ConvInteger with padding and one weight zero point per output channel, given either as
    # an initializer (DequantizeLinear with axis 0) or as a graph input (w - wz in float32)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 2, 5, 5), dtype=np.uint8)
    w = rng.integers(0, 256, (3, 2, 3, 3), dtype=np.uint8)
    xz, wz = np.array(7, np.uint8), np.array([0, 128, 255], np.uint8)
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])
    inputs = [_vi("x", T.UINT8, x.shape), _vi("w", T.UINT8, w.shape), _vi("xz", T.UINT8, ())]
    feeds = {"x": x, "w": w, "xz": xz}
    inits = []
    if runtime_zero_points:
        inputs.append(_vi("wz", T.UINT8, wz.shape))
        feeds["wz"] = wz
    else:
        inits.append(numpy_helper.from_array(wz, "wz"))
    model = _model(node, inputs, [_vi("y", T.INT32, (1, 3, 5, 5))], inits, opset=10)
    _check(model, feeds, tmp_path)
