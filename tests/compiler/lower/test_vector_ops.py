"""isnan / nearbyint keep a loop vectorized (compiler.lower.vector_ops), with unchanged values.

TVM 0.27 scalarized every loop holding one of them; hwcc's NaN-safe casts, requantization and
fast exp/erf/sigmoid all do. Checked on the assembly of an AVX2 build of the sigmoid hwcc
emits and of a round + NaN select, and on values (NaN, inf, halves) against numpy on this
machine.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.lower.lowering import build
from compiler.lower.vector_ops import VECTORIZABLE
from targets import parse_target
from tests import hostcpu

AVX2 = "x86_64-linux-gnu -mattr=+avx2,+fma"


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


def _kernels_asm(executable) -> str:
    asm = executable.mod.imports[0].inspect_source("asm")
    return asm[asm.find("fused_"):]


def test_ops_are_declared_vectorizable() -> None:
    for name in VECTORIZABLE:
        assert tvm.ir.Op.get(name).get_attr("TVectorizable")


def test_round_isnan_and_sigmoid_compile_to_vector_code_on_avx2() -> None:
    asm = _kernels_asm(build(_module(256), parse_target(AVX2)).executable)
    for vector_op in ("vroundps", "vcmpunordps", "vdivps"):
        assert vector_op in asm, vector_op
    for scalar_op in ("vroundss", "vdivss", "vfmadd213ss"):
        assert scalar_op not in asm, scalar_op


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
