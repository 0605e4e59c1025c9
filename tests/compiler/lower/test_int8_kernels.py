"""int8 kernels (compiler.lower.schedules Int8Dense / Int8Conv2d): bit-exact vs numpy, tensorized.

The integer results (int32 accumulators and the float epilogue the quantize pass fuses after
them) must equal numpy's integer math exactly, for sizes that are not multiples of the dot
blocks (16 or 8 output lanes, 4 reduction elements). Each x86 dot-product family is covered:
AVX-512 VNNI (``vpdpbusd`` on zmm), AVX-VNNI (``{vex} vpdpbusd`` on ymm), AVX-512BW without VNNI
and AVX2 (the saturating ``vpmaddubsw`` + ``vpmaddwd`` pair, 7-bit weights as the quantize pass
makes them for those targets). Every case is scheduled and built for its family's target and
its TIR must hold that family's intrinsic on any host; the module runs where this machine runs
the target, else the same model is built and run for the widest target this machine runs
(``tests.hostcpu.execution_target``), where results must still be exact.
"""

from __future__ import annotations

import dataclasses
import os
import re

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from compiler.lower.schedules import apply_default_schedules, is_scheduled
from compiler.lower.schedules.int8_common import pairs_fit_int16
from tests import hostcpu

#: AVX-512 VNNI, 2 cores: every case is scheduled and built for it, run only where it runs.
VNNI = hostcpu.AVX512_VNNI
AVX2 = hostcpu.AVX2
#: Where the numerics run: VNNI when this machine has it, else its widest target.
RUN_TARGET = hostcpu.execution_target(VNNI)
SCALE = np.float32(0.01)


@dataclasses.dataclass(frozen=True)
class Family:
    """An x86 int8 dot-product family: its target, its LLVM intrinsic, the weights it takes."""

    name: str
    target: tvm.target.Target
    intrinsic: str
    asm: str  # a regular expression for an instruction the inner loop must hold
    wmax: int  # weights drawn from [-wmax, wmax)


FAMILIES = {
    f.name: f
    for f in (
        Family("vnni512", VNNI, "llvm.x86.avx512.vpdpbusd.512", r"vpdpbusd\s+%zmm", 128),
        Family("avxvnni", hostcpu.tvm_target(hostcpu.AVX2_FEATURES + ("+avxvnni",)),
               "llvm.x86.avx512.vpdpbusd.256", r"\{vex\}\s*vpdpbusd\s+%ymm", 128),
        Family("avx512bw", hostcpu.tvm_target(hostcpu.AVX512_FEATURES + ("+avx512bw",)),
               "llvm.x86.avx512.pmaddubs.w.512", r"vpmaddubsw\s+%zmm", 64),
        Family("avx2", AVX2, "llvm.x86.avx2.pmadd.ub.sw", r"vpmaddubsw\s+%ymm", 64),
    )
}


def _dense_mod(m: int, k: int, n: int, transposed: bool, epilogue: bool, seed: int,
               wmax: int = 128):
    rng = np.random.default_rng(seed)
    w = rng.integers(-wmax, wmax, size=(n, k) if transposed else (k, n)).astype("int8")
    bias = rng.integers(-5000, 5000, size=(n,)).astype("int32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            wt = relax.const(w)
            if transposed:
                wt = bb.emit(relax.op.permute_dims(wt))
            y = bb.emit(relax.op.matmul(x, wt, out_dtype="int32"))
            if epilogue:
                y = bb.emit(relax.op.add(y, relax.const(bias)))
                y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(SCALE)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    wk = (w.T if transposed else w).astype(np.int32)
    xin = rng.integers(0, 256, size=(m, k)).astype("uint8")
    want = xin.astype(np.int32) @ wk
    if epilogue:
        want = (want + bias).astype(np.float32) * SCALE
    return bb.get(), {"x": xin}, want


def _conv_mod(c, f, h, w_, k, stride, pad, pad_value, residual, seed, wmax=128):
    """conv2d (explicit pad with a zero point, like the quantize pass) + bias/scale/residual.

    With a residual add the scale is a power of two: LLVM contracts ``acc * s + r`` into an
    FMA, which rounds once instead of twice unless the product is exact.
    """
    scale = np.float32(0.0625) if residual else SCALE
    rng = np.random.default_rng(seed)
    w = rng.integers(-wmax, wmax, size=(f, c, k, k)).astype("int8")
    bias = rng.integers(-5000, 5000, size=(1, f, 1, 1)).astype("int32")
    oh, ow = (h + 2 * pad - k) // stride + 1, (w_ + 2 * pad - k) // stride + 1
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, h, w_), "uint8"))
    params = [x]
    r = None
    if residual:
        r = relax.Var("r", relax.TensorType((1, f, oh, ow), "float32"))
        params.append(r)
    with bb.function("main", params):
        with bb.dataflow():
            inp = x
            if pad and pad_value:
                inp = bb.emit(
                    relax.op.nn.pad(x, [0, 0, 0, 0, pad, pad, pad, pad], pad_value=float(pad_value))
                )
            y = bb.emit(
                relax.op.nn.conv2d(
                    inp,
                    relax.const(w),
                    strides=stride,
                    padding=0 if pad_value else pad,
                    out_dtype="int32",
                )
            )
            y = bb.emit(relax.op.add(y, relax.const(bias)))
            y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(scale)))
            if residual:
                y = bb.emit(relax.op.nn.relu(relax.op.add(y, r)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    feeds = {"x": rng.integers(0, 256, size=(1, c, h, w_)).astype("uint8")}
    if residual:
        feeds["r"] = rng.standard_normal((1, f, oh, ow)).astype("float32")
    xp = np.pad(
        feeds["x"].astype(np.int64),
        ((0, 0), (0, 0), (pad, pad), (pad, pad)),
        constant_values=pad_value,
    )
    acc = np.zeros((1, f, oh, ow), np.int64)
    for ry in range(k):
        for rx in range(k):
            patch = xp[
                :,
                :,
                ry : ry + stride * (oh - 1) + 1 : stride,
                rx : rx + stride * (ow - 1) + 1 : stride,
            ]
            acc += np.einsum("bchw,fc->bfhw", patch, w[:, :, ry, rx].astype(np.int64))
    want = (acc.astype(np.int32) + bias).astype(np.float32) * scale
    if residual:
        want = np.maximum(want + feeds["r"], np.float32(0))
    return bb.get(), feeds, want


def _schedule(mod: tvm.IRModule, target) -> tvm.IRModule:
    with target:
        passes = cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)
        fused = tvm.transform.Sequential(passes)(mod)
        return apply_default_schedules(fused, target)


def _build(mod: tvm.IRModule, target):
    scheduled = _schedule(mod, target)
    with target:
        passes = cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
        lowered = tvm.transform.Sequential(passes)(scheduled)
    return tvm.compile(lowered, target=target, relax_pipeline=None), scheduled


def _run(mod: tvm.IRModule, feeds: dict[str, np.ndarray],
         target: tvm.target.Target = VNNI) -> tuple[np.ndarray, tvm.IRModule]:
    """Build ``mod`` for ``target``; run it there, or where this machine cannot, run its build
    for the widest target this machine runs. Returns the output and ``target``'s scheduled
    module."""
    ex, scheduled = _build(mod, target)
    run_target = hostcpu.execution_target(target)
    if run_target is not target:
        ex, _ = _build(mod, run_target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    return out.numpy(), scheduled


def _constants(mod: tvm.IRModule) -> list[np.ndarray]:
    """The constant tensors of ``mod``'s Relax functions."""
    found: list[np.ndarray] = []
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(e.value.numpy())
                                            if isinstance(e, tvm.ir.expr.GenericConst) else None)
    return found


def _tir_text(mod: tvm.IRModule) -> str:
    return "\n".join(
        f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    )


@pytest.mark.parametrize(
    "m,k,n,transposed,epilogue",
    [
        (7, 30, 37, False, True),
        (5, 9, 10, False, False),
        (3, 33, 17, True, True),
        (1, 128, 10, False, True),
        (64, 64, 48, False, False),
    ],
)
@pytest.mark.parametrize("family", ["vnni512", "avx2"])
def test_int8_dense_bit_exact(m, k, n, transposed, epilogue, family):
    """u8×s8→s32 matmul (+ fused bias/scale), N and K not multiples of 16 / 4."""
    fam = FAMILIES[family]
    mod, feeds, want = _dense_mod(m, k, n, transposed, epilogue, seed=m * 100 + k,
                                  wmax=fam.wmax)
    got, scheduled = _run(mod, feeds, fam.target)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert fam.intrinsic in _tir_text(scheduled)


@pytest.mark.parametrize("rows", [37, 40])
def test_int8_sequence_first_dense_with_zero_point_correction_bit_exact(rows):
    """[S, 1, K] u8 x s8 (PyTorch's sequence-first layout) with the dynamic-quantization
    epilogue ``(x w - zp * colsum(w)) * scale``, zp a run-time scalar: the S batches are rows of
    one tensorized matmul (tiles of rows dividing S, none for a prime S), the zero-point product
    is inlined into the epilogue, and the result equals numpy's integer math."""
    k, n = 32, 48
    rng = np.random.default_rng(rows)
    w = rng.integers(-128, 128, size=(k, n)).astype("int8")
    colsum = w.astype(np.int32).sum(axis=0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, 1, k), "uint8"))
    zp = relax.Var("zp", relax.TensorType((), "float32"))  # as the quantize pass computes it
    with bb.function("main", [x, zp]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
            zp_int = bb.emit(relax.op.astype(zp, "int32"))
            corr = bb.emit(relax.op.multiply(zp_int, relax.const(colsum)))
            y = bb.emit(relax.op.subtract(y, corr))
            y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(SCALE)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    feeds = {"x": rng.integers(0, 256, size=(rows, 1, k)).astype("uint8"),
             "zp": np.array(7, dtype="float32")}
    want = ((feeds["x"].astype(np.int32) @ w.astype(np.int32)) - 7 * colsum).astype(
        np.float32) * SCALE
    got, scheduled = _run(bb.get(), feeds)
    np.testing.assert_array_equal(got, want)
    text = _tir_text(scheduled)
    assert "vpdpbusd" in text
    assert ("T.unroll(T.int64(8))" in text) == (rows == 40)  # 8-row tiles; S = 37: 1


@pytest.mark.parametrize(
    "c,f,h,w,k,stride,pad,pad_value,residual",
    [
        (16, 32, 14, 14, 3, 1, 1, 0, False),  # 3x3 stride 1
        (7, 20, 11, 13, 3, 2, 1, 0, False),  # 3x3 stride 2, odd channels
        (6, 17, 8, 8, 1, 1, 0, 0, False),  # 1x1 (input copied to channel blocks)
        (5, 16, 10, 9, 3, 1, 1, 7, True),  # zero-point padding, residual add + ReLU
        (3, 8, 16, 16, 1, 2, 0, 0, False),  # 1x1 stride 2 (downsample)
    ],
)
@pytest.mark.parametrize("family", ["vnni512", "avx2"])
def test_int8_conv2d_bit_exact(c, f, h, w, k, stride, pad, pad_value, residual, family):
    """NCHW int8 conv + fused epilogue equals numpy integer math exactly."""
    fam = FAMILIES[family]
    mod, feeds, want = _conv_mod(c, f, h, w, k, stride, pad, pad_value, residual, seed=c + f,
                                 wmax=fam.wmax)
    got, scheduled = _run(mod, feeds, fam.target)
    np.testing.assert_array_equal(got, want)
    assert fam.intrinsic in _tir_text(scheduled)


@pytest.mark.parametrize("family", ["avxvnni", "avx512bw"])
def test_other_dot_families_bit_exact(family):
    """AVX-VNNI and AVX-512BW kernels (odd sizes, conv with a zero-point pad and residual,
    dense with epilogue) equal numpy's integer math."""
    fam = FAMILIES[family]
    for mod, feeds, want in (
        _conv_mod(5, 20, 10, 9, 3, 1, 1, 7, True, seed=11, wmax=fam.wmax),
        _dense_mod(7, 30, 37, False, True, seed=12, wmax=fam.wmax),
    ):
        got, scheduled = _run(mod, feeds, fam.target)
        np.testing.assert_array_equal(got, want)
        assert fam.intrinsic in _tir_text(scheduled)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_emits_its_dot_instruction(family):
    """Each family's int8 kernels are tensorized: every function scheduled, TIR holding the
    family's LLVM intrinsic and the assembly its instruction on its register width."""
    fam = FAMILIES[family]
    dense, _, _ = _dense_mod(4, 64, 32, False, True, seed=1, wmax=fam.wmax)
    conv, _, _ = _conv_mod(8, 32, 8, 8, 3, 1, 1, 0, False, seed=2, wmax=fam.wmax)
    for mod in (dense, conv):
        ex, scheduled = _build(mod, fam.target)
        funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert funcs and all(is_scheduled(f) for f in funcs)
        assert fam.intrinsic in _tir_text(scheduled)
        assert re.search(fam.asm, ex.mod.imports[0].inspect_source("asm"))


@pytest.mark.parametrize("family", ["avx2", "avx512bw"])
def test_saturating_pair_declines_weights_that_overflow_int16(family):
    """``vpmaddubsw`` sums u8·s8 pairs into saturating int16: a weight pair past the bound
    (here 127 + 127: 255 * 254 > 32767) keeps the kernel off it (not packed, not tensorized),
    and the result is still exact; the same kernel with 7-bit weights is tensorized."""
    fam = FAMILIES[family]
    mod, feeds, want = _conv_mod(8, 16, 6, 6, 3, 1, 1, 0, False, seed=4, wmax=128)
    w = next(c for c in _constants(mod) if c.dtype == np.int8)
    assert not pairs_fit_int16(w, 1)
    got, scheduled = _run(mod, feeds, fam.target)
    np.testing.assert_array_equal(got, want)
    assert "pmadd" not in _tir_text(scheduled)
    small = _conv_mod(8, 16, 6, 6, 3, 1, 1, 0, False, seed=4, wmax=64)
    assert fam.intrinsic in _tir_text(_schedule(small[0], fam.target))


def test_pairs_fit_int16_is_the_exact_bound():
    """The check admits exactly the pairs whose extreme u8 sums stay in int16."""
    ok = [[64, 64], [-128, 0], [127, -128], [0, 128 - 1]]
    bad = [[127, 2], [-128, -1], [100, 29]]
    for pair in ok:
        assert pairs_fit_int16(np.array([pair], np.int8), 1), pair
        assert max(255 * sum(max(v, 0) for v in pair), -255 * sum(min(v, 0) for v in pair)) \
            <= 32768
    for pair in bad:
        assert not pairs_fit_int16(np.array([pair], np.int8), 1), pair
    # an odd reduction length pairs the last element with zero padding
    assert pairs_fit_int16(np.array([[1, 1, 127]], np.int8), 1)
    assert pairs_fit_int16(np.array([[1], [1], [127]], np.int8), 0)


def test_quantized_digits_cnn_keeps_float_accuracy(tmp_path):
    """End to end: the int8 digits CNN built for this machine (VNNI kernels where it has
    them) keeps its accuracy."""
    import compiler
    from compiler.pipeline import PassSpec
    from examples import example_data, example_model
    from passes.quantize import QuantizeConfig

    calib = {"input": example_data("digits_cnn", "calib")["input"][:64]}
    data = example_data("digits_cnn")
    x, y = data["input"][:200], data["label"][:200]
    quant = PassSpec("quantize", QuantizeConfig(mode="int8", calibration=calib, measure=False))
    arts = {
        "fp32": compiler.compile(
            example_model("digits_cnn"), "host", verify=False, output_dir=tmp_path / "fp32"
        ),
        "int8": compiler.compile(
            example_model("digits_cnn"),
            "host",
            verify=False,
            output_dir=tmp_path / "int8",
            passes=[PassSpec("canonicalize"), quant],
        ),
    }
    acc = {}
    for name, art in arts.items():
        hits = 0
        for i in range(len(x)):
            out = art.run({"input": x[i]})
            out = out[0] if isinstance(out, (list, tuple)) else next(iter(out.values()))
            hits += int(np.argmax(out) == y[i])
        acc[name] = hits / len(x)
    assert acc["int8"] >= acc["fp32"] - 0.02, acc


def test_int8_dense_dynamic_rows_left_to_fallback_exact():
    """A symbolic row count (dynamic batch) is declined by the int8 rule (weight left
    unpacked) and still computes exactly."""
    w = np.random.default_rng(5).integers(-128, 128, size=(40, 24)).astype("int8")
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, 40), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32")))
        bb.emit_func_output(out)
    ex, _ = _build(bb.get(), VNNI)
    if RUN_TARGET is not VNNI:
        ex, _ = _build(bb.get(), RUN_TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for m in (1, 7):
        xin = np.random.default_rng(m).integers(0, 256, size=(m, 40)).astype("uint8")
        got = vm["main"](tvm.runtime.tensor(xin)).numpy()
        np.testing.assert_array_equal(got, xin.astype(np.int32) @ w.astype(np.int32))
