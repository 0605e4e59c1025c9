"""Compression through the documented CLI: flags become passes, reports reach the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler.cli.main import main
from examples import EXAMPLES_DIR, example_model

DIGITS = str(example_model("digits_cnn"))
CALIB = str(EXAMPLES_DIR / "digits_calib.npz")
DATA = str(EXAMPLES_DIR / "digits_data.npz")


def _compile(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict:
    out = tmp_path / "a"
    assert main(["compile", DIGITS, "-o", str(out), "--bench-repeat", "0", "--json",
                 *flags]) == 0
    capsys.readouterr()
    return json.loads((out / "manifest.json").read_text())


def _accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> float:
    assert main(["eval", str(tmp_path / "a"), "--data", DATA, "--labels", "label",
                 "--limit", "120", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["top1_accuracy"]


def test_prune_with_recovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--prune 0.5 --calib: canonicalize → prune → recover; fewer params; accuracy kept."""
    m = _compile(tmp_path, capsys, "--prune", "0.5", "--calib", CALIB)
    names = [p["name"] for p in m["passes"]]
    assert names == ["canonicalize", "prune_channels", "recover"]
    assert m["compressed"]["params"] < 0.6 * m["model"]["params"]
    prune_report = m["passes"][1]["report"]
    assert prune_report["params_after"] < prune_report["params_before"]
    speed = prune_report["speed"]  # never slower: both timed here, the pruned one was faster
    assert speed["decided_by"] == "measured on this machine" and speed["kept"] == "pruned"
    assert speed["pruned_ms"] < speed["unpruned_ms"]
    assert "teacher" not in (m["passes"][2]["config"] or {})
    assert _accuracy(tmp_path, capsys) > 0.95


def test_low_rank_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _compile(tmp_path, capsys, "--low-rank", "energy=0.5,all")
    lr = [p for p in m["passes"] if p["name"] == "low_rank"][0]
    assert lr["config"]["energy"] == 0.5
    assert m["compressed"]["params"] < m["model"]["params"]


@pytest.mark.parametrize("flags,needle", [
    (["--prune", "1.0"], "ratio"),
    (["--prune", "0.5", "--prune-method", "activation"], "needs calibration data"),
    (["--low-rank", "energy=0"], "energy"),
    (["--low-rank", "rank=64,bogus=1"], "bogus"),
])
def test_bad_compression_flags(flags: list[str], needle: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", DIGITS, "-o", str(tmp_path / "a"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hwcc: error:") and needle in err
    assert not (tmp_path / "a").exists()


def test_calibration_file_that_does_not_fit(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 1, 1, 8, 8), np.float32))
    assert main(["compile", DIGITS, "-o", str(tmp_path / "a"), "--prune", "0.3", "--calib",
                 str(tmp_path / "bad.npz")]) == 1
    assert "missing ['input']" in capsys.readouterr().err
    np.savez(tmp_path / "shape.npz", input=np.zeros((4, 1, 9, 9), np.float32))
    assert main(["compile", DIGITS, "-o", str(tmp_path / "a"), "--prune", "0.3", "--calib",
                 str(tmp_path / "shape.npz")]) == 1
    assert "expected [1, 1, 8, 8]" in capsys.readouterr().err
    np.savez(tmp_path / "empty.npz", input=np.zeros((0, 1, 1, 8, 8), np.float32))
    assert main(["compile", DIGITS, "-o", str(tmp_path / "a"), "--prune", "0.3", "--calib",
                 str(tmp_path / "empty.npz")]) == 1
    assert "no samples" in capsys.readouterr().err


def test_quantize_int8_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quantize int8 --calib: scheme and calibration agreement in the manifest; accuracy.
    By default the faster of the quantized and the float model is kept (timed here: the
    target runs on this machine); --quantize-always keeps the int8 one."""
    m = _compile(tmp_path, capsys, "--quantize", "int8", "--calib", CALIB)
    speed = [p for p in m["passes"] if p["name"] == "quantize"][0]["report"]["speed"]
    assert speed["decided_by"] == "measured on this machine"
    faster = "quantized" if speed["quantized_ms"] < speed["float_ms"] else "float"
    assert speed["kept"] == faster
    small = m["compressed"]["weight_bytes"] < 0.4 * m["model"]["weight_bytes"]
    assert small == (faster == "quantized")
    m = _compile(tmp_path, capsys, "--quantize", "int8", "--calib", CALIB,
                 "--calib-method", "percentile", "--quantize-always")
    q = [p for p in m["passes"] if p["name"] == "quantize"][0]
    assert q["config"]["mode"] == "int8" and q["config"]["method"] == "percentile"
    assert "int8" in q["report"]["scheme"] and q["report"]["speed"]["kept"] == "quantized"
    assert m["compressed"]["weight_bytes"] < 0.4 * m["model"]["weight_bytes"]
    assert _accuracy(tmp_path, capsys) > 0.95


def test_quantize_int8_needs_calibration(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", DIGITS, "-o", str(tmp_path / "a"), "--quantize", "int8"]) == 1
    assert "--calib" in capsys.readouterr().err


def test_sparsity_flag_reports_per_layer_choice(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--sparsity: every considered layer is reported as sparse, dense or skipped, with why."""
    m = _compile(tmp_path, capsys, "--sparsity", "0.9", "--sparse-block", "4x1")
    sp = [p for p in m["passes"] if p["name"] == "sparsify"][0]
    layers = sp["report"]["layers"]
    assert layers and all(entry["choice"] in ("sparse", "dense", "skipped") for entry in layers)
    assert all(entry.get("reason") for entry in layers)
