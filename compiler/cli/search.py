"""``hwcc search``: search compression settings against measured latency and an accuracy budget.

Registered by :func:`add_search_parser`; :func:`cmd_search` is a thin layer over
:func:`compiler.search.search`. Human output is a table of every candidate (``*`` the Pareto
front, ``>`` the winner); ``--json`` prints :meth:`compiler.search.search.SearchReport.to_dict`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from compiler import api
from compiler.data import load_npz
from compiler.errors import ConfigError
from compiler.frontend import read_model, resolve_input_specs
from compiler.search.plot import write_search_chart
from compiler.search.search import (
    SearchSpace,
    Settings,
    candidate_passes,
    format_table,
    recheck_best,
    search,
)
from targets import parse_target

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERRUPTED = 0, 130


def _floats_or_none(text: str) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower() in ("none", "off", "-"):
            out.append(None)
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers or 'none', got '{text}'") from None
    return tuple(out)


def _modes(text: str) -> tuple[str | None, ...]:
    return tuple(None if p.strip().lower() in ("none", "off", "-") else p.strip()
                 for p in text.split(","))


def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hwcc search`` on the CLI's subparsers; returns the new parser."""
    s = subparsers.add_parser(
        "search", help="search per-layer compression settings by measured latency and accuracy",
        description="Compile, time and score compression candidates (pruning, low rank, "
        "quantization) on this machine; print every candidate, the Pareto front of latency "
        "against accuracy drop and the fastest candidate within the accuracy budget. Every "
        "measured candidate is appended to --log; running again with the same log resumes.")
    s.add_argument("model", help="ONNX model file")
    s.add_argument("--target", "-t", default="host",
                   help="target triple; must run on this machine (default: host)")
    s.add_argument("--data", required=True, metavar="FILE.npz",
                   help="evaluation inputs keyed by input name (leading sample axis), and labels")
    s.add_argument("--labels", metavar="KEY", help="labels array in --data (default: 'label' "
                   "when present; without labels, candidates are scored by the largest relative "
                   "output error against the float model)")
    s.add_argument("--calib", metavar="FILE.npz", help="calibration inputs: int8, recovery and "
                   "activation-based pruning (left out of the search without it)")
    s.add_argument("--strategy", choices=["grid", "random", "bayes"], default="bayes",
                   help="grid over global settings, or random / Bayesian (Gaussian process) "
                   "over per-group settings (default bayes)")
    s.add_argument("--budget", type=int, default=10, metavar="N",
                   help="candidates to measure, not counting the baseline (default 10)")
    s.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="accuracy budget: top-1 points below the baseline (without labels: "
                   "the largest relative output error); default 1.0")
    s.add_argument("--log", metavar="FILE.jsonl", help="append every measured candidate here; "
                   "candidates already in it are not measured again")
    s.add_argument("-o", "--output", metavar="DIR", help="compile the best candidate into an "
                   "artifact directory")
    s.add_argument("--chart", metavar="FILE.png", help="draw every candidate (latency vs "
                   "accuracy drop), the Pareto front, the budget and the chosen point "
                   "(default: beside --log, same stem, .png)")
    g = s.add_argument_group("search space")
    g.add_argument("--prune-ratios", type=_floats_or_none, default=(0.0, 0.25, 0.5),
                   metavar="R,R,..", help="prune ratios (default 0,0.25,0.5)")
    g.add_argument("--prune-methods", default="l1", metavar="M,M,..",
                   help="channel importances (default l1)")
    g.add_argument("--low-rank", type=_floats_or_none, default=(None, 0.95, 0.9),
                   metavar="E,E,..", help="kept energies, 'none' for no factorization "
                   "(default none,0.95,0.9)")
    g.add_argument("--quantize", type=_modes, default=(None, "fp16", "int8"), metavar="Q,Q,..",
                   help="modes among none, fp16, int8 (default none,fp16,int8)")
    g.add_argument("--groups", type=int, default=4, metavar="K", help="largest channel groups "
                   "given their own prune ratio in random/bayes search (0: global only)")
    s.add_argument("--samples", type=int, default=200, metavar="N",
                   help="evaluate on the first N samples of --data (default 200; raised to "
                   "the 200/max-drop samples a top-1 budget needs, refused when --data has "
                   "fewer); the written model (-o) is re-checked on all of --data")
    s.add_argument("--repeat", type=int, default=50, metavar="N",
                   help="timed runs per candidate (default 50)")
    s.add_argument("--seed", type=int, default=0, help="seed of random / Bayesian choices")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_search)
    return s


def cmd_search(args: argparse.Namespace) -> int:
    """Run ``hwcc search``; returns the exit code (130 when interrupted, after the report)."""

    data = load_npz(args.data)
    labels = args.labels
    if labels is None:
        labels = "label" if "label" in data else None
    elif labels not in data:
        raise ConfigError(f"--labels {labels}: {args.data} has no such array; "
                          f"it holds {sorted(data)}")
    calib = load_npz(args.calib) if args.calib else None
    space = SearchSpace(prune_ratios=args.prune_ratios,
                        prune_methods=tuple(m.strip() for m in args.prune_methods.split(",")),
                        low_rank_energies=args.low_rank, quantize=args.quantize,
                        per_group=args.groups > 0, max_groups=max(args.groups, 0))
    report = search(args.model, args.target, eval_data=data, labels_key=labels,
                    calibration=calib, strategy=args.strategy, budget=args.budget,
                    max_accuracy_drop=args.max_drop, space=space, log_path=args.log,
                    progress=not args.no_progress and not args.json and sys.stderr.isatty(),
                    seed=args.seed, eval_samples=args.samples, repeat=args.repeat)
    artifact = _compile_best(report, args, data, labels, calib) if args.output else None
    chart = _chart(report, args)
    if args.json:
        out = report.to_dict()
        out["artifact"] = artifact
        out["chart"] = chart
        print(json.dumps(out, indent=2))
    else:
        print_report(report, artifact)
        if chart:
            print(f"  chart        {chart}")
    return EXIT_INTERRUPTED if report.interrupted else EXIT_OK


def _chart(report: Any, args: argparse.Namespace) -> str | None:
    """Write the search's PNG (``--chart``, else beside ``--log``); None when neither is given
    or matplotlib is missing (a warning says so)."""
    path = args.chart or (str(Path(args.log).with_suffix(".png")) if args.log else None)
    if path is None:
        return None
    try:
        return str(write_search_chart(report, path))
    except ImportError:
        logger.warning("no chart: matplotlib is not installed (pip install 'hwcc[bench]')")
        return None
    except OSError as err:
        raise ConfigError(f"cannot write the chart {path}: {err.strerror or err}") from None


def _compile_best(report: Any, args: argparse.Namespace, data: dict, labels: str | None,
                  calib: Any) -> str:
    """Compile the winner, re-checked on every sample of ``--data`` (see
    :func:`compiler.search.search.recheck_best`), into ``args.output`` (verified on the first
    evaluation sample)."""

    settings = recheck_best(report, args.model, args.target, data, labels, calib)
    tgt = parse_target(args.target)
    passes = [] if settings.is_baseline else candidate_passes(settings, calib, tgt.capabilities)
    specs = resolve_input_specs(read_model(args.model)[0], None)
    first = {s.name: data[s.name][0] for s in specs}
    art = api.compile(args.model, tgt, output_dir=args.output, passes=passes,
                      verify_inputs=first)
    return str(art.path)


def print_report(report: Any, artifact: str | None = None) -> None:
    """The human-readable table of a :class:`compiler.search.search.SearchReport`."""

    d = report.to_dict()
    budget = (f"{d['max_accuracy_drop']:g} top-1 points" if d["metric"] == "top1"
              else f"max relative output error {d['max_accuracy_drop']:g}")
    print(f"searched {d['model']} for {d['target']}: {d['strategy']}, "
          f"{len(d['candidates'])} candidates + baseline in {d['seconds']:.0f} s; "
          f"accuracy budget {budget}")
    print(format_table(report))
    print("  * Pareto front (latency vs accuracy drop)   > best within the budget")
    best = d["best"]

    text = Settings.from_dict(best["settings"]).describe()
    if best["id"] == 0:
        print("  best         the baseline: no candidate within the budget is faster")
    else:
        print(f"  best         #{best['id']} {text}: {best['latency_ms']:.4f} ms "
              f"({best['speedup']:.2f}x), drop {best['drop']:.3g}")
    rc = d.get("recheck")
    if rc and "tried" in rc:
        tried = ", ".join(f"#{t['id']} drop {t['drop']:.2f}" for t in rc["tried"])
        verdict = (f"wrote #{rc['chosen']}" if rc["held"]
                   else "none held: wrote the uncompressed model")
        print(f"  re-checked   on all {rc['samples']} samples (baseline "
              f"{100 * rc['baseline_top1']:.2f}%): {tried}; {verdict}")
    if artifact:
        print(f"  artifact     {artifact}")
    if d["log"]:
        print(f"  log          {d['log']}")
    if d["interrupted"]:
        print("  interrupted  every candidate measured so far is in the report and the log")
