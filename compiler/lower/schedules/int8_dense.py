"""Default CPU schedule for int8 matmul / dense blocks: packed weights, dot product tensorized.

Matches what the quantize pass emits for ``R.matmul(x_q, w_q, out_dtype="int32")``::

    C[.., m, n] += i32(A[.., m, k]) * i32(B[k, n])        # A uint8 (x86) / int8 (ARM)

(``B[n, k]`` too). The constant weight is packed at compile time to the VNNI layout
``[ceil(N/16), ceil(K/4), 16, 4]`` (zero padded), the iteration domain is rounded up to those
blocks (reads of the padding hit zero weights; the ``A`` copy is zero padded when ``K % 4``,
the int32 accumulator is padded when ``N % 16``), and the inner ``16 x 4`` is tensorized with
the VNNI intrinsic (one ``vpdpbusd``: 16 int32 lanes += 4 u8·s8 products each). Each parallel
task computes an ``MR x 16·NV`` register tile over the whole ``K`` and applies the fused
epilogue (bias, requantization, clamp, cast) per tile. The same holds for the other
one-row dot products (:class:`.int8_common.DotISA`): AVX-VNNI and the ``vpmaddubsw`` pair
(``L = 8`` or 16), AArch64 ``sdot`` (``L = 4``, s8 activations).

On AArch64 with +i8mm, matmuls of at least two rows use ``smmla`` instead
(:func:`schedule_int8_matmul_mmla`): the weight is packed to ``[N/2, K/8, 2, 8]``, the
activation copied in row pairs ``[M/2, K/8, 2, 8]`` and the int32 accumulator kept as 2x2
tiles ``[M/2, N/2, 2, 2]``, each one register; a task computes ``2·MR x 2·NR`` outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym import Analyzer

from .analysis import Contraction, Operand, block_infos, is_plain, param_index
from .common import (
    choose_factor,
    inline_epilogue_chain,
)
from .int8_common import (
    K_BLOCK,
    DotISA,
    dot_isa,
    finish_tensorized,
    last_dim_blocked,
    matrix_isa,
    pad_accumulator,
    pairs_fit_int16,
    read_index,
    round_up,
    single_int_contraction,
)
from .packing import WeightPack
from .target_info import cpu_info

logger = logging.getLogger(__name__)


@dataclass
class Int8MatmulMatch:
    """A matched ``C[b.., m, n] += i32(A[.., m, k]) * i32(B[..])`` block.

    ``layout`` is ``"kn"`` / ``"nk"`` for a plain 2-D weight, ``"packed"`` for the layout of the
    ISA it was matched for, ``[n // L, k // KB, n % L, k % KB]`` (:attr:`.DotISA.lanes`,
    :attr:`.DotISA.k_block`).
    """

    con: Contraction
    batch: list[tirx.Var]
    m: tirx.Var | None
    n: tirx.Var
    k: tirx.Var
    lhs: Operand
    rhs: Operand
    layout: str


def _is_packed(rhs: Operand, n: tirx.Var, k: tirx.Var, lanes: int, n_ext: int, k_ext: int,
               k_block: int = K_BLOCK) -> bool:
    """Whether ``rhs`` is read as ``[n // lanes, k // KB, n % lanes, k % KB]`` (modulo
    simplify), ``KB = k_block``."""
    if len(rhs.indices) != 4:
        return False
    shape = [int(d) for d in rhs.buffer.shape]
    if shape != [
        round_up(n_ext, lanes) // lanes,
        round_up(k_ext, k_block) // k_block,
        lanes,
        k_block,
    ]:
        return False
    ana = Analyzer()
    ana.bind(n, tvm.ir.Range(0, n_ext))
    ana.bind(k, tvm.ir.Range(0, k_ext))
    expected = [n // lanes, k // k_block, n % lanes, k % k_block]
    return all(ana.can_prove_equal(a, b) for a, b in zip(rhs.indices, expected))


def match_int8_matmul(sch: s_tir.Schedule, isa: DotISA) -> Int8MatmulMatch | None:
    """Find the single 8-bit matmul contraction of the function that ``isa`` computes, or None.

    Requirements: one integer contraction (:func:`.int8_common.match_int_contraction`) with one
    reduction ``k`` and static extents (no dynamic batch); ``A`` is of the ISA's activation
    dtype (:attr:`.DotISA.lhs_dtype`: ``uint8`` on x86, ``int8`` on AArch64), indexed
    ``[.., m, k]`` with ``k`` last and plain; ``B`` is ``int8``, uses only ``k`` and ``n`` (no
    batch), laid out ``[k, n]``, ``[n, k]`` or packed for ``isa``. All other blocks
    data-parallel.
    """
    infos = block_infos(sch)
    if infos is None:
        return None
    con = single_int_contraction(sch, infos)
    if con is None or len(con.reduce) != 1 or len(con.out_vars) < 2:
        return None
    k = con.reduce[0]
    m, n = con.out_vars[-2], con.out_vars[-1]
    batch = [v for v in con.out_vars[:-2] if v is not None]
    if n is None or not con.is_static():
        # symbolic rows (dynamic batch): the tensorized block does not match under the row
        # predicate; such kernels are left to the float rules' fallback
        return None
    lhs = rhs = None
    for op in con.operands:
        if op.uses(n) and not op.uses(m) and op.uses(k):
            rhs = op
        elif (m is None or op.uses(m)) and not op.uses(n) and op.uses(k):
            lhs = op
    if lhs is None or rhs is None:
        return None
    if lhs.buffer.dtype != isa.lhs_dtype or rhs.buffer.dtype != "int8":
        return None
    if not is_plain(lhs.indices[-1], k) or any(k in u for u in lhs.used[:-1]):
        return None
    if any(rhs.uses(v) for v in batch):
        return None
    if len(rhs.indices) == 2 and is_plain(rhs.indices[0], k) and is_plain(rhs.indices[1], n):
        layout = "kn"
    elif len(rhs.indices) == 2 and is_plain(rhs.indices[0], n) and is_plain(rhs.indices[1], k):
        layout = "nk"
    elif _is_packed(rhs, n, k, isa.lanes, con.extent(n), con.extent(k), isa.k_block):
        layout = "packed"
    else:
        return None
    return Int8MatmulMatch(con, batch, m, n, k, lhs, rhs, layout)


def vnni_pack(w: np.ndarray, layout: str, lanes: int, k_block: int = K_BLOCK) -> np.ndarray:
    """Pack a 2-D int8 weight (``[K, N]`` or ``[N, K]``) to ``[N/lanes, K/KB, lanes, KB]``
    (``KB = k_block``: 4 for the dot products, 8 for ``smmla``).

    Both dimensions are rounded up with zeros.
    """
    wk = w if layout == "kn" else w.T
    kk, nn = wk.shape
    kp, np_ = round_up(kk, k_block), round_up(nn, lanes)
    padded = np.zeros((kp, np_), dtype=w.dtype)
    padded[:kk, :nn] = wk
    return np.ascontiguousarray(
        padded.reshape(kp // k_block, k_block, np_ // lanes, lanes).transpose(2, 0, 3, 1)
    )


def _tiles(m_ext: int | None, n_blocks: int, num_cores: int,
           accumulators: int) -> tuple[int, int]:
    """Register tile ``(MR, NV)``: ``MR`` rows by ``NV`` vectors, ~``accumulators`` of them.

    ``accumulators`` comes from the ISA (:attr:`.int8_common.DotISA.accumulators`: 24 of 32
    zmm for VNNI, 8 of 16 ymm for the AVX2 pair), so AVX2 tiles are sized for its register
    file rather than narrowed from AVX-512 ones.
    """
    if m_ext is None:
        m_ext = 1 << 20
    max_nv = max(1, accumulators // 6) if m_ext >= 4 else max(1, accumulators // 3)
    nv = 1
    for cand in range(min(max_nv, n_blocks), 0, -1):
        if n_blocks % cand == 0 and (m_ext > 8 or n_blocks // cand >= 2 * num_cores or cand == 1):
            nv = cand
            break
    mr = max(1, accumulators // nv)
    mr = choose_factor(m_ext, mr, minimum=max(1, mr // 2))
    return mr, nv


def schedule_int8_matmul(
    sch: s_tir.Schedule, match: Int8MatmulMatch, isa: DotISA, num_cores: int
) -> s_tir.Schedule | None:
    """Tile, pad and tensorize a matched int8 matmul whose weight is packed (in place)."""
    con = match.con
    main = con.block
    lanes = isa.lanes
    func = sch.mod["main"]
    n_ext, k_ext = con.extent(match.n), con.extent(match.k)
    m_ext = con.extent(match.m)
    out_is_param = param_index(func, con.out) is not None
    # loops are looked up again after the layout changes below (which re-create them)
    iter_pos = {}
    for i, it in enumerate(con.info.iters):
        iter_pos[it.var] = i
    # 1. A zero-padded, k-blocked copy of the activation when K is not a multiple of 4
    if k_ext % K_BLOCK:
        a_idx = read_index(sch, main, match.lhs.buffer)
        if a_idx is None:
            return None
        sch.cache_read(main, a_idx, "global")
        sch.transform_layout(
            main, ("read", a_idx), last_dim_blocked(len(match.lhs.indices), K_BLOCK), pad_value=0
        )
    # 2. accumulator: a local tile, written back by the fused epilogue (or a plain copy)
    if out_is_param or not list(sch.get_consumers(main)):
        tail = sch.cache_write(main, 0, "global")
    else:
        tail = inline_epilogue_chain(sch, main)
    if n_ext % lanes:
        pad_accumulator(sch, main, len(con.out_vars), lanes)
    scope = "global"
    if tail is not None:
        sch.set_scope(main, 0, "local")
        scope = "local"
    # 3. tiles; batches of one row each ([S, 1, K], PyTorch's sequence-first projections)
    # are the rows of one matmul, as in the float32 rule
    fold = bool(match.batch) and m_ext == 1 and all(
        con.extent(v) is not None for v in match.batch)  # m_ext None: symbolic rows
    rows = int(np.prod([con.extent(v) for v in match.batch])) if fold else m_ext
    mr, nv = _tiles(rows, round_up(n_ext, lanes) // lanes, num_cores, isa.accumulators)
    if rows is not None and rows % mr:
        # a row predicate on the tensorized block would not match the dot intrinsic
        mr = choose_factor(rows, mr, minimum=1)
    loops = sch.get_loops(main)

    def loop_of(var):
        for v, i in iter_pos.items():
            if var is not None and v.same_as(var):
                return loops[i]
        return None

    batch_loops = [lp for lp in (loop_of(v) for v in match.batch) if lp is not None]
    lm, ln, lk = loop_of(match.m), loop_of(match.n), loop_of(match.k)
    if fold and batch_loops:
        lm = sch.fuse(*batch_loops, *([lm] if lm is not None else []))
        batch_loops = []
    jo, ji = sch.split(ln, [None, lanes], disable_predication=bool(n_ext % lanes))
    ko, ki = sch.split(lk, [None, K_BLOCK], disable_predication=bool(k_ext % K_BLOCK))
    joo, joi = sch.split(jo, [None, nv])
    io = ii = None
    if lm is not None:
        io, ii = sch.split(lm, [None, mr])
    outer = [*batch_loops, *([io] if io is not None else []), joo]
    sch.reorder(*outer, ko, *([ii] if ii is not None else []), joi, ji, ki)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    finish_tensorized(sch, main, tail, attach_at=fused, parallel_at=fused, reduce_at=ko,
                      tensorize_at=ji,
                      work=int(np.prod([e or 1024 for e in con.extents.values()])),
                      lanes=lanes, num_cores=num_cores, isa=isa, scope=scope)
    if ii is not None and mr > 1:
        sch.unroll(ii)
    if nv > 1:
        sch.unroll(joi)
    logger.debug("int8 matmul: MR=%d NV=%d lanes=%d", mr, nv, lanes)
    return sch


def mmla_fits(match: Int8MatmulMatch) -> bool:
    """Whether ``smmla``'s row pairs apply: a plain 2-D matmul ``[M, K] x [K, N]`` (no batch)."""
    return (not match.batch and match.m is not None and len(match.lhs.indices) == 2
            and len(match.con.out_vars) == 2)


def _rows(match: Int8MatmulMatch) -> int:
    """Activation rows of the matmul (its batch rows included)."""
    extents = [match.con.extent(v) for v in [*match.batch, match.m] if v is not None]
    return int(np.prod([e or 1 for e in extents]))


def schedule_int8_matmul_mmla(
    sch: s_tir.Schedule, match: Int8MatmulMatch, isa: DotISA, num_cores: int
) -> s_tir.Schedule | None:
    """Tile, pad and tensorize a matched 2-D matmul with an ``smmla``-packed weight (in place).

    Expects :func:`mmla_fits` and the weight packed ``[N/2, K/8, 2, 8]``. The activation is
    copied to ``[M/2, K/8, 2, 8]`` (zero padded: an odd row or a ``K % 8`` tail multiplies
    zeros), the int32 accumulator is laid out ``[M/2, N/2, 2, 2]`` (padding lanes never read)
    and each parallel task computes ``MR x NR`` 2x2 tiles over the whole ``K``, then its
    epilogue.
    """
    con = match.con
    main = con.block
    kb, pair = isa.k_block, isa.rows
    func = sch.mod["main"]
    m_ext, n_ext, k_ext = con.extent(match.m), con.extent(match.n), con.extent(match.k)
    out_is_param = param_index(func, con.out) is not None
    iter_pos = {it.var: i for i, it in enumerate(con.info.iters)}
    # 1. the activation in row pairs, k blocked by 8: [M/2, K/8, 2, 8]
    a_idx = read_index(sch, main, match.lhs.buffer)
    if a_idx is None:
        return None
    sch.cache_read(main, a_idx, "global")
    padded = bool(m_ext % pair or k_ext % kb)
    sch.transform_layout(main, ("read", a_idx),
                         lambda m, k: (m // pair, k // kb, m % pair, k % kb),
                         pad_value=0 if padded else None)
    # 2. accumulator in 2x2 tiles (one register each), written back by the fused epilogue
    if out_is_param or not list(sch.get_consumers(main)):
        tail = sch.cache_write(main, 0, "global")
    else:
        tail = inline_epilogue_chain(sch, main)
    sch.transform_layout(main, ("write", 0),
                         lambda m, n: (m // pair, n // pair, m % pair, n % pair),
                         pad_value=None, assume_injective_transform=True)
    scope = "global"
    if tail is not None:
        sch.set_scope(main, 0, "local")
        scope = "local"
    # 3. tiles of MR x NR accumulators
    m_pairs, n_pairs = round_up(m_ext, pair) // pair, round_up(n_ext, pair) // pair
    mr, nr = _tiles(m_pairs, n_pairs, num_cores, isa.accumulators)
    if m_pairs % mr:
        mr = choose_factor(m_pairs, mr, minimum=1)
    loops = sch.get_loops(main)
    lm, ln, lk = (loops[iter_pos[v]] for v in (match.m, match.n, match.k))
    mo, mi = sch.split(lm, [None, pair], disable_predication=bool(m_ext % pair))
    no, ni = sch.split(ln, [None, pair], disable_predication=bool(n_ext % pair))
    ko, ki = sch.split(lk, [None, kb], disable_predication=bool(k_ext % kb))
    moo, moi = sch.split(mo, [None, mr])
    noo, noi = sch.split(no, [None, nr])
    sch.reorder(moo, noo, ko, moi, noi, mi, ni, ki)
    fused = sch.fuse(moo, noo)
    finish_tensorized(sch, main, tail, attach_at=fused, parallel_at=fused, reduce_at=ko,
                      tensorize_at=mi, work=m_ext * n_ext * k_ext,
                      lanes=isa.vector_bits // 32, num_cores=num_cores, isa=isa, scope=scope)
    if mr > 1:
        sch.unroll(moi)
    if nr > 1:
        sch.unroll(noi)
    logger.debug("int8 matmul (%s): MR=%d NR=%d row/column pairs", isa.kind, mr, nr)
    return sch


def _plan(sch: s_tir.Schedule, target: tvm.target.Target
          ) -> tuple[DotISA, Int8MatmulMatch] | None:
    """The ISA an unpacked matmul is packed for, and its match: ``smmla`` (a matrix ISA) for
    plain 2-D matmuls of at least two rows (or when the target has no one-row dot product),
    else the target's one-row dot product."""
    vector = dot_isa(target, allow_saturating=True)
    matrix = matrix_isa(target)
    if matrix is not None:
        match = match_int8_matmul(sch, matrix)
        if match is not None and mmla_fits(match) and (vector is None or _rows(match) >= 2):
            return matrix, match
    if vector is None:
        return None
    match = match_int8_matmul(sch, vector)
    return (vector, match) if match is not None else None


class Int8Dense(CPUScheduleRule):
    """8-bit matmul / dense with a constant weight: packed and tensorized.

    Applies to targets with an integer dot product (:func:`.int8_common.dot_isa`): x86 u8×s8
    (VNNI, AVX-VNNI, or the ``vpmaddubsw`` pair of AVX2 / AVX-512BW when the weight's pairs
    fit int16) and AArch64 s8×s8 (``sdot``; ``smmla`` with +i8mm for matmuls of two rows or
    more, :func:`.int8_common.matrix_isa`). Returns None elsewhere (and for non-constant
    weights, activations of the other signedness, symbolic extents), leaving the block to
    later rules.
    """

    def pack_plan(self, func: tirx.PrimFunc, target: tvm.target.Target) -> WeightPack | None:
        """Plan to pack a 2-D int8 parameter weight into ``[N/L, K/KB, L, KB]`` (zero padded)
        for the ISA :func:`_plan` picks."""
        sch = s_tir.Schedule(func)
        plan = _plan(sch, target)
        if plan is None:
            return None
        isa, match = plan
        if match.layout == "packed":
            return None
        idx = param_index(func, match.rhs.buffer)
        r_idx = read_index(sch, match.con.block, match.rhs.buffer)
        if idx is None or r_idx is None:
            return None
        lanes, layout, kb = isa.lanes, match.layout, isa.k_block

        if layout == "kn":

            def index_map(k, n):
                return (n // lanes, k // kb, n % lanes, k % kb)

        else:

            def index_map(n, k):
                return (n // lanes, k // kb, n % lanes, k % kb)

        def pack(w: np.ndarray) -> np.ndarray:
            return vnni_pack(w, layout, lanes, kb)

        block = sch.get(match.con.block)
        k_axis = 0 if layout == "kn" else 1
        accepts = (lambda w: pairs_fit_int16(w, k_axis)) if isa.saturates else None
        return WeightPack(block.name_hint, r_idx, idx, index_map, pack, pad_value=0,
                          accepts=accepts)

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        # the packed weight's shape tells which ISA pack_plan chose
        for isa in (matrix_isa(target), dot_isa(target, allow_saturating=True)):
            if isa is None:
                continue
            sch = s_tir.Schedule(func)
            match = match_int8_matmul(sch, isa)
            if match is None or match.layout != "packed":
                continue
            num_cores = cpu_info(target).num_cores
            if isa.rows > 1:
                return (schedule_int8_matmul_mmla(sch, match, isa, num_cores)
                        if mmla_fits(match) else None)
            return schedule_int8_matmul(sch, match, isa, num_cores)
        return None
