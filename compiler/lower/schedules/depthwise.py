"""Default CPU schedule for depthwise and grouped NCHW conv2d blocks."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV
from tvm.sym.pattern import detect_linear_equation
from tvm.tirx import IndexMap

from .analysis import region_buffer
from .common import (
    MIN_PARALLEL_WORK,
    MatchingRule,
    attach_epilogue,
    choose_factor,
    compute_padding_at,
    is_plain_copy,
    is_spatial_block,
    loop_extent,
    schedule_other_blocks,
    vector_factor,
)
from .conv2d import ConvMatch, match_conv2d
from .target_info import cpu_info

logger = logging.getLogger(__name__)


def _row_tile(y_ext: int, xv: int, lanes: int, registers: int, strided: bool) -> int:
    """Output rows per task, a divisor of ``y_ext`` (no tail predicate).

    All rows when their ``rows x xv`` accumulators fit in about 40% of the vector registers
    (the rest hold broadcast weights and loaded inputs): small feature maps (7x7, 14x14) get one
    task per channel. Otherwise as many rows as fit, at most 4 for strided convolutions, whose
    strided input loads need shuffle registers of their own.
    """
    budget = max(2, registers * 2 // 5)
    vectors = -(-xv // lanes)
    if y_ext * vectors <= budget:
        return y_ext
    rows = 4 if strided else max(1, budget // vectors)
    return choose_factor(y_ext, rows)


#: Channels per parallel task, when there are enough channels to keep every core busy.
CHANNELS_PER_TASK = 4


def _channels_per_task(channels: int, cores: int) -> int:
    """A divisor of ``channels`` (at most :data:`CHANNELS_PER_TASK`) leaving at least 8 tasks
    per core, else 1. Fewer, larger tasks pay the per-task costs (the padded tile's workspace
    allocation, loop set-up) less often (the commit that added this gives the hand-made
    single-kernel timings behind it; no benchmark script measures it)."""
    fc = choose_factor(channels, CHANNELS_PER_TASK)
    return fc if channels // fc >= 8 * cores else 1


def _phases(s: int):
    """Index map splitting the last index ``w`` into ``(w % s, w // s)``."""
    return lambda *i: (*i[:-1], i[-1] % s, i[-1] // s)


def _deinterleave_columns(sch: s_tir.Schedule, pad: SBlockRV, match: ConvMatch) -> bool:
    """Store the padded input of a stride-``s`` conv as ``[.., w % s, w // s]`` (phase planes).

    The conv then reads contiguous columns ``x + kx // s`` of plane ``kx % s`` instead of every
    ``s``-th element (which LLVM loads lane by lane). The padding block is re-indexed to iterate
    the new layout. Returns False (schedule unchanged) for stride 1, a width that is not a
    multiple of the stride, or a padding block that pads nothing (then inlined: the conv reads
    its input directly).
    """
    coef = detect_linear_equation(match.data.indices[-1], [match.x])
    if len(coef) != 2 or not isinstance(coef[0], tirx.IntImm) or int(coef[0].value) <= 1:
        return False
    s = int(coef[0].value)
    if int(match.data.buffer.shape[-1]) % s != 0 or is_plain_copy(sch, pad):
        return False
    try:
        ndim = len(match.data.buffer.shape)
        sch.transform_layout(pad, ("write", 0), IndexMap.from_func(_phases(s), ndim=ndim))
        iters = len(sch.get(pad).iter_vars)
        sch.transform_block_layout(pad, IndexMap.from_func(_phases(s), ndim=iters))
    except Exception as err:  # noqa: BLE001 - keep strided loads (slower, correct)
        logger.debug("depthwise: strided input not deinterleaved: %s", err)
        return False
    return True


class DepthwiseConv2d(MatchingRule):
    """Depthwise / grouped conv2d NCHW: output width in vector registers, rows tiled.

    Matches :func:`compiler.lower.schedules.conv2d.match_conv2d` results whose data index depends on
    the output channel (``groups > 1``) and whose data's last index follows the output width.
    Each parallel task covers a few channels (:func:`_channels_per_task`; else one channel and
    ``YT`` rows); each register tile is ``YT`` rows x ``XV`` columns with the reduction
    (window, and input channels of the group) inside. Padding is computed per task (stored
    as column phases for strided convs, :func:`_deinterleave_columns`), the elementwise
    epilogue per tile. Returns None for anything else.
    """

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        match = match_conv2d(sch)
        if match is None or not match.grouped or match.x is None:
            return None
        if not match.data.uses(match.x) or match.x not in match.data.used[-1]:
            return None
        return match

    def schedule(self, sch: s_tir.Schedule, match: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        lanes = info.lanes(32)
        con = match.con
        main = con.block
        x_ext, y_ext = con.extent(match.x), con.extent(match.y)
        xv = vector_factor(x_ext, lanes, max_vectors=2)
        strided = int(match.data.buffer.shape[-1]) >= 2 * x_ext
        yt = _row_tile(y_ext, xv, lanes, info.vector_registers, strided)
        lb, lf, ly, lx = (con.loop_of(v) for v in (match.b, match.f, match.y, match.x))
        reduce_loops = [lp for lp in (con.loop_of(v) for v in con.reduce) if lp is not None]
        xo, xi = sch.split(lx, [None, xv])
        yo = yi = None
        if ly is not None:
            yo, yi = sch.split(ly, [None, yt])
        fi = None
        fc = _channels_per_task(con.extent(match.f), info.num_cores)
        if fc > 1:
            lf, fi = sch.split(lf, [None, fc])
        # tasks: channel groups (rows serial inside), or channels x row tiles
        outer = [lp for lp in (lb, lf) if lp is not None]
        serial = [lp for lp in (fi, yo) if lp is not None]
        if fi is None:
            outer, serial = outer + serial, []
        sch.reorder(*outer, *serial, xo, *reduce_loops, *([yi] if yi is not None else []), xi)
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        tail = attach_epilogue(sch, main, xo, lanes)
        for producer in sch.get_producers(main):
            written = region_buffer(sch.get(producer).writes[0])
            if written.same_as(match.data.buffer) and is_spatial_block(sch, producer):
                phased = x_ext >= lanes and _deinterleave_columns(sch, producer, match)
                compute_padding_at(sch, producer, par, lanes, decompose=False)
                if phased:
                    # phases innermost and unrolled: each step loads s adjacent input columns
                    # (an interleaved group LLVM vectorizes) and stores one per phase plane
                    phase, column = sch.get_loops(producer)[-2:]
                    sch.reorder(column, phase)
                    sch.unroll(phase)
        work = int(np.prod(list(con.extents.values())))
        if work >= MIN_PARALLEL_WORK:
            sch.parallel(par)
        if yi is not None and yt > 1:
            sch.unroll(yi)
        sch.vectorize(xi)
        for lp in reduce_loops:
            ext = loop_extent(sch, lp)
            if ext is not None and ext <= 7:
                sch.unroll(lp)
        if reduce_loops:
            sch.decompose_reduction(main, reduce_loops[0])
        skip = [main] + ([tail] if tail is not None else [])
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("depthwise: XV=%d YT=%d", xv, yt)
        return sch
