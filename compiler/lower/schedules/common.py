"""Schedule building blocks shared by the rules: tile choice, epilogues, spatial loop nests."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.sym.pattern import detect_linear_equation

from .analysis import is_load, load_buffer, param_index, region_buffer, same_indices
from .target_info import is_cpu_target

logger = logging.getLogger(__name__)

#: Below this many loop iterations a nest runs single-threaded (a parallel launch costs µs).
MIN_PARALLEL_WORK = 16384

#: A block whose consumer runs this many times more iterations is *broadcast* by it (a
#: per-channel gate multiplied into a whole feature map): it is computed once, not inlined.
BROADCAST_RATIO = 4


def choose_factor(extent: int, preferred: int, minimum: int = 1) -> int:
    """Largest divisor of ``extent`` that is at most ``preferred``, if it is at least ``minimum``.

    Falls back to ``min(preferred, extent)`` (a non-dividing split, which adds a predicate) when
    no divisor is large enough.
    """
    preferred = max(1, min(preferred, extent))
    for f in range(preferred, 0, -1):
        if extent % f == 0:
            if f >= minimum:
                return f
            break
    return preferred


def vector_factor(extent: int, lanes: int, max_vectors: int = 2) -> int:
    """Width of the vectorized inner loop over an axis of ``extent`` elements.

    Prefers a power-of-two number of whole registers (up to ``max_vectors``) that divides
    ``extent``, then half a register when it divides ``extent`` (a power-of-two width: LLVM legalizes odd
    widths such as 24 lanes into slow shuffles and spills), then the whole extent when it fits
    in ``max_vectors`` registers, then a divisor of at least half a vector, else
    ``max_vectors`` full vectors with a tail predicate (still correct: the vectorizer scalarizes
    predicated lanes).
    """
    k = 1 << (max(1, max_vectors).bit_length() - 1)  # whole vectors, a power of two of them
    while k >= 1:
        if extent % (k * lanes) == 0:
            return k * lanes
        k //= 2
    half = lanes // 2
    if half >= 4 and extent > half and extent % half == 0:
        return half
    if extent <= lanes * max_vectors:
        return extent
    best = choose_factor(extent, lanes * max_vectors, minimum=max(2, lanes // 2))
    return best


def loop_extent(sch: s_tir.Schedule, loop: LoopRV) -> int | None:
    """Static extent of ``loop`` or None."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def root_blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
    """Blocks directly under the function's root block."""
    root = sch.get_sblock("root") if _has_root(sch) else None
    if root is None:
        return []
    return list(sch.get_child_blocks(root))


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - the schedule raises a generic error for missing names
        return False
    return True


def block_domain(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    """Number of iterations of ``block`` (the product of its iterator extents), None if symbolic."""
    size = 1
    for iv in sch.get(block).iter_vars:
        ext = iv.dom.extent
        if not isinstance(ext, tirx.IntImm):
            return None
        size *= int(ext.value)
    return size


def is_broadcast(sch: s_tir.Schedule, block: SBlockRV, consumer: SBlockRV) -> bool:
    """Whether ``consumer`` reads each element of ``block`` many times
    (:data:`BROADCAST_RATIO`): squeeze-and-excitation's gate, ``sigmoid(conv(pool(x)))`` per
    channel, multiplied into the whole map."""
    small, large = block_domain(sch, block), block_domain(sch, consumer)
    return small is not None and large is not None and large >= BROADCAST_RATIO * small


def is_spatial_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether every iterator of ``block`` is data-parallel."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def inline_epilogue_chain(sch: s_tir.Schedule, main: SBlockRV) -> SBlockRV | None:
    """Collapse the elementwise blocks after ``main`` into one consumer block.

    Every spatial block downstream of ``main`` except the function's final output block is
    inlined into its own consumers (also when it has several, as in GELU's
    ``x * (1 + erf(x / sqrt 2))``; each is then computed once per output element), but not into
    a consumer that broadcasts it (:func:`is_broadcast`: a squeeze-and-excitation gate stays
    one value per channel). Returns the single remaining consumer of ``main`` if there is
    exactly one and it reads ``main``'s output at the same indices it writes (an elementwise
    epilogue such as bias add, ReLU, GELU, residual add), else None (the epilogue then stays a
    separate loop nest).
    """
    for _ in range(32):
        # a consumer that feeds further blocks is inlined into all of them; consumers may
        # branch and join again (GELU: x * (1 + erf(x / sqrt 2)) reads x twice)
        inlinable = [
            c
            for c in sch.get_consumers(main)
            if is_spatial_block(sch, c) and list(sch.get_consumers(c))
            and not any(is_broadcast(sch, c, user) for user in sch.get_consumers(c))
        ]
        if not inlinable:
            break
        try:
            sch.compute_inline(inlinable[0])
        except Exception:  # noqa: BLE001 - not inlinable: keep the chain as it is
            return None
    consumers = list(sch.get_consumers(main))
    if len(consumers) != 1 or not is_spatial_block(sch, consumers[0]):
        return None
    consumer = consumers[0]
    out = region_buffer(sch.get(main).writes[0])
    block = sch.get(consumer)
    if len(block.writes) != 1:
        return None
    write = [r.min for r in block.writes[0].region]
    if any(int(r.extent) != 1 for r in block.writes[0].region):
        return None
    for reg in block.reads:
        if not region_buffer(reg).same_as(out):
            continue
        if any(int(r.extent) != 1 for r in reg.region):
            return None
        if not same_indices([r.min for r in reg.region], write):
            return None
    return consumer


def attach_epilogue(
    sch: s_tir.Schedule, main: SBlockRV, tile_loop: LoopRV, lanes: int, fuse_inner: int = 1,
    unroll: int = 0,
) -> SBlockRV | None:
    """Compute ``main``'s epilogue (or a write-back of its accumulator) per tile of ``tile_loop``.

    If ``main`` writes a function output directly, a ``local`` accumulator is added with
    ``cache_write``. If it writes an intermediate consumed by an elementwise chain, the chain is
    inlined into one block, moved under ``tile_loop`` and the intermediate becomes ``local``.
    The epilogue's innermost loop is vectorized; with ``fuse_inner`` > 1 that many innermost
    loops are fused first and the result is split into ``lanes``-wide vectors (rows of pixels
    that together fill whole vectors). With ``unroll``, the epilogue's other loops in the tile
    are unrolled when they run at most ``unroll`` iterations together: every read of the
    accumulator then has a constant index, so that LLVM keeps it in registers (a loop over it
    makes it a stack array, stored on every tile). Returns the block computed at the tile
    (write-back or epilogue), or None if the epilogue is not elementwise (it is then left as a
    separate loop nest, still correct).
    """
    consumers = list(sch.get_consumers(main))
    out = region_buffer(sch.get(main).writes[0])
    if not consumers or param_index(sch.mod["main"], out) is not None:
        # writes a function output (maybe also read by other blocks): accumulate locally
        tail = sch.cache_write(main, 0, "local")
    else:
        tail = inline_epilogue_chain(sch, main)
        if tail is None:
            return None
        sch.set_scope(main, 0, "local")
    sch.reverse_compute_at(tail, tile_loop, preserve_unit_loops=True)
    loops = list(sch.get_loops(tail))
    tile_var = sch.get(tile_loop).loop_var
    pos = [i for i, lp in enumerate(loops) if sch.get(lp).loop_var.same_as(tile_var)]
    tile_loops = loops[pos[0] + 1 :] if pos else []
    if fuse_inner > 1 and len(tile_loops) >= fuse_inner:
        inner = sch.fuse(*tile_loops[-fuse_inner:])
        ext = loop_extent(sch, inner)
        if ext is not None and ext % lanes == 0:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
        return tail
    if tile_loops:
        ext = loop_extent(sch, tile_loops[-1])
        if ext is not None and ext > 1:
            sch.vectorize(tile_loops[-1])
        outer = [(lp, loop_extent(sch, lp)) for lp in tile_loops[:-1]]
        outer = [(lp, e) for lp, e in outer if e != 1]
        if (unroll and outer and all(e is not None for _, e in outer)
                and math.prod(e for _, e in outer) <= unroll):
            for lp, _ in outer:
                sch.unroll(lp)
    return tail


def schedule_spatial(
    sch: s_tir.Schedule, block: SBlockRV, lanes: int, num_cores: int, parallel: bool = True
) -> None:
    """Parallelize the outer and vectorize the innermost loop of a root-level loop nest.

    The innermost data-parallel loop is split by ``lanes`` and vectorized when its static extent
    is at least ``lanes`` (otherwise left scalar); the data-parallel loops outside it are fused
    and parallelized when the nest does enough work. Reduction loops stay serial; for
    reductions whose innermost loops reduce (pooling windows), the innermost spatial loop is
    moved inside them first so that it can be vectorized. Blocks with non-trivial bindings or
    symbolic extents get only what is safe.
    """
    loops = list(sch.get_loops(block))
    if not loops:
        return
    stmt = sch.get(block)
    kinds = []
    for iv in stmt.iter_vars:
        kinds.append("S" if iv.iter_type == tirx.IterVar.DataPar else "R")
    if len(kinds) != len(loops):
        return
    n_spatial = 0
    for k in kinds:
        if k != "S":
            break
        n_spatial += 1
    if "S" in kinds[n_spatial:]:
        return  # spatial loops below reductions: leave it alone
    spatial = loops[:n_spatial]
    reductions = loops[n_spatial:]
    work = 1
    for lp in loops:
        ext = loop_extent(sch, lp)
        work *= ext if ext is not None else 1024
    vec_loop = None
    if spatial and not reductions and _innermost_contiguous(sch, block):
        spatial, tail = _fuse_rows(sch, block, spatial, lanes)
        if tail is not None:
            # whole vectors, then one shorter vector for the rest of each row
            main, rest = sch.loop_partition(spatial[-1], [tail, None])
            vec_loop = sch.split(main, [None, lanes])[1]
            if (loop_extent(sch, rest) or 0) > 1:
                sch.vectorize(rest)
            spatial = spatial[:-1]
    if spatial and vec_loop is None:
        inner = spatial[-1]
        ext = loop_extent(sch, inner)
        small_reduce = all((loop_extent(sch, r) or 1 << 30) <= 64 for r in reductions)
        vectorizable = (
            ext is not None
            and ext >= lanes
            and _innermost_contiguous(sch, block)
            and (not reductions or (small_reduce and _reads_follow(sch, block)))
        )
        vf = vector_factor(ext, lanes, max_vectors=1) if vectorizable else 0
        if vectorizable and ext % vf == 0:
            outer, vec_loop = sch.split(inner, [None, vf])
            spatial = spatial[:-1] + [outer]
            if reductions:
                sch.reorder(*spatial, *reductions, vec_loop)
    if parallel and spatial and work >= MIN_PARALLEL_WORK:
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        ext = loop_extent(sch, fused)
        if ext is None or ext >= 2:
            sch.parallel(fused)
    if vec_loop is not None:
        sch.vectorize(vec_loop)


def _fuse_rows(
    sch: s_tir.Schedule, block: SBlockRV, spatial: list[LoopRV], lanes: int
) -> tuple[list[LoopRV], int | None]:
    """Fuse the innermost loops of an elementwise nest into one contiguous run of vectors.

    While the innermost extent is not a multiple of ``lanes`` (a 14x14 or 7x7 map), the loop
    outside it is fused in, provided the block writes and reads whole contiguous rows over the
    fused loops or does not depend on them at all (a per-channel gate multiplied into a map:
    one value per vector). Returns the loops (the fused one last) and, when the run is longer
    than a vector but not whole vectors, the length covered by whole vectors (the caller
    splits the rest off into a shorter vector); otherwise None.
    """
    stmt = sch.get(block)
    ivs = list(stmt.iter_vars)
    if len(ivs) != len(spatial) or len(stmt.writes) != 1:
        return spatial, None
    extents = [loop_extent(sch, lp) for lp in spatial]
    if any(e is None for e in extents):
        return spatial, None
    n = 1
    while (
        n < len(spatial)
        and math.prod(extents[-n:]) % lanes != 0
        and _rows_contiguous(stmt, [iv.var for iv in ivs[-(n + 1):]], extents[-(n + 1):])
    ):
        n += 1
    run = math.prod(extents[-n:])
    if n > 1:
        spatial = spatial[:-n] + [sch.fuse(*spatial[-n:])]
    if run > lanes and run % lanes != 0 and not _binds_lets(stmt):
        return spatial, run - run % lanes
    return spatial, None


def _binds_lets(stmt: tirx.SBlock) -> bool:
    """Whether the block's body binds ``Let`` variables (a sign-bit test, the fast ``exp``).
    ``loop_partition`` copies the body into each part with the same variables, which the
    simplifier then rejects as one variable bound to two values."""
    found = []

    def note(node):
        found.append(node)
        return node

    tvm_ffi.structural_map(stmt.body, [(tirx.Let, note)])
    return bool(found)


def _rows_contiguous(stmt: tirx.SBlock, inner: list[tirx.Var], extents: list[int]) -> bool:
    """Whether every buffer access of ``stmt`` either ends in exactly ``inner`` over whole rows
    (fusing those loops gives one contiguous index) or uses none of them."""

    def ok(region, buffer) -> bool:
        idx = [r.min for r in region]
        used = {v for e in idx for v in tirx.analysis.undefined_vars(e)}
        if not any(any(v.same_as(u) for u in used) for v in inner):
            return True
        k = len(inner)
        if len(idx) < k or any(int(r.extent) != 1 for r in region):
            return False
        if not all(a.same_as(v) for a, v in zip(idx[-k:], inner)):
            return False
        shape = [int(d) if isinstance(d, tirx.IntImm) else None for d in buffer.shape[-k:]]
        return shape[1:] == extents[1:]

    regions = list(stmt.reads) + list(stmt.writes)
    return all(ok(r.region, region_buffer(r)) for r in regions)


def _innermost_contiguous(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether the block's last iterator indexes the last dimension of what it writes."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or not stmt.iter_vars:
        return False
    last = stmt.iter_vars[len(stmt.iter_vars) - 1].var
    spatial = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if not spatial:
        return False
    last = spatial[-1]
    region = stmt.writes[0].region
    if len(region) == 0:
        return False
    index = region[len(region) - 1].min
    if index.same_as(last):
        return True
    # last + constant (the interior of a padded buffer) is as contiguous
    coef = detect_linear_equation(index, [last])
    return (len(coef) == 2 and isinstance(coef[0], tirx.IntImm) and int(coef[0].value) == 1
            and isinstance(coef[1], tirx.IntImm))


def _reads_follow(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether the last index of every read depends on the block's last spatial iterator."""
    stmt = sch.get(block)
    spatial = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if not spatial:
        return False
    last = spatial[-1]
    for reg in stmt.reads:
        if len(reg.region) == 0:
            return False
        index = reg.region[len(reg.region) - 1].min
        if not any(v.same_as(last) for v in tirx.analysis.undefined_vars(index)):
            return False
    return True


def schedule_other_blocks(
    sch: s_tir.Schedule, skip: Iterable[SBlockRV], lanes: int, num_cores: int
) -> None:
    """Apply :func:`schedule_spatial` to every root-level loop nest that ``skip`` does not share.

    Blocks in ``skip`` and blocks under any loop of a ``skip`` block (epilogues computed at a
    tile, reduction init blocks) are left alone; each remaining nest is handled independently.
    """
    skip = list(skip)
    taken = [sch.get(lp).loop_var for b in skip for lp in sch.get_loops(b)]
    skip_names = {sch.get(b).name_hint for b in skip}
    for block in root_blocks(sch):
        if sch.get(block).name_hint in skip_names:
            continue
        loops = sch.get_loops(block)
        if any(sch.get(lp).loop_var.same_as(t) for lp in loops for t in taken):
            continue
        try:
            schedule_spatial(sch, block, lanes, num_cores)
        except Exception as err:  # noqa: BLE001 - a helper nest stays serial, still correct
            logger.debug("left block %s serial: %s", sch.get(block).name_hint, err)


def is_plain_copy(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether ``block`` stores a load of another buffer at its own indices (no select)."""
    stmt = sch.get(block)
    store = stmt.body
    if not isinstance(store, tirx.BufferStore):
        return False
    value = store.value
    if not is_load(value) or load_buffer(value).same_as(store.buffer):
        return False
    return same_indices(list(value.indices), list(store.indices))


def compute_padding_at(
    sch: s_tir.Schedule, pad: SBlockRV, loop: LoopRV, lanes: int, decompose: bool = True
) -> bool:
    """Compute a padding block under ``loop``, optionally split into zero fill + interior copy.

    A padding block that pads nothing (a plain copy, as legalization emits for ``pad=0``) is
    inlined instead, so that its consumer reads the input directly.

    ``decompose_padding`` removes the per-element select so that both parts vectorize (worth
    it when the padded tile is reused by many output channels). Returns
    False (schedule unchanged or only ``compute_at`` applied, both correct) when it fails.
    """
    if is_plain_copy(sch, pad):
        # zero padding legalizes to an identity copy: read the input directly instead
        try:
            sch.compute_inline(pad)
            return True
        except Exception as err:  # noqa: BLE001 - fall through to computing it per task
            logger.debug("identity padding not inlined: %s", err)
    try:
        sch.compute_at(pad, loop, preserve_unit_loops=True)
        loops = list(sch.get_loops(pad))
        var = sch.get(loop).loop_var
        pos = [i for i, lp in enumerate(loops) if sch.get(lp).loop_var.same_as(var)]
        if not pos or pos[0] + 1 >= len(loops):
            return True
        first = loops[pos[0] + 1]
        if decompose and sch.can_decompose_padding(pad, first):
            fill = sch.decompose_padding(pad, first)
            for block in (fill, pad):
                inner = sch.get_loops(block)[-1]
                ext = loop_extent(sch, inner)
                if ext is not None and ext >= lanes:
                    sch.vectorize(inner)
        return True
    except Exception as err:  # noqa: BLE001 - caller decides what to do instead
        logger.debug("padding not computed per task: %s", err)
        return False


class MatchingRule(CPUScheduleRule):
    """A schedule rule for the kernels its :meth:`match` recognises.

    The preamble every such rule shares: LLVM CPU targets only, a fresh schedule of the
    function, the match; :meth:`schedule` runs only on a match and may still decline (None,
    the function is left to the next rule).
    """

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        raise NotImplementedError

    def schedule(self, sch: s_tir.Schedule, match: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        raise NotImplementedError

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        if not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        found = self.match(sch, target)
        return None if found is None else self.schedule(sch, found, target)
