"""float8 / float4 / int4 / int2 values carried as uint8 storage (compiler/onnx_narrow_types.py).

Every comparison is against ``onnx.reference`` (whose casts are ``ml_dtypes``'), never against
hwcc itself: the encoder's numpy twin over every float16 value, specials and random float32
bit patterns; the compiled TE kernel, the decode tables, Q/DQ and BitCast end to end.
"""

from __future__ import annotations

import warnings

import ml_dtypes  # noqa: F401 - registers the narrow dtype names with numpy
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.errors import ModelLoadError, RuntimeInputError, UnsupportedOpError
from compiler.frontend.narrow_types import FORMATS, encode_numpy

FLOATS = [t for t, f in FORMATS.items() if f.kind == "float"]
INTS = [t for t, f in FORMATS.items() if f.kind == "int"]


def _ref_cast(x: np.ndarray, to: int, **attrs) -> np.ndarray:
    node = helper.make_node("Cast", ["x"], ["y"], to=to, **attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ReferenceEvaluator(node).run(None, {"x": x})[0])


def _probe_floats(n: int = 60000) -> np.ndarray:
    rng = np.random.default_rng(0)
    every_f16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    special = np.array([0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 464, -464, 465, 480, 240,
                        248, 247, 57344, 61440, 61439, 6, 7, 5, -5, 0.25, 0.75, 1e-30], np.float32)
    return np.concatenate([every_f16, bits, scaled, special])


def _same_codes(got: np.ndarray, want: np.ndarray, dtype: str) -> np.ndarray:
    """Equal bytes, or both NaN (NaN payloads may differ)."""
    g, w = got.view(np.uint8), want.view(np.uint8)
    gf = g.view(np.dtype(dtype)).astype(np.float64)
    wf = w.view(np.dtype(dtype)).astype(np.float64)
    return (g == w) | (np.isnan(gf) & np.isnan(wf))


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("to", FLOATS, ids=lambda t: FORMATS[t].name)
def test_float_encoder_matches_reference(to: int, saturate: int) -> None:
    # every float16, random float32 bit patterns, the rounding and overflow boundaries
    x = _probe_floats()
    want = _ref_cast(x, to, saturate=saturate)
    got = encode_numpy(x, FORMATS[to], bool(saturate))
    ok = _same_codes(got, want, FORMATS[to].name)
    assert ok.all(), (x[~ok][:5], want.view(np.uint8)[~ok][:5], got[~ok][:5])


@pytest.mark.parametrize("to", INTS, ids=lambda t: FORMATS[t].name)
def test_int_encoder_matches_reference(to: int) -> None:
    # floats: truncation toward zero, kept if it fits, else (out of range, NaN, Inf) 0;
    # integer sources wrap around
    x = _probe_floats(20000)
    assert (encode_numpy(x, FORMATS[to]) == _ref_cast(x, to).view(np.uint8)).all()
    xi = np.random.default_rng(1).integers(-2**31, 2**31 - 1, 5000, dtype=np.int64)
    assert (encode_numpy(xi, FORMATS[to]) == _ref_cast(xi, to).view(np.uint8)).all()


@pytest.mark.skipif(not hasattr(T, "FLOAT8E8M0"), reason="onnx without FLOAT8E8M0")
@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_e8m0_encoder_matches_reference(round_mode: str, saturate: int) -> None:
    x = _probe_floats(20000)
    want = _ref_cast(x, T.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)
    got = encode_numpy(x, FORMATS[T.FLOAT8E8M0], bool(saturate), round_mode)
    assert (got == want.view(np.uint8)).all()


def _model(nodes, inputs, outputs, opset: int = 25) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_compiled_encode_and_decode_match_reference(tmp_path) -> None:
    # one artifact: x -> every narrow type (saturating and not) and back to float32
    x = _probe_floats(4000)
    nodes, outs, want = [], [], []
    for to, fmt in FORMATS.items():
        for sat in (1, 0):
            y, back = f"y_{fmt.name}_{sat}", f"b_{fmt.name}_{sat}"
            nodes += [helper.make_node("Cast", ["x"], [y], to=to, saturate=sat),
                      helper.make_node("Cast", [y], [back], to=T.FLOAT)]
            outs += [helper.make_tensor_value_info(y, to, [x.size]),
                     helper.make_tensor_value_info(back, T.FLOAT, [x.size])]
            enc = _ref_cast(x, to, saturate=sat)
            want += [enc, _ref_cast(enc, T.FLOAT)]
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [x.size])], outs)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run({"x": x})
    for spec, w in zip(art.outputs, want):
        g = got[spec.name]
        assert g.dtype == w.dtype, spec.name
        if w.dtype == np.float32:
            np.testing.assert_array_equal(g, w, err_msg=spec.name)
        else:
            assert _same_codes(g, w, str(w.dtype)).all(), spec.name


def test_narrow_input_from_float16_and_to_int8(tmp_path) -> None:
    # a float8 graph input (the user passes ml_dtypes arrays), decoded to float16; int4 -> int8
    codes = np.arange(256, dtype=np.uint8)
    nodes = [helper.make_node("Cast", ["f8"], ["h"], to=T.FLOAT16),
             helper.make_node("Cast", ["i4"], ["i8"], to=T.INT8),
             helper.make_node("Cast", ["x16"], ["e5"], to=T.FLOAT8E5M2, saturate=0)]
    ins = [helper.make_tensor_value_info("f8", T.FLOAT8E4M3FNUZ, [256]),
           helper.make_tensor_value_info("i4", T.INT4, [16]),
           helper.make_tensor_value_info("x16", T.FLOAT16, [65536])]
    outs = [helper.make_tensor_value_info("h", T.FLOAT16, [256]),
            helper.make_tensor_value_info("i8", T.INT8, [16]),
            helper.make_tensor_value_info("e5", T.FLOAT8E5M2, [65536])]
    art = compiler.compile(_model(nodes, ins, outs), "host", output_dir=tmp_path / "a",
                           verify=False)
    f8 = codes.view(np.dtype("float8_e4m3fnuz"))
    i4 = np.arange(16, dtype=np.uint8).view(np.dtype("int4"))
    x16 = np.arange(65536, dtype=np.uint16).view(np.float16)
    got = art.run({"f8": f8, "i4": i4, "x16": x16})
    np.testing.assert_array_equal(got["h"], _ref_cast(f8, T.FLOAT16))
    np.testing.assert_array_equal(got["i8"], _ref_cast(i4, T.INT8))
    assert _same_codes(got["e5"], _ref_cast(x16, T.FLOAT8E5M2, saturate=0), "float8_e5m2").all()
    with pytest.raises(RuntimeInputError, match="dtype float8_e4m3fnuz"):
        art.run({"f8": codes, "i4": i4, "x16": x16})


@pytest.mark.parametrize("qtype", [T.INT4, T.UINT4, T.FLOAT8E4M3FN],
                         ids=lambda t: FORMATS[t].name)
def test_quantize_dequantize_match_reference(qtype: int, tmp_path) -> None:
    # per-axis scale and zero point given at run time; x / scale hits the .5 ties
    x = (np.arange(-24, 24, dtype=np.float32) * 0.25).reshape(3, 16)
    scale = np.array([0.5, 0.25, 2.0], np.float32)
    int_type = FORMATS[qtype].kind == "int"
    zp = np.array([1, -2, 3] if FORMATS[qtype].signed else [1, 2, 3]) if int_type else \
        np.zeros(3)
    zp = zp.astype(np.dtype(FORMATS[qtype].name))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=0),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=0)]
    ins = [helper.make_tensor_value_info("x", T.FLOAT, [3, 16]),
           helper.make_tensor_value_info("s", T.FLOAT, [3]),
           helper.make_tensor_value_info("zp", qtype, [3])]
    outs = [helper.make_tensor_value_info("q", qtype, [3, 16]),
            helper.make_tensor_value_info("y", T.FLOAT, [3, 16])]
    model = _model(nodes, ins, outs)
    feeds = {"x": x, "s": scale, "zp": zp}
    want = ReferenceEvaluator(model).run(None, feeds)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    got = art.run(feeds)
    assert got["q"].dtype == want[0].dtype
    np.testing.assert_array_equal(got["q"].view(np.uint8), want[0].view(np.uint8))
    np.testing.assert_array_equal(got["y"], want[1])


def test_bitcast_matches_numpy_view(tmp_path) -> None:
    x = np.array([1.5, -0.0, np.inf, 3e-41], np.float32)
    model = _model([helper.make_node("BitCast", ["x"], ["y"], to=T.INT32)],
                   [helper.make_tensor_value_info("x", T.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", T.INT32, [4])], opset=26)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)
    np.testing.assert_array_equal(art.run({"x": x})["y"], x.view(np.int32))


def test_other_ops_on_narrow_types_are_refused(tmp_path) -> None:
    # only Cast/CastLike/QuantizeLinear/DequantizeLinear lower narrow values: Add is refused
    # (ONNX's checker refuses float8 Add already: ModelLoadError, op, node and type named)
    model = _model([helper.make_node("Add", ["a", "a"], ["y"], name="adder")],
                   [helper.make_tensor_value_info("a", T.FLOAT8E4M3FN, [4])],
                   [helper.make_tensor_value_info("y", T.FLOAT8E4M3FN, [4])])
    with pytest.raises((UnsupportedOpError, ModelLoadError),
                       match="Add.*adder.*float8_?e4m3fn"):
        compiler.compile(model, "host", output_dir=tmp_path / "a", verify=False)


def test_verify_compares_float8_outputs_by_value(tmp_path) -> None:
    # onnxruntime hands float8 outputs back as raw uint8 bytes; compile(verify=True) used to
    # compare those bytes with our decoded values and report a correct result as wrong
    pytest.importorskip("onnxruntime")
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=T.FLOAT8E4M3FN)], "f8",
                          [helper.make_tensor_value_info("x", T.FLOAT, (2, 3))],
                          [helper.make_tensor_value_info("y", T.FLOAT8E4M3FN, (2, 3))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    x = np.array([[0.3, -1.7, 100.0], [0.0, 448.0, -3.1]], np.float32)
    art = compiler.compile(model, "host", output_dir=tmp_path / "a", verify=True,
                           verify_inputs={"x": x})
    report = art.manifest["verification"]
    assert report["reference"] == "onnxruntime"
    assert report["max_abs_err"] == 0.0 and report["max_rel_err"] == 0.0


def test_compare_decodes_narrow_types_and_matches_specials() -> None:
    from compiler.evaluate import compare

    f8 = np.dtype("float8_e4m3fn")
    ours = np.array([1.5, -448.0, np.nan], np.float32).astype(f8)
    assert compare([ours], [ours.copy()])["max_abs_err"] == 0.0
    off = np.array([1.75, -448.0, np.nan], np.float32).astype(f8)
    assert compare([ours], [off])["max_abs_err"] == 0.25
    # infinities and NaN agree with themselves; a NaN against a number is an infinite error
    specials = np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)
    assert compare([specials], [specials.copy()])["max_abs_err"] == 0.0
    assert compare([specials], [np.array([np.inf, -np.inf, 2.0, 1.0], np.float32)]
                   )["max_abs_err"] == np.inf
