"""Structured channel pruning: remove whole channels, neurons and attention heads.

Pass ``hwcc.PruneChannels``.

Expects: a Relax module whose ``main`` holds plain weighted layers (run
:class:`passes.canonicalize.Canonicalize` first; a remaining ``R.nn.batch_norm`` is refused with a
:class:`compiler.errors.ConfigError`). Calibration data, when an activation-based importance is
chosen, in the format of :mod:`passes.calibration`.

What it does: builds the channel groups of :mod:`passes.channel_groups`, scores every unit
(channel / neuron / head) of every prunable group, chooses the units to remove, and rewrites
``main`` with every member of each group sliced consistently (producer output channels, biases,
per-channel constants, consumer input channels, reshape targets, depthwise ``groups``).

Guarantees: the result is a well-formed dense model with the same inputs and outputs; the
weights are really smaller; at ``ratio == 0`` the module is returned unchanged (outputs equal
exactly). Blocked groups are never touched. Kept counts are multiples of ``multiple_of``
elements (or the whole group), so the target's vector width divides every pruned dimension.

Importance (``importance``):

``l1`` / ``l2``
    L1 / L2 norm of each unit's producer weights (output-channel slices), summed over the
    group's producers.
``mean_activation``
    Mean absolute value, on the calibration data, of the group's tensors that consumer layers
    read (after the activation function).
``apoz``
    1 − fraction of zeros in those tensors (Average Percentage Of Zeros, for ReLU-like
    activations); groups with no zeros at all fall back to L2.
``reconstruction``
    Squared error the consumer layers' outputs would get from removing the unit alone:
    ``E‖x_k‖² · ‖W_in[k]‖²`` summed over consumers (ThiNet-style, first order).

Typical use (the compile driver does the same through ``compiler.pipeline`` with the names
``canonicalize``, ``prune_channels``, ``recover``)::

    mod = Canonicalize()(from_onnx(model, keep_params_in_input=False))
    pruned = PruneChannels(PruneConfig(ratio=0.5, multiple_of=8))(mod)
    recovered = Recover(RecoverConfig(teacher=mod, calibration=calib))(pruned)
    read_report(pruned)  # what was pruned; refit_layers tells Recover what to re-fit

Report: the returned module's ``main`` carries the attribute ``"hwcc.prune_channels"`` — a JSON
string (read it with :func:`read_report`) with, per group, its name, size, kept/removed units,
the removed unit indices, the weight elements they took away (``params_removed``, counted as if
the group were pruned alone), the layers to re-fit (``refit_layers``: consumers whose inputs
shrank) and, per producer layer, the removed output channels (``removed_outputs``), plus
parameter counts of ``main``'s constants before and after, and the blocked groups with their
reasons.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from . import calibration
from ._ir import (
    bindings,
    const,
    const_array,
    is_const,
    layer_flops,
    main_function,
    op_name,
    rebuild_main,
)
from .canonicalize import batch_norm_count
from .channel_groups import SHAPE, ChannelGroup, analyze

logger = logging.getLogger(__name__)

REPORT_ATTR = "hwcc.prune_channels"
#: Most groups :class:`PruneChannels` restores (each costs a build and a timing) before it
#: returns the unpruned module instead of a slower pruned one.
MAX_RESTORES = 4
#: A pruned model is kept only when it times at least this much faster than the unpruned one
#: (timings on a shared machine move by a few per cent between runs).
MIN_GAIN = 0.02
IMPORTANCES = ("l1", "l2", "mean_activation", "apoz", "reconstruction")
SCOPES = ("global", "per_layer")


@dataclass(frozen=True)
class PruneConfig:
    """Options of :class:`PruneChannels`.

    Attributes
    ----------
    ratio
        Fraction of the prunable units to remove, in [0, 1). Default 0 (no-op).
    importance
        One of :data:`IMPORTANCES`. Default ``"l1"``.
    scope
        ``"global"``: rank units of all groups together (scores normalised by each group's
        mean), so unimportant groups lose more; ``"per_layer"``: remove ``ratio`` of every
        group. Default ``"global"``.
    multiple_of
        Kept elements of every pruned dimension are a multiple of this (the target's vector
        width), rounding the kept count up. Default 1.
    layer_ratios
        Per-group ratio overriding ``ratio`` (keys are group names, i.e. the binding name of the
        group's first producer; see :func:`passes.channel_groups.analyze`). Such groups are
        pruned per layer. Default empty.
    min_keep
        Units every group keeps at least. Default 1.
    calibration
        Calibration inputs (see :mod:`passes.calibration`); required by the activation-based
        importances. Default None.
    timer
        A timer the caller hands in (module -> milliseconds of ``main`` on the target, e.g.
        :func:`compiler.lower.timing.time_module` when the target runs here); a pass never
        builds or times a kernel itself. With it the pruned model is never slower than the
        unpruned one: unless it is :data:`MIN_GAIN` faster, groups are restored one at a time
        (the group that removed fewest parameters first, at most :data:`MAX_RESTORES`) until
        it is, else the module is returned unpruned; the report's ``speed`` says what was
        measured and kept.
        Default None (not checked: the report says so).
    """

    ratio: float = 0.0
    importance: str = "l1"
    scope: str = "global"
    multiple_of: int = 1
    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    min_keep: int = 1
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    timer: Callable[[tvm.IRModule], float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        for name, r in dict(self.layer_ratios).items():
            _check_ratio(f"layer_ratios['{name}']", r)
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"unknown importance '{self.importance}'; known: {', '.join(IMPORTANCES)}"
            )
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope '{self.scope}'; known: {', '.join(SCOPES)}")
        for name in ("multiple_of", "min_keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"PruneConfig.{name} must be an integer >= 1; got {v!r}")
        if self.timer is not None and not callable(self.timer):
            raise ConfigError("PruneConfig.timer must be a timer (module -> ms) or None")
        needs_data = self.importance in ("mean_activation", "apoz", "reconstruction")
        if needs_data and self.calibration is None:
            raise ConfigError(f"importance '{self.importance}' needs calibration data")


def _check_ratio(name: str, r: object) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
        raise ConfigError(f"pruning {name} must be a number in [0, 1); got {r!r}")


def read_report(mod: tvm.IRModule) -> dict:
    """The pruning report stored on ``mod``'s ``main`` (empty dict when there is none)."""
    attrs = main_function(mod).attrs
    if attrs is None or REPORT_ATTR not in attrs:
        return {}
    return json.loads(str(attrs[REPORT_ATTR]))


def param_count(mod: tvm.IRModule) -> int:
    """Number of elements in the constants used by ``main``'s calls (weights, biases)."""
    seen: dict = {}
    for b in bindings(main_function(mod)):
        if isinstance(b.value, relax.Call):
            for a in b.value.args:
                if is_const(a):
                    seen[a] = int(np.prod(const_array(a).shape))
    return sum(seen.values())


# --------------------------------------------------------------------------------------------
# Importance


def _unit_norms(group: ChannelGroup, consts: dict, p: int) -> np.ndarray:
    score = np.zeros(group.size)
    for m in group.producers():
        w = consts[(m.binding, m.arg)]
        moved = np.moveaxis(np.abs(w.astype(np.float64)) ** p, m.axis, 0)
        per_elem = moved.reshape(moved.shape[0], -1).sum(axis=1)
        score += per_elem[m.indices(np.arange(group.size))].reshape(group.size, -1).sum(axis=1)
    return score ** (1.0 / p)


def _read_acts(group: ChannelGroup, seen: set) -> list:
    """The group's activations read by consumer layers, or all of them when none is."""
    return [a for a in group.activations if a.binding in seen] or list(group.activations)


def _act_stat(group: ChannelGroup, values: dict, kind: str, seen: set) -> np.ndarray | None:
    """Mean |activation| or non-zero fraction per unit, over the tensors consumers read.

    ``seen`` holds the names of tensors read by consumer layers (what the next layers see);
    other activations of the group are used only when no consumer input carries the group.
    """
    acts = _read_acts(group, seen)
    if not acts:
        return None
    score = np.zeros(group.size)
    for a in acts:
        v = values[a.binding]  # (n, *shape)
        moved = np.moveaxis(v, a.axis + 1, 0).reshape(v.shape[a.axis + 1], -1)
        stat = (moved != 0).mean(axis=1) if kind == "apoz" else np.abs(moved).mean(axis=1)
        idx = np.arange(group.size).reshape(-1, 1) * a.width + a.offset + np.arange(a.width)
        score += stat[idx].mean(axis=1)
    score /= len(acts)
    if kind == "apoz" and np.ptp(score) == 0:
        return None  # no zeros to count (no ReLU-like op): let the caller fall back
    return score


def _reconstruction(group: ChannelGroup, consts: dict, values: dict, inputs: dict) -> np.ndarray:
    score = np.zeros(group.size)
    for m in group.consumers():
        w = consts[(m.binding, m.arg)]
        wn = np.moveaxis(w.astype(np.float64) ** 2, m.axis, 0).reshape(w.shape[m.axis], -1)
        x = values[inputs[m.binding]]  # consumer's input: (n, batch, C, ...) or (n, ..., K)
        # conv2d weights are OIHW (inputs on axis 1, NCHW data: channel axis 2 after the sample
        # axis); matmul weights are (K, N) with inputs on axis 0 and K last in the data.
        in_axis = 2 if m.axis == 1 else x.ndim - 1
        xm = np.moveaxis(x.astype(np.float64) ** 2, in_axis, 0).reshape(x.shape[in_axis], -1)
        contrib = xm.sum(axis=1) / x.shape[0] * wn.sum(axis=1)
        score += contrib[m.indices(np.arange(group.size))].reshape(group.size, -1).sum(axis=1)
    return score


# --------------------------------------------------------------------------------------------
# Selection


def _keep_multiple(group: ChannelGroup, multiple_of: int) -> int:
    """Units whose element count is a multiple of ``multiple_of``."""
    return multiple_of // math.gcd(multiple_of, group.unit_elems)


def _round_keep(group: ChannelGroup, keep: int, cfg: PruneConfig) -> int:
    step = _keep_multiple(group, cfg.multiple_of)
    keep = max(keep, cfg.min_keep, 1)
    keep = -(-keep // step) * step
    return min(keep, group.size)


def _select(groups: list[ChannelGroup], scores: dict, cfg: PruneConfig) -> dict[str, np.ndarray]:
    """Units to remove per group name (sorted indices)."""
    removed: dict[str, np.ndarray] = {}
    per_layer = [g for g in groups if cfg.scope == "per_layer" or g.name in cfg.layer_ratios]
    glob = [g for g in groups if g not in per_layer]
    for g in per_layer:
        r = float(cfg.layer_ratios.get(g.name, cfg.ratio))
        keep = _round_keep(g, g.size - math.floor(r * g.size + 1e-9), cfg)
        order = np.argsort(scores[g.name], kind="stable")
        removed[g.name] = np.sort(order[: g.size - keep])
    if glob and cfg.ratio > 0:
        total = sum(g.size for g in glob)
        n_remove = math.floor(cfg.ratio * total + 1e-9)
        entries = []
        for g in glob:
            s = scores[g.name]
            norm = s / (s.mean() if s.mean() > 0 else 1.0)
            entries += [(float(norm[k]), g.name, k) for k in range(g.size)]
        entries.sort()
        chosen: dict[str, list[int]] = {g.name: [] for g in glob}
        by_name = {g.name: g for g in glob}
        for _, name, k in entries:
            if n_remove <= 0:
                break
            g = by_name[name]
            if len(chosen[name]) < g.size - max(cfg.min_keep, 1):
                chosen[name].append(k)
                n_remove -= 1
        for g in glob:
            keep = _round_keep(g, g.size - len(chosen[g.name]), cfg)
            order = np.argsort(scores[g.name], kind="stable")
            removed[g.name] = np.sort(order[: g.size - keep])
    return removed


# --------------------------------------------------------------------------------------------
# Rewrite


def _plan(groups: list[ChannelGroup], removed: dict) -> dict:
    """(binding, arg) -> axis -> element indices to delete."""
    plan: dict = {}
    for g in groups:
        units = removed.get(g.name)
        if units is None or len(units) == 0:
            continue
        for m in g.members:
            axes = plan.setdefault((m.binding, m.arg), {})
            axes.setdefault(m.axis, set()).update(int(i) for i in m.indices(units))
    return plan


def _rewriter(plan: dict) -> Callable[[relax.VarBinding, relax.Expr], relax.Expr | None]:
    def rewrite(binding: relax.VarBinding, value: relax.Expr) -> relax.Expr | None:
        name = binding.var.name
        if not isinstance(value, relax.Call):
            return None
        args = list(value.args)
        touched = False
        for i, a in enumerate(args):
            cuts = plan.get((name, i))
            if cuts is None or not is_const(a):
                continue
            w = const_array(a)
            for axis, idx in cuts.items():
                w = np.delete(w, sorted(idx), axis=axis)
            args[i] = const(w)
            touched = True
        cuts = plan.get((name, SHAPE))
        if cuts is not None:
            shape = [int(d) for d in value.args[1].values]
            for axis, idx in cuts.items():
                shape[axis] -= len(idx)
            return relax.op.reshape(args[0], shape)
        if touched and op_name(value) == "relax.nn.conv2d" and int(value.attrs.groups) > 1:
            # Depthwise (the only grouped conv that is pruned): groups follow the channels.
            old_w, new_w = const_array(value.args[1]), const_array(args[1])
            mult = old_w.shape[0] // int(value.attrs.groups)
            at = value.attrs
            return relax.op.nn.conv2d(
                args[0], args[1], strides=at.strides, padding=at.padding, dilation=at.dilation,
                groups=new_w.shape[0] // mult, data_layout=at.data_layout,
                kernel_layout=at.kernel_layout, out_layout=at.out_layout, out_dtype=at.out_dtype,
            )  # fmt: skip
        if touched:
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        return None

    return rewrite


def _refit_layers(groups: list[ChannelGroup], removed: dict) -> list[str]:
    layers = []
    for g in groups:
        if len(removed.get(g.name, ())) == 0:
            continue
        layers += [m.binding for m in g.consumers()]
    return list(dict.fromkeys(layers))


def _const_shapes(mod: tvm.IRModule) -> dict[tuple[str, int], tuple[int, ...]]:
    """(binding, arg) -> shape of every constant argument of ``main``'s calls."""
    out = {}
    for b in bindings(main_function(mod)):
        if isinstance(b.value, relax.Call):
            for i, a in enumerate(b.value.args):
                if is_const(a):
                    out[(b.var.name, i)] = tuple(const_array(a).shape)
    return out


def _group_params_removed(group: ChannelGroup, units: object, shapes: dict) -> int:
    """Weight elements the group's removed units take away (as if pruned alone)."""
    n = len(units)  # type: ignore[arg-type]
    total = 0
    for m in group.members:
        shape = shapes.get((m.binding, m.arg))
        if shape is not None and n:
            total += n * m.width * math.prod(shape) // shape[m.axis]
    return total


def _removed_outputs(groups: list[ChannelGroup], removed: dict) -> dict[str, list[int]]:
    """Producer layer -> removed output-channel indices (in the original numbering)."""
    out: dict[str, set] = {}
    for g in groups:
        units = removed.get(g.name)
        if units is None or len(units) == 0:
            continue
        for m in g.producers():
            out.setdefault(m.binding, set()).update(int(i) for i in m.indices(units))
    return {k: sorted(v) for k, v in out.items()}


@tvm.transform.module_pass(opt_level=0, name="hwcc.PruneChannels")
class PruneChannels:
    """Remove the least important channels / neurons / heads of every prunable group.

    See the module docstring for what it expects, guarantees, its options and its report.
    """

    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = config or PruneConfig()

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        cfg = self.config
        if batch_norm_count(mod):
            raise ConfigError(
                "PruneChannels expects BatchNorm folded; run hwcc.Canonicalize first "
                f"({batch_norm_count(mod)} nn.batch_norm left in main)"
            )
        groups = analyze(mod)
        prunable = [g for g in groups if g.prunable]
        blocked = [{"group": g.name, "size": g.size, "reason": g.blocked} for g in groups
                   if not g.prunable]  # fmt: skip
        unknown = sorted(set(cfg.layer_ratios) - {g.name for g in prunable})
        if unknown:
            raise ConfigError(
                f"layer_ratios names unknown or unprunable groups {unknown}; prunable groups: "
                f"{[g.name for g in prunable]}"
            )
        wants = cfg.ratio > 0 or any(r > 0 for r in cfg.layer_ratios.values())
        if wants and not prunable:
            reasons = "; ".join(f"{b['group']}: {b['reason']}" for b in blocked) or "no layers"
            raise ConfigError(f"nothing to prune in this model ({reasons})")
        before = param_count(mod)
        shapes = _const_shapes(mod)
        removed: dict[str, np.ndarray] = {}
        if wants:
            scores = self._scores(mod, prunable)
            removed = _select(prunable, scores, cfg)
        plan = _plan(prunable, removed)
        out = rebuild_main(mod, _rewriter(plan)) if plan else mod
        speed: dict = {"decided_by": "not checked (no timer: the target does not run here, or "
                                     "--prune-always)"}
        if cfg.timer is not None and plan:
            out, removed, speed = self._never_slower(mod, out, prunable, removed, shapes)
        elif not plan:
            speed = {"decided_by": "nothing to time: no unit was removed (groups keep whole "
                                   "multiples of multiple_of)", "kept": "unpruned"}
        report = {
            "importance": cfg.importance,
            "scope": cfg.scope,
            "ratio": cfg.ratio,
            "multiple_of": cfg.multiple_of,
            "params_before": before,
            "params_after": param_count(out),
            "flops_before": layer_flops(mod),
            "flops_after": layer_flops(out),
            "groups": [
                {
                    "group": g.name,
                    "size": g.size,
                    "unit_elems": g.unit_elems,
                    "kept": g.size - len(removed.get(g.name, ())),
                    "removed": len(removed.get(g.name, ())),
                    "removed_units": [int(i) for i in removed.get(g.name, ())],
                    "params_removed": _group_params_removed(g, removed.get(g.name, ()), shapes),
                    "layers": sorted(
                        {m.binding for m in g.members if m.role in ("out", "dw", "in")}
                    ),
                }
                for g in prunable
            ],
            "blocked": blocked,
            "speed": speed,
            "refit_layers": _refit_layers(prunable, removed),
            "removed_outputs": _removed_outputs(prunable, removed),
        }
        report["achieved"] = {
            "params_removed": round(1 - report["params_after"] / max(before, 1), 4),
            "flops_removed": round(1 - report["flops_after"] / max(report["flops_before"], 1), 4),
        }
        logger.info("pruned %d -> %d parameters", report["params_before"], report["params_after"])
        func = main_function(out).with_attr(REPORT_ATTR, json.dumps(report))
        out = tvm.IRModule(dict(out.functions_items()), attrs=out.attrs)
        out[out.get_global_var("main")] = func
        return out

    def _never_slower(
        self,
        mod: tvm.IRModule,
        out: tvm.IRModule,
        groups: list[ChannelGroup],
        removed: dict[str, np.ndarray],
        shapes: dict,
    ) -> tuple[tvm.IRModule, dict[str, np.ndarray], dict]:
        """``out``, or ``out`` with some groups restored, or ``mod``: whichever first times
        faster than ``mod`` (see ``PruneConfig.timer``)."""
        timer = self.config.timer
        base_ms, pruned_ms = timer(mod), timer(out)
        speed = {"decided_by": "measured on this machine", "unpruned_ms": round(base_ms, 4),
                 "pruned_ms": round(pruned_ms, 4), "kept": "pruned", "restored_groups": []}
        goal = base_ms * (1.0 - MIN_GAIN)
        if pruned_ms < goal:
            return out, removed, speed
        saved = {g.name: _group_params_removed(g, removed.get(g.name, ()), shapes)
                 for g in groups if len(removed.get(g.name, ()))}
        trial = dict(removed)
        for name in sorted(saved, key=saved.get)[:MAX_RESTORES]:
            trial.pop(name)
            speed["restored_groups"].append(name)
            plan = _plan(groups, trial)
            if not plan:
                break
            candidate = rebuild_main(mod, _rewriter(plan))
            ms = timer(candidate)
            speed["pruned_ms"] = round(ms, 4)
            if ms < goal:
                speed["reason"] = (f"the fully pruned model ran {pruned_ms:.3g} ms, the unpruned "
                                   f"{base_ms:.3g} ms; restored {len(speed['restored_groups'])} "
                                   f"group(s): {ms:.3g} ms")
                logger.warning("prune_channels: %s", speed["reason"])
                return candidate, trial, speed
        speed.update(kept="unpruned", pruned_ms=round(pruned_ms, 4), restored_groups=[],
                     reason=f"the pruned model ran {pruned_ms:.3g} ms, the unpruned "
                            f"{base_ms:.3g} ms, also with the least useful groups restored")
        logger.warning("prune_channels: kept the unpruned model (%s)", speed["reason"])
        return mod, {}, speed

    def _scores(self, mod: tvm.IRModule, groups: list[ChannelGroup]) -> dict[str, np.ndarray]:
        cfg = self.config
        consts: dict = {}
        for b in bindings(main_function(mod)):
            if isinstance(b.value, relax.Call):
                for i, a in enumerate(b.value.args):
                    if is_const(a):
                        consts[(b.var.name, i)] = const_array(a)
        if cfg.importance in ("l1", "l2"):
            p = 1 if cfg.importance == "l1" else 2
            return {g.name: _unit_norms(g, consts, p) for g in groups}
        inputs: dict[str, str] = {}  # consumer layer -> the tensor it reads
        for b in bindings(main_function(mod)):
            if op_name(b.value) in ("relax.nn.conv2d", "relax.matmul"):
                x = b.value.args[0]
                if isinstance(x, relax.Var):
                    inputs[b.var.name] = x.name
        seen = set(inputs.values())
        if cfg.importance == "reconstruction":
            names = sorted({inputs[m.binding] for g in groups for m in g.consumers()})
        else:
            names = sorted({a.binding for g in groups for a in _read_acts(g, seen)})
        cap = calibration.capture(mod, cfg.calibration, names)
        values = dict(zip(cap.names, cap.values))
        scores = {}
        for g in groups:
            if cfg.importance == "reconstruction":
                s = _reconstruction(g, consts, values, inputs) if g.consumers() else None
            else:
                s = _act_stat(g, values, cfg.importance, seen)
            if s is None:
                logger.warning("group %s: no data for %s; using L2", g.name, cfg.importance)
                s = _unit_norms(g, consts, 2)
            scores[g.name] = s
        return scores

