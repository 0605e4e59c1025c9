"""Quantize conv2d / matmul layers to integer kernels (static int8, dynamic int8, fp16, QDQ).

Pass ``hwcc.Quantize`` follows PyTorch's PT2E flow: **calibrate** (observers over calibration
samples), **annotate** (which layers, which scheme), **convert** (rewrite to integer ops).

Modes (:attr:`QuantizeConfig.mode`)
-----------------------------------
``"int8"`` (static post-training quantization)
    Every ``R.nn.conv2d`` (NCHW/OIHW, any groups) and ``R.matmul`` whose weight is a constant
    becomes ``conv2d/matmul(q_x, w_q, out_dtype="int32")``: activations per tensor (``uint8``
    asymmetric for x86's u8×s8 ``vpdpbusd``/``vpmaddubsw``, ``int8`` symmetric for ARM's
    ``sdot``), weights symmetric int8 per output channel, int32 accumulation. The activation
    zero point is corrected exactly with a per-channel int32 term ``zp_x * sum(w)`` folded with the
    bias (``round(b / (s_x s_w))``) into one int32 constant; conv padding is made explicit with
    the zero point as pad value so the correction holds at the borders.
    *Staying integer*: the chain ``layer → bias add → ReLU/Clip`` whose result only feeds
    other quantized layers (or max-pools) is requantized straight to the next layer's uint8 input
    (ReLU/Clip become the clamp bounds of the requantization), and max-pooling runs on the
    integer tensor. Requantization uses a float multiplier (``requantize="float"``) or an
    integer-only fixed-point multiplier and rounding right shift in int64
    (``requantize="fixed_point"``, what integer-only hardware does). Everything else (residual
    adds, softmax, layer norm) stays float between a dequantize and the next quantize, which
    fuse into the neighbouring kernels.
``"int8-dynamic"``
    ``R.matmul`` with a constant weight only; the activation's range is computed at run time
    (min/max of the tensor, uint8 asymmetric), weights as above. No calibration data needed.
``"fp16"``
    Constant conv2d/matmul weights stored in float16, inputs cast to float16, accumulation in
    float32 (``out_dtype``), outputs float32.
``"qdq"``
    For models already quantized (ONNX QDQ from ``onnxruntime.quantization.quantize_static``,
    or QOperator models rewritten to QDQ before import): every
    ``conv2d/matmul(dequantize(x_q), dequantize(w_q))`` becomes an integer conv/matmul on
    ``x_q`` and ``w_q`` with the model's own scales and zero points. Run it *before*
    ``canonicalize`` (constant folding would turn ``dequantize(w_q)`` into float weights).

Expects: a Relax module with ``main`` and weights bound as constants; for ``int8`` /
``int8-dynamic`` / ``fp16``, BatchNorm already folded (run ``canonicalize`` first); for
``int8`` calibration data matching ``main``'s inputs (:func:`passes.calibration.check_calibration`).

Guarantees: every quantized layer computes on integer data with int32 accumulation (fp16 mode:
float16 operands); the module computes the float model's function up to quantization error
(measured and reported on the calibration data); binding names of untouched layers are kept.

Options: see :class:`QuantizeConfig`.

Report (``report`` attribute after the pass ran): mode, scheme, method, number of quantized
layers per kind, skipped layers with the reason, and (``measure=True``, static mode) the
agreement with the float model on the calibration data: max/mean absolute error, relative
error and top-1 agreement of the first output. ``speed`` says whether the quantized or the
float model was kept and why (never slower than float, see ``keep_float_if_slower``):
``kept``, ``decided_by`` (measured / cost model / user), the two times when measured, and a
``reason`` when float was kept (its layers then read 0, the quantized ones are under
``discarded_layers``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from . import calibration
from ._ir import bindings, const_array, is_const, main_function, op_name, static_shape, substitute
from .canonicalize import batch_norm_count

logger = logging.getLogger(__name__)

MODES = ("int8", "int8-dynamic", "fp16", "qdq")
METHODS = ("minmax", "percentile", "entropy")
ACT_DTYPES = ("uint8", "int8")
REQUANTIZE = ("float", "fixed_point")

_CONV = "relax.nn.conv2d"


def const(arr: np.ndarray) -> relax.Expr:
    """A Relax constant of ``arr`` with its dtype kept (``relax.const`` narrows int64)."""
    arr = np.ascontiguousarray(arr)
    return relax.const(arr, str(arr.dtype))
_MATMUL = "relax.matmul"
_CLAMPS = ("relax.nn.relu", "relax.maximum", "relax.minimum", "relax.clip")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizeConfig:
    """Options of :class:`Quantize`.

    Attributes
    ----------
    mode
        ``"int8"`` (static, default), ``"int8-dynamic"``, ``"fp16"`` or ``"qdq"``.
    calibration
        Static mode: input name → array with a leading sample axis. Required for ``"int8"``.
    method
        Activation range observer: ``"minmax"`` (default), ``"percentile"`` or ``"entropy"``
        (KL divergence between the float histogram and its quantized version, TensorRT-style).
    percentile
        Percentile for ``method="percentile"``, in (50, 100]. Default 99.99.
    activation_dtype
        ``"uint8"`` (default; u8×s8, x86 VNNI/AVX2) or ``"int8"`` (s8×s8, ARM ``sdot``).
    weight_bits
        8 (default) or 7: 7-bit weights (-63..63) keep AVX2's ``vpmaddubsw`` from saturating
        (ONNX Runtime's ``reduce_range``).
    requantize
        ``"float"`` (default; float multiplier, fine on CPUs) or ``"fixed_point"`` (int32
        multiplier and right shift, integer-only).
    exclude
        Binding names of layers to leave in float.
    skip_grouped
        Leave grouped and depthwise convolutions in float (default False). Hardware-aware: set
        for targets without an integer depthwise kernel, where int8 would be slower.
    measure
        Static mode: run the float and the quantized model on the calibration data and report
        their agreement (one extra compilation). Default True.
    keep_float_if_slower
        Never return a model slower than the float one (default True): with ``timer``, both
        are timed and the faster kept; without, the target's cost model decides
        (``int8_dot``: a target without an integer dot-product instruction keeps int8 modes
        in float). False: always the quantized model (``hwcc compile --quantize-always``).
    timer
        ``module -> milliseconds`` on the target (e.g. :func:`compiler.lower.timing.time_module`
        for a target this machine runs), or None: the cost model decides.
    int8_dot
        Whether the target has an integer dot-product instruction hwcc's int8 kernels use
        (``Capabilities.int8_dot`` non-empty), or None when unknown (no cost-model decision).
    """

    mode: str = "int8"
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    method: str = "minmax"
    percentile: float = 99.99
    activation_dtype: str = "uint8"
    weight_bits: int = 8
    requantize: str = "float"
    exclude: tuple[str, ...] = ()
    skip_grouped: bool = False
    measure: bool = True
    keep_float_if_slower: bool = True
    timer: Callable[[tvm.IRModule], float] | None = field(default=None, compare=False)
    int8_dot: bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"quantize mode must be one of {list(MODES)}; got '{self.mode}'")
        if self.method not in METHODS:
            raise ConfigError(
                f"calibration method must be one of {list(METHODS)}; got '{self.method}'"
            )
        if not isinstance(self.percentile, (int, float)) or not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must lie in (50, 100]; got {self.percentile!r}")
        if self.activation_dtype not in ACT_DTYPES:
            raise ConfigError(
                f"activation_dtype must be one of {list(ACT_DTYPES)}; "
                f"got '{self.activation_dtype}'"
            )
        if self.weight_bits not in (7, 8):
            raise ConfigError(f"weight_bits must be 7 or 8; got {self.weight_bits!r}")
        if self.timer is not None and not callable(self.timer):
            raise ConfigError("QuantizeConfig.timer must be a timer (module -> ms) or None")
        if self.requantize not in REQUANTIZE:
            raise ConfigError(
                f"requantize must be one of {list(REQUANTIZE)}; got '{self.requantize}'"
            )
        if isinstance(self.exclude, str) or not all(isinstance(e, str) for e in self.exclude):
            raise ConfigError("exclude must be a tuple of binding names")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.mode == "int8":
            if self.calibration is None:
                raise ConfigError(
                    "static int8 quantization needs calibration data (--calib FILE.npz); "
                    "use mode 'int8-dynamic' to quantize without it"
                )
            if not isinstance(self.calibration, Mapping):
                raise ConfigError("calibration data must be a mapping: input name -> array")
            if len(self.calibration) == 0:
                raise ConfigError("calibration data is empty (no input arrays)")
            for name, arr in self.calibration.items():
                if np.asarray(arr).ndim == 0 or np.asarray(arr).shape[0] == 0:
                    raise ConfigError(f"calibration data for input '{name}' holds no samples")


def quantize_config_from_args(
    mode: str,
    calib: Mapping[str, np.ndarray] | None,
    method: str,
    target_capabilities: Any,
    *,
    always: bool = False,
    timer: Callable[[tvm.IRModule], float] | None = None,
) -> QuantizeConfig:
    """Build a :class:`QuantizeConfig` from the CLI's ``--quantize/--calib/--calib-method``
    (and ``--quantize-always``: ``always``; ``timer`` times modules on the target).

    Parameters
    ----------
    mode
        ``int8``, ``int8-dynamic``, ``fp16`` (or ``qdq``).
    calib
        Calibration arrays (input name → array with a leading sample axis) or None.
    method
        ``minmax``, ``percentile`` or ``entropy``.
    target_capabilities
        :class:`targets.base.Capabilities` of the target (``int8_dot``, ``has_float``), or None.
        x86 dot products (``vpdpbusd``, ``vpmaddubsw``) multiply u8×s8: uint8 activations.
        AVX2 / AVX-512BW without VNNI (neither ``vpdpbusd`` form): 7-bit weights against
        ``vpmaddubsw`` saturation. No float unit:
        fixed-point requantization.
    """
    dots = tuple(getattr(target_capabilities, "int8_dot", ()) or ())
    has_float = bool(getattr(target_capabilities, "has_float", True))
    x86 = any(d in dots for d in ("vpdpbusd", "vpmaddubsw"))
    arm = any(d in dots for d in ("sdot", "smmla"))
    act = "uint8" if x86 or not arm else "int8"
    exact_dot = any(d in dots for d in ("vpdpbusd", "vpdpbusd256"))
    bits = 7 if ("vpmaddubsw" in dots and not exact_dot) else 8
    return QuantizeConfig(
        mode=mode,
        calibration=calib if mode == "int8" else None,
        method=method,
        activation_dtype=act,
        weight_bits=bits,
        requantize="float" if has_float else "fixed_point",
        # hwcc has no integer depthwise kernel yet: on CPUs with float, int8 depthwise convs
        # would be slower than float ones (MobileNetV2: 3x); integer-only targets need them
        skip_grouped=has_float and mode.startswith("int8"),
        int8_dot=bool(dots) if target_capabilities is not None else None,
        keep_float_if_slower=not always,
        timer=timer,
    )


# --------------------------------------------------------------------------------------------
# Observers: activation range -> (scale, zero point)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an activation: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127


def _sample(x: np.ndarray, limit: int = 1 << 21) -> np.ndarray:
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    if flat.size > limit:
        flat = flat[:: flat.size // limit + 1]
    return flat


def entropy_threshold(values: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """Clip threshold of ``|values|`` minimising KL(P || Q), as TensorRT / ONNX Runtime do.

    ``P`` is the histogram of ``|values|`` clipped at the candidate threshold (outliers added to
    the last bin); ``Q`` is ``P`` merged into ``levels`` quantization bins and expanded back over
    the non-empty bins. Returns the upper edge of the best candidate. The histogram gets at
    most ``size / 16`` bins (at least ``levels``), so that few samples do not make it so sparse
    that KL prefers clipping most of the range.
    """
    a = np.abs(_sample(values))
    amax = float(a.max()) if a.size else 0.0
    if amax == 0.0:
        return 0.0
    bins = max(levels, min(bins, a.size // 16 // levels * levels))
    hist, edges = np.histogram(a, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_kl = bins, math.inf
    for i in range(levels, bins + 1, 4 if bins > 512 else 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = hist[:i] > 0
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for idx in chunks:
            nz = nonzero[idx]
            if nz.any():
                q[idx[nz]] = hist[idx].sum() / nz.sum()
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        if np.any(q[mask] == 0):
            q = np.where(q == 0, 1e-12, q)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best])


def observe(values: np.ndarray, method: str, dtype: str, percentile: float = 99.99) -> QParams:
    """Range of ``values`` by ``method`` and the per-tensor :class:`QParams` that cover it."""
    flat = _sample(values)
    lo, hi = float(flat.min(initial=0.0)), float(flat.max(initial=0.0))
    if method == "percentile" and flat.size:
        hi = float(np.percentile(flat, percentile)) if hi > 0 else 0.0
        lo = float(np.percentile(flat, 100.0 - percentile)) if lo < 0 else 0.0
    elif method == "entropy":
        levels = 256 if (lo >= 0.0 and dtype == "uint8") else 128
        t = entropy_threshold(flat, levels=levels)
        lo, hi = max(lo, -t), min(hi, t)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if dtype == "int8":
        amax = max(abs(lo), abs(hi))
        scale = amax / 127.0 if amax > 0 else 1.0
        return QParams(float(np.float32(scale)), 0, dtype)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    scale = float(np.float32(scale))
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return QParams(scale, zp, dtype)


def quantize_weight(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel weights along ``axis``: (int8 array, float64 scales)."""
    qmax = (1 << (bits - 1)) - 1
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w.astype(np.float64)).max(axis=red)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    scale = scale.astype(np.float32).astype(np.float64)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def fixed_point(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M ≈ M0 * 2**-shift`` with ``M0`` in [2**30, 2**31) (int64 arrays, elementwise)."""
    m = np.asarray(multiplier, dtype=np.float64)
    m0 = np.zeros(m.shape, np.int64)
    shift = np.zeros(m.shape, np.int64)
    for i, v in np.ndenumerate(m):
        if v <= 0:
            m0[i], shift[i] = 0, 1
            continue
        e = math.floor(math.log2(v))
        sh = 30 - e
        q = round(v * 2.0**sh)
        if q >= 1 << 31:
            q //= 2
            sh -= 1
        if sh < 1 or sh > 62:
            raise ConfigError(f"requantization multiplier {v:g} out of fixed-point range")
        m0[i], shift[i] = q, sh
    return m0, shift


# --------------------------------------------------------------------------------------------
# Annotation: which layers, their epilogue chains
# --------------------------------------------------------------------------------------------
def _uses(func: relax.Function) -> dict:
    """Var → list of binding vars (or None for the function result) that use it."""
    out: dict = {}

    def visit(expr: relax.Expr, user: Any) -> None:
        if isinstance(expr, relax.Var):
            out.setdefault(expr, []).append(user)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                visit(f, user)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value, user)
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                visit(a, user)

    for b in bindings(func):
        visit(b.value, b.var)
    visit(func.body.body, None)
    return out


@dataclass
class Layer:
    """One quantizable layer and the epilogue chain folded into its requantization."""

    var: relax.Var
    kind: str  # "conv2d" | "matmul"
    x: relax.Expr
    weight: np.ndarray
    out_axis: int  # output-channel axis of the layer's output
    bias_var: relax.Var | None = None
    bias: np.ndarray | None = None
    clamps: list = field(default_factory=list)  # (var, lo, hi) in float
    end: relax.Var | None = None


def _layer_of(b: relax.Binding, exclude: tuple[str, ...], skip_grouped: bool = False
              ) -> tuple[Layer | None, str | None]:
    """The :class:`Layer` for binding ``b``, or (None, reason) when it is not quantizable."""
    name = op_name(b.value)
    if name not in (_CONV, _MATMUL):
        return None, None
    call = b.value
    if b.var.name in exclude:
        return None, "excluded"
    if not is_const(call.args[1]):
        return None, "weight is not a constant"
    w = const_array(call.args[1])
    if w.dtype != np.float32:
        return None, f"weight dtype {w.dtype}"
    x_shape = static_shape(call.args[0])
    if x_shape is None:
        return None, "input shape is not static"
    if name == _CONV:
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" or w.ndim != 4:
            return None, "conv2d layout is not NCHW/OIHW"
        if skip_grouped and int(a.groups) > 1:
            return None, "grouped/depthwise conv kept in float (no integer kernel on the target)"
        return Layer(b.var, "conv2d", call.args[0], w, 1), None
    if w.ndim != 2 or len(x_shape) < 2:
        return None, "matmul weight is not 2-D"
    return Layer(b.var, "matmul", call.args[0], w, -1), None


def _per_channel_const(expr: relax.Expr, n: int, axis: int, ndim: int) -> np.ndarray | None:
    """The length-``n`` vector of a constant broadcasting along ``axis`` of an ``ndim`` tensor."""
    if not is_const(expr):
        return None
    arr = const_array(expr)
    if arr.dtype != np.float32 or arr.ndim > ndim or arr.size != n:
        return None
    shape = (1,) * (ndim - arr.ndim) + arr.shape
    ax = axis % ndim
    if shape[ax] != n or any(d != 1 for i, d in enumerate(shape) if i != ax):
        return None
    return arr.reshape(-1).astype(np.float64)


def _scalar_const(expr: relax.Expr) -> float | None:
    if is_const(expr) and const_array(expr).size == 1:
        return float(const_array(expr).reshape(-1)[0])
    if not isinstance(expr, relax.Var) and hasattr(getattr(expr, "value", None), "value"):
        return float(expr.value.value)
    return None


def _clamp_bounds(value: relax.Expr) -> tuple[float, float] | None:
    name = op_name(value)
    if name == "relax.nn.relu":
        return 0.0, math.inf
    if name == "relax.clip":
        lo, hi = _scalar_const(value.args[1]), _scalar_const(value.args[2])
        return None if lo is None or hi is None else (lo, hi)
    if name in ("relax.maximum", "relax.minimum"):
        c = _scalar_const(value.args[1])
        if c is None:
            return None
        return (c, math.inf) if name == "relax.maximum" else (-math.inf, c)
    return None


def _annotate(func: relax.Function, exclude: tuple[str, ...], skip_grouped: bool = False
              ) -> tuple[list[Layer], dict]:
    """Quantizable layers in order, with the bias/clamp chain each one can absorb."""
    producer = {b.var: b.value for b in bindings(func)}
    uses = _uses(func)
    layers, skipped = [], {}
    for b in bindings(func):
        layer, reason = _layer_of(b, exclude, skip_grouped)
        if reason:
            skipped[b.var.name] = reason
        if layer is None:
            continue
        shape = static_shape(b.var)
        ndim = len(shape) if shape else 0
        n = layer.weight.shape[0] if layer.kind == "conv2d" else layer.weight.shape[1]
        end = b.var
        nxt = uses.get(end, [])
        if len(nxt) == 1 and nxt[0] is not None and op_name(producer[nxt[0]]) == "relax.add":
            add = producer[nxt[0]]
            other = add.args[1] if add.args[0].same_as(end) else add.args[0]
            bias = _per_channel_const(other, n, layer.out_axis, ndim) if ndim else None
            if bias is not None:
                layer.bias_var, layer.bias, end = nxt[0], bias, nxt[0]
        for _ in range(2):
            nxt = uses.get(end, [])
            if len(nxt) != 1 or nxt[0] is None:
                break
            bounds = _clamp_bounds(producer[nxt[0]])
            if bounds is None or not _uses_only(producer[nxt[0]], end):
                break
            layer.clamps.append((nxt[0], *bounds))
            end = nxt[0]
        layer.end = end
        layers.append(layer)
    return layers, skipped


def _uses_only(value: relax.Call, var: relax.Var) -> bool:
    """Whether the clamp ``value`` reads ``var`` as its data (first) argument."""
    return isinstance(value.args[0], relax.Var) and value.args[0].same_as(var)


# --------------------------------------------------------------------------------------------
# Conversion helpers (Relax expressions)
# --------------------------------------------------------------------------------------------
def _channel_shape(kind: str, ndim: int, n: int) -> tuple[int, ...]:
    if kind == "conv2d":
        return (1, n, 1, 1)
    return (n,)


def _to_int(y: relax.Expr, zp: float | relax.Expr, lo: float, hi: float, dtype: str,
            finite: bool = False) -> relax.Expr:
    """``clip(where(isnan(y), 0, y) + zp, lo, hi)`` converted to ``dtype``, for a rounded
    float ``y``: the value converted always lies in ``[lo, hi]`` inside the type's range
    (LLVM's float -> integer conversion of anything else is poison, and AVX2 and AVX-512 code
    answer differently), ±inf saturates and NaN quantizes to the zero point, as the frontend
    defines QuantizeLinear (compiler/frontend/int_casts.py). ``finite``: ``y`` is never NaN
    (no select needed; the clip alone bounds it)."""
    if not finite:
        y = relax.op.where(relax.op.isnan(y), relax.const(np.float32(0.0)), y)
    if isinstance(zp, relax.Expr):
        y = relax.op.add(y, zp)
    elif zp:
        y = relax.op.add(y, relax.const(np.float32(zp)))
    return relax.op.astype(relax.op.clip(y, float(lo), float(hi)), dtype)


def _quantize(x: relax.Expr, p: QParams) -> relax.Expr:
    """``clip(round(x / s) + zp, qmin, qmax)`` cast to the activation dtype (NaN: ``zp``)."""
    y = relax.op.round(relax.op.divide(x, relax.const(np.float32(p.scale))))
    return _to_int(y, p.zero_point, p.qmin, p.qmax, p.dtype)


def _dequantize(q: relax.Expr, p: QParams) -> relax.Expr:
    y = relax.op.astype(q, "float32")
    if p.zero_point:
        y = relax.op.subtract(y, relax.const(np.float32(p.zero_point)))
    return relax.op.multiply(y, relax.const(np.float32(p.scale)))


def _int_layer(
    kind: str, call: relax.Call, qx: relax.Expr, wq: np.ndarray, zp: int | relax.Expr
) -> relax.Expr:
    """The layer on integer operands with int32 output (conv padding made explicit with ``zp``)."""
    if kind == "matmul":
        return relax.op.matmul(qx, const(wq), out_dtype="int32")
    a = call.attrs
    pad = [int(p) for p in a.padding]
    if any(pad) and not (isinstance(zp, int) and zp == 0):
        top, left, bottom, right = pad
        qx = relax.op.nn.pad(qx, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zp))
        pad = [0, 0, 0, 0]
    return relax.op.nn.conv2d(
        qx,
        const(wq),
        strides=[int(s) for s in a.strides],
        padding=pad,
        dilation=[int(d) for d in a.dilation],
        groups=int(a.groups),
        out_dtype="int32",
    )


def _weight_sum(kind: str, wq: np.ndarray) -> np.ndarray:
    w = wq.astype(np.int64)
    return w.reshape(w.shape[0], -1).sum(axis=1) if kind == "conv2d" else w.sum(axis=0)


def _requant(
    acc: relax.Expr, mult: np.ndarray, p: QParams, lo: float, hi: float, kind: str, ndim: int,
    fixed: bool,
) -> relax.Expr:
    """int32 accumulator → next layer's integer input: ``clamp(round(acc * M) + zp)``."""
    shape = _channel_shape(kind, ndim, mult.size)
    qlo = p.qmin if lo == -math.inf else max(p.qmin, p.zero_point + int(np.ceil(lo / p.scale)))
    qhi = p.qmax if hi == math.inf else min(p.qmax, p.zero_point + int(np.floor(hi / p.scale)))
    qlo, qhi = min(qlo, qhi), max(qlo, qhi)
    if fixed:
        m0, shift = fixed_point(mult)
        y = relax.op.multiply(relax.op.astype(acc, "int64"), const(m0.reshape(shape)))
        rnd = (np.int64(1) << (shift - 1)).astype(np.int64)
        y = relax.op.add(y, const(rnd.reshape(shape)))
        y = relax.op.right_shift(y, const(shift.reshape(shape)))
        if p.zero_point:
            y = relax.op.add(y, relax.const(np.int64(p.zero_point)))
        y = relax.op.clip(y, qlo, qhi)
        return relax.op.astype(y, p.dtype)
    # acc * M is never NaN (|acc| < 2**31, M a finite constant): the clip bounds it
    y = relax.op.astype(acc, "float32")
    y = relax.op.round(relax.op.multiply(y, const(mult.astype(np.float32).reshape(shape))))
    return _to_int(y, p.zero_point, qlo, qhi, p.dtype, finite=True)


def _to_float(acc: relax.Expr, scale: np.ndarray, kind: str, ndim: int) -> relax.Expr:
    shape = _channel_shape(kind, ndim, scale.size)
    y = relax.op.astype(acc, "float32")
    return relax.op.multiply(y, const(scale.astype(np.float32).reshape(shape)))


# --------------------------------------------------------------------------------------------
# Rebuilding main
# --------------------------------------------------------------------------------------------
def _rebuild(mod: tvm.IRModule, emit_binding) -> tvm.IRModule:
    """Rebuild ``main`` calling ``emit_binding(bb, binding, vmap)``, which returns the new var
    (already emitted) or None to emit the substituted value unchanged."""

    func = main_function(mod)
    vmap: dict = {}
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", list(func.params), attrs=attrs, pure=func.is_pure):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            ctx = bb.dataflow() if dataflow else _NullCtx()
            with ctx:
                for b in block.bindings:
                    new = emit_binding(bb, b, vmap)
                    if new is None:
                        value = substitute(b.value, vmap)
                        if isinstance(b, relax.MatchCast):
                            new = bb.match_cast(value, b.ty, name_hint=b.var.name)
                        elif dataflow and not isinstance(b.var, relax.DataflowVar):
                            new = bb.emit_output(value, name_hint=b.var.name)
                        else:
                            new = bb.emit(value, name_hint=b.var.name)
                    elif dataflow and not isinstance(b.var, relax.DataflowVar):
                        new = bb.emit_output(new, name_hint=b.var.name)
                    elif not isinstance(new, relax.Var):
                        new = bb.emit(new, name_hint=b.var.name)
                    vmap[b.var] = new
        bb.emit_func_output(substitute(func.body.body, vmap))
    new_mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    new_mod[new_mod.get_global_var("main")] = bb.get()["main"]
    return new_mod


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _cleanup(mod: tvm.IRModule) -> tvm.IRModule:
    mod = relax.transform.FoldConstant()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.transform.DeadCodeElimination()(mod)


# --------------------------------------------------------------------------------------------
# The modes
# --------------------------------------------------------------------------------------------
def _check_folded(mod: tvm.IRModule) -> None:

    if batch_norm_count(mod):
        raise ConfigError(
            "quantize expects BatchNorm folded into the layers: run the 'canonicalize' pass first"
        )


def _no_layers_error(skipped: dict) -> ConfigError:
    why = f"; skipped: {skipped}" if skipped else ""
    return ConfigError(
        "the model has no quantizable op (Conv / MatMul / Gemm with constant weights)" + why
    )


def _static(mod: tvm.IRModule, cfg: QuantizeConfig, report: dict) -> tvm.IRModule:
    func = main_function(mod)
    layers, skipped = _annotate(func, cfg.exclude, cfg.skip_grouped)
    if not layers:
        raise _no_layers_error(skipped)
    calibration.check_calibration(mod, cfg.calibration)
    producer = {b.var: b.value for b in bindings(func)}
    uses = _uses(func)
    layer_of = {lay.var: lay for lay in layers}
    inputs_of: dict = {}  # activation var -> layers reading it
    for lay in layers:
        inputs_of.setdefault(lay.x, []).append(lay)

    def int_ok(v: relax.Var) -> bool:
        """Whether every user of ``v`` can take its integer twin (layers, max-pool)."""
        users = uses.get(v, [])
        if not users or any(u is None for u in users):
            return False
        for u in users:
            if u in layer_of and layer_of[u].x.same_as(v):
                continue
            if op_name(producer[u]) == "relax.nn.max_pool2d" and int_ok(u):
                continue
            return False
        return True

    # values to observe: layer inputs, except max-pool outputs whose input is observed
    observed = []
    for x in inputs_of:
        if x not in observed:
            observed.append(x)
    logger.info("quantize: calibrating %d activations of %d layers", len(observed), len(layers))
    cap = calibration.capture(mod, cfg.calibration, observed)
    params: dict = {}
    for x, values in zip(observed, cap.values):
        params[x] = observe(values, cfg.method, cfg.activation_dtype, cfg.percentile)
    # requantize a chain end straight to integer when all its users take integers
    direct = {lay.var: lay.end for lay in layers if lay.end in params and int_ok(lay.end)}
    chain_vars = {}
    for lay in layers:
        for v in ([lay.bias_var] if lay.bias_var is not None else []) + [c[0] for c in lay.clamps]:
            chain_vars[v] = lay
    twin: dict = {}  # float var -> (integer var, QParams)
    stats = {"conv2d": 0, "matmul": 0, "requantized_to_int": 0, "int_max_pool": 0}

    def emit(bb: relax.BlockBuilder, b: relax.Binding, vmap: dict):
        v = b.var
        if v in layer_of:
            lay = layer_of[v]
            x = lay.x
            p = params[x]
            if x in twin:
                qx, p = twin[x]
            else:
                xin = vmap.get(x, x)
                qx = bb.emit(_quantize(xin, p), name_hint=f"{v.name}_qx")
                twin[x] = (qx, p)
            w_axis = 0 if lay.kind == "conv2d" else 1
            wq, sw = quantize_weight(lay.weight, w_axis, cfg.weight_bits)
            acc = bb.emit(_int_layer(lay.kind, b.value, qx, wq, p.zero_point),
                          name_hint=f"{v.name}_acc")
            ndim = len(static_shape(v))
            eff = p.scale * sw  # real value of one accumulator unit, per channel
            bias_i = -np.int64(p.zero_point) * _weight_sum(lay.kind, wq)
            if lay.bias is not None:
                bias_i = bias_i + np.round(lay.bias / eff).astype(np.int64)
            if np.any(bias_i):
                bias_i = np.clip(bias_i, -(2**31), 2**31 - 1).astype(np.int32)
                shape = _channel_shape(lay.kind, ndim, bias_i.size)
                acc = bb.emit(relax.op.add(acc, const(bias_i.reshape(shape))),
                              name_hint=f"{v.name}_acc_b")
            stats[lay.kind] += 1
            if v in direct:
                end = direct[v]
                pe = params[end]
                lo = max([c[1] for c in lay.clamps], default=-math.inf)
                hi = min([c[2] for c in lay.clamps], default=math.inf)
                q = bb.emit(
                    _requant(acc, eff / pe.scale, pe, lo, hi, lay.kind, ndim,
                             cfg.requantize == "fixed_point"),
                    name_hint=f"{end.name}_q",
                )
                twin[end] = (q, pe)
                stats["requantized_to_int"] += 1
            return _to_float(acc, eff, lay.kind, ndim)
        if v in chain_vars:
            lay = chain_vars[v]
            if lay.var in direct and direct[lay.var].same_as(v):
                q, pe = twin[v]
                return _dequantize(q, pe)
            if lay.bias_var is not None and v.same_as(lay.bias_var):
                return vmap[lay.var]  # bias already folded into the int32 accumulator
            return None
        if op_name(b.value) == "relax.nn.max_pool2d" and b.value.args[0] in twin:
            q, p = twin[b.value.args[0]]
            a = b.value.attrs
            qo = bb.emit(
                relax.op.nn.max_pool2d(
                    q,
                    pool_size=[int(s) for s in a.pool_size],
                    strides=[int(s) for s in a.strides],
                    padding=[int(s) for s in a.padding],
                    dilation=[int(s) for s in a.dilation],
                    ceil_mode=bool(a.ceil_mode),
                ),
                name_hint=f"{v.name}_q",
            )
            twin[v] = (qo, p)
            stats["int_max_pool"] += 1
            return _dequantize(qo, p)
        return None

    out = _cleanup(_rebuild(mod, emit))
    sym = "asymmetric" if cfg.activation_dtype == "uint8" else "symmetric"
    report.update(
        {
            "scheme": f"weights int{cfg.weight_bits} symmetric per output channel, activations "
            f"{cfg.activation_dtype} per tensor ({sym}), "
            f"int32 accumulation, {cfg.requantize} requantization",
            "layers": {"conv2d": stats["conv2d"], "matmul": stats["matmul"]},
            "requantized_to_int": stats["requantized_to_int"],
            "int_max_pool": stats["int_max_pool"],
            "calibration_samples": int(cap.outputs[0].shape[0]) if cap.outputs else 0,
        }
    )
    if skipped:
        report["skipped"] = skipped
    if cfg.measure:
        report["agreement"] = agreement(cap.outputs, calibration.run(out, cfg.calibration))
    return out


def agreement(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    """Max/mean absolute and relative error of ``got`` vs ``ref``; top-1 agreement when the
    first output is a ``(n, batch, classes)`` stack of logits."""
    r, g = ref[0].astype(np.float64), got[0].astype(np.float64)
    err = np.abs(r - g)
    out: dict[str, Any] = {
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "relative_error": float(np.linalg.norm(r - g) / max(np.linalg.norm(r), 1e-12)),
    }
    if r.ndim >= 2 and r.shape[-1] > 1:
        out["top1_agreement"] = float(np.mean(r.argmax(-1) == g.argmax(-1)))
    return out


def _dynamic(mod: tvm.IRModule, cfg: QuantizeConfig, report: dict) -> tvm.IRModule:
    func = main_function(mod)
    layers, skipped = _annotate(func, cfg.exclude, cfg.skip_grouped)
    layers = [lay for lay in layers if lay.kind == "matmul"]
    if not layers:
        raise ConfigError(
            "the model has no op that dynamic quantization handles (MatMul / Gemm with constant "
            "weights)"
        )
    layer_of = {lay.var: lay for lay in layers}

    def emit(bb: relax.BlockBuilder, b: relax.Binding, vmap: dict):
        lay = layer_of.get(b.var)
        if lay is None:
            return None
        x = vmap.get(lay.x, lay.x)
        name = b.var.name
        zero = relax.const(np.float32(0.0))
        lo = bb.emit(relax.op.minimum(relax.op.min(x), zero), name_hint=f"{name}_min")
        hi = bb.emit(relax.op.maximum(relax.op.max(x), zero), name_hint=f"{name}_max")
        rng = relax.op.subtract(hi, lo)
        # scale = range / 255, or 1 for an all-zero tensor
        s = bb.emit(
            relax.op.where(
                relax.op.greater(rng, zero),
                relax.op.divide(rng, relax.const(np.float32(255.0))),
                relax.const(np.float32(1.0)),
            ),
            name_hint=f"{name}_scale",
        )
        # the zero point, converted where it is computed (NaN, from NaN/inf in x: 0)
        r = relax.op.round(relax.op.negative(relax.op.divide(lo, s)))
        zp = bb.emit(_to_int(r, 0, 0.0, 255.0, "int32"), name_hint=f"{name}_zp")
        q = bb.emit(_to_int(relax.op.round(relax.op.divide(x, s)),
                            relax.op.astype(zp, "float32"), 0.0, 255.0, "uint8"),
                    name_hint=f"{name}_qx")
        wq, sw = quantize_weight(lay.weight, 1, cfg.weight_bits)
        acc = bb.emit(relax.op.matmul(q, const(wq), out_dtype="int32"), name_hint=f"{name}_acc")
        corr = relax.op.multiply(zp, const(_weight_sum("matmul", wq).astype(np.int32)))
        acc = relax.op.subtract(acc, corr)
        y = relax.op.multiply(relax.op.astype(acc, "float32"), const(sw.astype(np.float32)))
        return relax.op.multiply(y, s)

    out = _cleanup(_rebuild(mod, emit))
    report.update(
        {
            "scheme": f"dynamic: activations uint8 per tensor, range computed at run time; "
            f"weights int{cfg.weight_bits} symmetric per output channel; int32 accumulation",
            "layers": {"matmul": len(layers)},
        }
    )
    if skipped:
        report["skipped"] = skipped
    return out


def _fp16(mod: tvm.IRModule, cfg: QuantizeConfig, report: dict) -> tvm.IRModule:
    func = main_function(mod)
    layers, skipped = _annotate(func, cfg.exclude, cfg.skip_grouped)
    if not layers:
        raise _no_layers_error(skipped)
    layer_of = {lay.var: lay for lay in layers}

    def emit(bb: relax.BlockBuilder, b: relax.Binding, vmap: dict):
        lay = layer_of.get(b.var)
        if lay is None:
            return None
        x = relax.op.astype(vmap.get(lay.x, lay.x), "float16")
        w = const(lay.weight.astype(np.float16))
        if lay.kind == "matmul":
            return relax.op.matmul(x, w, out_dtype="float32")
        a = b.value.attrs
        return relax.op.nn.conv2d(
            x, w, strides=[int(s) for s in a.strides], padding=[int(p) for p in a.padding],
            dilation=[int(d) for d in a.dilation], groups=int(a.groups), out_dtype="float32",
        )

    out = _cleanup(_rebuild(mod, emit))
    kinds = {k: sum(lay.kind == k for lay in layers) for k in ("conv2d", "matmul")}
    report.update({"scheme": "fp16 weights and operands, float32 accumulation", "layers": kinds})
    if skipped:
        report["skipped"] = skipped
    return out


# --------------------------------------------------------------------------------------------
# QDQ models: dequantize -> conv/matmul becomes an integer conv/matmul
# --------------------------------------------------------------------------------------------
def _dq_args(value: relax.Expr) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scale, zero point, axis) of a ``R.dequantize`` call with constant parameters."""
    if op_name(value) != "relax.dequantize":
        return None
    if not (is_const(value.args[1]) and is_const(value.args[2])):
        return None
    s = const_array(value.args[1]).astype(np.float64).reshape(-1)
    zp = const_array(value.args[2]).astype(np.int64).reshape(-1)
    return s, zp, int(value.attrs.axis)


def _qdq_weight(expr: relax.Expr, producer: dict, out_axis_of_weight: int):
    """Integer weight and per-output-channel scale of ``dequantize(const)`` (through at most
    one ``permute_dims``), or None. ``out_axis_of_weight``: the output axis of the weight as
    the layer reads it (0 for OIHW, 1 for a matmul's [K, N])."""
    if is_const(expr) and const_array(expr).dtype == np.float32:
        return _int8_grid(const_array(expr), out_axis_of_weight)
    perm = None
    value = producer.get(expr) if isinstance(expr, relax.Var) else expr
    if op_name(value) == "relax.permute_dims":
        axes = value.attrs.axes
        perm = [int(a) for a in axes] if axes is not None else None
        inner = value.args[0]
        value = producer.get(inner) if isinstance(inner, relax.Var) else inner
        if perm is None:
            perm = [1, 0]
    args = _dq_args(value) if value is not None else None
    if args is None or not is_const(value.args[0]):
        return None
    s, zp, axis = args
    q = const_array(value.args[0]).astype(np.int64)
    if np.any(zp != 0) or q.ndim < 2:
        return None  # asymmetric weights: not worth an extra correction term
    axis = axis % q.ndim
    if perm is not None:
        q = q.transpose(perm)
        axis = perm.index(axis)
    n = q.shape[out_axis_of_weight]
    if s.size == 1:
        s = np.full(n, s[0])
    elif axis != out_axis_of_weight or s.size != n:
        return None
    return q.astype(np.int8), s


def _int8_grid(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer weights of a float weight that already lies on a symmetric per-channel int8
    (or 7-bit) grid, i.e. a ``DequantizeLinear`` of int8 weights folded before import; None
    when it does not (then the layer stays float)."""
    for qmax in (127, 63):
        q, scale = quantize_weight(w, axis, 8 if qmax == 127 else 7)
        shape = [1] * w.ndim
        shape[axis] = -1
        back = q.astype(np.float64) * scale.reshape(shape)
        if np.all(np.abs(back - w) <= 1e-6 * np.maximum(np.abs(w), 1e-30) + 1e-12):
            return q, scale
    return None


def _qdq(mod: tvm.IRModule, cfg: QuantizeConfig, report: dict) -> tvm.IRModule:
    func = main_function(mod)
    producer = {b.var: b.value for b in bindings(func)}
    plans: dict = {}
    skipped: dict = {}
    for b in bindings(func):
        name = op_name(b.value)
        if name not in (_CONV, _MATMUL):
            continue
        x = b.value.args[0]
        xdq = _dq_args(producer.get(x)) if isinstance(x, relax.Var) else None
        if xdq is None or xdq[0].size != 1 or xdq[1].size != 1:
            skipped[b.var.name] = "input is not dequantized per tensor"
            continue
        w_axis = 0 if name == _CONV else 1
        w = _qdq_weight(b.value.args[1], producer, w_axis)
        if w is None:
            skipped[b.var.name] = "weight is not a symmetric dequantized constant"
            continue
        if name == _MATMUL and w[0].ndim != 2:
            skipped[b.var.name] = "matmul weight is not 2-D"
            continue
        plans[b.var] = (name, producer[x].args[0], float(xdq[0][0]), int(xdq[1][0]), *w)
    if not plans:
        raise ConfigError(
            "no DequantizeLinear -> Conv/MatMul/Gemm pattern with constant int8 weights found; "
            "is this a QDQ model? (for a float model use mode 'int8')"
        )

    def emit(bb: relax.BlockBuilder, b: relax.Binding, vmap: dict):
        plan = plans.get(b.var)
        if plan is None:
            return None
        kind, xq, sx, zpx, wq, sw = plan
        kind = "conv2d" if kind == _CONV else "matmul"
        acc = bb.emit(_int_layer(kind, b.value, vmap.get(xq, xq), wq, zpx),
                      name_hint=f"{b.var.name}_acc")
        ndim = len(static_shape(b.var))
        if zpx:
            corr = (np.int64(zpx) * _weight_sum(kind, wq)).astype(np.int32)
            shape = _channel_shape(kind, ndim, corr.size)
            acc = bb.emit(relax.op.subtract(acc, const(corr.reshape(shape))),
                          name_hint=f"{b.var.name}_acc_zp")
        return _to_float(acc, sx * sw, kind, ndim)

    out = _cleanup(_rebuild(mod, emit))
    kinds = [p[0] for p in plans.values()]
    report.update(
        {
            "scheme": "QDQ model: the model's own scales and zero points, integer conv/matmul "
            "with int32 accumulation",
            "layers": {"conv2d": kinds.count(_CONV), "matmul": kinds.count(_MATMUL)},
        }
    )
    if skipped:
        report["skipped"] = skipped
    return out


_MODES = {"int8": _static, "int8-dynamic": _dynamic, "fp16": _fp16, "qdq": _qdq}


@tvm.transform.module_pass(opt_level=0, name="hwcc.Quantize")
class Quantize:
    """Quantize conv2d / matmul layers; see the module docstring (expects / guarantees /
    options / report)."""

    def __init__(self, config: QuantizeConfig | None = None) -> None:
        if config is None:
            raise ConfigError("the quantize pass needs a QuantizeConfig (mode, calibration data)")
        self.config = config
        self.report: dict[str, Any] = {}

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Apply the pass to ``mod``."""
        cfg = self.config
        main_function(mod)
        if cfg.mode != "qdq":
            _check_folded(mod)
        report: dict[str, Any] = {"mode": cfg.mode}
        if cfg.mode == "int8":
            report["method"] = cfg.method
            if cfg.method == "percentile":
                report["percentile"] = cfg.percentile
        out = _MODES[cfg.mode](mod, cfg, report)
        if cfg.mode != "qdq":
            out = _float_unless_faster(mod, out, cfg, report)
        self.report = report
        logger.info("quantize (%s): %s", cfg.mode, report.get("layers"))
        return out


def _float_unless_faster(float_mod: tvm.IRModule, quantized: tvm.IRModule, cfg: QuantizeConfig,
                         report: dict) -> tvm.IRModule:
    """``quantized``, or ``float_mod`` where that is faster on the target; ``report["speed"]``
    says which was kept and why (measured times, or the cost model's reason)."""
    if not cfg.keep_float_if_slower:
        report["speed"] = {"kept": "quantized", "decided_by": "user (always quantize)"}
        return quantized
    if cfg.requantize == "fixed_point":
        report["speed"] = {"kept": "quantized", "decided_by": "integer-only target"}
        return quantized
    if cfg.timer is not None:
        float_ms, quant_ms = cfg.timer(float_mod), cfg.timer(quantized)
        kept = "quantized" if quant_ms < float_ms else "float"
        report["speed"] = {"kept": kept, "decided_by": "measured on this machine",
                           "float_ms": round(float_ms, 4), "quantized_ms": round(quant_ms, 4)}
        if kept == "float":
            report["speed"]["reason"] = (
                f"the quantized model ran {quant_ms:.3g} ms, the float one {float_ms:.3g} ms")
    elif cfg.int8_dot is False and cfg.mode.startswith("int8"):
        kept = "float"
        report["speed"] = {"kept": kept, "decided_by": "cost model",
                           "reason": "the target has no integer dot-product instruction: "
                                     "int8 kernels would run slower than float ones"}
    else:
        report["speed"] = {"kept": "quantized", "decided_by": "cost model"}
        return quantized
    if kept == "float":
        report["discarded_layers"] = report.get("layers")
        report["layers"] = {"conv2d": 0, "matmul": 0}
        logger.warning("quantize: kept the float model (%s); --quantize-always keeps the "
                       "quantized one", report["speed"]["reason"])
        return float_mod
    return quantized


def has_qdq(mod: tvm.IRModule) -> bool:
    """Whether ``main`` holds ``R.dequantize`` calls (a QDQ model to run ``mode="qdq"`` on)."""
    return any(op_name(b.value) == "relax.dequantize" for b in bindings(main_function(mod)))

