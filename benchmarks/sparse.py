"""Sparse kernels vs hwcc's dense kernels, per block shape and sparsity, on this machine.

Usage: ``python benchmarks/sparse.py [--target TRIPLE] [--ratios 0.5,0.7,0.9,0.95]
[--blocks none,1x4,4x1,8x1,16x1,2:4] [--rows 1,16,128] [--skip-models] [--repeat 15]``

Workloads (seeded random weights; pruning by magnitude; no accuracy is measured here):

- **kernel** rows: one layer, dense (hwcc's default dense schedule: ``compiler.lower`` with
  ``compiler.lower.schedules``) vs the same pruned layer forced to the BSR kernel of
  :mod:`passes.sparse_kernels` (including the layout copies around it):
  ``mlp-fc1`` — a transformer MLP's first layer, 128 rows × 768 → 3072;
  ``conv1x1`` — a 1×1 conv 256 → 256 on 28×28 (batch 1, NCHW).
- **rows** rows: the same 768 → 3072 layer on 1, 16 and 128 rows (``--rows``), 90 % sparsity in
  4×1 and 8×1 blocks (``--row-blocks``): batch-1 decoding, a small batch, a sequence. One row
  and a few go through the kernel that vectorises the block's rows
  (:func:`passes.sparse_kernels.across_block_rows`).
- **model** rows: whole models compiled dense vs with :class:`passes.sparsify.Sparsify` at
  its default ``choice="auto"`` (the cost model decides per layer, as ``hwcc compile`` does):
  ``transformer-mlp`` — (128, 768) → MatMul 768×3072 + bias → GELU (Erf) → MatMul 3072×768
  + bias; ``conv1x1-stack`` — (1, 256, 14, 14) → 1×1 conv 256→1024 + ReLU → 1×1 conv
  1024→256 + ReLU.

N:M patterns have a fixed sparsity (2:4 = 50%) and are measured once. Times are the minimum
of ``--repeat`` calls (the machine is shared; the minimum is the least disturbed figure), dense
and sparse measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from benchmarks.common import (
    add_target_argument,
    benchmark_target,
    machine,
    machine_line,
    save_results,
    table,
    time_fn,
)
from compiler import lower
from passes.canonicalize import Canonicalize
from passes.sparsify import Sparsify, SparsifyConfig, parse_pattern, read_report
from targets import parse_target

COLUMNS = [
    ("level", "level"),
    ("workload", "workload"),
    ("block", "block"),
    ("sparsity", "sparsity"),
    ("dense_ms", "dense ms"),
    ("sparse_ms", "sparse ms"),
    ("speedup", "speed-up"),
    ("sparse_layers", "layers sparse"),
]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=_floats, default=[0.5, 0.7, 0.9, 0.95])
    p.add_argument("--blocks", default="none,1x4,4x1,8x1,16x1,2:4")
    p.add_argument("--rows", default="1,16,128", help="rows of the 'rows' level (empty: skip)")
    p.add_argument("--row-blocks", default="4x1,8x1")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--name", default="sparse", help="results file benchmarks/results/NAME.json")
    add_target_argument(p)
    return p.parse_args()


def _model(name: str, nodes: list, inits: list, x_shape: tuple, y_shape: tuple) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _w(rng: np.random.Generator, name: str, shape: tuple, fan_in: int) -> onnx.TensorProto:
    arr = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return numpy_helper.from_array(arr, name)


def mlp_fc1(seed: int = 0, rows: int = 128) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"])]
    return _model("mlp_fc1", nodes, [_w(rng, "w1", (768, 3072), 768)], (rows, 768), (rows, 3072))


def transformer_mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))
    ]
    inits = [
        _w(rng, "w1", (768, 3072), 768),
        numpy_helper.from_array(np.zeros(3072, np.float32) + 0.01, "b1"),
        _w(rng, "w2", (3072, 768), 3072),
        numpy_helper.from_array(np.zeros(768, np.float32) + 0.01, "b2"),
        *c,
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["hd"]),
        helper.make_node("Erf", ["hd"], ["he"]),
        helper.make_node("Add", ["he", "one"], ["hp"]),
        helper.make_node("Mul", ["h", "hp"], ["hm"]),
        helper.make_node("Mul", ["hm", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["y"]),
    ]
    return _model("transformer_mlp", nodes, inits, (128, 768), (128, 768))


def conv1x1(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    inits = [_w(rng, "w", (256, 256, 1, 1), 256)]
    return _model("conv1x1", nodes, inits, (1, 256, 28, 28), (1, 256, 28, 28))


def conv1x1_stack(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "w1", (1024, 256, 1, 1), 256), _w(rng, "w2", (256, 1024, 1, 1), 1024)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    return _model("conv1x1_stack", nodes, inits, (1, 256, 14, 14), (1, 256, 14, 14))


TARGET = parse_target("host")


def _time(mod: tvm.IRModule, x: np.ndarray, repeat: int) -> float:
    ex = lower.build(mod, TARGET).executable
    vm = relax.VirtualMachine(ex, tvm.cpu())
    arg = tvm.runtime.tensor(x)
    return time_fn(lambda: vm["main"](arg), repeat=repeat, warmup=2)["min_ms"]


def _run(
    level: str,
    name: str,
    model: onnx.ModelProto,
    blocks: list[str],
    ratios: list[float],
    repeat: int,
    lanes: int,
) -> list[dict]:
    mod = Canonicalize()(from_onnx(model, keep_params_in_input=False))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    dense_ms = _time(mod, x, repeat)
    print(f"{level} {name}: dense {dense_ms:.3f} ms", flush=True)
    rows = []
    choice = "auto" if level == "model" else "sparse"
    for block in blocks:
        nm = parse_pattern(block).kind == "nm"
        for ratio in ratios[:1] if nm else ratios:
            cfg = SparsifyConfig(ratio=ratio, block=block, lanes=lanes, choice=choice)
            smod = Sparsify(cfg)(mod)
            rep = read_report(smod)
            sparse_ms = _time(smod, x, repeat)
            n_layers = sum(e["choice"] != "skipped" for e in rep["layers"])
            sparsity = 1 - float(np.mean([e["density"] for e in rep["layers"] if "density" in e]))
            row = {
                "level": level,
                "workload": name,
                "block": block,
                "sparsity": round(sparsity, 3),
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": dense_ms / sparse_ms,
                "sparse_layers": f"{len(rep['sparse_layers'])}/{n_layers}",
            }
            rows.append(row)
            print(
                f"  {block} {sparsity:.2f}: {sparse_ms:.3f} ms ({row['speedup']:.2f}x, "
                f"sparse {row['sparse_layers']})",
                flush=True,
            )
    return rows


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    global TARGET
    args = _parse()
    TARGET = benchmark_target(args.target)
    lanes = TARGET.capabilities.fp32_lanes
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    t0 = time.time()
    rows: list[dict] = []
    if not args.skip_kernels:
        rows += _run(
            "kernel", "mlp-fc1 128x768x3072", mlp_fc1(), blocks, args.ratios, args.repeat, lanes
        )
        rows += _run(
            "kernel", "conv1x1 256->256 @28x28", conv1x1(), blocks, args.ratios, args.repeat, lanes
        )
    row_blocks = [b.strip() for b in args.row_blocks.split(",") if b.strip()]
    for m in (int(v) for v in args.rows.split(",") if v.strip()):
        rows += _run("rows", f"fc {m}x768x3072", mlp_fc1(rows=m), row_blocks, [0.9], args.repeat,
                     lanes)
    if not args.skip_models:
        rows += _run(
            "model",
            "transformer-mlp 128x768x3072x768",
            transformer_mlp(),
            blocks,
            args.ratios,
            args.repeat,
            lanes,
        )
        rows += _run(
            "model",
            "conv1x1-stack 256-1024-256 @14x14",
            conv1x1_stack(),
            blocks,
            args.ratios,
            args.repeat,
            lanes,
        )
    m = machine(TARGET)
    title = (
        f"Sparse vs dense (hwcc default dense schedule), min of {args.repeat} runs; "
        f"{machine_line(m)}"
    )
    print()
    print(title)
    print(table(rows, COLUMNS))
    path = save_results(
        args.name,
        rows,
        {
            "columns": COLUMNS,
            "title": title,
            "fp32_lanes": lanes,
            "seconds": round(time.time() - t0, 1),
        },
        target=TARGET,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
