"""Fit the sparse-vs-dense cost model of :mod:`passes.sparse_kernels` on this machine.

Usage: ``TVM_NUM_THREADS=1 python benchmarks/sparse_fit.py [--target TRIPLE] [--repeat 15]``

Times hwcc's dense matmul kernel and the BSR kernels (forced sparse) on one core, for two layer
shapes (768→3072 and 256→256), 1 to 512 rows, blocks 1x1 / 1x4 / 4x1 / 8x1 / 16x1 and
sparsities 50–95 %, then fits the non-negative coefficients of
:class:`passes.sparse_kernels.SparseCosts` by least squares on relative errors, prints them as
Python (to paste into ``passes/sparse_kernels.COSTS`` under the target's fp32 lanes), and
reports how often the fitted model and the old one choose wrongly at the pass's 1.25×
threshold. Results: ``benchmarks/results/sparse_fit[-<target slug>].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np
from onnx import helper
from scipy.optimize import nnls
from tvm.relax.frontend.onnx import from_onnx

from benchmarks.common import (
    add_target_argument,
    benchmark_target,
    machine,
    machine_line,
    save_results,
    time_fn,
)
from benchmarks.sparse import _model, _w
from compiler import lower
from passes import sparse_kernels as sk
from passes.canonicalize import Canonicalize
from passes.sparsify import Sparsify, SparsifyConfig, read_report

SHAPES = ((768, 3072), (256, 256))
ROWS = (1, 4, 16, 64, 128, 512)
BLOCKS = ("none", "1x4", "4x1", "8x1", "16x1")
RATIOS = (0.5, 0.7, 0.9, 0.95)
THRESHOLD = 1.25


def _block(name: str) -> tuple[int, int]:
    return (1, 1) if name == "none" else tuple(int(v) for v in name.split("x"))


def measure(target, repeat: int) -> list[dict]:
    """Dense and forced-sparse timings (one row per layer, rows, block and sparsity)."""
    import tvm
    from tvm import relax

    lanes = target.capabilities.fp32_lanes

    def timed(mod, x) -> float:
        vm = relax.VirtualMachine(lower.build(mod, target).executable, tvm.cpu())
        arg = tvm.runtime.tensor(x)
        return time_fn(lambda: vm["main"](arg), repeat=repeat, warmup=2)["min_ms"]

    rows = []
    for k, n in SHAPES:
        for m in ROWS:
            rng = np.random.default_rng(0)
            model = _model("fc", [helper.make_node("MatMul", ["x", "w1"], ["y"])],
                           [_w(rng, "w1", (k, n), k)], (m, k), (m, n))
            mod = Canonicalize()(from_onnx(model, keep_params_in_input=False))
            x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
            dense = timed(mod, x)
            for block in BLOCKS:
                for ratio in RATIOS:
                    cfg = SparsifyConfig(ratio=ratio, block=block, lanes=lanes, choice="sparse")
                    smod = Sparsify(cfg)(mod)
                    (entry,) = read_report(smod)["layers"]
                    rows.append({"m": m, "n": n, "k": k, "block": block, "ratio": ratio,
                                 "nnz_blocks": entry["nnz_blocks"], "dense_ms": dense,
                                 "sparse_ms": timed(smod, x)})
            print(f"  {k}->{n}, {m} rows: dense {dense:.4g} ms", flush=True)
    return rows


def fit(rows: list[dict], lanes: int) -> sk.SparseCosts:
    """Non-negative least squares on relative errors, dense and sparse separately."""
    dense = {(r["m"], r["n"], r["k"]): r["dense_ms"] for r in rows}
    a = np.array([sk.dense_features(m, n, k, lanes) for m, n, k in dense])
    y = np.array(list(dense.values()))
    cd, _ = nnls(a / y[:, None], np.ones_like(y))
    a2 = np.array([sk.sparse_features(r["m"], r["n"], r["k"], r["nnz_blocks"], _block(r["block"]),
                                      lanes, copy_elems=r["m"] * (r["k"] + r["n"])) for r in rows])
    y2 = np.array([r["sparse_ms"] for r in rows])
    cs, _ = nnls(a2 / y2[:, None], np.ones_like(y2))
    return sk.SparseCosts(*(float(v) for v in (*cd, *cs)))


def decisions(rows: list[dict], lanes: int, costs: sk.SparseCosts | None) -> dict:
    """How often the model's choice at :data:`THRESHOLD` differs from the measured one."""
    wrong = slower = 0
    for r in rows:
        d, s = sk.estimate_ms(r["m"], r["n"], r["k"], r["nnz_blocks"], _block(r["block"]), lanes,
                              copy_elems=r["m"] * (r["k"] + r["n"]), costs=costs)
        measured, predicted = r["dense_ms"] / r["sparse_ms"], d / s
        wrong += (measured >= THRESHOLD) != (predicted >= THRESHOLD)
        slower += predicted >= THRESHOLD and measured < 1.0
    return {"cases": len(rows), "wrong_choices": wrong, "chosen_but_slower": slower}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_argument(p)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args()
    target = benchmark_target(args.target)
    lanes = target.capabilities.fp32_lanes
    t0 = time.time()
    rows = measure(target, args.repeat)
    costs = fit(rows, lanes)
    before = decisions(rows, lanes, None)
    after = decisions(rows, lanes, costs)
    m = machine(target)
    print(f"\n{machine_line(m)}; fp32 lanes {lanes}")
    print(f"model in use: {before['wrong_choices']} of {before['cases']} choices wrong, "
          f"{before['chosen_but_slower']} sparse but slower")
    print(f"fitted:       {after['wrong_choices']} of {after['cases']} choices wrong, "
          f"{after['chosen_but_slower']} sparse but slower")
    fields = ", ".join(f"{f.name}={getattr(costs, f.name):.4g}"
                       for f in dataclasses.fields(costs))
    print(f"\n    {lanes}: SparseCosts({fields}),")
    path = save_results("sparse_fit", rows, {
        "fp32_lanes": lanes, "fitted": dataclasses.asdict(costs), "in_use": before,
        "fitted_choices": after, "seconds": round(time.time() - t0, 1), "threshold": THRESHOLD,
    }, target=target)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
