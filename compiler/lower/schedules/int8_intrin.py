"""Integer dot-product tensor intrinsics for the int8 CPU rules, registered lazily.

``tvm.s_tir.tensor_intrin`` registers TVM's x86 VNNI intrinsic, but importing it parses every
intrinsic of every target with TVMScript (~45 s here: the parser's ``inspect`` calls scan all of
``sys.modules``). The int8 rules need only a few, so they are defined here (copied from
``tvm/s_tir/tensor_intrin/x86.py``) and parsed on first use, with ``inspect.getmodule``
memoised (:func:`compiler.tuning.tune.fast_tvmscript_import`): well under a second.

Intrinsics (names are hwcc's own, so that importing TVM's registry later does not clash):

* ``hwcc_vnni_16x4_<scope>``: ``C[16] += A[4] (u8) . B[16, 4] (s8)`` with one ``vpdpbusd``
  (``llvm.x86.avx512.vpdpbusd.512``), TVM's ``dot_16x4_vnni``.
* ``hwcc_avx2_8x4_<scope>``: ``C[8] += A[4] (u8) . B[8, 4] (s8)`` with ``vpmaddubsw`` (u8×s8
  pairs summed into int16, **saturating**) then ``vpmaddwd`` against int16 ones. Exact only
  when ``2 * 255 * max|B| <= 32767``, i.e. ``|B| <= 64``; the rules check the constant weights.

``<scope>`` is the accumulator's storage scope (``global`` or ``local``): tensorize requires the
intrinsic's buffer scopes to match the block's.
"""

from __future__ import annotations

import logging
import threading

from tvm.s_tir import TensorIntrin

from compiler.lower.tvmscript import fast_tvmscript_import

logger = logging.getLogger(__name__)

SCOPES = ("global", "local")
_LOCK = threading.Lock()
_REGISTERED: set[str] = set()


def vnni_intrin(scope: str) -> str:
    """Name of the registered VNNI 16×4 u8·s8→s32 intrinsic for accumulator ``scope``."""
    name = f"hwcc_vnni_16x4_{scope}"
    _ensure(name, lambda: _vnni_funcs(scope))
    return name


def avx2_intrin(scope: str) -> str:
    """Name of the registered AVX2 8×4 u8·s8→s32 intrinsic for accumulator ``scope``."""
    name = f"hwcc_avx2_8x4_{scope}"
    _ensure(name, lambda: _avx2_funcs(scope))
    return name


def _ensure(name: str, make) -> None:
    with _LOCK:
        if name in _REGISTERED:
            return
        if TensorIntrin.get(name, allow_missing=True) is None:
            with fast_tvmscript_import():
                desc, impl = make()
            TensorIntrin.register(name, desc, impl)
            logger.debug("registered tensor intrinsic %s", name)
        _REGISTERED.add(name)


def _desc(lanes: int, scope: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
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

    return desc


def _vnni_funcs(scope: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            A_u8x4 = A.vload([0], "uint8x4")
            A_i32 = T.reinterpret(A_u8x4, dtype="int32")
            A_u8x64 = T.reinterpret(T.broadcast(A_i32, 16), dtype="uint8x64")
            B_i8x64 = B.vload([0, 0], dtype="int8x64")
            C_i32x16 = C.vload([0], dtype="int32x16")
            # LLVM >= 20 declares the byte operands <64 x i8> (TVM's own intrinsic passes
            # <16 x i32> and fails LLVM's verifier with the LLVM 22 of the 0.27 wheel)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C_i32x16,
                A_u8x64,
                B_i8x64,
                dtype="int32x16",
            )

    return _desc(16, scope), impl


def _avx2_funcs(scope: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            A_u8x4 = A.vload([0], "uint8x4")
            A_i32 = T.reinterpret(A_u8x4, dtype="int32")
            A_u8x32 = T.reinterpret(T.broadcast(A_i32, 8), dtype="uint8x32")
            B_i8x32 = B.vload([0, 0], dtype="int8x32")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                A_u8x32,
                B_i8x32,
                dtype="int16x16",
            )
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                pairs,
                T.broadcast(T.int16(1), 16),
                dtype="int32x8",
            )

    return _desc(8, scope), impl
