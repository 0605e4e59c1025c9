"""Kernel benchmark: TVM's default pipeline vs hwcc default schedules vs onnxruntime.

Usage: ``python benchmarks/kernels.py [--threads 2] [--peak-gflops X] [--skip-tvm-default]
[--target "x86_64-linux-gnu -mattr=+avx2,+fma"]``

Each kernel is a one-node ONNX model (weights as initializers), compiled three ways and timed
on this machine with the same thread count. ``--target`` (default ``host``: this machine's
triple and all its features) is the target both TVM builds compile for (with ``num-cores`` set
to ``--threads``); a target this machine cannot run is refused before any compile. ``--mattr
+f1,+f2`` is kept as a shorthand for ``--target "<this machine's triple> -mattr=+f1,+f2"``
(``--mattr ''``: the bare triple); giving both is an error. The table is printed under the
machine and target line (CPU, target string and features); no result file is written.

The peak used for "% peak" assumes 32 fp32 FLOP/cycle/core (two 256-bit FMA pipes, as on
Zen 4 — AVX-512 is double-pumped there) at ``--ghz`` (default 3.7, the boost clock: the 2.6 GHz
/proc/cpuinfo reports is exceeded by the measured conv throughput), unless ``--peak-gflops`` is
given. ``--kernels dense,conv1x1`` keeps the kernels whose name starts with one of the words.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    add_target_argument,
    machine,
    machine_line,
    target_from_args,
)
from targets.host import host_triple


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=None)
    p.add_argument(
        "--ghz", type=float, default=3.7, help="clock for the peak (Zen 4 boost; cpuinfo says 2.6)"
    )
    p.add_argument("--skip-tvm-default", action="store_true", help="skip the slow unscheduled runs")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternate hwcc/ort measurements, keep the best"
    )
    p.add_argument("--kernels", default="", help="comma-separated name prefixes of the kernels "
                   "to run (matmul, dense, conv3x3, dwconv3x3, conv1x1; default: all)")
    add_target_argument(p)
    p.add_argument("--mattr", default=None, help="shorthand for --target '<this machine's "
                   "triple> -mattr=MATTR' (comma-separated LLVM features, e.g. +avx2,+fma)")
    args = p.parse_args()
    if args.mattr is not None:
        if args.target != "host":
            print(f"{p.prog}: error: give --target or --mattr, not both", file=sys.stderr)
            raise SystemExit(2)
        feats = ",".join(f for f in args.mattr.split(",") if f)
        args.target = (host_triple() or "host") + (f" -mattr={feats}" if feats else "")
    args.target = target_from_args(args.target, p.prog)
    return args


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)

import numpy as np
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.relax.frontend.onnx import from_onnx

from compiler.lower.schedules import apply_default_schedules

RNG = np.random.default_rng(0)


def _model(node, inputs, output, inits):
    graph = helper.make_graph([node], "k", inputs, [output], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype("float32"), name)


def _conv(name, c, o, h, k, group=1, pad=1):
    oh = h + 2 * pad - k + 1
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, group=group)
    model = _model(
        node,
        [_vi("x", [1, c, h, h])],
        _vi("y", [1, o, oh, oh]),
        [_init("w", (o, c // group, k, k)), _init("b", (o,))],
    )
    flops = 2 * o * oh * oh * (c // group) * k * k
    return name, model, {"x": RNG.standard_normal((1, c, h, h)).astype("float32")}, flops


def cases():
    """(name, model, inputs, flops) of each benchmarked kernel."""
    mm = _model(
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        [_vi("x", [1024, 1024])],
        _vi("y", [1024, 1024]),
        [_init("w", (1024, 1024))],
    )
    dense = _model(
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
        [_vi("x", [1, 768])],
        _vi("y", [1, 3072]),
        [_init("w", (3072, 768)), _init("b", (3072,))],
    )
    return [
        (
            "matmul 1024^3",
            mm,
            {"x": RNG.standard_normal((1024, 1024)).astype("float32")},
            2 * 1024**3,
        ),
        (
            "dense 1x768x3072",
            dense,
            {"x": RNG.standard_normal((1, 768)).astype("float32")},
            2 * 768 * 3072,
        ),
        _conv("conv3x3 64->64 56x56", 64, 64, 56, 3),
        _conv("dwconv3x3 32ch 112x112", 32, 32, 112, 3, group=32),
        _conv("conv1x1 64->256 56x56", 64, 256, 56, 1, pad=0),
    ]


def _target() -> tvm.target.Target:
    """``--target`` as a TVM target, with ``--threads`` cores."""
    return tvm.target.Target({**ARGS.target.tvm_target_dict(), "num-cores": ARGS.threads})


def build_tvm(model, target, hwcc: bool):
    """Compile with the default Relax pipeline, plus hwcc default schedules when ``hwcc``."""
    mod = from_onnx(model, keep_params_in_input=False)
    if not hwcc:
        return tvm.compile(mod, target=target)
    with target:
        seq = cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)
        mod = tvm.transform.Sequential(seq)(mod)
        mod = apply_default_schedules(mod, target)
        seq = cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
        mod = tvm.transform.Sequential(seq)(mod)
    return tvm.compile(mod, target=target, relax_pipeline=None)


def time_tvm(ex, inputs, slow: bool = False) -> tuple[float, np.ndarray]:
    """Best single-run latency in ms over >= ~1 s of runs, and the output.

    The machine is shared: the minimum of single runs is the figure least disturbed by other
    load, and it is measured the same way for onnxruntime.
    """
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in inputs.values()]
    out = vm["main"](*args).numpy()
    first = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=1)(*args).mean
    if slow:
        return first * 1e3, out
    repeat = int(min(500, max(10, 1.0 / max(first, 1e-6))))
    res = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)(*args)
    return float(np.min(res.results)) * 1e3, out


def time_ort(model, inputs) -> tuple[float, np.ndarray]:
    """Best latency in ms of onnxruntime (same thread count, >= 1 s of runs), and the output."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = ARGS.threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, inputs)[0]
    times = []
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline or len(times) < 5:
        t = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t)
    return float(np.min(times)) * 1e3, out


def _peak() -> tuple[float, str]:
    if ARGS.peak_gflops:
        return ARGS.peak_gflops, "given"
    return ARGS.threads * 32 * ARGS.ghz, (
        f"{ARGS.threads} cores x 32 FLOP/cycle x {ARGS.ghz:.2f} GHz, assumed"
    )


def main() -> None:
    target = _target()
    peak, how = _peak()
    print(f"Kernels — {machine_line(machine(ARGS.target))}")
    print(f"threads={ARGS.threads} tvm={tvm.__version__} ort={ort.__version__}")
    print(f"peak {peak:.0f} GFLOP/s ({how})")
    header = (
        f"{'kernel':26s} {'tvm-default':>12s} {'hwcc':>9s} {'ort':>9s} "
        f"{'default/hwcc':>12s} {'ort/hwcc':>9s} {'hwcc GF/s':>9s} {'%peak':>6s} {'maxerr':>8s}"
    )
    print(header)
    print("-" * len(header))
    only = tuple(k for k in ARGS.kernels.split(",") if k)
    for name, model, inputs, flops in cases():
        if only and not name.startswith(only):
            continue
        ex = build_tvm(model, target, hwcc=True)
        t_ort = t_hw = float("inf")
        for _ in range(max(1, ARGS.rounds)):  # alternate, so both see the same load phases
            t, ref = time_ort(model, inputs)
            t_ort = min(t_ort, t)
            t, out = time_tvm(ex, inputs)
            t_hw = min(t_hw, t)
        err = float(np.abs(out - ref).max())
        if ARGS.skip_tvm_default:
            t_def = float("nan")
        else:
            t_def, _ = time_tvm(build_tvm(model, target, hwcc=False), inputs, slow=True)
        gf = flops / t_hw / 1e6
        print(
            f"{name:26s} {t_def:10.2f}ms {t_hw:7.3f}ms {t_ort:7.3f}ms {t_def / t_hw:11.1f}x "
            f"{t_ort / t_hw:8.2f}x {gf:9.1f} {100 * gf / peak:5.0f}% {err:8.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
