"""Whole-model latency: TVM's default pipeline, hwcc untuned, hwcc tuned, onnxruntime.

    python benchmarks/models.py [--models resnet18,mobilenet_v2,bert] [--repeat 20]
                                [--target "x86_64-linux-gnu -mattr=+avx2,+fma"]

``--target`` (default ``host``: this machine's triple and all its features) picks the ISA every
column but onnxruntime is compiled for; a target this machine cannot run is refused before any
compile. Results go to ``benchmarks/results/models.json`` for the host target and to
``models-<slug>.json`` for any other (``models-avx2-fma.json`` for the example above; the slug
scheme is in ``benchmarks/common.py``), each recording the target and the machine.
onnxruntime picks its kernels from this CPU's features whatever the target.

ResNet-18, MobileNetV2 and a 4-layer BERT (hidden 256, sequence 128) at batch 1, built by
``benchmarks/model_zoo.py``; the example models of ``examples/`` (``digits_cnn``, ``mnist_cnn``)
by name too (the quickest run: ``--models digits_cnn``). "hwcc tuned" uses the records in ``tuning_logs/`` for the
target when there are any (``hwcc tune`` makes them) and is left out otherwise;
with the model tuned but no kernel kept (no record beat the defaults) it is the same module.
hwcc untuned, hwcc tuned and onnxruntime are timed in alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from common import (
    RESULTS,
    add_target_argument,
    machine,
    machine_line,
    ort_session,
    save_results,
    table,
    target_extra,
    target_from_args,
    time_fn,
)

import compiler
from benchmarks import model_zoo
from compiler.tuning.database import target_key
from targets import Target


def _inputs(art: compiler.Artifact) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for s in art.inputs:
        if np.dtype(s.dtype).kind == "f":
            out[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        else:
            out[s.name] = rng.integers(0, 1000, s.shape).astype(s.dtype)
    return out


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Alternating timing rounds per model (hwcc untuned, tuned and onnxruntime in turn).
ROUNDS = 5


def tuning_trials(name: str, target: Target) -> int | None:
    """Trials in ``tuning_logs/`` for model ``name`` on ``target``, as ``benchmarks/tuning.py``
    last reported them (None when it has not tuned this model for this target into the
    shipped logs)."""
    path = RESULTS / "tuning.json"
    if not path.exists():
        return None
    for row in json.loads(path.read_text()).get("rows", []):
        log_dir = str(row.get("log_dir") or "")
        if (row.get("model") == name and log_dir.startswith("tuning_logs")
                and Path(log_dir).name == target_key(target)):
            return row.get("trials")
    return None


def tvm_default_ms(model_path: Path, feeds: dict[str, np.ndarray], repeat: int,
                   target: Target) -> float:
    """TVM 0.27's own pipeline: ``from_onnx`` + ``tvm.compile`` for the same llvm target."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(model_path)), keep_params_in_input=False)
    ex = tvm.compile(mod, target=target.tvm_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in feeds.values()]
    return time_fn(lambda: vm["main"](*args), repeat=repeat, warmup=1, max_seconds=15)["median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(model_zoo.MODELS))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--skip-tvm-default", action="store_true",
                    help="skip TVM's default pipeline (seconds per run on big models)")
    add_target_argument(ap)
    args = ap.parse_args()
    target = target_from_args(args.target, ap.prog)
    per_round = max(4, args.repeat // ROUNDS)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.models.split(","):
        path = EXAMPLES / f"{name}.onnx"
        if not path.exists():
            path = model_zoo.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            untuned = compiler.compile(path, target, output_dir=Path(tmp) / "u", verify=False,
                                       tuning_log=False)
            feeds = _inputs(untuned)
            row = {"model": name}
            tuned = compiler.compile(path, target, output_dir=Path(tmp) / "t", verify=False)
            k = tuned.manifest["kernels"]
            row["tuned_kernels"] = f"{k['tuned']}/{k['kernels']}"
            row["tuning_trials"] = tuning_trials(name, target)
            sess = ort_session(path)
            timers = {
                "hwcc_untuned_ms": lambda a=untuned, f=feeds: a.benchmark(
                    f, repeat=per_round)["median_ms"],
                "onnxruntime_ms": lambda s=sess, f=feeds: time_fn(
                    lambda: s.run(None, f), repeat=per_round)["median_ms"],
            }
            if k["tuned"] or row["tuning_trials"]:  # with no kernel kept: the same module
                timers["hwcc_tuned_ms"] = lambda a=tuned, f=feeds: a.benchmark(
                    f, repeat=per_round)["median_ms"]
            # rounds in alternation, median of the round medians: drift in the machine's load
            # during the run biases no column
            runs: dict[str, list[float]] = {key: [] for key in timers}
            for _ in range(ROUNDS):
                for key, timer in timers.items():
                    runs[key].append(timer())
            row.update({key: float(np.median(v)) for key, v in runs.items()})
            if not args.skip_tvm_default:
                row["tvm_default_ms"] = tvm_default_ms(path, feeds, repeat=3, target=target)
        row["untuned_vs_ort"] = row["hwcc_untuned_ms"] / row["onnxruntime_ms"]
        if "hwcc_tuned_ms" in row:
            row["tuned_vs_ort"] = row["hwcc_tuned_ms"] / row["onnxruntime_ms"]
        if "tvm_default_ms" in row:
            row["speedup_vs_tvm_default"] = row["tvm_default_ms"] / row["hwcc_untuned_ms"]
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    cols = [("model", "model"), ("tvm_default_ms", "TVM default (ms)"),
            ("hwcc_untuned_ms", "hwcc untuned (ms)"), ("hwcc_tuned_ms", "hwcc tuned (ms)"),
            ("tuned_kernels", "tuned kernels"), ("tuning_trials", "tuning trials"), ("onnxruntime_ms", "onnxruntime (ms)"),
            ("untuned_vs_ort", "untuned / ORT"), ("tuned_vs_ort", "tuned / ORT"),
            ("speedup_vs_tvm_default", "speed-up vs TVM default")]
    m = machine(target)
    print(f"\nWhole models, batch 1 — {machine_line(m)}\n")
    print(table(rows, cols))
    extra = {"columns": cols, "title": "Whole models, batch 1 (latency, lower is better)",
             **target_extra("benchmarks/models.py", target)}
    print(f"\nwrote {save_results('models', rows, extra, target)}")


if __name__ == "__main__":
    main()
