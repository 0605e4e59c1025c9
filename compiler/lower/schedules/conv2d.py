"""Default CPU schedule for NCHW conv2d blocks (any kernel size, stride, dilation, padding)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

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
    compute_padding_at,
    is_plain_copy,
    is_spatial_block,
    schedule_other_blocks,
    vector_factor,
)
from .packing import WeightPack
from .target_info import cpu_info, is_cpu_target

logger = logging.getLogger(__name__)


@dataclass
class ConvMatch:
    """A matched NCHW convolution ``out[b, f, y, x] += data[..] * weight[..]``.

    ``grouped`` is True when the data index depends on the output channel ``f`` (depthwise and
    grouped convolutions); ``packed`` is the channel block of a packed weight
    ``[f // c, .., f % c]``, else None.
    """

    con: Contraction
    b: tirx.Var | None
    f: tirx.Var
    y: tirx.Var | None
    x: tirx.Var | None
    data: Operand
    weight: Operand
    grouped: bool
    packed: int | None


def match_conv2d(sch: s_tir.Schedule) -> ConvMatch | None:
    """Find the single NCHW convolution contraction of the function, or None.

    Requirements: one contraction block whose output is 4-D ``[b, f, y, x]`` (unit dims
    allowed except ``f``; with ``y`` and ``x`` both unit, the data operand is the one that does
    not use ``f``) with at least one reduction iterator; a *weight* operand that uses
    ``f`` but neither ``y`` nor ``x``, indexed ``[f, ...]`` or packed ``[f // c, ..., f % c]``;
    a *data* operand that uses ``y``/``x`` but no weight-only index. All other blocks must be
    data-parallel (padding, epilogues).
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
        found = match_contraction(sch, info)
        if found is None:
            return None
    con = found
    if con is None or len(con.out_vars) != 4 or not con.reduce or not con.is_static():
        return None
    b, f, y, x = con.out_vars
    if f is None:
        return None
    pointwise = y is None and x is None  # a 1x1 map (squeeze-and-excitation): a mat-vec
    weight = data = None
    for op in con.operands:
        if op.uses(f) and not op.uses(y) and not op.uses(x):
            weight = op
        elif op.uses(y) or op.uses(x) or (pointwise and not op.uses(f)):
            data = op
    if weight is None or data is None or weight is data:
        return None
    if b is not None and weight.uses(b):
        return None
    packed = packed_factor(weight, f, 5)
    if packed is None:
        if not is_plain(weight.indices[0], f) or len(weight.indices) != 4:
            return None
        if any(f in u for u in weight.used[1:]):
            return None
    return ConvMatch(con, b, f, y, x, data, weight, data.uses(f), packed)


#: Output-channel vectors per tile (the register tile is ``CHANNEL_VECTORS x XT`` vectors).
CHANNEL_VECTORS = 2


def _channel_block(match: ConvMatch, target: tvm.target.Target, padded: bool = False) -> int:
    """Output channels per register tile: whole vectors dividing the channel count, or (with
    ``padded``, for a weight packed at compile time) one whole vector over channels padded
    with zero filters where :func:`_pads_channels` finds that better."""
    info = cpu_info(target)
    lanes = info.lanes(32)
    extent = match.con.extent(match.f)
    if match.packed:
        return match.packed
    if padded and _pads_channels(extent, lanes):
        return lanes
    width = vector_factor(extent, lanes, max_vectors=CHANNEL_VECTORS)
    if 2 * width == lanes and extent % (3 * width) == 0 and info.vector_registers >= 32:
        # 24 channels of 16 lanes: three half vectors (see :func:`_half_vectors`); their
        # 3 x XT accumulators need the 32-register file (AVX2's 16 would spill)
        return 3 * width
    return width


def _half_vectors(c: int, lanes: int) -> int | None:
    """Half-vector width when a register tile of ``c`` channels is several half vectors (24
    channels with 16 lanes: 3 x 8), else None. The channel loop is then split into unrolled
    half vectors: one 24-lane vector would be legalized by LLVM into shuffles and spills, and
    a tile of one half vector loads as many broadcast inputs as it issues FMAs (the loads, not
    the FMAs, then bound it)."""
    half = lanes // 2
    if c % lanes != 0 and c > half and c % half == 0:
        return half
    return None


#: Largest share of padded (wasted) channels accepted where half vectors would also do.
PAD_WASTE = 0.1


def _pads_channels(extent: int, lanes: int) -> bool:
    """Whether ``extent`` output channels are better computed padded to whole vectors.

    The alternative is the widest vector dividing the channel count. That is fine when it is a
    power of two of at least half a vector (24 channels: 8 lanes; on Zen 4 two 8-lane FMAs
    issue per cycle, as many lanes as one 16-lane FMA), so those are padded only when padding
    wastes under :data:`PAD_WASTE` of the work (232 -> 240). Odd widths (ShuffleNet's 116 = 4 x
    29 lanes, which LLVM splits into shuffles and spills) and quarter vectors are always
    padded.
    """
    if extent % lanes == 0 or extent < lanes:
        return False
    width = vector_factor(extent, lanes, max_vectors=CHANNEL_VECTORS)
    good = width & (width - 1) == 0 and extent % width == 0 and 2 * width >= lanes
    used = extent / (-(-extent // lanes) * lanes)
    return not good or used >= 1.0 - PAD_WASTE


def _width_tile(c: int, x_ext: int, target: tvm.target.Target) -> int:
    """Output columns per register tile: about half the vector registers hold accumulators."""
    info = cpu_info(target)
    budget = 16 if info.vector_registers >= 32 else 12
    xt = max(1, budget // -(-c // info.lanes(32)))
    return choose_factor(x_ext, xt, minimum=max(1, xt // 2))


#: Most vectors of output pixels in one register tile of the pixel-vectorized 1x1 schedule.
PIXEL_VECTORS = 8


@dataclass(frozen=True)
class PixelTile:
    """Register tile of the pixel-vectorized 1x1 conv: ``channels`` output channels x ``rows``
    whole output rows, whose pixels fill whole vectors."""

    channels: int
    rows: int


def _data_producer(sch: s_tir.Schedule, match: ConvMatch) -> SBlockRV | None:
    """The block writing the conv's data (legalization's padding block), None for a parameter."""
    for producer in sch.get_producers(match.con.block):
        if region_buffer(sch.get(producer).writes[0]).same_as(match.data.buffer):
            return producer
    return None


def _pixel_tile(
    sch: s_tir.Schedule, match: ConvMatch, target: tvm.target.Target
) -> PixelTile | None:
    """The tile for vectorizing a 1x1 conv along output pixels, or None.

    Chosen when the output channels do not fill whole vectors (24, 40, 72 channels with 16
    lanes: channel vectors would run half empty) but rows of pixels do: a 1x1, stride-1,
    unpadded conv reads and writes each channel's pixels contiguously in NCHW, so ``rows``
    output rows (the fewest dividing the height whose pixels are a multiple of the lanes, at
    most :data:`PIXEL_VECTORS` vectors) are the vector dimension and each weight is broadcast.
    ``channels`` is the largest divisor of the output channels that keeps the accumulators
    within the vector registers (at least 2).
    """
    if match.grouped or match.y is None or match.x is None:
        return None
    info = cpu_info(target)
    lanes = info.lanes(32)
    con = match.con
    out_channels = con.extent(match.f)
    height, width = con.extent(match.y), con.extent(match.x)
    wshape = [int(d) for d in match.weight.buffer.shape]
    dshape = [int(d) for d in match.data.buffer.shape]
    if out_channels % lanes == 0 or wshape[2:4] != [1, 1] or dshape[2:] != [height, width]:
        return None
    producer = _data_producer(sch, match)
    if producer is not None and not is_plain_copy(sch, producer):
        return None  # a padded 1x1 conv (its border outputs are bias only)
    rows = next((r for r in range(1, height + 1)
                 if height % r == 0 and r * width % lanes == 0), None)
    if rows is None or rows * width // lanes > PIXEL_VECTORS:
        return None
    vectors = rows * width // lanes
    # live registers per reduction step: the accumulators, the pixel vectors loaded for all
    # channels of the tile, and one broadcast weight; more spill accumulators to the stack
    # every step (4 x 7 accumulators at 56 columns ran at half speed, and no faster on 2 cores)
    channels = max((c for c in range(1, out_channels + 1)
                    if out_channels % c == 0
                    and c * vectors + vectors + 1 <= info.vector_registers), default=1)
    if channels < 2:
        return None
    return PixelTile(channels, rows)


def _place_padding(sch: s_tir.Schedule, pad, par, lanes: int) -> None:
    """Compute the padded input per parallel task (vectorized, no select), else inline it."""
    if compute_padding_at(sch, pad, par, lanes):
        return
    try:
        sch.compute_inline(pad)
    except Exception as err:  # noqa: BLE001 - keep a separate padding nest
        logger.debug("conv2d: padding not inlined: %s", err)


class Conv2d(MatchingRule):
    """Conv2d NCHW (not grouped): output channels in vector registers, weights packed.

    Matches :func:`match_conv2d` results whose data index does not depend on the output channel
    (so not depthwise/grouped). The weight ``[O, I, KH, KW]`` is packed at compile time to
    ``[O // c, I, KH, KW, c]`` (``c`` = one or two vectors, dividing ``O``); each task computes a
    ``c x XT`` tile of one output row with all reduction loops inside, accumulating in registers
    (channels innermost), and applies the fused elementwise epilogue (bias, BN-folded affine,
    ReLU, residual add) per tile. Padding is computed per task (zero fill + vectorized copy).
    A weight that is not a constant is packed inside the kernel on every call. 1x1 convs whose
    output channels fill no whole vectors are vectorized along rows of pixels instead
    (:func:`_pixel_tile`, :func:`_schedule_pixels`). Returns None for anything else.
    """

    def pack_plan(self, func: tirx.PrimFunc, target: tvm.target.Target) -> WeightPack | None:
        """Plan to pack a parameter weight ``[O, I, KH, KW]`` into ``[O // c, I, KH, KW, c]``."""
        if not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        match = match_conv2d(sch)
        if match is None or match.grouped or match.packed is not None:
            return None
        idx = param_index(func, match.weight.buffer)
        if idx is None:
            return None
        pixels = _pixel_tile(sch, match, target)
        c = pixels.channels if pixels is not None else _channel_block(match, target, padded=True)
        out_channels = match.con.extent(match.f)
        pad = -out_channels % c
        if c == 1 or (pad and pixels is not None):
            return None
        block = sch.get(match.con.block)
        reads = [
            i for i, r in enumerate(block.reads) if region_buffer(r).same_as(match.weight.buffer)
        ]
        if len(reads) != 1:
            return None

        def index_map(o, i, h, w):
            return (o // c, i, h, w, o % c)

        def pack(wt: np.ndarray) -> np.ndarray:
            wt = np.pad(wt, [(0, pad), (0, 0), (0, 0), (0, 0)])  # zero filters: padded channels
            o, i, h, w = wt.shape
            return wt.reshape(o // c, c, i, h, w).transpose(0, 2, 3, 4, 1)

        return WeightPack(block.name_hint, reads[0], idx, index_map, pack,
                          pad_value=0.0 if pad else None)

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        match = match_conv2d(sch)
        return None if match is None or match.grouped else match

    def schedule(self, sch: s_tir.Schedule, match: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        lanes = info.lanes(32)
        pixels = _pixel_tile(sch, match, target)
        if pixels is not None and match.packed in (None, pixels.channels):
            return _schedule_pixels(sch, match, pixels, info.lanes(32))
        con = match.con
        main = con.block
        c = match.packed
        if c is None:
            # weight is not a constant: pack it inside the kernel (one copy per call)
            c = _channel_block(match, target)
            if con.extent(match.f) % c != 0 or len(match.weight.indices) != 4:
                return None
            block = sch.get(main)
            reads = [
                i
                for i, r in enumerate(block.reads)
                if region_buffer(r).same_as(match.weight.buffer)
            ]
            if len(reads) != 1:
                return None
            sch.cache_read(main, reads[0], "global")
            sch.transform_layout(
                main, ("read", reads[0]), lambda o, i, h, w: (o // c, i, h, w, o % c)
            )
        xt = _width_tile(c, con.extent(match.x) if match.x is not None else 1, target)
        pad = None
        for producer in sch.get_producers(main):
            written = region_buffer(sch.get(producer).writes[0])
            if written.same_as(match.data.buffer) and is_spatial_block(sch, producer):
                pad = producer
        lb, lf, ly, lx = (con.loop_of(v) for v in (match.b, match.f, match.y, match.x))
        reduce_loops = [con.loop_of(v) for v in con.reduce]
        reduce_loops = [lp for lp in reduce_loops if lp is not None]
        # a weight packed with zero filters up to whole vectors (:func:`_pads_channels`): the
        # register tile computes the padded channels too (no predicate, so it stays vectors);
        # the epilogue, computed per tile, writes only the real ones. A conv writing the output
        # itself gets its write-back block now, so that it has the real channels' domain.
        padded = con.extent(match.f) % c != 0
        output = region_buffer(sch.get(main).writes[0])
        if padded and param_index(sch.mod["main"], output) is not None:
            sch.cache_write(main, 0, "local")
        fo, fi = sch.split(lf, [None, c], disable_predication=padded)
        xo = xi = None
        if lx is not None:
            xo, xi = sch.split(lx, [None, xt])
        # rows outside channel blocks: the input rows a task reads are reused by every block
        outer = [lp for lp in (lb, ly) if lp is not None]
        inner_tile = [fo] + ([xo] if xo is not None else [])
        rows = int(np.prod([con.extent(v) for v in (match.b, match.y) if v is not None]))
        blocks = con.extent(match.f) // c
        cores = info.num_cores
        if not outer or (rows < 4 * cores and (pad is None or is_plain_copy(sch, pad))):
            # too few rows to share among the cores (7x7 maps: 7 tasks on 2 cores leave one
            # idle 1/7 of the time): channel blocks become parallel tasks too
            outer, inner_tile = [*outer, fo], inner_tile[1:]
        elif rows < 4 * cores and cores > 1 and blocks % cores == 0:
            # the same with padding: channel blocks in one group per core, so that each task
            # pads its input rows once per group, not once per block
            fg, fo = sch.split(fo, [cores, None])
            outer, inner_tile = [*outer, fg], [fo, *inner_tile[1:]]
        sch.reorder(*outer, *inner_tile, *reduce_loops, *([xi] if xi is not None else []), fi)
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        tile_loop = inner_tile[-1] if inner_tile else par
        tail = attach_epilogue(sch, main, tile_loop, lanes)
        if tail is not None:
            sch.transform_layout(main, ("write", 0), lambda b, f, y, x: (b, y, x, f))
        elif padded:
            return None  # nothing would guard the padded channels' writes
        if pad is not None:
            _place_padding(sch, pad, par, lanes)
        work = int(np.prod(list(con.extents.values())))
        if work >= MIN_PARALLEL_WORK:
            sch.parallel(par)
        if xi is not None and xt > 1:
            sch.unroll(xi)
        half = _half_vectors(c, lanes)
        if half is not None:
            fh, fi = sch.split(fi, [None, half])
            sch.unroll(fh)
        sch.vectorize(fi)
        if reduce_loops:
            last = reduce_loops[-1]
            ext = sch.get(last).extent
            if isinstance(ext, tirx.IntImm) and int(ext.value) <= 7:
                sch.unroll(last)
            sch.decompose_reduction(main, reduce_loops[0])
        skip = [main] + ([tail] if tail is not None else [])
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        logger.debug("conv2d: c=%d XT=%d", c, xt)
        return sch


def _schedule_pixels(
    sch: s_tir.Schedule, match: ConvMatch, tile: PixelTile, lanes: int
) -> s_tir.Schedule:
    """1x1 conv vectorized along output pixels (see :func:`_pixel_tile`).

    Each task computes ``tile.channels`` output channels x ``tile.rows`` rows: the reduction
    over input channels outside, the tile's accumulators (channels x pixel vectors) in
    registers, one input vector load per pixel vector and one weight broadcast per channel.
    The epilogue writes whole vectors of NCHW output, no transpose. Tasks are (rows, channel
    tile) pairs, channel tiles innermost, so a core's consecutive tasks reuse the same input rows.
    """
    con = match.con
    main = con.block
    copy = _data_producer(sch, match)  # checked by _pixel_tile: a plain copy (pad=0) or none
    if copy is not None:
        sch.compute_inline(copy)
    lb, lf, ly, lx = (con.loop_of(v) for v in (match.b, match.f, match.y, match.x))
    reduce_loops = [lp for lp in (con.loop_of(v) for v in con.reduce) if lp is not None]
    fo, fi = sch.split(lf, [None, tile.channels])
    yo, yi = sch.split(ly, [None, tile.rows])
    pixels = sch.fuse(yi, lx)
    po, pv = sch.split(pixels, [None, lanes])
    outer = [lp for lp in (lb, yo, fo) if lp is not None]
    sch.reorder(*outer, *reduce_loops, fi, po, pv)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    attach_epilogue(sch, main, par, lanes, fuse_inner=2)
    if int(np.prod(list(con.extents.values()))) >= MIN_PARALLEL_WORK:
        sch.parallel(par)
    sch.unroll(fi)
    sch.unroll(po)
    sch.vectorize(pv)
    if reduce_loops:
        sch.decompose_reduction(main, reduce_loops[0])
    logger.debug("conv2d 1x1 by pixels: %d channels x %d rows", tile.channels, tile.rows)
    return sch
