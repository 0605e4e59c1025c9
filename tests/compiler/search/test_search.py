"""Policy search: Pareto front, accuracy budget, resuming from the log, bad input, the CLI.

One grid search of 3 candidates on ``digits_cnn`` (module fixture, with a log) feeds the
property tests; the resume and CLI tests reuse its log so that they compile little.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from compiler.errors import ConfigError
from compiler.search.search import SearchReport, SearchSpace, dominates, search
from compiler.cli.search import add_search_parser
from examples import EXAMPLES_DIR, example_data, example_model

DIGITS = example_model("digits_cnn")
# Grid points: (prune 0, fp16), (prune 0.5, none), (prune 0.5, fp16): three candidates.
SPACE = SearchSpace(prune_ratios=(0.0, 0.5), low_rank_energies=(None,), quantize=(None, "fp16"))
KW = {"strategy": "grid", "budget": 3, "space": SPACE, "max_accuracy_drop": 0.5,
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
    quants = sorted(str(c["settings"]["quantize"]) for c in d["candidates"])
    assert quants == ["None", "fp16", "fp16"]
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


def test_cli_json_resumes_from_log(grid: tuple[SearchReport, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """hwcc search --json with the full log: all three candidates resumed, same report keys."""
    _, full = grid
    log = tmp_path / "log.jsonl"
    log.write_text(full.read_text())
    parser = argparse.ArgumentParser(prog="hwcc")
    add_search_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "search", str(DIGITS), "--data", str(EXAMPLES_DIR / "digits_data.npz"),
        "--strategy", "grid", "--budget", "3", "--max-drop", "0.5", "--log", str(log),
        "--prune-ratios", "0,0.5", "--low-rank", "none", "--quantize", "none,fp16",
        "--samples", "60", "--repeat", "10", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["resumed"] for c in out["candidates"]] == [True, True, True]
    assert out["best"]["drop"] <= 0.5
    assert len(_lines(log)) == 5  # only the baseline was measured again
