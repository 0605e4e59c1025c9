"""Default CPU schedule for row-wise normalizations: LayerNorm, softmax, RMSNorm and kin."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from .analysis import region_buffer
from .common import MIN_PARALLEL_WORK, loop_extent, root_blocks
from .fallback import inline_spatial_chains
from .target_info import cpu_info, is_cpu_target

logger = logging.getLogger(__name__)


def _extents(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[int | None]:
    return [loop_extent(sch, lp) for lp in sch.get_loops(block)]


def _squeeze(extents: list[int | None]) -> list[int | None]:
    return [e for e in extents if e != 1]


def _kinds(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> str:
    return "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R"
                   for iv in sch.get(block).iter_vars)


class RowReduction(CPUScheduleRule):
    """Schedule for functions that reduce each row along its last axis and write the row out
    again: LayerNorm, softmax, RMSNorm, a normalization fused with its epilogue.

    Matches float32 functions whose last block is data-parallel over ``rows x cols`` (static
    extents) and whose other blocks either reduce one ``cols``-long axis per row (iterators
    ``S..SR`` over ``rows + [cols]``) or are data-parallel over ``rows`` or ``rows x cols``;
    at least one must reduce. Guarantees: semantics unchanged; all blocks of a row are computed
    inside one loop over the fused rows (parallel when the function does enough work), so
    the row is reused from cache; data-parallel column loops are vectorized, and reductions
    run in ``lanes`` vector partial sums/maxima (``rfactor``) that are then combined per row.
    Returns None for anything else, for the next rule.
    """

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        if not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        inline_spatial_chains(sch)
        blocks = root_blocks(sch)
        if len(blocks) < 2:
            return None
        out = blocks[-1]
        out_ext = _extents(sch, out)
        if len(out_ext) < 2 or None in out_ext or "R" in _kinds(sch, out):
            return None
        rows, cols = _squeeze(out_ext[:-1]), out_ext[-1]
        reductions = []
        for b in blocks[:-1]:
            ext, kinds = _extents(sch, b), _kinds(sch, b)
            if len(ext) != len(kinds) or None in ext:
                return None
            if kinds == "S" * (len(ext) - 1) + "R" and _squeeze(ext[:-1]) == rows \
                    and ext[-1] == cols:
                reductions.append(b)
            elif "R" in kinds or _squeeze(ext) not in (rows, rows + [cols]):
                return None
        if not reductions or any(region_buffer(sch.get(b).writes[0]).dtype != "float32"
                                 for b in blocks):
            return None

        lanes = cpu_info(target).lanes(32)
        vector = cols % lanes == 0 and cols >= 2 * lanes
        partials = [_partial_reduce(sch, b, lanes) for b in reductions] if vector else []
        blocks = root_blocks(sch)  # now with the partial-result blocks
        loops = sch.get_loops(out)
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=True)
        n_rows = 1
        for r in rows:
            n_rows *= r  # type: ignore[operator]
        if n_rows >= 2 and n_rows * cols >= MIN_PARALLEL_WORK:
            sch.parallel(row)
        if not vector:
            return sch  # rows in parallel, columns scalar: still cache-friendly
        for rf in partials:
            _vectorize_partial(sch, rf, lanes)
        for b in blocks:
            if "R" in _kinds(sch, b):  # reductions and their partial-result blocks
                continue
            inner = sch.get_loops(b)[-1]
            if loop_extent(sch, inner) == cols:
                _, vi = sch.split(inner, [None, lanes])
                sch.vectorize(vi)
        return sch


def _partial_reduce(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> s_tir.SBlockRV:
    """Split the reduction of ``block`` into ``lanes`` partial results per row (rfactor);
    ``block`` then combines them. Returns the partial-result block."""
    loops = sch.get_loops(block)
    _, ki = sch.split(loops[-1], [None, lanes])
    return sch.rfactor(ki, factor_axis=len(loops) - 1)


def _vectorize_partial(sch: s_tir.Schedule, rf: s_tir.SBlockRV, lanes: int) -> None:
    """Make the partial results one vector: lane loop innermost and vectorized, its
    initialization hoisted out of the reduction loop."""
    # compute_at left the loops in the order of the block's iterators: lane, rows.., reduce
    loops = sch.get_loops(rf)
    lane, red = loops[1], loops[-1]
    if loop_extent(sch, lane) != lanes:
        raise ValueError("unexpected loop order of the partial-result block")
    sch.reorder(red, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(rf, red)
    sch.vectorize(sch.get_loops(init)[-1])
