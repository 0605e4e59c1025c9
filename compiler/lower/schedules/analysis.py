"""Pattern matching of TIR blocks for the default CPU schedules.

A *contraction* is a reduction block of the form ``C[s...] = C[s...] + A[...] * B[...]`` with
``C[s...] = 0`` as init, where every index of ``C`` is one spatial block iterator. Matmul,
batch-matmul, conv2d and depthwise conv2d all legalize to it; the rules tell them apart by which
iterators each operand's indices use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.schedule import SBlockRV

logger = logging.getLogger(__name__)


@dataclass
class Operand:
    """One input of a contraction: the buffer, its index expressions, the vars they use."""

    buffer: tirx.Buffer
    indices: list[tirx.PrimExpr]
    used: list[set[tirx.Var]]

    def uses(self, var: tirx.Var | None) -> bool:
        """Whether any index of this operand depends on ``var`` (never for a unit dim)."""
        return var is not None and any(var in u for u in self.used)

    def dims_of(self, var: tirx.Var) -> list[int]:
        """Positions of the indices that depend on ``var``."""
        return [i for i, u in enumerate(self.used) if var in u]


@dataclass
class Contraction:
    """A matched ``C += A * B`` block (see module docstring)."""

    info: SBlockInfo
    out: tirx.Buffer
    out_vars: list[tirx.Var | None]
    spatial: list[tirx.Var]
    reduce: list[tirx.Var]
    extents: dict[tirx.Var, int | None]
    operands: tuple[Operand, Operand]

    @property
    def block(self) -> SBlockRV:
        """The block's schedule handle."""
        return self.info.block_rv

    def loop_of(self, var: tirx.Var | None):
        """The loop (LoopRV) bound to block iterator ``var``, None for a unit iterator."""
        if var is None:
            return None
        for it in self.info.iters:
            if it.var.same_as(var):
                return it.loop_rv
        if self.extents.get(var, 0) == 1:
            return None
        raise KeyError(var)

    def extent(self, var: tirx.Var | None) -> int | None:
        """Extent of block iterator ``var`` (1 for a unit dimension, None if symbolic)."""
        return 1 if var is None else self.extents[var]

    def is_static(self) -> bool:
        """Whether every iterator has a static extent."""
        return all(e is not None for e in self.extents.values())


_LOAD = type(tirx.BufferLoad(tirx.decl_buffer((1,), "float32"), [tirx.IntImm("int32", 0)]))


def is_load(expr: tirx.PrimExpr) -> bool:
    """Whether ``expr`` is a buffer load (``TensorLoad`` in TVM 0.27)."""
    return isinstance(expr, _LOAD)


def load_buffer(load: tirx.PrimExpr) -> tirx.Buffer:
    """The buffer a load reads (``source`` in TVM 0.27, ``buffer`` before)."""
    return load.source if hasattr(load, "source") else load.buffer


def region_buffer(region) -> tirx.Buffer:
    """The buffer of a read/write region (``source`` in TVM 0.27, ``buffer`` before)."""
    return region.source if hasattr(region, "source") else region.buffer


def _vars_in(expr: tirx.PrimExpr) -> set[tirx.Var]:
    return set(tirx.analysis.undefined_vars(expr))


def _is_zero(expr: tirx.PrimExpr) -> bool:
    return isinstance(expr, (tirx.FloatImm, tirx.IntImm)) and float(expr.value) == 0.0


def same_indices(a: list[tirx.PrimExpr], b: list[tirx.PrimExpr]) -> bool:
    """Whether two index lists are the same variables / equal integer constants."""
    return len(a) == len(b) and all(
        x.same_as(y)
        or (isinstance(x, tirx.IntImm) and isinstance(y, tirx.IntImm) and x.value == y.value)
        for x, y in zip(a, b)
    )


def block_infos(sch: Schedule) -> list[SBlockInfo] | None:
    """Normalized blocks of the schedule's function (one loop per block iterator), or None."""
    return normalize_prim_func(sch)


def match_contraction(
    sch: Schedule,
    info: SBlockInfo,
    dtype: str = "float32",
    operand_dtypes: tuple[str, ...] | None = None,
    unwrap: Callable[[tirx.PrimExpr], tirx.PrimExpr | None] | None = None,
) -> Contraction | None:
    """Match ``info`` against ``C[s] = C[s] + A[..] * B[..]`` (extents may be symbolic).

    Returns None unless: the block has a zero init, the output indices are distinct spatial
    iterators covering all spatial iterators, every iterator (but unit ones) is bound
    to its own loop, ``C`` has dtype ``dtype`` and ``A``, ``B`` one of ``operand_dtypes``
    (default: ``dtype``). ``unwrap`` maps each factor of the product to the load it reads
    (e.g. through a cast) or None; by default a factor must be a plain load.
    """
    block = sch.get(info.block_rv)
    if block.init is None or not isinstance(block.init, tirx.BufferStore):
        return None
    store = block.body
    if not isinstance(store, tirx.BufferStore) or store.buffer.dtype != dtype:
        return None
    if not (block.init.buffer.same_as(store.buffer) and _is_zero(block.init.value)):
        return None
    spatial, reduce, extents = [], [], {}
    for iv in block.iter_vars:
        ext = iv.dom.extent
        extents[iv.var] = int(ext.value) if isinstance(ext, tirx.IntImm) else None
        if iv.iter_type == tirx.IterVar.DataPar:
            spatial.append(iv.var)
        elif iv.iter_type == tirx.IterVar.CommReduce:
            reduce.append(iv.var)
        else:
            return None
    looped = [it.var for it in info.iters]
    for iv in block.iter_vars:
        if not any(v.same_as(iv.var) for v in looped) and extents[iv.var] != 1:
            return None
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = value.a, value.b
    if not isinstance(acc, _LOAD):
        acc, prod = prod, acc
    if not (
        isinstance(acc, _LOAD)
        and load_buffer(acc).same_as(store.buffer)
        and same_indices(list(acc.indices), list(store.indices))
        and isinstance(prod, tirx.Mul)
    ):
        return None
    unwrap = unwrap or (lambda e: e if isinstance(e, _LOAD) else None)
    loads = (unwrap(prod.a), unwrap(prod.b))
    if loads[0] is None or loads[1] is None:
        return None
    out_vars: list[tirx.Var | None] = []
    for dim, index in zip(store.buffer.shape, store.indices):
        if isinstance(index, tirx.Var):
            out_vars.append(index)
        elif _is_zero(index) and isinstance(dim, tirx.IntImm) and int(dim.value) == 1:
            out_vars.append(None)  # unit dimension (normalization drops unit iterators)
        else:
            return None
    named = [v for v in out_vars if v is not None]
    if len(named) != len(spatial) or not all(any(v.same_as(s) for s in spatial) for v in named):
        return None
    operands = []
    for load in loads:
        buf = load_buffer(load)
        if buf.dtype not in (operand_dtypes or (dtype,)) or buf.same_as(store.buffer):
            return None
        indices = list(load.indices)
        operands.append(Operand(buf, indices, [_vars_in(i) for i in indices]))
    return Contraction(info, store.buffer, out_vars, spatial, reduce, extents, tuple(operands))


def param_index(func: tirx.PrimFunc, buffer: tirx.Buffer) -> int | None:
    """Position of ``buffer`` among the function's parameters, or None if it is not one."""
    buffer_map = getattr(func, "buffer_map", None)
    for i, param in enumerate(func.params):
        buf = buffer_map.get(param, None) if buffer_map is not None else param
        if buf is not None and buf.same_as(buffer):
            return i
    return None


def is_plain(index: tirx.PrimExpr, var: tirx.Var) -> bool:
    """Whether ``index`` is exactly ``var``."""
    return isinstance(index, tirx.Var) and index.same_as(var)


def packed_factor(operand: Operand, var: tirx.Var, ndim: int) -> int | None:
    """Vector block ``c`` if ``operand`` is packed with ``var`` innermost, else None.

    Recognizes ``[.., var // c, .., var % c]`` and the forms the simplifier leaves when the
    extent of ``var`` equals ``c`` (``[0, .., var]``): the last index is ``var`` or ``var % c``,
    and no other index uses ``var`` except ``var // c``. The operand must have ``ndim`` dims
    (packing adds one), which tells a packed ``[0, k, n]`` from a plain ``[k, n]``.
    """
    if len(operand.indices) != ndim:
        return None
    last = operand.indices[-1]
    if (
        isinstance(last, tirx.FloorMod)
        and is_plain(last.a, var)
        and isinstance(last.b, tirx.IntImm)
    ):
        factor = int(last.b.value)
    elif is_plain(last, var):
        dim = operand.buffer.shape[len(operand.buffer.shape) - 1]
        if not isinstance(dim, tirx.IntImm):
            return None
        factor = int(dim.value)
    else:
        return None
    if len(operand.indices) < 2:
        return None
    for index in operand.indices[:-1]:
        if not any(v.same_as(var) for v in _vars_in(index)):
            continue
        if not (
            isinstance(index, tirx.FloorDiv)
            and is_plain(index.a, var)
            and isinstance(index.b, tirx.IntImm)
            and int(index.b.value) == factor
        ):
            return None
    return factor


def static_shape(buffer: tirx.Buffer) -> list[int] | None:
    """The buffer's shape as ints, or None if any dimension is symbolic."""
    dims = []
    for d in buffer.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d.value))
    return dims
