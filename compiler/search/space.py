"""The search's data: a point of the space (:class:`Settings`), the space itself
(:class:`SearchSpace`), a measured :class:`Candidate`, the Pareto front and the
:class:`SearchReport` with its table."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import ConfigError
from compiler.pipeline import PRUNE_METHODS

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

    def for_capabilities(self, caps: Any) -> tuple[SearchSpace, list[dict[str, str]]]:
        """This space less the settings the target cannot run fast, and why each went."""
        left: list[dict[str, str]] = []
        quant = self.quantize
        if "fp16" in quant and not caps.fp16_arith:
            quant = tuple(q for q in quant if q != "fp16") or (None,)
            left.append({"setting": "quantize=fp16", "reason": "the target has no fp16 "
                         "arithmetic: fp16 weights would be converted to fp32 in every "
                         "operation and run slower than fp32"})
        return dataclasses.replace(self, quantize=quant), left

    def without_calibration(self) -> SearchSpace:
        """This space less what needs calibration data (int8, activation-based pruning)."""
        quant = tuple(q for q in self.quantize if q != "int8") or (None,)
        methods = tuple(m for m in self.prune_methods if m not in _CALIB_METHODS) or ("l1",)
        if quant != self.quantize or methods != self.prune_methods:
            logger.warning("no calibration data: leaving int8 and activation-based pruning "
                           "out of the search space")
        return dataclasses.replace(self, quantize=quant, prune_methods=methods)


#: Tolerance of the budget comparison (drops are rounded to 6 decimals when measured).
DROP_TOL = 1e-6


@dataclass(frozen=True)
class Candidate:
    """One measured point (the baseline has id 0 and no compression).

    ``accuracy`` is top-1 on the labels (a fraction) or None without labels; ``max_rel_err`` is
    the worst relative output error against the float ONNX model; ``drop`` is the baseline's
    top-1 minus this one's, in points (without labels: ``max_rel_err``); ``drop_ci95`` the
    half-width of its approximate 95 % confidence interval in points (normal approximation,
    treating the two accuracies as independent: conservative for the paired samples).
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
    drop_ci95: float | None = None
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
    eval_samples: int | None = None
    recheck: dict[str, Any] | None = None
    left_out: list[dict[str, str]] = field(default_factory=list)

    @property
    def pareto(self) -> list[Candidate]:
        """The Pareto front (latency vs drop) over the baseline and every measured candidate."""
        return pareto_front([self.baseline, *self.candidates])

    @property
    def best(self) -> Candidate:
        """The fastest point within the accuracy budget (the baseline when none is faster)."""
        within = [c for c in [self.baseline, *self.candidates] if self.within(c)]
        return min(within, key=lambda c: (c.latency_ms, c.drop, c.id))

    def within(self, c: Candidate) -> bool:
        """Whether ``c`` was measured and its drop fits the budget (up to :data:`DROP_TOL`,
        so that a drop exactly at the budget is in whatever the float rounding)."""
        return c.ok and c.drop is not None and c.drop <= self.max_accuracy_drop + DROP_TOL

    def speedup(self, c: Candidate) -> float | None:
        if not c.ok or not c.latency_ms:
            return None
        return self.baseline.latency_ms / c.latency_ms

    def row(self, c: Candidate, front_ids: set[int]) -> dict[str, Any]:
        d = c.to_dict()
        d["speedup"] = self.speedup(c)
        d["on_pareto"] = c.id in front_ids
        d["within_budget"] = self.within(c)
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
            "eval_samples": self.eval_samples,
            "recheck": self.recheck,
            "left_out": self.left_out,
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
            f"{drop:>12}  {'params':>8}  note")
    lines = [head]
    for r, text in zip(rows, texts):
        mark = (">" if r["id"] == best_id else " ") + ("*" if r["on_pareto"] else " ")
        if r["status"] != "ok":
            lines.append(f"  {mark} {r['id']:>3}  {text:<{w}}  failed: {r['error']}")
            continue
        q = f"{100 * r['accuracy']:.2f}" if top1 else f"{r['max_rel_err']:.2e}"
        dr = f"{r['drop']:+.2f}" if top1 else f"{r['drop']:.2e}"
        if top1 and r.get("drop_ci95") is not None:
            dr += f"±{r['drop_ci95']:.1f}"
        note = "resumed" if r["resumed"] else ""
        if not r["within_budget"]:
            note = (note + ", " if note else "") + "over budget"
        lines.append(f"  {mark} {r['id']:>3}  {text:<{w}}  {r['latency_ms']:>8.4f}  "
                     f"{r['speedup']:>7.2f}x  {q:>8}  {dr:>12}  {r['params']:>8,}  {note}")
    return "\n".join(lines)


# -- the search ---------------------------------------------------------------------------
