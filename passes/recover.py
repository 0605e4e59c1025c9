"""Teacher-guided recovery without training: least-squares re-fit of compressed layers.

After a compression (channel pruning, low rank, sparsity ...) a layer sees different inputs than
in the original model. ThiNet (Luo et al. 2017) and He et al. (2017, "Channel Pruning for
Accelerating Very Deep Neural Networks") re-fit such a layer's weights so that, on calibration
data, its outputs on the *student's* inputs match the *teacher's* (original model's) outputs:

    W', b' = argmin ‖X_student · W + b − Y_teacher‖² + λ‖(W, b) − (W₀, b₀)‖²

(the pull towards the compressed weights ``W₀`` keeps what the data does not determine, so the
fit is well posed even with fewer rows than inputs, e.g. one calibration sample). The ridge
solve, the choice of λ by cross-validation on held-back calibration samples, and the decision
to drop a fit that does not lower the held-back error live in :mod:`passes._lstsq`, shared
with :mod:`passes.sparsify`.

:func:`refit` does this for conv2d (any stride / padding / dilation, groups 1 or depthwise) and
matmul layers with constant weights, including the constant bias ``R.add`` that follows them.

Layers are named by the binding name of their conv2d / matmul call in ``main``; teacher and
student must both bind a layer under that name (hwcc's passes keep binding names). When the
student also lost output channels of a layer, ``out_channels[name]`` lists which of the
teacher's channels it kept (``PruneChannels`` reports them; :func:`refit_pruned` reads that).

Pass ``hwcc.Recover`` wraps :func:`refit` with a :class:`RecoverConfig` (teacher, calibration
data, layers; empty layers = read ``refit_layers`` from the pruning report of the module).

Expects: calibration data in the format of :mod:`passes.calibration`. Guarantees: the module's
structure is unchanged; only the named layers' weights and biases are replaced; re-fitting
never fails on small data (a fit that cannot help is dropped). The pass records
``"hwcc.recover"`` on ``main``: JSON with ``samples`` (calibration samples),
``samples_for_reliable_refit`` (see :func:`passes._lstsq.reliable_samples`) and, per layer,
the entry of :meth:`passes._lstsq.Fit.report`: relative error before / after on the
calibration rows, samples, rows, held-back rows, features, the ridge strength and λ chosen
and how, and whether the fit was kept or dropped and why. With too few samples for a
reliable fit it logs one warning naming how many would do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from . import _lstsq, calibration
from ._ir import bindings, const, const_array, is_const, main_function, op_name, rebuild_main
from .prune_channels import read_report

logger = logging.getLogger(__name__)

REPORT_ATTR = "hwcc.recover"


@dataclass(frozen=True)
class RecoverConfig:
    """Options of :class:`Recover`.

    Attributes
    ----------
    teacher
        The original (uncompressed) module. Required.
    calibration
        Calibration inputs (see :mod:`passes.calibration`). Required.
    layers
        Binding names of the layers to re-fit; empty (default) = the ``refit_layers`` of the
        module's pruning report.
    ridge
        Strength of the pull towards the current weights, relative to the mean diagonal of
        ``XᵀX``; None (default) chooses it per layer from :data:`passes._lstsq.STRENGTHS` by
        cross-validation on held-back calibration samples (with a single sample:
        :data:`passes._lstsq.DEFAULT_STRENGTH`).
    sequential
        Re-fit layers in graph order, re-capturing the student's inputs after each fit so later
        layers also correct earlier errors (one compile per layer). Default True.
    max_rows
        Rows of the least-squares problem kept (random subset, seeded). Default 50000.
    """

    teacher: tvm.IRModule | None = field(default=None, compare=False)
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    layers: tuple[str, ...] = ()
    ridge: float | None = None
    sequential: bool = True
    max_rows: int = 50000

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, tvm.IRModule):
            raise ConfigError("RecoverConfig.teacher must be the original IRModule")
        if self.calibration is None:
            raise ConfigError("RecoverConfig.calibration is required")
        if isinstance(self.layers, str) or not all(isinstance(x, str) for x in self.layers):
            raise ConfigError("RecoverConfig.layers must be a sequence of binding names")
        if self.ridge is not None and (
            isinstance(self.ridge, bool)
            or not isinstance(self.ridge, (int, float))
            or self.ridge < 0
        ):
            raise ConfigError(f"RecoverConfig.ridge must be None or >= 0; got {self.ridge!r}")
        if (
            isinstance(self.max_rows, bool)
            or not isinstance(self.max_rows, int)
            or self.max_rows < 1
        ):
            raise ConfigError(
                f"RecoverConfig.max_rows must be an integer >= 1; got {self.max_rows!r}"
            )


@dataclass(frozen=True)
class _Layer:
    name: str
    kind: str  # "conv2d" | "matmul"
    input: str
    bias: str | None  # binding name of the constant bias add, if any
    call: relax.Call


def _layers(mod: tvm.IRModule) -> dict[str, _Layer]:
    func = main_function(mod)
    uses: dict[str, list[relax.Binding]] = {}
    for b in bindings(func):
        if isinstance(b.value, relax.Call):
            for a in b.value.args:
                if isinstance(a, relax.Var):
                    uses.setdefault(a.name, []).append(b)
    found = {}
    for b in bindings(func):
        name = op_name(b.value)
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        x, w = b.value.args[0], b.value.args[1]
        if not is_const(w) or not isinstance(x, relax.Var):
            continue
        if name == "relax.matmul" and const_array(w).ndim != 2:
            continue
        bias = None
        users = uses.get(b.var.name, [])
        if len(users) == 1 and op_name(users[0].value) == "relax.add":
            args = users[0].value.args
            if args[0].same_as(b.var) and is_const(args[1]):
                bias = users[0].var.name
        kind = "conv2d" if name == "relax.nn.conv2d" else "matmul"
        found[b.var.name] = _Layer(b.var.name, kind, x.name, bias, b.value)
    return found


def _im2col(x: np.ndarray, call: relax.Call, w_shape: tuple) -> np.ndarray:
    """Patches of NCHW ``x`` for conv ``call``: (N*Ho*Wo, C*kh*kw) matching OIHW flattening."""
    at = call.attrs
    pt, pl, pb, pr = (int(p) for p in at.padding)
    sh, sw = (int(s) for s in at.strides)
    dh, dw = (int(d) for d in at.dilation)
    kh, kw = w_shape[2], w_shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(
        xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), (2, 3)
    )
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def _rows(n: int, max_rows: int) -> np.ndarray | slice:
    if n <= max_rows:
        return slice(None)
    return np.sort(np.random.default_rng(0).choice(n, max_rows, replace=False))


def _fit_layer(
    layer: _Layer,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    ridge: float | None,
    max_rows: int,
) -> tuple[np.ndarray, np.ndarray | None, _lstsq.Fit]:
    """New (weight, bias) of one layer (the old ones if the fit was dropped) and the fit.

    ``x`` and ``y`` hold the layer's input and target output stacked over calibration
    samples (leading axis). The least-squares rows are the layer's output positions; a bias
    is fitted as one more input (a column of ones), nearly unpenalized.
    """
    samples = x.shape[0]
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if layer.kind == "matmul":
        xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        w0s = [w.astype(np.float64)]
        cols = [slice(None)]
        outs = [slice(None)]
    else:
        groups = int(layer.call.attrs.groups)
        cout, k = w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
        ys = y.reshape(-1, *y.shape[-3:]).transpose(0, 2, 3, 1).reshape(-1, cout)
        xs = _im2col(x.reshape(-1, *x.shape[-3:]), layer.call, w.shape)
        cout_g = cout // groups  # groups == 1, or grouped: one small problem per group
        outs = [slice(g * cout_g, (g + 1) * cout_g) for g in range(groups)]
        cols = [slice(g * k, (g + 1) * k) if groups > 1 else slice(None) for g in range(groups)]
        w0s = [w[oc].reshape(cout_g, -1).T.astype(np.float64) for oc in outs]
    ids = _lstsq.sample_ids(samples, xs.shape[0])
    rows = _rows(xs.shape[0], max_rows)
    xs, ys, ids = xs[rows], ys[rows], ids[rows]
    fold = _lstsq.folds(ids, samples)
    bias = None if b is None else b.reshape(-1).astype(np.float64)
    ones = np.ones((xs.shape[0], 1))
    per_group = []  # [group][fold]
    for i, (c, oc) in enumerate(zip(cols, outs)):
        xg = xs[:, c]
        if bias is not None:
            xg = np.concatenate([xg, ones], axis=1)
            w0s[i] = np.concatenate([w0s[i], bias[oc].reshape(1, -1)], axis=0)
        per_group.append(_lstsq.normals(xg, ys[:, oc], fold))
    parts = [list(p) for p in zip(*per_group)]  # [fold][group]
    free = () if bias is None else (w0s[0].shape[0] - 1,)
    result = _lstsq.fit(parts, w0s, samples=samples, strength=ridge, free=free)
    if not result.kept:
        return w, b, result
    new_w = np.empty(w.shape, dtype=np.float64)
    new_b = np.zeros(0 if bias is None else len(bias))
    for oc, sol in zip(outs, result.weights):
        if bias is not None:
            sol, new_b[oc] = sol[:-1], sol[-1]
        new_w[oc] = sol.T.reshape(new_w[oc].shape) if layer.kind == "conv2d" else sol
    new_b = None if b is None else new_b.reshape(b.shape).astype(b.dtype)
    return new_w.astype(w.dtype), new_b, result


def _replace_consts(mod: tvm.IRModule, new: dict[tuple[str, int], np.ndarray]) -> tvm.IRModule:
    def rewrite(binding: relax.VarBinding, value: relax.Expr) -> relax.Expr | None:
        if not isinstance(value, relax.Call):
            return None
        hits = [i for i in range(len(value.args)) if (binding.var.name, i) in new]
        if not hits:
            return None
        args = list(value.args)
        for i in hits:
            old = const_array(args[i])
            arr = new[(binding.var.name, i)]
            if arr.shape != old.shape:
                raise ConfigError(f"re-fit of '{binding.var.name}' changed a shape {old.shape}")
            args[i] = const(arr)
        return relax.Call(value.op, args, value.attrs, value.ty_args)

    return rebuild_main(mod, rewrite)


def refit(
    teacher: tvm.IRModule,
    student: tvm.IRModule,
    calib: Mapping[str, np.ndarray],
    layers: Sequence[str],
    out_channels: Mapping[str, Sequence[int]] | None = None,
    *,
    ridge: float | None = None,
    sequential: bool = True,
    max_rows: int = 50000,
    what: str = "recovery",
) -> tuple[tvm.IRModule, dict[str, dict]]:
    """Re-fit ``layers`` of ``student`` so their outputs match ``teacher``'s on ``calib``.

    Parameters
    ----------
    teacher, student
        Original and compressed modules; both bind every layer in ``layers`` by name.
    calib
        Calibration inputs (see :mod:`passes.calibration`).
    layers
        Binding names of conv2d / matmul calls with constant weights.
    out_channels
        For layers whose output channels were also removed in the student: the teacher's
        output channels (or features) that the student keeps, in order.
    ridge, sequential, max_rows
        See :class:`RecoverConfig`.
    what
        Name of the re-fit in the warning about too few calibration samples.

    Returns
    -------
    (tvm.IRModule, dict)
        The re-fitted student, and per layer the entry of :meth:`passes._lstsq.Fit.report`:
        ``error_before`` / ``error_after`` (relative squared error of the layer's output on
        the calibration rows), ``samples``, ``rows``, ``held_back_rows``, ``features``, the
        chosen ``ridge`` (relative) and ``lambda`` (absolute), ``ridge_chosen_by``, ``kept``
        and ``reason``. A fit that does not lower the held-back error (with too few samples
        to hold any back: the training error) is dropped and the layer keeps its weights.
    """
    out_channels = dict(out_channels or {})
    t_layers, s_layers = _layers(teacher), _layers(student)
    for name in layers:
        for which, found in (("teacher", t_layers), ("student", s_layers)):
            if name not in found:
                raise ConfigError(
                    f"layer '{name}' is not a conv2d/matmul with a constant weight in the "
                    f"{which}; known layers: {sorted(found)}"
                )
    order = [b.var.name for b in bindings(main_function(student))]
    todo = sorted(dict.fromkeys(layers), key=order.index)
    targets = [t_layers[n].bias or n for n in todo]
    t_cap = calibration.capture(teacher, calib, targets)
    stats: dict[str, dict] = {}
    s_cap = None
    for i, name in enumerate(todo):
        layer = s_layers[name]
        if s_cap is None or sequential:
            rest = [s_layers[n].input for n in todo[i:]]
            s_cap = calibration.capture(student, calib, list(dict.fromkeys(rest)))
        x = s_cap[layer.input]
        y = t_cap.values[i]
        keep = out_channels.get(name)
        if keep is not None:
            y = np.take(
                y, np.asarray(keep, dtype=np.int64), axis=2 if layer.kind == "conv2d" else -1
            )
        w = const_array(layer.call.args[1])
        b = None
        if layer.bias is not None:
            b = const_array(calibration.find_binding(student, layer.bias).value.args[1])
        if t_layers[name].bias is None and b is not None:
            raise ConfigError(f"layer '{name}' has a bias in the student but not in the teacher")
        new_w, new_b, fitted = _fit_layer(layer, x, y, w, b, ridge, max_rows)
        stats[name] = fitted.report()
        if not fitted.kept:
            logger.info("re-fit of '%s' %s", name, fitted.reason)
            continue
        new = {(name, 1): new_w}
        if new_b is not None:
            new[(layer.bias, 1)] = new_b
        student = _replace_consts(student, new)
        s_layers = _layers(student)
        logger.info(
            "re-fit '%s': relative error %.4g -> %.4g (ridge %g, %s)", name,
            fitted.error_before, fitted.error_after, fitted.strength, fitted.reason,
        )  # fmt: skip
    _lstsq.warn_if_unreliable(logger, what, stats)
    return student, stats


def refit_pruned(
    teacher: tvm.IRModule, pruned: tvm.IRModule, calib: Mapping[str, np.ndarray], **kwargs: object
) -> tuple[tvm.IRModule, dict[str, dict]]:
    """:func:`refit` of the ``refit_layers`` in ``pruned``'s ``PruneChannels`` report."""
    report = read_report(pruned)
    if not report:
        raise ConfigError("the module has no PruneChannels report; name the layers to re-fit")
    keep = {}
    t_layers = _layers(teacher)
    for name, removed in report.get("removed_outputs", {}).items():
        if name in t_layers:
            w = const_array(t_layers[name].call.args[1])
            n_out = w.shape[0] if t_layers[name].kind == "conv2d" else w.shape[1]
            keep[name] = sorted(set(range(n_out)) - set(removed))
    return refit(teacher, pruned, calib, report["refit_layers"], keep, **kwargs)


@tvm.transform.module_pass(opt_level=0, name="hwcc.Recover")
class Recover:
    """Least-squares re-fit of compressed layers against the teacher (see module docstring)."""

    def __init__(self, config: RecoverConfig) -> None:
        if not isinstance(config, RecoverConfig):
            raise ConfigError("Recover needs a RecoverConfig (teacher and calibration data)")
        self.config = config

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        cfg = self.config
        opts = {"ridge": cfg.ridge, "sequential": cfg.sequential, "max_rows": cfg.max_rows}
        if cfg.layers:
            out, stats = refit(cfg.teacher, mod, cfg.calibration, cfg.layers, **opts)
        else:
            out, stats = refit_pruned(cfg.teacher, mod, cfg.calibration, **opts)
        need, _ = _lstsq.reliable_samples(stats)
        samples = calibration.check_calibration(mod, cfg.calibration)
        report = {"samples": samples, "samples_for_reliable_refit": need, "layers": stats}
        func = main_function(out).with_attr(REPORT_ATTR, json.dumps(report))
        out = tvm.IRModule(dict(out.functions_items()), attrs=out.attrs)
        out[out.get_global_var("main")] = func
        return out

