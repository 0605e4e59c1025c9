"""hwcc.Quantize: static / dynamic int8, fp16 and QDQ models against independent references.

References: ``onnx.reference`` on the float model (accuracy bounds), onnxruntime's own int8
outputs (QDQ / QOperator models), numpy (observers, fixed-point arithmetic) and the labels of
the digits test set. The property test inspects the lowered TIR of the compiled module.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper

from compiler import lower
from compiler.errors import ConfigError
from passes import Canonicalize
from passes.calibration import run
from passes.quantize import (
    Quantize,
    QuantizeConfig,
    entropy_threshold,
    fixed_point,
    observe,
    quantize_config_from_args,
)
from targets import parse_target
from tests.passes.prune_helpers import apply, imported, onnx_reference, stacked_inputs, zoo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def quantized(name: str, **kw) -> tuple[onnx.ModelProto, tvm.IRModule, Quantize]:
    model, mod = zoo(name)
    cfg = QuantizeConfig(calibration=stacked_inputs(model, range(8)), **kw)
    p = Quantize(cfg)
    return model, apply(p, mod), p


@functools.cache
def _static(name: str) -> tuple[onnx.ModelProto, tvm.IRModule, Quantize]:
    return quantized(name, mode="int8")


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


# ---- accuracy against onnx.reference on the float model ----------------------------------
# Bounds: relative L2 error of the outputs on held-out random inputs (seeds 100..103), a few
# times what per-tensor 8-bit activations give on these He-initialised models (0.9-2 %).
@pytest.mark.parametrize(
    "name, bound", [("resnet_block_cnn", 0.03), ("mlp", 0.04), ("transformer_block", 0.06)]
)
def test_static_int8_matches_float_model(name: str, bound: float) -> None:
    """Static int8 (minmax) stays within ``bound`` of onnx.reference on unseen inputs."""
    model, qmod, p = _static(name)
    xs = stacked_inputs(model, range(100, 104))
    assert rel_error(run(qmod, xs)[0], onnx_reference(model, xs)) < bound
    agree = p.report["agreement"]
    assert agree["relative_error"] < bound and agree["top1_agreement"] >= 0.75
    assert sum(p.report["layers"].values()) > 0


def test_fixed_point_requantization_matches_float_requantization() -> None:
    """Integer-only requantization (multiplier + shift) gives the float-scale result."""
    model, qmod, p = quantized("resnet_block_cnn", requantize="fixed_point", measure=False)
    _, fmod, _ = _static("resnet_block_cnn")
    assert p.report["requantized_to_int"] > 0
    xs = stacked_inputs(model, range(100, 102))
    np.testing.assert_allclose(run(qmod, xs)[0], run(fmod, xs)[0], atol=0.05)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_other_observers_stay_accurate(method: str) -> None:
    """Percentile and entropy calibration stay within the minmax bound on the MLP."""
    model, qmod, _ = quantized("mlp", method=method, measure=False)
    xs = stacked_inputs(model, range(100, 104))
    assert rel_error(run(qmod, xs)[0], onnx_reference(model, xs)) < 0.04


@pytest.mark.parametrize("mode, bound", [("int8-dynamic", 0.04), ("fp16", 2e-3)])
def test_dynamic_and_fp16_match_float_model(mode: str, bound: float) -> None:
    """Dynamic int8 (run-time activation range) and fp16 on the transformer block."""
    model, mod = zoo("transformer_block")
    p = Quantize(QuantizeConfig(mode=mode))
    qmod = apply(p, mod)
    assert p.report["layers"]["matmul"] == 6
    xs = stacked_inputs(model, range(100, 102))
    assert rel_error(run(qmod, xs)[0], onnx_reference(model, xs)) < bound


def test_digits_cnn_top1_drop_at_most_half_a_percent() -> None:
    """The trained digits CNN, calibrated on digits_calib.npz, on the 360 held-out digits."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    mod = apply(Canonicalize(), imported(model))
    calib = dict(np.load(EXAMPLES / "digits_calib.npz"))
    data = np.load(EXAMPLES / "digits_data.npz")
    qmod = apply(Quantize(QuantizeConfig(calibration=calib, measure=False)), mod)
    xs = {"input": data["input"]}
    labels = data["label"]
    ref = onnx_reference(model, {"input": data["input"][:16]})
    float_acc = np.mean(onnx_reference(model, xs).argmax(-1).reshape(-1) == labels)
    int8 = run(qmod, xs)[0]
    int8_acc = np.mean(int8.argmax(-1).reshape(-1) == labels)
    assert float_acc - int8_acc <= 0.005
    assert rel_error(int8[:16], ref) < 0.03


# ---- property: every conv/matmul of the compiled module is integer -------------------------
def _walk(node, visit) -> None:
    """Visit every TIR statement and expression under ``node`` (pre-order, by field name)."""
    if node is None:
        return
    if isinstance(node, (list, tuple)) or type(node).__name__ == "Array":
        for item in node:
            _walk(item, visit)
        return
    visit(node)
    for name in ("seq", "body", "block", "init", "then_case", "else_case", "value", "a", "b",
                 "args", "condition"):
        child = getattr(node, name, None)
        if child is not None and not isinstance(child, (int, float, str)):
            _walk(child, visit)


def _is(node, *kinds: str) -> bool:
    return type(node).__name__ in kinds


def _contractions(mod: tvm.IRModule) -> list[tuple[str, list[str], str]]:
    """(accumulator dtype, dtypes of the multiplied buffers, kernel name) of every
    multiply-accumulate: a scalar ``C += A * B`` store, or a tensorized dot-product intrinsic
    (``vpdpbusd``: u8 x s8 pairs summed into int32 lanes)."""
    from tvm import tirx

    found = []

    def loads(e) -> list[str]:
        out: list[str] = []

        def visit(n) -> None:
            if _is(n, "BufferLoad", "TensorLoad"):
                buf = n.source if hasattr(n, "source") else n.buffer
                out.append(str(buf.dtype))

        _walk(e, visit)
        return out

    lets: list = []  # (variable, value) of the tensorized intrinsics' let bindings

    def bound(expr):
        return next((v for var, v in lets if var.same_as(expr)), expr)

    def llvm_call(value) -> bool:
        return _is(value, "Call") and "call_llvm_pure_intrin" in str(value.op)

    def dot_intrinsic(value) -> list[str] | None:
        """Element dtypes of the multiplied operands of an LLVM dot-product intrinsic call
        (args: intrinsic id, accumulator, operands), e.g. ``["uint8", "int8"]``; for the
        ``vpmaddubsw`` pair, ``C + vpmaddwd(pairs, ones)``, those of ``pairs``' call."""
        if _is(value, "Add"):
            for call in (value.a, value.b):
                if llvm_call(call) and len(call.args) > 1:
                    inner = bound(call.args[1])
                    if llvm_call(inner):
                        return dot_intrinsic(inner)
            return None
        if not llvm_call(value):
            return None
        def elem(a) -> str:
            buf = getattr(a, "source", None)
            if buf is None:
                buf = getattr(a, "buffer", None)
            return str(buf.dtype if buf is not None else a.dtype).split("x")[0]

        operands = [elem(a) for a in list(value.args)[2:]]
        return operands if operands and all(d in ("uint8", "int8") for d in operands) else None

    def visitor(kernel: str):
        def visit(node) -> None:
            if _is(node, "LetStmt"):
                lets.append((node.var, node.value))
                return
            if not _is(node, "BufferStore"):
                return
            operands = dot_intrinsic(node.value)
            if operands is not None:
                found.append((str(node.buffer.dtype), operands, kernel))
                return
            if not _is(node.value, "Add"):
                return
            for acc, prod in ((node.value.a, node.value.b), (node.value.b, node.value.a)):
                if _is(acc, "BufferLoad", "TensorLoad") and _is(prod, "Mul"):
                    found.append((str(node.buffer.dtype), loads(prod), kernel))
                    return
        return visit

    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            _walk(func.body, visitor(gv.name_hint))
    return found


# distinct kernels: the transformer's Q, K and V projections share one PrimFunc
@pytest.mark.parametrize("name, n_layers", [("resnet_block_cnn", 7), ("transformer_block", 4)])
def test_every_weighted_layer_runs_on_int8_with_int32_accumulation(name: str, n_layers: int):
    """In the legalized, fused and default-scheduled TIR, each quantized layer is one
    multiply-accumulate reading int8/uint8 buffers into an int32 accumulator. The CNN has no
    float multiply-accumulate left at all (the transformer keeps its activation x activation
    attention matmuls and LayerNorm statistics in float)."""
    _, qmod, _ = _static(name)
    lowered, _ = lower.lower_cpu(qmod, parse_target("host"))
    found = _contractions(lowered)
    ints = [c for c in found if c[0] == "int32"]
    assert len({kernel for _, _, kernel in ints}) == n_layers
    assert all(set(srcs) <= {"int8", "uint8"} for _, srcs, _ in ints), ints
    if name == "resnet_block_cnn":
        assert all(c[0] == "int32" for c in found), found


# ---- QDQ / QOperator models from onnxruntime ----------------------------------------------
@functools.cache
def _ort_quantized(fmt: str) -> tuple[str, str]:
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, _ = zoo("resnet_block_cnn")
    d = Path(tempfile.mkdtemp(prefix="hwcc-qdq-"))
    onnx.save(model, str(d / "f.onnx"))
    quant_pre_process(str(d / "f.onnx"), str(d / "p.onnx"))  # folds BatchNorm, as ORT advises
    xs = stacked_inputs(model, range(8))
    name = next(iter(xs))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: x} for x in xs[name]])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(d / "p.onnx"), str(d / "q.onnx"), Reader(),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul"],
    )
    return str(d / "q.onnx"), name


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_onnxruntime_quantized_model_matches_onnxruntime_int8(fmt: str) -> None:
    """A quantize_static model (QDQ, or QLinearConv QOperator) compiles to integer convs and
    matches onnxruntime's own int8 outputs."""
    import onnxruntime as ort

    from compiler import frontend

    path, name = _ort_quantized(fmt)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ("QLinearConv" in ops) == (fmt == "qoperator")
    p = Quantize(QuantizeConfig(mode="qdq"))
    qmod = apply(Canonicalize(), apply(p, frontend.load_model(path).mod))
    assert p.report["layers"]["conv2d"] == 6
    model, _ = zoo("resnet_block_cnn")
    xs = stacked_inputs(model, range(100, 102))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = np.stack([sess.run(None, {name: x})[0] for x in xs[name]])
    got = run(qmod, xs)[0]
    assert np.abs(got - ref).max() <= 0.01 * np.abs(ref).max()
    found = _contractions(lower.lower_cpu(qmod, parse_target("host"))[0])
    assert len({kernel for acc, _, kernel in found if acc == "int32"}) == 6


# ---- bad input ------------------------------------------------------------------------------
def test_calibration_that_does_not_fit_the_model_is_a_config_error() -> None:
    model, mod = zoo("mlp")
    good = stacked_inputs(model, range(2))
    name = next(iter(good))
    with pytest.raises(ConfigError, match="missing"):
        Quantize(QuantizeConfig(calibration={"nope": good[name]}))(mod)
    with pytest.raises(ConfigError, match="shape"):
        Quantize(QuantizeConfig(calibration={name: good[name][:, :, :3]}))(mod)
    with pytest.raises(ConfigError, match="empty"):
        QuantizeConfig(calibration={})
    with pytest.raises(ConfigError, match="no samples"):
        QuantizeConfig(calibration={name: good[name][:0]})
    with pytest.raises(ConfigError, match="calibration data"):
        QuantizeConfig(mode="int8")


def test_config_fields_are_validated() -> None:
    for kw in [{"mode": "int4"}, {"method": "mse"}, {"percentile": 30.0},
               {"activation_dtype": "int16"}, {"weight_bits": 4}, {"requantize": "double"}]:
        with pytest.raises(ConfigError):
            QuantizeConfig(**{"mode": "fp16", **kw})


def test_model_without_quantizable_op_is_a_config_error() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod = apply(Canonicalize(), imported(model))
    calib = {"x": np.ones((2, 1, 8), np.float32)}
    with pytest.raises(ConfigError, match="no quantizable op"):
        Quantize(QuantizeConfig(calibration=calib))(mod)
    with pytest.raises(ConfigError, match="QDQ"):
        Quantize(QuantizeConfig(mode="qdq"))(mod)


def test_batch_norm_must_be_folded_first() -> None:
    model, _ = zoo("resnet_block_cnn")
    with pytest.raises(ConfigError, match="canonicalize"):
        Quantize(QuantizeConfig(mode="fp16"))(imported(model))


# ---- observers, fixed point, target defaults (numpy references) -----------------------------
def test_observers() -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(100_000)).astype(np.float32)
    x[:5] = 50.0  # outliers
    mm = observe(x, "minmax", "uint8")
    assert mm.zero_point == 0 and mm.scale == pytest.approx(50.0 / 255, rel=1e-6)
    pc = observe(x, "percentile", "uint8", 99.9)
    assert pc.scale == pytest.approx(np.percentile(x, 99.9) / 255, rel=1e-5)
    t = entropy_threshold(x, levels=256)
    assert 2.0 < t < 10.0  # clips the outliers, keeps the Gaussian's bulk
    signed = observe(np.array([-1.0, 3.0], np.float32), "minmax", "uint8")
    assert signed.zero_point == round(1.0 / (4.0 / 255))
    sym = observe(np.array([-1.0, 3.0], np.float32), "minmax", "int8")
    assert sym.zero_point == 0 and sym.scale == pytest.approx(3.0 / 127)


def test_fixed_point_multiplier_matches_float_rounding() -> None:
    rng = np.random.default_rng(1)
    m = rng.uniform(1e-4, 0.9, 64)
    m0, shift = fixed_point(m)
    assert np.all((m0 >= 1 << 30) & (m0 < 1 << 31))
    acc = rng.integers(-(1 << 20), 1 << 20, 64).astype(np.int64)
    fixed = (acc * m0 + (np.int64(1) << (shift - 1))) >> shift
    assert np.all(np.abs(fixed - acc * m) <= 0.5 + 1e-6)


def test_config_from_target_capabilities() -> None:
    from targets import parse_target as pt

    vnni = pt("x86_64-linux-gnu -mattr=+avx2,+avx512f,+avx512bw,+avx512vnni")
    avx2 = pt("x86_64-linux-gnu -mattr=+avx2")
    arm = pt("aarch64-linux-gnu -mattr=+neon,+dotprod")
    c = quantize_config_from_args("int8", {"x": np.zeros((1, 2))}, "entropy", vnni.capabilities)
    assert (c.activation_dtype, c.weight_bits, c.method) == ("uint8", 8, "entropy")
    c = quantize_config_from_args("int8-dynamic", None, "minmax", avx2.capabilities)
    assert (c.activation_dtype, c.weight_bits, c.calibration) == ("uint8", 7, None)
    c = quantize_config_from_args("fp16", None, "minmax", arm.capabilities)
    assert c.mode == "fp16"
    if "sdot" in arm.capabilities.int8_dot:
        assert c.activation_dtype == "int8"
