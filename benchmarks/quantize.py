"""int8 latency and accuracy: hwcc fp32 vs hwcc int8 vs onnxruntime fp32 vs onnxruntime int8.

    python benchmarks/quantize.py [--models digits_cnn,mnist_cnn,resnet18,bert] [--repeat 20]
                                  [--target "x86_64-linux-gnu -mattr=+avx2,+fma"]

hwcc int8 is ``canonicalize`` + ``quantize`` (static, minmax, uint8 activations / int8
per-channel weights, calibrated on the model's calibration set); onnxruntime int8 is the QDQ
per-channel model from ``onnxruntime.quantization.quantize_static`` on the same calibration
samples (after ``quant_pre_process``). For the trained example CNNs the table also gives top-1
accuracy on their held-out data for all four; for the synthetic zoo models (random weights,
random calibration inputs; token ids for integer inputs) only latency and the int8 vs fp32
relative error. On CPUs with AVX-512 VNNI the int8 convs/matmuls run on hwcc's tensorized
``vpdpbusd`` kernels (``compiler/schedules/int8_*.py``); ``hwcc int8 speed-up`` is hwcc fp32 /
hwcc int8 latency.

``--target`` (default ``host``: this machine's triple and all its features) picks the ISA both
hwcc columns are compiled for, and so the int8 scheme (``vpdpbusd`` with AVX-512 VNNI;
``vpmaddubsw`` and 7-bit weights with AVX2 alone); a target this machine cannot run is refused
before any compile.
Results go to ``benchmarks/results/quantize.json`` for the host target and to
``quantize-<slug>.json`` for any other (``quantize-avx2-fma.json`` for the example above; the
slug scheme is in ``benchmarks/common.py``), each recording the target and the machine.
onnxruntime picks its kernels from this CPU's features whatever the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
from common import (
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
from compiler.pipeline import PassSpec
from passes.quantize import quantize_config_from_args
from targets import Target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
COLUMNS = [
    ("model", "model"),
    ("hwcc_fp32_ms", "hwcc fp32 (ms)"),
    ("hwcc_int8_ms", "hwcc int8 (ms)"),
    ("ort_fp32_ms", "ORT fp32 (ms)"),
    ("ort_int8_ms", "ORT int8 QDQ (ms)"),
    ("hwcc_speedup", "hwcc int8 speed-up"),
    ("acc_fp32", "top-1 fp32"),
    ("acc_hwcc_int8", "top-1 hwcc int8"),
    ("acc_ort_int8", "top-1 ORT int8"),
    ("int8_rel_error", "hwcc int8 rel. error"),
]


def _data(name: str, path: Path, n_calib: int):
    """(calibration dict, eval inputs, labels or None) for a model."""
    if (EXAMPLES / f"{name}.onnx").exists():
        stem = name.split("_")[0]
        calib = dict(np.load(EXAMPLES / f"{stem}_calib.npz"))
        data = np.load(EXAMPLES / f"{stem}_data.npz")
        return {k: v[:n_calib] for k, v in calib.items()}, data["input"], data["label"]
    import onnx

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    calib = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            dtype = np.int64 if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64 else np.int32
            # token ids (BERT): small enough for any vocabulary of the zoo models
            calib[vi.name] = rng.integers(0, 1000, size=(n_calib, *shape)).astype(dtype)
        else:
            calib[vi.name] = rng.standard_normal((n_calib, *shape)).astype(np.float32)
    first = next(iter(calib))
    return calib, calib[first][:2], None


def _ort_int8(path: Path, calib: dict[str, np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out / "pre.onnx"
    quant_pre_process(str(path), str(pre))
    n = next(iter(calib.values())).shape[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{k: v[i] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    q = out / "int8.onnx"
    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return q


def bench(name: str, repeat: int, n_calib: int, work: Path, target: Target) -> dict:
    path = EXAMPLES / f"{name}.onnx"
    if not path.exists():
        path = model_zoo.get(name)
    calib, xs, labels = _data(name, path, n_calib)
    in_name = next(iter(calib))
    row: dict = {"model": name}
    # the same int8 scheme `hwcc compile --quantize int8 --target ...` picks for the target
    caps = target.capabilities
    fp32 = compiler.compile(path, target, passes=[PassSpec("canonicalize")], tuning_log=False,
                            verify=False, output_dir=work / f"{name}_fp32")
    int8 = compiler.compile(
        path, target, tuning_log=False, verify=False, output_dir=work / f"{name}_int8",
        passes=[PassSpec("canonicalize"),
                PassSpec("quantize", dataclasses.replace(quantize_config_from_args(
                    "int8", calib, "minmax", caps), measure=False))],
    )
    ort_f = ort_session(path)
    ort_q = ort_session(_ort_int8(path, calib, work))
    feed = {in_name: xs[0]}
    row["hwcc_fp32_ms"] = time_fn(lambda: fp32.run(feed), repeat)["median_ms"]
    row["hwcc_int8_ms"] = time_fn(lambda: int8.run(feed), repeat)["median_ms"]
    row["ort_fp32_ms"] = time_fn(lambda: ort_f.run(None, feed), repeat)["median_ms"]
    row["ort_int8_ms"] = time_fn(lambda: ort_q.run(None, feed), repeat)["median_ms"]
    row["hwcc_speedup"] = round(row["hwcc_fp32_ms"] / row["hwcc_int8_ms"], 2)
    outs = {k: [] for k in ("fp32", "int8", "ort8")}
    for x in xs:
        f = {in_name: x}
        outs["fp32"].append(next(iter(fp32.run(f).values())))
        outs["int8"].append(next(iter(int8.run(f).values())))
        outs["ort8"].append(ort_q.run(None, f)[0])
    o = {k: np.stack(v) for k, v in outs.items()}
    row["int8_rel_error"] = float(np.linalg.norm(o["int8"] - o["fp32"]) / np.linalg.norm(o["fp32"]))
    if labels is not None:
        for key, k in (("acc_fp32", "fp32"), ("acc_hwcc_int8", "int8"), ("acc_ort_int8", "ort8")):
            row[key] = float(np.mean(o[k].reshape(len(labels), -1).argmax(-1) == labels))
    row["int8_kernels"] = int8.manifest["kernels"]
    logging.getLogger(__name__).info("%s: %s", name, row)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_cnn,mnist_cnn,resnet18,mobilenet_v2,bert")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--calib", type=int, default=16, help="calibration samples")
    add_target_argument(ap)
    args = ap.parse_args()
    target = target_from_args(args.target, ap.prog)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwcc-bench-q-") as d:
        for name in args.models.split(","):
            sub = Path(d) / name
            sub.mkdir()
            rows.append(bench(name, args.repeat, args.calib, sub, target))
    m = machine(target)
    title = "int8: hwcc vs onnxruntime (batch 1, median latency)"
    path = save_results("quantize", rows, {"columns": COLUMNS, "title": title,
                                           **target_extra("benchmarks/quantize.py", target)},
                        target)
    print(f"## {title}\n\n{machine_line(m)}\n\n{table(rows, COLUMNS)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
