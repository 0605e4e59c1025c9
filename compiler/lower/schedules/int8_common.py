"""Shared pieces of the int8 rules: matching integer contractions, ISA choice, layout helpers.

The quantize pass (``passes/quantize.py``) legalizes to blocks of the form::

    C[s...] = C[s...] + T.Cast("int32", A[...]) * T.Cast("int32", B[...])   # init C = 0

with ``A`` the ``uint8`` (x86) or ``int8`` activation (ARM) and ``B`` the ``int8`` weight. This
module matches that block (returning the same :class:`~.analysis.Contraction` the float rules
use, so their helpers apply) and decides, from the target's capabilities, which dot-product
instruction it offers (:class:`DotISA`: its activation dtype, tile shape and register budget).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo

from targets import capabilities_of

from .analysis import (
    _LOAD,
    Contraction,
    match_contraction,
    region_buffer,
)
from .common import MIN_PARALLEL_WORK, schedule_other_blocks
from .int8_intrin import dot_intrin
from .target_info import is_cpu_target

logger = logging.getLogger(__name__)

_CAST = type(tirx.Cast("int32", tirx.IntImm("int8", 0)))

#: Reduction elements one dot-product instruction sums per output lane (``smmla``: 8).
K_BLOCK = 4

#: Largest activation value of the u8 operand (the pair-sum bound of ``vpmaddubsw``).
_U8_MAX = 255


#: Dot-product families whose activation operand is signed (AArch64: s8×s8).
_SIGNED_LHS = ("sdot", "smmla")
#: The ``sdot``/``smmla`` intrinsics are AArch64's (``llvm.aarch64.neon.*``), whose 32 vector
#: registers tell it from 32-bit ARM (16 Q registers; ``llvm.arm.neon.sdot``, not written yet:
#: its int8 blocks stay on the generic rules).
_AARCH64_REGISTERS = 32


@dataclass(frozen=True)
class DotISA:
    """The integer dot product a target gets, and the register budget it tiles for.

    ``kind`` is the instruction family:

    * ``"vpdpbusd"`` (x86 VNNI: four u8·s8 products summed into each int32 lane, exact);
    * ``"vpmaddubsw"`` (the AVX2 / AVX-512BW pair ``vpmaddubsw`` then ``vpmaddwd`` against
      ones: two u8·s8 products summed into **saturating** int16 first, so exact only for
      weights whose pairs fit; see :func:`pairs_fit_int16`);
    * ``"sdot"`` (AArch64 +dotprod: four s8·s8 products summed into each of 4 int32 lanes,
      exact);
    * ``"smmla"`` (AArch64 +i8mm: a 2x8 by 8x2 s8 matrix product into a 2x2 int32 tile, exact;
      two activation rows per call, so only the matmul rule uses it).

    ``vector_bits`` is 512 or 256 on x86, 128 on NEON; ``registers`` the vector registers the
    tiles are sized for (:attr:`targets.base.Capabilities.vector_registers`).
    """

    kind: str
    vector_bits: int
    registers: int

    @property
    def lanes(self) -> int:
        """Output columns per call: the int32 lanes of a vector (16 on 512-bit vectors, 8 on
        256-bit, 4 on NEON), 2 for ``smmla``'s 2x2 tile."""
        return 2 if self.kind == "smmla" else self.vector_bits // 32

    @property
    def rows(self) -> int:
        """Activation rows per call: 2 for ``smmla``, else 1 (one row broadcast)."""
        return 2 if self.kind == "smmla" else 1

    @property
    def k_block(self) -> int:
        """Reduction elements per call and output: 8 for ``smmla``, else :data:`K_BLOCK`."""
        return 8 if self.kind == "smmla" else K_BLOCK

    @property
    def lhs_dtype(self) -> str:
        """dtype of the activation operand: ``int8`` on AArch64, ``uint8`` on x86."""
        return "int8" if self.kind in _SIGNED_LHS else "uint8"

    @property
    def saturates(self) -> bool:
        """Whether the instruction sums pairs into saturating int16 (weights must be checked)."""
        return self.kind == "vpmaddubsw"

    @property
    def accumulators(self) -> int:
        """Vector accumulators of one register tile (each one call's output).

        VNNI, ``sdot`` and ``smmla`` need, besides the accumulators, one broadcast activation
        (``smmla``: one activation pair) and the weight vectors of the tile: three quarters of
        the file (24 of 32 zmm or NEON registers, 12 of 16 ymm). The ``vpmaddubsw`` pair also
        holds the int16 products and the ones vector: half (8 of 16 ymm, 16 of 32 zmm).
        """
        return self.registers // 2 if self.kind == "vpmaddubsw" else self.registers * 3 // 4

    def intrin(self, scope: str) -> str:
        """Register (on first use) and return the tensor intrinsic for accumulator ``scope``."""
        return dot_intrin(self.kind, self.vector_bits, scope)


def dot_isa(target: tvm.target.Target | None, allow_saturating: bool = False) -> DotISA | None:
    """The best one-row dot product of an LLVM CPU target, or None, from its capabilities.

    x86 (u8×s8), in order of preference: ``vpdpbusd`` on 512 bits (AVX-512 VNNI with F and
    BW), on 256 bits (AVX-VNNI), then, only when ``allow_saturating`` (the caller checks the
    weights with :func:`pairs_fit_int16`), ``vpmaddubsw`` on 512 bits (AVX-512BW) or 256 bits
    (AVX2). AArch64 (s8×s8): ``sdot`` (+dotprod). Plain NEON has none: its int8 blocks are
    left to the generic rules (LLVM widens them to ``smull``/``sadalp``-like code).
    """
    if not is_cpu_target(target):
        return None
    caps = capabilities_of(target)
    dots = caps.int8_dot
    regs = caps.vector_registers or 16
    if "vpdpbusd" in dots:
        return DotISA("vpdpbusd", 512, regs)
    if "vpdpbusd256" in dots:
        return DotISA("vpdpbusd", 256, regs)
    if allow_saturating and "vpmaddubsw512" in dots:
        return DotISA("vpmaddubsw", 512, regs)
    if allow_saturating and "vpmaddubsw" in dots:
        return DotISA("vpmaddubsw", 256, regs)
    if "sdot" in dots and regs >= _AARCH64_REGISTERS:
        return DotISA("sdot", caps.vector_bits or 128, regs)
    return None


def matrix_isa(target: tvm.target.Target | None) -> DotISA | None:
    """The two-row int8 matrix multiply of an LLVM CPU target (``smmla``, AArch64 +i8mm), or
    None. Only matmuls with at least two activation rows use it (:mod:`.int8_dense`)."""
    if not is_cpu_target(target):
        return None
    caps = capabilities_of(target)
    if "smmla" in caps.int8_dot and caps.vector_registers >= _AARCH64_REGISTERS:
        return DotISA("smmla", caps.vector_bits or 128, caps.vector_registers)
    return None


def pairs_fit_int16(w: np.ndarray, axis: int) -> bool:
    """Whether ``vpmaddubsw`` sums every pair of ``w`` (along ``axis``) exactly.

    ``vpmaddubsw`` adds the products of reduction elements ``(2i, 2i + 1)`` with int16
    saturation. With u8 activations in ``[0, 255]`` the pair sum is largest when the positive
    weights of the pair meet 255 and the negative ones 0, so the exact condition is
    ``255 * (max(w0, 0) + max(w1, 0)) <= 32767`` and ``255 * (min(w0, 0) + min(w1, 0)) >=
    -32768`` for every pair: true for all 7-bit weights (``|w| <= 64``, what the quantize pass
    makes for these targets) and for most 8-bit ones.
    """
    w = np.moveaxis(np.asarray(w, dtype=np.int64), axis, -1)
    if w.shape[-1] % 2:
        w = np.concatenate([w, np.zeros((*w.shape[:-1], 1), dtype=np.int64)], axis=-1)
    pairs = w.reshape(*w.shape[:-1], -1, 2)
    pos = np.clip(pairs, 0, None).sum(axis=-1)
    neg = np.clip(pairs, None, 0).sum(axis=-1)
    return bool((_U8_MAX * pos <= 32767).all() and (_U8_MAX * neg >= -32768).all())


def _cast_load(expr: tirx.PrimExpr) -> tirx.PrimExpr | None:
    """``load`` for ``T.Cast("int32", load)`` (or a bare int32 load), else None."""
    if isinstance(expr, _CAST) and str(expr.ty) == "int32" and isinstance(expr.value, _LOAD):
        return expr.value
    return None


def _vars_in(expr: tirx.PrimExpr) -> set[tirx.Var]:
    return set(tirx.analysis.undefined_vars(expr))


def _is_zero(expr: tirx.PrimExpr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr.value) == 0


def match_int_contraction(sch: s_tir.Schedule, info: SBlockInfo) -> Contraction | None:
    """Match ``C[s] = C[s] + i32(A[..]) * i32(B[..])`` with int32 ``C`` and 8-bit ``A``, ``B``.

    Same requirements as :func:`.analysis.match_contraction` (zero init, output indexed by
    distinct spatial iterators, every non-unit iterator on its own loop) except the operand
    types: both are loads of ``uint8``/``int8`` buffers under a cast to ``int32``.
    """
    return match_contraction(sch, info, "int32", ("uint8", "int8"), _cast_load)



def single_int_contraction(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> Contraction | None:
    """The function's only reduction block if it is an integer contraction, else None."""
    found = None
    for info in infos:
        if not info.is_reduction():
            continue
        if found is not None:
            return None
        found = info
    if found is None:
        return None
    return match_int_contraction(sch, found)


def read_index(sch: s_tir.Schedule, block, buffer: tirx.Buffer) -> int | None:
    """Position of ``buffer`` among ``block``'s reads if it is read exactly once."""
    reads = [i for i, r in enumerate(sch.get(block).reads) if region_buffer(r).same_as(buffer)]
    return reads[0] if len(reads) == 1 else None


def round_up(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return -(-x // m) * m


def last_dim_blocked(ndim: int, c: int) -> tirx.IndexMap:
    """Index map ``[..., k] -> [..., k // c, k % c]`` for an ``ndim``-dimensional buffer."""

    def fmap(*idx):
        return (*idx[:-1], idx[-1] // c, idx[-1] % c)

    return tirx.IndexMap.from_func(fmap, ndim=ndim)


def pad_accumulator(sch: s_tir.Schedule, block, ndim: int, lanes: int) -> None:
    """Round the last dimension of ``block``'s (intermediate) output up to ``lanes``.

    The buffer becomes ``[..., ceil(n / lanes), lanes]``; the tensorized loop then writes
    whole vectors, the lanes past ``n`` (zero weights) are never read. No pad value is
    declared: with one, ``transform_layout`` adds a block writing the padding, which breaks
    ``decompose_reduction`` and ``reverse_compute_at``; the padding check is skipped instead
    (``assume_injective_transform``; the map is injective).
    """
    sch.transform_layout(
        block,
        ("write", 0),
        last_dim_blocked(ndim, lanes),
        pad_value=None,
        assume_injective_transform=True,
    )


def inline_other_producers(sch: s_tir.Schedule, tail, main) -> None:
    """Inline the data-parallel producers of ``tail`` other than ``main``, and theirs in turn.

    ``reverse_compute_at`` needs every producer of the epilogue under the tile loop; an
    epilogue that also reads a computed tensor (a dequantized residual in QDQ models) gets that
    computation inlined (recomputed per element, cheap elementwise work). Producers that cannot
    be inlined are left; the caller's ``reverse_compute_at`` then fails and the rule declines.
    """
    main_name = sch.get(main).name_hint
    failed: set[str] = set()
    progress = True
    while progress:  # an inlined producer's own producers become the epilogue's producers
        progress = False
        for producer in list(sch.get_producers(tail)):
            name = sch.get(producer).name_hint
            if name == main_name or name in failed:
                continue
            if not all(iv.iter_type == tirx.IterVar.DataPar
                       for iv in sch.get(producer).iter_vars):
                continue
            try:
                sch.compute_inline(producer)
                progress = True
            except Exception as err:  # noqa: BLE001 - see docstring
                failed.add(name)
                logger.debug("epilogue producer not inlined: %s", err)


def finish_tensorized(sch: s_tir.Schedule, main, tail, *, attach_at, parallel_at, reduce_at,
                      tensorize_at, work: int, lanes: int, num_cores: int, isa: DotISA,
                      scope: str) -> None:
    """The steps every tensorized int8 kernel ends with, after its loops are tiled.

    The epilogue ``tail`` (requantize, bias, activation) is computed at ``attach_at`` with
    its innermost loop vectorized; ``parallel_at`` runs in parallel when ``work`` is worth
    it; the reduction's init is split off at ``reduce_at`` and vectorized; the other blocks
    get hwcc's elementwise schedule; ``tensorize_at`` becomes the dot-product intrinsic of
    ``isa`` for accumulator ``scope``.
    """
    if tail is not None:
        inline_other_producers(sch, tail, main)
        sch.reverse_compute_at(tail, attach_at, preserve_unit_loops=True)
        inner = sch.get_loops(tail)[-1]
        ext = sch.get(inner).extent
        if isinstance(ext, tirx.IntImm) and int(ext.value) > 1:
            sch.vectorize(inner)
    if work >= MIN_PARALLEL_WORK:
        sch.parallel(parallel_at)
    init = sch.decompose_reduction(main, reduce_at)
    sch.vectorize(sch.get_loops(init)[-1])
    skip = [main, init] + ([tail] if tail is not None else [])
    schedule_other_blocks(sch, skip, lanes, num_cores)
    sch.tensorize(tensorize_at, isa.intrin(scope))
