"""``hwcc compile / run / bench`` for the embedded target, from the command line.

The digits CNN is compiled once by a real ``hwcc`` process (module fixture); run and bench go
through ``compiler.cli.main.main`` in this process. What they print is checked against
independent numbers: onnxruntime, the MACs of each layer computed from graph.json's shapes,
and the artifact loaded through the Python API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from compiler.artifact.runtime import Artifact
from compiler.cli.main import main

from .conftest import EXAMPLES, float_op_model, load_graph, random_calib

DIGITS = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_calib.npz"
DATA = EXAMPLES / "digits_data.npz"
#: the real command line, without relying on PATH having the console script
HWCC = [sys.executable, "-c",
        ("import sys; from compiler.cli.main import main; sys.exit(main(sys.argv[1:]))")]
@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """``hwcc compile digits -t embedded --quantize int8 --calib ... --json`` (a real process):
    the artifact directory and the JSON it printed."""
    out = tmp_path_factory.mktemp("cli") / "digits"
    res = subprocess.run([*HWCC, "compile", str(DIGITS), "-t", "embedded", "--quantize",
                          "int8", "--calib", str(CALIB), "-o", str(out), "--json"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "hwcc:" not in res.stderr, res.stderr
    return out, json.loads(res.stdout)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error_line(rc: int, err: str) -> str:
    """The command failed with exactly one ``hwcc: error:`` line (no traceback, no internal
    error); that line."""
    assert rc != 0
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("hwcc:")]
    assert len(lines) == 1 and lines[0].startswith("hwcc: error: "), err
    return lines[0]


def _conv_macs(graph: dict[str, Any], params: dict[str, np.ndarray]) -> dict[str, int]:
    """Real MACs of each conv layer from the logical shapes: out elements x weight taps."""
    shapes = {t["name"]: t["shape"] for t in graph["tensors"]}
    macs = {}
    for lay in graph["layers"]:
        if lay["kind"] == "conv":
            w = params[f"{lay['name']}.weight"]
            out_elems = int(np.prod(shapes[lay["output"]][1:]))
            macs[lay["name"]] = out_elems * int(np.prod(w.shape[1:]))
    return macs


# -- compile ------------------------------------------------------------------------------
def test_compile_json(compiled: tuple[Path, dict[str, Any]]) -> None:
    out, j = compiled
    assert Path(j["artifact"]) == out
    assert j["target"] == "embedded"
    e = j["embedded"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert e["arena_bytes"] == manifest["embedded"]["arena_bytes"] > 0
    assert e["peak_live_bytes"] <= e["arena_bytes"]
    assert e["accelerator"]["rows"] == e["accelerator"]["cols"] == 16
    v = j["verification"]
    assert v["verified"] is True
    assert v["top1_agreement"] >= 0.95, v
    sim = j["simulation"]
    assert sim["cycles"] > 0
    assert len(sim["layers"]) == len(e["layers"])
    for f in ("model.c", "model.h", "hwcc_acc.h", "hwcc_acc_config.h", "hwcc_kernels.h",
              "hwcc_kernels.c", "hwcc_sim.h", "hwcc_acc_sim.c", "hwcc_sim_main.c",
              "graph.json", "graph_params.npz", "model.onnx", "manifest.json"):
        assert (out / f).is_file(), f


def test_compile_text_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = "embedded -mac=8x8 -spad=64 -acc=16 -dma=8"
    rc, out, err = _cli(["compile", str(DIGITS), "-t", target, "--quantize", "int8", "--calib",
                         str(CALIB), "-o", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    assert "8x8 MAC array" in out and "arena" in out and "cycles" in out, out
    assert "hwcc:" not in err


# -- run ----------------------------------------------------------------------------------
def test_run_refuses_npz_with_extra_key(compiled: tuple[Path, dict[str, Any]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """digits_data.npz also holds 'label': hwcc run names it instead of guessing."""
    rc, _, err = _cli(["run", str(compiled[0]), "--inputs", str(DATA)], capsys)
    line = _one_error_line(rc, err)
    assert "label" in line and "input" in line, line


def test_run_json_matches_api(compiled: tuple[Path, dict[str, Any]], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out_npz = tmp_path / "out.npz"
    rc, out, err = _cli(["run", str(compiled[0]), "--inputs", str(CALIB), "--output",
                         str(out_npz), "--json"], capsys)
    assert rc == 0, err
    j = json.loads(out)
    calib = np.load(CALIB)["input"]
    assert j["samples"] == len(calib)
    assert j["outputs"]["logits"]["shape"] == [len(calib), 1, 10]
    assert j["simulation"]["cycles"] == compiled[1]["simulation"]["cycles"]
    got = np.load(out_npz)["logits"]
    art = Artifact.load(compiled[0])
    for i in (0, 17, len(calib) - 1):
        np.testing.assert_array_equal(got[i], art.run({"input": calib[i]})["logits"])


def test_run_held_out_accuracy(compiled: tuple[Path, dict[str, Any]], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """hwcc run on the held-out digits (labels removed from the file): top-1 within 0.5
    points of the float model in onnxruntime."""
    import onnxruntime as ort

    with np.load(DATA) as z:
        x, labels = z["input"], z["label"]
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=x)
    rc, out, err = _cli(["run", str(compiled[0]), "--inputs", str(inputs), "--output",
                         str(tmp_path / "o.npz")], capsys)
    assert rc == 0, err
    assert f"{len(x)} samples" in out and "simulated" in out, out
    pred = np.load(tmp_path / "o.npz")["logits"].reshape(len(x), -1).argmax(-1)
    sess = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    ref = np.array([sess.run(None, {"input": x[i]})[0].argmax() for i in range(len(x))])
    assert abs((pred == labels).mean() - (ref == labels).mean()) <= 0.005


# -- bench --------------------------------------------------------------------------------
def test_bench_json_per_layer(compiled: tuple[Path, dict[str, Any]],
                              capsys: pytest.CaptureFixture[str]) -> None:
    art_dir = compiled[0]
    rc, out, err = _cli(["bench", str(art_dir), "--json"], capsys)
    assert rc == 0, err
    r = json.loads(out)
    graph, params = load_graph(art_dir)
    macs = _conv_macs(graph, params)
    acc = r["accelerator"]
    per_cycle = acc["rows"] * acc["cols"]
    assert r["cycles"] > 0
    assert len(r["layers"]) == len(graph["layers"])
    assert sum(lay["cycles"] for lay in r["layers"]) <= r["cycles"]
    assert r["macs"] == sum(macs.values())
    for lay, g in zip(r["layers"], graph["layers"]):
        assert lay["name"] == g["name"] and lay["kind"] == g["kind"]
        if g["kind"] == "conv":
            assert lay["unit"] == "mac_array"
            assert lay["cycles"] > 0 and lay["macs"] == macs[g["name"]]
            assert 0 < lay["utilization"] <= 1, lay
            assert lay["utilization"] == pytest.approx(lay["macs"] / (per_cycle * lay["cycles"]))
            assert lay["dma_load_bytes"] > 0 and lay["dma_store_bytes"] > 0
        else:
            assert lay["utilization"] is None
    assert 0 < r["utilization"] <= r["conv_utilization"] <= 1
    # deterministic: the same count every time, and what compile printed
    rc, out2, _ = _cli(["bench", "--json", str(art_dir)], capsys)
    assert rc == 0 and json.loads(out2)["cycles"] == r["cycles"]
    assert r["cycles"] == compiled[1]["simulation"]["cycles"]


def test_bench_text_and_json_file(compiled: tuple[Path, dict[str, Any]], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    rc, out, err = _cli(["bench", str(compiled[0]), "--json", str(path)], capsys)
    assert rc == 0, err
    assert "cycles" in out and "MAC array" in out, out
    assert json.loads(path.read_text())["cycles"] == compiled[1]["simulation"]["cycles"]


# -- errors: one line, non-zero exit --------------------------------------------------------
def test_error_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    """The real process: exit status 1 and one 'hwcc: error:' line on stderr."""
    res = subprocess.run([*HWCC, "compile", str(DIGITS), "-t", "embedded", "-o",
                          str(tmp_path / "a")], check=False, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    line = _one_error_line(res.returncode, res.stderr)
    assert "--quantize int8" in line and "--calib" in line, line
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv,words", [
    (["compile", str(DIGITS), "-t", "embedded -foo=1", "--quantize", "int8", "--calib",
      str(CALIB)], ["-foo", "-mac", "-spad", "-acc", "-dma"]),
    (["compile", str(DIGITS), "-t", "embedded -mac=7x7", "--quantize", "int8", "--calib",
      str(CALIB)], ["-mac", "7x7"]),
    (["compile", str(DIGITS), "-t", "embedded", "--calib", str(CALIB)], ["--quantize int8"]),
    (["compile", str(DIGITS), "-t", "embedded -spad=1 -acc=1", "--quantize", "int8",
      "--calib", str(CALIB)], ["scratchpad"]),
], ids=["unknown-option", "bad-mac", "no-quantize", "cannot-tile"])
def test_compile_errors(argv: list[str], words: list[str], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli([*argv, "-o", str(tmp_path / "a")], capsys)
    line = _one_error_line(rc, err)
    for w in words:
        assert w in line, line
    assert not (tmp_path / "a").exists()


def test_compile_float_op_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "sigmoid.onnx"
    onnx.save(float_op_model("Sigmoid"), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, **random_calib((1, 3, 8, 8), n=4))
    rc, _, err = _cli(["compile", str(model), "-t", "embedded", "--quantize", "int8",
                       "--calib", str(calib), "-o", str(tmp_path / "a")], capsys)
    line = _one_error_line(rc, err)
    assert "sigmoid" in line.lower(), line


def test_run_and_bench_errors(compiled: tuple[Path, dict[str, Any]], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    art_dir = str(compiled[0])
    bad_shape = tmp_path / "bad.npz"
    np.savez(bad_shape, input=np.zeros((1, 1, 9, 9), np.float32))
    cases = [
        (["run", art_dir, "--inputs", str(tmp_path / "missing.npz")], "missing.npz"),
        (["run", art_dir, "--inputs", str(bad_shape)], "input"),
        (["run", str(tmp_path / "no_such_artifact")], "no_such_artifact"),
        (["bench", art_dir, "--compare", "onnxruntime"], "onnxruntime"),
    ]
    for argv, word in cases:
        rc, _, err = _cli(argv, capsys)
        line = _one_error_line(rc, err)
        assert word in line, (argv, line)


def test_bundle_refuses_an_embedded_artifact(compiled: tuple[Path, dict[str, Any]],
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded artifact is standalone C already: `hwcc bundle` (a TVM runtime + runner)
    says so in one line and writes nothing."""
    rc, _, err = _cli(["bundle", str(compiled[0]), "-o", str(tmp_path / "b")], capsys)
    line = _one_error_line(rc, err)
    assert "embedded target" in line and "model.c" in line
    assert not (tmp_path / "b").exists()


def test_output_cut_short_by_the_reader_is_not_an_error(
        compiled: tuple[Path, dict[str, Any]]) -> None:
    """`hwcc bench DIR | head -1`: the reader closes the pipe early; hwcc ends quietly
    (it used to print 'internal error: BrokenPipeError')."""
    proc = subprocess.Popen([*HWCC, "bench", str(compiled[0])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # before hwcc has printed anything: its first write hits EPIPE
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"internal error" not in err and b"Traceback" not in err
