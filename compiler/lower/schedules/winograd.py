"""Default CPU schedule for the Winograd F(m x m, 3x3) kernels of
:mod:`compiler.lower.rewrites.winograd`.

The kernel's blocks are found by name (:data:`BLOCK_PREFIX`, which
:mod:`compiler.lower.rewrites.winograd` gives them); elementwise
epilogues fused after it (bias, ReLU, residual add) are inlined into its last block.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .analysis import region_buffer
from .common import (
    MatchingRule,
    compute_padding_at,
    inline_epilogue_chain,
    loop_extent,
    schedule_other_blocks,
    vector_factor,
)
from .target_info import cpu_info

logger = logging.getLogger(__name__)

#: Prefix of the names of the kernel's blocks (given by the rewrite, found by the rule).
BLOCK_PREFIX = "hwcc_winograd_"

_STAGES = ("pad", "tile", "input_rows", "input", "gemm", "output_rows", "output")

#: Tile columns per GEMM register tile, best first (accumulators = columns x channel vectors).
_GEMM_COLUMNS = (8, 7, 12, 6, 5, 4, 3, 2, 1)


def _find_stages(sch: s_tir.Schedule) -> dict[str, SBlockRV] | None:
    found: dict[str, SBlockRV] = {}
    for stage in _STAGES:
        try:
            found[stage] = sch.get_sblock(BLOCK_PREFIX + stage)
        except Exception:  # noqa: BLE001 - the schedule raises a generic error for missing names
            return None
    return found


def _unroll_all(sch: s_tir.Schedule, loops: list[LoopRV]) -> None:
    for lp in loops:
        sch.unroll(lp)


def _schedule_input(sch: s_tir.Schedule, st: dict[str, SBlockRV], lanes: int, par: bool):
    """``V = B^T d B`` per tile on channel vectors; channel blocks parallel, 6x6 unrolled."""
    eps, nu, p, c = sch.get_loops(st["input"])
    cv = vector_factor(loop_extent(sch, c), lanes, max_vectors=1)
    co, ci = sch.split(c, [None, cv])
    sch.reorder(co, p, eps, nu, ci)
    for stage in ("input_rows", "tile"):
        sch.compute_at(st[stage], p, preserve_unit_loops=True)
        r_a, r_b, _, r_c = sch.get_loops(st[stage])[-4:]
        _unroll_all(sch, [r_a, r_b])
        sch.vectorize(r_c)
    _unroll_all(sch, [eps, nu])
    sch.vectorize(ci)
    if par:
        sch.parallel(co)
    if not compute_padding_at(sch, st["pad"], co, lanes):
        sch.compute_inline(st["pad"])


def _schedule_gemm(
    sch: s_tir.Schedule, st: dict[str, SBlockRV], lanes: int, registers: int, par: bool
):
    """``M[e] = V[e] U[e]``: a ``tiles x channels`` register tile, channels in vectors."""
    gemm = st["gemm"]
    eps, nu, p, k, rc = sch.get_loops(gemm)
    p_ext = loop_extent(sch, p)
    # the output-channel block of the packed weight U[eps, nu, K / kv, C, kv]
    (kv,) = {int(region_buffer(r).shape[-1]) for r in sch.get(gemm).reads
             if len(region_buffer(r).shape) == 5}
    budget = registers * 3 // 4  # accumulators; the rest hold weights and a broadcast
    pt = next((c for c in _GEMM_COLUMNS if p_ext % c == 0 and c * -(-kv // lanes) <= budget), 1)
    ko, ki = sch.split(k, [None, kv])
    po, pi = sch.split(p, [None, pt])
    sch.reorder(eps, nu, ko, po, rc, pi, ki)
    outer = sch.fuse(eps, nu)
    if par:
        sch.parallel(outer)
    acc = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc, po, preserve_unit_loops=True)
    w_p, w_k = sch.get_loops(acc)[-2:]
    sch.unroll(w_p)
    sch.vectorize(w_k)
    sch.unroll(pi)
    sch.vectorize(ki)
    sch.decompose_reduction(gemm, rc)
    logger.debug("winograd gemm: %d columns x %d channels", pt, kv)


def _schedule_output(sch: s_tir.Schedule, st: dict[str, SBlockRV], lanes: int, par: bool):
    """``Y = A^T M A`` and the epilogue per output tile, output channels in a vector."""
    out = st["output"]
    consumer = inline_epilogue_chain(sch, out)
    if consumer is not None:
        try:
            sch.reverse_compute_inline(consumer)
        except Exception as err:  # noqa: BLE001 - the epilogue stays a separate nest
            logger.debug("winograd: epilogue not inlined: %s", err)
    b, k, y, x = sch.get_loops(out)
    kv = vector_factor(loop_extent(sch, k), lanes, max_vectors=1)
    tile = int(region_buffer(sch.get(st["output_rows"]).writes[0]).shape[0])
    ko, ki = sch.split(k, [None, kv])
    yo, yi = sch.split(y, [None, tile])
    xo, xi = sch.split(x, [None, tile])
    sch.reorder(b, ko, yo, xo, yi, xi, ki)
    outer = sch.fuse(b, ko, yo)
    sch.compute_at(st["output_rows"], xo, preserve_unit_loops=True)
    r_i, r_nu, _, r_k = sch.get_loops(st["output_rows"])[-4:]
    _unroll_all(sch, [r_i, r_nu])
    sch.vectorize(r_k)
    _unroll_all(sch, [yi, xi])
    sch.vectorize(ki)
    if par:
        sch.parallel(outer)


class Winograd(MatchingRule):
    """The Winograd convolution kernel of :func:`compiler.lower.rewrites.winograd.winograd_te` (and
    its fused
    elementwise epilogue); None for any other function."""

    def match(self, sch: s_tir.Schedule, target: tvm.target.Target) -> Any | None:
        """The kernel this rule schedules, found in ``sch``; None for any other."""
        return _find_stages(sch)

    def schedule(self, sch: s_tir.Schedule, st: Any, target: tvm.target.Target
                 ) -> s_tir.Schedule | None:
        """Schedule the matched kernel (see the class doc)."""
        info = cpu_info(target)
        lanes = info.lanes(32)
        par = info.num_cores > 1
        _schedule_output(sch, st, lanes, par)
        _schedule_gemm(sch, st, lanes, info.vector_registers, par)
        _schedule_input(sch, st, lanes, par)
        skip = [st[s] for s in ("input", "gemm", "output")]
        schedule_other_blocks(sch, skip, lanes, info.num_cores)
        return sch

