"""Dump the scheduled TIR of the benchmark zoo and the bundled examples, one file a model.

Used to check that a refactoring changes no kernel: run it before and after, then
``diff -r BEFORE AFTER`` (or compare the ``hashes.json`` files). Each model is imported,
compressed where the variant says so, legalized, fused and scheduled (hwcc's default
schedules, no tuning records) for each target below; the module is printed as TVMScript.

    python scripts/dump_tir.py out/tir_before [--models resnet18,digits_cnn]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import model_zoo  # noqa: E402

from compiler import frontend, lower  # noqa: E402
from compiler.pipeline import build_passes  # noqa: E402
from compiler.pipeline import run_passes  # noqa: E402
from targets import parse_target  # noqa: E402

TARGETS = {
    "avx512": "x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq,"
              "+avx512vnni -cores=2",
    "avx2": "x86_64-linux-gnu -mattr=+avx2,+fma -cores=2",
}
EXAMPLES = ROOT / "examples"


def _calib(name: str) -> dict[str, np.ndarray]:
    data = np.load(EXAMPLES / f"{name}_calib.npz")
    return {k: data[k][:16] for k in data.files}


def variants() -> dict[str, tuple[Path, dict]]:
    """name -> (model path, build_passes keywords)."""
    out: dict[str, tuple[Path, dict]] = {m: (model_zoo.get(m), {}) for m in model_zoo.MODELS}
    for ex in ("digits", "mnist"):
        path = EXAMPLES / f"{ex}_cnn.onnx"
        out[f"{ex}_cnn"] = (path, {})
        out[f"{ex}_cnn_int8"] = (path, {"quantize": "int8", "calibration": _calib(ex)})
    out["mnist_cnn_prune"] = (EXAMPLES / "mnist_cnn.onnx", {"prune": 0.5})
    return out


def scheduled_tir(path: Path, target_str: str, options: dict) -> str:
    tgt = parse_target(target_str)
    mod = frontend.load_model(str(path)).mod
    specs = build_passes(lanes=tgt.capabilities.fp32_lanes, capabilities=tgt.capabilities,
                         **options)
    if specs:
        mod, _ = run_passes(mod, specs)
    scheduled, _ = lower.lower_cpu(mod, tgt, None, finalize=False)
    return scheduled.script(show_meta=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="directory for <model>.<target>.py and hashes.json")
    ap.add_argument("--models", help="comma-separated subset of the variants")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = variants()
    if args.models:
        chosen = {k: v for k, v in chosen.items() if k in args.models.split(",")}
    hashes = {}
    for name, (path, options) in chosen.items():
        for tname, tstr in TARGETS.items():
            text = scheduled_tir(path, tstr, options)
            (out / f"{name}.{tname}.py").write_text(text)
            hashes[f"{name}.{tname}"] = hashlib.sha256(text.encode()).hexdigest()
            print(f"{name:20s} {tname:7s} {hashes[f'{name}.{tname}'][:16]}", flush=True)
    (out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
