"""Policy search: pick compression settings against measured latency and an accuracy budget.

Every candidate is a :class:`Settings` (global prune ratio and method, per-group prune ratios,
low-rank energy, quantization mode). It is compiled for the target with
:func:`compiler.compile`, timed with :meth:`Artifact.benchmark` on this machine and scored on
evaluation data with :func:`compiler.evaluate.evaluate_artifact`; the uncompressed baseline is
measured in the same run. The report lists every candidate, the Pareto front of latency against
accuracy drop (the baseline takes part) and the fastest candidate within the accuracy budget.

Strategies:

- ``grid``: the product of the global settings of the :class:`SearchSpace`, in order, first
  ``budget`` points.
- ``random``: seeded draws, with per-group prune ratios for the largest channel groups.
- ``bayes``: a few random draws, then a Gaussian process (numpy, RBF kernel, length scale by
  marginal likelihood) over the encoded settings proposes the pool draw with the highest
  expected improvement of ``log(latency / baseline) + penalty * (drop over budget)``.

Each measured candidate is appended to a JSON-lines log at once (flushed), so an interrupted
search loses nothing, and a second search with the same log, model, target and metric skips
the candidates already in it. Ctrl-C ends the search and returns the report so far.

>>> report = search("model.onnx", eval_data=data, calibration=calib, budget=10)
>>> report.best.settings, report.to_dict()["pareto"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from compiler import api, tempdirs
from compiler.data import split_samples
from compiler.errors import CompileError, ConfigError, HwccError, TargetError
from compiler.evaluate import evaluate_artifact, top1_accuracy
from compiler.frontend import load_model, read_model, resolve_input_specs
from compiler.pipeline import build_passes
from passes import Canonicalize, CanonicalizeConfig
from passes.channel_groups import analyze
from targets import parse_target

from .space import (  # noqa: F401 - the search's data types, re-exported
    DROP_TOL,
    LOG_VERSION,
    QUANTIZE_MODES,
    STRATEGIES,
    Candidate,
    SearchReport,
    SearchSpace,
    Settings,
    dominates,
    format_table,
    pareto_front,
)
from .strategies import _PROPOSERS, expected_improvement  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)


def candidate_passes(settings: Settings, calibration: Mapping[str, np.ndarray] | None,
                     capabilities: Any) -> list[Any]:
    """The pass specs (pipeline order) that compile ``settings`` for a target's capabilities.

    Per-group ratios go to :class:`passes.prune_channels.PruneConfig` ``layer_ratios``; recovery
    follows pruning and low rank when ``calibration`` is given (as in ``hwcc compile``).
    """

    s = settings.normalized()
    ratios = dict(s.layer_ratios)
    any_prune = max([s.prune, *ratios.values()]) if s.prune_method is not None else None
    specs = build_passes(prune=any_prune, prune_method=s.prune_method or "l1",
                         low_rank=None if s.low_rank is None else f"energy={s.low_rank}",
                         quantize=s.quantize, calibration=calibration,
                         lanes=capabilities.fp32_lanes, capabilities=capabilities)
    if ratios:
        specs = [dataclasses.replace(p, config=dataclasses.replace(
            p.config, ratio=s.prune, layer_ratios=ratios)) if p.name == "prune_channels" else p
            for p in specs]
    return specs


# -- candidates and report --------------------------------------------------------------------
def search(
    model: str | Path | Any,
    target: str | Any = "host",
    *,
    eval_data: Mapping[str, np.ndarray],
    labels_key: str | None = "label",
    calibration: Mapping[str, np.ndarray] | None = None,
    strategy: str = "grid",
    budget: int = 10,
    max_accuracy_drop: float = 1.0,
    space: SearchSpace | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    eval_samples: int | None = 200,
    repeat: int = 50,
    tuning_log: str | Path | None | bool = None,
) -> SearchReport:
    """Search compression settings for ``model`` on ``target``; see the module docstring.

    Parameters
    ----------
    model
        ONNX file or ``onnx.ModelProto``.
    target
        A target that runs on this machine (latency is measured, not estimated).
    eval_data
        Input arrays keyed by input name (leading sample axis) plus the labels array.
    labels_key
        Key of the class labels in ``eval_data``; None scores by the worst relative output
        error against the float model instead of top-1 accuracy.
    calibration
        Calibration inputs (leading sample axis) for int8, recovery and activation-based
        pruning; without it those are left out of the space.
    strategy
        ``"grid"``, ``"random"`` or ``"bayes"``.
    budget
        Candidates to measure (the baseline is extra; candidates resumed from the log count).
    max_accuracy_drop
        Accuracy budget: top-1 points below the baseline, or the largest relative output error
        when there are no labels.
    space
        The :class:`SearchSpace` (default: its defaults).
    log_path
        JSON-lines log: every measured candidate is appended at once; candidates already in it
        (same model, target, metric and sample count) are not measured again.
    progress
        Show a tqdm progress bar.
    seed
        Seeds the random and Bayesian choices.
    eval_samples
        Evaluate on the first N samples only (None: all).
    repeat
        Timed runs per candidate (median latency).
    tuning_log
        Passed to :func:`compiler.compile`.

    Raises
    ------
    ConfigError
        Bad budget, strategy, accuracy budget, space, sample count or evaluation data.
    TargetError
        The target does not run on this machine.
    """

    space = _check_request(strategy, budget, repeat, eval_samples, max_accuracy_drop, space,
                           calibration)
    tgt = parse_target(target)
    if tgt.kind != "llvm" or not tgt.runs_on_this_machine():
        raise TargetError(f"search measures latency on the target itself; '{tgt}' does not run "
                          "on this machine, and measuring on a remote device is not supported "
                          "yet (search for 'host' or a target of this machine's CPU)")

    onnx_model, source = read_model(model)
    specs = resolve_input_specs(onnx_model, None)
    feeds, labels = _eval_set(eval_data, labels_key, specs, eval_samples, split_samples)
    metric = "top1" if labels is not None else "max_rel_err"
    if metric == "top1":
        feeds, labels = _enough_samples(feeds, labels, eval_data, labels_key, specs,
                                        max_accuracy_drop)
    groups, covers_all = _largest_groups(onnx_model, space.max_groups) if space.per_group \
        else ([], False)
    caps = tgt.capabilities
    space, left_out = space.for_capabilities(caps)
    for item in left_out:
        logger.warning("search space: %s left out (%s)", item["setting"], item["reason"])
    ident = {"model_sha256": hashlib.sha256(onnx_model.SerializeToString()).hexdigest(),
             "target": str(tgt), "metric": metric, "eval_samples": len(feeds)}
    log = _Log(Path(log_path), ident) if log_path is not None else None
    prior = log.read() if log else {}
    if prior:
        logger.info("resuming: %d candidates already measured in %s", len(prior), log_path)

    workdir = tempdirs.mkdtemp("hwcc-search-")
    t_start = time.perf_counter()
    quiet = _Once("without teacher-guided recovery")  # said once above, not per candidate
    logging.getLogger("compiler.pipeline").addFilter(quiet)
    ctrl_c = _CtrlC()

    def measure(settings: Settings, cid: int) -> Candidate:
        cand = _measure(onnx_model, tgt, settings, cid, calibration, caps, feeds, labels,
                        repeat, tuning_log, workdir)
        if ctrl_c.hit:  # TVM may have turned the interrupt into a build error: not logged
            raise KeyboardInterrupt
        return cand

    try:
        ctrl_c.install()
        base = measure(Settings(), 0)
        if not base.ok:
            raise CompileError(f"the uncompressed model does not compile: {base.error}")
        base_acc = base.accuracy
        base = dataclasses.replace(base, drop=0.0 if metric == "top1" else base.max_rel_err)
        if log:
            log.append("baseline", base)
        report = SearchReport(model=source, target=str(tgt), strategy=strategy, metric=metric,
                              max_accuracy_drop=float(max_accuracy_drop), baseline=base,
                              space=space, log_path=str(log_path) if log_path else None,
                              eval_samples=len(feeds), left_out=left_out)
        proposer = _PROPOSERS[strategy](space, groups, budget, seed, report,
                                        global_ratio=not covers_all)
        _run_candidates(report, proposer, budget, prior, measure, base_acc, log,
                        _progress_bar(budget, progress, strategy))
    finally:
        ctrl_c.restore()
        logging.getLogger("compiler.pipeline").removeFilter(quiet)
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    return report


def _check_request(strategy: str, budget: int, repeat: int, eval_samples: int | None,
                   max_accuracy_drop: float, space: SearchSpace | None,
                   calibration: Mapping[str, np.ndarray] | None) -> SearchSpace:
    """Check a search request's settings; the space to search (calibration-free without it)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown search strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    for name, value, low in (("budget", budget, 1), ("repeat", repeat, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"search {name} must be an integer >= {low}; got {value!r}")
    if eval_samples is not None and (isinstance(eval_samples, bool)
                                     or not isinstance(eval_samples, int) or eval_samples < 1):
        raise ConfigError(f"eval_samples must be an integer >= 1 or None; got {eval_samples!r}")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not math.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise ConfigError(f"max accuracy drop must be a number >= 0; got {max_accuracy_drop!r}")
    space = space if space is not None else SearchSpace()
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space must be a SearchSpace; got {type(space).__name__}")
    if calibration is None:
        space = space.without_calibration()
        logger.warning("no calibration data: pruning and low rank without teacher-guided "
                       "recovery")
    return space


def _run_candidates(report: SearchReport, proposer: Any, budget: int,
                    prior: Mapping[str, Any], measure: Callable[[Settings, int], Candidate],
                    base_acc: float | None, log: _Log | None, bar: Any) -> None:
    """Propose and measure candidates until the budget (or the space) is spent; each is
    appended to ``report`` and the log as soon as it is measured; Ctrl-C keeps them all."""
    metric = report.metric
    try:
        while len(report.candidates) < budget:
            settings = proposer.next()
            if settings is None:
                logger.warning("the search space has no more new points after %d "
                               "candidates", len(report.candidates))
                break
            cid = len(report.candidates) + 1
            done = prior.get(settings.key())
            if done is not None:
                cand = Candidate.from_dict(done, id=cid, resumed=True)
            else:
                cand = measure(settings, cid)
                if cand.ok:
                    cand = _with_drop(cand, base_acc, metric, report.eval_samples)
                if log:
                    log.append("candidate", cand)
            report.candidates.append(cand)
            bar.update(1)
            best = report.best
            bar.set_postfix_str(f"best {report.speedup(best):.2f}x (id {best.id})")
    except KeyboardInterrupt:
        report.interrupted = True
        logger.warning("search interrupted after %d candidates; reporting what was "
                       "measured", len(report.candidates))
    finally:
        bar.close()


#: A top-1 budget must be worth at least this many evaluation samples (one sample moves the
#: accuracy by 100 / N points): with fewer, the budget is below what the measurement resolves.
SAMPLES_PER_BUDGET = 2


def _enough_samples(feeds: list[dict[str, np.ndarray]], labels: np.ndarray,
                    eval_data: Mapping[str, np.ndarray], labels_key: str, specs: Any,
                    max_drop: float) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """``feeds, labels``, raised to the samples a top-1 budget of ``max_drop`` points needs
    (:data:`SAMPLES_PER_BUDGET` samples' worth); a budget the data cannot resolve is refused."""
    if max_drop <= 0:
        return feeds, labels
    need = math.ceil(100.0 * SAMPLES_PER_BUDGET / max_drop - 1e-9)
    if len(feeds) >= need:
        return feeds, labels
    every, all_labels = _eval_set(eval_data, labels_key, specs, None, split_samples)
    if len(every) < need:
        raise ConfigError(
            f"an accuracy budget of {max_drop:g} top-1 points needs at least {need} evaluation "
            f"samples (one sample moves top-1 by 100/N points; the budget must be worth "
            f"{SAMPLES_PER_BUDGET}); the data has {len(every)}: give more samples or a budget "
            f"of at least {100.0 * SAMPLES_PER_BUDGET / len(every):.2g} points")
    logger.warning("evaluating on %d samples instead of %d: a budget of %g top-1 points needs "
                   "%d (one sample is %.2g points)", need, len(feeds), max_drop, need,
                   100.0 / len(feeds))
    return every[:need], all_labels[:need]


def _with_drop(cand: Candidate, base_acc: float | None, metric: str,
               samples: int | None) -> Candidate:
    """``cand`` with its drop (rounded to 6 decimals) and, for top-1, the drop's approximate
    95 % confidence half-width in points."""
    if metric != "top1":
        return dataclasses.replace(cand, drop=round(float(cand.max_rel_err), 9))
    drop = round(100.0 * (base_acc - cand.accuracy), 6)
    n = max(samples or 1, 1)
    var = (base_acc * (1 - base_acc) + cand.accuracy * (1 - cand.accuracy)) / n
    return dataclasses.replace(cand, drop=drop, drop_ci95=round(196.0 * math.sqrt(var), 3))


def recheck_best(report: SearchReport, model: Any, target: Any, eval_data: Mapping[str, Any],
                 labels_key: str | None, calibration: Mapping[str, np.ndarray] | None,
                 max_tries: int = 3) -> Settings:
    """The settings to write: the best candidate re-checked on *all* of ``eval_data`` (the
    search may have scored fewer samples), else the next fastest within the budget that
    holds there (at most ``max_tries``), else the baseline. ``report.recheck`` says what was
    measured. Top-1 only; without labels the search's own measurement stands."""
    if report.metric != "top1" or report.best.settings.is_baseline:
        report.recheck = {"held": True, "note": "nothing to re-check" if report.metric == "top1"
                          else "scored by output error: the search's measurement stands"}
        return report.best.settings
    onnx_model, _ = read_model(model)
    specs = resolve_input_specs(onnx_model, None)
    feeds, labels = _eval_set(eval_data, labels_key, specs, None, split_samples)
    if len(feeds) <= (report.eval_samples or 0):
        report.recheck = {"held": True, "samples": len(feeds),
                          "note": "the search scored every sample"}
        return report.best.settings
    tgt = parse_target(target)
    workdir = tempdirs.mkdtemp("hwcc-recheck-")
    try:
        def top1(settings: Settings, name: str) -> float:
            passes = [] if settings.is_baseline else candidate_passes(
                settings, calibration, tgt.capabilities)
            art = api.compile(onnx_model, tgt, passes=passes, output_dir=workdir / name,
                              verify=False)
            return top1_accuracy(art, feeds, labels)

        base = top1(Settings(), "base")
        within = sorted((c for c in report.candidates if report.within(c)),
                        key=lambda c: (c.latency_ms, c.drop, c.id))
        tried = []
        for cand in within[:max_tries]:
            acc = top1(cand.settings, f"c{cand.id}")
            drop = round(100.0 * (base - acc), 6)
            tried.append({"id": cand.id, "top1": acc, "drop": drop})
            if drop <= report.max_accuracy_drop + DROP_TOL:
                report.recheck = {"held": True, "samples": len(feeds), "baseline_top1": base,
                                  "chosen": cand.id, "tried": tried}
                return cand.settings
        report.recheck = {"held": False, "samples": len(feeds), "baseline_top1": base,
                          "chosen": 0, "tried": tried}
        logger.warning("no candidate kept the accuracy budget on all %d samples; writing the "
                       "uncompressed model", len(feeds))
        return Settings()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _eval_set(eval_data: Mapping[str, np.ndarray], labels_key: str | None, specs: Any,
              limit: int | None, split_samples: Any
              ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    if not isinstance(eval_data, Mapping):
        raise ConfigError(f"eval_data must be a dict of arrays; got {type(eval_data).__name__}")
    labels = None
    if labels_key is not None:
        if labels_key not in eval_data:
            raise ConfigError(f"the evaluation data has no labels array '{labels_key}' (keys: "
                              f"{sorted(eval_data)}); score by output error with labels=None")
        labels = np.asarray(eval_data[labels_key]).reshape(-1)
    inputs = {k: np.asarray(v) for k, v in eval_data.items() if k != labels_key}
    feeds, _ = split_samples(inputs, specs, what="evaluation data")
    if labels is not None and labels.shape[0] != len(feeds):
        raise ConfigError(f"the evaluation data has {labels.shape[0]} labels for "
                          f"{len(feeds)} samples")
    n = len(feeds) if limit is None else min(limit, len(feeds))
    return feeds[:n], None if labels is None else labels[:n]


def _largest_groups(onnx_model: Any, k: int) -> tuple[list[str], bool]:
    """Names of the ``k`` largest prunable channel groups of the canonicalized model (in
    model order), and whether they are all of them (then a global ratio has nothing left)."""
    if k == 0:
        return [], False

    mod = Canonicalize(CanonicalizeConfig())(load_model(onnx_model).mod)
    prunable = [g for g in analyze(mod) if g.prunable]
    order = sorted(range(len(prunable)), key=lambda i: (-prunable[i].size, i))
    return [prunable[i].name for i in sorted(order[:k])], len(prunable) <= k


def _measure(onnx_model: Any, tgt: Any, settings: Settings, cid: int,
             calibration: Mapping[str, np.ndarray] | None, caps: Any,
             feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None, repeat: int,
             tuning_log: Any, workdir: Path) -> Candidate:
    """Compile, time and score one candidate; compile failures become a failed candidate."""

    out = workdir / f"c{cid}"
    t0 = time.perf_counter()
    try:
        passes = candidate_passes(settings, calibration, caps) if not settings.is_baseline \
            else []
        art = api.compile(onnx_model, tgt, passes=passes, output_dir=out, verify=False,
                          tuning_log=tuning_log)
    except HwccError as err:
        logger.warning("candidate %d (%s) failed: %s", cid, settings.describe(), err)
        return Candidate(id=cid, settings=settings.normalized(), status="failed",
                         error=str(err).splitlines()[0])
    compile_s = time.perf_counter() - t0
    try:
        timing = art.benchmark(feeds[0], repeat=repeat, warmup=5)
        ev = evaluate_artifact(art, feeds, labels, reference_model=onnx_model)
        m = art.manifest
        return Candidate(id=cid, settings=settings.normalized(), status="ok",
                         latency_ms=float(timing["median_ms"]),
                         accuracy=ev.get("top1_accuracy"), agreement=ev.get("top1_agreement"),
                         max_rel_err=float(ev["max_rel_err"]),
                         params=int(m["compressed"]["params"]),
                         weight_bytes=int(m["compressed"]["weight_bytes"]),
                         library_bytes=art.size_bytes, compile_s=round(compile_s, 2))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _progress_bar(total: int, enabled: bool, strategy: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"search ({strategy})", unit="cand", disable=not enabled,
                leave=False)


class _CtrlC:
    """Notes that Ctrl-C was pressed, since TVM turns a KeyboardInterrupt raised inside a
    Python callback of the build into an ordinary error (which would log a false failure)."""

    def __init__(self) -> None:
        self.hit = False
        self.previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True
        raise KeyboardInterrupt


class _Once(logging.Filter):
    """Drops log records containing ``text`` (a warning the search gives once itself)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _Log:
    """The JSON-lines log: one object per measured point, written and flushed at once."""

    def __init__(self, path: Path, ident: dict[str, Any]) -> None:
        self.path = path
        self.ident = ident

    def read(self) -> dict[str, dict[str, Any]]:
        """Candidates measured earlier for the same model/target/metric, by settings key."""
        if not self.path.exists():
            return {}
        found: dict[str, dict[str, Any]] = {}
        skipped = 0
        with self.path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    ok = rec["version"] == LOG_VERSION and rec["kind"] == "candidate"
                    same = all(rec.get(k) == v for k, v in self.ident.items())
                    key = Settings.from_dict(rec["result"]["settings"]).key()
                except (ValueError, KeyError, TypeError, AttributeError):
                    logger.warning("search log %s line %d is unreadable; ignored", self.path, n)
                    continue
                if ok and same:
                    found[key] = rec["result"]
                elif rec.get("kind") == "candidate":
                    skipped += 1
        if skipped:
            logger.info("search log %s: %d candidates of another model, target or metric "
                        "ignored", self.path, skipped)
        return found

    def append(self, kind: str, cand: Candidate) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"version": LOG_VERSION, "kind": kind, **self.ident, "time": time.time(),
               "result": cand.to_dict()}
        with self.path.open("a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()


# -- proposers --------------------------------------------------------------------------------
