"""Default CPU schedule for pooling windows (max / sum pooling over a padded NCHW input)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .analysis import block_infos, is_plain, load_buffer, region_buffer, same_indices
from .common import (
    MIN_PARALLEL_WORK,
    MatchingRule,
    attach_epilogue,
    compute_padding_at,
    is_spatial_block,
    loop_extent,
    schedule_other_blocks,
    vector_factor,
)
from .target_info import cpu_info

logger = logging.getLogger(__name__)

#: Largest pooling window (product of the reduction extents) this rule takes.
MAX_WINDOW = 64

_LOAD = type(tirx.BufferLoad(tirx.decl_buffer((1,), "float32"), [tirx.IntImm("int32", 0)]))


@dataclass
class PoolMatch:
    """A matched window reduction ``out[s..] = op(out[s..], data[..])``.

    ``spatial`` / ``reduce`` are the block's loops (one per iterator, spatial ones first);
    ``pad`` is the data-parallel block producing ``data`` (padding), or None.
    """

    block: SBlockRV
    spatial: list[LoopRV]
    reduce: list[LoopRV]
    data: tirx.Buffer
    pad: SBlockRV | None


def _window_value(store: tirx.BufferStore) -> tirx.PrimExpr | None:
    """The loaded data of ``out = max(out, data)`` / ``out = out + data``, else None."""
    value = store.value
    if not isinstance(value, (tirx.Max, tirx.Add)):
        return None
    for acc, other in ((value.a, value.b), (value.b, value.a)):
        if (
            isinstance(acc, _LOAD)
            and load_buffer(acc).same_as(store.buffer)
            and same_indices(list(acc.indices), list(store.indices))
            and isinstance(other, _LOAD)
        ):
            return other
    return None


def match_pool(sch: s_tir.Schedule) -> PoolMatch | None:
    """Find the single pooling reduction of the function, or None.

    Requirements (after DLight's loop normalization): exactly one reduction block, spatial
    iterators before reduction ones; its body is ``out = max(out, data[..])`` or
    ``out = out + data[..]`` with a constant init; the last index of ``out`` is the last
    spatial iterator (output width, static extent >= 4), which appears in the last index of
    ``data`` and in no other; the window (product of the reduction extents) is static and at
    most :data:`MAX_WINDOW`. A producer of ``data`` must be data-parallel (padding).
    """
    infos = block_infos(sch)
    if infos is None:
        return None
    reductions = [info for info in infos if info.is_reduction()]
    if len(reductions) != 1:
        return None
    info = reductions[0]
    main = info.block_rv
    stmt = sch.get(main)
    if stmt.init is None or not isinstance(stmt.init, tirx.BufferStore):
        return None
    if not isinstance(stmt.init.value, (tirx.FloatImm, tirx.IntImm)):
        return None
    store = stmt.body
    if not isinstance(store, tirx.BufferStore):
        return None
    data_load = _window_value(store)
    if data_load is None:
        return None
    kinds = [it.kind for it in info.iters]
    if "R" not in kinds or any(k not in ("S", "R") for k in kinds):
        return None
    n_spatial = kinds.index("R")
    if n_spatial < 2 or "S" in kinds[n_spatial:]:
        return None
    spatial, reduce = info.iters[:n_spatial], info.iters[n_spatial:]
    window = 1
    for it in reduce:
        ext = loop_extent(sch, it.loop_rv)
        if ext is None:
            return None
        window *= ext
    if window > MAX_WINDOW:
        return None
    x_var = spatial[-1].var
    if not list(store.indices) or not is_plain(store.indices[-1], x_var):
        return None
    width = loop_extent(sch, spatial[-1].loop_rv)
    if width is None or width < 4:
        return None
    indices = list(data_load.indices)
    used = [set(tirx.analysis.undefined_vars(i)) for i in indices]
    if not indices or x_var not in used[-1] or any(x_var in u for u in used[:-1]):
        return None
    data = load_buffer(data_load)
    pad = None
    for producer in sch.get_producers(main):
        if region_buffer(sch.get(producer).writes[0]).same_as(data):
            if not is_spatial_block(sch, producer):
                return None
            pad = producer
    spatial_loops = [it.loop_rv for it in spatial]
    return PoolMatch(main, spatial_loops, [it.loop_rv for it in reduce], data, pad)


class Pool2d(MatchingRule):
    """Max / sum pooling: output width vectorized, windows unrolled, padding per channel.

    Matches what :func:`match_pool` accepts (``max_pool2d``, the sum of ``avg_pool2d``, with or
    without a padding block, any stride and dilation). The output is computed row by row with
    the window loops outside a vector of output columns accumulated in registers; the spatial
    loops above the output row (batch, channel) are fused and parallelized, and the padded
    input is produced per task (a vectorized fill + interior copy instead of a per-element
    select over the whole tensor). A following elementwise epilogue (average division) is
    computed per vector. Returns None for anything else.
    """

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        return match_pool(sch)

    def schedule(self, sch: s_tir.Schedule, match: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        out = region_buffer(sch.get(match.block).writes[0])
        lanes = info.lanes(tvm.DataType(out.dtype).bits)
        main = match.block
        *outer, row, col = match.spatial
        width = loop_extent(sch, col)
        vf = vector_factor(width, lanes, max_vectors=1)
        if width % vf != 0:
            return None
        work = 1
        for lp in (*match.spatial, *match.reduce):
            work *= loop_extent(sch, lp) or 1
        xo, xi = sch.split(col, [None, vf])
        # parallel over (batch, channel); rows too when there are too few channels
        tasks = 1
        for lp in outer:
            tasks *= loop_extent(sch, lp) or 1
        par_loops = list(outer) if tasks >= 4 * info.num_cores else [*outer, row]
        inner = [] if row in par_loops else [row]
        sch.reorder(*par_loops, *inner, xo, *match.reduce, xi)
        par = sch.fuse(*par_loops) if len(par_loops) > 1 else par_loops[0]
        tail = attach_epilogue(sch, main, xo, lanes)
        if match.pad is not None and not compute_padding_at(sch, match.pad, par, lanes):
            try:
                sch.compute_inline(match.pad)
            except Exception as err:  # noqa: BLE001 - keep the padding as its own nest
                logger.debug("pool: padding left as a separate nest: %s", err)
        if work >= MIN_PARALLEL_WORK and (loop_extent(sch, par) or 2) >= 2:
            sch.parallel(par)
        for lp in match.reduce:
            sch.unroll(lp)
        sch.vectorize(xi)
        sch.decompose_reduction(main, match.reduce[0])
        skip = [main] + ([tail] if tail is not None else [])
        if match.pad is not None:
            skip.append(match.pad)
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("pool: VF=%d parallel over %d loops", vf, len(par_loops))
        return sch
