"""Weight sparsity: magnitude pruning of weights, blocks or N:M groups, and sparse kernels.

Pass ``hwcc.Sparsify``.

Expects: a Relax module whose ``main`` holds layers with constant weights (from
``from_onnx(..., keep_params_in_input=False)``; run :class:`passes.canonicalize.Canonicalize`
first so that Gemm weight transposes are folded into constants and BatchNorm is folded into the
weights that get pruned). Calibration data for ``recover`` in the format of
:mod:`passes.calibration`.

What it does, per layer (``R.matmul`` with a constant 2-D weight, ``R.nn.conv2d`` with a
constant weight, groups 1, NCHW / OIHW), on the layer's weight viewed as an (N, K) matrix of
output × input features (``Wᵀ`` for a matmul, ``W.reshape(O, C·kh·kw)`` for a conv):

1. **Prune** by magnitude: unstructured (block ``1x1`` / ``none``), ``RxC`` blocks (``R``
   consecutive output features × ``C`` consecutive input features, ranked by L2 norm), or
   ``N:M`` (in every group of ``M`` consecutive input features of a row keep the ``N`` largest;
   sparsity ``1 − N/M``). The ratio is the fraction of blocks removed, per layer
   (``scope="per_layer"``) or by one threshold over all layers (``scope="global"``).
2. **Recover** (optional, ``recover=True``): the surviving weights are re-fitted by ridge least
   squares so that, on the calibration data, the layer's output matches the unpruned layer's
   output on the same (original model's) inputs; the pruned weights stay zero. The ridge
   strength is chosen on held-back calibration samples (:mod:`passes._lstsq`); a fit that does
   not lower the held-back error (with one sample: the training error) is dropped.
3. **Choose** sparse or dense for the layer's kernel by the cost model of
   :func:`passes.sparse_kernels.estimate_ms` for the target's vector width (``lanes``), or by
   timing both kernels on this machine (``measure=True``, meaningful when compiling for the
   host). Sparse is chosen only when it is at least ``min_speedup`` times faster, so turning
   sparsity on never makes a layer slower by the estimate; otherwise the layer keeps its dense
   op with the pruned (zeroed) weights.
4. **Rewrite** sparse layers into ``R.call_tir`` of a BSR kernel of
   :mod:`passes.sparse_kernels` (already scheduled; the pattern is a constant of the module):
   matmul → transpose, kernel, transpose back; 1×1 conv → (strided slice), kernel; k×k conv with
   stride 1 → pad, kernel on the flat padded input, slice. A bias add after the layer is kept.

Modes (``mode``): ``ratio`` prunes as above. ``keep`` prunes nothing: the blocks that are
already all zero (models from sparse training, sparse model zoos) make the mask, and steps 3–4
compile the layers where that pays; ``auto`` picks each layer's ratio from the weights (the
largest that keeps ``auto_energy`` of its squared weights, never below the zeros it already
has). In both, a layer whose sparse kernel does not pay is left exactly as it was.

Guarantees: the result is well formed, with the same inputs and outputs; the sparse and dense
forms of a layer compute the same function of the pruned weights (float rounding aside), so the
choice in step 3 never changes accuracy. ``ratio == 0`` leaves the module unchanged. Layers the
pass cannot handle (non-constant weight, grouped conv, a block that does not divide the
weight, non-float32) are left alone and listed with the reason; naming such a layer in
``layer_ratios`` is a :class:`compiler.errors.ConfigError`.

Options: :class:`SparsifyConfig`; :func:`sparsify_config_from_args` builds one from the CLI's
``--sparsity`` / ``--sparse-block``.

Report: ``main`` carries ``"hwcc.sparsify"``, a JSON string (read it with :func:`read_report`):
the options, per layer its op, weight shape, (N, K) matrix, rows ``M``, block, ratio,
density, chosen ``sparse`` / ``dense`` / ``skipped`` and why, the estimated (and, with
``measure``, measured) dense and sparse times, and the recovery entry of
:meth:`passes._lstsq.Fit.report` (errors, samples, rows, ridge and λ, kept or dropped and why);
totals of weights and non-zeros.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from . import _lstsq, calibration
from . import sparse_kernels as sk
from ._ir import bindings, const_array, is_const, main_function, op_name, static_shape, substitute
from .recover import _im2col

logger = logging.getLogger(__name__)

REPORT_ATTR = "hwcc.sparsify"
SCOPES = ("per_layer", "global")
CHOICES = ("auto", "sparse", "dense")
MODES = ("ratio", "keep", "auto")
#: Ratios ``mode="auto"`` tries per layer (besides the layer's own share of zero blocks).
AUTO_RATIOS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975)
_BLOCK_RE = re.compile(r"^(\d+)x(\d+)$")
_NM_RE = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern: ``kind`` ``"block"`` with ``(R, C)`` or ``"nm"`` with (N, M)."""

    kind: str
    shape: tuple[int, int]

    @property
    def block(self) -> tuple[int, int]:
        """The BSR block the kernel uses (N:M patterns are stored element by element)."""
        return self.shape if self.kind == "block" else (1, 1)

    def __str__(self) -> str:
        a, b = self.shape
        return f"{a}:{b}" if self.kind == "nm" else f"{a}x{b}"


def parse_pattern(text: str) -> Pattern:
    """``"1x4"`` / ``"4x1"`` / ``"16x1"`` → blocks, ``"2:4"`` → N:M, ``"none"`` → ``1x1``."""
    s = str(text).strip().lower()
    if s in ("none", "unstructured", ""):
        return Pattern("block", (1, 1))
    m = _BLOCK_RE.match(s)
    if m:
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1:
            raise ConfigError(f"sparse block '{text}' must have sizes >= 1")
        return Pattern("block", (r, c))
    m = _NM_RE.match(s)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n < mm:
            raise ConfigError(f"N:M pattern '{text}' needs 1 <= N < M")
        return Pattern("nm", (n, mm))
    raise ConfigError(
        f"unknown sparse block '{text}'; expected RxC (e.g. 1x4, 4x1, 16x1), N:M (2:4, 1:4) "
        "or 'none'"
    )


@dataclass(frozen=True)
class SparsifyConfig:
    """Options of :class:`Sparsify`.

    Attributes
    ----------
    ratio
        Fraction of weight blocks to remove, in [0, 1]. Default 0 (no-op). For an N:M pattern
        any ratio > 0 selects the layers and the sparsity is ``1 − N/M``.
    block
        ``"none"`` (unstructured, default), ``"RxC"`` (R output × C input features) or
        ``"N:M"``. See :func:`parse_pattern`.
    scope
        ``"per_layer"`` (default): every layer loses ``ratio`` of its blocks; ``"global"``: one
        magnitude threshold over all layers (per-element RMS of each block).
    layer_ratios
        Per-layer ratios (keys: binding names of the matmul / conv2d calls) overriding
        ``ratio``; such layers are pruned per layer. Default empty.
    lanes
        fp32 lanes of the target's vectors (16 AVX-512, 8 AVX2, 4 NEON). Default 8.
    choice
        ``"auto"`` (default): sparse where faster (see ``min_speedup``); ``"sparse"`` /
        ``"dense"``: force the kernel of every handled layer.
    min_speedup
        Estimated (or measured) speed-up a sparse kernel must reach to be chosen. Default 1.25.
    measure
        A timer the caller hands in (a pass never builds or times a kernel itself): called
        with a one-input Relax module, it returns the milliseconds of its ``main`` on the
        target, e.g. :func:`compiler.lower.timing.time_module` for this machine. When given,
        the dense and the sparse kernel of each candidate layer are timed with it instead of
        trusting the cost model. Default None (the cost model decides).
    recover
        Re-fit the surviving weights on ``calibration`` data. Default False.
    calibration
        Calibration inputs (see :mod:`passes.calibration`); required by ``recover``.
    ridge
        Strength of the pull towards the pruned weights in the re-fit, relative to the mean
        diagonal of ``XᵀX``; None (default) chooses it per layer from
        :data:`passes._lstsq.STRENGTHS` by the error on held-back calibration samples (with
        fewer than two samples: :data:`passes._lstsq.DEFAULT_STRENGTH`).
    max_rows
        Calibration rows used per layer by the re-fit (seeded random subset). Default 20000.
    mode
        ``"ratio"`` (default): prune to ``ratio`` / ``layer_ratios``. ``"keep"``: prune nothing;
        the zeros the weights already have (blocks of ``block`` whose weights are all zero)
        are compiled into sparse kernels where that pays, every other layer is left exactly as
        it is (for models from sparse training and sparse model zoos). ``"auto"``: per layer,
        the largest ratio of :data:`AUTO_RATIOS` (or the layer's own share of zero blocks, if
        larger) whose removed blocks hold at most ``1 − auto_energy`` of the layer's squared
        weights, applied only where the sparse kernel then pays (by ``min_speedup``); other
        layers are left exactly as they are. ``ratio``, ``scope`` and ``layer_ratios`` are
        ignored by ``keep`` and ``auto`` (``layer_ratios`` must then be empty).
    auto_energy
        Share of each layer's squared weights that ``mode="auto"`` keeps, in (0, 1]. Default
        0.99 (a relative weight error of at most 10 %).
    """

    ratio: float = 0.0
    block: str = "none"
    scope: str = "per_layer"
    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    lanes: int = 8
    choice: str = "auto"
    min_speedup: float = 1.25
    measure: Callable[[tvm.IRModule], float] | None = field(default=None, compare=False)
    recover: bool = False
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    ridge: float | None = None
    max_rows: int = 20000
    mode: str = "ratio"
    auto_energy: float = 0.99

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        if self.mode not in MODES:
            raise ConfigError(f"unknown sparsity mode '{self.mode}'; known: {', '.join(MODES)}")
        if self.mode != "ratio" and self.layer_ratios:
            raise ConfigError(f"sparsity mode '{self.mode}' chooses every layer itself; "
                              "layer_ratios needs mode 'ratio'")
        e = self.auto_energy
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 < e <= 1.0:
            raise ConfigError(f"SparsifyConfig.auto_energy must be a number in (0, 1]; got {e!r}")
        if not isinstance(self.layer_ratios, Mapping):
            raise ConfigError("SparsifyConfig.layer_ratios must be a mapping name -> ratio")
        for name, r in dict(self.layer_ratios).items():
            _check_ratio(f"layer_ratios['{name}']", r)
        parse_pattern(self.block)
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope '{self.scope}'; known: {', '.join(SCOPES)}")
        if self.choice not in CHOICES:
            raise ConfigError(f"unknown choice '{self.choice}'; known: {', '.join(CHOICES)}")
        for name in ("lanes", "max_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"SparsifyConfig.{name} must be an integer >= 1; got {v!r}")
        for name in ("min_speedup", "ridge"):
            v = getattr(self, name)
            if name == "ridge" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"SparsifyConfig.{name} must be a number >= 0; got {v!r}")
        if not isinstance(self.recover, bool):
            raise ConfigError("SparsifyConfig.recover must be a bool")
        if self.measure is not None and not callable(self.measure):
            raise ConfigError("SparsifyConfig.measure must be a timer (module -> ms) or None")
        if self.recover and self.calibration is None:
            raise ConfigError("SparsifyConfig.recover needs calibration data")

    @property
    def pattern(self) -> Pattern:
        """The parsed ``block``."""
        return parse_pattern(self.block)


def _check_ratio(name: str, r: object) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
        raise ConfigError(f"sparsity {name} must be a number in [0, 1]; got {r!r}")


def sparsify_config_from_args(
    sparsity: float | str,
    block: str,
    calibration: Mapping[str, np.ndarray] | None = None,
    lanes: int = 8,
) -> SparsifyConfig:
    """The config for ``hwcc compile --sparsity S --sparse-block B``.

    Parameters
    ----------
    sparsity
        Fraction of weights (blocks) to remove in every layer, in [0, 1]; or ``"keep"`` (the
        zeros the model has, nothing pruned) or ``"auto"`` (a ratio per layer); see
        :class:`SparsifyConfig`'s ``mode``.
    block
        ``1x4`` / ``4x1`` / ``8x1`` / ``16x1`` / any ``RxC``, ``2:4`` / ``1:4`` / any ``N:M``, or
        ``none`` (unstructured).
    calibration
        Calibration inputs; when given, the surviving weights are re-fitted on them.
    lanes
        fp32 vector lanes of the target (``Capabilities.vector_bits // 32``).
    """
    pattern = parse_pattern(block)
    if isinstance(sparsity, str):
        mode = sparsity.strip().lower()
        if mode not in ("keep", "auto"):
            raise ConfigError(f"sparsity '{sparsity}' must be a ratio in [0, 1], 'keep' or 'auto'")
        return SparsifyConfig(
            block=str(pattern) if pattern.shape != (1, 1) else "none", lanes=lanes, mode=mode,
            recover=calibration is not None and mode == "auto",
            calibration=calibration if mode == "auto" else None,
        )
    if pattern.kind == "nm" and sparsity > 0:
        implied = 1 - pattern.shape[0] / pattern.shape[1]
        if not math.isclose(float(sparsity), implied):
            logger.info(
                "pattern %s fixes the sparsity at %.2f (asked %.2f)", block, implied, sparsity
            )
    return SparsifyConfig(
        ratio=float(sparsity) if not isinstance(sparsity, bool) else sparsity,
        block=str(pattern) if pattern.shape != (1, 1) else "none",
        lanes=lanes,
        recover=calibration is not None,
        calibration=calibration,
    )


def read_report(mod: tvm.IRModule) -> dict:
    """The sparsity report stored on ``mod``'s ``main`` (empty dict when there is none)."""
    attrs = main_function(mod).attrs
    if attrs is None or REPORT_ATTR not in attrs:
        return {}
    return json.loads(str(attrs[REPORT_ATTR]))


# --------------------------------------------------------------------------------------------
# Layers


@dataclass
class _Layer:
    """A weighted layer of ``main`` and how its weight maps to an (N, K) matrix."""

    name: str
    op: str  # "matmul" | "conv2d"
    x: relax.Var
    call: relax.Call
    weight: np.ndarray  # as in the module
    kernel: str | None = None  # "matmul" | "conv1x1" | "conv" | None (no sparse kernel)
    no_kernel: str = ""

    @property
    def matrix(self) -> np.ndarray:
        w = self.weight
        return w.T if self.op == "matmul" else w.reshape(w.shape[0], -1)

    def from_matrix(self, wm: np.ndarray) -> np.ndarray:
        w = wm.T if self.op == "matmul" else wm.reshape(self.weight.shape)
        return np.ascontiguousarray(w.astype(self.weight.dtype))


def _find_layers(mod: tvm.IRModule) -> tuple[list[_Layer], list[dict]]:
    layers, skipped = [], []
    for b in bindings(main_function(mod)):
        name = op_name(b.value)
        if name not in ("relax.matmul", "relax.nn.conv2d"):
            continue
        op = "matmul" if name == "relax.matmul" else "conv2d"
        x, w = b.value.args[0], b.value.args[1]
        entry = {"layer": b.var.name, "op": op, "choice": "skipped"}
        if not is_const(w):
            skipped.append({**entry, "reason": "weight is not a constant (dynamic weights)"})
            continue
        arr = const_array(w)
        xs = static_shape(x)
        if arr.dtype != np.float32 or not isinstance(x, relax.Var) or xs is None:
            why = f"dtype {arr.dtype}" if arr.dtype != np.float32 else "input shape not static"
            skipped.append({**entry, "weight_shape": list(arr.shape), "reason": why})
            continue
        layer = _Layer(b.var.name, op, x, b.value, arr)
        if op == "matmul":
            if arr.ndim != 2 or len(xs) < 1:
                skipped.append(
                    {
                        **entry,
                        "weight_shape": list(arr.shape),
                        "reason": "matmul weight is not a 2-D matrix",
                    }
                )
                continue
            layer.kernel = "matmul"
        else:
            at = b.value.attrs
            if int(at.groups) != 1:
                skipped.append(
                    {
                        **entry,
                        "weight_shape": list(arr.shape),
                        "reason": f"grouped conv (groups={int(at.groups)})",
                    }
                )
                continue
            layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
            if layouts != ("NCHW", "OIHW", "NCHW"):
                skipped.append(
                    {
                        **entry,
                        "weight_shape": list(arr.shape),
                        "reason": f"layout {'/'.join(layouts)}",
                    }
                )
                continue
            layer.kernel, layer.no_kernel = _conv_kernel(at, arr.shape)
        layers.append(layer)
    return layers, skipped


def _conv_kernel(at: object, wshape: tuple) -> tuple[str | None, str]:
    strides = [int(s) for s in at.strides]
    pads = [int(p) for p in at.padding]
    dil = [int(d) for d in at.dilation]
    kh, kw = wshape[2], wshape[3]
    if (kh, kw) == (1, 1) and not any(pads) and dil == [1, 1]:
        return "conv1x1", ""
    if strides == [1, 1]:
        return "conv", ""
    return None, f"no sparse kernel for a strided {kh}x{kw} conv (stride {strides})"


def _rows(layer: _Layer) -> tuple[int, int, int]:
    """(batch B, positions per batch item M, layout elements copied around the kernel)."""
    xs = static_shape(layer.x)
    n, k = layer.matrix.shape
    if layer.kernel == "matmul":
        m = math.prod(xs[:-1])
        return 1, m, m * (k + n)
    bsz, c, h, w = xs
    at = layer.call.attrs
    pt, pl, pb, pr = (int(p) for p in at.padding)
    sh, sw = (int(s) for s in at.strides)
    if layer.kernel == "conv1x1":
        ho, wo = -(-h // sh), -(-w // sw)
        return bsz, ho * wo, (bsz * c * ho * wo if (sh, sw) != (1, 1) else 0)
    d = int(at.dilation[0]), int(at.dilation[1])
    hp, wp = h + pt + pb, w + pl + pr
    ho = hp - (layer.weight.shape[2] - 1) * d[0]
    wo = wp - (layer.weight.shape[3] - 1) * d[1]
    return bsz, ho * wp, bsz * c * hp * wp + bsz * n * ho * wo


# --------------------------------------------------------------------------------------------
# Masks


def _block_scores(wm: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Per-element RMS of every (R, C) block of ``wm``: shape (N / R, K / C)."""
    r, c = block
    n, k = wm.shape
    sq = (wm.astype(np.float64) ** 2).reshape(n // r, r, k // c, c).sum(axis=(1, 3))
    return np.sqrt(sq / (r * c))


def _expand(mask: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    return np.kron(mask, np.ones(block, dtype=bool)).astype(bool)


def _block_mask(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Keep-mask removing the ``floor(ratio · size)`` lowest scores (ties: first ones)."""
    n_remove = math.floor(ratio * scores.size + 1e-9)
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores.reshape(-1), kind="stable")[:n_remove]] = False
    return keep.reshape(scores.shape)


def _nm_mask(wm: np.ndarray, n_keep: int, m: int) -> np.ndarray:
    rows, k = wm.shape
    groups = np.abs(wm).reshape(rows, k // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n_keep], True, axis=2)
    return keep.reshape(rows, k)


def _divides(layer: _Layer, pattern: Pattern) -> str:
    n, k = layer.matrix.shape
    if pattern.kind == "nm":
        m = pattern.shape[1]
        return "" if k % m == 0 else f"{pattern} needs input features ({k}) divisible by {m}"
    r, c = pattern.shape
    if n % r or k % c:
        return f"block {pattern} does not divide the weight matrix (N, K) = ({n}, {k})"
    return ""


def _masks(layers: list[_Layer], ratios: dict[str, float], cfg: SparsifyConfig) -> dict:
    """Layer name -> keep mask of its (N, K) matrix."""
    pattern = cfg.pattern
    masks: dict[str, np.ndarray] = {}
    if pattern.kind == "nm":
        for layer in layers:
            if ratios[layer.name] > 0:
                masks[layer.name] = _nm_mask(layer.matrix, *pattern.shape)
        return masks
    scores = {lay.name: _block_scores(lay.matrix, pattern.shape) for lay in layers}
    glob = [lay for lay in layers if cfg.scope == "global" and lay.name not in cfg.layer_ratios]
    for layer in layers:
        if layer not in glob and ratios[layer.name] > 0:
            masks[layer.name] = _expand(
                _block_mask(scores[layer.name], ratios[layer.name]), pattern.shape
            )
    if glob and cfg.ratio > 0:
        allv = np.concatenate([scores[lay.name].reshape(-1) for lay in glob])
        n_remove = math.floor(cfg.ratio * allv.size + 1e-9)
        order = np.argsort(allv, kind="stable")
        keep = np.ones(allv.size, dtype=bool)
        keep[order[:n_remove]] = False
        at = 0
        for layer in glob:
            s = scores[layer.name]
            masks[layer.name] = _expand(keep[at : at + s.size].reshape(s.shape), pattern.shape)
            at += s.size
    return masks


def _mode_masks(
    layers: list[_Layer], cfg: SparsifyConfig
) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, dict]]:
    """Keep masks for ``mode`` ``keep`` / ``auto``: (name -> mask, name -> report fields,
    name -> report entry of a layer left exactly as it is).

    ``keep``: the blocks that hold a non-zero weight. ``auto``: the largest candidate ratio
    whose removed blocks hold at most ``1 − auto_energy`` of the layer's squared weights (the
    layer's own zero blocks always qualify). Without a timer, a layer whose sparse kernel would
    not pay by the cost model is left alone here; with one, :meth:`Sparsify._decide` times it.
    """
    pattern = cfg.pattern
    block = pattern.block
    budget = 1.0 - cfg.auto_energy + 1e-12
    masks: dict[str, np.ndarray] = {}
    notes: dict[str, dict] = {}
    left: dict[str, dict] = {}
    for layer in layers:
        wm = layer.matrix
        n, k = wm.shape
        scores = _block_scores(wm, block)
        zero_share = float(np.mean(scores == 0))
        info: dict = {"mode": cfg.mode, "existing_zero_blocks": round(zero_share, 6)}
        entry = {
            "layer": layer.name, "op": layer.op, "weight_shape": list(layer.weight.shape),
            "matrix": [n, k], "block": str(pattern) if pattern.shape != (1, 1) else "none",
            "choice": "dense", **info,
        }  # fmt: skip
        if layer.kernel is None:
            left[layer.name] = {**entry, "reason": f"{layer.no_kernel}; layer left as it is"}
            continue
        energy = scores.reshape(-1) ** 2
        total = float(energy.sum())
        if total == 0.0:
            left[layer.name] = {**entry, "reason": "all weights are zero; layer left as it is"}
            continue
        if cfg.mode == "keep":
            keep = scores > 0
            if keep.all():
                left[layer.name] = {
                    **entry, "reason": f"no all-zero {entry['block']} blocks; layer left as it is",
                }  # fmt: skip
                continue
            mask = _expand(keep, block)
        elif pattern.kind == "nm":
            mask = _nm_mask(wm, *pattern.shape) & (wm != 0)
            removed = float((wm[~mask].astype(np.float64) ** 2).sum()) / float(
                (wm.astype(np.float64) ** 2).sum()
            )
            if removed > budget:
                left[layer.name] = {
                    **entry, "reason": f"{pattern} would remove {removed:.2%} of the squared "
                    f"weights (> {1 - cfg.auto_energy:.2%}); layer left as it is",
                }  # fmt: skip
                continue
            info.update(ratio=round(1 - float(mask.mean()), 6), kept_energy=round(1 - removed, 6))
        else:
            order = np.argsort(energy, kind="stable")
            share = np.cumsum(energy[order]) / total
            n_remove = int(np.count_nonzero(scores == 0))
            for r in AUTO_RATIOS:
                cut = math.floor(r * energy.size + 1e-9)
                if cut > n_remove and share[cut - 1] <= budget:
                    n_remove = cut
            if n_remove == 0:
                left[layer.name] = {
                    **entry, "reason": f"removing {AUTO_RATIOS[0]:.0%} of the blocks would "
                    f"remove {share[math.floor(AUTO_RATIOS[0] * energy.size) - 1]:.2%} of the "
                    f"squared weights (> {1 - cfg.auto_energy:.2%}); layer left as it is",
                }  # fmt: skip
                continue
            keep = np.ones(energy.size, dtype=bool)
            keep[order[:n_remove]] = False
            mask = _expand(keep.reshape(scores.shape), block)
            info.update(
                ratio=round(n_remove / energy.size, 6),
                kept_energy=round(1.0 - float(share[n_remove - 1]), 6),
            )
        if cfg.measure is None and cfg.choice == "auto":
            bsz, m, copies = _rows(layer)
            nnz = int(np.count_nonzero(_block_scores(mask.astype(np.float32), block)))
            d_ms, s_ms = sk.estimate_ms(
                bsz * m, n, k, nnz, block, cfg.lanes, copy_elems=copies, batch=bsz
            )
            if s_ms * cfg.min_speedup > d_ms:
                left[layer.name] = {
                    **entry, **info, "est_dense_ms": round(d_ms, 4),
                    "est_sparse_ms": round(s_ms, 4),
                    "reason": f"estimated sparse {s_ms:.3g} ms vs dense {d_ms:.3g} ms: speed-up "
                    f"{d_ms / s_ms:.2f}x < {cfg.min_speedup}; layer left as it is",
                }  # fmt: skip
                continue
        masks[layer.name] = mask
        notes[layer.name] = info
    return masks, notes, left


# --------------------------------------------------------------------------------------------
# Recovery


def _recover(
    mod: tvm.IRModule,
    layers: list[_Layer],
    pruned: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    cfg: SparsifyConfig,
) -> dict[str, dict]:
    """Re-fit the surviving weights of ``pruned`` (name -> (N, K) matrix) in place.

    Layers are fitted in graph order; each sees its inputs in the model pruned (and re-fitted)
    so far (``X_s``) and is fitted to the original layer's output on the original inputs
    (``X_t · Wd``), so later layers also correct the errors of earlier ones. Each fit is a
    ridge of :mod:`passes._lstsq` (strength ``cfg.ridge``, or chosen on held-back samples);
    a fit that does not lower the held-back (or, with too few samples, the training) error is
    dropped and the layer keeps its pruned weights. Returns the per-layer report entries.
    """

    todo = [lay for lay in layers if lay.name in pruned]
    names = list(dict.fromkeys(lay.x.name for lay in todo))
    teacher = calibration.capture(mod, cfg.calibration, names)
    samples = teacher.outputs[0].shape[0]
    stats = {}
    for i, layer in enumerate(todo):
        if i == 0:
            student = teacher
        else:
            done = {lay.name: lay.from_matrix(pruned[lay.name]) for lay in todo[:i]}
            student = calibration.capture(
                _rebuild(mod, done, {}, cfg.lanes), cfg.calibration, [layer.x.name]
            )
        cols = []
        for cap in (student, teacher):
            x = cap[layer.x.name].astype(np.float64)
            if layer.op == "matmul":
                cols.append(x.reshape(-1, x.shape[-1]))
            else:
                cols.append(_im2col(x.reshape(-1, *x.shape[-3:]), layer.call, layer.weight.shape))
        xs, xt = cols
        ids = _lstsq.sample_ids(samples, xs.shape[0])
        if xs.shape[0] > cfg.max_rows:
            rows = np.sort(np.random.default_rng(0).choice(xs.shape[0], cfg.max_rows, False))
            xs, xt, ids = xs[rows], xt[rows], ids[rows]
        wd = layer.matrix.astype(np.float64)
        fold = _lstsq.folds(ids, samples)
        parts = [[_normal(xs, xt, wd)]] if fold is None else [
            [_normal(xs[fold == f], xt[fold == f], wd)] for f in range(int(fold.max()) + 1)
        ]  # fmt: skip
        fitted = _lstsq.fit(  # with a mask: one held-back fold (a solve per support is costly)
            parts, [pruned[layer.name].T], samples=samples, strength=cfg.ridge,
            masks=[masks[layer.name].T],
        )  # fmt: skip
        if fitted.kept:
            pruned[layer.name] = (fitted.weights[0].T * masks[layer.name]).astype(np.float32)
        stats[layer.name] = fitted.report()
        logger.info(
            "sparse re-fit of '%s': relative error %.4g -> %.4g (%s)", layer.name,
            fitted.error_before, fitted.error_after, fitted.reason,
        )  # fmt: skip
    _lstsq.warn_if_unreliable(logger, "sparse re-fit", stats)
    return stats


def _normal(xs: np.ndarray, xt: np.ndarray, wd: np.ndarray) -> _lstsq.Normal:
    """Normal equations of ``X_s W ≈ X_t wdᵀ`` without forming the target."""
    gt = xt.T @ xt
    yy = float(np.einsum("ij,jk,ik->", wd, gt, wd))
    return _lstsq.Normal(xs.T @ xs, (xs.T @ xt) @ wd.T, yy, xs.shape[0])


# --------------------------------------------------------------------------------------------
# Rewrite


def _emit_sparse(
    bb: relax.BlockBuilder, layer: _Layer, x: relax.Expr, bsr: sk.BSR, lanes: int
) -> relax.Expr:
    """Emit the sparse form of ``layer`` on ``x``; return its last expression (not emitted)."""
    op = relax.op
    xs = static_shape(layer.x)
    n, k = bsr.shape
    regs = 32 if lanes >= 16 else 16
    pre = f"{layer.name}_sp"
    if layer.kernel == "matmul":
        m = math.prod(xs[:-1])
        x2 = bb.emit(op.reshape(x, (m, k)), name_hint=f"{pre}_x") if len(xs) != 2 else x
        xt = bb.emit(op.permute_dims(x2, [1, 0]), name_hint=f"{pre}_xt")
        xf = bb.emit(op.reshape(xt, (1, k * m)), name_hint=f"{pre}_xf")
        yt = bb.emit(sk.emit_bsr_call(bb, xf, bsr, np.arange(k) * m, m, lanes, regs), pre)
        y2 = bb.emit(op.reshape(yt, (n, m)), name_hint=f"{pre}_yt")
        y = op.permute_dims(y2, [1, 0])
        if len(xs) != 2:
            y = op.reshape(bb.emit(y, name_hint=f"{pre}_y"), (*xs[:-1], n))
        return y
    bsz, c, h, w = xs
    at = layer.call.attrs
    if layer.kernel == "conv1x1":
        sh, sw = (int(s) for s in at.strides)
        if (sh, sw) != (1, 1):
            x = bb.emit(op.strided_slice(x, [2, 3], [0, 0], [h, w], [sh, sw]), f"{pre}_xs")
            h, w = -(-h // sh), -(-w // sw)
        xf = bb.emit(op.reshape(x, (bsz, c * h * w)), name_hint=f"{pre}_xf")
        y = bb.emit(sk.emit_bsr_call(bb, xf, bsr, np.arange(c) * (h * w), h * w, lanes, regs), pre)
        return op.reshape(y, (bsz, n, h, w))
    pt, pl, pb, pr = (int(p) for p in at.padding)
    dh, dw = (int(d) for d in at.dilation)
    kh, kw = layer.weight.shape[2], layer.weight.shape[3]
    if any((pt, pl, pb, pr)):
        x = bb.emit(op.nn.pad(x, [0, 0, 0, 0, pt, pb, pl, pr]), name_hint=f"{pre}_pad")
    hp, wp = h + pt + pb, w + pl + pr
    ho, wo = hp - (kh - 1) * dh, wp - (kw - 1) * dw
    xf = bb.emit(op.reshape(x, (bsz, c * hp * wp)), name_hint=f"{pre}_xf")
    extra = (kw - 1) * dw
    if extra:
        xf = bb.emit(op.nn.pad(xf, [0, 0, 0, extra]), name_hint=f"{pre}_xfp")
    ci, ii, jj = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    koff = (ci * hp * wp + ii * dh * wp + jj * dw).reshape(-1)
    y = bb.emit(sk.emit_bsr_call(bb, xf, bsr, koff, ho * wp, lanes, regs), pre)
    y = bb.emit(op.reshape(y, (bsz, n, ho, wp)), name_hint=f"{pre}_y")
    return op.strided_slice(y, [3], [0], [wo])


def _rebuild(
    mod: tvm.IRModule,
    dense: dict[str, np.ndarray],
    sparse: dict[str, tuple[_Layer, sk.BSR]],
    lanes: int,
) -> tvm.IRModule:
    """``main`` with pruned dense weights and sparse layers; binding names are kept."""
    func = main_function(mod)
    others = {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}
    bb = relax.BlockBuilder(tvm.IRModule(others, attrs=mod.attrs))
    attrs = dict(func.attrs) if func.attrs is not None else None
    vmap: dict = {}
    with bb.function("main", list(func.params), attrs=attrs, pure=func.is_pure):
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                with bb.dataflow():
                    _emit_bindings(bb, block, vmap, dense, sparse, lanes, dataflow=True)
            else:
                _emit_bindings(bb, block, vmap, dense, sparse, lanes, dataflow=False)
        bb.emit_func_output(substitute(func.body.body, vmap))
    return bb.get()


def _emit_bindings(
    bb: relax.BlockBuilder,
    block: relax.BindingBlock,
    vmap: dict,
    dense: dict[str, np.ndarray],
    sparse: dict[str, tuple[_Layer, sk.BSR]],
    lanes: int,
    dataflow: bool,
) -> None:
    for b in block.bindings:
        name = b.var.name
        value = substitute(b.value, vmap)
        if name in sparse:
            layer, bsr = sparse[name]
            value = _emit_sparse(bb, layer, value.args[0], bsr, lanes)
        elif name in dense:
            args = list(value.args)
            args[1] = relax.const(dense[name])
            value = relax.Call(value.op, args, value.attrs, value.ty_args)
        if isinstance(b, relax.MatchCast):
            vmap[b.var] = bb.match_cast(value, b.ty, name_hint=name)
        elif dataflow and not isinstance(b.var, relax.DataflowVar):
            vmap[b.var] = bb.emit_output(value, name_hint=name)
        else:
            vmap[b.var] = bb.emit(value, name_hint=name)


def _layer_module(
    layer: _Layer, emit: Callable[[relax.BlockBuilder, relax.Var], relax.Expr]
) -> tvm.IRModule:
    """A module whose ``main`` runs one layer (for measuring)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", layer.x.ty)
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _measure(layer: _Layer, wm: np.ndarray, bsr: sk.BSR, lanes: int,
             timer: Callable[[tvm.IRModule], float]) -> tuple[float, float]:
    """Milliseconds of the dense and the sparse form of ``layer``, by the caller's ``timer``."""
    w = relax.const(layer.from_matrix(wm))

    def dense(bb: relax.BlockBuilder, x: relax.Var) -> relax.Expr:
        return relax.Call(layer.call.op, [x, w], layer.call.attrs, layer.call.ty_args)

    def sparse(bb: relax.BlockBuilder, x: relax.Var) -> relax.Expr:
        return _emit_sparse(bb, layer, x, bsr, lanes)

    return (
        timer(_layer_module(layer, dense)),
        timer(_layer_module(layer, sparse)),
    )


# --------------------------------------------------------------------------------------------
# The pass


@tvm.transform.module_pass(opt_level=0, name="hwcc.Sparsify")
class Sparsify:
    """Prune weights (unstructured, blocks, N:M) and rewrite layers to sparse kernels where
    that is faster.

    See the module docstring for what it expects, guarantees, its options and its report.
    """

    def __init__(self, config: SparsifyConfig | None = None) -> None:
        self.config = config or SparsifyConfig()

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        cfg = self.config
        pattern = cfg.pattern
        layers, skipped = _find_layers(mod)
        by_name = {lay.name: lay for lay in layers}
        skipped_names = {s["layer"]: s["reason"] for s in skipped}
        for name in cfg.layer_ratios:
            if name in skipped_names:
                raise ConfigError(
                    f"layer_ratios names layer '{name}', which cannot be "
                    f"sparsified: {skipped_names[name]}"
                )
            if name not in by_name:
                raise ConfigError(
                    f"layer_ratios names unknown layer '{name}'; layers: {sorted(by_name)}"
                )
        ratios = {lay.name: float(cfg.layer_ratios.get(lay.name, cfg.ratio)) for lay in layers}
        usable = []
        for layer in layers:
            why = _divides(layer, pattern)
            if why and layer.name in cfg.layer_ratios and ratios[layer.name] > 0:
                raise ConfigError(f"layer '{layer.name}': {why}")
            if why:
                if ratios[layer.name] > 0 or cfg.mode != "ratio":
                    skipped.append(
                        {
                            "layer": layer.name,
                            "op": layer.op,
                            "choice": "skipped",
                            "weight_shape": list(layer.weight.shape),
                            "reason": why,
                        }
                    )
                continue
            usable.append(layer)
        if cfg.mode == "ratio":
            masks, notes, left_alone = _masks(usable, ratios, cfg), {}, {}
        else:
            masks, notes, left_alone = _mode_masks(usable, cfg)
        pruned = {name: by_name[name].matrix * m for name, m in masks.items()}
        rec_stats = _recover(mod, usable, pruned, masks, cfg) if cfg.recover and pruned else {}
        entries, dense_w, sparse_w = [], {}, {}
        for layer in usable:
            if layer.name in left_alone:
                entries.append(left_alone[layer.name])
            if layer.name not in pruned:
                continue
            entry, use_sparse, bsr = self._decide(layer, pruned[layer.name], pattern)
            entry["ratio"] = notes.get(layer.name, {}).get("ratio", ratios[layer.name])
            entry.update(notes.get(layer.name, {}))
            if layer.name in rec_stats:
                entry["recover"] = rec_stats[layer.name]
            entries.append(entry)
            if use_sparse:
                sparse_w[layer.name] = (layer, bsr)
            elif cfg.mode == "ratio":
                dense_w[layer.name] = layer.from_matrix(pruned[layer.name])
            else:  # keep / auto prune only for a sparse kernel: the layer stays as it was
                del pruned[layer.name]
                entry["reason"] += "; layer left as it is"
        total = sum(int(lay.weight.size) for lay in layers)
        nonzero = sum(int(np.count_nonzero(lay.weight)) for lay in layers if lay.name not in pruned)
        nonzero += sum(int(np.count_nonzero(w)) for w in pruned.values())
        report = {
            "mode": cfg.mode,
            "block": str(pattern) if pattern.shape != (1, 1) else "none",
            "ratio": cfg.ratio if cfg.mode == "ratio" else cfg.mode,
            "scope": cfg.scope if cfg.mode == "ratio" else "per_layer",
            "lanes": cfg.lanes,
            "decided_by": "measure" if cfg.measure is not None else "cost model",
            "min_speedup": cfg.min_speedup,
            "layers": entries + skipped,
            "sparse_layers": sorted(sparse_w),
            "weights": total,
            "nonzero_weights": nonzero,
        }
        out = _rebuild(mod, dense_w, sparse_w, cfg.lanes) if pruned else mod
        logger.info(
            "sparsify: %d sparse, %d dense-pruned, %d skipped layers",
            len(sparse_w),
            len(dense_w),
            len(skipped),
        )
        func = main_function(out).with_attr(REPORT_ATTR, json.dumps(report))
        out = tvm.IRModule(dict(out.functions_items()), attrs=out.attrs)
        out[out.get_global_var("main")] = func
        return out

    def _decide(
        self, layer: _Layer, wm: np.ndarray, pattern: Pattern
    ) -> tuple[dict, bool, sk.BSR | None]:
        cfg = self.config
        n, k = wm.shape
        entry = {
            "layer": layer.name,
            "op": layer.op,
            "weight_shape": list(layer.weight.shape),
            "matrix": [n, k],
            "block": str(pattern) if pattern.shape != (1, 1) else "none",
        }
        bsr = sk.to_bsr(wm.astype(np.float32), pattern.block)
        entry["density"] = round(float(np.count_nonzero(wm)) / max(wm.size, 1), 6)
        entry["nnz_blocks"] = bsr.nnz_blocks
        if layer.kernel is None:
            entry.update(choice="dense", reason=layer.no_kernel + "; pruned weights kept dense")
            return entry, False, None
        bsz, m, copies = _rows(layer)
        entry["rows"] = bsz * m
        dense_ms, sparse_ms = sk.estimate_ms(
            bsz * m, n, k, bsr.nnz_blocks, pattern.block, cfg.lanes, copy_elems=copies, batch=bsz
        )
        entry["est_dense_ms"] = round(dense_ms, 4)
        entry["est_sparse_ms"] = round(sparse_ms, 4)
        basis, d_ms, s_ms = "estimated", dense_ms, sparse_ms
        if cfg.measure is not None and cfg.choice == "auto":
            d_ms, s_ms = _measure(layer, wm, bsr, cfg.lanes, cfg.measure)
            entry["measured_dense_ms"] = round(d_ms, 4)
            entry["measured_sparse_ms"] = round(s_ms, 4)
            basis = "measured"
        speedup = d_ms / s_ms if s_ms > 0 else math.inf
        entry["speedup"] = round(speedup, 3)
        if cfg.choice != "auto":
            use = cfg.choice == "sparse"
            entry.update(choice=cfg.choice, reason=f"forced by choice='{cfg.choice}'")
        else:
            use = speedup >= cfg.min_speedup
            verdict = ">=" if use else "<"
            entry.update(
                choice="sparse" if use else "dense",
                reason=f"{basis} sparse {s_ms:.3g} ms vs dense {d_ms:.3g} ms: speed-up "
                f"{speedup:.2f}x {verdict} {cfg.min_speedup}",
            )
        return entry, use, bsr

