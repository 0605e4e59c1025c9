"""A ``Select`` picking a 0-d tensor element keeps its loop vectorized (select_scalars).

The NaN-safe conversions end in ``where(isnan(r), zp, r)`` with ``zp`` a Relax scalar constant,
a 0-d kernel parameter after legalization; TVM's vectorizer scalarized such loops (BERT's int8
GELU epilogue). Checked on the assembly an AVX2 build emits, and on the values (NaN included)
against numpy, run on this machine's own target.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax

from compiler.lower.lowering import build
from compiler.lower.schedules.select_scalars import hoist_scalar_select_operands
from targets import parse_target
from tests import hostcpu


def _module(n: int = 256) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            r = bb.emit(relax.op.multiply(x, relax.const(np.float32(3.0))))
            r = bb.emit(relax.op.divide(r, relax.const(np.float32(0.7))))
            y = bb.emit(relax.op.where(relax.op.isnan(r), relax.const(np.float32(5.0)), r))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _kernel_asm(asm: str) -> str:
    """The assembly of the fused kernels (not the FFI wrappers)."""
    chunks = re.split(r"\n(?=[A-Za-z_][\w.]*:\n)", asm)
    return "\n".join(c for c in chunks if c.startswith("fused_"))


def test_select_of_a_scalar_constant_is_vectorized_on_avx2() -> None:
    built = build(_module(), parse_target("x86_64-linux-gnu -mattr=+avx2,+fma"))
    asm = _kernel_asm(built.executable.mod.imports[0].inspect_source("asm"))
    assert "vdivps" in asm or "vmulps" in asm, asm[:2000]
    assert "vdivss" not in asm and "vmulss" not in asm


def test_values_unchanged_nan_included() -> None:
    target = hostcpu.host_target()
    built = build(_module(8), parse_target(target))
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    x = np.array([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e30, 7.0], np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    r = x * np.float32(3.0) / np.float32(0.7)
    np.testing.assert_array_equal(got, np.where(np.isnan(r), np.float32(5.0), r))


def test_rewrite_binds_the_scalar_once_and_leaves_other_functions_alone() -> None:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def plain(A: T.Buffer((8,), "float32"), B: T.Buffer((8,), "float32")):
        for i in range(8):
            with T.sblock("b"):
                v = T.axis.spatial(8, i)
                B[v] = T.Select(T.isnan(A[v]), T.float32(0), A[v])

    assert hoist_scalar_select_operands(plain) is plain
