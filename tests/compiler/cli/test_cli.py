"""The hwcc command line: documented commands, stable JSON fields, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from compiler.cli.main import main
from tests import models

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("m") / "mlp.onnx"
    onnx.save(models.get_model("mlp"), str(p))
    return p


@pytest.fixture(scope="module")
def artifact(mlp_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("a") / "mlp"
    assert main(["compile", str(mlp_file), "--target", "host", "-o", str(out),
                 "--bench-repeat", "3"]) == 0
    return out


def test_compile_prints_size_agreement_latency(mlp_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(mlp_file), "-o", str(tmp_path / "a"), "--bench-repeat",
                 "3"]) == 0
    out = capsys.readouterr().out
    for word in ("params", "agreement", "max abs err", "latency", "kernels"):
        assert word in out


def test_compile_json(mlp_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(mlp_file), "-o", str(tmp_path / "a"), "--json",
                 "--bench-repeat", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["artifact"] == str((tmp_path / "a").resolve())
    assert data["verification"]["max_abs_err"] < 1e-3
    assert data["latency"]["median_ms"] > 0


def test_run_with_inputs_matches_reference(artifact: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Inputs and outputs in .npz keyed by the model's names; values equal the reference."""
    model = models.get_model("mlp")
    feeds = models.random_inputs(model, seed=3)
    np.savez(tmp_path / "in.npz", **feeds)
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--output",
                 str(tmp_path / "out.npz")]) == 0
    ref = ReferenceEvaluator(model).run(None, feeds)
    with np.load(tmp_path / "out.npz") as got:
        assert list(got.files) == [o.name for o in model.graph.output]
        np.testing.assert_allclose(got[model.graph.output[0].name], ref[0], atol=1e-4)


def test_run_accepts_a_sample_axis(artifact: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = models.get_model("mlp")
    batch = np.stack([models.random_inputs(model, seed=s)[model.graph.input[0].name]
                      for s in range(3)])
    np.savez(tmp_path / "in.npz", **{model.graph.input[0].name: batch})
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["samples"] == 3 and "leading sample axis" in data["inputs"]
    assert data["outputs"][model.graph.output[0].name]["shape"] == [3, 4, 10]


def test_run_check_finite_counts_nan_and_inf(artifact: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    """--check-finite: one warning per tensor holding NaN/inf, counts in the JSON; clean
    tensors are not listed; without the flag nothing is said."""
    model = models.get_model("mlp")
    name = model.graph.input[0].name
    x = np.stack([models.random_inputs(model, seed=s)[name] for s in range(2)])
    x[0].flat[0], x[0].flat[1], x[1].flat[5] = np.nan, np.inf, -np.inf
    np.savez(tmp_path / "in.npz", **{name: x})
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--json",
                 "--check-finite"]) == 0
    data = json.loads(capsys.readouterr().out)
    counts = data["non_finite"][name]
    assert (counts["role"], counts["nan"], counts["posinf"], counts["neginf"]) == \
        ("input", 1, 1, 1)
    assert counts["values"] == x.size
    warned = [r.getMessage() for r in caplog.records if "holds" in r.getMessage()]
    assert any(f"input '{name}' holds 1 NaN, 1 +inf, 1 -inf" in w for w in warned)
    clean = models.random_inputs(model, seed=1)
    np.savez(tmp_path / "clean.npz", **clean)
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "clean.npz"), "--json",
                 "--check-finite"]) == 0
    assert json.loads(capsys.readouterr().out)["non_finite"] == {}
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    assert "non_finite" not in json.loads(capsys.readouterr().out)


def test_run_without_inputs_uses_seeded_random(artifact: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(artifact), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["run", str(artifact), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["outputs"] == second["outputs"] and "seed 0" in first["inputs"]


def test_bench_json_fields(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(artifact), "--repeat", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("median_ms", "min_ms", "max_ms", "repeat", "target"):
        assert key in data
    assert data["repeat"] == 5 and data["min_ms"] <= data["median_ms"] <= data["max_ms"]
    # the flag before the directory means the same
    assert main(["bench", "--json", str(artifact), "--repeat", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["repeat"] == 3


def test_bench_compare_onnxruntime(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(artifact), "--repeat", "5", "--compare", "onnxruntime",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    cmp = data["compare"]
    assert cmp["median_ms"] > 0
    assert cmp["speedup"] == pytest.approx(cmp["median_ms"] / data["median_ms"], rel=0.01)


def test_inspect_artifact_json_is_the_manifest(artifact: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(artifact), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((artifact / "manifest.json").read_text())


def test_inspect_model(mlp_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(mlp_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["opset"] == 17 and data["unsupported"] == [] and "Gemm" in data["ops"]


def test_targets_lists_known_triples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for t in ("x86_64-linux-gnu", "aarch64-linux-gnu", "nvptx64-nvidia-cuda", "host ="):
        assert t in out


def test_eval_scores_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """hwcc eval: top-1 accuracy of hwcc equals onnxruntime's on the bundled digits data."""
    from examples import EXAMPLES_DIR, example_model

    out = tmp_path / "digits"
    assert main(["compile", str(example_model("digits_cnn")), "-o", str(out),
                 "--bench-repeat", "0", "--no-verify"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(EXAMPLES_DIR / "digits_data.npz"),
                 "--labels", "label", "--limit", "40", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["top1_accuracy"] == data["reference_top1_accuracy"] > 0.9
    assert data["top1_agreement"] == 1.0
    assert data["max_abs_err"] < 1e-3


@pytest.mark.parametrize("argv,needle", [
    (["compile", "/nonexistent/model.onnx"], "model file not found"),
    (["compile", "MODEL", "--target", "sparc-sun-solaris"], "unknown target triple"),
    (["run", "/nonexistent/artifact"], "artifact directory not found"),
    (["compile", "MODEL", "--input-shape", "x=1,a"], "malformed --input-shape"),
])
def test_errors_are_one_line_without_traceback(argv: list[str], needle: str, mlp_file: Path,
                                               tmp_path: Path) -> None:
    """Console script: non-zero exit, one readable line on stderr, no traceback."""
    argv = [str(mlp_file) if a == "MODEL" else a for a in argv]
    if argv[0] == "compile":
        argv += ["-o", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hwcc: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr
