"""Ridge least squares for the re-fits of compressed layers: one helper, three users.

:mod:`passes.recover` (teacher-guided recovery after pruning, also used by :mod:`passes.low_rank`
for its last factors) and :mod:`passes.sparsify` (recovery of the surviving weights) re-fit a
layer's weights ``W`` (k inputs × m outputs) so that, on calibration rows ``X``, ``X W`` matches
a target ``Y``. With fewer rows than inputs (one calibration sample, a dense layer that sees one
row per sample) plain least squares is under-determined and ``XᵀX`` is singular, so every fit
here is a ridge pulled towards the current weights ``W₀``::

    W = argmin ‖X W − Y‖² + λ ‖P^½ (W − W₀)‖²   i.e.   (XᵀX + λP) W = XᵀY + λP W₀

with ``λ = strength · mean diag(XᵀX)`` (``mean diag`` floored at 1 when ``XᵀX`` is all zero,
``strength`` at :data:`MIN_STRENGTH`), so the system is always positive definite. ``P`` is the
identity except for *free* rows (a bias) which get :data:`FREE_PENALTY`. Each solve is
Cholesky-checked (:func:`solve_spd`), falling back to an eigendecomposition and then to
``lstsq``. Nothing here raises ``LinAlgError``: non-finite statistics give no solution, and
the fit is dropped.

The problem is given by its normal equations (:class:`Normal`: ``XᵀX``, ``XᵀY``, ``‖Y‖²``), so
callers that never form ``Y`` (sparsify) use it as well; a support ``mask`` (k × m) restricts
each output to some inputs (sparse weights stay zero).

:func:`fit` re-fits a layer (one or more independent blocks, e.g. the groups of a grouped
convolution, sharing one strength) and decides whether to keep the fit:

- with at least :data:`MIN_VALIDATION_SAMPLES` calibration samples, the samples are dealt into
  up to :data:`FOLDS` folds (:func:`folds`; all rows of a sample in one fold). Each candidate
  strength (:data:`STRENGTHS`) is fitted without a fold and scored on it, in turn for every
  fold (or only the first, for costly fits); the lowest summed held-back error wins. The fit
  is kept only if that error is below the held-back error of ``W₀``; it is then solved again
  on all rows. Large strengths pull the fit towards ``W₀``, so a layer where the data cannot
  help is dropped rather than harmed.
- with a single sample, :data:`DEFAULT_STRENGTH` is used and the fit is kept only if it lowers
  the error on the rows it was fitted on.

:func:`Fit.report` is the per-layer entry of the pass reports (samples, rows, features, ridge
and λ, kept or dropped and why); :func:`warn_if_unreliable` logs (once per pass) how many
samples would make the fits reliable (:func:`reliable_samples`: every layer with at least as
many rows as features, and enough samples to hold some back).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Candidate strengths (relative to the mean diagonal of ``XᵀX``) tried on held-back rows.
STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: Strength used when there are too few samples to hold any back.
DEFAULT_STRENGTH = 0.1
#: Floor of every strength, so that ``XᵀX + λP`` is positive definite.
MIN_STRENGTH = 1e-8
#: Relative penalty of free rows (a bias): nearly unpenalized, but never singular.
FREE_PENALTY = 1e-3
#: Samples needed before some are held back for validation.
MIN_VALIDATION_SAMPLES = 2
#: Validation folds (fewer with fewer samples): each holds back about a fifth of the samples.
FOLDS = 5
#: Widest block (inputs per output) cross-validated over every fold; wider blocks, and fits
#: with a support mask (one solve per support), hold back only the first fold: a solve costs
#: O(k³) per candidate strength.
CV_MAX_FEATURES = 512
#: Seed of the held-back samples.
_SEED = 1


@dataclass(frozen=True)
class Normal:
    """Normal equations of a least-squares problem ``X W ≈ Y`` over some rows.

    Attributes
    ----------
    gram
        ``XᵀX``, (k, k).
    cross
        ``XᵀY``, (k, m).
    yy
        ``‖Y‖²``.
    rows
        Number of rows of ``X``.
    """

    gram: np.ndarray
    cross: np.ndarray
    yy: float
    rows: int

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Normal:
        """Normal equations of rows ``x`` (n, k) and targets ``y`` (n, m), in float64."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return cls(x.T @ x, x.T @ y, float(np.sum(y * y)), int(x.shape[0]))

    def __add__(self, other: Normal) -> Normal:
        return Normal(
            self.gram + other.gram, self.cross + other.cross, self.yy + other.yy,
            self.rows + other.rows,
        )  # fmt: skip

    def sq_error(self, w: np.ndarray) -> float:
        """``‖X w − Y‖²`` over these rows (from the normal equations, clipped at 0)."""
        quad = np.einsum("ij,ij->", w, self.gram @ w) - 2.0 * np.einsum("ij,ij->", w, self.cross)
        return max(float(quad) + self.yy, 0.0)

    def lam(self, strength: float) -> float:
        """Absolute λ of a relative ``strength``: ``strength · mean diag(XᵀX)``, floored."""
        k = self.gram.shape[0]
        scale = float(np.trace(self.gram)) / max(k, 1)
        if not math.isfinite(scale) or scale <= 0.0:
            scale = 1.0  # all-zero (or empty) XᵀX: any λ > 0 keeps W₀
        return max(float(strength), MIN_STRENGTH) * scale

    def finite(self) -> bool:
        """Whether every statistic is finite (a NaN / inf in the data makes none solvable)."""
        return bool(
            np.isfinite(self.gram).all() and np.isfinite(self.cross).all()
            and math.isfinite(self.yy)
        )  # fmt: skip


def solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Solve ``a x = b`` for a symmetric positive (semi-)definite ``a``; None if impossible.

    Cholesky certifies ``a`` as numerically positive definite before an LU solve; otherwise an
    eigendecomposition (pseudo-inverse on the eigenvalues that are not negligible), and last
    ``lstsq``. Never raises ``LinAlgError``.
    """
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    try:
        np.linalg.cholesky(a)
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        pass
    try:
        vals, vecs = np.linalg.eigh((a + a.T) / 2)
        tol = max(float(vals.max(initial=0.0)), 0.0) * a.shape[0] * np.finfo(np.float64).eps
        inv = np.where(vals > tol, 1.0 / np.where(vals > tol, vals, 1.0), 0.0)
        return vecs @ (inv[:, None] * (vecs.T @ b))
    except np.linalg.LinAlgError:
        pass
    try:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    except np.linalg.LinAlgError:
        return None


def _solve(
    g: np.ndarray, c: np.ndarray, w0: np.ndarray, pen: np.ndarray, lam: float
) -> np.ndarray | None:
    """``(g + λ diag(pen))⁻¹ (c + λ diag(pen) w0)``."""
    return solve_spd(g + np.diag(lam * pen), c + lam * pen[:, None] * w0)


def ridge(
    normal: Normal,
    w0: np.ndarray,
    strengths: Sequence[float],
    *,
    mask: np.ndarray | None = None,
    free: Sequence[int] = (),
) -> list[np.ndarray | None]:
    """Ridge solutions ``(XᵀX + λP)⁻¹ (XᵀY + λP W₀)``, one per strength; None if unsolvable.

    Parameters
    ----------
    normal
        The problem's normal equations.
    w0
        Current weights (k, m): the pull's centre, and where ``mask`` is False, the result.
    strengths
        λ relative to the mean diagonal of ``XᵀX`` (see :meth:`Normal.lam`).
    mask
        Support of ``W`` (k, m): output ``j`` uses only the inputs where ``mask[:, j]``; outputs
        with the same support are solved together. None: every input.
    free
        Input rows penalized with :data:`FREE_PENALTY` only (a bias row of ones).
    """
    if not normal.finite():
        return [None] * len(strengths)
    lams = [normal.lam(s) for s in strengths]
    pen = np.ones(normal.gram.shape[0])
    pen[list(free)] = FREE_PENALTY
    w0 = np.asarray(w0, dtype=np.float64)
    if mask is None:
        return [_solve(normal.gram, normal.cross, w0, pen, lam) for lam in lams]
    outs: list[np.ndarray | None] = [np.where(mask, w0, 0.0) for _ in lams]
    groups: dict[bytes, list[int]] = {}
    for j in range(mask.shape[1]):
        if mask[:, j].any():
            groups.setdefault(np.packbits(mask[:, j]).tobytes(), []).append(j)
    for cols in groups.values():
        s = np.nonzero(mask[:, cols[0]])[0]
        g, c = normal.gram[np.ix_(s, s)], normal.cross[np.ix_(s, cols)]
        sols = [_solve(g, c, w0[np.ix_(s, cols)], pen[s], lam) for lam in lams]
        for i, sol in enumerate(sols):
            if sol is None or outs[i] is None:
                outs[i] = None
            else:
                outs[i][np.ix_(s, cols)] = sol
    return outs


def folds(sample_of_row: np.ndarray, n_samples: int) -> np.ndarray | None:
    """Validation fold of each row: the samples, seeded-shuffled, dealt into
    ``min(FOLDS, n_samples)`` folds (all rows of a sample in one fold); None with fewer than
    :data:`MIN_VALIDATION_SAMPLES` samples or when a fold would be empty."""
    if n_samples < MIN_VALIDATION_SAMPLES:
        return None
    k = min(FOLDS, n_samples)
    fold_of_sample = np.empty(n_samples, dtype=np.int64)
    fold_of_sample[np.random.default_rng(_SEED).permutation(n_samples)] = np.arange(n_samples) % k
    fold = fold_of_sample[sample_of_row]
    if len(np.unique(fold)) < k:
        return None
    return fold


def normals(x: np.ndarray, y: np.ndarray, fold: np.ndarray | None) -> list[Normal]:
    """Normal equations of ``x w ≈ y`` per fold (one for all rows when ``fold`` is None)."""
    if fold is None:
        return [Normal.of(x, y)]
    return [Normal.of(x[fold == f], y[fold == f]) for f in range(int(fold.max()) + 1)]


def sample_ids(n_samples: int, rows: int) -> np.ndarray:
    """Sample index of each of ``rows`` rows laid out sample by sample (equal rows each)."""
    return np.repeat(np.arange(n_samples), rows // max(n_samples, 1))


@dataclass(frozen=True)
class Fit:
    """What :func:`fit` returns.

    Attributes
    ----------
    weights
        The re-fitted weights of each block, or the ``W₀`` when the fit was dropped.
    kept
        Whether the re-fit replaced ``W₀``.
    reason
        Why it was kept or dropped (one line).
    strength, lam
        The chosen relative strength and its absolute λ on all rows (mean over blocks); None
        when nothing was solved.
    chosen_by
        How the strength was chosen: ``"held-back samples (F folds)"``, ``"given"`` or
        ``"default (too few samples to hold back)"``.
    samples, rows, held_back_rows, features
        Calibration samples; least-squares rows; rows whose held-back error decided (0 when
        none were held back); inputs per output (the widest block or mask column).
    error_before, error_after
        ``‖X W − Y‖² / ‖Y‖²`` on all rows with ``W₀`` and with ``weights``.
    """

    weights: list[np.ndarray]
    kept: bool
    reason: str
    strength: float | None
    lam: float | None
    chosen_by: str
    samples: int
    rows: int
    held_back_rows: int
    features: int
    error_before: float
    error_after: float

    def report(self) -> dict:
        """The per-layer entry of a pass report (JSON-ready)."""
        return {
            "error_before": self.error_before,
            "error_after": self.error_after,
            "samples": self.samples,
            "rows": self.rows,
            "held_back_rows": self.held_back_rows,
            "features": self.features,
            "ridge": self.strength,
            "lambda": self.lam,
            "ridge_chosen_by": self.chosen_by,
            "kept": self.kept,
            "reason": self.reason,
        }


def _rel(err: float, yy: float) -> str:
    return f"{err / yy:.4g}" if yy > 0 else f"{err:.4g}"


def _total(parts: Sequence[Normal]) -> Normal:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def fit(
    parts: Sequence[Sequence[Normal]],
    w0: Sequence[np.ndarray],
    *,
    samples: int,
    strength: float | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    free: Sequence[int] = (),
    held_folds: int | None = None,
) -> Fit:
    """Validated ridge re-fit of a layer; never raises ``LinAlgError``.

    A layer is one or more independent *blocks* (the groups of a grouped convolution) that
    share the strength and the keep / drop decision.

    Parameters
    ----------
    parts
        ``parts[f][b]``: normal equations of block ``b`` over the rows of validation fold
        ``f`` (see :func:`folds`, :func:`normals`); a single fold means nothing is held back.
    w0
        Per block, the current weights (k, m).
    samples
        Calibration samples behind the rows (for the report).
    strength
        Fixed relative strength; None (default) picks the one of :data:`STRENGTHS` with the
        lowest held-back error, or :data:`DEFAULT_STRENGTH` with a single fold.
    masks, free
        Per block support mask, and the free rows of every block (see :func:`ridge`).
    held_folds
        Hold back the first ``held_folds`` folds in turn; default every fold (cross-validation)
        when the blocks are at most :data:`CV_MAX_FEATURES` wide and have no mask, else only
        the first (a single split: the solves are costly).
    """
    w0 = [np.asarray(w, dtype=np.float64) for w in w0]
    masks = list(masks) if masks is not None else [None] * len(w0)
    n_folds, n_blocks = len(parts), len(w0)
    full = [_total([parts[f][b] for f in range(n_folds)]) for b in range(n_blocks)]
    features = max(
        int(m.sum(axis=0).max(initial=0)) if m is not None else w.shape[0]
        for w, m in zip(w0, masks)
    )
    finite = all(n.finite() for n in full)
    yy = sum(n.yy for n in full)
    scale = yy if yy > 0 and math.isfinite(yy) else 1.0

    def err(normals: Sequence[Normal], ws: Sequence[np.ndarray]) -> float:
        return sum(n.sq_error(w) for n, w in zip(normals, ws))

    def solve(normals: Sequence[Normal], cands: Sequence[float]) -> list[list | None]:
        """Per strength, the solutions of all blocks (None where one block had none)."""
        per_block = [ridge(n, w, cands, mask=m, free=free) for n, w, m in zip(normals, w0, masks)]
        out = []
        for i in range(len(cands)):
            ws = [sols[i] for sols in per_block]
            out.append(None if any(w is None for w in ws) else ws)
        return out

    e0 = err(full, w0) / scale if finite else float("nan")
    if held_folds is None:
        cheap = features <= CV_MAX_FEATURES and all(m is None for m in masks)
        held_folds = n_folds if cheap else 1
    held = range(min(held_folds, n_folds))
    held = held if n_folds > 1 else range(0)
    held_rows = sum(parts[f][0].rows for f in held)

    def result(ws: list[np.ndarray] | None, reason: str, s: float | None, how: str) -> Fit:
        lam = None if s is None or not finite else float(np.mean([n.lam(s) for n in full]))
        return Fit(
            ws if ws is not None else w0, ws is not None, reason, s, lam, how, samples,
            full[0].rows, held_rows, features, e0,
            err(full, ws) / scale if ws is not None else e0,
        )  # fmt: skip

    if held:
        plural = "s" if len(held) > 1 else ""
        how = "given" if strength is not None else f"held-back samples ({len(held)} fold{plural})"
        cands = (strength,) if strength is not None else STRENGTHS
    else:
        how = "given" if strength is not None else "default (too few samples to hold back)"
        cands = (strength if strength is not None else DEFAULT_STRENGTH,)
    if not finite:
        return result(None, "dropped: non-finite calibration values", None, how)
    s = cands[0]
    if held:
        errs = np.zeros(len(cands))
        before = held_yy = 0.0
        for f in held:
            train = [_total([parts[g][b] for g in range(n_folds) if g != f])
                     for b in range(n_blocks)]  # fmt: skip
            errs += [np.inf if ws is None else err(parts[f], ws) for ws in solve(train, cands)]
            before += err(parts[f], w0)
            held_yy += sum(n.yy for n in parts[f])
        best = int(np.argmin(errs))
        s, after = cands[best], float(errs[best])
        change = f"held-back error {_rel(before, held_yy)} -> {_rel(after, held_yy)}"
        if not after < before:
            return result(None, f"dropped: no lower {change}", s, how)
        reason = f"kept: {change}"
    ws = solve(full, (s,))[0]
    if ws is None:
        return result(None, "dropped: no solution (solver failed)", s, how)
    if not held:
        before, after = err(full, w0), err(full, ws)
        change = f"training error {_rel(before, yy)} -> {_rel(after, yy)}"
        if not after < before:
            return result(None, f"dropped: no lower {change} (no samples to hold back)", s, how)
        reason = f"kept: {change} (no samples to hold back)"
    return result(ws, reason, s, how)


def reliable_samples(layers: Mapping[str, Mapping]) -> tuple[int, str | None]:
    """Samples that would make every re-fit reliable, and the layer that needs the most.

    ``layers`` maps layer names to :meth:`Fit.report` entries (``samples``, ``rows``,
    ``features``). Reliable: at least as many rows as features in every layer (rows per sample
    from each entry), and :data:`MIN_VALIDATION_SAMPLES` to hold some back.
    """
    needs: dict[str, int] = {}
    for name, e in layers.items():
        per_sample = e["rows"] / max(e["samples"], 1)
        rows_needed = math.ceil(e["features"] / per_sample) if per_sample > 0 else e["samples"] + 1
        needs[name] = max(MIN_VALIDATION_SAMPLES, rows_needed)
    if not needs:
        return MIN_VALIDATION_SAMPLES, None
    worst = max(needs, key=lambda n: (needs[n], layers[n]["features"] / max(layers[n]["rows"], 1)))
    return needs[worst], worst


def warn_if_unreliable(log: logging.Logger, what: str, layers: Mapping[str, Mapping]) -> int | None:
    """Warn (once: call it once per pass) when the calibration samples are too few for a
    reliable re-fit (see :func:`reliable_samples`); return the samples needed, or None."""
    if not layers:
        return None
    need, worst = reliable_samples(layers)
    e = layers[worst]
    samples = e["samples"]
    if samples >= need:
        return None
    log.warning(
        "%s had %d calibration sample%s (layer '%s': %d row%s for %d features); give at least "
        "%d samples for a reliable re-fit", what, samples, "" if samples == 1 else "s", worst,
        e["rows"], "" if e["rows"] == 1 else "s", e["features"], need,
    )  # fmt: skip
    return need
