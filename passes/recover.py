"""Teacher-guided recovery without training: least-squares re-fit of compressed layers.

After a compression (channel pruning, low rank, sparsity ...) a layer sees different inputs than
in the original model. ThiNet (Luo et al. 2017) and He et al. (2017, "Channel Pruning for
Accelerating Very Deep Neural Networks") re-fit such a layer's weights so that, on calibration
data, its outputs on the *student's* inputs match the *teacher's* (original model's) outputs:

    W', b' = argmin ‖X_student · W + b − Y_teacher‖² + λ‖(W, b) − (W₀, b₀)‖²

(the pull towards the compressed weights ``W₀`` keeps what the data does not determine).

:func:`refit` does this for conv2d (any stride / padding / dilation, groups 1 or depthwise) and
matmul layers with constant weights, including the constant bias ``R.add`` that follows them.

Layers are named by the binding name of their conv2d / matmul call in ``main``; teacher and
student must both bind a layer under that name (hwcc's passes keep binding names). When the
student also lost output channels of a layer, ``out_channels[name]`` lists which of the
teacher's channels it kept (``PruneChannels`` reports them; :func:`refit_pruned` reads that).

Pass ``hwcc.Recover`` wraps :func:`refit` with a :class:`RecoverConfig` (teacher, calibration
data, layers; empty layers = read ``refit_layers`` from the pruning report of the module).

Expects: calibration data in the format of :mod:`passes.calibration`. Guarantees: the module's
structure is unchanged; only the named layers' weights and biases are replaced. The pass
records ``"hwcc.recover"`` on ``main``: JSON with, per layer, the relative least-squares error
before and after the fit on the calibration data.
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

from . import calibration
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
        ``XᵀX``; None (default) chooses it per layer from 1e-4 … 1 by error on held-out rows.
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


_RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _solve(
    x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray | None, ridge: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares ``y ≈ x w + b``, shrunk towards the current ``(w0, b0)``.

    ``w0`` is (k, m). The penalty ``λ‖w − w0‖²`` keeps directions the data does not determine at
    their current values, so few calibration rows cannot wreck a layer. ``ridge`` scales λ by
    the mean diagonal of ``xᵀx``; None picks it from a grid by error on a held-out fifth.
    """
    bias = b0 is not None
    if bias:
        x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        w0 = np.concatenate([w0, b0.reshape(1, -1)], axis=0)
    if ridge is None:
        n = x.shape[0]
        hold = np.zeros(n, dtype=bool)
        hold[np.random.default_rng(1).permutation(n)[: max(n // 5, 1)]] = True
        errs = []
        for r in _RIDGE_GRID:
            sol = _ridge(x[~hold], y[~hold], w0, r, bias)
            errs.append(float(np.sum((x[hold] @ sol - y[hold]) ** 2)))
        ridge = _RIDGE_GRID[int(np.argmin(errs))]
    sol = _ridge(x, y, w0, ridge, bias)
    return (sol[:-1], sol[-1]) if bias else (sol, np.zeros(y.shape[1]))


def _ridge(x: np.ndarray, y: np.ndarray, w0: np.ndarray, ridge: float, bias: bool) -> np.ndarray:
    gram = x.T @ x
    lam = ridge * float(np.trace(gram)) / max(gram.shape[0], 1)
    reg = np.eye(gram.shape[0]) * lam
    if bias:
        reg[-1, -1] = lam * 1e-3
    return np.linalg.solve(gram + reg, x.T @ y + reg @ w0)


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
) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """New (weight, bias) of one layer and the relative error before / after."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if layer.kind == "matmul":
        xs = x.reshape(-1, x.shape[-1])
        ys = y.reshape(-1, y.shape[-1])
        rows = _rows(xs.shape[0], max_rows)
        xs, ys = xs[rows], ys[rows]
        bias_vec = None if b is None else b.reshape(-1)
        before = xs @ w + (0 if bias_vec is None else bias_vec)
        nw, nb = _solve(xs, ys, w.astype(np.float64), bias_vec, ridge)
        after = xs @ nw + nb
        new_w, new_b = (
            nw.astype(w.dtype),
            None if b is None else nb.reshape(b.shape).astype(b.dtype),
        )
    else:
        groups = int(layer.call.attrs.groups)
        xs4 = x.reshape(-1, *x.shape[-3:])
        ys4 = y.reshape(-1, *y.shape[-3:])
        cout = w.shape[0]
        ycols = ys4.transpose(0, 2, 3, 1).reshape(-1, cout)
        cols = _im2col(xs4, layer.call, w.shape)
        rows = _rows(cols.shape[0], max_rows)
        cols, ycols = cols[rows], ycols[rows]
        bias_vec = None if b is None else b.reshape(-1)
        new_w = np.empty(w.shape, dtype=np.float64)
        new_b = np.zeros(cout)
        before = np.empty_like(ycols)
        after = np.empty_like(ycols)
        cin_g, cout_g = w.shape[1], cout // groups
        k = w.shape[1] * w.shape[2] * w.shape[3]
        for g in range(groups):  # groups == 1, or depthwise: one small problem per group
            xg = cols[:, g * k : (g + 1) * k] if groups > 1 else cols
            oc = slice(g * cout_g, (g + 1) * cout_g)
            wg = w[oc].reshape(cout_g, -1).T.astype(np.float64)
            before[:, oc] = xg @ wg + (0 if bias_vec is None else bias_vec[oc])
            b0 = None if bias_vec is None else bias_vec[oc].astype(np.float64)
            nw, nb = _solve(xg, ycols[:, oc], wg, b0, ridge)
            new_w[oc] = nw.T.reshape(cout_g, cin_g, w.shape[2], w.shape[3])
            new_b[oc] = nb
            after[:, oc] = xg @ nw + nb
        ys = ycols
        new_w = new_w.astype(w.dtype)
        new_b = None if b is None else new_b.reshape(b.shape).astype(b.dtype)
    scale = float(np.sum(ys**2)) or 1.0
    err_before = float(np.sum((before - ys) ** 2)) / scale
    err_after = float(np.sum((after - ys) ** 2)) / scale
    return new_w, new_b, err_before, err_after


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
) -> tuple[tvm.IRModule, dict[str, dict[str, float]]]:
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

    Returns
    -------
    (tvm.IRModule, dict)
        The re-fitted student, and per layer ``{"error_before", "error_after"}`` (relative
        squared error of the layer's output on the calibration rows).
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
    stats: dict[str, dict[str, float]] = {}
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
        new_w, new_b, e0, e1 = _fit_layer(layer, x, y, w, b, ridge, max_rows)
        if e1 > e0:  # never make a layer worse on the data it was fitted on
            logger.warning("re-fit of '%s' did not help (%.4g -> %.4g); kept", name, e0, e1)
            stats[name] = {"error_before": e0, "error_after": e0}
            continue
        new = {(name, 1): new_w}
        if new_b is not None:
            new[(layer.bias, 1)] = new_b
        student = _replace_consts(student, new)
        s_layers = _layers(student)
        stats[name] = {"error_before": e0, "error_after": e1}
        logger.info("re-fit '%s': relative error %.4g -> %.4g", name, e0, e1)
    return student, stats


def refit_pruned(
    teacher: tvm.IRModule, pruned: tvm.IRModule, calib: Mapping[str, np.ndarray], **kwargs: object
) -> tuple[tvm.IRModule, dict[str, dict[str, float]]]:
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
        func = main_function(out).with_attr(REPORT_ATTR, json.dumps({"layers": stats}))
        out = tvm.IRModule(dict(out.functions_items()), attrs=out.attrs)
        out[out.get_global_var("main")] = func
        return out

