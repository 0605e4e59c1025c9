"""Compile-time weight packing: rewrite a PrimFunc's weight layout and its constant arguments.

A rule that wants a packed weight describes it with a :class:`WeightPack`. The weight must be a
parameter of the PrimFunc that every ``R.call_tir`` of the function passes as a Relax constant;
the PrimFunc's parameter is then rewritten with ``transform_layout`` and each constant is
replaced by its packed copy (computed once, here, with numpy). Functions referenced any other way,
or called with a non-constant weight, are not packed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

logger = logging.getLogger(__name__)

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@dataclass(frozen=True)
class WeightPack:
    """How to pack one weight parameter.

    Attributes
    ----------
    block : str
        Name of the block that reads the weight.
    read_index : int
        Position of the weight among that block's reads.
    param_index : int
        Position of the weight among the PrimFunc's parameters.
    index_map : Callable
        Old indices -> new indices, as passed to ``Schedule.transform_layout``.
    pack : Callable[[np.ndarray], np.ndarray]
        The same mapping applied to the constant with numpy (must agree with ``index_map``).
    pad_value : int or float or None
        When ``index_map`` pads (int8 VNNI layouts round dimensions up), the value ``pack``
        writes into the padding (passed to ``transform_layout``); None: no padding allowed.
    accepts : Callable[[np.ndarray], bool] or None
        A check of the constant's values (before packing); the function is packed only when
        every call's constant passes. The ``vpmaddubsw`` int8 kernels are exact only for
        weights whose pairs fit int16, so they pack (and so apply) only to those.
    """

    block: str
    read_index: int
    param_index: int
    index_map: Callable
    pack: Callable[[np.ndarray], np.ndarray]
    pad_value: int | float | None = None  # int8 rules: zero padding of rounded-up dims
    accepts: Callable[[np.ndarray], bool] | None = None


PackPlanner = Callable[[tirx.PrimFunc, tvm.target.Target], "WeightPack | None"]


@relax.expr_functor.visitor
class _CallCollector(relax.PyExprVisitor):
    """Collects, per GlobalVar, the argument tuples of its ``call_tir`` calls and other uses."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[list[relax.Expr]]] = {}
        self.other_uses: set[str] = set()

    def visit_call_(self, op: relax.Call) -> None:
        if op.op.same_as(_CALL_TIR) and isinstance(op.args[0], tvm.ir.GlobalVar):
            args = op.args[1]
            name = op.args[0].name_hint
            if isinstance(args, relax.Tuple):
                self.calls.setdefault(name, []).append(list(args.fields))
            else:
                self.other_uses.add(name)
            for a in op.args[1:]:
                self.visit_expr(a)
            return
        super().visit_call_(op)

    def visit_global_var_(self, op: tvm.ir.GlobalVar) -> None:
        self.other_uses.add(op.name_hint)


@relax.expr_functor.mutator
class _CallRewriter(relax.PyExprMutator):
    """Points ``call_tir`` calls at packed functions and packs their constant weights."""

    def __init__(self, mod: tvm.IRModule, packs: dict[str, tuple[tvm.ir.GlobalVar, WeightPack]]):
        super().__init__(mod)
        self.packs = packs

    def visit_call_(self, op: relax.Call) -> relax.Expr:
        call = super().visit_call_(op)
        if not (call.op.same_as(_CALL_TIR) and isinstance(call.args[0], tvm.ir.GlobalVar)):
            return call
        entry = self.packs.get(call.args[0].name_hint)
        if entry is None:
            return call
        new_gv, plan = entry
        fields = list(call.args[1].fields)
        const = fields[plan.param_index]
        packed = np.ascontiguousarray(plan.pack(const.value.numpy()))
        fields[plan.param_index] = relax.const(packed)
        args = [new_gv, relax.Tuple(fields), *call.args[2:]]
        return relax.Call(call.op, args, call.attrs, call.ty_args, call.span)


def pack_weights(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    planners: list[PackPlanner],
    skip: Callable[[tirx.PrimFunc], bool],
) -> tvm.IRModule:
    """Pack constant weights of every PrimFunc for which a planner returns a plan.

    Parameters
    ----------
    mod : tvm.IRModule
        Fused Relax module.
    target : tvm.target.Target
        Target passed to the planners.
    planners : list of callables
        ``planner(func, target) -> WeightPack | None``; the first plan wins.
    skip : callable
        Functions for which it returns True are never touched (e.g. already scheduled).

    Returns
    -------
    tvm.IRModule
        The module with packed PrimFuncs (new GlobalVars of the same names) and packed constants.
        Unchanged when nothing can be packed.
    """
    collector = _CallCollector()
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            collector.visit_expr(func)
    new_funcs: dict[str, tuple[tirx.PrimFunc, WeightPack]] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or skip(func):
            continue
        name = gv.name_hint
        calls = collector.calls.get(name, [])
        if not calls or name in collector.other_uses:
            continue
        plan = None
        for planner in planners:
            try:
                plan = planner(func, target)
            except Exception as err:  # noqa: BLE001 - a planner that fails just does not pack
                logger.debug("pack planner failed on %s: %s", name, err)
                plan = None
            if plan is not None:
                break
        if plan is None:
            continue
        if not all(
            plan.param_index < len(args)
            and isinstance(args[plan.param_index], tvm.ir.expr.Constant)
            for args in calls
        ):
            continue
        if plan.accepts is not None and not all(
            plan.accepts(args[plan.param_index].value.numpy()) for args in calls
        ):
            logger.info("%s: weight not packed (its values do not suit the kernel)", name)
            continue
        try:
            sch = s_tir.Schedule(func)
            block = sch.get_sblock(plan.block)
            sch.transform_layout(
                block, ("read", plan.read_index), plan.index_map, pad_value=plan.pad_value
            )
            new_funcs[name] = (sch.mod["main"], plan)
        except Exception as err:  # noqa: BLE001 - leave the function unpacked
            logger.debug("could not pack weight of %s: %s", name, err)
    if not new_funcs:
        return mod
    funcs = {gv: f for gv, f in mod.functions_items() if gv.name_hint not in new_funcs}
    base = tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)
    bb = relax.BlockBuilder(base)
    packs = {}
    for name, (func, plan) in new_funcs.items():
        new_gv = bb.add_func(func, name)
        packs[name] = (new_gv, plan)
    mod_with_funcs = bb.get()
    rewriter = _CallRewriter(mod_with_funcs, packs)
    for gv, func in mod_with_funcs.functions_items():
        if isinstance(func, relax.Function):
            new_func = rewriter.visit_expr(func)
            rewriter.builder_.update_func(gv, new_func)
    out = rewriter.builder_.get()
    logger.info("packed constant weights of %d functions", len(new_funcs))
    return out
