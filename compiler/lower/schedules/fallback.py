"""Fallback CPU schedule: parallel outer loops and vectorized inner loops for any PrimFunc."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import Expr
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule import SBlockRV

from .analysis import is_load, load_buffer, region_buffer
from .common import block_domain, is_broadcast, is_spatial_block, root_blocks, schedule_other_blocks
from .target_info import cpu_info, is_cpu_target

logger = logging.getLogger(__name__)


def _gathers(sch: s_tir.Schedule, block: SBlockRV, consumer: SBlockRV) -> bool:
    """Whether ``consumer`` reads ``block``'s output at indices loaded from memory (an index
    table: :mod:`compiler.lower.rewrites.resize_taps`) and runs at least as many iterations.
    Inlined, ``block``
    would be recomputed at every such read, each of its own loads a gather too; kept, it runs
    as a loop nest of its own. (A gather of a few rows from a large table, an embedding, still
    inlines its producer: computing the whole table would cost more.)"""
    small, large = block_domain(sch, block), block_domain(sch, consumer)
    if small is None or large is None or large < small:
        return False
    written = region_buffer(sch.get(block).writes[0])
    body = sch.get(consumer).body
    if not hasattr(body, "value"):  # not a store
        return False
    return any(load_buffer(load).same_as(written) and any(_loads(i) for i in load.indices)
               for load in _loads(body.value))


#: Fields holding the operands of TIR expression nodes.
_EXPR_FIELDS = ("a", "b", "value", "body", "condition", "true_value", "false_value", "base",
                "args", "indices")


def _loads(expr) -> list:
    """The buffer loads in ``expr``, those in their indices included."""
    found, stack = [], [expr]
    while stack:
        node = stack.pop()
        if is_load(node):
            found.append(node)
        for field in _EXPR_FIELDS:
            child = getattr(node, field, None)
            if isinstance(child, Expr):
                stack.append(child)
            elif child is not None and not isinstance(child, str | int | float):
                try:
                    stack.extend(c for c in child if isinstance(c, Expr))
                except TypeError:
                    pass
    return found


def inline_spatial_chains(sch: s_tir.Schedule) -> None:
    """Inline each data-parallel block whose only consumer is also data-parallel.

    Elementwise chains (add -> relu -> cast ...) then run as one loop nest. Blocks feeding a
    reduction are kept, so nothing expensive (``exp``, ``erf``) is recomputed per reduction step;
    so are blocks that their consumer broadcasts (a squeeze-and-excitation gate,
    ``sigmoid(conv(pool(x)))`` per channel, is computed once per channel, not once per pixel)
    and blocks that it reads through an index table (:func:`_gathers`).
    """
    changed = True
    while changed:
        changed = False
        for block in root_blocks(sch):
            if not is_spatial_block(sch, block):
                continue
            consumers = list(sch.get_consumers(block))
            if len(consumers) != 1 or not is_spatial_block(sch, consumers[0]):
                continue
            if is_broadcast(sch, block, consumers[0]) or _gathers(sch, block, consumers[0]):
                continue
            try:
                sch.compute_inline(block)
            except Exception as err:  # noqa: BLE001 - e.g. an output block: keep it
                logger.debug("not inlined: %s", err)
                continue
            changed = True
            break


def decompose_padding_blocks(sch: s_tir.Schedule) -> None:
    """Split each root-level padding block (``if_then_else(inside, value, constant)``) into a
    fill of the constant and a loop over the inside only.

    The inside loop then has the unpadded extent (224, not 226, for a 1-pixel pad), which
    vectorizes, and no per-element bounds test; the quantize-and-pad kernel in front of an int8
    network's first conv is one such block.
    """
    for block in root_blocks(sch):
        loops = sch.get_loops(block)
        if not loops or not is_spatial_block(sch, block):
            continue
        try:
            if sch.can_decompose_padding(block, loops[0]):
                sch.decompose_padding(block, loops[0])
        except Exception as err:  # noqa: BLE001 - keep the block whole (correct, slower)
            logger.debug("padding not decomposed: %s", err)


def simplify_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its index expressions simplified under the blocks' iterator ranges.

    Legalized reshapes leave indices such as ``(w // 14 + h) // 14 + c`` for ``c`` when
    ``w < 14`` and ``h < 14``; simplified first, a chain of reshape/transpose/concat (a channel
    shuffle) inlines into one block that reads whole rows, which :func:`schedule_spatial` then
    vectorizes, instead of one division chain per element. Unchanged if simplification fails.
    """
    try:
        mod = s_tir.transform.StmtSimplify()(tvm.IRModule({"main": func}))
    except Exception as err:  # noqa: BLE001 - an unsimplified function is still correct
        logger.debug("index simplification skipped: %s", err)
        return func
    return mod["main"]


class Fallback(CPUScheduleRule):
    """Schedule for everything the specific rules leave: elementwise, reductions, pooling.

    Matches every PrimFunc. Guarantees: semantics unchanged; each root-level loop nest that does
    enough work gets its outer data-parallel loops fused and parallelized and its innermost
    contiguous data-parallel loop vectorized by the target's vector width (see
    :func:`compiler.lower.schedules.common.schedule_spatial`). Reductions stay serial per output.
    """

    def apply(
        self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
    ) -> s_tir.Schedule | None:
        if not is_cpu_target(target):
            return None
        func = simplify_indices(func)
        sch = s_tir.Schedule(func)
        info = cpu_info(target)
        try:
            inline_spatial_chains(sch)
        except Exception as err:  # noqa: BLE001 - inlining is only an optimization
            logger.debug("fallback inlining stopped: %s", err)
            sch = s_tir.Schedule(func)
        decompose_padding_blocks(sch)
        schedule_other_blocks(sch, [], info.lanes(32), info.num_cores)
        return sch
