"""``hwcc bench --per-layer`` (issue #22): where the time of one inference goes.

One real build of the bundled digits CNN for a target this host runs; the profile lists that
artifact's kernels, slowest first, with times, shares, FLOP counts recorded at compile time
(checked against the analytic count of a conv), GFLOP/s, % of the target's peak and the rule
that scheduled each kernel; ``--json PATH`` writes the data and a PNG chart beside it. An
artifact whose manifest predates the per-kernel information still profiles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

import compiler
from compiler.artifact.package import seal_manifest
from compiler.artifact.profile import INT8_DOT_OPS, peaks
from compiler.cli.main import main
from compiler.lower.schedules import DEFAULT_RULES
from examples import example_model
from targets import Capabilities, host_arch, missing_features
from tests.hostcpu import host_target

MODEL = example_model("digits_cnn")
FIELDS = {"kernel", "calls", "total_ms", "share", "flops", "gflops", "peak_fraction", "schedule"}
RULES = {type(r).__name__ for r in DEFAULT_RULES}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN built for the widest target this host runs (no tuning records)."""
    out = tmp_path_factory.mktemp("profile") / "digits"
    art = compiler.compile(MODEL, host_target(2), output_dir=out, tuning_log=False,
                           verify=False)
    return art.path


@pytest.fixture(scope="module")
def profiled(artifact: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict, Path, str]:
    """``hwcc bench --per-layer --json PATH``: the JSON written, its path, the text printed."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("out") / "digits_profile.json"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["bench", str(artifact), "--repeat", "5", "--warmup", "1", "--per-layer",
                   "--json", str(path)])
    assert rc == 0
    return json.loads(path.read_text()), path, text.getvalue()


def _manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def test_lists_the_artifacts_kernels_slowest_first(artifact: Path,
                                                   profiled: tuple[dict, Path, str]) -> None:
    """Every fused kernel of the build, each once; times > 0; shares sum to 1; sorted."""
    data = profiled[0]
    kernels = data["per_layer"]["kernels"]
    info = _manifest(artifact)["kernel_info"]
    names = [k["kernel"] for k in kernels]
    assert len(names) == len(set(names))
    assert set(names) <= set(info)  # PrimFuncs of the module, no VM builtins
    assert {n for n in info if n.startswith("fused_")} <= set(names)
    for k in kernels:
        assert FIELDS <= set(k)
        assert k["calls"] >= 1 and k["total_ms"] > 0
    assert sum(k["share"] for k in kernels) == pytest.approx(1.0, abs=1e-6)
    times = [k["total_ms"] for k in kernels]
    assert times == sorted(times, reverse=True)
    assert data["per_layer"]["kernel_ms"] == pytest.approx(sum(times), rel=1e-3)
    assert data["median_ms"] > 0  # the plain benchmark's fields stay


def test_each_kernel_names_the_rule_that_scheduled_it(profiled: tuple[dict, Path, str]
                                                      ) -> None:
    kernels = profiled[0]["per_layer"]["kernels"]
    for k in kernels:
        assert k["schedule"].startswith("default rule: "), k
        assert k["schedule"].removeprefix("default rule: ") in RULES
    assert any("Winograd" in k["schedule"] for k in kernels)  # 3x3 stride-1 convs


def test_rates_follow_from_flops_time_and_the_targets_peak(artifact: Path,
                                                           profiled: tuple[dict, Path, str]
                                                           ) -> None:
    data = profiled[0]["per_layer"]
    caps = Capabilities(**{**_manifest(artifact)["target"]["capabilities"], "int8_dot": ()})
    assert data["peak_gflops"] == pytest.approx(caps.peak_gflops, rel=0.25)  # clock re-read
    for k in data["kernels"]:
        assert k["ops"] == "float" and k["flops"] is not None
        assert k["gflops"] == pytest.approx(k["flops"] * k["calls"] / k["total_ms"] / 1e6,
                                            rel=1e-2, abs=1e-3)
        assert k["peak_fraction"] == pytest.approx(k["gflops"] / data["peak_gflops"],
                                                   rel=1e-2, abs=1e-4)


def test_conv_flops_equal_the_analytic_count(profiled: tuple[dict, Path, str]) -> None:
    """The stride-2 3x3 conv (not a Winograd candidate): 2*N*F*OH*OW*C*KH*KW, plus, by
    ``estimate_tir_flops``'s rules, one operation per output element for each fused
    elementwise op (the folded batch norm's bias add, the ReLU); padding is free."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(MODEL)))
    weights = {t.name: t.dims for t in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    conv = next(n for n in model.graph.node if n.op_type == "Conv"
                and list(onnx.helper.get_attribute_value(
                    next(a for a in n.attribute if a.name == "strides"))) == [2, 2])
    f, c, kh, kw = weights[conv.input[1]]
    n, _, oh, ow = shapes[conv.output[0]]
    macs = n * f * oh * ow * c * kh * kw
    outputs = n * f * oh * ow
    kernels = profiled[0]["per_layer"]["kernels"]
    counts = [k["flops"] for k in kernels
              if "conv2d" in k["kernel"] and "winograd" not in k["kernel"]]
    matches = [x for x in counts if (x - 2 * macs) % outputs == 0 and 0 <= x - 2 * macs
               <= 3 * outputs]
    assert matches == [2 * macs + 2 * outputs], (counts, 2 * macs, outputs)


def test_writes_a_png_chart_beside_the_json(profiled: tuple[dict, Path, str]) -> None:
    png = profiled[1].with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in profiled[2]


def test_prints_one_row_per_kernel(profiled: tuple[dict, Path, str]) -> None:
    data, _, text = profiled
    rows = [ln.split()[0] for ln in text.splitlines() if ln.startswith("    ")][1:]
    assert rows == [k["kernel"] for k in data["per_layer"]["kernels"]]
    assert "GFLOP/s" in text and "default rule:" in text and "% peak" in text


def test_an_old_manifest_still_profiles(artifact: Path, profiled: tuple[dict, Path, str],
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """Without ``kernel_info`` (hwcc before issue #22): the same kernels (told from the VM's
    builtins by the module library), schedule "unknown", no FLOP counts."""
    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    manifest = _manifest(old)
    del manifest["kernel_info"]
    (old / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    assert main(["bench", str(old), "--repeat", "3", "--warmup", "0", "--per-layer",
                 "--json"]) == 0
    kernels = json.loads(capsys.readouterr().out)["per_layer"]["kernels"]
    assert ({k["kernel"] for k in kernels}
            == {k["kernel"] for k in profiled[0]["per_layer"]["kernels"]})
    assert {k["schedule"] for k in kernels} == {"unknown"}
    assert all(k["flops"] is None and k["gflops"] is None and k["peak_fraction"] is None
               for k in kernels)
    assert sum(k["share"] for k in kernels) == pytest.approx(1.0, abs=1e-6)


def _lacking() -> str | None:
    if host_arch() != "x86_64":
        return None
    return next((f for f in ("avx512fp16", "amx-int8", "avx512f")
                 if missing_features([f"+{f}"])), None)


def test_refuses_an_artifact_for_cpu_features_this_host_lacks(
        artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The artifact's own check, before the module is loaded: one line naming the feature."""
    lacking = _lacking()
    if lacking is None:
        pytest.skip("no x86 feature this host lacks")
    foreign = tmp_path / "foreign"
    shutil.copytree(artifact, foreign)
    manifest = _manifest(foreign)
    manifest["target"]["cpu_features"] = [*manifest["target"]["cpu_features"], f"+{lacking}"]
    (foreign / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    assert main(["bench", str(foreign), "--per-layer", "--json", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and lacking in err[0] and err[0].startswith("hwcc: error:")
    assert not (tmp_path / "p.json").exists()


def test_json_path_in_a_missing_directory_is_one_line(artifact: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert main(["bench", str(artifact), "--per-layer", "--json",
                 str(tmp_path / "nowhere" / "p.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


@pytest.mark.parametrize("caps, int8_scale", [
    (Capabilities(vector_bits=256, peak_gflops=100.0, int8_dot=("vpmaddubsw",)), 2.0),
    (Capabilities(vector_bits=512, peak_gflops=100.0, int8_dot=("vpmaddubsw",)), 1.0),
    (Capabilities(vector_bits=512, peak_gflops=100.0,
                  int8_dot=("vpdpbusd", "vpmaddubsw512", "vpmaddubsw")), 4.0),
    (Capabilities(vector_bits=128, peak_gflops=100.0, int8_dot=("sdot",)), 4.0),
    (Capabilities(vector_bits=128, peak_gflops=100.0, int8_dot=()), 1.0),
])
def test_int8_peak_scales_the_fp32_peak_by_the_dot_instruction(caps: Capabilities,
                                                               int8_scale: float) -> None:
    assert set(caps.int8_dot) <= set(INT8_DOT_OPS)
    assert peaks(caps) == (100.0, pytest.approx(100.0 * int8_scale))


def test_no_peak_without_one() -> None:
    assert peaks(Capabilities(peak_gflops=0.0)) == (None, None)
    assert peaks(None) == (None, None)


def test_int8_kernels_are_recorded_as_int8() -> None:
    """An int8 x int8 -> int32 matmul counts as int8 (rated in GOP/s against the int8
    peak); a float one as float."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from compiler.lower.lowering import kernel_info

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(a: R.Tensor((4, 16), "int8"), b: R.Tensor((16, 8), "int8"),
                 x: R.Tensor((4, 16), "float32"), y: R.Tensor((16, 8), "float32")):
            return (R.matmul(a, b, out_dtype="int32"), R.matmul(x, y))

    funcs = {gv.name_hint: f for gv, f in relax.transform.LegalizeOps()(Mod).functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    info = kernel_info(funcs, funcs)
    kinds = sorted(i["ops"] for i in info.values())
    assert kinds == ["float", "int8"]
    assert all(i["flops"] == 2 * 4 * 16 * 8 and i["schedule"] == "unscheduled"
               for i in info.values())
