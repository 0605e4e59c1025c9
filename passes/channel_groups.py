"""Channel dependency analysis for structured pruning (DepGraph-style) on Relax ``main``.

Removing output channel ``k`` of a layer forces removing the matching slice of every tensor and
weight that channel flows into. :func:`analyze` walks ``main``'s bindings once, in order, and
tracks for each tensor which of its axes carries channels and which *channel space* each index
of that axis belongs to. Producers (conv2d, matmul with a constant weight) open a new space; ops
that pass channels through (bias add, ReLU, pooling, reshape/flatten, transpose, concat,
depthwise conv, batched attention matmuls) carry them on; ops that combine two channel-carrying
tensors elementwise (residual add, attention ``Q·K^T`` over heads) *unite* their spaces. The
result is a list of :class:`ChannelGroup`: every (binding, argument, axis, index mapping) that
must shrink together when a unit of the group is removed.

Index mapping. A member says: unit ``k`` of the group owns elements
``[offset + k*width, offset + (k+1)*width)`` of ``axis`` of the constant at argument ``arg`` of the
call bound to ``binding`` (or of the output-shape of a reshape: ``arg == SHAPE``). ``width`` is 1
for a conv channel, ``H*W`` after a flatten into a dense layer, the head size for attention
heads (the unit of a group then is a whole head). Concat members carry offsets.

Handlers. One stateless function per op in :data:`HANDLERS`; an op without a handler *blocks*
every group that reaches it (reason recorded), as do function outputs, grouped convolutions,
normalizations over the channel axis and anything whose index mapping is not a clean block.
Blocked groups are reported, never pruned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import tvm
from tvm import relax

from ._ir import bindings, const_array, is_const, main_function, op_name, static_shape

logger = logging.getLogger(__name__)

#: ``Member.arg`` value for the output shape of a reshape.
SHAPE = -1

#: Roles of members: ``out`` producer weights (their output channels form the group), ``dw``
#: depthwise weights (per-channel, pass-through), ``in`` consumer weights (input channels),
#: ``param`` per-channel constants (biases, scales), ``shape`` reshape targets.
ROLES = ("out", "dw", "in", "param", "shape")


@dataclass(frozen=True)
class Member:
    """One place that shrinks with a group; see the module docstring for the index mapping."""

    binding: str
    arg: int
    axis: int
    offset: int
    width: int
    role: str

    def indices(self, units: list[int] | np.ndarray) -> np.ndarray:
        """Element indices along ``axis`` owned by the given group units."""
        units = np.asarray(units, dtype=np.int64).reshape(-1, 1)
        return (self.offset + units * self.width + np.arange(self.width)).reshape(-1)


@dataclass(frozen=True)
class Activation:
    """A tensor bound in ``main`` that carries the group's channels (for statistics)."""

    binding: str
    op: str
    axis: int
    offset: int
    width: int


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels that must be pruned together.

    Attributes
    ----------
    name
        The binding name of the group's first producer layer.
    size
        Number of prunable units (channels, neurons or heads).
    unit_elems
        Elements of a producer's output axis per unit (1 for channels, head size for heads).
    members
        Every weight slice, per-channel constant and reshape that shrinks with the group.
    activations
        Tensors carrying the group's channels.
    blocked
        Why the group must not be pruned, or None when it may be.
    """

    name: str
    size: int
    unit_elems: int
    members: tuple[Member, ...]
    activations: tuple[Activation, ...]
    blocked: str | None

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned."""
        return self.blocked is None

    def producers(self) -> list[Member]:
        """Members whose weights define the group's units (``out`` and ``dw``)."""
        return [m for m in self.members if m.role in ("out", "dw")]

    def consumers(self) -> list[Member]:
        """Members holding input channels of consumer layers (``in``)."""
        return [m for m in self.members if m.role == "in"]


# --------------------------------------------------------------------------------------------
# Analysis state


@dataclass
class _Space:
    size: int
    origin: str
    members: list = field(default_factory=list)  # (binding, arg, axis, offset, block, role)
    acts: list = field(default_factory=list)  # (binding, op, axis, offset, block)
    blocked: list = field(default_factory=list)


@dataclass(frozen=True)
class Segment:
    """Base units ``k`` of ``space`` own elements ``[offset + k*block, offset + (k+1)*block)``."""

    space: int
    offset: Fraction
    block: Fraction


@dataclass(frozen=True)
class ChanInfo:
    """Which axis of a tensor carries channels and which spaces its indices belong to."""

    axis: int
    segments: tuple[Segment, ...]

    def moved(self, axis: int, scale: Fraction = Fraction(1)) -> ChanInfo:
        """The same segments on another axis, offsets and blocks multiplied by ``scale``."""
        segs = tuple(Segment(s.space, s.offset * scale, s.block * scale) for s in self.segments)
        return ChanInfo(axis, segs)


class Context:
    """What handlers read and write; owns the union-find of channel spaces."""

    def __init__(self) -> None:
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.info: dict = {}  # relax.Var -> ChanInfo

    # union-find ------------------------------------------------------------------------------
    def find(self, s: int) -> int:
        """Root of space ``s``."""
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def new_space(self, size: int, origin: str) -> int:
        """Open a new channel space of ``size`` base units."""
        self.spaces.append(_Space(size, origin))
        self.parent.append(len(self.spaces) - 1)
        return len(self.spaces) - 1

    def union(self, a: int, b: int, where: str) -> None:
        """Couple two spaces (e.g. at a residual add)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self.spaces[ra], self.spaces[rb]
        self.parent[rb] = ra
        sa.members += sb.members
        sa.acts += sb.acts
        sa.blocked += sb.blocked
        if sa.size != sb.size:
            sa.blocked.append(f"coupled spaces of different sizes at '{where}'")

    # recording --------------------------------------------------------------------------------
    def add_member(self, seg: Segment, binding: str, arg: int, axis: int, role: str) -> None:
        """Record that ``seg``'s space owns a slice of (binding, arg) along ``axis``."""
        sp = self.spaces[self.find(seg.space)]
        sp.members.append((binding, arg, axis, seg.offset, seg.block, role))

    def add_members(self, info: ChanInfo, binding: str, arg: int, axis: int, role: str) -> None:
        """:meth:`add_member` for every segment of ``info``."""
        for seg in info.segments:
            self.add_member(seg, binding, arg, axis, role)

    def block(self, info: ChanInfo | None, reason: str) -> None:
        """Mark every space of ``info`` unprunable."""
        if info is None:
            return
        for seg in info.segments:
            self.spaces[self.find(seg.space)].blocked.append(reason)

    def set(self, var: relax.Var, info: ChanInfo | None, op: str) -> None:
        """Record the channel info of ``var`` (and it as an activation of its spaces)."""
        if info is None:
            return
        self.info[var] = info
        for seg in info.segments:
            sp = self.spaces[self.find(seg.space)]
            sp.acts.append((var.name, op, info.axis, seg.offset, seg.block))

    def get(self, expr: relax.Expr) -> ChanInfo | None:
        """Channel info of an argument (None for constants and untracked tensors)."""
        return self.info.get(expr) if isinstance(expr, relax.Var) else None

    def block_args(self, value: relax.Expr, reason: str) -> None:
        """Block every space reaching ``value``'s arguments (recursing into tuples)."""
        if isinstance(value, relax.Var):
            self.block(self.get(value), reason)
        elif isinstance(value, relax.Tuple):
            for f in value.fields:
                self.block_args(f, reason)
        elif isinstance(value, relax.TupleGetItem):
            self.block_args(value.tuple_value, reason)
        elif isinstance(value, relax.Call):
            for a in value.args:
                self.block_args(a, reason)

    def unify(self, a: ChanInfo, b: ChanInfo, where: str) -> bool:
        """Couple two tensors' channels elementwise; False when their layouts differ."""
        if len(a.segments) != len(b.segments):
            return False
        for sa, sb in zip(a.segments, b.segments):
            if sa.offset != sb.offset or sa.block != sb.block:
                return False
        for sa, sb in zip(a.segments, b.segments):
            self.union(sa.space, sb.space, where)
        return True


Handler = Callable[[Context, relax.VarBinding], None]
HANDLERS: dict[str, Handler] = {}


def register(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for the given Relax op names."""

    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def _ndim(expr: relax.Expr) -> int | None:
    shape = static_shape(expr)
    return None if shape is None else len(shape)


# --------------------------------------------------------------------------------------------
# Handlers (stateless: everything they learn goes into the Context)


@register("relax.nn.conv2d")
def _conv2d(ctx: Context, b: relax.VarBinding) -> None:
    call, name = b.value, b.var.name
    x, w = call.args[0], call.args[1]
    xi = ctx.get(x)
    attrs = call.attrs
    if not is_const(w) or str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
        ctx.block(xi, f"conv2d '{name}' has a non-constant weight or a non-NCHW/OIHW layout")
        return
    if str(attrs.out_layout) not in ("NCHW", ""):
        ctx.block(xi, f"conv2d '{name}' has out_layout {attrs.out_layout}")
        return
    wshape = const_array(w).shape
    groups = int(attrs.groups)
    cout, cin = wshape[0], wshape[1] * groups
    if xi is not None and xi.axis != 1:
        ctx.block(xi, f"conv2d '{name}' reads channels on axis {xi.axis}")
        xi = None
    if groups == 1:
        if xi is not None:
            ctx.add_members(xi, name, 1, 1, "in")
        s = ctx.new_space(cout, name)
        ctx.add_member(Segment(s, Fraction(0), Fraction(1)), name, 1, 0, "out")
        ctx.set(b.var, ChanInfo(1, (Segment(s, Fraction(0), Fraction(1)),)), "conv2d")
        return
    if groups == cin and wshape[1] == 1 and cout % cin == 0:  # depthwise, multiplier m
        mult = cout // cin
        if xi is None:
            s = ctx.new_space(cin, name)
            xi = ChanInfo(1, (Segment(s, Fraction(0), Fraction(1)),))
            ctx.block(xi, f"depthwise conv2d '{name}' reads an unprunable tensor")
        out = xi.moved(1, Fraction(mult))
        ctx.add_members(out, name, 1, 0, "dw")
        ctx.set(b.var, out, "conv2d")
        return
    ctx.block(xi, f"grouped conv2d '{name}' (groups={groups}) is not pruned")
    s = ctx.new_space(cout, name)
    info = ChanInfo(1, (Segment(s, Fraction(0), Fraction(1)),))
    ctx.block(info, f"grouped conv2d '{name}' (groups={groups}) is not pruned")
    ctx.set(b.var, info, "conv2d")


@register("relax.matmul")
def _matmul(ctx: Context, b: relax.VarBinding) -> None:
    call, name = b.value, b.var.name
    a, w = call.args[0], call.args[1]
    ai, wi = ctx.get(a), ctx.get(w)
    nd_a, nd_out = _ndim(a), _ndim(b.var)
    if is_const(w) and const_array(w).ndim == 2 and nd_a is not None and nd_a >= 2:
        if ai is not None:
            if ai.axis != nd_a - 1:
                ctx.block(ai, f"matmul '{name}' reads channels on a batch axis")
            else:
                ctx.add_members(ai, name, 1, 0, "in")
        s = ctx.new_space(const_array(w).shape[1], name)
        seg = Segment(s, Fraction(0), Fraction(1))
        ctx.add_member(seg, name, 1, 1, "out")
        ctx.set(b.var, ChanInfo(nd_out - 1, (seg,)), "matmul")
        return
    if is_const(a) or is_const(w) or nd_a is None or _ndim(w) is None or nd_out is None:
        ctx.block_args(call, f"matmul '{name}' with this operand form is not handled")
        return
    nd_w = _ndim(w)
    # Batched matmul of two activations (attention): channels on batch axes pass through.
    out_infos = []
    for info, nd, row_axis in ((ai, nd_a, nd_a - 2), (wi, nd_w, None)):
        if info is None:
            out_infos.append(None)
            continue
        if info.axis < nd - 2:
            out_infos.append(info.moved(info.axis + nd_out - nd))
        elif row_axis is not None and info.axis == row_axis:
            out_infos.append(info.moved(nd_out - 2))
        elif row_axis is None and info.axis == nd - 1:
            out_infos.append(info.moved(nd_out - 1))
        else:
            ctx.block(info, f"matmul '{name}' contracts over a channel axis")
            out_infos.append(None)
    oa, ow = out_infos
    if oa is not None and ow is not None and (oa.axis != ow.axis or not ctx.unify(oa, ow, name)):
        ctx.block(oa, f"matmul '{name}' mixes channel layouts")
        ctx.block(ow, f"matmul '{name}' mixes channel layouts")
        return
    ctx.set(b.var, oa or ow, "matmul")


_UNARY = (
    "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid",
    "relax.tanh", "relax.erf", "relax.exp", "relax.negative", "relax.abs", "relax.sqrt",
    "relax.clip", "relax.nn.leakyrelu", "relax.nn.dropout", "relax.square", "relax.nn.selu",
)  # fmt: skip


@register(*_UNARY)
def _unary(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    for a in b.value.args[1:]:
        ctx.block_args(a, f"'{b.var.name}' uses a channel tensor as a parameter")
    ctx.set(b.var, info, op_name(b.value).split(".")[-1])


@register(
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power",
)  # fmt: skip
def _binary(ctx: Context, b: relax.VarBinding) -> None:
    call, name = b.value, b.var.name
    out_shape = static_shape(b.var)
    if out_shape is None:
        ctx.block_args(call, f"'{name}' has a dynamic shape")
        return
    nd = len(out_shape)
    infos = []
    for arg in call.args:
        info = ctx.get(arg)
        shape = static_shape(arg)
        if info is not None and shape is not None:
            info = info.moved(info.axis + nd - len(shape))
        infos.append(info)
    tracked = [i for i in infos if i is not None]
    if not tracked:
        return
    out = tracked[0]
    if len(tracked) == 2 and (out.axis != tracked[1].axis or not ctx.unify(out, tracked[1], name)):
        ctx.block(tracked[0], f"'{name}' combines tensors with different channel layouts")
        ctx.block(tracked[1], f"'{name}' combines tensors with different channel layouts")
        return
    for i, (arg, info) in enumerate(zip(call.args, infos)):
        if info is not None:
            continue
        shape = static_shape(arg)
        if shape is None:
            ctx.block(out, f"'{name}' combines channels with a tensor of unknown shape")
            return
        full = (1,) * (nd - len(shape)) + tuple(shape)
        if full[out.axis] == 1:
            continue
        if not is_const(arg):
            ctx.block(out, f"'{name}' couples channels with an unprunable tensor")
            return
        ctx.add_members(out, name, i, out.axis - (nd - len(shape)), "param")
    ctx.set(b.var, out, op_name(call).split(".")[-1])


@register("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
def _pool(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    layout = str(b.value.attrs.layout)
    if info is not None and (layout != "NCHW" or info.axis != 1):
        ctx.block(info, f"pool '{b.var.name}' with layout {layout} on channel axis {info.axis}")
        return
    ctx.set(b.var, info, "pool")


@register("relax.mean", "relax.sum", "relax.max", "relax.min")
def _reduce(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    nd = _ndim(b.value.args[0])
    if info is None or nd is None:
        return
    axes = b.value.attrs.axis
    axes = list(range(nd)) if axes is None else [int(a) % nd for a in axes]
    if info.axis in axes:
        ctx.block(info, f"reduction '{b.var.name}' over the channel axis")
        return
    shift = 0 if bool(b.value.attrs.keepdims) else sum(a < info.axis for a in axes)
    ctx.set(b.var, info.moved(info.axis - shift), "reduce")


@register("relax.nn.softmax", "relax.nn.log_softmax")
def _softmax(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    nd = _ndim(b.value.args[0])
    if info is not None and nd is not None and int(b.value.attrs.axis) % nd == info.axis:
        ctx.block(info, f"softmax '{b.var.name}' normalizes over the channel axis")
        return
    ctx.set(b.var, info, "softmax")


@register("relax.nn.layer_norm", "relax.nn.rms_norm", "relax.nn.group_norm")
def _norm(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    nd = _ndim(b.value.args[0])
    axes = getattr(b.value.attrs, "axes", None)
    if info is None:
        return
    if axes is None or nd is None or info.axis in [int(a) % nd for a in axes]:
        ctx.block(info, f"normalization '{b.var.name}' over the channel axis")
        return
    if op_name(b.value) == "relax.nn.group_norm":
        ctx.block(info, f"group_norm '{b.var.name}'")
        return
    ctx.set(b.var, info, "norm")


@register("relax.permute_dims")
def _permute(ctx: Context, b: relax.VarBinding) -> None:
    info = ctx.get(b.value.args[0])
    nd = _ndim(b.value.args[0])
    if info is None or nd is None:
        return
    axes = b.value.attrs.axes
    axes = list(reversed(range(nd))) if axes is None else [int(a) % nd for a in axes]
    ctx.set(b.var, info.moved(axes.index(info.axis)), "permute_dims")


@register("relax.reshape")
def _reshape(ctx: Context, b: relax.VarBinding) -> None:
    name = b.var.name
    x = b.value.args[0]
    info = ctx.get(x)
    src, dst = static_shape(x), static_shape(b.var)
    if info is None:
        return
    if src is None or dst is None:
        ctx.block(info, f"reshape '{name}' has a dynamic shape")
        return
    mapped = _map_reshape(src, dst, info.axis)
    if mapped is None:
        ctx.block(info, f"reshape '{name}' {src} -> {dst} mixes the channel axis with others")
        return
    axis, scale = mapped
    out = info.moved(axis, scale)
    ctx.add_members(out, name, SHAPE, axis, "shape")
    ctx.set(b.var, out, "reshape")


def _map_reshape(src: tuple, dst: tuple, axis: int) -> tuple[int, Fraction] | None:
    """Where channel axis ``axis`` of ``src`` lands in ``dst``, and how indices scale.

    Handled: the axis kept as is, merged with the axes after it (flatten: scale = product of
    the merged trailing sizes) or split with the channel index on the leading part (heads:
    scale = 1 / product of the trailing parts). Anything else returns None.
    """
    pre = math.prod(src[:axis])
    size = src[axis]
    acc = 1
    for j, d in enumerate(dst):
        if acc == pre and d == 1 and size != 1:
            continue  # a unit axis before the channel axis
        if acc == pre:
            if d == size:
                return j, Fraction(1)
            if d > size and d % size == 0:  # merged with trailing axes
                trail, k = 1, axis + 1
                while k < len(src) and size * trail < d:
                    trail *= src[k]
                    k += 1
                return (j, Fraction(trail)) if size * trail == d else None
            if d < size and size % d == 0:  # split: channel index on the leading part
                rest, k = 1, j + 1
                while k < len(dst) and d * rest < size:
                    rest *= dst[k]
                    k += 1
                return (j, Fraction(1, rest)) if d * rest == size else None
            return None
        if acc > pre:
            return None
        acc *= d
    return None


@register("relax.concat")
def _concat(ctx: Context, b: relax.VarBinding) -> None:
    name = b.var.name
    fields = b.value.args[0]
    if not isinstance(fields, relax.Tuple):
        ctx.block_args(b.value, f"concat '{name}' of a non-literal tuple")
        return
    nd = _ndim(b.var)
    axis = int(b.value.attrs.axis) % nd
    segs, offset = [], 0
    for f in fields.fields:
        info = ctx.get(f)
        shape = static_shape(f)
        if info is not None and info.axis != axis:
            ctx.block_args(fields, f"concat '{name}' along a non-channel axis")
            return
        if info is not None:
            segs += [Segment(s.space, s.offset + offset, s.block) for s in info.segments]
        offset += shape[axis]
    if segs:
        ctx.set(b.var, ChanInfo(axis, tuple(segs)), "concat")


# --------------------------------------------------------------------------------------------


def _finish(ctx: Context, root: int) -> ChannelGroup:
    sp = ctx.spaces[root]
    blocked = list(dict.fromkeys(sp.blocked))
    fracs = [m[4] for m in sp.members] + [a[4] for a in sp.acts]
    q = 1
    for f in fracs:
        q = math.lcm(q, f.denominator)
    members, acts = [], []
    if sp.size % q:
        blocked.append(f"{sp.size} channels do not split into units of {q}")
        q = 1
    for bname, arg, axis, off, blk, role in sp.members:
        if off.denominator != 1 or (blk * q).denominator != 1:
            blocked.append(f"'{bname}' maps channels to fractional elements")
            continue
        members.append(Member(bname, arg, axis, int(off), int(blk * q), role))
    for bname, op, axis, off, blk in sp.acts:
        if off.denominator == 1 and (blk * q).denominator == 1:
            acts.append(Activation(bname, op, axis, int(off), int(blk * q)))
    producers = [m for m in members if m.role in ("out", "dw")]
    unit_elems = producers[0].width if producers else q
    return ChannelGroup(
        name=sp.origin,
        size=sp.size // q,
        unit_elems=unit_elems,
        members=tuple(dict.fromkeys(members)),
        activations=tuple(dict.fromkeys(acts)),
        blocked="; ".join(blocked) if blocked else None,
    )


def analyze(mod: tvm.IRModule) -> list[ChannelGroup]:
    """Build the channel groups of ``mod``'s ``main`` (one walk over its bindings).

    Returns
    -------
    list[ChannelGroup]
        Every group, prunable or not (``blocked`` says why not), in order of first producer.
    """
    func = main_function(mod)
    ctx = Context()
    for b in bindings(func):
        value = b.value
        if isinstance(value, relax.Var):
            ctx.set(b.var, ctx.get(value), "alias")
            continue
        name = op_name(value)
        handler = HANDLERS.get(name) if name else None
        if handler is None:
            kind = name or type(value).__name__
            ctx.block_args(value, f"reaches '{b.var.name}' ({kind}), which has no handler")
            continue
        handler(ctx, b)
    ctx.block_args(func.body.body, "reaches the model output")
    roots = list(dict.fromkeys(ctx.find(i) for i in range(len(ctx.spaces))))
    groups = [_finish(ctx, r) for r in roots]
    for g in groups:
        logger.debug("group %s: %d units, blocked=%s", g.name, g.size, g.blocked)
    return groups
