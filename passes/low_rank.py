"""Low-rank factorization of dense and convolution layers.

Pass ``hwcc.LowRank``.

What it does, per layer with a constant weight:

``matmul`` (ONNX Gemm / MatMul) ``y = x W`` with ``W`` of shape (m, n)
    truncated SVD ``W ≈ U_r Σ_r V_rᵀ``; the layer becomes two thinner matmuls
    ``(x A) B`` with ``A = U_r Σ_r^½`` (m × r) and ``B = Σ_r^½ V_rᵀ`` (r × n). By Eckart–Young,
    ``‖W − AB‖_F = sqrt(Σ_{i>r} σ_i²)`` and ``‖x(W − AB)‖ ≤ ‖x‖ σ_{r+1}`` for every row ``x``.
``conv2d`` 1×1 (groups 1)
    the same SVD on the (out, in) matrix: two 1×1 convs, the first one carrying the stride.
``conv2d`` k×k (groups 1, NCHW / OIHW), ``conv_method="tucker2"``
    Tucker-2 from the HOSVD (Kim et al. 2016): ``U_in`` / ``U_out`` are the leading left singular
    vectors of the input- and output-channel unfoldings of ``W``; the layer becomes
    1×1 conv ``I → r_in`` (``U_inᵀ``), the k×k core conv ``r_in → r_out`` with the original
    stride / padding / dilation, and 1×1 conv ``r_out → O`` (``U_out``).
    ``‖W − Ŵ‖_F² ≤`` the discarded σ² of both unfoldings.
``conv2d`` k×k, ``conv_method="spatial"``
    Jaderberg et al. (2014) scheme 2: the SVD of ``W`` rearranged as a (I·kh) × (O·kw) matrix
    gives a kh×1 conv ``I → r`` (vertical stride, padding, dilation) followed by a 1×kw conv
    ``r → O`` (horizontal ones); ``‖W − Ŵ‖_F = sqrt(Σ_{i>r} σ_i²)`` of that matrix.

Rank choice (exactly one of ``energy`` / ``rank`` / ``ratio`` in :class:`LowRankConfig`):
``energy`` keeps the smallest rank whose squared singular values reach that fraction of the
total; ``ratio`` keeps ``ceil(ratio · full rank)``; both are then rounded *up* to a multiple of
``multiple_of`` (the target's fp32 vector lanes) and capped at the full rank. An explicit
``rank`` is used as given (and must not exceed any considered layer's full rank). For Tucker-2
the rule is applied to each of the two unfoldings. With ``only_if_cheaper`` a layer whose
factorized form would cost as many FLOPs as the original or more is left as is.

Expects: a Relax module with ``main`` whose weights are bound as constants
(``from_onnx(..., keep_params_in_input=False)``). BatchNorm does not have to be folded — the pass
rewrites conv2d / matmul calls with constant weights and leaves everything else alone — but
running :class:`passes.canonicalize.Canonicalize` first is recommended, so that BatchNorm scales
are part of the weight whose spectrum is truncated. Calibration data (for ``recover``) in the
format of :mod:`passes.calibration`.

Guarantees: the result is well formed, with the same inputs and outputs; each factorized layer
keeps its binding name on its *last* factor (so :func:`passes.recover.refit` and later passes
find it), the factors before it are bound as ``<name>_lr0``, ``<name>_lr1``; a bias add after the
layer is untouched. At full rank the module computes the same function up to float rounding.
Layers not factorized are unchanged. Where ``main`` binds the same name more than once (some
TVM passes leave such repeats), the rebuilt ``main`` has the repeats renamed, since recovery
finds layers by name.

Recovery: with ``recover=True`` the last factor of every factorized layer (and its bias) is
re-fitted by ridge least squares on the calibration data so that the layer's output matches
the original model's (:func:`passes.recover.refit`, teacher = the module before this pass); a
re-fit that does not lower the error on held-back calibration samples is dropped.

Report: a dict on the pass object, ``LowRank(cfg).report`` (what the compile driver records in
the manifest), also stored as JSON in ``main``'s attribute ``"hwcc.low_rank"`` (read it with
:func:`read_report`; print it with :func:`format_report`): per layer its op, weight shape,
decomposition, chosen rank(s), full rank, kept energy, relative Frobenius error of the weight,
parameters and FLOPs before / after, or why it was skipped; totals; per re-fitted layer its
``recovery`` entry (errors, samples, rows, ridge and λ, kept or dropped and why: see
:meth:`passes._lstsq.Fit.report`).
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
    main_function,
    op_name,
    static_shape,
    substitute,
)
from .recover import refit

logger = logging.getLogger(__name__)

REPORT_ATTR = "hwcc.low_rank"
CONV_METHODS = ("tucker2", "spatial", "none")


@dataclass(frozen=True)
class LowRankConfig:
    """Options of :class:`LowRank`.

    Attributes
    ----------
    energy
        Fraction of the squared singular values to keep, in (0, 1]. Default None.
    rank
        Explicit rank (>= 1) of every factorized layer, used as given. Default None.
    ratio
        Rank as a fraction of each layer's full rank, in (0, 1]. Default None.
        Exactly one of ``energy``, ``rank``, ``ratio`` must be set.
    conv_method
        ``"tucker2"`` (1×1 → k×k core → 1×1), ``"spatial"`` (k×1 then 1×k) or ``"none"``
        (leave convolutions alone). 1×1 convs are factorized by SVD unless ``"none"``.
        Default ``"tucker2"``.
    multiple_of
        Ranks from ``energy`` / ``ratio`` are rounded up to a multiple of this (the target's fp32
        vector lanes). Default 8.
    only_if_cheaper
        Leave a layer as is when its factorization costs at least the original's FLOPs.
        Default True.
    min_params
        Layers whose weight has fewer elements are skipped. Default 4096.
    calibration
        Calibration inputs (see :mod:`passes.calibration`); needed by ``recover``. Default None.
    recover
        Re-fit each factorized layer's last factor by least squares on ``calibration`` against
        the original model. Default False.
    """

    energy: float | None = None
    rank: int | None = None
    ratio: float | None = None
    conv_method: str = "tucker2"
    multiple_of: int = 8
    only_if_cheaper: bool = True
    min_params: int = 4096
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    recover: bool = False

    def __post_init__(self) -> None:
        given = [n for n in ("energy", "rank", "ratio") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"LowRankConfig needs exactly one of energy, rank, ratio; got {given or 'none'}"
            )
        for name in ("energy", "ratio"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0
            ):
                raise ConfigError(f"low-rank {name} must be a number in (0, 1]; got {v!r}")
        if self.rank is not None and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1
        ):
            raise ConfigError(f"low-rank rank must be an integer >= 1; got {self.rank!r}")
        if self.conv_method not in CONV_METHODS:
            raise ConfigError(
                f"unknown conv_method '{self.conv_method}'; known: {', '.join(CONV_METHODS)}"
            )
        for name, low in (("multiple_of", 1), ("min_params", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"LowRankConfig.{name} must be an integer >= {low}; got {v!r}")
        for name in ("only_if_cheaper", "recover"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"LowRankConfig.{name} must be a bool")
        if self.calibration is not None and not isinstance(self.calibration, Mapping):
            raise ConfigError("LowRankConfig.calibration must map input names to arrays")
        if self.recover and self.calibration is None:
            raise ConfigError("LowRankConfig.recover needs calibration data")


def low_rank_config_from_arg(
    spec: str, calibration: Mapping[str, np.ndarray] | None = None, multiple_of: int = 8
) -> LowRankConfig:
    """Parse the ``--low-rank`` flag: ``energy=0.95``, ``rank=64`` or ``ratio=0.25``.

    Further comma-separated options may follow: ``conv=tucker2|spatial|none``,
    ``min_params=N``, ``all`` (factorize even where it costs more FLOPs),
    e.g. ``energy=0.9,conv=spatial``. Recovery is on when ``calibration`` is given.

    Raises
    ------
    ConfigError
        Malformed text, unknown keys, out-of-range values (quoting the input).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--low-rank needs energy=F, rank=N or ratio=F (e.g. energy=0.95)")
    kw: dict = {"calibration": calibration, "recover": calibration is not None,
                "multiple_of": multiple_of}  # fmt: skip
    for part in (p.strip() for p in spec.split(",")):
        key, sep, text = part.partition("=")
        key = key.strip()
        if key == "all" and not sep:
            kw["only_if_cheaper"] = False
            continue
        if not sep or key not in ("energy", "rank", "ratio", "conv", "min_params"):
            raise ConfigError(
                f"bad --low-rank option '{part}' in '{spec}'; expected energy=F, rank=N or "
                "ratio=F, optionally followed by ,conv=tucker2|spatial|none ,min_params=N ,all"
            )
        if key in kw or (key == "conv" and "conv_method" in kw):
            raise ConfigError(f"--low-rank option '{key}' given twice in '{spec}'")
        text = text.strip()
        try:
            if key in ("energy", "ratio"):
                kw[key] = float(text)
            elif key in ("rank", "min_params"):
                kw[key] = int(text)
            else:
                kw["conv_method"] = text
        except ValueError:
            kind = "a number" if key in ("energy", "ratio") else "an integer"
            raise ConfigError(
                f"--low-rank {key} must be {kind}; got '{text}' in '{spec}'"
            ) from None
    return LowRankConfig(**kw)


def read_report(mod: tvm.IRModule) -> dict:
    """The low-rank report stored on ``mod``'s ``main`` (empty dict when there is none)."""
    attrs = main_function(mod).attrs
    if attrs is None or REPORT_ATTR not in attrs:
        return {}
    return json.loads(str(attrs[REPORT_ATTR]))


def format_report(report: Mapping) -> str:
    """A table a person can read: per layer the chosen rank, parameters and FLOPs saved."""
    header = (
        f"{'layer':<12} {'op':<7} {'weight':<16} {'method':<8} {'rank':>11} "
        f"{'energy':>7} {'params':>17} {'MFLOPs':>17}  note"
    )
    lines = [header]
    for lay in report.get("layers", []):
        rank = lay.get("rank")
        rank_s = "-" if rank is None else "x".join(map(str, np.atleast_1d(rank)))
        full_s = "x".join(map(str, np.atleast_1d(lay["full_rank"])))
        energy = lay.get("energy_kept")
        pa = lay.get("params_after", lay["params_before"])
        fa = lay.get("flops_after", lay["flops_before"])
        note = "" if lay["status"] == "factorized" else f"skipped: {lay['reason']}"
        lines.append(
            f"{lay['layer']:<12} {lay['op']:<7} {'x'.join(map(str, lay['shape'])):<16} "
            f"{lay.get('method', '-'):<8} {rank_s + '/' + full_s:>11} "
            f"{'-' if energy is None else f'{energy:.3f}':>7} "
            f"{lay['params_before']:>8}->{pa:<8} "
            f"{lay['flops_before'] / 1e6:>8.2f}->{fa / 1e6:<8.2f} {note}"
        )
    pb, pa = report.get("params_before", 0), report.get("params_after", 0)
    fb, fa = report.get("flops_before", 0), report.get("flops_after", 0)

    def change(before: int, after: int) -> str:
        return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"

    lines.append(
        f"total: {report.get('factorized', 0)} of {len(report.get('layers', []))} layers "
        f"factorized; parameters {pb} -> {pa} ({change(pb, pa)}), "
        f"FLOPs {fb / 1e6:.2f}M -> {fa / 1e6:.2f}M ({change(fb, fa)})"
        + ("; last factors re-fitted on calibration data" if report.get("recovered") else "")
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Factorizations (numpy; float64 inside, the weight's dtype outside)


def svd_factors(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A`` (m × r), ``B`` (r × n) with ``A B`` the best rank-``r`` approximation of ``w``.

    The singular values are split evenly (``A = U Σ^½``, ``B = Σ^½ Vᵀ``). Also returns all
    singular values of ``w``.
    """
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:r])
    return (u[:, :r] * root).astype(w.dtype), (root[:, None] * vt[:r]).astype(w.dtype), s


def tucker2_singular_values(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the output- and input-channel unfoldings of an OIHW weight."""
    w = w.astype(np.float64)
    s_out = np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)
    s_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(w.shape[1], -1), compute_uv=False)
    return s_out, s_in


def tucker2_factors(
    w: np.ndarray, r_out: int, r_in: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HOSVD Tucker-2 of an OIHW weight: first 1×1 (r_in, I, 1, 1), core (r_out, r_in, kh, kw),
    last 1×1 (O, r_out, 1, 1)."""
    w64 = w.astype(np.float64)
    u_out = np.linalg.svd(w64.reshape(w.shape[0], -1), full_matrices=False)[0][:, :r_out]
    u_in = np.linalg.svd(np.moveaxis(w64, 1, 0).reshape(w.shape[1], -1), full_matrices=False)
    u_in = u_in[0][:, :r_in]
    core = np.einsum("oihw,or,is->rshw", w64, u_out, u_in)
    first = u_in.T[:, :, None, None]
    last = u_out[:, :, None, None]
    return first.astype(w.dtype), core.astype(w.dtype), last.astype(w.dtype)


def spatial_matrix(w: np.ndarray) -> np.ndarray:
    """OIHW weight rearranged as the (I·kh) × (O·kw) matrix whose rank is the separation rank."""
    o, i, kh, kw = w.shape
    return w.transpose(1, 2, 0, 3).reshape(i * kh, o * kw)


def spatial_factors(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jaderberg separation: vertical (r, I, kh, 1), horizontal (O, r, 1, kw), singular values."""
    o, i, kh, kw = w.shape
    a, b, s = svd_factors(spatial_matrix(w), r)  # a: (I·kh, r), b: (r, O·kw)
    vert = a.T.reshape(r, i, kh, 1)
    horiz = b.reshape(r, o, kw).transpose(1, 0, 2)[:, :, None, :]
    return np.ascontiguousarray(vert), np.ascontiguousarray(horiz), s


# --------------------------------------------------------------------------------------------
# Rank choice


def kept_energy(s: np.ndarray, r: int) -> float:
    """Fraction of ``Σ σ²`` kept by the leading ``r`` singular values."""
    e = np.asarray(s, dtype=np.float64) ** 2
    return float(e[:r].sum() / e.sum()) if e.sum() > 0 else 1.0


def choose_rank(s: np.ndarray, cfg: LowRankConfig) -> int:
    """Rank for singular values ``s`` under ``cfg`` (explicit ranks are not rounded)."""
    full = len(s)
    if cfg.rank is not None:
        return cfg.rank
    if cfg.energy is not None:
        e = np.asarray(s, dtype=np.float64) ** 2
        total = e.sum()
        if total <= 0:
            r = 1
        else:
            cum = np.cumsum(e) / total
            r = int(np.searchsorted(cum, cfg.energy - 1e-12)) + 1
    else:
        r = math.ceil(cfg.ratio * full - 1e-9)
    r = max(r, 1)
    r = -(-r // cfg.multiple_of) * cfg.multiple_of
    return min(r, full)


# --------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Plan:
    """One layer's decision: the report entry and, when factorized, how to emit it."""

    entry: dict
    emit: Callable[[relax.BlockBuilder, relax.Expr, str], relax.Expr] | None = None


def _conv(x: relax.Expr, w: np.ndarray, attrs, **over) -> relax.Expr:
    opts = {
        "strides": attrs.strides, "padding": attrs.padding, "dilation": attrs.dilation,
        "groups": 1, "data_layout": "NCHW", "kernel_layout": "OIHW", "out_layout": "NCHW",
        "out_dtype": attrs.out_dtype,
    }  # fmt: skip
    opts.update(over)
    return relax.op.nn.conv2d(x, const(w), **opts)


def _chain(calls: list[Callable[[relax.Expr], relax.Expr]]) -> Callable:
    """Emit ``calls`` in sequence; all but the last get ``<name>_lr<i>`` bindings."""

    def emit(bb: relax.BlockBuilder, x: relax.Expr, name: str) -> relax.Expr:
        for i, call in enumerate(calls[:-1]):
            x = bb.emit(call(x), name_hint=f"{name}_lr{i}")
        return calls[-1](x)

    return emit


def _check_rank(r: int, full: int, name: str, what: str) -> None:
    if r > full:
        raise ConfigError(
            f"low-rank rank {r} is larger than the full rank min(m, n) = {full} of layer "
            f"'{name}' ({what}); choose a smaller rank or raise min_params to skip the layer"
        )


def _plan_matmul(name: str, w: np.ndarray, rows: int, cfg: LowRankConfig) -> _Plan:
    m, n = w.shape
    full = min(m, n)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    r = choose_rank(s, cfg)
    _check_rank(r, full, name, f"weight {m}x{n}")
    entry = {
        "method": "svd", "rank": r, "full_rank": full, "energy_kept": kept_energy(s, r),
        "params_after": r * (m + n), "flops_after": 2 * rows * r * (m + n),
        "weight_rel_error": float(np.sqrt(max(1.0 - kept_energy(s, r), 0.0))),
    }  # fmt: skip
    a, b, _ = svd_factors(w, r)
    calls = [lambda x: relax.op.matmul(x, const(a)), lambda x: relax.op.matmul(x, const(b))]
    return _Plan(entry, _chain(calls))


def _plan_conv(
    name: str, w: np.ndarray, attrs, xshape: tuple, yshape: tuple, cfg: LowRankConfig
) -> _Plan | str:
    o, i, kh, kw = w.shape
    nb, _, h, wd = xshape
    ho, wo = yshape[2], yshape[3]
    if kh == 1 and kw == 1:
        mat = w.reshape(o, i).T  # (I, O): y = x · mat per pixel
        s = np.linalg.svd(mat.astype(np.float64), compute_uv=False)
        r = choose_rank(s, cfg)
        _check_rank(r, min(o, i), name, f"1x1 conv {o}x{i}")
        a, b, _ = svd_factors(mat, r)  # a: (I, r), b: (r, O)
        entry = {
            "method": "svd", "rank": r, "full_rank": min(o, i), "energy_kept": kept_energy(s, r),
            "params_after": r * (i + o), "flops_after": 2 * nb * ho * wo * r * (i + o),
            "weight_rel_error": float(np.sqrt(max(1.0 - kept_energy(s, r), 0.0))),
        }  # fmt: skip
        first, last = a.T[:, :, None, None], b.T[:, :, None, None]
        calls = [
            lambda x: _conv(x, np.ascontiguousarray(first), attrs),
            lambda x: _conv(x, np.ascontiguousarray(last), attrs, strides=[1, 1],
                            padding=[0, 0, 0, 0], dilation=[1, 1]),
        ]  # fmt: skip
        return _Plan(entry, _chain(calls))
    if cfg.conv_method == "tucker2":
        s_out, s_in = tucker2_singular_values(w)
        r_out, r_in = choose_rank(s_out, cfg), choose_rank(s_in, cfg)
        what = f"conv {o}x{i}x{kh}x{kw}, Tucker-2"
        _check_rank(r_out, len(s_out), name, f"{what}, output channels")
        _check_rank(r_in, len(s_in), name, f"{what}, input channels")
        first, core, last = tucker2_factors(w, r_out, r_in)
        approx = np.einsum("rshw,or,si->oihw", core.astype(np.float64),
                           last[:, :, 0, 0].astype(np.float64),
                           first[:, :, 0, 0].astype(np.float64))  # fmt: skip
        err = np.linalg.norm(approx - w) / max(np.linalg.norm(w), 1e-30)
        flops = (
            2 * nb * (r_in * i * h * wd + r_out * r_in * kh * kw * ho * wo + o * r_out * ho * wo)
        )
        entry = {
            "method": "tucker2", "rank": [r_out, r_in], "full_rank": [len(s_out), len(s_in)],
            "energy_kept": min(kept_energy(s_out, r_out), kept_energy(s_in, r_in)),
            "params_after": r_in * i + r_out * r_in * kh * kw + o * r_out, "flops_after": flops,
            "weight_rel_error": float(err),
        }  # fmt: skip
        one = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1]}
        calls = [
            lambda x: _conv(x, first, attrs, **one),
            lambda x: _conv(x, core, attrs),
            lambda x: _conv(x, last, attrs, **one),
        ]
        return _Plan(entry, _chain(calls))
    # spatial
    full = min(i * kh, o * kw)
    s = np.linalg.svd(spatial_matrix(w).astype(np.float64), compute_uv=False)
    r = choose_rank(s, cfg)
    _check_rank(r, full, name, f"conv {o}x{i}x{kh}x{kw} as a {i * kh}x{o * kw} matrix")
    vert, horiz, _ = spatial_factors(w, r)
    sh, sw = (int(v) for v in attrs.strides)
    pt, pl, pb, pr = (int(v) for v in attrs.padding)
    dh, dw = (int(v) for v in attrs.dilation)
    entry = {
        "method": "spatial", "rank": r, "full_rank": full, "energy_kept": kept_energy(s, r),
        "params_after": r * (i * kh + o * kw),
        "flops_after": 2 * nb * (r * i * kh * ho * wd + o * r * kw * ho * wo),
        "weight_rel_error": float(np.sqrt(max(1.0 - kept_energy(s, r), 0.0))),
    }  # fmt: skip
    calls = [
        lambda x: _conv(x, vert, attrs, strides=[sh, 1], padding=[pt, 0, pb, 0],
                        dilation=[dh, 1]),
        lambda x: _conv(x, horiz, attrs, strides=[1, sw], padding=[0, pl, 0, pr],
                        dilation=[1, dw]),
    ]  # fmt: skip
    return _Plan(entry, _chain(calls))


def _const_weight(arg: relax.Expr, producers: dict) -> np.ndarray | None:
    """A constant weight, or the transpose of one (Gemm ``transB=1`` before FoldConstant)."""
    if is_const(arg):
        return const_array(arg)
    value = producers.get(arg) if isinstance(arg, relax.Var) else None
    if op_name(value) == "relax.permute_dims" and is_const(value.args[0]):
        w = const_array(value.args[0])
        axes = value.attrs.axes
        if w.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
            return np.ascontiguousarray(w.T)
    return None


def _plan_layer(binding: relax.VarBinding, cfg: LowRankConfig, producers: dict) -> _Plan | None:
    """The plan of one binding; None when it is not a conv2d / matmul with a constant weight."""
    call, name = binding.value, binding.var.name
    op = op_name(call)
    if op not in ("relax.matmul", "relax.nn.conv2d"):
        return None
    w = _const_weight(call.args[1], producers)
    if w is None:
        return None
    xshape, yshape = static_shape(call.args[0]), static_shape(binding.var)
    kind = "matmul" if op == "relax.matmul" else "conv2d"
    if kind == "matmul":
        if w.ndim != 2 or xshape is None or yshape is None:
            return None
        rows = int(np.prod(xshape[:-1]))
        flops = 2 * rows * w.shape[0] * w.shape[1]
    else:
        if xshape is None or yshape is None or len(xshape) != 4:
            return None
        flops = 2 * int(np.prod(yshape)) * int(np.prod(w.shape[1:]))
    entry = {
        "layer": name,
        "op": kind,
        "shape": list(w.shape),
        "params_before": int(w.size),
        "flops_before": flops,
        "full_rank": min(w.shape[0], int(np.prod(w.shape[1:]))),
    }
    if not np.issubdtype(w.dtype, np.floating):
        return _skip(entry, f"weight dtype {w.dtype}")
    if w.size < cfg.min_params:
        return _skip(entry, f"{w.size} < min_params {cfg.min_params}")
    if kind == "matmul":
        plan = _plan_matmul(name, w, rows, cfg)
    else:
        at = call.attrs
        if int(at.groups) != 1:
            return _skip(entry, f"grouped conv (groups={int(at.groups)})")
        if str(at.data_layout) != "NCHW" or str(at.kernel_layout) != "OIHW":
            return _skip(entry, f"layout {at.data_layout}/{at.kernel_layout}")
        if cfg.conv_method == "none":
            return _skip(entry, "conv_method none")
        plan = _plan_conv(name, w, at, xshape, yshape, cfg)
    entry.update(plan.entry)
    plan.entry = entry
    if cfg.only_if_cheaper and entry["flops_after"] >= entry["flops_before"]:
        return _skip(entry, "not cheaper in FLOPs")
    entry["status"] = "factorized"
    return plan


def _skip(entry: dict, reason: str) -> _Plan:
    for k in ("params_after", "flops_after", "weight_rel_error"):  # rank etc. stay: "would be"
        entry.pop(k, None)
    entry.update(status="skipped", reason=reason)
    return _Plan(entry, None)


# --------------------------------------------------------------------------------------------
# Rewrite


def _rebuild(
    mod: tvm.IRModule, plans: dict[relax.Var, _Plan], rename: dict | None = None
) -> tvm.IRModule:
    """Rebuild ``main`` with each planned binding emitted as its chain of factors, and the
    bindings in ``rename`` (var -> new name) renamed."""
    func = main_function(mod)
    bb = relax.BlockBuilder()
    vmap: dict = {}
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", list(func.params), attrs=attrs, pure=func.is_pure):
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                with bb.dataflow():
                    _emit_block(bb, block, vmap, plans, rename or {}, dataflow=True)
            else:
                _emit_block(bb, block, vmap, plans, rename or {}, dataflow=False)
        bb.emit_func_output(substitute(func.body.body, vmap))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out[out.get_global_var("main")] = bb.get()["main"]
    return out


def _emit_block(
    bb: relax.BlockBuilder,
    block: relax.BindingBlock,
    vmap: dict,
    plans: dict[relax.Var, _Plan],
    rename: dict,
    dataflow: bool,
) -> None:
    for b in block.bindings:
        value = substitute(b.value, vmap)
        name = rename.get(b.var, b.var.name)
        plan = plans.get(b.var)
        if plan is not None and plan.emit is not None:
            value = plan.emit(bb, value.args[0], name)
        if isinstance(b, relax.MatchCast):
            vmap[b.var] = bb.match_cast(value, b.ty, name_hint=name)
        elif dataflow and not isinstance(b.var, relax.DataflowVar):
            vmap[b.var] = bb.emit_output(value, name_hint=name)
        else:
            vmap[b.var] = bb.emit(value, name_hint=name)


def _unique_names(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with repeated binding names of ``main`` made unique (``<name>_d<k>``)."""
    seen: dict[str, int] = {}
    taken = {b.var.name for b in bindings(main_function(mod))}
    rename = {}
    for b in bindings(main_function(mod)):
        k = seen.get(b.var.name, 0)
        seen[b.var.name] = k + 1
        if k:
            new = f"{b.var.name}_d{k}"
            while new in taken:
                k += 1
                new = f"{b.var.name}_d{k}"
            taken.add(new)
            rename[b.var] = new
    return _rebuild(mod, {}, rename) if rename else mod


def _with_report(mod: tvm.IRModule, report: dict) -> tvm.IRModule:
    func = main_function(mod).with_attr(REPORT_ATTR, json.dumps(report))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out[out.get_global_var("main")] = func
    return out


@tvm.transform.module_pass(opt_level=0, name="hwcc.LowRank")
class LowRank:
    """Replace dense / conv weights by low-rank factors (see the module docstring).

    After a run, ``report`` holds the per-layer report (also stored on ``main``).
    """

    def __init__(self, config: LowRankConfig | None = None) -> None:
        if config is not None and not isinstance(config, LowRankConfig):
            raise ConfigError("LowRank needs a LowRankConfig")
        self.config = config or LowRankConfig(energy=0.95)
        self.report: dict = {}

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        cfg = self.config
        func = main_function(mod)
        if cfg.calibration is not None:
            calibration.check_calibration(mod, cfg.calibration)
        if cfg.recover:  # recovery finds layers by binding name
            mod = _unique_names(mod)
            func = main_function(mod)
        producers = {b.var: b.value for b in bindings(func)}
        plans: dict[relax.Var, _Plan] = {}  # keyed by var: binding names need not be unique
        for b in bindings(func):
            if isinstance(b, relax.VarBinding):
                plan = _plan_layer(b, cfg, producers)
                if plan is not None:
                    plans[b.var] = plan
        done = [v.name for v, p in plans.items() if p.emit is not None]
        out = mod
        if done:
            out = _rebuild(mod, plans)
            if any(not is_const(producers[v].args[1]) for v, p in plans.items() if p.emit):
                out = relax.transform.DeadCodeElimination()(out)  # now unused weight transposes
        recovery: dict = {}
        if done and cfg.recover:
            out, recovery = self._recover(mod, out, done)
        layers = [p.entry for p in plans.values()]
        for lay in layers:
            if lay["layer"] in recovery:
                lay["recovery"] = recovery[lay["layer"]]
        report = {
            "energy": cfg.energy, "rank": cfg.rank, "ratio": cfg.ratio,
            "conv_method": cfg.conv_method, "multiple_of": cfg.multiple_of,
            "factorized": len(done), "skipped": len(plans) - len(done),
            "params_before": sum(lay["params_before"] for lay in layers),
            "params_after": sum(lay.get("params_after", lay["params_before"]) for lay in layers),
            "flops_before": sum(lay["flops_before"] for lay in layers),
            "flops_after": sum(lay.get("flops_after", lay["flops_before"]) for lay in layers),
            "recovered": bool(recovery),
            "layers": layers,
        }  # fmt: skip
        logger.info(
            "low rank: %d layers factorized, params %d -> %d, FLOPs %d -> %d", len(done),
            report["params_before"], report["params_after"], report["flops_before"],
            report["flops_after"],
        )  # fmt: skip
        self.report = report
        return _with_report(out, report)

    def _recover(
        self, teacher: tvm.IRModule, student: tvm.IRModule, names: list[str]
    ) -> tuple[tvm.IRModule, dict]:
        """Least-squares re-fit of the last factor of the factorized layers named ``names``."""

        teacher = relax.transform.FoldConstant()(teacher)  # refit wants constant weights

        counts: dict[str, int] = {}
        for mod in (teacher, student):
            for b in bindings(main_function(mod)):
                counts[b.var.name] = counts.get(b.var.name, 0) + 1
        unique = [n for n in names if counts[n] == 2]  # once in teacher, once in student
        if len(unique) < len(names):
            logger.warning(
                "not re-fitting layers whose binding names are not unique: %s",
                sorted(set(names) - set(unique)),
            )
        if not unique:
            return student, {}
        return refit(teacher, student, self.config.calibration, unique, what="low-rank re-fit")

