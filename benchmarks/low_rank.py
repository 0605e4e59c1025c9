"""Low-rank factorization: accuracy and latency at several kept energies, on this machine.

Usage: ``python benchmarks/low_rank.py [--energies 0.99,0.95,0.9,0.8] [--recover 0.9,0.8]
[--samples 1000] [--skip-ffn] [--skip-cnn]``

Models:

- ``mnist_cnn`` (``examples/mnist_cnn.onnx``, trained; 8 convs + Gemm): top-1 accuracy on the
  packaged held-out MNIST samples (``examples/mnist_data.npz``); recovery re-fits on the
  packaged calibration samples (``examples/mnist_calib.npz``, training split only).
- a transformer block with a wide FFN (``tests.models.transformer_block``, seq 128, hidden 256,
  FFN 1024; random He-initialised weights, so its spectra are flat, unlike trained weights):
  relative output error against the uncompressed model on seeded random inputs.

Every row is compiled by ``compiler.compile(..., "host")`` (Canonicalize, then LowRank with
``conv_method="tucker2"``, ranks rounded to the host's fp32 lanes, only layers that get cheaper
in FLOPs) and timed with ``Artifact.benchmark`` in the same run. The first row of each model is
the uncompressed baseline.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import compiler
from benchmarks.common import ROOT, machine, machine_line, save_results, table
from passes.canonicalize import Canonicalize
from passes.low_rank import LowRank, LowRankConfig, format_report
from targets import parse_target
from tests import models

COLUMNS = [
    ("model", "model"),
    ("energy", "energy"),
    ("recover", "re-fit"),
    ("layers", "layers factorized"),
    ("params", "params (factorizable layers)"),
    ("mflops", "MFLOPs"),
    ("quality", "accuracy / error"),
    ("ms", "median ms"),
    ("speedup", "speed-up"),
    ("compile_s", "pass + compile s"),
]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--energies", type=_floats, default=[0.99, 0.95, 0.9, 0.8, 0.7])
    p.add_argument("--recover", type=_floats, default=[0.9, 0.8],
                   help="energies also run with least-squares recovery (CNN only)")  # fmt: skip
    p.add_argument("--samples", type=int, default=1000, help="MNIST test samples to score")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per row")
    p.add_argument("--skip-ffn", action="store_true")
    p.add_argument("--skip-cnn", action="store_true")
    p.add_argument("--report", action="store_true", help="print the per-layer pass reports")
    return p.parse_args()


def _compile(model, cfg: LowRankConfig | None, workdir: Path):
    passes = [Canonicalize()]
    lr = None
    if cfg is not None:
        lr = LowRank(cfg)
        passes.append(lr)
    t0 = time.perf_counter()
    art = compiler.compile(model, "host", passes=passes, output_dir=workdir, verify=False)
    return art, (lr.report if lr else None), time.perf_counter() - t0


def _row(name, energy, recover, report, quality, ms, base_ms, secs) -> dict:
    row = {"model": name, "energy": energy, "recover": "yes" if recover else "no",
           "quality": quality, "ms": ms, "speedup": f"{base_ms / ms:.2f}x",
           "compile_s": round(secs, 1)}  # fmt: skip
    if report is None:
        row.update(layers="—", params="—", mflops="—", energy="—")
    else:
        row["layers"] = f"{report['factorized']}/{len(report['layers'])}"
        row["params"] = f"{report['params_before']} -> {report['params_after']}"
        row["mflops"] = f"{report['flops_before'] / 1e6:.1f} -> {report['flops_after'] / 1e6:.1f}"
    return row


def bench_cnn(args, lanes: int, tmp: Path) -> list[dict]:
    model = str(ROOT / "examples" / "mnist_cnn.onnx")
    data = np.load(ROOT / "examples" / "mnist_data.npz")
    calib = dict(np.load(ROOT / "examples" / "mnist_calib.npz"))
    xs, labels = data["input"][: args.samples], data["label"][: args.samples]

    def accuracy(art) -> float:
        hits = sum(int(np.argmax(art.run({"input": x})["logits"])) == y for x, y in zip(xs, labels))
        return hits / len(xs)

    rows = []
    configs = [(None, False)] + [(e, False) for e in args.energies]
    configs += [(e, True) for e in args.recover]
    base_ms = None
    for i, (energy, rec) in enumerate(configs):
        cfg = None
        if energy is not None:
            cfg = LowRankConfig(
                energy=energy, multiple_of=lanes, calibration=calib if rec else None, recover=rec
            )
        art, report, secs = _compile(model, cfg, tmp / f"cnn{i}")
        ms = art.benchmark({"input": xs[0]}, repeat=args.repeat)["median_ms"]
        base_ms = base_ms or ms
        acc = accuracy(art)
        rows.append(_row("mnist_cnn", energy, rec, report, f"top-1 {100 * acc:.1f}%", ms,
                         base_ms, secs))  # fmt: skip
        if args.report and report:
            print(f"\nmnist_cnn energy={energy} recover={rec}\n{format_report(report)}")
    return rows


def bench_ffn(args, lanes: int, tmp: Path) -> list[dict]:
    model = models.transformer_block(seq=128, hidden=256, heads=4, ffn=1024)
    feeds = [models.random_inputs(model, s) for s in range(4)]
    rows, ref, base_ms = [], None, None
    for i, energy in enumerate([None, *args.energies]):
        cfg = None if energy is None else LowRankConfig(energy=energy, multiple_of=lanes)
        art, report, secs = _compile(model, cfg, tmp / f"ffn{i}")
        ms = art.benchmark(feeds[0], repeat=args.repeat)["median_ms"]
        base_ms = base_ms or ms
        outs = np.stack([art.run(f)["output"] for f in feeds])
        ref = outs if ref is None else ref
        err = float(np.linalg.norm(outs - ref) / np.linalg.norm(ref))
        rows.append(_row("transformer FFN", energy, False, report, f"rel. error {err:.3f}", ms,
                         base_ms, secs))  # fmt: skip
        if args.report and report:
            print(f"\ntransformer energy={energy}\n{format_report(report)}")
    return rows


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.WARNING)
    lanes = parse_target("host").capabilities.fp32_lanes
    m = machine()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hwcc-lowrank-") as d:
        if not args.skip_cnn:
            rows += bench_cnn(args, lanes, Path(d))
        if not args.skip_ffn:
            rows += bench_ffn(args, lanes, Path(d))
    print(f"\nLow-rank (Tucker-2 convs, SVD dense; ranks multiple of {lanes}; only layers that get"
          f" cheaper) on {machine_line(m)}\n")  # fmt: skip
    print(table(rows, COLUMNS))
    path = save_results("low_rank", rows, {
        "fp32_lanes": lanes, "columns": COLUMNS,
        "title": f"Low rank (Tucker-2 convs, SVD dense; ranks multiples of {lanes}; only layers "
                 "that get cheaper)"})
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
