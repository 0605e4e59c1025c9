"""Default ("fast without tuning") CPU schedules for fused Relax modules.

:func:`apply_default_schedules` runs after ``LegalizeOps, AnnotateTIROpPattern, FoldConstant,
FuseOps, FuseTIR`` (and optionally ``MetaScheduleApplyDatabase``). It

1. packs constant weights of matmul/conv kernels into vector-friendly layouts (the PrimFunc's
   parameter and the Relax constants passed to it are rewritten together), then
2. replaces float32 ``erf`` / ``exp`` calls by vectorizable arithmetic (see
   :mod:`compiler.lower.schedules.fast_math`), then
3. schedules every PrimFunc not yet marked ``tirx.is_scheduled`` with the first rule that
   matches, in the order of :data:`DEFAULT_RULES`, like DLight's ``ApplyDefaultSchedule``, and
   names that rule in the function's :data:`SCHEDULE_ATTR` attribute (read into the
   artifact's manifest, for ``hwcc bench --per-layer``).

A rule that raises is skipped (logged), so a function is never left half-scheduled; the
fallback rule matches everything.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

from .conv2d import Conv2d
from .depthwise import DepthwiseConv2d
from .expand_depthwise import ExpandDepthwise
from .fallback import Fallback
from .fast_math import vectorizable_math
from .select_scalars import hoist_scalar_select_operands
from .int8_conv2d import Int8Conv2d  # int8 rules: first, only integer kernels match
from .int8_dense import Int8Dense
from .matmul import Matmul
from .packing import pack_weights
from .pool import Pool2d
from .reduce import InnerReduction
from .row_reduce import RowReduction
from .target_info import CPUInfo, cpu_info, is_cpu_target
from .winograd import Winograd

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RULES",
    "SCHEDULE_ATTR",
    "CPUInfo",
    "Conv2d",
    "DepthwiseConv2d",
    "ExpandDepthwise",
    "Fallback",
    "InnerReduction",
    "Int8Conv2d",
    "Int8Dense",
    "Matmul",
    "Pool2d",
    "RowReduction",
    "Winograd",
    "apply_default_schedules",
    "cpu_info",
    "is_scheduled",
]

#: Rules tried in order; the first that returns a schedule wins.
DEFAULT_RULES: tuple[ScheduleRule, ...] = (
    # int8 rules first (8-bit x 8-bit -> int32 blocks only; their pack_plan packs the weights for
    # the target's dot product: vpdpbusd, vpmaddubsw, sdot, smmla)
    Int8Dense(), Int8Conv2d(),
    # Winograd and the fused expansion+depthwise kernel before the others: their blocks would
    # otherwise match as a matmul / conv
    Winograd(), ExpandDepthwise(),
    Matmul(), Conv2d(), DepthwiseConv2d(), Pool2d(), RowReduction(), InnerReduction(), Fallback(),
)

_SCHEDULED_ATTRS = ("tirx.is_scheduled", "tir.is_scheduled")

#: PrimFunc attribute saying how a kernel was scheduled: the class name of the default rule
#: (``"Conv2d"``), or ``"tuned"`` where a tuning record scheduled it (set by the lowering).
SCHEDULE_ATTR = "hwcc.schedule"


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` carries ``tirx.is_scheduled`` (or the older ``tir.is_scheduled``)."""
    if func.attrs is None:
        return False
    for key in _SCHEDULED_ATTRS:
        if key in func.attrs and bool(func.attrs[key]):
            return True
    return False


def _schedule(
    name: str, func: tirx.PrimFunc, target: tvm.target.Target, rules
) -> tirx.PrimFunc | None:
    for rule in rules:
        try:
            sch = rule.apply(func, target, False)
        except Exception as err:  # noqa: BLE001 - a failing rule must not break compilation
            # one line for the user (TVM's schedule errors carry the whole IR); all of it
            # at debug level
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            summary = next((ln for ln in lines if ln.startswith("Error message:")),
                           lines[-1] if lines else type(err).__name__)
            logger.warning("rule %s failed on %s, trying the next one: %s",
                           type(rule).__name__, name, summary[:300])
            logger.debug("rule %s failed on %s: %s", type(rule).__name__, name, err)
            continue
        if sch is None:
            continue
        if isinstance(sch, list):
            sch = sch[0]
        assert isinstance(sch, s_tir.Schedule)
        logger.debug("%s scheduled with %s", name, type(rule).__name__)
        return (sch.mod["main"].with_attr("tirx.is_scheduled", True)
                .with_attr(SCHEDULE_ATTR, type(rule).__name__))
    return None


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of a legalized, fused Relax module for a CPU target.

    Parameters
    ----------
    mod : tvm.IRModule
        Module after ``FuseTIR`` (weights bound as constants for packing to apply).
    target : tvm.target.Target
        An ``llvm`` target; ``mattr`` gives the vector width (``+avx512f`` 512 bit, ``+avx2``
        256 bit, else 128 bit) and ``num-cores`` the parallelism. Other targets: ``mod`` is
        returned unchanged.

    Returns
    -------
    tvm.IRModule
        The module with scheduled PrimFuncs (attributes ``tirx.is_scheduled`` and
        :data:`SCHEDULE_ATTR`, the rule's name) and, where a
        matmul/conv weight is a constant, packed weight constants. Functions already marked as
        scheduled are left untouched.
    """
    if not is_cpu_target(target):
        logger.info("target %s is not a CPU target: no default schedules", target.kind.name)
        return mod
    rules = list(DEFAULT_RULES)
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
    planners = [r.pack_plan for r in rules if hasattr(r, "pack_plan")]
    mod = pack_weights(mod, target, planners, skip=is_scheduled)
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        func_target = func.attrs.get("target", None) if func.attrs is not None else None
        rewritten = vectorizable_math(func)  # libm erf/exp calls would scalarize vector loops
        new_func = _schedule(gv.name_hint, rewritten, func_target or target, rules)
        if new_func is not None:
            updates[gv] = hoist_scalar_select_operands(new_func)
        elif rewritten is not func:
            updates[gv] = rewritten
    for gv, func in updates.items():
        mod[gv] = func
    return mod
