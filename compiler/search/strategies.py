"""How the search proposes its next candidate: ``grid``, ``random`` and ``bayes`` (a Gaussian
process over the encoded settings, expected improvement), each a class with ``next()``."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import numpy as np

from .space import Candidate, SearchReport, SearchSpace, Settings

logger = logging.getLogger(__name__)


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
