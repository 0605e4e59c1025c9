"""int8 kernels on AArch64: ``sdot`` (+dotprod) and ``smmla`` (+i8mm) chosen from capabilities.

On ARM the quantize pass makes s8×s8 kernels (symmetric int8 activations). The int8 rules
(``Int8Dense``, ``Int8Conv2d``) tensorize them with ``sdot`` (4 int32 lanes += 4 s8·s8 products
each), and 2-D matmuls of two rows or more with ``smmla`` (a 2x8 by 8x2 product into a 2x2
int32 tile) when the target has +i8mm. What is checked:

- compile only (any host): every int8 kernel is scheduled by its rule, its TIR calls the LLVM
  intrinsic and its assembly holds the instruction inside the kernel's own function; plain
  NEON leaves int8 to the generic rules, and each ISA's activation signedness is its own (s8
  kernels are not tensorized for x86, u8 ones not for ARM);
- numerics under ``qemu-aarch64-static -cpu max`` through the deploy bundle (``hwcc deploy``:
  the C++ runner and TVM's aarch64 runtime, as ``tests/compiler/artifact/test_deploy.py``):
  odd-sized QDQ convs and matmuls equal numpy's integer arithmetic bit for bit (power-of-two
  scales make the float output exact), with each target's kernels; the digits CNN quantized
  with ``--quantize int8`` for +dotprod keeps its float top-1 accuracy on the 360 held-out
  digits within half a point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

import compiler
from compiler.artifact.deploy import file_stem, make_bundle
from compiler.lower.schedules import apply_default_schedules, is_scheduled
from compiler.pipeline import CompressionOptions
from targets import parse_target

SDOT = "aarch64-linux-gnu -mattr=+neon,+dotprod"
MMLA = "aarch64-linux-gnu -mattr=+neon,+dotprod,+i8mm"
NEON = "aarch64-linux-gnu -mattr=+neon"
VNNI = "x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512vnni"
SDOT_LLVM = "llvm.aarch64.neon.sdot"
MMLA_LLVM = "llvm.aarch64.neon.smmla"
SDOT_ASM = r"\bsdot\s+v\d+\.4s,\s*v\d+\.16b,\s*v\d+\.(16b|4b\[\d\])"
MMLA_ASM = r"\bsmmla\s+v\d+\.4s,\s*v\d+\.16b,\s*v\d+\.16b"
QEMU = "qemu-aarch64-static"
A64_CC = "aarch64-linux-gnu-g++"
A64_OBJDUMP = "aarch64-linux-gnu-objdump"
A64_SYSROOT = "/usr/aarch64-linux-gnu"
SCALE = np.float32(0.01)


def _tvm_target(spec: str) -> tvm.target.Target:
    return parse_target(spec).tvm_target()


# -- compile only ---------------------------------------------------------------------------
def _dense_mod(m: int, k: int, n: int, transposed: bool = False, dtype: str = "int8",
               epilogue: bool = True):
    """int8 matmul (+ a float epilogue), the weight ``[K, N]`` or permuted from ``[N, K]``."""
    rng = np.random.default_rng(m * 100 + k)
    w = rng.integers(-128, 128, size=(n, k) if transposed else (k, n)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            wt = relax.const(w)
            if transposed:
                wt = bb.emit(relax.op.permute_dims(wt))
            y = bb.emit(relax.op.matmul(x, wt, out_dtype="int32"))
            if epilogue:
                y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"),
                                              relax.const(SCALE)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _conv_mod(c: int, f: int, h: int, k: int, stride: int, dtype: str = "int8"):
    """int8 NCHW conv (padding k // 2) + a float epilogue."""
    rng = np.random.default_rng(c * 10 + f)
    w = rng.integers(-128, 128, size=(f, c, k, k)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, h, h), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=k // 2,
                                           out_dtype="int32"))
            y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(SCALE)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _build(mod: tvm.IRModule, target: tvm.target.Target):
    """Legalize, fuse, apply hwcc's default schedules and build; (executable, scheduled)."""
    with target:
        passes = cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)
        scheduled = apply_default_schedules(tvm.transform.Sequential(passes)(mod), target)
        passes = cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
        lowered = tvm.transform.Sequential(passes)(scheduled)
    return tvm.compile(lowered, target=target, relax_pipeline=None), scheduled


def _int8_kernels(scheduled: tvm.IRModule) -> dict[str, tuple[str, str]]:
    """name -> (schedule rule, TIR) of the kernels that contract 8-bit integers."""
    out = {}
    for gv, func in scheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        text = func.script()
        if re.search(r'"u?int8"', text) and '"int32"' in text:
            rule = str(func.attrs.get("hwcc.schedule", "")) if func.attrs is not None else ""
            out[gv.name_hint] = (rule, text)
    return out


def _kernel_asm(asm: str, name: str) -> str:
    """The assembly of kernel ``name``: its global symbols (``__tvm_ffi_<name>``,
    ``<name>_compute_``) each up to the next global symbol, so with the parallel lambdas
    (local ``.L__tvm_parallel_lambda*`` labels) that follow them."""
    chunks = re.split(r"^(?=[A-Za-z_][\w$]*:)", asm, flags=re.MULTILINE)
    mine = [c for c in chunks if re.match(rf"(__tvm_ffi_)?{re.escape(name)}(_compute_)?:", c)]
    assert mine, f"no function {name} in the assembly"
    return "".join(mine)


@pytest.mark.parametrize(
    "target,mod,rule,intrinsic,asm",
    [
        (SDOT, _dense_mod(7, 30, 37), "Int8Dense", SDOT_LLVM, SDOT_ASM),
        (SDOT, _dense_mod(3, 33, 17, transposed=True), "Int8Dense", SDOT_LLVM, SDOT_ASM),
        (SDOT, _conv_mod(7, 20, 11, 3, 2), "Int8Conv2d", SDOT_LLVM, SDOT_ASM),
        (SDOT, _conv_mod(6, 17, 8, 1, 1), "Int8Conv2d", SDOT_LLVM, SDOT_ASM),
        (MMLA, _dense_mod(7, 30, 37), "Int8Dense", MMLA_LLVM, MMLA_ASM),
        (MMLA, _dense_mod(64, 64, 48, transposed=True), "Int8Dense", MMLA_LLVM, MMLA_ASM),
        (MMLA, _dense_mod(9, 20, 13, epilogue=False), "Int8Dense", MMLA_LLVM, MMLA_ASM),
        (MMLA, _dense_mod(1, 64, 10), "Int8Dense", SDOT_LLVM, SDOT_ASM),  # one row: sdot
        (MMLA, _conv_mod(16, 32, 14, 3, 1), "Int8Conv2d", SDOT_LLVM, SDOT_ASM),  # convs: sdot
    ],
    ids=["dense-sdot", "dense-nk-sdot", "conv3x3s2-sdot", "conv1x1-sdot", "dense-smmla",
         "dense-nk-smmla", "dense-int32-out-smmla", "gemv-i8mm-sdot", "conv-i8mm-sdot"],
)
def test_int8_kernels_are_tensorized_with_the_targets_instruction(target, mod, rule, intrinsic,
                                                                  asm):
    """The int8 kernel is scheduled by its rule, its TIR calls the intrinsic (and not the
    other ARM one) and the kernel's own assembly holds the instruction; every function of the
    module is scheduled."""
    ex, scheduled = _build(mod, _tvm_target(target))
    funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(is_scheduled(f) for f in funcs)
    kernels = _int8_kernels(scheduled)
    assert len(kernels) == 1, list(kernels)
    (name, (got_rule, text)), = kernels.items()
    assert got_rule == rule
    assert intrinsic in text
    other = MMLA_LLVM if intrinsic == SDOT_LLVM else SDOT_LLVM
    assert other not in text
    kernel_asm = _kernel_asm(ex.mod.imports[0].inspect_source("asm"), name)
    assert re.search(asm, kernel_asm), kernel_asm[:2000]


@pytest.mark.parametrize(
    "target,dtype",
    [(NEON, "int8"), (SDOT, "uint8"), (VNNI, "int8")],
    ids=["plain-neon", "sdot-u8-activations", "vnni-s8-activations"],
)
def test_int8_rules_decline_what_the_isa_does_not_compute(target, dtype):
    """Plain NEON (no dot product) leaves int8 kernels to the generic rules; the activation
    signedness is the ISA's (s8 on ARM, u8 on x86): the other one is not tensorized."""
    for mod in (_dense_mod(7, 30, 37, dtype=dtype), _conv_mod(8, 16, 8, 3, 1, dtype=dtype)):
        _, scheduled = _build(mod, _tvm_target(target))
        kernels = _int8_kernels(scheduled)
        assert kernels
        for rule, text in kernels.values():
            assert not rule.startswith("Int8"), rule
            assert "call_llvm_pure_intrin" not in text


# -- numerics under qemu --------------------------------------------------------------------
# (name, kind, sizes): conv (c, f, h, w, k, stride, pad, zero point), matmul (m, k, n, Gemm)
KERNELS = [
    ("conv_a", "conv", (7, 20, 11, 13, 3, 2, 1, 0)),  # odd channels, stride 2
    ("conv_b", "conv", (5, 17, 8, 8, 1, 1, 0, 0)),  # 1x1, 17 filters
    ("conv_c", "conv", (6, 12, 9, 7, 3, 1, 1, 3)),  # zero point 3: explicit pad, correction
    ("mm_a", "matmul", (7, 30, 37, False)),  # odd rows: smmla's last pair half padding
    ("mm_b", "matmul", (6, 33, 17, True)),  # Gemm
    ("mm_c", "matmul", (1, 64, 10, False)),  # one row: sdot even with +i8mm
]


def _kernels_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray],
                                           dict[str, np.ndarray]]:
    """A QDQ model of independent int8 convs / matmuls (int8 inputs, power-of-two scales,
    float outputs) and numpy's integer result for random inputs: (model, feeds, expected)."""
    rng = np.random.default_rng(seed)
    nodes, inits, inputs, outputs = [], [], [], []
    feeds, want = {}, {}

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    for name, kind, size in KERNELS:
        if kind == "conv":
            c, f, h, w_, k, stride, pad, zp = size
            xshape, wshape, waxis = (1, c, h, w_), (f, c, k, k), 0
            oh, ow = (h + 2 * pad - k) // stride + 1, (w_ + 2 * pad - k) // stride + 1
            oshape = (1, f, oh, ow)
        else:
            m, k, n, gemm = size
            zp, xshape, wshape, waxis, oshape = 0, (m, k), (k, n), 1, (m, n)
        x = rng.integers(-128, 128, size=xshape).astype(np.int8)
        wq = rng.integers(-127, 128, size=wshape).astype(np.int8)
        n_out = wshape[waxis]
        # the importer folds DequantizeLinear of a constant; the quantize pass finds the int8
        # grid again from each channel's largest magnitude: make it 127
        np.moveaxis(wq, waxis, 0)[:, 0] = 127
        sw = (2.0 ** -(4 + np.arange(n_out) % 3)).astype(np.float32)
        sx = np.float32(2.0 ** -3)
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{name}_x", init(f"{name}_sx", np.array(sx)),
                                 init(f"{name}_zx", np.array(zp, np.int8))], [f"{name}_xf"]))
        nodes.append(helper.make_node(
            "DequantizeLinear", [init(f"{name}_wq", wq), init(f"{name}_sw", sw),
                                 init(f"{name}_zw", np.zeros(n_out, np.int8))],
            [f"{name}_wf"], axis=waxis))
        xi = x.astype(np.int64) - zp
        wi = wq.astype(np.int64)
        if kind == "conv":
            nodes.append(helper.make_node("Conv", [f"{name}_xf", f"{name}_wf"], [name],
                                          kernel_shape=[k, k], strides=[stride, stride],
                                          pads=[pad] * 4))
            xp = np.pad(xi, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # pads with zp - zp
            acc = np.zeros(oshape, np.int64)
            for ry in range(k):
                for rx in range(k):
                    patch = xp[:, :, ry:ry + stride * (oh - 1) + 1:stride,
                               rx:rx + stride * (ow - 1) + 1:stride]
                    acc += np.einsum("bchw,fc->bfhw", patch, wi[:, :, ry, rx])
            scale = (sx * sw).reshape(1, -1, 1, 1)
        else:
            nodes.append(helper.make_node("Gemm" if gemm else "MatMul",
                                          [f"{name}_xf", f"{name}_wf"], [name]))
            acc = xi @ wi
            scale = (sx * sw).reshape(1, -1)
        assert np.abs(acc).max() < 2 ** 24  # acc * (power of two) is exact in float32
        inputs.append(helper.make_tensor_value_info(f"{name}_x", TensorProto.INT8, xshape))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, oshape))
        feeds[f"{name}_x"] = x
        want[name] = (acc.astype(np.float64) * scale).astype(np.float32)
    graph = helper.make_graph(nodes, "int8_kernels", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model, feeds, want


def _require_tools() -> None:
    for tool, package in ((QEMU, "qemu-user-static"), (A64_CC, "g++-aarch64-linux-gnu"),
                          (A64_OBJDUMP, "binutils-aarch64-linux-gnu")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package {package}; "
                        "scripts/install.sh installs it): cannot run aarch64 code here")


def _run_bundle(artifact: Path, feeds: dict[str, np.ndarray], work: Path
                ) -> dict[str, np.ndarray]:
    """Bundle ``artifact`` (hwcc deploy) and run it once under ``qemu-aarch64 -cpu max``."""
    bundle = make_bundle(artifact, work / "bundle")
    inputs = work / "in"
    inputs.mkdir()
    for name, value in feeds.items():
        np.save(inputs / f"{file_stem(name)}.npy", value)
    proc = subprocess.run(
        [QEMU, "-cpu", "max", "-L", A64_SYSROOT, str(bundle / "hwcc_run"),
         "--inputs", str(inputs), "--outputs", str(work / "out")],
        cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {o["name"]: np.load(work / "out" / f"{file_stem(o['name'])}.npy")
            for o in manifest["outputs"]}


def _objdump(path: Path) -> str:
    """The disassembly of an aarch64 shared object."""
    return subprocess.run([A64_OBJDUMP, "-d", str(path)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("target,instructions", [(SDOT, ("sdot",)), (MMLA, ("sdot", "smmla"))],
                         ids=["dotprod", "i8mm"])
def test_int8_kernels_bit_exact_under_qemu(target, instructions, tmp_path):
    """Odd-sized int8 convs (a zero-point pad among them) and matmuls built for the target,
    bundled and run under qemu (``-cpu max``: dotprod and i8mm), equal numpy's integer
    arithmetic exactly; the artifact's int8 kernels were scheduled by the int8 rules and its
    machine code holds the instructions."""
    _require_tools()
    model, feeds, want = _kernels_model()
    art = compiler.compile(model, target, output_dir=tmp_path / "artifact", verify=False)
    manifest = json.loads((art.path / "manifest.json").read_text())
    int8 = {k: v["schedule"] for k, v in manifest["kernel_info"].items() if v["ops"] == "int8"}
    assert len(int8) == len(KERNELS) and all(
        s in ("default rule: Int8Conv2d", "default rule: Int8Dense") for s in int8.values()
    ), int8
    code = _objdump(art.path / manifest["library"])
    for instruction in instructions:
        assert re.search(rf"\t{instruction}\tv\d+\.4s", code), instruction
    got = _run_bundle(art.path, feeds, tmp_path)
    for name, expected in want.items():
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def _batched(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a symbolic batch dimension on its input and output (to pin to N)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in (*out.graph.input, *out.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del out.graph.value_info[:]
    return out


def test_quantized_digits_cnn_under_qemu_keeps_float_accuracy(tmp_path):
    """The digits CNN compiled with ``--quantize int8`` for aarch64 +dotprod (s8 activations,
    sdot kernels), all 360 held-out digits in one batch under qemu: top-1 within half a point
    of the float model (onnxruntime on this host)."""
    _require_tools()
    import onnxruntime as ort

    from examples import example_data, example_model

    data = example_data("digits_cnn")
    x = data["input"][:, 0]  # (N, 1, 8, 8)
    labels = data["label"]
    model = _batched(onnx.load(str(example_model("digits_cnn"))))
    calib = example_data("digits_cnn", "calib")["input"][:, 0]
    # one calibration sample of the pinned batch: the 64 calibration digits, repeated (min/max
    # observers see the same ranges as over 64 batch-1 samples)
    calib_batch = np.resize(calib, (1, *x.shape)).astype(np.float32)
    compression = CompressionOptions(quantize="int8", calibration={"input": calib_batch})
    art = compiler.compile(model, SDOT, output_dir=tmp_path / "artifact", verify=False,
                           input_shapes={"input": x.shape}, compression=compression)
    manifest = json.loads((art.path / "manifest.json").read_text())
    schedules = {v["schedule"] for v in manifest["kernel_info"].values() if v["ops"] == "int8"}
    # (the first conv, one input channel, is left to the generic rules)
    assert {"default rule: Int8Conv2d", "default rule: Int8Dense"} <= schedules, schedules
    out = _run_bundle(art.path, {"input": x}, tmp_path)
    logits = next(iter(out.values()))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    acc_int8 = float((logits.argmax(1) == labels).mean())
    acc_fp32 = float((ref.argmax(1) == labels).mean())
    assert acc_int8 >= acc_fp32 - 0.005, (acc_int8, acc_fp32)
