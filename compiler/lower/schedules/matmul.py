"""Default CPU schedule for matmul / dense / batch-matmul blocks with elementwise epilogues."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx

from .analysis import (
    Contraction,
    Operand,
    block_infos,
    is_plain,
    match_contraction,
    packed_factor,
    param_index,
    region_buffer,
)
from .common import (
    MIN_PARALLEL_WORK,
    MatchingRule,
    attach_epilogue,
    choose_factor,
    schedule_other_blocks,
    vector_factor,
)
from .packing import WeightPack
from .target_info import cpu_info, is_cpu_target

logger = logging.getLogger(__name__)


@dataclass
class MatmulMatch:
    """A matched matmul block: ``C[b.., m, n] += A[.. m .. k ..] * B[.. k .. n ..]``."""

    con: Contraction
    batch: list[tirx.Var]
    m: tirx.Var | None
    n: tirx.Var
    k: tirx.Var
    lhs: Operand
    rhs: Operand
    packed: int | None


def match_matmul(sch: s_tir.Schedule) -> MatmulMatch | None:
    """Find the single matmul-like contraction of the function, or None.

    Requirements: exactly one contraction block with one reduction iterator ``k``; output indices
    ``[*batch, m, n]``; one operand (``A``) uses ``m`` and ``k`` but not ``n``; the other (``B``)
    uses ``k`` and ``n`` but not ``m``, with ``n`` as its last index (row-major ``[.., k, n]``)
    or packed as ``[n // c, .., k, n % c]``. All other blocks must be data-parallel.
    """
    infos = block_infos(sch)
    if infos is None:
        return None
    found = None
    for info in infos:
        if not info.is_reduction():
            continue
        if found is not None:
            return None
        con = match_contraction(sch, info)
        if con is None or len(con.reduce) != 1 or len(con.out_vars) < 2:
            return None
        found = con
    if found is None:
        return None
    con = found
    k = con.reduce[0]
    m, n = con.out_vars[-2], con.out_vars[-1]
    batch = [v for v in con.out_vars[:-2] if v is not None]
    if n is None or con.extent(n) is None or con.extent(k) is None:
        return None
    lhs = rhs = None
    for op in con.operands:
        if op.uses(n) and not op.uses(m) and op.uses(k):
            rhs = op
        elif (m is None or op.uses(m)) and not op.uses(n) and op.uses(k):
            lhs = op
    if lhs is None or rhs is None:
        return None
    packed = packed_factor(rhs, n, 3)
    transposed = (
        len(rhs.indices) == 2 and is_plain(rhs.indices[0], n) and is_plain(rhs.indices[1], k)
    )
    # [n, k] weights are accepted only so that a pack plan can be made for them
    if packed is None and not is_plain(rhs.indices[-1], n) and not transposed:
        return None
    return MatmulMatch(con, batch, m, n, k, lhs, rhs, packed)


def _folds_batch(match: MatmulMatch) -> bool:
    """Whether the batch dimensions are the rows of one matmul: ``B`` is shared by every batch
    (a weight) and each batch has a single row, so ``[S, 1, K] x [K, N]`` (PyTorch's
    sequence-first attention projections) is an ``S x K x N`` matmul, not ``S``
    matrix-vector products each reading all of ``B``.

    Batches of several rows are not folded: a register tile of fused rows could straddle two
    batches, and the epilogue computed per tile (``reverse_compute_at``) would then cover the
    bounding box of both, rows the tile never computed.
    """
    return (
        bool(match.batch)
        and (match.m is None or match.con.extent(match.m) == 1)
        and not any(match.rhs.uses(v) for v in match.batch)
        and all(match.con.extent(v) is not None for v in match.batch)
    )


def _rows(match: MatmulMatch) -> int | None:
    """Rows of the register-tiled matmul: ``m``, times the batch when it folds into it."""
    rows = match.con.extent(match.m) if match.m is not None else 1
    if rows is not None and _folds_batch(match):
        for v in match.batch:
            rows *= match.con.extent(v)
    return rows


def _tiles(match: MatmulMatch, target: tvm.target.Target) -> tuple[int, int]:
    """Register tile ``(MR, NR)``: ``MR x NR/lanes`` accumulators fill about half the registers.

    Small ``M`` (GEMV-like dense layers) gets a wider ``NR`` (up to 8 vectors) so that each task
    has several independent FMA chains, while keeping at least 4 tasks per core.
    """
    info = cpu_info(target)
    lanes = info.lanes(32)
    n_ext = match.con.extent(match.n)
    m_ext = _rows(match)
    if m_ext is None:  # symbolic rows (dynamic batch): full tiles, a predicate on the tail
        m_ext = 1 << 20
    budget = 16 if info.vector_registers >= 32 else 12
    max_vecs = 2
    if m_ext < budget // 2:
        max_vecs = max(2, min(8, budget // m_ext))
        while max_vecs > 2 and n_ext // (max_vecs * lanes) < 4 * info.num_cores:
            max_vecs //= 2
    nr = match.packed or vector_factor(n_ext, lanes, max_vectors=max_vecs)
    vecs = -(-nr // lanes)
    mr = max(1, budget // vecs)
    mr = choose_factor(m_ext, mr, minimum=max(1, mr // 2))
    return mr, nr


def _pad_activation_rhs(sch: s_tir.Schedule, match: MatmulMatch, nr: int) -> bool:
    """Copy a non-constant ``B[.., k, n]`` whose ``n`` no tile width divides (attention's
    ``Q K^T`` over 197 tokens: 197 is prime) into ``[.., n // NR, k, NR]`` padded with zero
    columns, once per call, so that every tile is whole vectors; returns whether it did.

    Without it the tile's vector loop carries an ``n < N`` predicate, which the vectorizer
    turns into scalar code. A function output written
    by the tile itself gets its write-back block first, so that it keeps the real ``n`` range
    (the epilogue, computed per tile, then writes only real columns).
    """
    con = match.con
    n_ext = con.extent(match.n)
    if match.packed is not None or n_ext % nr == 0 or nr % 4 != 0:
        return False
    if not is_plain(match.rhs.indices[-1], match.n) or not is_plain(match.rhs.indices[-2], match.k):
        return False
    main = con.block
    reads = [i for i, r in enumerate(sch.get(main).reads)
             if region_buffer(r).same_as(match.rhs.buffer)]
    if len(reads) != 1:
        return False
    ndim = len(match.rhs.indices)
    sch.cache_read(main, reads[0], "global")
    sch.transform_layout(
        main, ("read", reads[0]),
        tirx.IndexMap.from_func(lambda *i: (*i[:-2], i[-1] // nr, i[-2], i[-1] % nr), ndim=ndim),
        pad_value=0.0,
    )
    if param_index(sch.mod["main"], region_buffer(sch.get(main).writes[0])) is not None:
        sch.cache_write(main, 0, "local")
    return True


class Matmul(MatchingRule):
    """Register-tiled, vectorized, parallel matmul with a fused epilogue.

    Matches what :func:`match_matmul` accepts. Tiles ``MR x NR`` outputs in registers (``NR`` =
    one or two vectors along ``n``, ``MR`` from the register budget), keeps the whole ``k`` loop
    inside the tile, parallelizes the fused outer tile loops and computes the elementwise
    epilogue per tile. The constant weight ``B[k, n]`` (or ``B[n, k]``) is packed to
    ``[n // NR, k, NR]`` at compile time by :meth:`pack_plan`. Returns None for anything else.
    """

    def pack_plan(self, func: tirx.PrimFunc, target: tvm.target.Target) -> WeightPack | None:
        """Plan to pack a 2-D parameter weight into ``[N // NR, K, NR]`` (NR dividing N)."""
        if not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        match = match_matmul(sch)
        if match is None or match.packed is not None or len(match.rhs.indices) != 2:
            return None
        idx = param_index(func, match.rhs.buffer)
        if idx is None:
            return None
        _, nr = _tiles(match, target)
        n_ext = match.con.extent(match.n)
        if n_ext % nr != 0 or nr == n_ext == 1:
            return None
        block = sch.get(match.con.block)
        read_index = [
            i for i, r in enumerate(block.reads) if region_buffer(r).same_as(match.rhs.buffer)
        ]
        if len(read_index) != 1:
            return None
        c = nr
        if is_plain(match.rhs.indices[0], match.k):

            def index_map(k, n):
                return (n // c, k, n % c)

            def pack(w: np.ndarray) -> np.ndarray:
                kk, nn = w.shape
                return w.reshape(kk, nn // c, c).transpose(1, 0, 2)

        else:

            def index_map(n, k):
                return (n // c, k, n % c)

            def pack(w: np.ndarray) -> np.ndarray:
                nn, kk = w.shape
                return w.reshape(nn // c, c, kk).transpose(0, 2, 1)

        return WeightPack(block.name_hint, read_index[0], idx, index_map, pack)

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        match = match_matmul(sch)
        if match is None:
            return None
        if match.packed is None and not is_plain(match.rhs.indices[-1], match.n):
            return None  # unpacked [n, k] weight: strided along n, leave it to the fallback
        return match

    def schedule(self, sch: s_tir.Schedule, match: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        lanes = info.lanes(32)
        mr, nr = _tiles(match, target)
        con = match.con
        main = con.block
        batch_loops = [lp for lp in (con.loop_of(v) for v in match.batch) if lp is not None]
        lm, ln, lk = con.loop_of(match.m), con.loop_of(match.n), con.loop_of(match.k)
        if ln is None or lk is None:
            return None
        if _folds_batch(match) and batch_loops:
            # batch and m loops are the outer loops, in order: one loop over all rows
            lm = sch.fuse(*batch_loops, lm) if lm is not None else sch.fuse(*batch_loops)
            batch_loops = []
        padded = _pad_activation_rhs(sch, match, nr)
        mo = mi = None
        if lm is not None:
            mo, mi = sch.split(lm, [None, mr])
        # padded: the tile computes the zero columns too (no predicate: it stays vectors)
        no, ni = sch.split(ln, [None, nr], disable_predication=padded)
        rhs_batched = any(match.rhs.uses(v) for v in match.batch)
        mos = [mo] if mo is not None else []
        outer = [*batch_loops, no, *mos] if rhs_batched else [no, *batch_loops, *mos]
        sch.reorder(*outer, lk, *([mi] if mi is not None else []), ni)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        tail = attach_epilogue(sch, main, fused, lanes)
        if tail is None and padded:
            return None  # nothing would guard the padded columns' writes
        work = 1
        for v in (*match.batch, match.m, match.n, match.k):
            work *= con.extent(v) or 1024
        if work >= MIN_PARALLEL_WORK:
            sch.parallel(fused)
        if mi is not None and mr > 1:
            sch.unroll(mi)
        sch.vectorize(ni)
        sch.decompose_reduction(main, lk)
        skip = [main] + ([tail] if tail is not None else [])
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("matmul %s: MR=%d NR=%d packed=%s", sch.mod["main"].attrs, mr, nr,
                     match.packed)
        return sch
