"""Recovery that cannot fail on small data (issue #24).

With fewer calibration rows than features a least-squares re-fit is under-determined; every
re-fit (recover, low rank, sparsify) is now a ridge of :mod:`passes._lstsq` that cannot raise
``LinAlgError``, picks its strength on held-back samples when there are some, drops a fit that
does not help, and says so per layer in the report.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.cli.main import main
from compiler.pipeline import build_passes, run_passes
from examples import EXAMPLES_DIR, example_model
from passes import LowRank, LowRankConfig, Sparsify, SparsifyConfig, _lstsq
from passes.calibration import run
from passes.sparsify import read_report as sparsify_report
from tests.models import ZOO
from tests.passes.prune_helpers import (
    apply,
    imported,
    onnx_reference,
    stacked_inputs,
    weights_by_binding,
    zoo,
)

EXAMPLES = ("digits_cnn", "mnist_cnn")
MODELS = (*EXAMPLES, *ZOO)
SAMPLES = (1, 2, 8)


# --------------------------------------------------------------------------------------------
# The shared solver


def _problem(rows: int, k: int, m: int, noise: float, seed: int = 0):
    """Rows ``x`` (from 4 samples' worth of ids), targets ``x w + noise``, and ``w``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k))
    w = rng.standard_normal((k, m))
    return x, x @ w + noise * rng.standard_normal((rows, m)), w


def test_fewer_rows_than_features_solves_and_lowers_the_training_error() -> None:
    """One row for 288 features (singular XᵀX): a solution, closer to the targets than W₀."""
    x, y, _ = _problem(1, 288, 16, 0.0)
    w0 = np.zeros((288, 16))
    fit = _lstsq.fit([[_lstsq.Normal.of(x, y)]], [w0], samples=1)
    assert fit.kept and fit.error_after < 0.5 * fit.error_before
    assert fit.held_back_rows == 0 and fit.chosen_by.startswith("default")
    assert fit.strength == _lstsq.DEFAULT_STRENGTH and fit.lam > 0


def test_all_zero_inputs_keep_the_weights() -> None:
    """XᵀX == 0 (dead inputs): the λ floor still solves; nothing to gain, so the fit is
    dropped and W₀ comes back unchanged."""
    x = np.zeros((10, 8))
    y = np.ones((10, 3))
    w0 = np.arange(24, dtype=np.float64).reshape(8, 3)
    fit = _lstsq.fit([[_lstsq.Normal.of(x, y)]], [w0], samples=1)
    assert not fit.kept and fit.reason.startswith("dropped")
    np.testing.assert_array_equal(fit.weights[0], w0)
    sol = _lstsq.ridge(_lstsq.Normal.of(x, y), w0, [1e-4])[0]
    np.testing.assert_allclose(sol, w0)


def test_empty_rows_and_non_finite_data_do_not_raise() -> None:
    """The old failure (a fold with no training rows: XᵀX all zero, λ = 0) and NaN data
    give no LinAlgError: the layer keeps its weights and the report says why."""
    w0 = np.ones((5, 2))
    empty = _lstsq.Normal.of(np.zeros((0, 5)), np.zeros((0, 2)))
    assert _lstsq.ridge(empty, w0, [0.0])[0] is not None
    x, y, _ = _problem(6, 5, 2, 0.0)
    y[0, 0] = np.nan
    fit = _lstsq.fit([[_lstsq.Normal.of(x, y)]], [w0], samples=1)
    assert not fit.kept and "non-finite" in fit.reason


def test_solve_spd_handles_a_singular_matrix() -> None:
    """A rank-deficient PSD system (Cholesky fails) is solved by the fallback."""
    v = np.random.default_rng(0).standard_normal((6, 2))
    a = v @ v.T  # rank 2
    b = a @ np.ones((6, 1))  # consistent right-hand side
    x = _lstsq.solve_spd(a, b)
    np.testing.assert_allclose(a @ x, b, atol=1e-8)
    assert _lstsq.solve_spd(np.full((2, 2), np.inf), np.ones((2, 1))) is None


def test_strength_follows_the_held_back_error() -> None:
    """Clean targets far from W₀ want a weak pull; noisy targets with W₀ already right want a
    strong one (chosen on held-back samples), and a fit that only learns noise is dropped."""
    x, y, w = _problem(200, 20, 4, 0.0)
    ids = _lstsq.sample_ids(8, 200)
    fold = _lstsq.folds(ids, 8)
    clean = _lstsq.fit([[n] for n in _lstsq.normals(x, y, fold)], [np.zeros_like(w)], samples=8)
    assert clean.kept and clean.strength == min(_lstsq.STRENGTHS)
    assert clean.held_back_rows == 200 and "5 folds" in clean.chosen_by
    rng = np.random.default_rng(1)
    noisy_y = x @ w + 5.0 * rng.standard_normal(y.shape)
    noisy = _lstsq.fit([[n] for n in _lstsq.normals(x, noisy_y, fold)], [w], samples=8)
    assert not noisy.kept and noisy.reason.startswith("dropped: no lower held-back error")
    np.testing.assert_array_equal(noisy.weights[0], w)
    # A support mask (one solve per support) validates on one held-back fold only.
    mask = np.random.default_rng(2).random(w.shape) < 0.5
    masked = _lstsq.fit(
        [[n] for n in _lstsq.normals(x, y, fold)], [np.zeros_like(w)], samples=8, masks=[mask]
    )
    assert masked.kept and "(1 fold)" in masked.chosen_by
    assert 0 < masked.held_back_rows < 200
    assert np.all(masked.weights[0][~mask] == 0)


def test_folds_keep_the_rows_of_a_sample_together() -> None:
    """Every sample's rows share a fold; one sample cannot be split, so no folds."""
    ids = _lstsq.sample_ids(7, 70)
    fold = _lstsq.folds(ids, 7)
    assert fold is not None and set(fold) == set(range(5))
    for s in range(7):
        assert len(set(fold[ids == s])) == 1
    assert _lstsq.folds(_lstsq.sample_ids(1, 10), 1) is None


def test_reliable_samples_come_from_the_layer_shapes(caplog: pytest.LogCaptureFixture) -> None:
    """N = the samples giving every layer as many rows as features: a dense layer with one
    row per sample and 73 features needs 73; the warning names it once."""
    layers = {
        "conv": {"samples": 1, "rows": 196, "features": 288},  # needs 2
        "dense": {"samples": 1, "rows": 1, "features": 73},  # needs 73
    }
    assert _lstsq.reliable_samples(layers) == (73, "dense")
    log = logging.getLogger("test_recover_small_data")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert _lstsq.warn_if_unreliable(log, "recovery", layers) == 73
    (rec,) = caplog.records
    assert "recovery had 1 calibration sample (layer 'dense': 1 row for 73 features)" in (
        rec.getMessage()
    )
    assert "give at least 73 samples" in rec.getMessage()
    enough = {k: {**v, "samples": 80, "rows": v["rows"] * 80} for k, v in layers.items()}
    assert _lstsq.warn_if_unreliable(log, "recovery", enough) is None


# --------------------------------------------------------------------------------------------
# The pipeline: canonicalize -> prune_channels(0.5) -> recover, on every model


@functools.cache
def _model(name: str) -> onnx.ModelProto:
    return onnx.load(str(example_model(name))) if name in EXAMPLES else zoo(name)[0]


def _calibration(name: str, n: int) -> dict[str, np.ndarray]:
    if name in EXAMPLES:
        stem = name.removesuffix("_cnn")
        return {"input": np.load(EXAMPLES_DIR / f"{stem}_calib.npz")["input"][:n]}
    return stacked_inputs(_model(name), range(n))


@functools.cache
def _held_out(name: str) -> dict[str, np.ndarray]:
    if name in EXAMPLES:
        stem = name.removesuffix("_cnn")
        return {"input": np.load(EXAMPLES_DIR / f"{stem}_data.npz")["input"][:8]}
    return stacked_inputs(_model(name), range(1000, 1008))


@functools.cache
def _reference(name: str) -> np.ndarray:
    """The unpruned model's first output on the held-out inputs, by onnx.reference."""
    return onnx_reference(_model(name), _held_out(name))


def _error(mod, name: str) -> float:
    ref = _reference(name)
    out = run(mod, _held_out(name))[0].reshape(ref.shape)
    assert np.isfinite(out).all()
    return float(np.abs(out - ref).mean() / np.abs(ref).mean())


@pytest.mark.parametrize("n", SAMPLES)
@pytest.mark.parametrize("name", MODELS)
def test_recovery_on_few_samples(name: str, n: int, caplog: pytest.LogCaptureFixture) -> None:
    """The pipeline never raises; the report gives per layer its samples, rows, features, λ
    and whether the fit was kept; too few samples log one warning naming how many would do;
    with 8 samples the recovered model is no worse on held-out inputs than the pruned one."""
    model = _model(name)
    specs = build_passes(prune=0.5, prune_method="l1", calibration=_calibration(name, n), lanes=8)
    assert [s.name for s in specs] == ["canonicalize", "prune_channels", "recover"]
    with caplog.at_level(logging.WARNING, logger="passes.recover"):
        out, reports = run_passes(imported(model), specs)
    report = reports[-1]["report"]
    assert report["samples"] == n and report["layers"]
    weights = weights_by_binding(out)
    for layer, e in report["layers"].items():
        w = weights[layer]
        k = w.shape[0] if w.ndim == 2 else math.prod(w.shape[1:])
        assert e["features"] in (k, k + 1), (layer, e)  # + 1: the bias column
        assert e["samples"] == n and e["rows"] >= n and e["rows"] % n == 0
        assert e["ridge"] > 0 and e["lambda"] > 0
        assert isinstance(e["kept"], bool) and e["reason"].startswith(
            "kept" if e["kept"] else "dropped"
        )
        if n == 1:
            assert e["held_back_rows"] == 0 and e["ridge_chosen_by"].startswith("default")
        elif e["features"] <= _lstsq.CV_MAX_FEATURES:  # each sample held back once
            assert e["held_back_rows"] == e["rows"] and "held-back" in e["ridge_chosen_by"]
        else:  # wide layers: one held-back fold
            assert 0 < e["held_back_rows"] < e["rows"]
        if e["kept"]:
            assert e["error_after"] < e["error_before"]
        else:
            assert e["error_after"] == e["error_before"]
    need = max(
        max(2, math.ceil(e["features"] / (e["rows"] / n))) for e in report["layers"].values()
    )
    assert report["samples_for_reliable_refit"] == need
    warned = [r.getMessage() for r in caplog.records if "calibration sample" in r.getMessage()]
    if n < need:
        assert len(warned) == 1 and f"give at least {need} samples" in warned[0]
        assert f"recovery had {n} calibration sample" in warned[0]
    else:
        assert not warned
    recovered_error = _error(out, name)  # finite outputs, whatever the sample count
    if n == 8:
        pruned, _ = run_passes(imported(model), specs[:2])
        assert recovered_error <= _error(pruned, name), report["layers"]


# --------------------------------------------------------------------------------------------
# The other re-fits: low rank and sparsify on one sample


def test_low_rank_and_sparsify_refits_on_one_sample() -> None:
    """The low-rank re-fit and sparsify's recovery on a single calibration sample: no error,
    and per layer the samples, rows, λ and kept / dropped in the report."""
    model, mod = zoo("mlp")
    calib = stacked_inputs(model, range(1))
    lr = LowRank(LowRankConfig(ratio=0.25, calibration=calib, recover=True))
    apply(lr, mod)
    entries = [lay["recovery"] for lay in lr.report["layers"] if "recovery" in lay]
    sp = apply(Sparsify(SparsifyConfig(ratio=0.7, block="2x1", lanes=16, choice="dense",
                                       recover=True, calibration=calib)), mod)  # fmt: skip
    entries += [lay["recover"] for lay in sparsify_report(sp)["layers"] if "recover" in lay]
    assert len(entries) >= 4
    for e in entries:
        assert e["samples"] == 1 and e["rows"] == 4 and e["held_back_rows"] == 0
        assert e["lambda"] > 0 and isinstance(e["kept"], bool) and e["reason"]


# --------------------------------------------------------------------------------------------
# The CLI reproduction of the issue


@pytest.mark.parametrize(("name", "leading_axis"), [("mnist_cnn", False), ("digits_cnn", True)])
def test_cli_compiles_with_one_calibration_sample(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, leading_axis: bool
) -> None:
    """``hwcc compile MODEL --prune 0.5 --calib ONE.npz`` (one sample, with or without the
    sample axis) used to fail with 'Singular matrix'; it exits 0 and warns how many samples
    a reliable re-fit needs."""
    x = _calibration(name, 1)["input"]
    calib = tmp_path / "one.npz"
    np.savez(calib, input=x if leading_axis else x[0])
    with caplog.at_level(logging.WARNING, logger="passes.recover"):
        rc = main(["compile", str(example_model(name)), "--prune", "0.5", "--calib", str(calib),
                   "--prune-always", "-o", str(tmp_path / "out"), "--bench-repeat", "0"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    prune = next(p for p in manifest["passes"] if p["name"] == "prune_channels")
    assert "--prune-always" in prune["report"]["speed"]["decided_by"]  # not timed: as asked
    warned = [r.getMessage() for r in caplog.records if r.name == "passes.recover"]
    assert len(warned) == 1 and "recovery had 1 calibration sample" in warned[0]
    assert "samples for a reliable re-fit" in warned[0]
