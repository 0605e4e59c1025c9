"""Tests of ``compiler.tuning.tune`` and ``hwcc tune``: records, resume, compile reuse, RPC.

Tuning runs are tiny (a one-kernel model, a handful of trials) and shared: the module fixture
interrupts a run with SIGINT in a subprocess and resumes it through the CLI, the compile test
reuses that log in a fresh process, and the RPC test runs one more small search on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.tuning import database as tuning_db
from compiler.errors import ConfigError, TargetError
from compiler.tuning.database import SLOWER, read_log, repair_log
from compiler.tuning.tune import tune
from compiler.cli.tune import add_tune_parser, parse_duration
from targets import parse_target

REPO = Path(__file__).resolve().parents[3]
TRIALS = 12  # the model's total: three batches of 4 for its one kernel


def _matmul_relu_model() -> onnx.ModelProto:
    """x (32, 64) @ W (64, 64) + b, ReLU: one fused kernel to tune."""
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


def _env(log_root: Path) -> dict[str, str]:
    env = dict(os.environ, HWCC_TUNING_LOGS=str(log_root))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _records(path: Path) -> list[list]:
    """Records in the file compile reads."""
    f = path / tuning_db.RECORDS
    return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []


def _all_records(path: Path) -> int:
    return sum(len([ln for ln in p.read_text().splitlines() if ln.strip()])
               for p in (path / tuning_db.RECORDS, path / SLOWER) if p.exists())


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="hwcc")
    add_tune_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Interrupt a run after its first records (SIGINT, subprocess), then resume via the CLI."""
    d = tmp_path_factory.mktemp("tune")
    model = d / "matmul_relu.onnx"
    onnx.save(_matmul_relu_model(), str(model))
    root = d / "logs"
    path = tuning_db.log_dir(parse_target("host"), root=root)
    code = ("import sys\nfrom compiler.tuning.tune import tune, TuningInterrupted\n"
            f"try:\n    tune({str(model)!r}, trials={TRIALS}, log_dir={str(root)!r}, "
            "progress=False)\nexcept TuningInterrupted as e:\n"
            "    print('interrupted after', e.report.trials, flush=True)\n    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(root), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _records(path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    return {"dir": d, "model": model, "root": root, "path": path, "rc": proc.returncode,
            "out": out, "err": err, "kept": _all_records(path)}


def test_interrupted_run_keeps_its_records(tuned: dict) -> None:
    # SIGINT lands after the first batch was committed: the run stops there and says so
    assert tuned["rc"] == 130, tuned["err"][-2000:]
    assert "interrupted after" in tuned["out"]
    assert 0 < tuned["kept"] < TRIALS
    entries = read_log(tuned["path"])  # valid measurements, wherever the settle put them
    assert [e.records for e in entries.values()] == [tuned["kept"]]
    assert all((e.best_ms or e.best_slower_ms) > 0 for e in entries.values())


def test_resume_continues_and_reports_json(tuned: dict, capsys: pytest.CaptureFixture) -> None:
    # the same command again tunes only the trials still missing; --json has stable fields
    code, out = _cli(["tune", str(tuned["model"]), "--trials", str(TRIALS), "--log-dir",
                      str(tuned["root"]), "--json"], capsys)
    rep = json.loads(out)
    assert code == 0
    assert {"tasks", "trials", "valid_trials", "log_dir", "before_ms", "after_ms"} <= set(rep)
    assert rep["trials"] == TRIALS - tuned["kept"]
    assert rep["valid_trials"] > 0
    assert Path(rep["log_dir"]) == tuned["path"]
    (task,) = rep["tasks"]
    assert task["records"] == TRIALS and task["best_ms"] > 0 and task["default_ms"] > 0
    assert rep["before_ms"] > 0 and rep["after_ms"] > 0 and rep["latency_source"] == "model"
    assert _all_records(tuned["path"]) == TRIALS
    # a third run has nothing left to do
    code, out = _cli(["tune", str(tuned["model"]), "--trials", str(TRIALS), "--log-dir",
                      str(tuned["root"])], capsys)
    assert code == 0 and "skipped (enough records)" in out and "0 this run" in out


def test_fresh_process_compiles_with_the_records(tuned: dict, tmp_path: Path) -> None:
    # compile finds the log by itself (same target, $HWCC_TUNING_LOGS root), counts the tuned
    # kernel in the manifest, and the tuned module agrees with the reference
    path = tuned["path"]
    side = path / SLOWER
    if side.exists() and side.read_text().strip():
        # 8 trials may not beat the default schedule (then compile rightly ignores them);
        # put them back to exercise the compile path with records
        with open(path / tuning_db.RECORDS, "a") as f:
            f.write(side.read_text())
        side.unlink()
    # the weight is layout-free: candidates pack it, and compile must pack the constant
    assert "TransformLayout" in (path / tuning_db.RECORDS).read_text()
    code = ("import json, compiler\n"
            f"a = compiler.compile({str(tuned['model'])!r}, output_dir={str(tmp_path / 'a')!r})\n"
            "print(json.dumps({'kernels': a.manifest['kernels'], "
            "'verification': a.manifest['verification']}))\n")
    res = subprocess.run([sys.executable, "-c", code], env=_env(tuned["root"]), cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["kernels"]["tuned"] == 1
    assert Path(m["kernels"]["tuning_log"]) == path
    assert m["verification"]["max_abs_err"] < 1e-4


def test_corrupted_lines_are_skipped_with_a_warning(tuned: dict, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # a torn last line (crash mid-write) and garbage: dropped, the rest still loads
    path = tmp_path / "log"
    path.mkdir()
    for name in (tuning_db.WORKLOADS, tuning_db.RECORDS):
        (path / name).write_text((tuned["path"] / name).read_text())
    good = len(_records(path))
    with open(path / tuning_db.RECORDS, "a") as f:
        f.write("not json\n[0, [[[\"GetSBlock\"")
    with caplog.at_level(logging.WARNING):
        db, _ = tuning_db.open_database(path, parse_target("host"))
        assert len(db.get_all_tuning_records()) == good
        assert repair_log(path) == 2
    assert sum("corrupted tuning record skipped" in r.message for r in caplog.records) >= 2
    assert len(_records(path)) == good and (path / (tuning_db.RECORDS + ".bak")).exists()
    assert sum(e.records for e in read_log(path).values()) == good


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_loopback(tuned: dict, tmp_path: Path) -> None:
    # a real tracker and server as subprocesses: built here, measured through the tracker
    port = _free_port()
    env = _env(tmp_path)
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
             str(port), "--port-end", str(port + 1)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        server_port = _free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
             "--key", "hwcc-test", "--host", "127.0.0.1", "--port", str(server_port),
             "--port-end", str(server_port + 1)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from tvm import rpc

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # not up yet
                if rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]:
                    break
            time.sleep(1)
        rep = tune(tuned["model"], trials=4, log_dir=tmp_path / "logs", progress=False,
                   rpc_tracker=f"127.0.0.1:{port}", rpc_key="hwcc-test")
        assert rep.remote == f"hwcc-test@127.0.0.1:{port}"
        assert rep.valid_trials > 0 and rep.tasks[0].default_ms is not None
        assert rep.latency_source == "kernels" and rep.before_ms > 0
    finally:
        for p in reversed(procs):  # each in its own session: the server's worker goes too
            with_group = os.getpgid(p.pid) if p.poll() is None else None
            if with_group is not None:
                os.killpg(with_group, signal.SIGTERM)
            p.wait(timeout=30)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="trials must be a positive"):
        tune("unused.onnx", trials=0)
    with pytest.raises(TargetError, match="tuning supports CPU"):
        tune("unused.onnx", target="cuda -arch=sm_80", trials=1)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        tune("unused.onnx", trials=1, rpc_tracker="nohost", rpc_key="k")
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ConfigError, match="malformed duration"):
        parse_duration("ten minutes")


def test_a_second_model_keeps_the_first_models_verdicts(tmp_path: Path) -> None:
    # two models tuned into one log: settling the second must judge only its own kernels; the
    # first model's kernels that lost to their defaults stay out of what compile applies
    from compiler.tuning.database import _partition_log

    wl = [json.dumps([h, {}]) for h in ("a_lost", "a_won", "b_lost", "b_won")]
    (tmp_path / tuning_db.WORKLOADS).write_text("".join(ln + "\n" for ln in wl))
    rec = [json.dumps([i, [[], [1e-3], None, None]]) for i in (0, 1)]
    (tmp_path / tuning_db.RECORDS).write_text("".join(ln + "\n" for ln in rec))
    _partition_log(tmp_path, slower={"a_lost"}, settled={"a_lost", "a_won"})
    assert [r[0] for r in _records(tmp_path)] == [1]
    # the second model's run appends its records, then settles its own kernels
    with open(tmp_path / tuning_db.RECORDS, "a") as f:
        f.write("".join(json.dumps([i, [[], [1e-3], None, None]]) + "\n" for i in (2, 3)))
    _partition_log(tmp_path, slower={"b_lost"}, settled={"b_lost", "b_won"})
    assert sorted(r[0] for r in _records(tmp_path)) == [1, 3]
    side = [json.loads(ln)[0] for ln in (tmp_path / SLOWER).read_text().splitlines()]
    assert sorted(side) == [0, 2]
    # a later verdict on a kernel moves its records back
    _partition_log(tmp_path, slower=set(), settled={"a_lost"})
    assert sorted(r[0] for r in _records(tmp_path)) == [0, 1, 3]


def test_a_tuned_kernel_must_save_ten_percent_and_a_microsecond() -> None:
    from compiler.tuning.tune import tuned_beats_default

    assert tuned_beats_default(0.80, 1.0)
    assert not tuned_beats_default(0.95, 1.0)  # within 10%
    assert not tuned_beats_default(0.0001, 0.0005)  # 5x faster but 0.4 us: timer noise
    assert tuned_beats_default(0.0010, 0.0026)


def _three_matmul_model() -> onnx.ModelProto:
    """Three MatMul+ReLU layers of different shapes: three kernels to tune."""
    rng = np.random.default_rng(1)
    dims = [64, 48, 32, 16]
    inits, nodes, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((k, n)) * 0.1).astype(np.float32), f"w{i}"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [out])]
        prev = out
    graph = helper.make_graph(
        nodes, "three_matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (32, 64))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (32, 16))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_time_budget_ends_the_first_round_early(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # MetaSchedule's first round sends a batch of every task before joining any; once the
    # budget is spent (here: as the first batch starts) the other tasks must not be
    # generated, built or measured, and the measured batch must still reach the log
    import compiler.tuning.tune as tune_mod

    real = tune_mod._Session.out_of_time
    asked: list[int] = []

    def spent_after_first(session) -> bool:  # the budget runs out as the first batch starts
        asked.append(1)
        if len(asked) == 1:
            session.deadline = time.monotonic()
            return False
        return real(session)

    monkeypatch.setattr(tune_mod._Session, "out_of_time", spent_after_first)
    model = tmp_path / "three.onnx"
    onnx.save(_three_matmul_model(), str(model))
    rep = tune(str(model), time_budget_s=3600, log_dir=tmp_path / "logs", progress=False)
    assert rep.stopped == "time budget reached"
    measured = [t for t in rep.tasks if t.trials]
    assert len(rep.tasks) == 3 and len(measured) == 1, [(t.name, t.trials) for t in rep.tasks]
    assert measured[0].valid > 0 and _all_records(rep.log_dir) == measured[0].trials


def test_compacted_log_keeps_each_kernels_best_record(tuned: dict, tmp_path: Path) -> None:
    # what ships: the fastest record per kernel and the workloads they use, still loadable
    from compiler.tuning.database import compact_log

    path = tmp_path / "log"
    path.mkdir()
    for p in tuned["path"].iterdir():
        if p.name in (tuning_db.WORKLOADS, tuning_db.RECORDS, SLOWER):
            (path / p.name).write_text(p.read_text())
    (entry,) = read_log(path).values()
    files = [p for p in (path / tuning_db.RECORDS, path / SLOWER) if p.exists()
             and p.read_text().strip()]
    before, after = compact_log(path)
    assert before == _all_records(tuned["path"]) and after == len(files)
    (compacted,) = read_log(path).values()
    assert compacted.records == after
    assert (compacted.best_ms, compacted.best_slower_ms) == (entry.best_ms, entry.best_slower_ms)
    assert len(_records(path)) == (1 if entry.best_ms is not None else 0)
    db, _ = tuning_db.open_database(path, parse_target("host"))
    assert len(db.get_all_tuning_records()) == len(_records(path))


def test_kernel_without_design_space_is_skipped_not_fatal(tmp_path: Path) -> None:
    # hwcc's Winograd kernel defeats MetaSchedule's schedule rules (no search space): it keeps
    # its default schedule and the run tunes the other kernels instead of failing
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32),
                                 "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((32, 16, 1, 1)) * 0.1).astype(np.float32),
                                 "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(
        nodes, "wino", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 16, 16, 16))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 32, 16, 16))], [w1, w2])
    model = tmp_path / "wino.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    rep = tune(str(model), trials=8, log_dir=tmp_path / "logs", progress=False)
    by_name = {t.name: t for t in rep.tasks}
    wino = [t for n, t in by_name.items() if "winograd" in n]
    assert wino and all(t.no_design_space and t.trials == 0 for t in wino), by_name
    assert rep.valid_trials > 0
    assert all(t.no_design_space is None for n, t in by_name.items() if "winograd" not in n)


def test_records_apply_next_to_kernels_tvm_cannot_split(tuned: dict, tmp_path: Path) -> None:
    # a tuned kernel whose record re-lays-out its weight, in a model that also has a scan
    # (CumSum): TVM's SplitLayoutRewritePreproc rejects such kernels, so compile must apply
    # the record without showing it the others (it failed the whole build before)
    import compiler

    path = tmp_path / "log"
    path.mkdir()
    lines = []
    for name in (tuning_db.RECORDS, SLOWER):  # whatever the settle decided: apply them
        if (tuned["path"] / name).exists():
            lines += [ln for ln in (tuned["path"] / name).read_text().splitlines() if ln]
    (path / tuning_db.RECORDS).write_text("".join(ln + "\n" for ln in lines))
    (path / tuning_db.WORKLOADS).write_text((tuned["path"] / tuning_db.WORKLOADS).read_text())
    model = _matmul_relu_model()
    g = model.graph
    g.node.append(helper.make_node("CumSum", ["y", "axis"], ["c"]))
    g.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"))
    g.output[0].CopyFrom(helper.make_tensor_value_info("c", TensorProto.FLOAT, (32, 64)))
    f = tmp_path / "matmul_cumsum.onnx"
    onnx.save(model, str(f))
    art = compiler.compile(str(f), output_dir=tmp_path / "a", tuning_log=path)
    assert art.manifest["kernels"]["tuned"] == 1
    assert art.manifest["verification"]["max_abs_err"] < 1e-3
