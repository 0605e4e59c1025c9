"""No temporary file outlives a run (:mod:`compiler.tempdirs`).

``TMPDIR`` points at an empty folder for every command (subprocesses, as a user runs them):
a tune interrupted by Ctrl-C (SIGINT) and one ended by SIGTERM once they measure, a compile
with ``--tune-log`` (whose warning about a corrupted record names the user's file, not a
temporary copy), a bundle and a tiny search. Afterwards the folder is as empty as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.tuning import database as tuning_db
from targets import parse_target

REPO = Path(__file__).resolve().parents[2]


def _matmul_relu_model() -> onnx.ModelProto:
    """x (32, 64) @ W (64, 64) + b, ReLU: one fused kernel, quick to tune."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "matmul_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (32, 64))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (32, 64))], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture()
def tmpdir_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty temporary directory and the environment that makes commands use it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return tmp, env


def _hwcc(args: list[str], env: dict[str, str], timeout: float = 300
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _interrupt_tune(model: Path, root: Path, env: dict[str, str], sig: int
                    ) -> subprocess.CompletedProcess[str]:
    """Start ``hwcc tune`` and send ``sig`` once it measures candidates: SIGINT once the
    first batch is in the log (the next one is being built and run), SIGTERM as soon as a
    built kernel lies in the run's temporary folder."""
    path = tuning_db.log_dir(parse_target("host"), root=root)
    before = _records(path) + _records(path, tuning_db.SLOWER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "compiler.cli", "tune", str(model), "--trials", "12",
         "--log-dir", str(root), "--no-progress"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = Path(env["TMPDIR"])
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if sig == signal.SIGINT and _records(path) > before:
            break
        if sig != signal.SIGINT and any(tmp.rglob("kernel.so")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "tuning ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


#: onnxruntime keeps a per-machine session id in $TMPDIR/.ses (made once, reused by every
#: later run, like /tmp/.ses): not a temporary of the run.
ONNXRUNTIME_SESSION_ID = ".ses"


def _left(tmp: Path) -> list[str]:
    """What a run left in the temporary directory."""
    return sorted(p.name for p in tmp.iterdir() if p.name != ONNXRUNTIME_SESSION_ID)


def _records(path: Path, name: str = tuning_db.RECORDS) -> int:
    f = path / name
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_no_temporary_file_outlives_a_run(tmpdir_env: tuple[Path, dict[str, str]],
                                          tmp_path: Path) -> None:
    tmp, env = tmpdir_env
    model = tmp_path / "mm.onnx"
    onnx.save(_matmul_relu_model(), str(model))
    root = tmp_path / "logs"
    log = tuning_db.log_dir(parse_target("host"), root=root)

    # tune, interrupted by Ctrl-C while measuring: records kept, nothing left in TMPDIR
    res = _interrupt_tune(model, root, env, signal.SIGINT)
    assert res.returncode == 130, res.stderr[-2000:]
    assert _left(tmp) == [], "after Ctrl-C"

    # and by SIGTERM: the process still dies of the signal, its temporaries with it
    res = _interrupt_tune(model, root, env, signal.SIGTERM)
    assert res.returncode == -signal.SIGTERM, res.stderr[-2000:]
    assert _left(tmp) == [], "after SIGTERM"

    # compile with the log, one record of which is corrupted: the warning names the log's
    # own file, not the temporary copy it was read from
    assert _records(log) + _records(log, tuning_db.SLOWER) > 0  # the interrupted runs' records
    with open(log / tuning_db.RECORDS, "a") as f:
        f.write("not json\n")
    bad_line = _records(log)
    art = tmp_path / "art"
    res = _hwcc(["compile", str(model), "-o", str(art), "--tune-log", str(log)], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{log / tuning_db.RECORDS}:{bad_line}: corrupted tuning record skipped" in res.stderr
    assert "hwcc-db-" not in res.stderr
    assert _left(tmp) == [], "after compile"

    # a bundle of that artifact (host runtime, cached runner)
    res = _hwcc(["bundle", str(art), "-o", str(tmp_path / "bundle")], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _left(tmp) == [], "after bundle"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no staging left beside


def test_no_temporary_file_outlives_a_search(tmpdir_env: tuple[Path, dict[str, str]]) -> None:
    """A two-candidate search of the digits CNN (each candidate compiled in a temporary
    folder)."""
    tmp, env = tmpdir_env
    res = _hwcc(["search", str(REPO / "examples" / "digits_cnn.onnx"), "--data",
                 str(REPO / "examples" / "digits_data.npz"), "--strategy", "grid",
                 "--budget", "1", "--samples", "20", "--repeat", "3", "--prune-ratios", "0,0.25",
                 "--low-rank", "none", "--quantize", "none", "--no-progress"], env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _left(tmp) == [], "after search"
