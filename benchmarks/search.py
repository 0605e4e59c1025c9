"""Policy search on ``mnist_cnn``: every candidate, the Pareto front and the winner.

Usage: ``python benchmarks/search.py [--strategy bayes|random|grid] [--budget 10]
[--max-drop 1.0] [--samples 300] [--repeat 50] [--log FILE.jsonl]``

Candidates are compiled for ``host`` by :func:`compiler.search.search.search` (prune ratios per
channel group for the 4 largest groups, low-rank energy, quantization; recovery and int8
calibration on ``examples/mnist_calib.npz``), timed on this machine with
``Artifact.benchmark`` and scored by top-1 accuracy on the first ``--samples`` held-out MNIST
samples (``examples/mnist_data.npz``); the uncompressed baseline is measured in the same run.
``*`` marks the Pareto front (latency against accuracy drop), ``>`` the fastest candidate
within the accuracy budget.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, machine_line, save_results, table
from compiler.search.search import SearchSpace, format_table, search
from examples import example_data, example_model

COLUMNS = [
    ("id", "id"),
    ("mark", ""),
    ("settings", "settings"),
    ("latency_ms", "median ms"),
    ("speedup", "speed-up"),
    ("top1", "top-1 %"),
    ("drop", "drop (points)"),
    ("params", "params"),
    ("compile_s", "compile s"),
]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", choices=["grid", "random", "bayes"], default="bayes")
    p.add_argument("--budget", type=int, default=10, help="candidates besides the baseline")
    p.add_argument("--max-drop", type=float, default=1.0, help="top-1 points")
    p.add_argument("--samples", type=int, default=300, help="MNIST test samples to score")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", help="JSON-lines log (resumes when it exists)")
    return p.parse_args()


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = search(example_model("mnist_cnn"), "host", eval_data=example_data("mnist_cnn"),
                    calibration=example_data("mnist_cnn", "calib"), strategy=args.strategy,
                    budget=args.budget, max_accuracy_drop=args.max_drop, space=SearchSpace(),
                    log_path=args.log, seed=args.seed, eval_samples=args.samples,
                    repeat=args.repeat)
    d = report.to_dict()
    from compiler.search.search import Settings

    rows = []
    for c in [d["baseline"], *d["candidates"]]:
        mark = (">" if c["id"] == d["best"]["id"] else "") + ("*" if c["on_pareto"] else "")
        rows.append({
            "id": c["id"], "mark": mark,
            "settings": Settings.from_dict(c["settings"]).describe(),
            "latency_ms": c["latency_ms"], "speedup": c["speedup"],
            "top1": None if c["accuracy"] is None else 100 * c["accuracy"],
            "drop": c["drop"], "params": c["params"], "compile_s": c["compile_s"],
            "status": c["status"], "error": c["error"],
        })
    m = machine()
    print(f"\nPolicy search on mnist_cnn ({args.strategy}, budget {args.budget}, accuracy budget "
          f"{args.max_drop:g} points, {args.samples} samples) on {machine_line(m)}\n")
    print(format_table(report))
    print()
    print(table(rows, COLUMNS))
    best = d["best"]
    print(f"\nbest: #{best['id']} {Settings.from_dict(best['settings']).describe()} "
          f"({best['speedup']:.2f}x, drop {best['drop']:.2f} points); Pareto front: "
          f"{[c['id'] for c in d['pareto']]}; {d['seconds']:.0f} s")
    title = (f"Policy search on mnist_cnn: {args.strategy}, {len(d['candidates'])} candidates, "
             f"accuracy budget {args.max_drop:g} top-1 points")
    path = save_results("search", rows, {"columns": COLUMNS, "title": title,
                                         "pareto": [c["id"] for c in d["pareto"]],
                                         "best": best["id"], "report": d})
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
