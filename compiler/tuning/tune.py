"""Tune a model's kernels with MetaSchedule and append the records to its tuning log.

:func:`tune` imports the model, runs the same compression passes and the same
legalize/fuse pipeline as :func:`compiler.compile` (:func:`compiler.lower.legalize_and_fuse`),
extracts one task per distinct fused kernel and searches MetaSchedule's own schedule space
with the XGBoost cost model and the gradient task scheduler. Weights are marked layout-free
(:func:`compiler.lower.mark_layout_free`), so a candidate may pack them like hwcc's default
schedules do; ``compile`` applies that packing once, to the constants, at build time. Records go to
a
``JSONDatabase`` in ``tuning_logs/<device>/<target-key>/``
(:func:`compiler.tuning.database.log_dir`),
which a later ``compile`` for the same target opens with no extra flag.

What makes a run dependable:

* **The slow-import trap.** TVMScript's parser calls ``inspect.getmodule`` for frames of
  pseudo-files, which scans every loaded module; ``import tvm.s_tir.tensor_intrin`` then
  takes close to a minute and every builder worker times out (0 valid trials, silently).
  Here the main process imports it with ``inspect.getmodule`` memoised for files that do
  not exist, and builder workers use :func:`build_kernel`, which does not import it at all.
* **Nothing measured is lost.** Each measured batch is appended to the log as soon as it is
  joined, so Ctrl-C or a crash keeps every record committed so far; a corrupted line is
  dropped (with a warning, the original kept as ``*.bak``) before a run appends to the log.
* **Shared logs.** The search reads a private copy of the log and each batch is appended
  under the log's advisory lock (:class:`compiler.tuning.database.SharedLog`), so two runs
  (two models, or two processes) may tune into one log at once.
* **No temporaries left.** Candidates are built and the search works in this process's
  temporary directory (:mod:`compiler.tempdirs`), removed however the run ends.
* **Resume.** ``trials`` is the model's total: records already in the log count towards it,
  tasks that have their share are skipped and the rest continue from the best records found.
* **Honest numbers.** Builder and runner failures are counted; a run that measures no valid
  candidate raises :class:`~compiler.errors.TuningError`. Each kernel's default-schedule
  latency (hwcc's ``compiler.lower.schedules``) is measured with the same runner as the candidates,
  and for targets that run here the whole model is built and timed before and after.
* **Remote devices.** With ``rpc_tracker``/``rpc_key`` kernels are built here (linked with
  the target's cross compiler when it has one) and measured on the device through TVM's RPC
  tracker; a device that vanishes ends the run with what it measured, and says so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import frontend, lower, tempdirs
from compiler.artifact.runtime import random_inputs, use_all_cores
from compiler.errors import ConfigError, HwccError, TargetError, TuningError
from compiler.lower import build
from compiler.lower.options import LowerOptions
from compiler.lower.schedules import apply_default_schedules
from compiler.lower.tvmscript import fast_tvmscript_import
from compiler.pipeline import run_passes
from targets import Target, parse_target

from . import database as tuning_db
from .database import _FAILED_SECS, _LogEntry, _partition_log, _run_ms, read_log, repair_log

logger = logging.getLogger(__name__)

#: Trials per task when neither ``trials`` nor ``time_budget_s`` is given.
DEFAULT_TRIALS_PER_TASK = 32
#: Largest batch of candidates generated (and measured) per search iteration of a task.
MAX_TRIALS_PER_ITER = 16
#: Seconds one candidate may take to build (compiling only; no worker start-up in it).
BUILD_TIMEOUT_S = 60.0
#: Seconds one candidate may take to run locally, or to connect, upload and run remotely.
RUN_TIMEOUT_S = 30.0
#: A tuned kernel replaces the default schedule only if it is at least 10% faster: kernels of
#: a few microseconds measure within noise of each other, and a swap must pay for itself.
KEEP_IF_FASTER = 0.9
#: ... and at least this many milliseconds faster per call: for sub-microsecond kernels (a
#: 10-element dense, a reshape) 10% is a few nanoseconds, below what the runner can resolve.
MIN_SAVING_MS = 0.001
#: A measured latency at or above this many seconds is MetaSchedule's mark of a failure.


class TuningInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`tune`; ``report`` holds what was measured (all of it is on disk)."""

    def __init__(self, report: TuneReport) -> None:
        super().__init__("tuning interrupted")
        self.report = report


class _StopTuning(Exception):
    """Raised by our callbacks to end the search early (time budget, lost device)."""


# -- reports ------------------------------------------------------------------------------
@dataclass
class TaskReport:
    """One tuning task: a distinct fused kernel of the model.

    Attributes
    ----------
    name : str
        The fused kernel's name (e.g. ``fused_conv2d_add_relu``).
    weight : int
        How many times the model calls it.
    trials, valid, build_errors, run_errors : int
        Candidates measured in this run, those that built and ran, and the failures.
    records : int
        Records of this kernel in the log after the run (all runs; failures included).
    default_ms : float or None
        Latency with hwcc's default schedule, measured in this run (None: not measurable).
    best_ms : float or None
        Best tuned latency in the log, all runs (None: no valid record).
    skipped : bool
        The log already had this kernel's share of trials; it was not tuned again.
    unmeasurable : bool
        Its default schedule built but did not run on random inputs (e.g. a gather whose
        indices then fall out of bounds): candidates could not be measured either, so it was
        not tuned.
    no_design_space : str or None
        MetaSchedule could not generate a search space for this kernel (its error's last
        line); the kernel keeps hwcc's default schedule and was not tuned.
    used : bool
        ``compile`` applies a tuned schedule to this kernel (it has records, and its best
        beat the default schedule).
    """

    name: str
    weight: int
    trials: int = 0
    valid: int = 0
    build_errors: int = 0
    run_errors: int = 0
    records: int = 0
    default_ms: float | None = None
    best_ms: float | None = None
    skipped: bool = False
    unmeasurable: bool = False
    no_design_space: str | None = None
    used: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "trials": self.trials,
                "valid": self.valid, "build_errors": self.build_errors,
                "run_errors": self.run_errors, "records": self.records,
                "default_ms": _round(self.default_ms), "best_ms": _round(self.best_ms),
                "skipped": self.skipped, "unmeasurable": self.unmeasurable,
                "no_design_space": self.no_design_space, "used": self.used}


@dataclass
class TuneReport:
    """What a tuning run did, per task and for the whole model.

    ``before_ms``/``after_ms`` are the model's latency with default schedules only and with the
    tuning log applied: measured end to end on this machine when the target runs here
    (``latency_source == "model"``), else the weighted sum of the kernels' latencies measured
    on the device (``"kernels"``).
    """

    model: str
    target: str
    device: str
    log_dir: Path
    tasks: list[TaskReport] = field(default_factory=list)
    trials_requested: int = 0
    before_ms: float | None = None
    after_ms: float | None = None
    latency_source: str = "kernels"
    stopped: str | None = None
    seconds: float = 0.0
    remote: str | None = None
    first_build_error: str | None = None
    first_run_error: str | None = None

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def valid_trials(self) -> int:
        return sum(t.valid for t in self.tasks)

    @property
    def build_errors(self) -> int:
        return sum(t.build_errors for t in self.tasks)

    @property
    def run_errors(self) -> int:
        return sum(t.run_errors for t in self.tasks)

    @property
    def speedup(self) -> float | None:
        if self.before_ms and self.after_ms:
            return self.before_ms / self.after_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.target, "device": self.device,
            "log_dir": str(self.log_dir), "remote": self.remote,
            "tasks": [t.to_dict() for t in self.tasks],
            "trials": self.trials, "valid_trials": self.valid_trials,
            "trials_requested": self.trials_requested,
            "build_errors": self.build_errors, "run_errors": self.run_errors,
            "first_build_error": self.first_build_error,
            "first_run_error": self.first_run_error,
            "before_ms": _round(self.before_ms), "after_ms": _round(self.after_ms),
            "speedup": _round(self.speedup), "latency_source": self.latency_source,
            "stopped": self.stopped, "seconds": round(self.seconds, 1),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


# -- builder / runner functions (run in worker processes; keep them importable) -------------
def build_kernel(mod: Any, target: Any, _params: Any = None) -> Any:
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin``.

    A candidate's tensor intrinsics are already inlined by the time it is built; importing
    the intrinsic registry only costs each builder worker tens of seconds.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_kernel(mod: Any, cross_cc: str | None = None, tmp_dir: str | None = None) -> str:
    """Export a built kernel as a shared library (cross-linked when ``cross_cc`` is given).

    Runs in a builder worker: ``tmp_dir`` is a folder of the tuning process's own temporary
    directory (:mod:`compiler.tempdirs`), where the runner finds the kernel and which goes
    away with that process however it ends. The worker's other temporary files (the linker's
    objects) go there too.
    """
    from tvm.support import cc

    if tmp_dir is not None:
        tempfile.tempdir = tmp_dir  # this worker process builds kernels and nothing else
    path = os.path.join(tempfile.mkdtemp(prefix="hwcc-tune-", dir=tmp_dir), "kernel.so")
    if cross_cc:
        mod.export_library(path, fcompile=cc.cross_compiler(cross_cc))
    else:
        mod.export_library(path)
    return path


# -- the log ------------------------------------------------------------------------------
def _prescheduled(task: Any) -> bool:
    """Whether an extracted task's kernel was scheduled by hand before tuning (a pass's own
    kernel, e.g. the sparse BSR kernels, marked ``tirx.is_scheduled``): not tuned."""
    for mod in (task.mod, *task.dispatched):
        for _, func in mod.functions_items():
            attrs = getattr(func, "attrs", None)
            if attrs is not None and any(key in attrs and bool(attrs[key])
                                         for key in ("tirx.is_scheduled", "tir.is_scheduled")):
                return True
    return False


# -- the run ------------------------------------------------------------------------------
@dataclass
class _Task:
    """An extracted task with its state for this run."""

    name: str
    weight: int
    mod: Any  # IRModule with one PrimFunc "main"
    report: TaskReport
    index: int = -1  # position among the tuned tasks

    @property
    def shash(self) -> str:
        import tvm_ffi

        return str(tvm_ffi.structural_hash(self.mod))


@dataclass
class _Remote:
    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"{self.key}@{self.host}:{self.port}"


def _parse_tracker(rpc_tracker: str | None, rpc_key: str | None) -> _Remote | None:
    if rpc_tracker is None and rpc_key is None:
        return None
    if not rpc_tracker or not rpc_key:
        raise ConfigError("remote tuning needs both an RPC tracker (HOST:PORT) and a device key")
    host, sep, port = rpc_tracker.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"malformed RPC tracker '{rpc_tracker}'; expected HOST:PORT")
    return _Remote(host, int(port), rpc_key)


def _check_tracker(remote: _Remote) -> None:
    """Fail early, in one line, when the tracker is unreachable or has no such device."""
    if not _tracker_has_key(remote, raise_errors=True):
        raise TuningError(f"RPC tracker {remote.host}:{remote.port} has no device with key "
                          f"'{remote.key}' (start one: python -m tvm.exec.rpc_server "
                          f"--tracker {remote.host}:{remote.port} --key {remote.key})")


def _tracker_has_key(remote: _Remote, raise_errors: bool = False) -> bool:
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(remote.host, remote.port).summary()
    except Exception as err:  # noqa: BLE001 - socket and TVM errors alike
        if raise_errors:
            raise TuningError(f"cannot reach RPC tracker {remote.host}:{remote.port}: "
                              f"{_last_line(err)}") from None
        return False
    # registered servers only: "pending" in queue_info counts requests (ours), not devices
    return any(str(info.get("key", "")).split(":", 1)[-1] == remote.key
               for info in summary.get("server_info", []))


def _last_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


class _Session:
    """Builder, runner, counters and progress of one run, shared by the callbacks."""

    def __init__(self, tasks: list[_Task], target: Target, remote: _Remote | None,
                 time_budget_s: float | None, total_trials: int, progress: bool,
                 t_start: float) -> None:
        from tvm.s_tir import meta_schedule as ms

        self.ms = ms
        self.tasks = tasks
        self.remote = remote
        self.deadline = None if time_budget_s is None else t_start + time_budget_s
        self.stop_reason: str | None = None
        self.interrupted = False
        self.first_build_error: str | None = None
        self.first_run_error: str | None = None
        self.best: dict[int, float] = {}
        self.draining = False
        self.kernel_dir = tempdirs.mkdtemp("hwcc-kernels-")  # built candidates, until measured
        self.builder = ms.builder.LocalBuilder(
            max_workers=max(1, os.cpu_count() or 1), timeout_sec=BUILD_TIMEOUT_S,
            f_build=build_kernel,
            f_export=functools.partial(export_kernel, cross_cc=target.cross_cc,
                                       tmp_dir=str(self.kernel_dir)))
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=30,
                                              enable_cpu_cache_flush=False)
        if remote is None:
            make_inner = functools.partial(ms.runner.LocalRunner, timeout_sec=RUN_TIMEOUT_S,
                                           evaluator_config=evaluator)
        else:
            make_inner = functools.partial(
                ms.runner.RPCRunner,
                rpc_config=ms.runner.RPCConfig(
                    tracker_host=remote.host, tracker_port=remote.port, tracker_key=remote.key,
                    session_timeout_sec=int(RUN_TIMEOUT_S)),
                evaluator_config=evaluator, max_workers=1)
        self.runner = _make_sync_runner(make_inner, self)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_trials, desc="tuning", unit="trial", leave=True,
                            dynamic_ncols=True)

    # called by _SyncRunner after a batch ran
    def device_lost(self, result: Any) -> bool:
        """After a failed remote run: is the device gone from the tracker? (remembered)"""
        if self.stop_reason is None and self.remote is not None and result.error_msg is not None \
                and not _tracker_has_key(self.remote):
            self.stop_reason = f"device '{self.remote.key}' lost (no longer on the tracker)"
            logger.warning("%s: ending the run with what was measured", self.stop_reason)
        return self.stop_reason is not None and self.stop_reason.startswith("device")

    def on_measured(self, task_id: int, builder_results: list[Any],
                    runner_results: list[Any]) -> None:
        task = next(t for t in self.tasks if t.index == task_id)
        rep = task.report
        for b, r in zip(builder_results, runner_results):
            if r.error_msg == _NOT_SENT:
                continue
            rep.trials += 1
            if b.error_msg is not None:
                rep.build_errors += 1
                self.first_build_error = self.first_build_error or _error_line(b.error_msg)
                continue
            ms_ = _run_ms(r.run_secs) if r.error_msg is None else None
            if ms_ is None:
                rep.run_errors += 1
                self.first_run_error = self.first_run_error or _error_line(
                    r.error_msg or "no valid time")
                continue
            rep.valid += 1
            if task_id not in self.best or ms_ < self.best[task_id]:
                self.best[task_id] = ms_
        if self.bar is not None:
            self.bar.update(len(builder_results))
            best = self.best.get(task_id)
            self.bar.set_postfix_str(
                f"{task.name[:32]} best {best:.3f} ms" if best is not None else task.name[:32],
                refresh=True)

    def out_of_time(self) -> bool:
        """Whether no new batch should start: the budget is spent or Ctrl-C was pressed."""
        return self.interrupted or (self.deadline is not None
                                    and time.monotonic() >= self.deadline)

    def check_stop(self, scheduler: Any = None, current: int | None = None) -> None:
        """Raise :class:`_StopTuning` when the run must end (after a batch is committed).

        MetaSchedule's task scheduler sends a batch of every task to the runner before it
        joins any (its first round), and only a join records the results. Before stopping,
        the batches of the other tasks that were measured but not joined yet are joined here,
        so that their records reach the log too.
        """
        if self.draining:
            return  # a join made by the drain below: keep its records, stop after the drain
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop_reason = self.stop_reason or "time budget reached"
        if self.interrupted:
            self.stop_reason = self.stop_reason or "interrupted"
        if not self.stop_reason:
            return
        if scheduler is not None:
            self.draining = True
            try:
                for i, rec in enumerate(scheduler.tasks_):
                    if i != current and rec.measure_candidates is not None:
                        scheduler.join_running_task(i)
            finally:
                self.draining = False
        raise _StopTuning(self.stop_reason)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        shutil.rmtree(self.kernel_dir, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_sigint(session: _Session) -> Iterator[None]:
    """First Ctrl-C: finish the batch in flight, commit it, stop. Second: abort at once.

    A ``KeyboardInterrupt`` raised inside MetaSchedule's C++ loop comes back through the FFI
    as a plain ``RuntimeError``, so the first Ctrl-C only sets a flag that our callbacks check.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if session.interrupted:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        session.interrupted = True
        logger.warning("interrupted: stopping after the batch in flight "
                       "(Ctrl-C again to stop at once; measured records are kept either way)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _error_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    for ln in reversed(lines):  # the last informative line of a traceback
        if not ln.startswith(("File ", "^", "~")):
            return ln[:300]
    return (lines[-1] if lines else "unknown error")[:300]


def _make_sync_runner(make_inner: Callable[[], Any], session: _Session) -> Any:
    """A runner that waits for its batch, so builds never overlap measurements."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    state = {"inner": make_inner()}

    def run_one(inp: Any) -> Any:
        fut = state["inner"].run([inp])[0]
        deadline = time.monotonic() + RUN_TIMEOUT_S + 15
        while not fut.done():
            # A worker stuck in a C++ RPC call holds the GIL, so its own timeout never fires
            # and the pool waits forever: give up on it here and start a fresh runner.
            if time.monotonic() > deadline:
                _kill_pool(getattr(state["inner"], "pool", None))
                state["inner"] = make_inner()
                return RunnerResult(run_secs=None, error_msg=(
                    f"hwcc: no answer from the runner in {RUN_TIMEOUT_S + 15:.0f} s"))
            time.sleep(0.02)
        return fut.result()

    @derived_object
    class _SyncRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            results = []
            for inp in runner_inputs:  # one at a time: a lost device costs one timeout
                if session.device_lost(results[-1] if results else _OK):
                    results.append(RunnerResult(run_secs=None, error_msg=_NOT_SENT))
                else:
                    results.append(run_one(inp))
            session.device_lost(results[-1] if results else _OK)
            return [RunnerFuture(f_done=lambda: True, f_result=functools.partial(_same, r))
                    for r in results]

    return _SyncRunner()


def _kill_pool(pool: Any) -> None:
    """Kill a PopenPoolExecutor whose worker hangs (closing its pipe first would deadlock)."""
    if pool is None:
        return
    for worker in list(getattr(pool, "_worker_map", {}).values()):
        proc = getattr(worker, "_proc", None)
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
    time.sleep(0.5)  # the pool's reader thread sees EOF and cleans the worker up itself
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False)


def _same(x: Any) -> Any:
    return x


class _Ok:
    error_msg = None


_OK = _Ok()
#: Error of candidates not sent to a device already lost; they are neither counted nor logged.
_NOT_SENT = "hwcc: not measured (device lost)"


def _make_bounded_search(inner: Any, session: _Session) -> Any:
    """``inner`` (a MetaSchedule search strategy) that generates no batch once the session is
    out of time.

    The gradient task scheduler's first round generates, builds and measures a batch for
    every task before it joins any; checking the budget only when results are joined let a
    33-kernel model run 666 s on a 240 s budget. A task asked for candidates after the
    deadline now ends at once (no generation, no build, no measurement), so the run
    overshoots the budget by at most the batch in flight.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class _Bounded(PySearchStrategy):
        def __init__(self, strategy: Any) -> None:
            self.strategy = strategy

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.strategy._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials: int, num_trials_per_iter: int,
                       design_spaces: Any, database: Any = None,
                       cost_model: Any = None) -> None:
            self.strategy.pre_tuning(max_trials, num_trials_per_iter, design_spaces,
                                     database, cost_model)

        def post_tuning(self) -> None:
            self.strategy.post_tuning()

        def generate_measure_candidates(self) -> Any:
            if session.out_of_time():
                return None
            return self.strategy.generate_measure_candidates()

        def notify_runner_results(self, measure_candidates: Any, results: Any) -> None:
            self.strategy.notify_runner_results(measure_candidates, results)

        def clone(self) -> Any:
            return _Bounded(self.strategy.clone())

    return _Bounded(inner)


def _make_recorder(database: Any, shared: tuning_db.SharedLog) -> Any:
    """MetaSchedule's AddToDatabase, except for candidates that were never measured: each
    batch goes to the search's own database, then in one locked append to the shared log."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Record(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            ctx = task_scheduler.tasks_[task_id].ctx
            workload = database.commit_workload(ctx.mod)
            for cand, res in zip(measure_candidates, runner_results):
                if res.error_msg == _NOT_SENT:
                    continue
                secs = list(res.run_secs) if res.run_secs is not None else [_FAILED_SECS * 10]
                database.commit_tuning_record(TuningRecord(
                    cand.sch.trace, workload, secs, ctx.target, cand.args_info))
            shared.sync()

    return _Record()


def _make_callback(session: _Session) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            session.on_measured(task_id, list(builder_results), list(runner_results))
            session.check_stop(task_scheduler, task_id)

    return _Progress()


def _measure_defaults(session: _Session, tasks: list[_Task], default_mod: Any,
                      tvm_target: Any) -> None:
    """Latency of each kernel with hwcc's default schedule, measured like the candidates."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    inputs, owners = [], []
    for t in tasks:
        gv = default_mod.get_global_var(t.name) if t.name in _names(default_mod) else None
        if gv is None:
            continue
        func = default_mod[gv].with_attr("global_symbol", "main")  # private after FuseTIR
        inputs.append(ms.builder.BuilderInput(tvm.IRModule({"main": func}), tvm_target))
        owners.append((t, ms.arg_info.ArgInfo.from_prim_func(func)))
    if not inputs:
        return
    built = session.builder.build(inputs)
    run_inputs, run_owners = [], []
    for res, (t, args) in zip(built, owners):
        if res.error_msg is not None:
            logger.warning("default schedule of %s did not build: %s", t.name,
                           _error_line(res.error_msg))
            continue
        run_inputs.append(ms.runner.RunnerInput(res.artifact_path, "cpu", args))
        run_owners.append((t, res.artifact_path))
    if not run_inputs:
        return
    for fut, (t, path) in zip(session.runner.run(run_inputs), run_owners):
        r = fut.result()
        t.report.default_ms = _run_ms(r.run_secs) if r.error_msg is None else None
        if r.error_msg is not None:
            t.report.unmeasurable = True
            logger.warning("default schedule of %s did not run on random inputs (%s); "
                           "not tuning it", t.name, _error_line(r.error_msg))
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _names(mod: Any) -> set[str]:
    return {gv.name_hint for gv in mod.get_global_vars()}


def _time_models(mod: Any, target: Target, databases: Sequence[Any],
                 inputs: Mapping[str, Any], options: LowerOptions,
                 rounds: int = 3) -> list[float]:
    """Build ``mod`` like ``compile`` does, once per database, and time each here.

    The builds are timed in alternation and the fastest repeat is kept, so that load from
    other processes on the machine biases neither side. Milliseconds.
    """
    import numpy as np
    import tvm
    from tvm import relax


    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.asarray(v), dev) for v in inputs.values()]
    timers = []
    for db in databases:
        vm = relax.VirtualMachine(build(mod, target, database=db, options=options).executable, dev)
        timers.append(vm.time_evaluator("main", dev, number=5, repeat=3, min_repeat_ms=50))
    best = [math.inf] * len(timers)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], min(timer(*args).results) * 1e3)
    return best


def tune(
    model: Any,
    target: str | Target = "host",
    *,
    trials: int | None = None,
    time_budget_s: float | None = None,
    log_dir: str | Path | None = None,
    device: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    passes: Sequence[Any] = (),
    lower_options: LowerOptions | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
) -> TuneReport:
    """Tune the kernels of ``model`` for ``target`` and append the records to its log.

    Parameters
    ----------
    model
        Path to an ONNX file or an ``onnx.ModelProto``.
    target
        Target triple (see ``hwcc targets``) or a :class:`targets.Target`; CPU (llvm) targets.
    trials
        Trials (measured candidates) for the whole model, records already in the log
        included: a second run with the same number resumes, or does nothing when done.
        Default: 32 per task, or unbounded when only ``time_budget_s`` is given.
    time_budget_s
        Stop cleanly, keeping every record, once this many seconds have passed (checked
        after each batch of candidates).
    log_dir
        Root of the tuning logs (default ``tuning_logs/`` or ``$HWCC_TUNING_LOGS``); records go
        to ``<log_dir>/<device>/<target-key>/``, where ``compile`` looks for them.
    device
        Name of the device class in the log path (default: derived from the target).
    input_shapes
        Pins dynamic input dimensions by input name.
    lower_options
        The lowering's switches (:class:`compiler.lower.options.LowerOptions`); records are
        found again only by a compile with the same options. Default: all rewrites on.
    passes
        Compression passes, as for :func:`compiler.compile` (tune what you will compile).
    rpc_tracker, rpc_key
        ``HOST:PORT`` of a TVM RPC tracker and the key of the device to measure on.
    progress
        Show a tqdm progress bar (tasks, trials, best latency so far) on stderr.

    Returns
    -------
    TuneReport
        Per task and for the model: trials, valid trials, failures, latency before and after.

    Raises
    ------
    TuningError
        No valid candidate was measured, the tracker or device is unreachable.
    TuningInterrupted
        On Ctrl-C (a ``KeyboardInterrupt``); its ``report`` holds the partial results, and
        every record measured so far is in the log.
    """
    use_all_cores()  # measure with every core, as the compiled model will run
    t_start = time.monotonic()
    tgt, remote = _check_request(target, trials, time_budget_s, rpc_tracker, rpc_key)
    imported = frontend.load_model(model, input_shapes)
    mod = run_passes(imported.mod, passes)[0] if passes else imported.mod
    path = tuning_db.log_dir(tgt, root=log_dir, device=device)
    report = TuneReport(model=imported.source, target=str(tgt),
                        device=device or tuning_db.device_name(tgt), log_dir=path,
                        remote=str(remote) if remote else None)
    if remote is not None:
        _check_tracker(remote)

    options = lower_options or LowerOptions()
    tasks, default_mod, tvm_target = _extract_tasks(mod, tgt, options, imported.source)
    total = int(trials) if trials is not None else (
        DEFAULT_TRIALS_PER_TASK * len(tasks) if time_budget_s is None else 10_000 * len(tasks))
    report.trials_requested = total
    report.tasks = [t.report for t in tasks]
    database, shared, todo, need = _resume_plan(path, tasks, total)

    session = _Session(tasks, tgt, remote, time_budget_s, sum(need.values()) if todo else 0,
                       progress and bool(todo), t_start)
    try:
        _run_session(session, tasks, todo, need, default_mod, database, shared, tvm_target)
    finally:
        shutil.rmtree(shared.private, ignore_errors=True)
    report.stopped = "interrupted" if session.interrupted else session.stop_reason
    report.first_build_error = session.first_build_error
    report.first_run_error = session.first_run_error

    _settle_log(path, tasks)
    report.seconds = time.monotonic() - t_start
    if session.interrupted:
        raise TuningInterrupted(report)
    if report.trials and not report.valid_trials:
        err = TuningError(
            f"no valid candidate in {report.trials} trials ({report.build_errors} failed to "
            f"build, {report.run_errors} failed to run); first error: "
            f"{report.first_build_error or report.first_run_error}")
        err.report = report  # type: ignore[attr-defined]
        raise err
    _model_latency(report, tasks, mod, tgt, remote, imported, options)
    report.seconds = time.monotonic() - t_start
    _log_summary(report)
    return report


def _check_request(target: str | Target, trials: int | None, time_budget_s: float | None,
                   rpc_tracker: str | None, rpc_key: str | None
                   ) -> tuple[Target, _Remote | None]:
    """The parsed target and remote device of a tuning request, or a clear error."""
    if trials is not None and (isinstance(trials, bool) or int(trials) < 1):
        raise ConfigError(f"trials must be a positive integer; got {trials}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ConfigError(f"time budget must be positive; got {time_budget_s} s")
    tgt = parse_target(target)
    if tgt.kind != "llvm":
        raise TargetError(f"tuning supports CPU (llvm) targets; '{tgt}' is a {tgt.kind} target")
    remote = _parse_tracker(rpc_tracker, rpc_key)
    if remote is None and not tgt.runs_on_this_machine():
        raise TargetError(f"'{tgt}' does not run on this machine; tune it on the device with "
                          "--rpc-tracker HOST:PORT --rpc-key KEY")
    if remote is not None and tgt.cross_cc and shutil.which(tgt.cross_cc) is None:
        raise TargetError(f"cross compiler '{tgt.cross_cc}' for {tgt.triple} not found")
    return tgt, remote


def _extract_tasks(mod: Any, tgt: Target, options: LowerOptions, source: str
                   ) -> tuple[list[_Task], Any, Any]:
    """The kernels to tune (fused exactly as ``compile`` fuses them), the module with hwcc's
    default schedules (each kernel's trial one), and the TVM target."""
    from tvm.s_tir import meta_schedule as ms

    tvm_target = tgt.tvm_target()
    fused = lower.mark_layout_free(lower.legalize_and_fuse(mod, tgt, options))
    with tvm_target, lower.pass_context(tgt):
        default_mod = apply_default_schedules(fused, tvm_target)
    extracted = ms.relax_integration.extract_tasks(fused, tvm_target)
    tasks = [
        _Task(t.task_name, int(t.weight), t.dispatched[0], TaskReport(t.task_name, int(t.weight)))
        for t in extracted if not _prescheduled(t)
    ]
    if not tasks:
        raise TuningError(f"{source} has no kernels to tune")
    return tasks, default_mod, tvm_target


def _resume_plan(path: Path, tasks: list[_Task], total: int
                 ) -> tuple[Any, tuning_db.SharedLog, list[_Task], dict[str, int]]:
    """Open (and repair) the log; the tasks still short of their share of ``total`` trials,
    and how many trials each needs. A kernel short of its share continues; one with no valid
    record starts over.

    The search reads a private copy of the log (a ``JSONDatabase`` in this process's
    temporary directory: the records found so far seed it); new records go to the log
    through a :class:`~compiler.tuning.database.SharedLog`, so that other tuners may append
    to the same log at the same time.
    """
    from tvm.s_tir import meta_schedule as ms

    share = max(1, math.ceil(total / len(tasks)))
    path.mkdir(parents=True, exist_ok=True)
    private = tempdirs.mkdtemp("hwcc-db-")
    with tuning_db.log_lock(path):
        bad = repair_log(path)
        for name in (tuning_db.WORKLOADS, tuning_db.RECORDS):
            if (path / name).exists():
                shutil.copy(path / name, private / name)
        before = read_log(path)
    if bad:
        logger.warning("%s: %d corrupted lines dropped (originals kept as *.bak)", path, bad)
    database = ms.database.JSONDatabase(work_dir=str(private), module_equality="structural")
    todo: list[_Task] = []
    for t in tasks:
        entry = before.get(t.shash, _LogEntry())
        t.report.records = entry.records
        if entry.records >= share and (entry.best_ms or entry.best_slower_ms) is not None:
            t.report.skipped = True
        else:
            todo.append(t)
    need = {t.name: share - t.report.records if t.report.records < share else share
            for t in todo}
    if todo and len(todo) < len(tasks):
        logger.info("resuming: %d of %d tasks already have %d records each",
                    len(tasks) - len(todo), len(tasks), share)
    return database, tuning_db.SharedLog(path, private), todo, need


def _run_session(session: _Session, tasks: list[_Task], todo: list[_Task],
                 need: dict[str, int], default_mod: Any, database: Any,
                 shared: tuning_db.SharedLog, tvm_target: Any) -> None:
    """Measure the default schedules, then search the kernels of ``todo``; a stop (budget,
    Ctrl-C) ends it with every measured record kept (``session`` says why it stopped)."""
    work_dir = tempdirs.mkdtemp("hwcc-tune-")
    try:
        with fast_tvmscript_import(), _stop_on_sigint(session):
            import tvm.s_tir.tensor_intrin  # noqa: F401 - what each TuneContext imports

            _measure_defaults(session, tasks, default_mod, tvm_target)
            if session.remote is None:
                todo = [t for t in todo if not t.report.unmeasurable]
            todo = [t for t in todo if _has_design_space(t, tvm_target)]
            # costliest kernels first: under a time budget the first round may not reach all
            todo.sort(key=lambda t: -t.weight * (t.report.default_ms or 0.0))
            if todo:
                session.check_stop()
                _run_search(session, todo, database, shared, tvm_target, work_dir, need)
    except _StopTuning:
        pass
    except KeyboardInterrupt:
        session.interrupted = True
    except Exception as err:
        # our stops and a second Ctrl-C reach here wrapped by the FFI (as RuntimeError &c.)
        if isinstance(err, HwccError):
            raise
        if session.stop_reason is None and not session.interrupted:
            raise TuningError(f"tuning failed: {_last_line(err)}") from err
    finally:
        session.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def tuned_beats_default(best_ms: float, default_ms: float) -> bool:
    """Whether a tuned schedule measured at ``best_ms`` replaces the default measured at
    ``default_ms``: faster by :data:`KEEP_IF_FASTER` and by :data:`MIN_SAVING_MS`."""
    return best_ms < KEEP_IF_FASTER * default_ms and default_ms - best_ms >= MIN_SAVING_MS


def _settle_log(path: Path, tasks: list[_Task]) -> None:
    """Demote kernels whose best tuned schedule is slower than the default; fill the report.

    Compile applies a kernel's best record whenever it has one, so a tuned schedule that lost
    to hwcc's default schedule (both measured by this run's runner) would make the model
    slower; its records move to :data:`SLOWER`, where resuming still counts them. Only the
    kernels whose default this run measured are judged; other kernels in the log keep their
    earlier verdict.
    """
    with tuning_db.log_lock(path):  # other tuners may append meanwhile: read and move at once
        repair_log(path)
        _settle_locked(path, tasks)


def _settle_locked(path: Path, tasks: list[_Task]) -> None:
    entries = read_log(path)
    slower = set()
    for t in tasks:
        e = entries.get(t.shash, _LogEntry())
        best = min((x for x in (e.best_ms, e.best_slower_ms) if x is not None), default=None)
        if best is not None and t.report.default_ms is not None \
                and not tuned_beats_default(best, t.report.default_ms):
            slower.add(t.shash)
            logger.info("%s: best tuned schedule %.4f ms is not 10%% (and 1 us) faster than the "
                        "default schedule %.4f ms; compile keeps the default", t.name, best,
                        t.report.default_ms)
        t.report.records = e.records
        t.report.best_ms = best
        t.report.used = best is not None and t.shash not in slower
    _partition_log(path, slower, {t.shash for t in tasks if t.report.default_ms is not None})


def _tune_context(t: _Task, tvm_target: Any, strategy: Any, seed: int | None) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.TuneContext(
        mod=t.mod, target=tvm_target, space_generator="post-order-apply",
        search_strategy=strategy, task_name=t.name, rand_state=seed if seed is not None else -1,
        num_threads="physical", logger=logging.getLogger(f"{__name__}.metaschedule"))


def _has_design_space(t: _Task, tvm_target: Any) -> bool:
    """Whether MetaSchedule can generate the search space of ``t`` (hwcc's own kernels, e.g.
    Winograd's gather-transform-GEMM, can defeat its schedule rules: one such kernel would
    otherwise end the whole run). A kernel without one keeps its default schedule."""
    try:
        spaces = _tune_context(t, tvm_target, "evolutionary", None).generate_design_space()
        if not spaces:
            raise ValueError("empty design space")
    except Exception as err:  # noqa: BLE001 - TVM raises many types from its schedule rules
        t.report.no_design_space = _last_line(err)
        logger.warning("%s: MetaSchedule cannot generate its search space (%s); it keeps the "
                       "default schedule", t.name, t.report.no_design_space)
        return False
    return True


def _run_search(session: _Session, todo: list[_Task], database: Any,
                shared: tuning_db.SharedLog, tvm_target: Any, work_dir: Path,
                need: Mapping[str, int]) -> None:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    need = {t.name: need[t.name] for t in todo}
    contexts, weights = [], []
    for i, (t, seed) in enumerate(zip(todo, fork_seed(None, n=len(todo)))):
        t.index = i
        ctx = _tune_context(t, tvm_target, _make_bounded_search(
            ms.search_strategy.EvolutionarySearch(), session), seed)
        contexts.append(ctx.clone())
        weights.append(float(t.weight))
    per_task = max(need.values())
    callbacks = [
        _make_recorder(database, shared),
        ms.measure_callback.RemoveBuildArtifact(),
        ms.measure_callback.UpdateCostModel(),
        _make_callback(session),
    ]
    ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir),
        max_trials_global=sum(need.values()), max_trials_per_task=per_task,
        num_trials_per_iter=_per_iter(min(need.values())),
        builder=session.builder, runner=session.runner, database=database,
        cost_model="xgb",
        measure_callbacks=callbacks, task_scheduler="gradient")
    session.check_stop()  # tasks ended by the budget end the run quietly: say why


def _per_iter(need: int) -> int:
    """Candidates per search iteration: ~4 iterations per task (the cost model learns between
    them), batches of 4 to :data:`MAX_TRIALS_PER_ITER`."""
    return max(1, min(need, MAX_TRIALS_PER_ITER, max(4, math.ceil(need / 4))))


def _model_latency(report: TuneReport, tasks: list[_Task], mod: Any, tgt: Target,
                   remote: _Remote | None, imported: Any, options: LowerOptions) -> None:
    """Before/after latency of the model: end to end here, else summed over kernels."""
    if remote is None and tgt.runs_on_this_machine():
        try:
            feeds = random_inputs(imported.inputs, seed=0)
            if any(t.report.used for t in tasks):
                db, _ = tuning_db.open_database(report.log_dir, tgt)
                report.before_ms, report.after_ms = _time_models(
                    mod, tgt, [None, db], feeds, options)
            else:  # compile would build the very same module
                report.before_ms = report.after_ms = _time_models(
                    mod, tgt, [None], feeds, options)[0]
            report.latency_source = "model"
            return
        except HwccError as err:
            logger.warning("could not time the whole model (%s); summing kernels", err)
    known = [t for t in tasks if t.report.default_ms is not None]
    if known:
        report.before_ms = sum(t.weight * t.report.default_ms for t in known)
        report.after_ms = sum(
            t.weight * (t.report.best_ms if t.report.used else t.report.default_ms)
            for t in known)
        report.latency_source = "kernels"


def _log_summary(report: TuneReport) -> None:
    logger.info("tuned %d tasks with %d trials (%d valid) in %.0f s; %s -> %s ms (%s); log %s",
                len(report.tasks), report.trials, report.valid_trials, report.seconds,
                _round(report.before_ms), _round(report.after_ms), report.latency_source,
                report.log_dir)
