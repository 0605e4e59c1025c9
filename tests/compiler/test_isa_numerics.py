"""Float -> integer conversions give one answer on every x86-64 CPU (issue #21).

LLVM's ``fptosi``/``fptoui`` of a float out of the integer type's range (NaN and ±inf
included) is poison: AVX2 and AVX-512 code return different integers. hwcc clamps (and
rounds) first, so every model here is compiled for an AVX2 and an AVX-512 target and must
give, on both, what ``onnx.reference`` gives where ONNX defines the result, and hwcc's
definition where it does not (``compiler/frontend/int_casts.py``): Cast saturates and maps
NaN to 0; QuantizeLinear saturates and maps NaN to the zero point; int4/uint4/int2/uint2
casts follow the reference (out of range -> 0).

A target is *executed* only when this machine has its features; otherwise it is compiled and
its module checked on disk, never run (a SIGILL cannot be caught). Under
``qemu-x86_64-static -cpu Haswell`` (an AVX2-only CPU) the AVX2 half runs. Finally
:func:`test_every_float_to_int_cast_is_clamped` proves, on the scheduled TIR of every kernel,
that the operand of each float -> integer conversion is NaN-free and inside the type.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers int4/uint4/int2/uint2 with numpy
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.pipeline import CompressionOptions
from targets import host_arch, parse_target
from tests.hostcpu import runnable

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 targets")

TARGETS = {
    "avx2": "x86_64-linux-gnu -mattr=+avx2,+fma",
    "avx512": "x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f,+avx512bw,+avx512dq,+avx512vl",
}

INTS = {"int8": T.INT8, "uint8": T.UINT8, "int16": T.INT16, "uint16": T.UINT16,
        "int32": T.INT32, "uint32": T.UINT32, "int64": T.INT64, "uint64": T.UINT64}
NARROW = {"int4": (T.INT4, -8, 7), "uint4": (T.UINT4, 0, 15), "int2": (T.INT2, -2, 1),
          "uint2": (T.UINT2, 0, 3)}


def _build(model: onnx.ModelProto, spec: str, out: Path, **kw) -> compiler.Artifact:
    art = compiler.compile(model, spec, output_dir=out, verify=False, **kw)
    assert (art.path / art.manifest["library"]).is_file()
    assert art.manifest["target"]["target"] == str(parse_target(spec))
    return art


def _run(art: compiler.Artifact, spec: str, feeds: dict) -> dict | None:
    """The outputs, or None when this CPU lacks the target's features (compiled only)."""
    return art.run(feeds) if runnable(spec) else None


def _model(nodes, inputs, outputs, inits=(), opset: int = 25) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "isa", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # numpy's "invalid value encountered in cast"
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def _probe() -> np.ndarray:
    """NaN, ±inf, every type's range boundaries (float32 neighbours included), halfway values
    and random magnitudes from 1e-3 to 1e30."""
    f32 = np.float32
    edges = []
    for lo, hi in [(-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (2, 4, 8, 16, 32, 64)] + \
            [(0, 2 ** b - 1) for b in (2, 4, 8, 16, 32, 64)]:
        for v in (lo, hi, lo - 1, hi + 1):
            c = f32(v)
            edges += [c, np.nextafter(c, f32(np.inf)), np.nextafter(c, f32(-np.inf)),
                      c + f32(0.5), c - f32(0.5)]
    halves = np.arange(-10, 10, dtype=np.float32) + f32(0.5)
    specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 0.49999997,
                0.99999994, -0.99999994, 1e30, -1e30, 3.4e38, -3.4e38]
    rng = np.random.default_rng(21)
    scaled = rng.standard_normal(400) * 10.0 ** rng.uniform(-3, 30, 400)
    return np.concatenate([np.array(specials + edges, np.float32), halves,
                           scaled.astype(np.float32)])


def _saturating_cast(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """hwcc's definition of Cast float -> ``dtype`` (truncate, saturate, NaN -> 0), computed
    without converting any out-of-range float, and the mask where ONNX defines the result
    (the truncated value fits the type)."""
    info = np.iinfo(np.dtype(dtype))
    lo, hi_excl = float(info.min), float(info.max) + 1.0  # exact powers of two (or 0)
    t = np.trunc(x.astype(np.float64))
    with np.errstate(invalid="ignore"):
        defined = (t >= lo) & (t < hi_excl)
        want = np.zeros(x.shape, dtype)
        want[defined] = t[defined].astype(dtype)
        want[t < lo] = info.min
        want[t >= hi_excl] = info.max
    return want, defined


# ----------------------------------------------------------------------------------------
# Cast / CastLike
# ----------------------------------------------------------------------------------------
def _cast_model(n: int) -> tuple[onnx.ModelProto, list[tuple[str, str, str]]]:
    nodes, outs, spec = [], [], []
    for src, x in (("float32", "x"), ("float16", "h")):
        for name, to in [*INTS.items(), ("bool", T.BOOL),
                         *((k, v[0]) for k, v in NARROW.items())]:
            y = f"{x}_{name}"
            if name == "int8":  # CastLike for one of them: the same conversion
                like = f"{y}_like"
                nodes.append(helper.make_node("Constant", [], [like], value=helper.make_tensor(
                    like, T.INT8, [1], [0])))
                nodes.append(helper.make_node("CastLike", [x, like], [y]))
            else:
                nodes.append(helper.make_node("Cast", [x], [y], to=to))
            outs.append(helper.make_tensor_value_info(y, to, [n]))
            spec.append((y, src, name))
    ins = [helper.make_tensor_value_info("x", T.FLOAT, [n]),
           helper.make_tensor_value_info("h", T.FLOAT16, [n])]
    return _model(nodes, ins, outs), spec


def test_cast_float_to_every_integer_type(tmp_path: Path) -> None:
    x = _probe()
    with np.errstate(over="ignore"):
        feeds = {"x": x, "h": x.astype(np.float16)}  # (beyond float16: ±inf)
    model, spec = _cast_model(x.size)
    ref = dict(zip([o.name for o in model.graph.output], _reference(model, feeds)))
    ran = {}
    for key, target in TARGETS.items():
        art = _build(model, target, tmp_path / key)
        got = _run(art, target, feeds)
        if got is None:
            continue
        ran[key] = got
        for y, src, name in spec:
            v = feeds["x" if src == "float32" else "h"]
            g, r = got[y], ref[y]
            assert g.dtype == r.dtype, (key, y)
            if name in INTS:
                want, defined = _saturating_cast(v, name)
                # where ONNX defines the result, hwcc's definition is the reference's
                np.testing.assert_array_equal(want[defined], r[defined], err_msg=y)
                bad = np.flatnonzero(g != want)
                assert not bad.size, (key, y, v[bad][:6], g[bad][:6], want[bad][:6])
            elif name == "bool":  # 0 and -0 False, everything else (NaN too) True
                np.testing.assert_array_equal(g, v != 0, err_msg=f"{key} {y}")
                np.testing.assert_array_equal(g, r, err_msg=f"{key} {y}")
            else:  # int4/uint4/int2/uint2: the reference (truncated; out of range -> 0)
                np.testing.assert_array_equal(g.astype(np.int64), r.astype(np.int64),
                                              err_msg=f"{key} {y}")
    if len(ran) == 2:
        for y, _, _ in spec:
            np.testing.assert_array_equal(ran["avx2"][y].view(np.uint8),
                                          ran["avx512"][y].view(np.uint8), err_msg=y)


def test_narrow_int_cast_pins_the_reference_rule(tmp_path: Path) -> None:
    # the rule the reference (ml_dtypes) and the ONNX backend tests follow, written out: a
    # change of either is caught here, not only as a disagreement
    x = np.array([7.9, 8.0, -8.9, -9.0, 1.5, -1.5, 2.5, -2.5, 15.5, 16.0, -0.5,
                  np.nan, np.inf, -np.inf, 1e30], np.float32)
    want = {"int4": [7, 0, -8, 0, 1, -1, 2, -2, 0, 0, 0, 0, 0, 0, 0],
            "uint4": [7, 8, 0, 0, 1, 0, 2, 0, 15, 0, 0, 0, 0, 0, 0],
            "int2": [0, 0, 0, 0, 1, -1, 0, -2, 0, 0, 0, 0, 0, 0, 0],
            "uint2": [0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]}
    nodes = [helper.make_node("Cast", ["x"], [k], to=v[0]) for k, v in NARROW.items()]
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [x.size])],
                   [helper.make_tensor_value_info(k, v[0], [x.size]) for k, v in NARROW.items()])
    ref = _reference(model, {"x": x})
    for (k, _), r in zip(NARROW.items(), ref):
        assert r.astype(np.int64).tolist() == want[k], k
    from compiler.frontend.narrow_types import FORMATS, encode_numpy

    for k, (t, _, _) in NARROW.items():
        codes = encode_numpy(x, FORMATS[t])
        assert codes.view(np.dtype(k)).astype(np.int64).tolist() == want[k], k
    for key, target in TARGETS.items():
        got = _run(_build(model, target, tmp_path / key), target, {"x": x})
        for k in NARROW if got is not None else ():
            assert got[k].astype(np.int64).tolist() == want[k], (key, k)


# ----------------------------------------------------------------------------------------
# QuantizeLinear / DynamicQuantizeLinear
# ----------------------------------------------------------------------------------------
#: name -> (ONNX type, zero point, qmin, qmax)
QUANT = {"uint8": (T.UINT8, 10, 0, 255), "int8": (T.INT8, -3, -128, 127),
         "uint16": (T.UINT16, 100, 0, 65535), "int16": (T.INT16, 7, -32768, 32767),
         "int4": (T.INT4, 1, -8, 7), "uint4": (T.UINT4, 2, 0, 15), "int2": (T.INT2, -1, -2, 1),
         "uint2": (T.UINT2, 1, 0, 3)}
SCALE = np.float32(0.5)


def _quantize_def(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, lo: int, hi: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """hwcc's QuantizeLinear: ``clip(rint(x / scale) (NaN -> 0) + zp, lo, hi)``, and the mask
    where the reference's ``rint(x / scale).astype(int32)`` is defined."""
    with np.errstate(all="ignore"):
        r = np.rint(x / scale).astype(np.float64)  # divided in float32, as the reference
        defined = np.isfinite(r) & (np.abs(r) < 2.0 ** 31)
        v = np.where(np.isnan(r), 0.0, r) + zp.astype(np.float64)
    return np.clip(v, lo, hi), defined


def test_quantize_linear_saturates_rounds_half_even_and_maps_nan_to_zero_point(
        tmp_path: Path) -> None:
    base = _probe()
    halves = (np.arange(-12, 12, dtype=np.float32) + np.float32(0.5)) * SCALE  # x/s = k + .5
    x = np.concatenate([base, halves, halves * np.float32(3)])
    axis_scale = np.array([0.5, 0.25, 2.0], np.float32)
    axis_zp = np.array([0, 128, 255], np.uint8)
    xa = np.stack([x, -x, x * np.float32(0.3)])
    nodes, outs, inits = [], [], [helper.make_tensor("s", T.FLOAT, [], [float(SCALE)]),
                                  helper.make_tensor("sa", T.FLOAT, [3], axis_scale.tolist()),
                                  helper.make_tensor("za", T.UINT8, [3], axis_zp.tolist())]
    for name, (t, zp, _, _) in QUANT.items():
        inits.append(helper.make_tensor(f"z_{name}", t, [], [zp]))
        nodes.append(helper.make_node("QuantizeLinear", ["x", "s", f"z_{name}"], [f"q_{name}"]))
        outs.append(helper.make_tensor_value_info(f"q_{name}", t, [x.size]))
    nodes += [helper.make_node("QuantizeLinear", ["x", "s"], ["q_nozp"]),
              helper.make_node("QuantizeLinear", ["xa", "sa", "za"], ["q_axis"], axis=0)]
    outs += [helper.make_tensor_value_info("q_nozp", T.UINT8, [x.size]),
             helper.make_tensor_value_info("q_axis", T.UINT8, [3, x.size])]
    ins = [helper.make_tensor_value_info("x", T.FLOAT, [x.size]),
           helper.make_tensor_value_info("xa", T.FLOAT, [3, x.size])]
    model = _model(nodes, ins, outs, inits)
    feeds = {"x": x, "xa": xa}
    ref = dict(zip([o.name for o in outs], _reference(model, feeds)))

    cases = {f"q_{k}": (x, SCALE, np.array(zp), lo, hi) for k, (_, zp, lo, hi) in QUANT.items()}
    cases["q_nozp"] = (x, SCALE, np.array(0), 0, 255)
    cases["q_axis"] = (xa, axis_scale[:, None], axis_zp[:, None], 0, 255)
    want = {}
    for y, (v, s, zp, lo, hi) in cases.items():
        w, defined = _quantize_def(v, s, zp, lo, hi)
        r = ref[y].astype(np.float64)
        np.testing.assert_array_equal(w[defined], r[defined], err_msg=y)  # the reference
        assert (~defined).any()  # NaN, ±inf and huge values are among them
        want[y] = w
    # half to even, pinned: x / s = 0.5, 1.5, 2.5, -0.5, -2.5 -> 0, 2, 2, -0, -2 (+ zp 10)
    i = [np.flatnonzero(x == np.float32(v * SCALE))[0] for v in (0.5, 1.5, 2.5, -0.5, -2.5)]
    assert want["q_uint8"][i].tolist() == [10, 12, 12, 10, 8]
    nan_at = np.flatnonzero(np.isnan(x))
    assert (want["q_uint8"][nan_at] == 10).all() and (want["q_int8"][nan_at] == -3).all()

    ran = {}
    for key, target in TARGETS.items():
        got = _run(_build(model, target, tmp_path / key), target, feeds)
        if got is None:
            continue
        ran[key] = got
        for y, w in want.items():
            g = got[y].astype(np.float64)
            bad = np.flatnonzero((g != w).reshape(-1))
            assert not bad.size, (key, y, cases[y][0].reshape(-1)[bad][:6],
                                  g.reshape(-1)[bad][:6], w.reshape(-1)[bad][:6])
    if len(ran) == 2:
        for y in want:
            np.testing.assert_array_equal(ran["avx2"][y].view(np.uint8),
                                          ran["avx512"][y].view(np.uint8), err_msg=y)


def test_dynamic_quantize_linear(tmp_path: Path) -> None:
    # finite input: the reference (defined); an infinite one makes the scale infinite and
    # x / scale NaN for the infinite element: hwcc's definition quantizes it to the zero point
    finite = np.array([[-2.5, -1.0, 0.0, 0.5, 1.25, 2.0], [3.0, -0.75, 0.1, 7.5, -4.0, 0.3]],
                      np.float32)
    with_inf = finite.copy()
    with_inf[0, 1] = np.inf
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2, 6])],
                   [helper.make_tensor_value_info("y", T.UINT8, [2, 6]),
                    helper.make_tensor_value_info("s", T.FLOAT, []),
                    helper.make_tensor_value_info("z", T.UINT8, [])], opset=21)
    want_finite = _reference(model, {"x": finite})
    for key, target in TARGETS.items():
        art = _build(model, target, tmp_path / key)
        got = _run(art, target, {"x": finite})
        if got is None:
            continue
        for name, w in zip(("y", "s", "z"), want_finite):
            np.testing.assert_array_equal(got[name], w, err_msg=f"{key} {name}")
        got = art.run({"x": with_inf})
        assert got["s"] == np.inf and got["z"] == 0
        assert (got["y"] == 0).all(), got["y"]  # x / inf = 0, inf / inf = NaN -> zp 0


# ----------------------------------------------------------------------------------------
# a quantized model: input quantization and the requantization between layers
# ----------------------------------------------------------------------------------------
def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((32, 8)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [4, 8])], inits, opset=17)


def test_quantized_model_requantization_is_isa_independent(tmp_path: Path) -> None:
    model = _mlp()
    rng = np.random.default_rng(5)
    calib = {"x": rng.uniform(-1, 1, (8, 4, 16)).astype(np.float32)}
    x0 = (np.sign(rng.standard_normal((4, 16))) * rng.uniform(0.05, 1, (4, 16))
          ).astype(np.float32)
    holes = rng.random((4, 16)) < 0.3
    inputs = {
        "x": x0,
        "nan": np.where(holes, np.float32(np.nan), x0),
        "zero": np.where(holes, np.float32(0), x0),
        "big": x0 * np.float32(1e3),  # every input beyond the calibrated range
        "huge": x0 * np.float32(1e30),
        "inf": np.sign(x0) * np.float32(np.inf),
    }
    float_y = _reference(model, {"x": x0})[0]
    ran = {}
    for key, target in TARGETS.items():
        art = _build(model, target, tmp_path / key,
                     compression=CompressionOptions(quantize="int8", calibration=calib,
                                                      quantize_always=True))
        report = next(p for p in art.manifest["passes"] if p["name"] == "quantize")
        assert "requantized_to_int" in str(report), report
        if not runnable(target):
            continue
        out = {k: art.run({"x": v})["y"] for k, v in inputs.items()}
        ran[key] = out
        # the quantized model computes the float model's function
        assert np.abs(out["x"] - float_y).max() <= 0.05 * np.abs(float_y).max() + 0.05
        assert np.isfinite(np.stack(list(out.values()))).all()
        # NaN quantizes to the zero point, which is the code of 0.0
        np.testing.assert_array_equal(out["nan"], out["zero"], err_msg=key)
        # beyond the range everything saturates to the same codes, ±inf included, and the
        # requantized hidden layer (at its bounds here) with it
        np.testing.assert_array_equal(out["big"], out["huge"], err_msg=key)
        np.testing.assert_array_equal(out["big"], out["inf"], err_msg=key)
    if len(ran) == 2:
        for k in inputs:
            np.testing.assert_array_equal(ran["avx2"][k], ran["avx512"][k], err_msg=k)


# ----------------------------------------------------------------------------------------
# the audit: every float -> integer conversion of every scheduled kernel is clamped
# ----------------------------------------------------------------------------------------
_INF = math.inf
_UNKNOWN = (-_INF, _INF, False)  # (lowest, highest, never NaN)


def _fields(obj) -> list:
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    names = []
    while info is not None:
        names += [f.name for f in info.fields if f.name != "span"]
        info = info.parent_type_info
    return [getattr(obj, n) for n in names]


def _walk(obj, seen: set, visit) -> None:
    import tvm_ffi

    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return
    if isinstance(obj, (tvm_ffi.Map, dict)):
        for v in obj.values():
            _walk(v, seen, visit)
        return
    if isinstance(obj, (tvm_ffi.Array, list, tuple)):
        for v in obj:
            _walk(v, seen, visit)
        return
    if not isinstance(obj, tvm_ffi.Object) or obj.__chandle__() in seen:
        return
    seen.add(obj.__chandle__())  # (Python wrappers are fresh objects: their ids get reused)
    visit(obj)
    for v in _fields(obj):
        _walk(v, seen, visit)


def _base(dtype) -> str:
    return str(dtype).split("x")[0]


def _interval(e, lets: dict) -> tuple[float, float, bool]:
    """(lowest, highest, never NaN) that a float expression can take, as LLVM computes
    TIR's min/max (``select(a < b, a, b)``: a NaN first operand gives the second)."""
    key = type(e).__name__
    if key in ("FloatImm", "IntImm"):
        return float(e.value), float(e.value), not math.isnan(float(e.value))
    if key == "Broadcast":
        return _interval(e.value, lets)
    if key == "Var":
        return _interval(lets[e], lets) if e in lets else _UNKNOWN
    if key == "Let":
        lets[e.var] = e.value
        return _interval(e.body, lets)
    if key == "Cast":
        src = _base(e.value.ty)
        if src.startswith(("int", "uint")):
            info = np.iinfo(np.dtype(src))
            return float(info.min), float(info.max), True
        if src == "bool":
            return 0.0, 1.0, True
        return _interval(e.value, lets)
    if key in ("Min", "Max"):
        a, b = _interval(e.a, lets), _interval(e.b, lets)
        pick = min if key == "Min" else max
        return pick(a[0], b[0]), pick(a[1], b[1]), b[2]
    if key == "Select" or (key == "Call" and str(e.op.name) == "tir.if_then_else"):
        t, f = (e.true_value, e.false_value) if key == "Select" else (e.args[1], e.args[2])
        t, f = _interval(t, lets), _interval(f, lets)
        return min(t[0], f[0]), max(t[1], f[1]), t[2] and f[2]
    if key == "Call" and str(e.op.name) in ("tir.trunc", "tir.round", "tir.nearbyint",
                                           "tir.floor", "tir.ceil"):
        lo, hi, nf = _interval(e.args[0], lets)
        if not nf or math.isinf(lo) or math.isinf(hi):
            return lo, hi, nf
        return float(math.floor(lo)), float(math.ceil(hi)), nf
    return _UNKNOWN


def unclamped_casts(mod) -> tuple[int, list[str]]:
    """How many float -> integer Casts ``mod``'s PrimFuncs hold, and those whose operand is
    not provably NaN-free and inside the integer type (as ``"kernel: expr"``)."""
    from tvm import tirx

    bad = []
    checked = 0
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        lets: dict = {}
        casts: list = []

        def visit(node, lets=lets, casts=casts):
            key = type(node).__name__
            if key in ("LetStmt", "Let"):
                lets[node.var] = node.value
            elif key == "Cast" and _base(node.ty).startswith(("int", "uint")) and \
                    _base(node.value.ty).startswith(("float", "bfloat")):
                casts.append(node)

        _walk(func.body, set(), visit)
        checked += len(casts)
        for c in casts:
            info = np.iinfo(np.dtype(_base(c.ty)))
            lo, hi, nan_free = _interval(c.value, lets)
            if not (nan_free and lo >= info.min and hi <= info.max):
                bad.append(f"{gv.name_hint}: {c}")
    return checked, bad


def test_every_float_to_int_cast_is_clamped() -> None:
    from compiler import frontend
    from compiler.lower.lowering import lower_cpu
    from compiler.pipeline import run_passes

    x = _probe()
    mlp = _mlp()
    calib = {"x": np.random.default_rng(5).uniform(-1, 1, (8, 4, 16)).astype(np.float32)}
    quant_nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                   helper.make_node("DynamicQuantizeLinear", ["x"], ["dq", "ds", "dz"])]
    quant = _model(quant_nodes, [helper.make_tensor_value_info("x", T.FLOAT, [x.size])],
                   [helper.make_tensor_value_info("q", T.INT8, [x.size]),
                    helper.make_tensor_value_info("dq", T.UINT8, [x.size]),
                    helper.make_tensor_value_info("ds", T.FLOAT, []),
                    helper.make_tensor_value_info("dz", T.UINT8, [])],
                   [helper.make_tensor("s", T.FLOAT, [], [0.5]),
                    helper.make_tensor("z", T.INT8, [], [3])], opset=21)
    # (model, compression, at least this many float -> integer conversions in its kernels)
    models = [(_cast_model(x.size)[0], None, 40), (quant, None, 3),
              (mlp, CompressionOptions(quantize="int8", calibration=calib,
                                       quantize_always=True), 2),
              (mlp, CompressionOptions(quantize="int8-dynamic", quantize_always=True), 2)]
    vnni = TARGETS["avx512"] + ",+avx512vnni"  # the int8 kernels' vpdpbusd path as well
    for spec in [*TARGETS.values(), vnni]:
        tgt = parse_target(spec)
        for model, compression, least in models:
            if spec == vnni and compression is None:
                continue
            imported = frontend.load_model(model)
            mod = imported.mod
            if compression is not None:
                mod, _ = run_passes(mod, compression.passes(imported.inputs, tgt.capabilities))
            scheduled, _ = lower_cpu(mod, tgt, finalize=False)
            checked, bad = unclamped_casts(scheduled)
            assert not bad, (spec, bad[:3])
            assert checked >= least, (spec, checked)


def test_the_audit_sees_an_unclamped_cast() -> None:
    # the checker itself: a plain conversion is flagged, a clamped one is not
    import tvm
    from tvm import te

    a = te.placeholder((8,), "float32", name="a")
    plain = te.compute((8,), lambda i: a[i].astype("int8"), name="plain")
    clamped = te.compute((8,), lambda i: tvm.tirx.Select(
        tvm.tirx.isnan(a[i]), tvm.tirx.const(0.0, "float32"),
        te.max(te.min(a[i], tvm.tirx.const(127.0, "float32")),
               tvm.tirx.const(-128.0, "float32"))).astype("int8"), name="clamped")
    too_wide = te.compute((8,), lambda i: te.max(te.min(
        a[i], tvm.tirx.const(300.0, "float32")), tvm.tirx.const(0.0, "float32")).astype("uint8"),
        name="too_wide")
    mod = tvm.IRModule({"plain": te.create_prim_func([a, plain]),
                        "clamped": te.create_prim_func([a, clamped]),
                        "too_wide": te.create_prim_func([a, too_wide])})
    checked, bad = unclamped_casts(mod)
    assert checked == 3 and {b.split(":")[0] for b in bad} == {"plain", "too_wide"}
