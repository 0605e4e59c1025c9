"""Tests of a tuning log shared by several processes (``compiler.tuning.database``).

Two ``hwcc tune`` runs append to one log at once (two one-kernel models, a few trials each):
every line parses, no record is lost, and no record points at the other model's workload. A
compaction killed with SIGKILL at any point leaves the log as it was or compacted, never a
mix; the states a crash can leave behind are recovered by whoever takes the lock next.
"""

from __future__ import annotations

import json
import os
import shutil
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
from compiler.tuning.database import (
    JOURNAL,
    LOCK,
    RECORDS,
    SLOWER,
    WORKLOADS,
    compact_log,
    log_lock,
    read_log,
)
from targets import parse_target

REPO = Path(__file__).resolve().parents[3]
TRIALS = 4  # per tuner: one batch of its one kernel


def _matmul_relu(rows: int, cols: int) -> onnx.ModelProto:
    """x (rows, 64) @ W (64, cols) + b, ReLU: one fused kernel, shapes told apart by rows."""
    rng = np.random.default_rng(rows)
    w = numpy_helper.from_array((rng.standard_normal((64, cols)) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(cols) * 0.1).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "matmul_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (rows, 64))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (rows, cols))], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _lines(p: Path) -> list[str]:
    return [ln for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def test_two_tuners_share_one_log(tmp_path: Path) -> None:
    """Two processes tune two models into one log at once: all records kept, each pointing
    at its own model's workload."""
    models = {}
    for rows in (32, 16):
        models[rows] = tmp_path / f"mm{rows}.onnx"
        onnx.save(_matmul_relu(rows, 48), str(models[rows]))
    root = tmp_path / "logs"
    procs = {rows: subprocess.Popen(
        [sys.executable, "-m", "compiler.cli", "tune", str(m), "--trials", str(TRIALS),
         "--log-dir", str(root), "--no-progress", "--json"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rows, m in models.items()}
    reports = {}
    for rows, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        reports[rows] = json.loads(out)
    path = tuning_db.log_dir(parse_target("host"), root=root)
    assert {Path(r["log_dir"]) for r in reports.values()} == {path}
    assert (path / LOCK).exists() and not (path / JOURNAL).exists()

    workloads = [json.loads(ln) for ln in _lines(path / WORKLOADS)]
    records = [json.loads(ln) for f in (RECORDS, SLOWER) for ln in _lines(path / f)]
    # none lost: the log holds exactly what the two tuners say they measured
    assert len(records) == sum(r["trials"] for r in reports.values()) == 2 * TRIALS
    assert all(0 <= rec[0] < len(workloads) for rec in records)
    # none misfiled: a workload's records all have one input shape, and it is its model's
    shapes: dict[int, set[str]] = {}
    for idx, (_trace, _secs, _target, args) in records:
        shapes.setdefault(idx, set()).add(json.dumps(args[0]))
    assert len(shapes) == 2 and all(len(s) == 1 for s in shapes.values())
    assert sorted(json.loads(next(iter(s)))[2][0] for s in shapes.values()) == [16, 32]
    per_kernel = sorted(e.records for e in read_log(path).values())
    assert per_kernel == [TRIALS, TRIALS]
    # and MetaSchedule reads the log back whole
    db, _ = tuning_db.open_database(path, parse_target("host"))
    assert len(db.get_all_tuning_records()) == sum(
        1 for ln in _lines(path / RECORDS))


# -- compaction under kill -9 ---------------------------------------------------------------
N_WORKLOADS, PER_WORKLOAD = 400, 150  # 60,000 records, ~12 MB: compaction takes a while


def _synthetic_log(path: Path) -> None:
    """A large log whose records carry their workload's hash, so that a record pointing at
    the wrong workload is seen; each workload's best record is its record 7."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pad = "A" * 2000
    wl = [json.dumps([f"{1000 + w}", pad + str(w)]) for w in range(N_WORKLOADS)]
    recs = []
    for w in range(N_WORKLOADS):
        for k in range(PER_WORKLOAD):
            secs = 1e-4 if k == 7 else 2e-4 + float(rng.random()) * 1e-3
            recs.append(json.dumps([w, [[f"w{1000 + w}-r{k}", "x" * 100], [secs], {},
                                        [["TENSOR", "float32", [f"{1000 + w}"]]]]]))
    order = rng.permutation(len(recs))
    (path / WORKLOADS).write_text("".join(ln + "\n" for ln in wl))
    (path / RECORDS).write_text("".join(recs[i] + "\n" for i in order))


def _state(path: Path) -> tuple[str, set[str]]:
    """'full' or 'compacted', and the records' names; fails on any inconsistency."""
    hashes = [json.loads(ln)[0] for ln in _lines(path / WORKLOADS)]
    names = set()
    for ln in _lines(path / RECORDS):
        idx, (trace, _secs, _target, args) = json.loads(ln)
        assert args[0][2][0] == hashes[idx], f"record {trace[0]} points at the wrong workload"
        names.add(trace[0])
    best = {f"w{1000 + w}-r7" for w in range(N_WORKLOADS)}
    if len(names) == N_WORKLOADS * PER_WORKLOAD and len(hashes) == N_WORKLOADS:
        return "full", names
    assert names == best, f"{len(names)} records: neither the old log nor the compacted one"
    return "compacted", names


def test_kill_9_during_compaction_loses_no_record(tmp_path: Path) -> None:
    """SIGKILL a process compacting a large log at several moments (while it writes the new
    files, once its journal is committed, at fixed delays): after recovery the log is the
    old one or the compacted one, every record pointing at its own workload."""
    pristine = tmp_path / "pristine"
    _synthetic_log(pristine)
    log = tmp_path / "log"
    code = ("import sys\nfrom pathlib import Path\nfrom compiler.tuning.database import "
            "compact_log\nprint('start', flush=True)\ncompact_log(Path(sys.argv[1]))\n")
    seen = set()
    triggers = ["new", "journal", 0.0, 0.3, 0.6, 1.0]
    for trigger in triggers:
        shutil.rmtree(log, ignore_errors=True)
        shutil.copytree(pristine, log)
        proc = subprocess.Popen([sys.executable, "-c", code, str(log)], cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
        t0, deadline = time.monotonic(), time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if trigger == "new" and (log / (WORKLOADS + ".new")).exists():
                break
            if trigger == "journal" and (log / JOURNAL).exists():
                break
            if isinstance(trigger, float) and time.monotonic() - t0 >= trigger:
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with log_lock(log):  # the next user of the log recovers it
            state, _ = _state(log)
        assert not (log / JOURNAL).exists()
        assert not any(p.name.endswith(".new") for p in log.iterdir())
        seen.add(state)
        compact_log(log)  # and compaction, run again, completes
        assert _state(log)[0] == "compacted"
    assert "full" in seen  # at least one kill landed before the commit point


def _compacted_copy(pristine: Path, dst: Path) -> None:
    shutil.copytree(pristine, dst)
    compact_log(dst)


@pytest.mark.parametrize("renamed", [0, 1, 2])
def test_a_committed_rewrite_is_finished_by_the_next_lock(tmp_path: Path, renamed: int) -> None:
    """The states SIGKILL leaves between the journal's commit and the last rename (0, 1 or
    2 files renamed): taking the lock completes the rewrite."""
    pristine = tmp_path / "pristine"
    _synthetic_log(pristine)
    done = tmp_path / "done"
    _compacted_copy(pristine, done)
    log = tmp_path / "log"
    shutil.copytree(pristine, log)
    names = [WORKLOADS, RECORDS]
    for name in names:
        shutil.copy(done / name, log / (name + ".new"))
    (log / JOURNAL).write_text(json.dumps(names))
    for name in names[:renamed]:
        os.replace(log / (name + ".new"), log / name)
    with log_lock(log):
        assert _state(log)[0] == "compacted"
    assert not (log / JOURNAL).exists()


def test_an_uncommitted_rewrite_is_dropped(tmp_path: Path) -> None:
    """New files without a journal (killed before the commit point): the old log stands."""
    pristine = tmp_path / "pristine"
    _synthetic_log(pristine)
    log = tmp_path / "log"
    shutil.copytree(pristine, log)
    (log / (WORKLOADS + ".new")).write_text('["1000", "x"]\n')
    (log / (RECORDS + ".new")).write_text("[0, [\n")  # torn: the writer died mid-file
    with log_lock(log):
        assert _state(log)[0] == "full"
    assert sorted(p.name for p in log.iterdir()) == sorted([LOCK, WORKLOADS, RECORDS])
