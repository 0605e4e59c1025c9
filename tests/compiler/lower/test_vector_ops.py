"""isnan / nearbyint keep a loop vectorized (compiler.lower.vector_ops), with unchanged values.

TVM 0.27 scalarized every loop holding one of them; hwcc's NaN-safe casts, requantization and
fast exp/erf/sigmoid all do. Checked on the assembly of an AVX2 build of a vectorized loop
with a round and a NaN select, and on values (NaN, inf, halves) against numpy on this machine,
also through a whole Relax build with hwcc's fast sigmoid.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.lower.lowering import build
from compiler.lower.vector_ops import VECTORIZABLE
from tests import hostcpu


def _module(n: int) -> tvm.IRModule:
    """sigmoid(x) + round(x * 2.5) with NaN -> 7 (the NaN-safe select of a cast)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            r = bb.emit(relax.op.round(relax.op.multiply(x, relax.const(np.float32(2.5)))))
            r = bb.emit(relax.op.where(relax.op.isnan(r), relax.const(np.float32(7.0)), r))
            y = bb.emit(relax.op.add(relax.op.sigmoid(x), r))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()



def test_ops_are_declared_vectorizable() -> None:
    for name in VECTORIZABLE:
        assert tvm.ir.Op.get(name).get_attr("TVectorizable")


def _vectorized_loop():
    """A loop the schedules vectorized: ``select(isnan(2a), 7, round(1 / (1 + a)))``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(A: T.Buffer((8,), "float32"), B: T.Buffer((8,), "float32")):
        for i in T.vectorized(8):
            with T.sblock("b"):
                v = T.axis.spatial(8, i)
                B[v] = T.Select(T.isnan(A[v] * T.float32(2)), T.float32(7),
                                T.nearbyint(T.float32(1) / (T.float32(1) + A[v])))

    return main


def test_isnan_and_nearbyint_stay_vector_code_on_avx2() -> None:
    tgt = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                             "mattr": ["+avx2", "+fma"]})
    asm = tvm.tirx.build(tvm.IRModule({"main": _vectorized_loop()}), target=tgt
                         ).inspect_source("asm")
    for vector_op in ("vroundps", "vcmpunordps", "vdivps"):
        assert vector_op in asm, vector_op
    for scalar_op in ("vroundss", "vdivss"):
        assert scalar_op not in asm, scalar_op


def test_vectorized_loop_values_match_numpy() -> None:
    lib = tvm.tirx.build(tvm.IRModule({"main": _vectorized_loop()}),
                         target=hostcpu.host_tvm_target())
    x = np.array([0, 1, np.nan, -2, np.inf, 3, -np.inf, 0.5], np.float32)
    y = tvm.runtime.tensor(np.zeros(8, np.float32))
    lib["main"](tvm.runtime.tensor(x), y)
    with np.errstate(all="ignore"):
        want = np.where(np.isnan(x * 2), 7, np.rint(1 / (1 + x))).astype(np.float32)
    np.testing.assert_array_equal(y.numpy(), want)


def test_values_match_numpy_nan_inf_and_halves() -> None:
    x = np.array([0.0, 0.2, -0.2, 1.0, np.nan, np.inf, -np.inf, 3.0, -50.0, 50.0, 0.6, -0.6,
                  1e30, -1e30, np.nan, 2.2], np.float32)
    built = build(_module(x.size), hostcpu.host_target())
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    with np.errstate(all="ignore"):
        r = np.rint(x * np.float32(2.5))
        want = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32) + np.where(
            np.isnan(r), np.float32(7), r)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_allclose(got[~nan], want[~nan], rtol=1e-6, atol=1e-6)
