"""Integer dot-product tensor intrinsics for the int8 CPU rules, registered lazily.

``tvm.s_tir.tensor_intrin`` registers TVM's x86 VNNI intrinsic, but importing it parses every
intrinsic of every target with TVMScript (~45 s here: the parser's ``inspect`` calls scan all of
``sys.modules``). The int8 rules need only a few, so they are defined here (after
``tvm/s_tir/tensor_intrin/x86.py``) and parsed on first use, with ``inspect.getmodule``
memoised (:func:`compiler.lower.tvmscript.fast_tvmscript_import`): well under a second.

Every intrinsic computes ``C[L] += A[4] (u8) . B[L, 4] (s8)`` (``L`` int32 lanes, the four u8
activations broadcast to every lane). Names are hwcc's own (``hwcc_<family>_<L>x4_<scope>``),
so that importing TVM's registry later does not clash:

* ``vpdpbusd``: one ``vpdpbusd`` (``llvm.x86.avx512.vpdpbusd.512`` on AVX-512 VNNI, ``L = 16``;
  ``.256`` on AVX-VNNI or AVX-512 VNNI+VL, ``L = 8``). Exact.
* ``vpmaddubsw``: ``vpmaddubsw`` (u8×s8 pairs summed into int16, **saturating**) then
  ``vpmaddwd`` against int16 ones and an add (AVX2: 256 bits, ``L = 8``; AVX-512BW: 512 bits,
  ``L = 16``). Exact only when every weight pair fits (:func:`.int8_common.pairs_fit_int16`);
  the rules check the constant weights before they use it.

``<scope>`` is the accumulator's storage scope (``global`` or ``local``): tensorize requires the
intrinsic's buffer scopes to match the block's.

The AArch64 families (s8×s8, :mod:`.int8_intrin_arm`) are registered through the same
function: ``sdot`` (``hwcc_sdot_4x4_<scope>``, ``C[4] += A[4] . B[4, 4]``) and ``smmla``
(``hwcc_smmla_2x2x8_<scope>``, ``C[2, 2] += A[2, 8] . B[2, 8]^T``).
"""

from __future__ import annotations

import logging
import threading

from tvm.s_tir import TensorIntrin

from compiler.lower.tvmscript import fast_tvmscript_import

from .int8_intrin_arm import sdot_intrin, smmla_intrin

logger = logging.getLogger(__name__)

SCOPES = ("global", "local")
_LOCK = threading.Lock()
_REGISTERED: set[str] = set()


def dot_intrin(kind: str, vector_bits: int, scope: str) -> str:
    """Name of the registered ``kind`` intrinsic, registering it on first use.

    ``kind`` is ``vpdpbusd``/``vpmaddubsw`` (x86; ``vector_bits`` 512 or 256) or
    ``sdot``/``smmla`` (AArch64 NEON; ``vector_bits`` 128); ``scope`` the accumulator's
    storage scope.
    """
    if kind in _ARM:
        if vector_bits != 128:
            raise ValueError(f"no {vector_bits}-bit {kind} intrinsic")
        shape, make = _ARM[kind]
        name = f"hwcc_{kind}_{shape}_{scope}"
        _ensure(name, lambda: make(scope))
        return name
    if kind not in _LLVM or vector_bits not in _LLVM[kind]:
        raise ValueError(f"no {vector_bits}-bit {kind} intrinsic")
    lanes = vector_bits // 32
    name = f"hwcc_{kind}_{lanes}x4_{scope}"
    _ensure(name, lambda: (_desc(lanes, scope), _impl(kind, vector_bits, scope)))
    return name


#: LLVM intrinsics of each family and width.
_LLVM = {
    "vpdpbusd": {512: ("llvm.x86.avx512.vpdpbusd.512",), 256: ("llvm.x86.avx512.vpdpbusd.256",)},
    "vpmaddubsw": {
        512: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
        256: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
    },
}

#: AArch64 families: name suffix of the tile shape, ``scope -> (desc, impl)``.
_ARM = {"sdot": ("4x4", sdot_intrin), "smmla": ("2x2x8", smmla_intrin)}


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


def _impl(kind: str, vector_bits: int, scope: str):
    from tvm.script import tirx as T

    lanes = vector_bits // 32
    nbytes = vector_bits // 8
    names = _LLVM[kind][vector_bits]
    acc_t, u8_t, i8_t, i16_t = (f"int32x{lanes}", f"uint8x{nbytes}", f"int8x{nbytes}",
                                f"int16x{nbytes // 2}")

    if kind == "vpdpbusd":

        @T.prim_func(s_tir=True)
        def impl(
            A: T.Buffer((4,), "uint8", offset_factor=1),
            B: T.Buffer((lanes, 4), "int8", offset_factor=1),
            C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                A_u8x4 = A.vload([0], "uint8x4")
                A_i32 = T.reinterpret(A_u8x4, dtype="int32")
                A_bytes = T.reinterpret(T.broadcast(A_i32, lanes), dtype=u8_t)
                B_bytes = B.vload([0, 0], dtype=i8_t)
                C_acc = C.vload([0], dtype=acc_t)
                # LLVM >= 20 declares the byte operands <N x i8> (TVM's own intrinsic passes
                # <16 x i32> and fails LLVM's verifier with the LLVM 22 of the 0.27 wheel)
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(names[0]),
                    C_acc,
                    A_bytes,
                    B_bytes,
                    dtype=acc_t,
                )

        return impl

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            A_u8x4 = A.vload([0], "uint8x4")
            A_i32 = T.reinterpret(A_u8x4, dtype="int32")
            A_bytes = T.reinterpret(T.broadcast(A_i32, lanes), dtype=u8_t)
            B_bytes = B.vload([0, 0], dtype=i8_t)
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(names[0]),
                A_bytes,
                B_bytes,
                dtype=i16_t,
            )
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=acc_t) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(names[1]),
                pairs,
                T.broadcast(T.int16(1), lanes * 2),
                dtype=acc_t,
            )

    return impl
