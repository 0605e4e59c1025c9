"""Policy search: Pareto front, accuracy budget, resuming from the log, bad input, the CLI.

One grid search of 3 candidates on ``digits_cnn`` (module fixture, with a log) feeds the
property tests; the resume and CLI tests reuse its log so that they compile little.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from compiler.cli.search import add_search_parser
from compiler.errors import ConfigError
from compiler.search.search import SearchReport, SearchSpace, dominates, recheck_best, search
from examples import EXAMPLES_DIR, example_data, example_model

DIGITS = example_model("digits_cnn")
# Grid points: (prune 0, low rank 0.9), (prune 0.5, none), (prune 0.5, low rank 0.9): three
# candidates (fp16 would be left out on a CPU without fp16 arithmetic).
SPACE = SearchSpace(prune_ratios=(0.0, 0.5), low_rank_energies=(None, 0.9), quantize=(None,))
# 60 samples resolve 1.67 points: a budget of 5 points is worth 3 samples
KW = {"strategy": "grid", "budget": 3, "space": SPACE, "max_accuracy_drop": 5.0,
      "eval_samples": 60, "repeat": 10, "progress": False}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchReport, Path]:
    log = tmp_path_factory.mktemp("search") / "log.jsonl"
    report = search(DIGITS, "host", eval_data=example_data("digits_cnn"), log_path=log, **KW)
    return report, log


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_grid_measures_every_point(grid: tuple[SearchReport, Path]) -> None:
    """Grid of 3: three measured candidates plus the baseline, with stable report keys."""
    report, _ = grid
    d = report.to_dict()
    assert {"baseline", "candidates", "pareto", "best", "target", "strategy"} <= set(d)
    assert d["strategy"] == "grid" and d["metric"] == "top1"
    assert len(d["candidates"]) == 3
    assert all(c["status"] == "ok" and c["latency_ms"] > 0 for c in d["candidates"])
    ranks = sorted(str(c["settings"]["low_rank"]) for c in d["candidates"])
    assert ranks == ["0.9", "0.9", "None"]
    assert d["baseline"]["drop"] == 0.0 and d["baseline"]["speedup"] == 1.0


def test_pareto_front_is_not_dominated(grid: tuple[SearchReport, Path]) -> None:
    """Every front member is undominated by any measured point; every other point is."""
    report, _ = grid
    points = [report.baseline, *report.candidates]
    front = {c.id for c in report.pareto}
    assert front
    for p in points:
        dominated = any(dominates(q, p) for q in points if q is not p)
        assert dominated == (p.id not in front), p
        # the property, spelled out on the numbers
        if p.id in front:
            assert not any(q.latency_ms <= p.latency_ms and q.drop <= p.drop
                           and (q.latency_ms, q.drop) != (p.latency_ms, p.drop) for q in points)


def test_best_respects_accuracy_budget(grid: tuple[SearchReport, Path]) -> None:
    """best: within max_accuracy_drop, and the fastest such point."""
    report, _ = grid
    best = report.best
    assert best.drop <= report.max_accuracy_drop
    within = [c for c in [report.baseline, *report.candidates]
              if c.drop <= report.max_accuracy_drop]
    assert best.latency_ms == min(c.latency_ms for c in within)
    assert report.to_dict()["best"]["id"] == best.id


def test_log_has_one_line_per_measurement(grid: tuple[SearchReport, Path]) -> None:
    """The log holds the baseline and each candidate, one JSON object per line."""
    _, log = grid
    kinds = [r["kind"] for r in _lines(log)]
    assert kinds == ["baseline", "candidate", "candidate", "candidate"]


def test_resume_skips_measured_candidates(grid: tuple[SearchReport, Path],
                                          tmp_path: Path) -> None:
    """A log holding 2 of the 3 grid points: the rerun measures (and logs) only the third."""
    _, full = grid
    lines = full.read_text().splitlines(keepends=True)
    log = tmp_path / "partial.jsonl"
    log.write_text("".join(lines[:3]))  # baseline + first two candidates
    report = search(DIGITS, "host", eval_data=example_data("digits_cnn"), log_path=log, **KW)
    new = _lines(log)[3:]
    assert [r["kind"] for r in new] == ["baseline", "candidate"]  # one compile of a candidate
    assert [c.resumed for c in report.candidates] == [True, True, False]
    assert new[1]["result"]["settings"] == report.candidates[2].settings.to_dict()


@pytest.mark.parametrize("kw, match", [
    ({"budget": 0}, "budget"),
    ({"strategy": "anneal"}, "unknown search strategy"),
    ({"max_accuracy_drop": -1.0}, "drop"),
])
def test_bad_settings(kw: dict, match: str) -> None:
    """Bad budget, strategy or accuracy budget: ConfigError before anything compiles."""
    with pytest.raises(ConfigError, match=match):
        search(DIGITS, eval_data=example_data("digits_cnn"), **{**KW, **kw})


def test_missing_labels() -> None:
    """Labels asked for but absent from the data: ConfigError naming the key."""
    data = {"input": example_data("digits_cnn")["input"]}
    with pytest.raises(ConfigError, match="'label'"):
        search(DIGITS, eval_data=data, **KW)


def test_bad_space() -> None:
    """The space validates itself."""
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        SearchSpace(prune_ratios=(1.5,))
    with pytest.raises(ConfigError, match="quantize mode"):
        SearchSpace(quantize=("int4",))


def _cli(grid: tuple[SearchReport, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[dict, Path]:
    """``hwcc search --json`` over the grid's space, starting from a copy of its log."""
    _, full = grid
    log = tmp_path / "log.jsonl"
    log.write_text(full.read_text())
    parser = argparse.ArgumentParser(prog="hwcc")
    add_search_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "search", str(DIGITS), "--data", str(EXAMPLES_DIR / "digits_data.npz"),
        "--strategy", "grid", "--budget", "3", "--max-drop", "5", "--log", str(log),
        "--prune-ratios", "0,0.5", "--low-rank", "none,0.9", "--quantize", "none",
        "--samples", "60", "--repeat", "10", "--json", *extra])
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out), log


def test_cli_json_resumes_from_log(grid: tuple[SearchReport, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """hwcc search --json with the full log: all three candidates resumed, same report keys."""
    out, log = _cli(grid, tmp_path, capsys)
    assert [c["resumed"] for c in out["candidates"]] == [True, True, True]
    assert out["best"]["drop"] <= 5.0 and out["eval_samples"] == 60
    assert len(_lines(log)) == 5  # only the baseline was measured again


def test_budget_finer_than_the_data_resolves_is_refused() -> None:
    """0.5 points needs 400 samples (one sample moves top-1 by 100/N points); the digits
    data has 360: refused before anything compiles, naming both numbers."""
    with pytest.raises(ConfigError, match=r"needs at least 400 evaluation samples.*has 360"):
        search(DIGITS, eval_data=example_data("digits_cnn"), **{**KW, "max_accuracy_drop": 0.5})


def test_drop_at_the_budget_is_within_and_has_a_confidence_interval(
        grid: tuple[SearchReport, Path]) -> None:
    """A drop equal to the budget up to float rounding is within it; every top-1 drop comes
    with the half-width of its 95 % interval (about 1.96·100·sqrt(2p(1-p)/N) points)."""
    import dataclasses

    report, _ = grid
    cand = report.candidates[0]
    at = dataclasses.replace(cand, drop=report.max_accuracy_drop + 1e-12)
    over = dataclasses.replace(cand, drop=report.max_accuracy_drop + 0.01)
    assert report.within(at) and not report.within(over)
    for c in report.candidates:
        p, n = report.baseline.accuracy, report.eval_samples
        expected = 196 * ((p * (1 - p) + c.accuracy * (1 - c.accuracy)) / n) ** 0.5
        assert c.drop_ci95 == pytest.approx(expected, abs=1e-3)


def test_written_model_is_rechecked_on_all_samples(grid: tuple[SearchReport, Path]) -> None:
    """The search scored 60 samples; recheck_best scores the fastest candidates within the
    budget on all 150 given against the baseline measured there too (its top-1 equals
    onnxruntime's on the same data), and writes the first that holds. A slow baseline and a
    loose budget make every candidate eligible, so there is something to re-check."""
    import dataclasses

    import numpy as np
    import onnxruntime as ort

    report, _ = grid
    report = dataclasses.replace(
        report, baseline=dataclasses.replace(report.baseline, latency_ms=1e9),
        max_accuracy_drop=60.0, recheck=None)
    data = {k: v[:150] for k, v in example_data("digits_cnn").items()}  # more than the 60
    settings = recheck_best(report, DIGITS, "host", data, "label", None, max_tries=2)
    rc = report.recheck
    assert rc["samples"] == 150
    eligible = sorted((c for c in report.candidates if report.within(c)),
                      key=lambda c: (c.latency_ms, c.drop, c.id))
    assert [t["id"] for t in rc["tried"]] == [c.id for c in eligible[:len(rc["tried"])]]
    assert rc["held"] == any(t["drop"] <= 60 for t in rc["tried"])
    chosen = next((t["id"] for t in rc["tried"] if t["drop"] <= 60), 0)
    assert rc["chosen"] == chosen
    expect = report.candidates[chosen - 1].settings if chosen else None
    assert settings == expect if chosen else settings.is_baseline
    sess = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    preds = [int(np.argmax(sess.run(None, {"input": x})[0])) for x in data["input"]]
    ort_top1 = float(np.mean(np.array(preds) == data["label"]))
    assert abs(rc["baseline_top1"] - ort_top1) <= 1 / 150 + 1e-9


def test_cli_output_is_rechecked(grid: tuple[SearchReport, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """hwcc search -o writes the artifact and the report says how it was re-checked."""
    out, log = _cli(grid, tmp_path, capsys, "-o", str(tmp_path / "out"))
    rc = out["recheck"]
    if out["best"]["id"] == 0:
        assert rc == {"held": True, "note": "nothing to re-check"}
    else:
        assert rc["samples"] == 360
    assert (tmp_path / "out" / "manifest.json").exists()
    # the picture beside the log: a real PNG of a sensible size
    from matplotlib.image import imread

    assert out["chart"] == str(log.with_suffix(".png"))
    png = Path(out["chart"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(out["chart"]).shape[:2]
    assert (height, width) == (550, 800)


def test_settings_the_target_cannot_run_fast_are_left_out() -> None:
    """fp16 leaves the space for a CPU without fp16 arithmetic (with the reason, for the
    report) and stays for one with it (AVX-512 FP16, ARMv8.2 +fullfp16)."""
    from targets import parse_target

    space = SearchSpace(quantize=(None, "fp16", "int8"))
    plain, left = space.for_capabilities(parse_target("x86_64-linux-gnu -mattr=+avx2,+fma")
                                         .capabilities)
    assert plain.quantize == (None, "int8") and left[0]["setting"] == "quantize=fp16"
    assert "no fp16 arithmetic" in left[0]["reason"]
    for t in ("x86_64-linux-gnu -mattr=+avx512f,+avx512fp16", "aarch64-linux-gnu -mattr=+fullfp16"):
        kept, none = space.for_capabilities(parse_target(t).capabilities)
        assert kept.quantize == space.quantize and none == []
