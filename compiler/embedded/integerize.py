"""Float Relax model + calibration data → :class:`~compiler.embedded.graph.IntGraph`.

What the embedded device runs is integer end to end, so its quantization differs from the
CPU quantize pass (which keeps residual adds, pooling and the classifier head in float
between a dequantize and a quantize): here *every* tensor is int8 and every layer integer.

Scheme (the TFLite / CMSIS-NN int8 scheme, symmetric): activations int8 per tensor with zero
point 0 and scale ``max|x| / 127`` over the calibration data; weights int8 per output
channel (``max|w| / 127``, values in -127..127); bias int32 in accumulator units; the
requantization multiplier ``s_x s_w / s_y`` as an int32 ``mult`` and a right ``shift``
(``rqmul``); ReLU / Clip folded into the producing layer's clamp bounds. Residual adds
rescale both inputs in 16 extra fractional bits; global average pooling sums in int32 and
requantizes by ``s_x / (HW s_y)``.

Expects: ``main`` with one batch-1 input, BatchNorm folded (``canonicalize`` ran), weights
constant. Supported Relax ops: ``nn.conv2d`` (groups 1, NCHW/OIHW) and ``matmul`` with a
constant weight, each with an optional constant bias ``add``; ``add`` of two tensors;
``nn.relu``, ``clip`` and ``maximum`` / ``minimum`` with a scalar constant; ``mean`` over
H, W and ``nn.adaptive_avg_pool2d`` to 1×1;
``nn.max_pool2d``; ``reshape`` / ``flatten`` of a batch-1 tensor. Anything else is refused,
naming the op and its binding.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import relax

from passes import calibration
from passes._ir import bindings, const_array, is_const, main_function, op_name, static_shape
from targets.errors import CompileError

from .graph import IntGraph, Layer, Tensor

logger = logging.getLogger(__name__)

_ACT = ("relax.nn.relu", "relax.clip")
#: pre-shift of the residual add's operands (fractional bits kept while summing)
ADD_SHIFT = 16


def fixed_point(multiplier: float) -> tuple[int, int]:
    """``(mult, shift)`` with ``rqmul(v, mult, shift) ≈ v * multiplier``: mult in
    [2^30, 2^31), shift in 1..62 (a tiny multiplier loses precision rather than range)."""
    if not multiplier > 0:
        return 0, 1
    m, e = math.frexp(multiplier)
    mult = int(round(m * (1 << 31)))
    if mult == 1 << 31:
        mult //= 2
        e += 1
    shift = 31 - e
    if shift > 62:
        mult = int(round(multiplier * (1 << 62)))
        shift = 62
    if shift < 1:
        raise CompileError(f"requantization multiplier {multiplier:g} is too large for "
                           "int32 fixed point (an activation range of almost zero?)")
    return mult, shift


def rqmul(v: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``(v * mult + 2^(shift-1)) >> shift`` in int64, elementwise (hwcc_acc.h's rqmul)."""
    v = np.asarray(v, np.int64)
    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    return ((v * mult + (np.int64(1) << (shift - 1))) >> shift).astype(np.int64)


@dataclass
class _Op:
    """A float op of the model, with what was folded into it."""

    kind: str
    binding: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    act: tuple[float, float] | None = None  # clamp in float units (relu: (0, inf))


def _is_act(call: Any) -> bool:
    """ReLU, Clip, or a max / min with a scalar constant (ONNX Clip with tensor bounds)."""
    kind = op_name(call)
    if kind in _ACT:
        return True
    return kind in ("relax.maximum", "relax.minimum") and is_const(call.args[1]) \
        and const_array(call.args[1]).size == 1


def _act_bounds(call: relax.Call) -> tuple[float, float]:
    kind = op_name(call)
    if kind == "relax.nn.relu":
        return 0.0, math.inf
    if kind == "relax.maximum":
        return float(const_array(call.args[1]).reshape(())), math.inf
    if kind == "relax.minimum":
        return -math.inf, float(const_array(call.args[1]).reshape(()))
    lo, hi = call.args[1], call.args[2]
    return float(getattr(lo.value, "value", lo.value)), float(getattr(hi.value, "value",
                                                                      hi.value))


def _meet(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    """Both clamps, one after the other, as one."""
    if a is None:
        return b
    return max(a[0], b[0]), min(max(a[1], b[0]), b[1])


class _Reader:
    """Reads ``main`` into float ops, folding bias adds and activations."""

    def __init__(self, mod: Any) -> None:
        self.func = main_function(mod)
        if len(self.func.params) != 1:
            raise CompileError(f"the embedded target takes models with one input; this one "
                               f"has {len(self.func.params)}")
        self.binds = {b.var.name: b for b in bindings(self.func)}
        self.uses: Counter[str] = Counter()
        for b in self.binds.values():
            for a in getattr(b.value, "args", []):
                if isinstance(a, relax.Var):
                    self.uses[a.name] += 1
        out = self.func.body.body
        if not isinstance(out, relax.Var):
            raise CompileError("the embedded target takes models with one output tensor")
        self.output = out.name
        self.uses[self.output] += 1
        self.alias: dict[str, str] = {}  # absorbed var -> the var standing for it

    def name(self, expr: relax.Expr, where: str) -> str:
        if not isinstance(expr, relax.Var):
            raise CompileError(f"the embedded target needs tensor operands; binding "
                               f"'{where}' has a {type(expr).__name__}")
        n = expr.name
        return self.alias.get(n, n)

    def single_use_next(self, var: str, accept: Callable[[Any], bool]
                        ) -> tuple[str, relax.Call] | None:
        """The binding that reads ``var`` as its first operand, if ``accept`` takes it and
        ``var`` has no other use."""
        if self.uses[var] != 1 or var == self.output:
            return None
        for name, b in self.binds.items():
            args = getattr(b.value, "args", [])
            if args and isinstance(args[0], relax.Var) and args[0].name == var \
                    and accept(b.value):
                return name, b.value
        return None

    def fold(self, op: _Op) -> _Op:
        """Fold a constant bias add and then a ReLU / Clip into ``op``."""
        nxt = self.single_use_next(op.output, lambda c: op_name(c) == "relax.add")
        if nxt and op.kind == "conv" and op.bias is None and is_const(nxt[1].args[1]):
            b = const_array(nxt[1].args[1]).astype(np.float64)
            o = op.weight.shape[0]
            if b.size == o:
                op.bias = b.reshape(o)
                self.alias[op.output] = nxt[0]
                op.output = nxt[0]
        while (nxt := self.single_use_next(op.output, _is_act)) is not None:
            op.act = _meet(op.act, _act_bounds(nxt[1]))
            self.alias[op.output] = nxt[0]
            op.output = nxt[0]
        return op

    def read(self) -> list[_Op]:
        ops: list[_Op] = []
        absorbed: set[str] = set()
        for name, b in self.binds.items():
            if name in self.alias or name in absorbed:
                continue
            call = b.value
            kind = op_name(call)
            shape = static_shape(b.var)
            op = self._op(name, kind, call, shape)
            before = set(self.alias)
            if op.kind in ("conv", "add", "clamp"):
                op = self.fold(op)
            absorbed |= {self.alias[k] for k in set(self.alias) - before}
            ops.append(op)
        return ops

    def _op(self, name: str, kind: str | None, call: Any, shape: tuple[int, ...] | None) -> _Op:
        def unsupported(why: str) -> CompileError:
            return CompileError(f"the embedded target cannot run {kind or 'this'} "
                                      f"(binding '{name}'): {why}")

        if shape is None:
            raise unsupported("its shape is not static")
        if len(shape) in (2, 4) and shape[0] != 1:
            raise unsupported(f"batch {shape[0]}; the embedded target runs batch 1")
        args = list(getattr(call, "args", []))
        if kind == "relax.nn.conv2d":
            a = call.attrs
            if int(a.groups) != 1:
                raise unsupported(f"grouped convolution (groups={int(a.groups)}) has no "
                                  "kernel on the MAC array yet")
            if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
                raise unsupported("layouts other than NCHW/OIHW")
            if not is_const(args[1]):
                raise unsupported("its weight is not a constant")
            w = const_array(args[1]).astype(np.float64)
            pad = [int(p) for p in a.padding]
            return _Op("conv", name, [self.name(args[0], name)], name,
                       {"stride": [int(s) for s in a.strides], "pad": pad,
                        "dilation": [int(d) for d in a.dilation]}, weight=w)
        if kind == "relax.matmul":
            if not is_const(args[1]) or len(static_shape(args[1]) or ()) != 2 or len(shape) != 2:
                raise unsupported("only (1, K) x constant (K, N) products run on the device")
            w = const_array(args[1]).astype(np.float64).T  # (N, K)
            return _Op("conv", name, [self.name(args[0], name)], name,
                       {"stride": [1, 1], "pad": [0, 0, 0, 0], "dilation": [1, 1]},
                       weight=w[:, :, None, None])
        if kind == "relax.add":
            if any(is_const(x) for x in args):
                raise unsupported("an add of a constant not folded into a layer's bias")
            if static_shape(args[0]) != static_shape(args[1]):
                raise unsupported("broadcasting adds")
            return _Op("add", name, [self.name(x, name) for x in args], name)
        if _is_act(call):
            return _Op("clamp", name, [self.name(args[0], name)], name, act=_act_bounds(call))
        if kind == "relax.mean" or kind == "relax.nn.adaptive_avg_pool2d":
            src = static_shape(args[0]) or ()
            axes = sorted(int(x) % 4 for x in call.attrs.axis) if kind == "relax.mean" else [2, 3]
            if len(src) != 4 or axes != [2, 3] or (
                    kind != "relax.mean" and tuple(shape[2:]) != (1, 1)):
                raise unsupported("only the global average over H and W")
            return _Op("mean", name, [self.name(args[0], name)], name)
        if kind == "relax.nn.max_pool2d":
            a = call.attrs
            if str(a.layout) != "NCHW" or any(int(d) != 1 for d in a.dilation):
                raise unsupported("only NCHW max pooling without dilation")
            return _Op("maxpool", name, [self.name(args[0], name)], name,
                       {"kernel": [int(k) for k in a.pool_size],
                        "stride": [int(s) for s in a.strides],
                        "pad": [int(p) for p in a.padding]})
        if kind in ("relax.reshape", "relax.flatten"):
            src = static_shape(args[0]) or ()
            if len(shape) == 2 and src and src[0] == 1 and len(src) in (2, 4):
                return _Op("view", name, [self.name(args[0], name)], name)
            if len(shape) == 4 and len(src) == 4 and shape == src:
                return _Op("view", name, [self.name(args[0], name)], name)
            raise unsupported(f"reshape {list(src)} -> {list(shape)} (only flattening to "
                              "(1, F) runs on the device)")
        raise unsupported("no integer kernel for this op on the embedded target")


def _scale(values: np.ndarray) -> float:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return peak / 127.0 if peak > 0 else 1.0


def _clamp_q(act: tuple[float, float] | None, scale: float) -> tuple[int, int]:
    if act is None:
        return -128, 127
    lo = -128 if act[0] == -math.inf else int(np.clip(np.rint(act[0] / scale), -128, 127))
    hi = 127 if act[1] == math.inf else int(np.clip(np.rint(act[1] / scale), -128, 127))
    return lo, hi


def _storage(tensors: dict[str, Tensor], op: _Op, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if op.kind in ("view", "clamp"):  # same bytes, same layout
        return tensors[op.inputs[0]].storage
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    return int(np.prod(shape[1:])), 1, 1


def integerize(mod: Any, calib: Mapping[str, np.ndarray] | None,
               scales: Mapping[str, float] | None = None) -> IntGraph:
    """The integer graph of ``mod``'s ``main`` (binding names unique: see
    :func:`compiler.embedded.qdq.strip_qdq`). Activation scales come from ``scales`` (binding
    name → scale, what a QDQ model marked) and, for the tensors it lacks, from ``calib``
    (input name → samples along a leading axis).

    Raises
    ------
    CompileError
        An op without an integer kernel on the device (named, with its binding), a model
        the device cannot take (several inputs or outputs, batch > 1), or a tensor with no
        scale and no calibration data.
    """
    reader = _Reader(mod)
    ops = reader.read()
    param = reader.func.params[0]
    in_shape = static_shape(param)
    if in_shape is None or len(in_shape) not in (2, 4) or in_shape[0] != 1:
        raise CompileError(f"the embedded target takes a batch-1 input of rank 2 or 4; input "
                           f"'{param.name}' has shape {in_shape}")
    known = dict(scales or {})
    needed = [param.name, *(op.output for op in ops if op.kind not in ("view", "maxpool",
                                                                          "clamp"))]
    wanted = [n for n in needed if n not in known]
    if wanted and calib is None:
        raise CompileError(f"no scale for tensor '{wanted[0]}' (and {len(wanted) - 1} more): "
                           "the model does not quantize it; give calibration data (--calib)")
    observed: dict[str, float] = dict(known)
    if wanted:
        cap = calibration.capture(mod, calib, wanted)
        observed.update({n: _scale(v) for n, v in zip(cap.names, cap.values)})

    shapes = {b.var.name: static_shape(b.var) for b in bindings(reader.func)}
    shapes[param.name] = tuple(in_shape)
    tensors: dict[str, Tensor] = {}
    inp = Tensor(param.name, tuple(in_shape), observed[param.name])
    inp.storage = inp.chw
    tensors[inp.name] = inp
    layers: list[Layer] = []
    for op in ops:
        shape = tuple(shapes[op.output])
        keeps_scale = op.kind in ("view", "maxpool", "clamp")
        scale = tensors[op.inputs[0]].scale if keeps_scale else observed[op.output]
        out = Tensor(op.output, shape, scale)
        out.storage = _storage(tensors, op, shape)
        tensors[op.output] = out
        layers.append(_layer(op, tensors, out, len(layers)))
    graph = IntGraph(tensors, layers, [inp.name], [reader.alias.get(reader.output,
                                                                    reader.output)])
    logger.info("embedded: %d integer layers (%s)", len(layers),
                ", ".join(f"{k} {v}" for k, v in Counter(lay.kind for lay in layers).items()))
    return graph


def _layer(op: _Op, tensors: dict[str, Tensor], out: Tensor, index: int) -> Layer:
    src = tensors[op.inputs[0]]
    lay = Layer(kind=op.kind, name=f"l{index}_{op.kind}", inputs=list(op.inputs),
                output=out.name, node=op.binding, attrs=dict(op.attrs))
    if op.kind == "conv":
        w = op.weight
        o = w.shape[0]
        peak = np.max(np.abs(w.reshape(o, -1)), axis=1)
        s_w = np.where(peak > 0, peak / 127.0, 1.0)
        w_q = np.clip(np.rint(w / s_w[:, None, None, None]), -127, 127).astype(np.int8)
        bias = op.bias if op.bias is not None else np.zeros(o)
        acc_scale = src.scale * s_w
        b_q = np.clip(np.rint(bias / acc_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        fp = [fixed_point(float(m)) for m in acc_scale / out.scale]
        lay.params = {"weight": w_q, "bias": b_q,
                      "mult": np.array([m for m, _ in fp], np.int32),
                      "shift": np.array([s for _, s in fp], np.uint8)}
        lay.attrs["lo"], lay.attrs["hi"] = _clamp_q(op.act, out.scale)
        oc, oh, ow = out.chw
        lay.attrs["macs"] = int(oc * oh * ow * int(np.prod(w.shape[1:])))
    elif op.kind == "add":
        b = tensors[op.inputs[1]]
        for key, t in (("a", src), ("b", b)):
            m = t.scale / out.scale
            if m >= 2 ** 6:
                raise CompileError(f"residual add '{op.binding}': input scale {t.scale:g} is "
                                   f"{m:.0f}x the output's; the int32 sum would overflow")
            lay.attrs[f"mult_{key}"], lay.attrs[f"shift_{key}"] = fixed_point(m)
        lay.attrs["lo"], lay.attrs["hi"] = _clamp_q(op.act, out.scale)
    elif op.kind == "mean":
        _, h, w_ = src.chw
        lay.attrs["mult"], lay.attrs["shift"] = fixed_point(src.scale / (h * w_ * out.scale))
        lay.attrs["lo"], lay.attrs["hi"] = -128, 127
    elif op.kind == "clamp":
        lay.attrs["lo"], lay.attrs["hi"] = _clamp_q(op.act, out.scale)
    return lay
