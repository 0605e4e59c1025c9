"""The embedded target: cycles with default and tuned tiles, MAC-array roofline, memory.

Usage: ``python benchmarks/embedded.py [--trials 200] [--configs "embedded,embedded -mac=8x8
-spad=64 -acc=16 -dma=8"]``

For each accelerator configuration and model — the trained digits and MNIST CNNs
(``examples/``, top-1 on their packaged held-out data, int8 on the simulator against the
float model in onnxruntime) and a ResNet-style CNN with residual adds and a projection
shortcut (``tests.models.resnet_block_cnn``, random weights: no accuracy) — the model is
compiled with ``--quantize int8`` and its packaged calibration data (random inputs for the
ResNet-style CNN) twice: with the default tiles, and with tiles tuned against the simulator
in this run (``hwcc tune``'s search, into a fresh log folder). Cycles, DMA bytes and the MAC
array's utilization (real MACs / (R·C · cycles)) come from the simulator, over the layers on
the MAC array (the residual adds, pooling and layout steps run on the host core and are not
counted in cycles). Arena and weight bytes are what the generated C allocates.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import compiler
from benchmarks.common import ROOT, machine, machine_line, save_results, table
from compiler.api import tune_embedded
from compiler.pipeline import CompressionOptions
from targets import parse_target
from tests import models

COLUMNS = [
    ("model", "model"),
    ("array", "MAC array"),
    ("default_cycles", "cycles (default tiles)"),
    ("tuned_cycles", "cycles (tuned)"),
    ("speedup", "tuned speed-up"),
    ("conv_util_default", "conv % roofline (default)"),
    ("conv_util_tuned", "conv % roofline (tuned)"),
    ("dma_kib", "DMA KiB (tuned)"),
    ("arena_bytes", "arena bytes"),
    ("weight_bytes", "weight bytes"),
    ("top1_float", "top-1 float"),
    ("top1_int8", "top-1 int8 (simulator)"),
]
CONFIGS = "embedded,embedded -mac=8x8 -spad=64 -acc=16 -dma=8"


def _models(tmp: Path) -> list[tuple[str, Path, dict[str, np.ndarray], Path | None]]:
    ex = ROOT / "examples"
    resnet = tmp / "resnet_block_cnn.onnx"
    import onnx

    onnx.save(models.resnet_block_cnn(seed=0), resnet)
    rng = np.random.default_rng(0)
    calib = {"input": rng.random((32, 1, 3, 32, 32), dtype=np.float32)}
    return [("digits_cnn", ex / "digits_cnn.onnx", dict(np.load(ex / "digits_calib.npz")),
             ex / "digits_data.npz"),
            ("mnist_cnn", ex / "mnist_cnn.onnx", dict(np.load(ex / "mnist_calib.npz")),
             ex / "mnist_data.npz"),
            ("resnet_block_cnn (random weights)", resnet, calib, None)]


def _top1(art: object, model: Path, data: Path) -> tuple[float, float]:
    from benchmarks.common import ort_session

    d = np.load(data)
    x, y = d["input"], d["label"]
    sess = ort_session(model)
    name = sess.get_inputs()[0].name
    f_hits = q_hits = 0
    for xi, yi in zip(x, y):
        f_hits += int(np.argmax(sess.run(None, {name: xi})[0]) == yi)
        q_hits += int(np.argmax(art.run({name: xi})[art.outputs[0].name]) == yi)
    return 100.0 * f_hits / len(y), 100.0 * q_hits / len(y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="tiles tried per layer")
    ap.add_argument("--configs", default=CONFIGS,
                    help="comma-separated embedded targets (default: %(default)s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwcc-bench-embedded-") as tmpdir:
        tmp = Path(tmpdir)
        for spec in [c.strip() for c in args.configs.split(",") if c.strip()]:
            tgt = parse_target(spec)
            acc = tgt.accelerator
            for name, path, calib, data in _models(tmp):
                opts = CompressionOptions(quantize="int8", calibration=calib)
                out = tmp / f"{name.split()[0]}-{acc.name}"
                default = compiler.compile(path, tgt, output_dir=out / "default",
                                           compression=opts, tuning_log=False, verify=False)
                d_sim = default.simulate()
                logs = tmp / "logs" / acc.name
                tune_embedded(path, tgt, trials=args.trials, log_dir=logs)
                tuned = compiler.compile(path, tgt, output_dir=out / "tuned", compression=opts,
                                         tuning_log=logs / "embedded" / acc.name, verify=False)
                t_sim = tuned.simulate()
                e = tuned.manifest["embedded"]
                row = {"model": name, "array": f"{acc.rows}x{acc.cols}",
                       "default_cycles": d_sim["cycles"], "tuned_cycles": t_sim["cycles"],
                       "speedup": d_sim["cycles"] / t_sim["cycles"],
                       "conv_util_default": 100 * d_sim["conv_utilization"],
                       "conv_util_tuned": 100 * t_sim["conv_utilization"],
                       "dma_kib": (t_sim["dma_load_bytes"] + t_sim["dma_store_bytes"]) / 1024,
                       "arena_bytes": e["arena_bytes"], "weight_bytes": e["weight_bytes"],
                       "tuned_layers": e["tuned_layers"], "target": str(tgt)}
                if data is not None:
                    row["top1_float"], row["top1_int8"] = _top1(tuned, path, data)
                rows.append(row)
                print(f"{name:<36} {row['array']:>6}  {row['default_cycles']:>9,} -> "
                      f"{row['tuned_cycles']:>9,} cycles  conv {row['conv_util_tuned']:.1f}% "
                      f"of roofline", flush=True)
    m = machine()
    m["target"] = "embedded (simulated): " + "; ".join(sorted({r["target"] for r in rows}))
    path = save_results("embedded", rows, {
        "machine": m, "title": "Embedded target: simulated cycles, MAC-array roofline, memory",
        "columns": COLUMNS, "script": "benchmarks/embedded.py",
        "notes": ["Cycles from the simulator (deterministic). 'Default' tiles: hwcc's "
                  "heuristic; 'tuned': the best of up to "
                  f"{args.trials} tiles per layer measured on the simulator. % roofline = real "
                  "MACs / (R·C · cycles) over the layers on the MAC array (residual adds, "
                  "pooling and layout run on the host core, not counted). Top-1 on the "
                  "packaged held-out data "
                  "(360 digits, 1000 MNIST), int8 run through the generated C on the simulator."]})
    print(f"\n{machine_line(m)}\n\n{table(rows, COLUMNS)}\n\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
