"""Default CPU schedule for reductions over the innermost, contiguous axes: global average
pooling written as ``ReduceMean`` over H and W (squeeze-and-excitation blocks), ``ReduceSum``
or ``ReduceMax`` over the last axis."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from .analysis import region_buffer
from .common import (
    MIN_PARALLEL_WORK,
    choose_factor,
    loop_extent,
    root_blocks,
    schedule_other_blocks,
)
from .fallback import inline_spatial_chains
from .target_info import cpu_info, is_cpu_target

logger = logging.getLogger(__name__)

#: Vector accumulators per output: independent FMA/add chains hide the add latency.
ACCUMULATORS = 4


def _reduced_contiguously(stmt: s_tir.SBlock, n_spatial: int) -> bool:
    """Whether every read of the block that depends on the reduction iterators takes them, in
    order, as its innermost indices, each over the whole of its dimension: the elements reduced
    into one output are one contiguous run of memory."""
    reduce_vars = [iv.var for iv in list(stmt.iter_vars)[n_spatial:]]
    extents = [int(iv.dom.extent) for iv in list(stmt.iter_vars)[n_spatial:]]
    writes = {region_buffer(w).name for w in stmt.writes}
    found = False
    for reg in stmt.reads:
        buf = region_buffer(reg)
        if buf.name in writes:
            continue  # the accumulator itself
        mins = [r.min for r in reg.region]
        if not any(any(v.same_as(u) for u in tirx.analysis.undefined_vars(m))
                   for m in mins for v in reduce_vars):
            continue
        k = len(reduce_vars)
        if len(mins) < k:
            return False
        shape = [int(d) if isinstance(d, tirx.IntImm) else None for d in buf.shape]
        if shape[len(shape) - k:] != extents:
            return False
        for m, v in zip(mins[len(mins) - k:], reduce_vars):
            if not m.same_as(v):
                return False
        found = True
    return found


#: Fewest partial sums per output worth a vector loop.
MIN_WIDTH = 4


def _partial_sums(n_reduce: int, lanes: int) -> int | None:
    """How many partial sums (the vectorized lane loop) a reduction over ``n_reduce`` contiguous
    elements keeps per output, or None when it is too short or no width divides it.

    Whole vectors when they divide it: up to :data:`ACCUMULATORS` of them, so that each
    accumulator chain sees at least two steps. Otherwise (a 7x7 or 14x14 map: 49 or 196
    elements) the largest divisor up to two vectors, at least :data:`MIN_WIDTH`: 28 lanes for
    196, 7 for 49, instead of one scalar chain per output.
    """
    if n_reduce % lanes == 0:
        if n_reduce < 2 * lanes:
            return None
        vectors = next(k for k in (ACCUMULATORS, 2, 1)
                       if n_reduce % (k * lanes) == 0 and n_reduce >= 2 * k * lanes)
        return vectors * lanes
    width = choose_factor(n_reduce, 2 * lanes, minimum=MIN_WIDTH)
    if n_reduce % width != 0 or n_reduce < 2 * width:
        return None
    return width


class InnerReduction(CPUScheduleRule):
    """Schedule a float32 reduction whose reduced elements per output are contiguous.

    Matches functions with exactly one reduction block, iterators ``S..SR..R`` with static
    extents, reading its input with the reduction iterators as the innermost indices (see
    :func:`_reduced_contiguously`), and ``R`` extents whose product has a vector width
    (:func:`_partial_sums`); the other blocks must be data-parallel (the division of a
    mean, a cast). Guarantees: semantics unchanged (floating-point sums are reassociated into
    that many partial sums); outputs are computed in parallel when
    the function does enough work, each with vector partial results (``rfactor``) combined at the
    end. Returns None otherwise, for the next rule.
    """

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        if not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        inline_spatial_chains(sch)
        blocks = root_blocks(sch)
        reductions = [b for b in blocks
                      if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(b).iter_vars)]
        if len(reductions) != 1:
            return None
        red = reductions[0]
        stmt = sch.get(red)
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R"
                        for iv in stmt.iter_vars)
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        loops = sch.get_loops(red)
        # (a reduction to one scalar is left to the fallback: rfactor rejects it)
        if ("S" in kinds[n_spatial:] or n_spatial in (0, len(kinds)) or len(loops) != len(kinds)
                or region_buffer(stmt.writes[0]).dtype != "float32"):
            return None
        extents = [loop_extent(sch, lp) for lp in loops]
        if None in extents or not _reduced_contiguously(stmt, n_spatial):
            return None
        info = cpu_info(target)
        lanes = info.lanes(32)
        n_reduce = 1
        for e in extents[n_spatial:]:
            n_reduce *= e  # type: ignore[operator]
        width = _partial_sums(n_reduce, lanes)
        if width is None:
            return None

        r = sch.fuse(*loops[n_spatial:]) if len(loops) - n_spatial > 1 else loops[n_spatial]
        _, ri = sch.split(r, [None, width])
        rf = sch.rfactor(ri, factor_axis=n_spatial)
        # the final block combines the partial sums per output: its spatial loops become tasks
        out_loops = sch.get_loops(red)
        par = sch.fuse(*out_loops[:n_spatial]) if n_spatial > 1 else out_loops[0]
        sch.compute_at(rf, par, preserve_unit_loops=True)
        outputs = 1
        for e in extents[:n_spatial]:
            outputs *= e  # type: ignore[operator]
        if outputs >= 2 and outputs * n_reduce >= MIN_PARALLEL_WORK:
            sch.parallel(par)  # before decompose_reduction, which the parallel check rejects
        # partial-result block: loops (par), lane, unit spatial loops, reduce -> the reduce loop
        # outside, lanes vectorized innermost
        rf_loops = sch.get_loops(rf)
        lane, red_loop = rf_loops[1], rf_loops[-1]
        if loop_extent(sch, lane) != width:
            return None
        sch.reorder(red_loop, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(rf, red_loop)
        sch.vectorize(sch.get_loops(init)[-1])
        skip = [red, rf]
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("inner reduction: %d outputs x %d elements, %d-wide partial sums",
                     outputs, n_reduce, width)
        return sch
