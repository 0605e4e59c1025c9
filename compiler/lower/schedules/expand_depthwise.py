"""Default CPU schedule for the fused expansion + depthwise kernel of
:mod:`compiler.lower.rewrites.expand_depthwise`.

Blocks are found by name (:data:`BLOCK_PREFIX`, which
:mod:`compiler.lower.rewrites.expand_depthwise` gives them). Each parallel task
owns one block of ``L`` channels (the packed weights' lanes) of the whole map -- or of a band
of output rows, when a whole map's tile would not stay in cache or there are too few channel
blocks to keep every core busy (:func:`_row_band`) -- and:

1. zero-fills the border of a padded ``[rows, W, L]`` tile and computes the expansion into its
   interior, ``XT`` pixels x ``L`` channels in registers (the input pixel broadcast, one
   weight vector per input channel and kernel tap), with the bias and activation applied on
   the way out; a padded expansion conv (the stem's 3x3) reads input rows that the task pads
   first;
2. computes the depthwise conv from that tile (still in cache), ``XT`` output pixels x ``L``
   channels in registers, and applies the fused epilogue (the depthwise conv's bias and
   activation) while writing NCHW output -- a transpose of the register tile, one element
   at a time -- or, for
   :func:`compiler.lower.rewrites.expand_depthwise.expand_depthwise_blocked_te`, the
   blocked ``[N, C / L, OH, OW, L]`` output, one vector store per pixel.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir
from tvm.s_tir.schedule import SBlockRV

from .common import (
    MatchingRule,
    attach_epilogue,
    choose_factor,
    compute_padding_at,
    loop_extent,
    schedule_other_blocks,
)
from .target_info import cpu_info

logger = logging.getLogger(__name__)

#: Prefix of the names of the kernel's blocks (given by the rewrite, found by the rule).
BLOCK_PREFIX = "hwcc_expand_dw_"

#: Pixels per register tile (accumulators = pixels x one channel vector).
TILE_PIXELS = 8


def _find(sch: s_tir.Schedule) -> dict[str, SBlockRV] | None:
    found = {stage: _find_optional(sch, stage) for stage in ("expand", "pad", "depthwise")}
    return None if None in found.values() else found


def _find_optional(sch: s_tir.Schedule, stage: str) -> SBlockRV | None:
    try:
        return sch.get_sblock(BLOCK_PREFIX + stage)
    except Exception:  # noqa: BLE001 - the schedule raises a generic error for missing names
        return None


#: Fewest output rows per band: each band recomputes ``kernel - stride`` expansion rows of its
#: neighbour's, a third of the work or more for bands under 4 rows of a 3x3 conv.
MIN_BAND_ROWS = 4
#: Largest padded expansion tile (one channel block, one band) kept per task: well inside a
#: core's L2 next to the input rows it is computed from.
TILE_BYTES = 256 * 1024


def _row_band(rows: int, blocks: int, cores: int, tile_row_bytes: int, stride: int,
              kernel: int = 3) -> int | None:
    """Output rows per band, or None for whole maps.

    Bands are used when a whole map's tile would not fit :data:`TILE_BYTES` (MobileNetV2's
    112x112 stage), when the channel blocks alone give fewer than two tasks per core (many
    cores, few channels), or when shorter bands shorten the busiest core's work: tasks are
    statically shared (9 channel blocks on 2 cores leave one core idle a ninth of the kernel),
    and each band recomputes the ``kernel - stride`` expansion rows it shares with its
    neighbour, so a band height is worth it when ``ceil(tasks / cores)`` times the expansion
    rows of one band drops. Bands are as tall as those allow, and at least
    :data:`MIN_BAND_ROWS` (shorter bands recompute too much).
    """
    bands = max(1, -(-rows * stride * tile_row_bytes // TILE_BYTES))
    if cores > 1:
        bands = max(bands, -(-2 * cores // blocks))
    band = choose_factor(rows, max(MIN_BAND_ROWS, rows // bands))
    if cores > 1:
        def busiest(height: int) -> int:  # expansion rows computed by the busiest core
            return -(-blocks * (rows // height) // cores) * ((height - 1) * stride + kernel)

        heights = [h for h in range(band, MIN_BAND_ROWS - 1, -1) if rows % h == 0]
        if heights:
            band = min(heights, key=busiest)  # the tallest of the best
    return band if band < rows else None


class ExpandDepthwise(MatchingRule):
    """Schedule :func:`compiler.lower.rewrites.expand_depthwise.expand_depthwise_te` kernels (see
    module doc).
    Returns None for any other function."""

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        return _find(sch)

    def schedule(self, sch: s_tir.Schedule, st: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        dw, pad, expand = st["depthwise"], st["pad"], st["expand"]
        input_pad = _find_optional(sch, "input_pad")
        lanes = loop_extent(sch, sch.get_loops(expand)[4])
        loops = sch.get_loops(dw)
        blocked = len(loops) == 7  # [N, C / L, OH, OW, L] output: no transpose on the way out
        if blocked:
            b, co, oy, ox, ci, ry, rx = loops
        else:
            b, c, oy, ox, ry, rx = loops
            co, ci = sch.split(c, [None, lanes])
        rows, cols = loop_extent(sch, oy), loop_extent(sch, ox)
        blocks = loop_extent(sch, co)
        xo, xi = sch.split(ox, [None, choose_factor(cols, TILE_PIXELS)])
        padded_width = int(sch.get(pad).iter_vars[3].dom.extent)
        stride = max(1, int(sch.get(expand).iter_vars[2].dom.extent) // rows)
        band = _row_band(rows, blocks, info.num_cores, padded_width * lanes * 4, stride,
                         loop_extent(sch, ry) or 1)
        if band is not None:
            # tasks: (band, channel block) pairs; a core's consecutive tasks share input rows
            oyo, oyi = sch.split(oy, [None, band])
            sch.reorder(b, oyo, co, oyi, xo, ry, rx, xi, ci)
            par = task = sch.fuse(b, oyo, co)
        else:
            sch.reorder(b, co, oy, xo, ry, rx, xi, ci)
            par = task = sch.fuse(b, co)
        tail = attach_epilogue(sch, dw, xo, lanes, unroll=TILE_PIXELS)
        if not blocked:
            # accumulators pixel-major, channels innermost: one vector register per output pixel
            sch.transform_layout(dw, ("write", 0), lambda n, f, y, x: (n, y, x, f))

        # the padded expansion tile, per task and channel block
        sch.compute_at(pad, task, preserve_unit_loops=True)
        loops = sch.get_loops(pad)
        py, px, pc = loops[-3:]
        fill = None
        if sch.can_decompose_padding(pad, loops[-4]):
            fill = sch.decompose_padding(pad, loops[-4])
            loops = sch.get_loops(pad)
            py, px, pc = loops[-3:]
        pxo, pxi = sch.split(px, [None, choose_factor(loop_extent(sch, px), TILE_PIXELS)])
        sch.reorder(py, pxo, pxi, pc)
        sch.set_scope(expand, 0, "local")
        sch.compute_at(expand, pxo, preserve_unit_loops=True)
        exi, eci, k, ky, kx = sch.get_loops(expand)[-5:]
        sch.reorder(k, ky, kx, exi, eci)
        if input_pad is not None:
            compute_padding_at(sch, input_pad, task, lanes)

        sch.parallel(par)
        sch.unroll(exi)
        # the activated tile is stored from the expansion's registers: unrolled, every access
        # to the accumulator has a constant index and LLVM keeps it in registers (with a loop,
        # it is also stored to the stack: 16 dead vector stores per tile)
        sch.unroll(pxi)
        sch.vectorize(eci)
        sch.vectorize(pc)
        if fill is not None:
            sch.vectorize(sch.get_loops(fill)[-1])
        sch.unroll(xi)
        sch.vectorize(ci)
        for lp in (ry, rx, ky, kx):
            ext = loop_extent(sch, lp)
            if ext is not None and ext <= 7:
                sch.unroll(lp)
        sch.decompose_reduction(dw, ry)
        sch.decompose_reduction(expand, k)
        skip = [dw, expand, pad] + ([tail] if tail is not None else []) + (
            [fill] if fill is not None else [])
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("expand+depthwise: lanes=%d band=%s", lanes, band)
        return sch
