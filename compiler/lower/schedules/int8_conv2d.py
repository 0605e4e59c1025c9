"""Default CPU schedule for int8 NCHW conv2d blocks: packed weights, dot product tensorized.

Matches what the quantize pass emits for ``R.nn.conv2d(x_q, w_q, out_dtype="int32")`` (not
grouped)::

    out[b, f, y, x] += i32(data[b, c, y*s + ry*d, x*s + rx*d]) * i32(W[f, c, ry, rx])

with ``data`` the uint8 (x86) or int8 (AArch64) input or its explicit padding block. Without
im2col, as a matmul over ``(c, ry, rx)`` that reads the input in place (``L`` the int32 lanes of
the target's one-row dot product, :class:`.int8_common.DotISA`: 16 for VNNI on zmm, 8 on ymm,
4 for NEON ``sdot``):

* the constant weight is packed at compile time to ``[F/L, C/4, KH, KW, L, 4]`` (zero padded);
* the (padded) input is laid out ``[b, C/4, H, W, 4]`` (channels blocked by 4 for the
  intrinsic's 4 8-bit operands; a copy of the input when the conv has no padding block), the
  padding channels read zero weights;
* each parallel task computes a ``XT`` columns × ``L·NV`` channels register tile of one output
  row over all of ``(c, ry, rx)``; the inner ``L x 4`` is one ``vpdpbusd`` / ``sdot`` (or the
  ``vpmaddubsw`` pair);
* the int32 accumulator is a per-tile local buffer ``[.., F/L, .., L]`` and the fused epilogue
  (bias, requantize, clamp, residual add, cast) is computed per tile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym import Analyzer

from .analysis import Contraction, Operand, block_infos, is_plain, param_index, region_buffer
from .common import (
    choose_factor,
    inline_epilogue_chain,
    is_spatial_block,
)
from .int8_common import (
    K_BLOCK,
    DotISA,
    dot_isa,
    finish_tensorized,
    pairs_fit_int16,
    read_index,
    round_up,
    single_int_contraction,
)
from .packing import WeightPack
from .target_info import cpu_info

logger = logging.getLogger(__name__)


@dataclass
class Int8ConvMatch:
    """A matched int8 NCHW convolution; ``c`` is the input-channel reduction iterator."""

    con: Contraction
    b: tirx.Var | None
    f: tirx.Var
    y: tirx.Var | None
    x: tirx.Var | None
    c: tirx.Var | None
    data: Operand
    weight: Operand
    packed: bool


def _weight_packed(
    weight: Operand, f: tirx.Var, c: tirx.Var | None, f_ext: int, c_ext: int, lanes: int
) -> bool:
    """Whether ``weight`` is read as ``[f//L, c//4, kh, kw, f%L, c%4]`` from a padded buffer."""
    if len(weight.indices) != 6:
        return False
    shape = [int(d) for d in weight.buffer.shape]
    if (
        shape[0] != round_up(f_ext, lanes) // lanes
        or shape[1] != round_up(c_ext, K_BLOCK) // K_BLOCK
    ):
        return False
    if shape[4:] != [lanes, K_BLOCK]:
        return False
    ana = Analyzer()
    ana.bind(f, tvm.ir.Range(0, f_ext))
    cv = c if c is not None else tirx.IntImm("int64", 0)
    if c is not None:
        ana.bind(c, tvm.ir.Range(0, c_ext))
    expected = {0: f // lanes, 1: cv // K_BLOCK, 4: f % lanes, 5: cv % K_BLOCK}
    if not all(ana.can_prove_equal(weight.indices[i], e) for i, e in expected.items()):
        return False
    return not any(f in weight.used[i] or (c is not None and c in weight.used[i]) for i in (2, 3))


def match_int8_conv2d(sch: s_tir.Schedule, isa: DotISA) -> Int8ConvMatch | None:
    """Find the single 8-bit NCHW (not grouped) convolution of the function ``isa`` computes.

    Requirements: one integer contraction with a 4-D output ``[b, f, y, x]`` (``f`` not unit),
    static extents; a *data* operand ``[b, c, h(y, ry), w(x, rx)]`` of the ISA's activation
    dtype (:attr:`.DotISA.lhs_dtype`: uint8 on x86, int8 on AArch64) that does not use ``f``;
    an int8 *weight* ``[f, c, ry, rx]`` (or packed for ``isa``) that uses neither ``y`` nor
    ``x``; the input channel ``c`` (a reduction iterator, absent when there is one channel)
    indexes only dimension 1 of both. None otherwise.
    """
    infos = block_infos(sch)
    if infos is None:
        return None
    con = single_int_contraction(sch, infos)
    if con is None or len(con.out_vars) != 4 or not con.reduce or not con.is_static():
        return None
    b, f, y, x = con.out_vars
    if f is None:
        return None
    weight = data = None
    for op in con.operands:
        if op.uses(f) and not op.uses(y) and not op.uses(x):
            weight = op
        elif not op.uses(f):
            data = op
    if weight is None or data is None or weight is data:
        return None
    if (data.buffer.dtype != isa.lhs_dtype or weight.buffer.dtype != "int8"
            or len(data.indices) != 4):
        return None
    if b is not None and weight.uses(b):
        return None
    c = None
    for r in con.reduce:
        if data.dims_of(r) == [1] and weight.uses(r):
            c = r
    if c is not None and not is_plain(data.indices[1], c):
        return None
    if c is None and not (
        isinstance(data.indices[1], tirx.IntImm) and int(data.buffer.shape[1]) == 1
    ):
        return None
    for r in con.reduce:
        if r is not c and (1 in data.dims_of(r) or 0 in data.dims_of(r)):
            return None
    if b is not None and data.dims_of(b) not in ([0], []):
        return None
    f_ext = con.extent(f)
    c_ext = con.extent(c) if c is not None else 1
    packed = _weight_packed(weight, f, c, f_ext, c_ext, isa.lanes)
    if not packed:
        if len(weight.indices) != 4 or not is_plain(weight.indices[0], f):
            return None
        if c is not None and not is_plain(weight.indices[1], c):
            return None
        if any(f in u or (c is not None and c in u) for u in weight.used[2:]):
            return None
    return Int8ConvMatch(con, b, f, y, x, c, data, weight, packed)


def vnni_pack_conv(w: np.ndarray, lanes: int) -> np.ndarray:
    """Pack an int8 ``[F, C, KH, KW]`` weight to ``[F/L, C/4, KH, KW, L, 4]`` (zero padded)."""
    fo, ci, kh, kw = w.shape
    fp, cp = round_up(fo, lanes), round_up(ci, K_BLOCK)
    padded = np.zeros((fp, cp, kh, kw), dtype=w.dtype)
    padded[:fo, :ci] = w
    blocked = padded.reshape(fp // lanes, lanes, cp // K_BLOCK, K_BLOCK, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))


def max_channel_vectors(lanes: int) -> int:
    """Channel vectors a conv tile may span: 2 on x86 (16 or 32 channels), 4 on NEON's 4-lane
    ``sdot`` (16 channels: 4 weight loads and XT = 6 broadcasts per step feed 24
    accumulators, instead of 2 and 12 with NV = 2)."""
    return max(2, 16 // lanes)


def _tiles(f_blocks: int, x_ext: int, accumulators: int, max_nv: int = 2) -> tuple[int, int]:
    """``(NV, XT)``: channel vectors and output columns per tile, at most ``accumulators``.

    ``XT`` divides the row (a tail predicate would keep the block from matching the dot
    intrinsic); ``NV`` is a power of two up to ``max_nv`` dividing the channel blocks. The
    tile holding the most accumulators wins; among equals, the one with fewer loads per step
    (``NV + XT``).
    """
    best = (0, 0, 1, 1)
    nvs = [1 << i for i in range(max_nv.bit_length()) if 1 << i <= max_nv]
    for nv in nvs:
        if f_blocks % nv:
            continue
        xt = choose_factor(x_ext, max(1, accumulators // nv), minimum=1)
        best = max(best, (nv * xt, -(nv + xt), nv, xt))
    return best[2], best[3]


def schedule_int8_conv2d(
    sch: s_tir.Schedule, match: Int8ConvMatch, isa: DotISA, num_cores: int
) -> s_tir.Schedule | None:
    """Lay out the input, pad, tile and tensorize a matched conv with a packed weight."""
    con = match.con
    main = con.block
    lanes = isa.lanes
    func = sch.mod["main"]
    f_ext = con.extent(match.f)
    c_ext = con.extent(match.c) if match.c is not None else 1
    iter_pos = {it.var: i for i, it in enumerate(con.info.iters)}
    # 1. input channels blocked by 4: [b, C/4, H, W, 4] (zero padded)
    pad = None
    for producer in sch.get_producers(main):
        written = region_buffer(sch.get(producer).writes[0])
        if written.same_as(match.data.buffer) and is_spatial_block(sch, producer):
            pad = producer
    d_idx = read_index(sch, main, match.data.buffer)
    if d_idx is None:
        return None
    if pad is None:
        sch.cache_read(main, d_idx, "global")
    sch.transform_layout(
        main,
        ("read", d_idx),
        lambda b, c, h, w: (b, c // K_BLOCK, h, w, c % K_BLOCK),
        pad_value=0 if c_ext % K_BLOCK else None,
    )
    # 2. accumulator: per-tile local buffer [b, F/16, y, x, 16] feeding the fused epilogue
    out_is_param = param_index(func, con.out) is not None
    if out_is_param or not list(sch.get_consumers(main)):
        tail = sch.cache_write(main, 0, "global")
    else:
        tail = inline_epilogue_chain(sch, main)
    sch.transform_layout(
        main,
        ("write", 0),
        lambda b, f, y, x: (b, f // lanes, y, x, f % lanes),
        pad_value=None,
        assume_injective_transform=True,
    )
    scope = "global"
    if tail is not None:
        sch.set_scope(main, 0, "local")
        scope = "local"
    # 3. tiles
    loops = sch.get_loops(main)

    def loop_of(var):
        if var is None:
            return None
        for v, i in iter_pos.items():
            if v.same_as(var):
                return loops[i]
        return None

    lb, lf, ly, lx, lc = (loop_of(v) for v in (match.b, match.f, match.y, match.x, match.c))
    others = [loop_of(r) for r in con.reduce if not (match.c is not None and r.same_as(match.c))]
    others = [lp for lp in others if lp is not None]
    nv, xt = _tiles(round_up(f_ext, lanes) // lanes, con.extent(match.x) or 1,
                    isa.accumulators, max_channel_vectors(lanes))
    fo, fi = sch.split(lf, [None, lanes], disable_predication=bool(f_ext % lanes))
    foo, foi = sch.split(fo, [None, nv])
    if lc is not None:
        co, ci = sch.split(lc, [None, K_BLOCK], disable_predication=bool(c_ext % K_BLOCK))
    else:
        return None  # single input channel: left to the other rules (tiny, memory bound)
    xo = xi = None
    if lx is not None:
        xo, xi = sch.split(lx, [None, xt])
    outer = [lp for lp in (lb, ly) if lp is not None] + [foo]
    tile = [xo] if xo is not None else []
    inner = ([xi] if xi is not None else []) + [foi]
    sch.reorder(*outer, *tile, co, *others, *inner, fi, ci)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    tile_loop = tile[-1] if tile else par
    finish_tensorized(sch, main, tail, attach_at=tile_loop, parallel_at=par, reduce_at=co,
                      tensorize_at=fi, work=int(np.prod([e or 1 for e in con.extents.values()])),
                      lanes=lanes, num_cores=num_cores, isa=isa, scope=scope)
    if xi is not None and xt > 1:
        sch.unroll(xi)
    if nv > 1:
        sch.unroll(foi)
    logger.debug("int8 conv2d: NV=%d XT=%d", nv, xt)
    return sch


class Int8Conv2d(CPUScheduleRule):
    """8-bit NCHW conv2d (not grouped) with a constant weight: packed, tensorized.

    Applies to targets with a one-row integer dot product (:func:`.int8_common.dot_isa`: x86
    u8×s8, the ``vpmaddubsw`` pair only when the weight's pairs fit int16; AArch64 s8×s8
    ``sdot``); returns None elsewhere and for grouped / depthwise convs, non-constant weights,
    activations of the other signedness and single-channel inputs.
    """

    def pack_plan(self, func: tirx.PrimFunc, target: tvm.target.Target) -> WeightPack | None:
        """Plan to pack an int8 ``[F, C, KH, KW]`` weight into ``[F/L, C/4, KH, KW, L, 4]``."""
        isa = dot_isa(target, allow_saturating=True)
        if isa is None:
            return None
        sch = s_tir.Schedule(func)
        match = match_int8_conv2d(sch, isa)
        if match is None or match.packed or match.c is None:
            return None
        idx = param_index(func, match.weight.buffer)
        r_idx = read_index(sch, match.con.block, match.weight.buffer)
        if idx is None or r_idx is None:
            return None
        lanes = isa.lanes

        def index_map(o, i, h, w):
            return (o // lanes, i // K_BLOCK, h, w, o % lanes, i % K_BLOCK)

        def pack(w: np.ndarray) -> np.ndarray:
            return vnni_pack_conv(w, lanes)

        block = sch.get(match.con.block)
        accepts = (lambda w: pairs_fit_int16(w, 1)) if isa.saturates else None
        return WeightPack(block.name_hint, r_idx, idx, index_map, pack, pad_value=0,
                          accepts=accepts)

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        isa = dot_isa(target, allow_saturating=True)
        if isa is None:
            return None
        sch = s_tir.Schedule(func)
        match = match_int8_conv2d(sch, isa)
        if match is None or not match.packed:
            return None
        return schedule_int8_conv2d(sch, match, isa, cpu_info(target).num_cores)
