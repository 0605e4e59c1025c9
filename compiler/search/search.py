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
import itertools
import json
import logging
import math
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler import api
from compiler.data import split_samples
from compiler.errors import CompileError, ConfigError, HwccError, TargetError
from compiler.evaluate import evaluate_artifact
from compiler.frontend import load_model, read_model, resolve_input_specs
from compiler.pipeline import PRUNE_METHODS, build_passes
from passes import Canonicalize, CanonicalizeConfig
from passes.channel_groups import analyze
from targets import parse_target

logger = logging.getLogger(__name__)

STRATEGIES = ("grid", "random", "bayes")
QUANTIZE_MODES = (None, "fp16", "int8")
LOG_VERSION = 1
_CALIB_METHODS = ("activation", "apoz", "reconstruction")  # prune methods that need --calib


# -- settings and space -----------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """One point of the search space (what a candidate compiles with).

    Attributes
    ----------
    prune
        Global fraction of channels to remove (0: none).
    prune_method
        Channel importance (a key of :data:`compiler.pipeline.PRUNE_METHODS`), or None when
        nothing is pruned.
    layer_ratios
        ``(group, ratio)`` pairs overriding ``prune`` for those channel groups, sorted by name.
    low_rank
        Kept singular-value energy of the low-rank factorization, or None for none.
    quantize
        ``None``, ``"fp16"`` or ``"int8"``.
    """

    prune: float = 0.0
    prune_method: str | None = None
    layer_ratios: tuple[tuple[str, float], ...] = ()
    low_rank: float | None = None
    quantize: str | None = None

    def normalized(self) -> Settings:
        """The same compression with irrelevant fields cleared (so equal settings compare
        equal): no method without pruning, per-group ratios kept only when some is nonzero."""
        ratios = tuple(sorted((str(g), float(r)) for g, r in self.layer_ratios))
        prunes = self.prune > 0 or any(r > 0 for _, r in ratios)
        return Settings(prune=float(self.prune),
                        prune_method=(self.prune_method or "l1") if prunes else None,
                        layer_ratios=ratios if prunes else (),
                        low_rank=None if self.low_rank is None else float(self.low_rank),
                        quantize=self.quantize)

    @property
    def is_baseline(self) -> bool:
        """Whether nothing is compressed."""
        s = self.normalized()
        return s.prune_method is None and s.low_rank is None and s.quantize is None

    def key(self) -> str:
        """Canonical JSON text: the identity of a candidate in the log."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        s = self.normalized()
        return {"prune": s.prune, "prune_method": s.prune_method,
                "layer_ratios": dict(s.layer_ratios), "low_rank": s.low_rank,
                "quantize": s.quantize}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        return cls(prune=float(d.get("prune") or 0.0), prune_method=d.get("prune_method"),
                   layer_ratios=tuple(sorted((d.get("layer_ratios") or {}).items())),
                   low_rank=d.get("low_rank"), quantize=d.get("quantize")).normalized()

    def describe(self) -> str:
        """Short human text, e.g. ``prune l1 [lv19=0.5 rest=0.25], low-rank 0.9, int8``."""
        s = self.normalized()
        parts = []
        if s.prune_method is not None and s.layer_ratios:
            groups = " ".join(f"{g}={r:g}" for g, r in s.layer_ratios)
            rest = f" rest={s.prune:g}" if s.prune > 0 else ""
            parts.append(f"prune {s.prune_method} [{groups}{rest}]")
        elif s.prune_method is not None:
            parts.append(f"prune {s.prune:g} {s.prune_method}")
        if s.low_rank is not None:
            parts.append(f"low-rank {s.low_rank:g}")
        if s.quantize is not None:
            parts.append(s.quantize)
        return ", ".join(parts) or "none (baseline)"


@dataclass(frozen=True)
class SearchSpace:
    """The settings a search may choose from.

    Attributes
    ----------
    prune_ratios
        Global (and per-group) prune ratios, each in [0, 1). Default ``(0.0, 0.25, 0.5)``.
    prune_methods
        Channel importances (keys of :data:`compiler.pipeline.PRUNE_METHODS`). Default
        ``("l1",)``.
    low_rank_energies
        Kept energies in (0, 1], None meaning no factorization. Default ``(None, 0.95, 0.9)``.
    quantize
        Modes among None, ``"fp16"``, ``"int8"``. Default ``(None, "fp16", "int8")``.
    per_group
        Random and Bayesian search choose a ratio from ``prune_ratios`` for each of the
        ``max_groups`` largest prunable channel groups (grid uses global settings only).
        Default True.
    max_groups
        How many groups get their own ratio. Default 4.
    """

    prune_ratios: tuple[float, ...] = (0.0, 0.25, 0.5)
    prune_methods: tuple[str, ...] = ("l1",)
    low_rank_energies: tuple[float | None, ...] = (None, 0.95, 0.9)
    quantize: tuple[str | None, ...] = (None, "fp16", "int8")
    per_group: bool = True
    max_groups: int = 4

    def __post_init__(self) -> None:

        for name in ("prune_ratios", "prune_methods", "low_rank_energies", "quantize"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
                raise ConfigError(f"SearchSpace.{name} must be a non-empty tuple; got {value!r}")
            object.__setattr__(self, name, tuple(dict.fromkeys(value)))
        for r in self.prune_ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ConfigError(f"search prune ratios must be numbers in [0, 1); got {r!r}")
        for m in self.prune_methods:
            if m not in PRUNE_METHODS:
                raise ConfigError(f"unknown prune method '{m}' in the search space; known: "
                                  f"{', '.join(sorted(PRUNE_METHODS))}")
        for e in self.low_rank_energies:
            if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float))
                                  or not 0.0 < e <= 1.0):
                raise ConfigError(f"search low-rank energies must be in (0, 1] or None; got {e!r}")
        for q in self.quantize:
            if q not in QUANTIZE_MODES:
                raise ConfigError(f"unknown quantize mode {q!r} in the search space; known: "
                                  "None, 'fp16', 'int8'")
        if isinstance(self.max_groups, bool) or not isinstance(self.max_groups, int) \
                or self.max_groups < 0:
            raise ConfigError(f"SearchSpace.max_groups must be an integer >= 0; "
                              f"got {self.max_groups!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def without_calibration(self) -> SearchSpace:
        """This space less what needs calibration data (int8, activation-based pruning)."""
        quant = tuple(q for q in self.quantize if q != "int8") or (None,)
        methods = tuple(m for m in self.prune_methods if m not in _CALIB_METHODS) or ("l1",)
        if quant != self.quantize or methods != self.prune_methods:
            logger.warning("no calibration data: leaving int8 and activation-based pruning "
                           "out of the search space")
        return dataclasses.replace(self, quantize=quant, prune_methods=methods)


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
@dataclass(frozen=True)
class Candidate:
    """One measured point (the baseline has id 0 and no compression).

    ``accuracy`` is top-1 on the labels (a fraction) or None without labels; ``max_rel_err`` is
    the worst relative output error against the float ONNX model; ``drop`` is the baseline's
    top-1 minus this one's, in points (without labels: ``max_rel_err``).
    """

    id: int
    settings: Settings
    status: str  # "ok" or "failed"
    error: str | None = None
    latency_ms: float | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_rel_err: float | None = None
    drop: float | None = None
    params: int | None = None
    weight_bytes: int | None = None
    library_bytes: int | None = None
    compile_s: float | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["settings"] = self.settings.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], id: int, resumed: bool) -> Candidate:
        names = {f.name for f in dataclasses.fields(cls)} - {"id", "settings", "resumed"}
        return cls(id=id, settings=Settings.from_dict(d["settings"]), resumed=resumed,
                   **{k: d.get(k) for k in names if k in d})


def dominates(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` is at least as fast and as accurate as ``b``, and better in one."""
    return (a.latency_ms <= b.latency_ms and a.drop <= b.drop
            and (a.latency_ms < b.latency_ms or a.drop < b.drop))


def pareto_front(points: Sequence[Candidate]) -> list[Candidate]:
    """Measured points no other point dominates, fastest first."""
    ok = [p for p in points if p.ok]
    front = [p for p in ok if not any(dominates(q, p) for q in ok if q is not p)]
    return sorted(front, key=lambda p: (p.latency_ms, p.drop, p.id))


@dataclass
class SearchReport:
    """What a search measured; :meth:`to_dict` has stable keys."""

    model: str
    target: str
    strategy: str
    metric: str  # "top1" (drop in points) or "max_rel_err"
    max_accuracy_drop: float
    baseline: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    space: SearchSpace = field(default_factory=SearchSpace)
    interrupted: bool = False
    seconds: float = 0.0
    log_path: str | None = None

    @property
    def pareto(self) -> list[Candidate]:
        """The Pareto front (latency vs drop) over the baseline and every measured candidate."""
        return pareto_front([self.baseline, *self.candidates])

    @property
    def best(self) -> Candidate:
        """The fastest point within the accuracy budget (the baseline when none is faster)."""
        within = [c for c in [self.baseline, *self.candidates]
                  if c.ok and c.drop <= self.max_accuracy_drop]
        return min(within, key=lambda c: (c.latency_ms, c.drop, c.id))

    def speedup(self, c: Candidate) -> float | None:
        if not c.ok or not c.latency_ms:
            return None
        return self.baseline.latency_ms / c.latency_ms

    def row(self, c: Candidate, front_ids: set[int]) -> dict[str, Any]:
        d = c.to_dict()
        d["speedup"] = self.speedup(c)
        d["on_pareto"] = c.id in front_ids
        d["within_budget"] = c.ok and c.drop <= self.max_accuracy_drop
        return d

    def to_dict(self) -> dict[str, Any]:
        front = self.pareto
        ids = {c.id for c in front}
        return {
            "model": self.model,
            "target": self.target,
            "strategy": self.strategy,
            "metric": self.metric,
            "max_accuracy_drop": self.max_accuracy_drop,
            "space": self.space.to_dict(),
            "baseline": self.row(self.baseline, ids),
            "candidates": [self.row(c, ids) for c in self.candidates],
            "pareto": [self.row(c, ids) for c in front],
            "best": self.row(self.best, ids),
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 1),
            "log": self.log_path,
        }


def format_table(report: SearchReport) -> str:
    """A text table of every point: ``*`` marks the Pareto front, ``>`` the winner."""
    d = report.to_dict()
    top1 = report.metric == "top1"
    quality = "top-1 %" if top1 else "rel err"
    drop = "drop pts" if top1 else "max err"
    rows = [d["baseline"], *d["candidates"]]
    best_id = d["best"]["id"]
    texts = [Settings.from_dict(r["settings"]).describe() for r in rows]
    w = max(len("settings"), *(len(t) for t in texts))
    head = (f"     {'id':>3}  {'settings':<{w}}  {'ms':>8}  {'speed-up':>8}  {quality:>8}  "
            f"{drop:>8}  {'params':>8}  note")
    lines = [head]
    for r, text in zip(rows, texts):
        mark = (">" if r["id"] == best_id else " ") + ("*" if r["on_pareto"] else " ")
        if r["status"] != "ok":
            lines.append(f"  {mark} {r['id']:>3}  {text:<{w}}  failed: {r['error']}")
            continue
        q = f"{100 * r['accuracy']:.2f}" if top1 else f"{r['max_rel_err']:.2e}"
        dr = f"{r['drop']:+.2f}" if top1 else f"{r['drop']:.2e}"
        note = "resumed" if r["resumed"] else ""
        if not r["within_budget"]:
            note = (note + ", " if note else "") + "over budget"
        lines.append(f"  {mark} {r['id']:>3}  {text:<{w}}  {r['latency_ms']:>8.4f}  "
                     f"{r['speedup']:>7.2f}x  {q:>8}  {dr:>8}  {r['params']:>8,}  {note}")
    return "\n".join(lines)


# -- the search ---------------------------------------------------------------------------
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

    tgt = parse_target(target)
    if tgt.kind != "llvm" or not tgt.runs_on_this_machine():
        raise TargetError(f"search measures latency on the target itself; '{tgt}' does not run "
                          "on this machine, and measuring on a remote device is not supported "
                          "yet (search for 'host' or a target of this machine's CPU)")

    onnx_model, source = read_model(model)
    specs = resolve_input_specs(onnx_model, None)
    feeds, labels = _eval_set(eval_data, labels_key, specs, eval_samples, split_samples)
    metric = "top1" if labels is not None else "max_rel_err"
    groups, covers_all = _largest_groups(onnx_model, space.max_groups) if space.per_group \
        else ([], False)
    caps = tgt.capabilities
    ident = {"model_sha256": hashlib.sha256(onnx_model.SerializeToString()).hexdigest(),
             "target": str(tgt), "metric": metric, "eval_samples": len(feeds)}
    log = _Log(Path(log_path), ident) if log_path is not None else None
    prior = log.read() if log else {}
    if prior:
        logger.info("resuming: %d candidates already measured in %s", len(prior), log_path)

    workdir = Path(tempfile.mkdtemp(prefix="hwcc-search-"))
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
                              space=space, log_path=str(log_path) if log_path else None)
        proposer = _PROPOSERS[strategy](space, groups, budget, seed, report,
                                        global_ratio=not covers_all)
        bar = _progress_bar(budget, progress, strategy)
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
                        drop = (100.0 * (base_acc - cand.accuracy) if metric == "top1"
                                else cand.max_rel_err)
                        cand = dataclasses.replace(cand, drop=drop)
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
    finally:
        ctrl_c.restore()
        logging.getLogger("compiler.pipeline").removeFilter(quiet)
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    return report


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
class _Grid:
    """The product of the global settings, in order, without the baseline."""

    def __init__(self, space: SearchSpace, groups: list[str], budget: int, seed: int,
                 report: SearchReport, global_ratio: bool = True) -> None:
        points = [Settings(prune=p, prune_method=m, low_rank=e, quantize=q).normalized()
                  for p, m, e, q in itertools.product(space.prune_ratios, space.prune_methods,
                                                      space.low_rank_energies, space.quantize)]
        self.points = [s for s in dict.fromkeys(points) if not s.is_baseline]
        if len(self.points) > budget:
            logger.warning("the grid has %d points; measuring the first %d (raise the budget "
                           "for all)", len(self.points), budget)
        self.i = 0

    def next(self) -> Settings | None:
        if self.i >= len(self.points):
            return None
        self.i += 1
        return self.points[self.i - 1]


class _Random:
    """Seeded draws (per-group prune ratios for the largest groups), no repeats."""

    def __init__(self, space: SearchSpace, groups: list[str], budget: int, seed: int,
                 report: SearchReport, global_ratio: bool = True) -> None:
        self.space = space
        self.groups = groups
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self.global_ratio = global_ratio  # False when the per-group ratios cover every group

    def draw(self) -> Settings:
        sp, rng = self.space, self.rng

        def pick(options: tuple[Any, ...]) -> Any:
            return options[int(rng.integers(len(options)))]

        prune = float(pick(sp.prune_ratios)) if self.global_ratio or not self.groups else 0.0
        ratios = tuple((g, float(pick(sp.prune_ratios))) for g in self.groups)
        return Settings(prune=prune, prune_method=pick(sp.prune_methods), layer_ratios=ratios,
                        low_rank=pick(sp.low_rank_energies), quantize=pick(sp.quantize)
                        ).normalized()

    def fresh(self, tries: int = 200) -> Settings | None:
        """A draw not proposed before and not the baseline (None when none turns up)."""
        for _ in range(tries):
            s = self.draw()
            if not s.is_baseline and s.key() not in self.seen:
                return s
        return None

    def next(self) -> Settings | None:
        s = self.fresh()
        if s is not None:
            self.seen.add(s.key())
        return s


class _Bayes(_Random):
    """Random start, then a Gaussian process and expected improvement over a pool of draws."""

    POOL = 256
    PENALTY = 2.0  # objective units per budget-width of accuracy drop over the budget

    def __init__(self, space: SearchSpace, groups: list[str], budget: int, seed: int,
                 report: SearchReport, global_ratio: bool = True) -> None:
        super().__init__(space, groups, budget, seed, report, global_ratio)
        self.report = report
        self.n_init = min(budget, max(2, math.ceil(budget / 3)))
        self.quant = list(space.quantize)
        self.methods = list(space.prune_methods)

    def encode(self, s: Settings) -> np.ndarray:
        ratios = dict(s.layer_ratios)
        q = [1.0 if s.quantize == m else 0.0 for m in self.quant]
        meth = [1.0 if s.prune_method == m else 0.0 for m in self.methods] \
            if len(self.methods) > 1 else []
        return np.array([s.prune, *(ratios.get(g, s.prune) for g in self.groups),
                         1.0 - (s.low_rank if s.low_rank is not None else 1.0), *q, *meth])

    def objective(self, c: Candidate, worst: float) -> float:
        rep = self.report
        if not c.ok:
            return worst + 1.0
        scale = rep.max_accuracy_drop or (1.0 if rep.metric == "top1" else 1e-3)
        over = max(0.0, c.drop - rep.max_accuracy_drop) / scale
        return math.log(c.latency_ms / rep.baseline.latency_ms) + self.PENALTY * over

    def next(self) -> Settings | None:
        done = self.report.candidates
        if len(done) < self.n_init:
            return super().next()
        pool = list({s.key(): s for s in (self.fresh() for _ in range(self.POOL)) if s}.values())
        if not pool:
            return None
        ok_y = [self.objective(c, 0.0) for c in done if c.ok]
        worst = max(ok_y) if ok_y else 0.0
        x = np.stack([self.encode(c.settings) for c in done])
        y = np.array([self.objective(c, worst) for c in done])
        xc = np.stack([self.encode(s) for s in pool])
        ei = expected_improvement(x, y, xc)
        choice = pool[int(np.argmax(ei))]
        self.seen.add(choice.key())
        return choice


def expected_improvement(x: np.ndarray, y: np.ndarray, xc: np.ndarray,
                         xi: float = 0.01) -> np.ndarray:
    """Expected improvement (minimisation) at ``xc`` of a GP fitted to ``(x, y)``.

    RBF kernel on features scaled to [0, 1]; the length scale is the best of a small grid by
    log marginal likelihood; targets standardised; a fixed noise term for timing noise.
    """
    lo = np.minimum(x.min(0), xc.min(0))
    span = np.maximum(x.max(0), xc.max(0)) - lo
    span[span == 0] = 1.0
    x, xc = (x - lo) / span, (xc - lo) / span
    mu_y, sd_y = float(y.mean()), float(y.std()) or 1.0
    t = (y - mu_y) / sd_y
    noise = 1e-2

    def kern(a: np.ndarray, b: np.ndarray, ls: float) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-0.5 * d2 / ls**2)

    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    for ls in (0.1, 0.2, 0.4, 0.8, 1.6):
        k = kern(x, x, ls) + noise * np.eye(len(x))
        chol = np.linalg.cholesky(k)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, t))
        lml = -0.5 * t @ alpha - np.log(np.diag(chol)).sum()
        if best is None or lml > best[0]:
            best = (lml, ls, chol, alpha)
    _, ls, chol, alpha = best
    ks = kern(xc, x, ls)
    mean = ks @ alpha
    v = np.linalg.solve(chol, ks.T)
    sd = np.sqrt(np.maximum(1.0 - (v**2).sum(0), 1e-12))
    imp = t.min() - mean - xi
    z = imp / sd
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in z]))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return imp * cdf + sd * pdf


_PROPOSERS = {"grid": _Grid, "random": _Random, "bayes": _Bayes}
