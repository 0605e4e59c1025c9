"""Expansion conv -> activation -> depthwise conv as one kernel (MobileNet's inverted residual).

:func:`fuse_expand_depthwise` is a Relax module pass that runs before legalization, after
batch-norm folding (so that weights and biases are folded constants). It finds the chain ::

    e = conv2d(x, w1)     groups 1, constant weight: the 1x1 expansion of an inverted residual,
                          or any dense conv (MobileNet's 3x3/2 stem conv feeds a depthwise conv
                          the same way)
    e = add(e, b1)        optional; constant bias, one value per channel (or one for all)
    e = act(e)            optional; elementwise ops of e and scalar constants (ReLU, Clip,
                          max/min, + - * /, sigmoid, SiLU: so also Swish and HardSwish)
    d = conv2d(e, w2)     depthwise: groups = channels, one 2-D filter per channel, constant

(NCHW, float32, static shapes, dilation 1, each intermediate used only by the next step, the
channel count a multiple of the target's vector lanes) and replaces it by one ``call_tir`` of
:func:`expand_depthwise_te`. The scheduled kernel
(:class:`compiler.lower.schedules.expand_depthwise.ExpandDepthwise`) never writes ``e`` to memory:
each task computes the expansion for one block of ``lanes`` channels (and, on large maps, a
band of rows) into a zero-padded, channel-innermost tile that the depthwise conv then reads
from cache. In MobileNetV2 the expansion outputs are the largest tensors of the network (4.8 MB
at 112x112), which two separate kernels write to memory and read back; ``hwcc compile
--disable-rewrite expand-depthwise`` and ``hwcc bench`` compare the two on a given model.

The depthwise conv's own bias and activation are not part of the rewrite: the kernel is
annotated ``op_pattern = kOutEWiseFusable``, so ``FuseOps`` fuses them after it as usual.
Clip arrives from the ONNX importer as ``call_tir`` of TOPI's ``maximum`` / ``minimum``; those
are recognised by :func:`passes._ir.relax_op_of_te_call` (which checks the PrimFunc).

Except when the chain continues into the block's projection ::

    p = conv2d(act2(d + b2), w3)    1x1, stride 1, unpadded, groups 1, constant weight; bias
                                    and activation optional (each used only by the next step)

Then the depthwise conv's bias and activation are part of the kernel
(:func:`expand_depthwise_blocked_te`), which writes ``act2(d + b2)`` in the blocked layout
``[N, C / L, H, W, L]``, and the projection becomes :func:`blocked_pointwise_te`, which reads
that layout (its bias, residual add and activation fuse after it as usual). The depthwise
register tiles are ``[pixels][L channels]``: NCHW output transposes each of them element by
element, the blocked layout stores one vector per pixel. The projection broadcasts its input
values, so it reads either layout at the same cost.

``LowerOptions(expand_depthwise=False)`` leaves the rewrite out; ``blocked_depthwise=False`` only
the blocked projection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from compiler.lower.schedules.expand_depthwise import BLOCK_PREFIX
from compiler.lower.schedules.target_info import cpu_info, is_cpu_target
from passes._ir import const_array, is_const, op_name, relax_op_of_te_call, static_shape

logger = logging.getLogger(__name__)

#: Name of the block of :func:`blocked_pointwise_te`.
POINTWISE_BLOCK = "hwcc_blocked_pointwise"

#: The activation between the two convolutions, an expression tree over the expansion's
#: biased value: ``("x",)`` is that value, ``("const", c)`` a constant, ``("sigmoid", a)``, and
#: ``(op, a, b)`` with op one of :data:`BINARY_OPS`. ReLU is ``("max", ("x",), ("const", 0))``;
#: Swish ``("mul", ("x",), ("sigmoid", ("x",)))``; HardSwish
#: ``("mul", ("x",), ("div", ("max", ("min", ("add", ("x",), ("const", 3)), ...), ...), ...))``.
Activation = tuple

#: Relax binary ops an :data:`Activation` may use, and their names in the tree.
_BINARY_RELAX = {"relax.maximum": "max", "relax.minimum": "min", "relax.add": "add",
                 "relax.subtract": "sub", "relax.multiply": "mul", "relax.divide": "div"}
BINARY_OPS = tuple(_BINARY_RELAX.values())

#: Largest activation the matcher accepts: tree nodes, and Relax variables visited.
MAX_ACTIVATION_NODES = 64

IDENTITY: Activation = ("x",)


def _padded_expansion(data, w1, b1, acts: Activation, padding, expand_stride, expand_padding):
    """TE of the activated expansion, zero-padded for the depthwise conv:
    ``[N, C / L, EH + top + bottom, EW + left + right, L]`` (see :func:`expand_depthwise_te`)."""
    n, k, h, w = (int(s) for s in data.shape)
    blocks, _, ekh, ekw, lanes = (int(s) for s in w1.shape)
    esy, esx = expand_stride
    etop, eleft, ebottom, eright = expand_padding
    eh = (h + etop + ebottom - ekh) // esy + 1
    ew = (w + eleft + eright - ekw) // esx + 1
    top, left, bottom, right = padding
    f32 = "float32"

    if any(expand_padding):
        source = te.compute(
            (n, k, h + etop + ebottom, w + eleft + eright),
            lambda b, c, yy, xx: te.if_then_else(
                tirx.all(yy >= etop, yy < etop + h, xx >= eleft, xx < eleft + w),
                data[b, c, yy - etop, xx - eleft],
                tirx.const(0.0, f32),
            ),
            name=BLOCK_PREFIX + "input_pad",
        )
    else:
        source = data
    rk = te.reduce_axis((0, k), name="rk")
    rky = te.reduce_axis((0, ekh), name="rky")
    rkx = te.reduce_axis((0, ekw), name="rkx")
    expand = te.compute(
        (n, blocks, eh, ew, lanes),
        lambda b, co, y, x, ci: te.sum(
            source[b, rk, y * esy + rky, x * esx + rkx] * w1[co, rk, rky, rkx, ci],
            axis=[rk, rky, rkx],
        ),
        name=BLOCK_PREFIX + "expand",
    )
    return te.compute(
        (n, blocks, eh + top + bottom, ew + left + right, lanes),
        lambda b, co, yy, xx, ci: te.if_then_else(
            tirx.all(yy >= top, yy < top + eh, xx >= left, xx < left + ew),
            evaluate_activation(acts, expand[b, co, yy - top, xx - left, ci] + b1[co * lanes + ci]),
            tirx.const(0.0, f32),
        ),
        name=BLOCK_PREFIX + "pad",
    )


def _output_size(data, w1, w2, stride, padding, expand_stride, expand_padding) -> tuple[int, int]:
    h, w = (int(s) for s in data.shape[2:])
    ekh, ekw = (int(s) for s in w1.shape[2:4])
    kh, kw = (int(s) for s in w2.shape[1:3])
    (esy, esx), (sy, sx) = expand_stride, stride
    etop, eleft, ebottom, eright = expand_padding
    top, left, bottom, right = padding
    eh = (h + etop + ebottom - ekh) // esy + 1
    ew = (w + eleft + eright - ekw) // esx + 1
    return (eh + top + bottom - kh) // sy + 1, (ew + left + right - kw) // sx + 1


def expand_depthwise_te(data, w1, b1, w2, acts: Activation, stride: tuple[int, int],
                        padding: tuple[int, int, int, int],
                        expand_stride: tuple[int, int] = (1, 1),
                        expand_padding: tuple[int, int, int, int] = (0, 0, 0, 0)):
    """TE compute of ``depthwise(act(conv(data, w1) + b1), w2)``.

    Parameters
    ----------
    data : te.Tensor
        ``[N, K, H, W]`` float32.
    w1 : te.Tensor
        Expansion weight packed ``[C / L, K, KH1, KW1, L]`` (``L`` = the target's vector lanes).
    b1 : te.Tensor
        Expansion bias ``[C]``.
    w2 : te.Tensor
        Depthwise weight packed ``[C / L, KH, KW, L]``.
    acts : Activation
        The activation, applied to the expansion's biased value.
    stride : tuple of int
        Depthwise stride ``(sy, sx)``.
    padding : tuple of int
        Depthwise zero padding ``(top, left, bottom, right)``.
    expand_stride, expand_padding : tuple of int
        The same for the expansion conv (1x1 expansions have neither).

    Returns
    -------
    te.Tensor
        The depthwise conv's output ``[N, C, OH, OW]`` (before its own bias/activation).
    """
    padded = _padded_expansion(data, w1, b1, acts, padding, expand_stride, expand_padding)
    n, _, _, _, lanes = (int(s) for s in padded.shape)
    channels = int(w2.shape[0]) * lanes
    _, kh, kw, _ = (int(s) for s in w2.shape)
    oh, ow = _output_size(data, w1, w2, stride, padding, expand_stride, expand_padding)
    sy, sx = stride
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (n, channels, oh, ow),
        lambda b, c, oy, ox: te.sum(
            padded[b, c // lanes, oy * sy + ry, ox * sx + rx, c % lanes]
            * w2[c // lanes, ry, rx, c % lanes],
            axis=[ry, rx],
        ),
        name=BLOCK_PREFIX + "depthwise",
    )


def expand_depthwise_blocked_te(data, w1, b1, w2, b2, acts: Activation, stride: tuple[int, int],
                                padding: tuple[int, int, int, int],
                                expand_stride: tuple[int, int], expand_padding: tuple[int, int, int, int],
                                depthwise_acts: Activation):
    """TE compute of ``depthwise_act(depthwise(act(conv(data, w1) + b1), w2) + b2)`` in the
    blocked layout ``[N, C / L, OH, OW, L]`` (channel blocks of ``L`` lanes, innermost).

    The parameters are those of :func:`expand_depthwise_te`, plus the depthwise conv's bias
    ``b2`` (``[C]``) and activation ``depthwise_acts``. The kernel writes each output pixel's
    ``L`` channels as one vector (NCHW output would need a transpose of every register tile);
    :func:`blocked_pointwise_te` reads this layout.
    """
    padded = _padded_expansion(data, w1, b1, acts, padding, expand_stride, expand_padding)
    n, blocks, _, _, lanes = (int(s) for s in padded.shape)
    _, kh, kw, _ = (int(s) for s in w2.shape)
    oh, ow = _output_size(data, w1, w2, stride, padding, expand_stride, expand_padding)
    sy, sx = stride
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    depthwise = te.compute(
        (n, blocks, oh, ow, lanes),
        lambda b, co, oy, ox, ci: te.sum(
            padded[b, co, oy * sy + ry, ox * sx + rx, ci] * w2[co, ry, rx, ci], axis=[ry, rx]
        ),
        name=BLOCK_PREFIX + "depthwise",
    )
    return te.compute(
        depthwise.shape,
        lambda b, co, y, x, ci: evaluate_activation(
            depthwise_acts, depthwise[b, co, y, x, ci] + b2[co * lanes + ci]),
        name=BLOCK_PREFIX + "epilogue",
    )


def blocked_pointwise_te(data, weight):
    """TE compute of a 1x1 conv (stride 1, no padding, no bias) whose input is in the blocked
    layout of :func:`expand_depthwise_blocked_te`: ``data`` ``[N, K / L, H, W, L]``, ``weight``
    ``[F, K, 1, 1]``; returns NCHW ``[N, F, H, W]``. The CPU conv2d rule
    (:class:`compiler.lower.schedules.conv2d.Conv2d`) schedules it like any 1x1 conv."""
    n, _, h, w, lanes = (int(s) for s in data.shape)
    f, k = int(weight.shape[0]), int(weight.shape[1])
    rk = te.reduce_axis((0, k), name="rk")
    return te.compute(
        (n, f, h, w),
        lambda b, o, y, x: te.sum(data[b, rk // lanes, y, x, rk % lanes] * weight[o, rk, 0, 0],
                                  axis=rk),
        name=POINTWISE_BLOCK,
    )


def evaluate_activation(tree: Activation, value):
    """The TIR expression of ``tree`` applied to ``value`` (a float32 PrimExpr). Sigmoid stays
    ``T.sigmoid``, which :mod:`compiler.lower.schedules.fast_math` makes vectorizable."""
    kind = tree[0]
    if kind == "x":
        return value
    if kind == "const":
        return tirx.const(tree[1], "float32")
    if kind == "sigmoid":
        return tirx.sigmoid(evaluate_activation(tree[1], value))
    a, b = evaluate_activation(tree[1], value), evaluate_activation(tree[2], value)
    if kind == "max":
        return te.max(a, b)
    if kind == "min":
        return te.min(a, b)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[kind]


def _tree_size(tree: Activation, cap: int) -> int:
    """Nodes of ``tree`` (shared subtrees counted each time), counting stops past ``cap``."""
    count, stack = 0, [tree]
    while stack and count <= cap:
        node = stack.pop()
        count += 1
        stack.extend(t for t in node[1:] if isinstance(t, tuple))
    return count


def pack_expand_weight(w1: np.ndarray, lanes: int) -> np.ndarray:
    """``[C, K, KH, KW]`` -> ``[C / L, K, KH, KW, L]``: each block's channels innermost."""
    c, k, kh, kw = w1.shape
    return np.ascontiguousarray(w1.reshape(c // lanes, lanes, k, kh, kw).transpose(0, 2, 3, 4, 1))


def pack_depthwise_weight(w2: np.ndarray, lanes: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[C / L, KH, KW, L]``."""
    c, _, kh, kw = w2.shape
    return np.ascontiguousarray(w2.reshape(c // lanes, lanes, kh, kw).transpose(0, 2, 3, 1))


@dataclass
class _Match:
    data: Any  # the expansion conv's input (an original Relax var or expr)
    w1: np.ndarray
    b1: np.ndarray
    acts: Activation
    w2: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    expand_stride: tuple[int, int]
    expand_padding: tuple[int, int, int, int]


@dataclass
class _Projection:
    """A matched chain followed by the depthwise conv's bias and activation and a 1x1 conv."""

    chain: _Match
    depthwise: Any  # the variable bound to the depthwise conv (rewritten with the projection)
    b2: np.ndarray
    acts: Activation
    w3: np.ndarray  # [F, C, 1, 1]


def _float32(expr) -> bool:
    return isinstance(expr.ty, relax.TensorType) and expr.ty.dtype == "float32"


def _plain_nchw(attrs) -> bool:
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    return ((attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NCHW", "OIHW", "NCHW")
            and out_dtype in ("", "void", "float32")
            and [int(d) for d in attrs.dilation] == [1, 1])


def _scalar_const(expr) -> float | None:
    if isinstance(expr, tvm.tirx.FloatImm | tvm.tirx.IntImm):
        return float(expr.value)
    if is_const(expr) and const_array(expr).size == 1:
        return float(const_array(expr).reshape(()))
    return None


class _Matcher:
    """Finds the chains of one Relax function (see the module docstring)."""

    def __init__(self, mod, func, lanes: int) -> None:

        self.mod = mod
        self.lanes = lanes
        self.bound: dict[Any, Any] = {}
        self.uses: dict[Any, int] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.bound[binding.var] = binding.value
                self._count(binding.value)  # MatchCast bindings use their value too
        self._count(func.body.body)

    def _count(self, expr) -> None:

        for v in relax.analysis.free_vars(expr):
            self.uses[v] = self.uses.get(v, 0) + 1

    def _single_producer(self, var):
        """The value bound to ``var`` if ``var`` is a binding used exactly once, else None."""

        if not isinstance(var, relax.Var) or self.uses.get(var, 0) != 1:
            return None
        return self.bound.get(var)

    def _source(self, var, channels: int):
        """``(conv call, bias)`` when ``var`` is the expansion conv's output, with or without a
        constant bias added (then only the conv output must be used once), else None."""
        value = self.bound.get(var)
        if value is None:
            return None
        bias = np.zeros(channels, np.float32)
        if op_name(value) == "relax.add":
            a, b = value.args
            if is_const(a):
                a, b = b, a
            conv = self._single_producer(a)
            if (conv is None or op_name(conv) != "relax.nn.conv2d" or not is_const(b)
                    or not _float32(b)):
                return None
            bv = const_array(b)
            if bv.size == 1:
                bias[:] = bv.reshape(())
            elif bv.shape in ((channels, 1, 1), (1, channels, 1, 1)):  # one per channel
                bias = bv.reshape(channels).astype(np.float32)
            else:
                return None
            value = conv
        if op_name(value) != "relax.nn.conv2d" or not _plain_nchw(value.attrs):
            return None
        return value, bias

    def _activation(self, expr, shape, state) -> Activation | None:
        """The tree of ``expr`` (see :data:`Activation`), recording in ``state`` the source and
        how often each variable was reached; None if ``expr`` is not such an activation."""

        bound = _scalar_const(expr)
        if bound is not None:
            return None if math.isnan(bound) else ("const", bound)
        if not isinstance(expr, relax.Var) or static_shape(expr) != shape:
            return None
        state["reached"][expr] = state["reached"].get(expr, 0) + 1
        if state["reached"][expr] > 1:  # a value used twice (Swish): its tree is known
            return state["trees"].get(expr)
        if len(state["reached"]) > MAX_ACTIVATION_NODES:
            return None
        source = self._source(expr, shape[1]) if state["source"] is None else None
        if source is not None:
            state["source"] = (expr, *source)
            tree = IDENTITY
        else:
            call = self.bound.get(expr)
            tree = None if call is None else self._activation_of_call(call, shape, state)
        state["trees"][expr] = tree
        return tree

    def _activation_of_call(self, call, shape, state) -> Activation | None:
        name = op_name(call)
        if name == "relax.call_tir":
            call = relax_op_of_te_call(self.mod, call)  # the importer's Clip: maximum/minimum
            if call is None:
                return None
            name = op_name(call)
        if name in ("relax.nn.relu", "relax.sigmoid", "relax.nn.silu", "relax.clip"):
            arg = self._activation(call.args[0], shape, state)
            if arg is None:
                return None
            if name == "relax.nn.relu":
                return ("max", arg, ("const", 0.0))
            if name == "relax.sigmoid":
                return ("sigmoid", arg)
            if name == "relax.nn.silu":
                return ("mul", arg, ("sigmoid", arg))
            lo, hi = _scalar_const(call.args[1]), _scalar_const(call.args[2])
            if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
                return None
            return ("max", ("min", arg, ("const", hi)), ("const", lo))  # relax.clip's order
        if name in _BINARY_RELAX:
            a = self._activation(call.args[0], shape, state)
            b = None if a is None else self._activation(call.args[1], shape, state)
            if b is None or (a[0] == "const" and b[0] == "const"):
                return None
            return (_BINARY_RELAX[name], a, b)
        return None

    def _activated_conv(self, expr, shape) -> tuple[Activation, Any, np.ndarray] | None:
        """``(activation, conv call, bias)`` when ``expr`` is an activation (at most
        :data:`MAX_ACTIVATION_NODES` nodes) of a conv's output plus an optional constant bias,
        every value in between used only inside the activation; else None."""
        state: dict[str, Any] = {"source": None, "reached": {}, "trees": {}}
        acts = self._activation(expr, shape, state)
        if acts is None or state["source"] is None:
            return None
        if _tree_size(acts, MAX_ACTIVATION_NODES) > MAX_ACTIVATION_NODES:
            return None
        if any(self.uses.get(v, 0) != n for v, n in state["reached"].items()):
            return None
        _, conv, bias = state["source"]
        return acts, conv, bias

    def match(self, call) -> _Match | None:
        if op_name(call) != "relax.nn.conv2d" or not _plain_nchw(call.attrs):
            return None
        e, w2 = call.args
        if not is_const(w2) or not _float32(e) or not _float32(w2):
            return None
        eshape, wshape = static_shape(e), static_shape(w2)
        if eshape is None or wshape is None or len(eshape) != 4:
            return None
        channels = eshape[1]
        if int(call.attrs.groups) != channels or wshape[:2] != (channels, 1):
            return None
        if channels % self.lanes != 0:
            return None
        found = self._activated_conv(e, eshape)
        if found is None:
            return None
        acts, value, bias = found
        x, w1 = value.args
        if not is_const(w1) or not _float32(x) or not _float32(w1):
            return None
        w1shape = static_shape(w1)
        xshape = static_shape(x)
        if (xshape is None or w1shape is None or len(xshape) != 4 or len(w1shape) != 4
                or int(value.attrs.groups) != 1 or w1shape[0] != channels):
            return None
        return _Match(
            data=x,
            w1=pack_expand_weight(const_array(w1), self.lanes),
            b1=bias,
            acts=acts,
            w2=pack_depthwise_weight(const_array(w2), self.lanes),
            stride=tuple(int(s) for s in call.attrs.strides),
            padding=tuple(int(p) for p in call.attrs.padding),
            expand_stride=tuple(int(s) for s in value.attrs.strides),
            expand_padding=tuple(int(p) for p in value.attrs.padding),
        )


    def match_projection(self, call, chains: dict) -> _Projection | None:
        """The chain ``conv2d_1x1(act2(depthwise(..) + b2), w3)`` ending at ``call``, where
        ``depthwise(..)`` is bound to a variable of ``chains`` (variable -> :meth:`match`
        result, for the bindings before ``call``): a 1x1 conv (stride 1, unpadded, groups 1,
        constant weight, at least a vector of output channels) whose input is the depthwise
        conv's output, with or without a constant bias and an activation (each value used only
        by the next step)."""
        if op_name(call) != "relax.nn.conv2d" or not _plain_nchw(call.attrs):
            return None
        a, w3 = call.args
        if not is_const(w3) or not _float32(a) or not _float32(w3) or int(call.attrs.groups) != 1:
            return None
        if ([int(s) for s in call.attrs.strides] != [1, 1]
                or any(int(p) for p in call.attrs.padding)):
            return None
        ashape, wshape = static_shape(a), static_shape(w3)
        if ashape is None or wshape is None or len(ashape) != 4 or len(wshape) != 4:
            return None
        if wshape[1:] != (ashape[1], 1, 1):
            return None
        if wshape[0] < self.lanes:
            # fewer outputs than one vector: in NCHW the projection is vectorized along pixels,
            # which the blocked layout's rows (one pixel's channels) cannot give it
            return None
        found = self._activated_conv(a, ashape)
        if found is None:
            return None
        acts, depthwise, bias = found
        var = next((v for v, m in chains.items()
                    if isinstance(m, _Match) and self.bound[v].same_as(depthwise)), None)
        if var is None:
            return None
        return _Projection(chains[var], var, bias, acts, const_array(w3))


@mutator
class _Rewriter(PyExprMutator):
    """Replaces each planned binding by the fused kernel's ``call_te`` (see the module doc)."""

    def __init__(self, mod: tvm.IRModule, plan: dict) -> None:
        super().__init__(mod)
        self.plan = plan

    def _emit(self, binding, call) -> None:
        if self.builder_.current_block_is_dataflow() and not isinstance(
                binding.var, relax.DataflowVar):
            new_var = self.builder_.emit_output(call)  # the dataflow block's output
        else:
            new_var = self.builder_.emit(call)
        self.set_var_remap(binding.var, new_var)

    def visit_var_binding_(self, binding):
        found = self.plan.get(binding.var)
        if found is None:
            super().visit_var_binding_(binding)
            return
        if isinstance(found, _Projection):
            chain = found.chain
            tile = self.builder_.emit(self.builder_.call_te(
                expand_depthwise_blocked_te,
                self.visit_expr(chain.data),
                relax.const(chain.w1),
                relax.const(chain.b1),
                relax.const(chain.w2),
                relax.const(found.b2),
                chain.acts,
                chain.stride,
                chain.padding,
                chain.expand_stride,
                chain.expand_padding,
                found.acts,
                primfunc_name_hint="expand_depthwise_blocked",
                primfunc_attrs={"op_pattern": 4},
            ))
            self._emit(binding, self.builder_.call_te(
                blocked_pointwise_te,
                tile,
                relax.const(found.w3),
                primfunc_name_hint="blocked_pointwise",
                primfunc_attrs={"op_pattern": 4},  # kOutEWiseFusable: bias, residual add
            ))
            return
        self._emit(binding, self.builder_.call_te(
            expand_depthwise_te,
            self.visit_expr(found.data),
            relax.const(found.w1),
            relax.const(found.b1),
            relax.const(found.w2),
            found.acts,
            found.stride,
            found.padding,
            found.expand_stride,
            found.expand_padding,
            primfunc_name_hint="expand_depthwise",
            primfunc_attrs={"op_pattern": 4},  # kOutEWiseFusable: epilogues fuse after it
        ))


def _plan_function(mod: tvm.IRModule, func: relax.Function, lanes: int,
                   use_blocked: bool) -> dict:
    """Binding var -> the chain (or chain + projection) that replaces it, for one function."""
    matcher = _Matcher(mod, func, lanes)
    plan: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            try:
                found = matcher.match(binding.value)
                if found is None and use_blocked:
                    found = matcher.match_projection(binding.value, plan)
            except Exception as err:  # noqa: BLE001 - an optimization never fails a build
                logger.debug("expand+depthwise: binding not matched: %s", err)
                continue
            if found is not None:
                plan[binding.var] = found
    # depthwise convs rewritten together with their projection
    consumed = [m.depthwise for m in plan.values() if isinstance(m, _Projection)]
    return {v: m for v, m in plan.items() if not any(v.same_as(d) for d in consumed)}


def fuse_expand_depthwise(target=None, enabled: bool = True, blocked: bool = True):
    """Module pass: expansion-conv -> activation -> depthwise-conv chains become one kernel.

    Must run before ``LegalizeOps``. Leaves the module unchanged when disabled (``enabled``
    False), when ``target`` is not an LLVM CPU target (the only one with a schedule for the
    kernel), or when nothing matches. Channel blocks are the target's float32 vector lanes (8
    when ``target`` is None).

    A chain whose depthwise output (after its bias and activation) feeds only a 1x1 conv -- the
    projection of an inverted residual -- becomes two kernels that pass the depthwise output in
    the blocked layout ``[N, C / L, H, W, L]`` (:func:`expand_depthwise_blocked_te`,
    :func:`blocked_pointwise_te`) unless ``blocked`` is False: the depthwise kernel then writes
    whole channel vectors instead of transposing each register tile into NCHW rows, and the 1x1
    conv, which broadcasts its input values, reads either layout at the same cost.
    """
    lanes = cpu_info(target).lanes(32) if target is not None else 8

    @tvm.transform.module_pass(opt_level=0, name="hwcc.FuseExpandDepthwise")
    def rewrite(mod, _ctx):
        if not enabled or (target is not None and not is_cpu_target(target)):
            return mod
        plans = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
                continue
            plan = _plan_function(mod, func, lanes, blocked)
            if plan:
                plans[gv] = plan
        if not plans:
            return mod
        try:
            rewriter = _Rewriter(mod, {v: m for plan in plans.values() for v, m in plan.items()})
            for gv in plans:
                rewriter.builder_.update_func(gv, rewriter.visit_expr(mod[gv]))
            fused = rewriter.builder_.get()
        except Exception as err:  # noqa: BLE001 - keep the convolutions apart (still correct)
            logger.warning("expansion+depthwise fusion skipped: %s", str(err).strip()[-300:])
            return mod
        found = [m for plan in plans.values() for m in plan.values()]
        logger.info("%d expansion+depthwise conv pairs as one kernel (%d with a blocked "
                    "projection)", len(found), sum(isinstance(m, _Projection) for m in found))
        return relax.transform.DeadCodeElimination()(fused)

    return rewrite
