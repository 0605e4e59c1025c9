"""The embedded target end to end: ONNX + calibration -> standalone C99 -> simulator.

Every check compares with something independent of the library: a numpy interpreter of the
artifact's integer graph written in conftest.py (bit-exactness), onnxruntime on the float
model (accuracy), real cross compilers (bare-metal Cortex-M4 and RISC-V under qemu), and the
documented memory layout (the arena). Each model compiles once per accelerator config
(module-scoped cache).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import api
from compiler.artifact.embedded import EmbeddedArtifact
from compiler.artifact.runtime import Artifact
from compiler.errors import CompileError, ConfigError, HwccError, TargetError
from compiler.pipeline import CompressionOptions

from .conftest import (
    EXAMPLES,
    clip_model,
    flatten_gemm_model,
    flatten_relu_gemm_model,
    float_op_model,
    interpret,
    largest_activation_bytes,
    load_graph,
    random_calib,
    resnet_block_model,
    strided_dilated_model,
)

SMALL = "embedded -mac=8x8 -spad=64 -acc=16 -dma=8"
DEFAULT = "embedded"
#: model key -> (builder, per-sample input shape) of the models built here
SYNTHETIC: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[int, ...]]] = {
    "resnet_block": (resnet_block_model, (1, 3, 12, 12)),
    "flatten_gemm": (flatten_gemm_model, (1, 3, 8, 8)),
    "strided_dilated": (strided_dilated_model, (1, 3, 11, 11)),
    "flatten_relu_gemm": (flatten_relu_gemm_model, (1, 3, 6, 6)),
    "clip": (clip_model, (1, 3, 6, 6)),
}
EXAMPLE = {"digits": "digits", "mnist": "mnist"}


def _calib(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(EXAMPLES / f"{name}_calib.npz"))


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(EXAMPLES / f"{name}_data.npz") as z:
        return z["input"], z["label"]


class Builds:
    """Compiles each (model, target, tile records or not) once into the module's temporary
    directory. ``tuned``: use the tile records the repository ships for this accelerator
    (the default of compile; tuning_logs/embedded/) or, when False, the default tiles."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[str, str, bool], EmbeddedArtifact] = {}

    def model_path(self, key: str) -> Path:
        if key in EXAMPLE:
            return EXAMPLES / f"{key}_cnn.onnx"
        p = self.root / f"{key}.onnx"
        if not p.exists():
            onnx.save(SYNTHETIC[key][0](), str(p))
        return p

    def calib(self, key: str) -> dict[str, np.ndarray]:
        return _calib(key) if key in EXAMPLE else random_calib(SYNTHETIC[key][1])

    def __call__(self, key: str, target: str = DEFAULT, tuned: bool = True
                 ) -> EmbeddedArtifact:
        if (key, target, tuned) not in self.cache:
            out = self.root / f"{key}-{len(self.cache)}"
            art = api.compile(self.model_path(key), target, output_dir=out,
                              compression=CompressionOptions(quantize="int8",
                                                             calibration=self.calib(key)),
                              tuning_log=None if tuned else False)
            assert isinstance(art, EmbeddedArtifact)
            if not tuned:
                assert art.manifest["embedded"]["tuned_layers"] == 0
            self.cache[(key, target, tuned)] = art
        return self.cache[(key, target, tuned)]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("embedded"))


def _int8_inputs(key: str, art: EmbeddedArtifact, n_data: int = 4) -> list[np.ndarray]:
    """Quantized data samples, seeded random int8 over the whole range, and the extremes."""
    shape = tuple(art.inputs[0].shape)
    rng = np.random.default_rng(42)
    if key in EXAMPLE:
        x, _ = _data(key)
        floats = [x[i] for i in range(n_data)]
    else:
        floats = [rng.random(shape, dtype=np.float32) for _ in range(n_data)]
    qs = [art.quantize_input(f) for f in floats]
    qs += [rng.integers(-128, 128, shape).astype(np.int8) for _ in range(2)]
    qs += [np.full(shape, 127, np.int8), np.full(shape, -128, np.int8)]
    return qs


# -- 1. bit-exactness against an independent interpreter of the integer graph ----------------
BIT_EXACT = [  # the 8x8 array on the models whose layers differ most (suite time)
    ("digits", DEFAULT, True), ("digits", DEFAULT, False), ("digits", SMALL, True),
    ("mnist", DEFAULT, True),
    ("resnet_block", DEFAULT, True), ("resnet_block", SMALL, True),
    ("flatten_gemm", DEFAULT, True), ("flatten_gemm", SMALL, True),
    ("strided_dilated", DEFAULT, True), ("strided_dilated", SMALL, True),
    ("flatten_relu_gemm", DEFAULT, True),
    ("clip", DEFAULT, True),
]


@pytest.mark.parametrize("key,target,tuned", BIT_EXACT)
def test_run_int8_matches_numpy_interpreter(build: Builds, key: str, target: str,
                                            tuned: bool) -> None:
    art = build(key, target, tuned)
    graph, params = load_graph(art.path)
    for i, q in enumerate(_int8_inputs(key, art)):
        got = art.run_int8(q)
        assert got.dtype == np.int8
        assert tuple(got.shape) == tuple(art.outputs[0].shape)
        want = interpret(graph, params, q)
        assert got.tobytes() == want.reshape(got.shape).tobytes(), (
            f"input {i}: simulated C {got.ravel()[:10]} != numpy {want.ravel()[:10]}")


def test_small_config_is_used(build: Builds) -> None:
    """The options of the triple reach the C (else the 8x8 runs above prove nothing)."""
    art = build("resnet_block", SMALL)
    acc = art.manifest["embedded"]["accelerator"]
    assert (acc["rows"], acc["cols"], acc["spad_kb"], acc["acc_kb"], acc["dma_bytes"]) == \
        (8, 8, 64, 16, 8)
    cfg = (art.path / "hwcc_acc_config.h").read_text()
    assert re.search(r"#define HWCC_ACC_ROWS 8\b", cfg)
    assert re.search(r"#define HWCC_ACC_SPAD_BYTES 65536\b", cfg)


def test_graphs_exercise_what_they_are_meant_to(build: Builds) -> None:
    """The hand-built models reach the device as intended: residual add, max pooling, mean,
    a conv whose 24 output channels pad to the block, and a Gemm on a flattened map."""
    g, p = load_graph(build("resnet_block").path)
    kinds = [lay["kind"] for lay in g["layers"]]
    assert kinds == ["conv", "conv", "conv", "add", "maxpool", "conv", "mean", "view", "conv"]
    assert p[f"{g['layers'][5]['name']}.weight"].shape == (24, 16, 3, 3)
    assert p[f"{g['layers'][-1]['name']}.weight"].shape == (5, 24, 1, 1)

    g, p = load_graph(build("flatten_gemm").path)
    shapes = {t["name"]: t["shape"] for t in g["tensors"]}
    fc = g["layers"][-1]
    view = next(lay for lay in g["layers"] if lay["output"] == fc["inputs"][0])
    assert view["kind"] == "view" and shapes[view["inputs"][0]] == [1, 20, 4, 4]
    assert p[f"{fc['name']}.weight"].shape == (7, 320, 1, 1)
    assert g["layers"][1]["kind"] == "maxpool" and g["layers"][1]["attrs"]["pad"] == [1] * 4


def test_run_dequantizes_run_int8(build: Builds) -> None:
    art = build("digits")
    x, _ = _data("digits")
    q = art.quantize_input(x[0])
    np.testing.assert_array_equal(q, np.clip(np.rint(x[0] / art.input_scale), -128, 127))
    got = art.run({"input": x[0]})["logits"]
    want = art.run_int8(q).astype(np.float32) * np.float32(art.output_scale)
    np.testing.assert_array_equal(got, want)


# -- 2. accuracy against the float model in onnxruntime --------------------------------------
@pytest.mark.parametrize("key", ["digits", "mnist"])
def test_top1_close_to_float_model(build: Builds, key: str) -> None:
    import onnxruntime as ort

    art = build(key)
    x, labels = _data(key)
    sess = ort.InferenceSession(str(EXAMPLES / f"{key}_cnn.onnx"),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref = np.array([sess.run(None, {name: x[i]})[0].argmax() for i in range(len(x))])
    ours = np.array([art.run({name: x[i]})[art.outputs[0].name].argmax()
                     for i in range(len(x))])
    acc_float, acc_int8 = (ref == labels).mean(), (ours == labels).mean()
    assert abs(acc_int8 - acc_float) <= 0.005, (
        f"{key}: int8 top-1 {acc_int8:.2%} vs float {acc_float:.2%} on {len(x)} samples")
    assert acc_float > 0.9  # the data and labels are what the test thinks they are


# -- 3. the C: host gcc, bare-metal Cortex-M4, no float, no heap ----------------------------
DEVICE_FILES = ("model.c", "model.h", "hwcc_kernels.c", "hwcc_kernels.h", "hwcc_acc.h",
                "hwcc_acc_config.h")
ALLOWED_INCLUDES = {"stdint.h", "model.h", "hwcc_kernels.h", "hwcc_acc.h", "hwcc_acc_config.h"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}"
    return res


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", src)


@pytest.mark.parametrize("key,target", [("digits", DEFAULT), ("resnet_block", SMALL)])
def test_c_builds_with_host_gcc(build: Builds, key: str, target: str,
                                tmp_path: Path) -> None:
    gcc = _tool("gcc")
    art = build(key, target)
    for f in ("model.c", "hwcc_kernels.c", "hwcc_acc_sim.c", "hwcc_sim_main.c"):
        _run([gcc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", str(art.path),
              "-c", str(art.path / f), "-o", str(tmp_path / f"{f}.o")])


@pytest.mark.parametrize("key,target", [("digits", DEFAULT), ("resnet_block", SMALL),
                                        ("flatten_gemm", DEFAULT)])
def test_c_builds_bare_metal_cortex_m4(build: Builds, key: str, target: str,
                                       tmp_path: Path) -> None:
    cc, ld, nm = (_tool(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-ld",
                                     "arm-none-eabi-nm"))
    art = build(key, target)
    objs = []
    for f in ("model.c", "hwcc_kernels.c"):
        o = tmp_path / f"{f}.o"
        _run([cc, "-std=c99", "-Wall", "-Werror", "-O2", "-mcpu=cortex-m4", "-mthumb",
              "-mfloat-abi=soft", "-ffreestanding", "-I", str(art.path), "-c",
              str(art.path / f), "-o", str(o)])
        objs.append(str(o))
    linked = tmp_path / "model_all.o"
    _run([ld, "-r", *objs, "-o", str(linked)])
    undefined = _run([nm, "-u", str(linked)]).stdout.split()
    undefined = [s for s in undefined if s != "U"]
    assert undefined, "nm -u listed nothing: the model calls no accelerator function?"
    assert all(s.startswith("hwcc_acc_") for s in undefined), (
        f"the device code needs more than the accelerator interface: {undefined}")
    defined = _run([nm, "--defined-only", str(linked)]).stdout
    assert re.search(r"\bT hwcc_model_run\b", defined)


@pytest.mark.parametrize("key", ["digits", "mnist", "resnet_block"])
def test_device_code_has_no_float_and_no_heap(build: Builds, key: str) -> None:
    art = build(key)
    for f in DEVICE_FILES:
        raw = (art.path / f).read_text()
        src = _strip_comments(raw)
        assert not re.search(r"\b(float|double)\b", src), f"{f} uses floating point"
        assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\b", src), f"{f}: heap"
        includes = set(re.findall(r'#\s*include\s*[<"]([^>"]+)[>"]', src))
        assert includes <= ALLOWED_INCLUDES, f"{f} includes {includes - ALLOWED_INCLUDES}"


def test_model_header_matches_manifest(build: Builds) -> None:
    art = build("mnist")
    h = (art.path / "model.h").read_text()
    e = art.manifest["embedded"]

    def define(name: str) -> int:
        m = re.search(rf"#define {name} (\d+)", h)
        assert m, name
        return int(m.group(1))

    assert define("HWCC_MODEL_ARENA_BYTES") == e["arena_bytes"]
    assert define("HWCC_MODEL_INPUT_BYTES") == int(np.prod(art.inputs[0].shape))
    assert define("HWCC_MODEL_OUTPUT_BYTES") == int(np.prod(art.outputs[0].shape))


# -- 4. RISC-V under qemu, and the host build under sanitizers -------------------------------
def _sim_inputs(key: str, art: EmbeddedArtifact) -> list[np.ndarray]:
    x = _int8_inputs(key, art, n_data=2)
    return [x[0], x[1], x[2]]  # two data samples, one random full-range


def _check_sim_binary(cmd: list[str], art: EmbeddedArtifact, key: str, tmp_path: Path) -> None:
    for i, q in enumerate(_sim_inputs(key, art)):
        fin, fout = tmp_path / f"in{i}.bin", tmp_path / f"out{i}.bin"
        fin.write_bytes(q.tobytes())
        res = _run([*cmd, str(fin), str(fout)], timeout=120)
        got = fout.read_bytes()
        assert got == art.run_int8(q).tobytes(), f"input {i}: the standalone build disagrees"
        m = re.search(r"cycles (\d+)", res.stdout)
        assert m, res.stdout
        # simulate() takes float inputs; these quantize back to exactly q
        feeds = {art.inputs[0].name: q.astype(np.float32) * np.float32(art.input_scale)}
        assert np.array_equal(art.quantize_input(feeds[art.inputs[0].name]), q)
        assert int(m.group(1)) == art.simulate(feeds)["cycles"]


@pytest.mark.parametrize("key,target", [("digits", DEFAULT), ("resnet_block", SMALL)])
def test_riscv64_build_under_qemu_matches(build: Builds, key: str, target: str,
                                          tmp_path: Path) -> None:
    cc, qemu = _tool("riscv64-linux-gnu-gcc"), _tool("qemu-riscv64-static")
    art = build(key, target)
    exe = tmp_path / "model_sim"
    _run([cc, "-std=c99", "-O2", "-static", "-I", str(art.path),
          *(str(art.path / f) for f in ("model.c", "hwcc_kernels.c", "hwcc_acc_sim.c",
                                        "hwcc_sim_main.c")), "-o", str(exe)])
    _check_sim_binary([qemu, str(exe)], art, key, tmp_path)


@pytest.mark.parametrize("key,target", [("flatten_gemm", SMALL), ("resnet_block", DEFAULT)])
def test_host_build_clean_under_asan_ubsan(build: Builds, key: str, target: str,
                                           tmp_path: Path) -> None:
    """The exact arena of model.h (no slack), out-of-bounds and undefined behaviour checked."""
    gcc = _tool("gcc")
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    probe_cmd = [gcc, "-fsanitize=address,undefined", str(probe), "-o", str(tmp_path / "probe")]
    if subprocess.run(probe_cmd, check=False, capture_output=True).returncode != 0:
        pytest.skip("gcc here cannot link -fsanitize=address,undefined")
    art = build(key, target)
    exe = tmp_path / "model_sim"
    _run([gcc, "-std=c99", "-O1", "-g", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=all", "-I", str(art.path),
          *(str(art.path / f) for f in ("model.c", "hwcc_kernels.c", "hwcc_acc_sim.c",
                                        "hwcc_sim_main.c")), "-o", str(exe)])
    _check_sim_binary([str(exe)], art, key, tmp_path)


# -- 5. static memory ---------------------------------------------------------------------
@pytest.mark.parametrize("key,target", [("digits", DEFAULT), ("mnist", DEFAULT),
                                        ("resnet_block", DEFAULT), ("resnet_block", SMALL),
                                        ("flatten_gemm", SMALL)])
def test_arena_holds_live_tensors(build: Builds, key: str, target: str) -> None:
    art = build(key, target)
    e = art.manifest["embedded"]
    acc = e["accelerator"]
    graph, _ = load_graph(art.path)
    largest = largest_activation_bytes(graph, max(acc["rows"], acc["cols"]))
    arena, peak = e["arena_bytes"], e["peak_live_bytes"]
    assert arena >= peak >= largest > 0
    assert arena <= 2 * peak, f"arena {arena} bytes for a peak of {peak}"
    assert arena % 16 == 0
    # the loaded artifact is the same as a fresh load of its directory
    again = Artifact.load(art.path)
    assert isinstance(again, EmbeddedArtifact)
    assert again.manifest["embedded"]["arena_bytes"] == arena


# -- 6. refusals: one line each, the right HwccError, naming the thing -----------------------
def _one_line(err: HwccError) -> str:
    msg = str(err)
    assert msg and "\n" not in msg.strip(), msg
    return msg


@pytest.mark.parametrize("op", ["Sigmoid", "Softmax"])
def test_refuses_float_op(op: str, tmp_path: Path) -> None:
    path = tmp_path / f"{op}.onnx"
    onnx.save(float_op_model(op), str(path))
    comp = CompressionOptions(quantize="int8", calibration=random_calib((1, 3, 8, 8), n=8))
    try:
        api.compile(path, DEFAULT, output_dir=tmp_path / "out", compression=comp)
    except CompileError as err:
        msg = _one_line(err)
    except Exception as err:  # noqa: BLE001 - reported as the failure itself
        raise AssertionError(f"expected CompileError, got {type(err).__name__}: {err}")
    else:
        raise AssertionError("compiled a model with a float op for the embedded target")
    assert op.lower() in msg.lower(), msg
    assert re.search(r"'[A-Za-z_][\w.]*'", msg), f"no binding / node named: {msg}"
    assert not (tmp_path / "out").exists()


def test_refuses_layer_that_cannot_tile(tmp_path: Path) -> None:
    comp = CompressionOptions(quantize="int8", calibration=_calib("digits"))
    with pytest.raises(CompileError) as info:
        api.compile(EXAMPLES / "digits_cnn.onnx", "embedded -spad=1 -acc=1",
                    output_dir=tmp_path / "out", compression=comp)
    msg = _one_line(info.value)
    assert "scratchpad" in msg and re.search(r"\bl\d+_conv\b", msg), msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compression", [
    None,
    CompressionOptions(quantize="int8"),
    CompressionOptions(calibration={"input": np.zeros((2, 1, 1, 8, 8), np.float32)}),
], ids=["nothing", "no-calib", "no-quantize"])
def test_requires_int8_and_calibration(compression: CompressionOptions | None,
                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        api.compile(EXAMPLES / "digits_cnn.onnx", DEFAULT, output_dir=tmp_path / "out",
                    compression=compression)
    msg = _one_line(info.value)
    assert "--quantize int8" in msg and "--calib" in msg, msg


def test_unknown_option_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as info:
        api.compile(EXAMPLES / "digits_cnn.onnx", "embedded -foo=1",
                    output_dir=tmp_path / "out",
                    compression=CompressionOptions(quantize="int8",
                                                   calibration=_calib("digits")))
    msg = _one_line(info.value)
    for word in ("-foo", "-mac", "-spad", "-acc", "-dma"):
        assert word in msg, msg


@pytest.mark.parametrize("spec,word", [("embedded -mac=3x3", "-mac"),
                                       ("embedded -spad=0", "-spad"),
                                       ("embedded -dma=x", "-dma")])
def test_malformed_option_values(spec: str, word: str, tmp_path: Path) -> None:
    with pytest.raises(TargetError) as info:
        api.compile(EXAMPLES / "digits_cnn.onnx", spec, output_dir=tmp_path / "out",
                    compression=CompressionOptions(quantize="int8",
                                                   calibration=_calib("digits")))
    msg = _one_line(info.value)
    assert word in msg and spec in msg, msg
