"""AArch64 int8 tensor intrinsics (``sdot``, ``smmla``): TVMScript descriptions and bodies.

Registered (lazily, under hwcc's own names) by :func:`.int8_intrin.dot_intrin`; this module
only builds the ``(desc, impl)`` pairs, so it imports nothing of the project.

* ``sdot`` (FEAT_DotProd, ``-mattr=+dotprod``; ``llvm.aarch64.neon.sdot.v4i32.v16i8``):
  ``C[4] += A[4] (s8) . B[4, 4] (s8)``: the four activation bytes are broadcast to the four
  32-bit lanes of a ``v16i8`` and one ``sdot`` adds, to each int32 lane ``i``, the four
  products ``A[k] * B[i, k]``. The weight is the packed ``[N/4, K/4, 4, 4]`` layout of the x86
  rules with ``L = 4`` (one 128-bit register). Exact (no intermediate saturation).
* ``smmla`` (FEAT_I8MM, ``-mattr=+i8mm``; ``llvm.aarch64.neon.smmla.v4i32.v16i8``):
  ``C[2, 2] += A[2, 8] (s8) . B[2, 8]^T (s8)``: a 2x8 by 8x2 matrix product accumulated into
  a 2x2 int32 tile, twice the multiply-adds of ``sdot`` per instruction. ``A`` holds two
  activation rows of eight reduction elements, ``B`` two weight columns stored as rows (the
  packed ``[N/2, K/8, 2, 8]`` layout), ``C`` the row-major 2x2 tile. All three are one
  contiguous 128-bit load each. Exact.

``scope`` is the accumulator's storage scope (``global`` or ``local``), as on x86.
"""

from __future__ import annotations

from typing import Any

SDOT_LLVM = "llvm.aarch64.neon.sdot.v4i32.v16i8"
SMMLA_LLVM = "llvm.aarch64.neon.smmla.v4i32.v16i8"
#: int32 lanes of one NEON register.
NEON_LANES = 4


def sdot_intrin(scope: str) -> tuple[Any, Any]:
    """``(desc, impl)`` of ``C[4] += A[4] . B[4, 4]`` (s8·s8 → s32) with one ``sdot``."""
    from tvm.script import tirx as T

    lanes = NEON_LANES

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            A_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            A_bytes = T.reinterpret(T.broadcast(A_i32, lanes), dtype="int8x16")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(SDOT_LLVM),
                C.vload([0], dtype="int32x4"),
                A_bytes,
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            )

    return desc, impl


def smmla_intrin(scope: str) -> tuple[Any, Any]:
    """``(desc, impl)`` of ``C[2, 2] += A[2, 8] . B[2, 8]^T`` (s8·s8 → s32), one ``smmla``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8), "int8", offset_factor=1),
        C: T.Buffer((2, 2), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            for i in T.serial(0, 2):
                for j in T.serial(0, 2):
                    for k in T.serial(0, 8):
                        with T.sblock("update"):
                            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                            C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(
                                B[vj, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8), "int8", offset_factor=1),
        C: T.Buffer((2, 2), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            C.vstore([0, 0], T.call_llvm_pure_intrin(  # the 2x2 tile is one int32x4
                T.llvm_lookup_intrinsic_id(SMMLA_LLVM),
                C.vload([0, 0], dtype="int32x4"),
                A.vload([0, 0], dtype="int8x16"),
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            ))

    return desc, impl
