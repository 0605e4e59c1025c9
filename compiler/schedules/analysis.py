"""Pattern matching of TIR blocks for the default CPU schedules.

A *contraction* is a reduction block of the form ``C[s...] = C[s...] + A[...] * B[...]`` with
``C[s...] = 0`` as init, where every index of ``C`` is one spatial block iterator. Matmul,
batch-matmul, conv2d and depthwise conv2d all legalize to it; the rules tell them apart by which
iterators each operand's indices use.
"""

from __future__ import annotations

import logging
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

    def uses(self, var: tirx.Var) -> bool:
        """Whether any index of this operand depends on ``var``."""
        return any(var in u for u in self.used)

    def dims_of(self, var: tirx.Var) -> list[int]:
        """Positions of the indices that depend on ``var``."""
        return [i for i, u in enumerate(self.used) if var in u]


@dataclass
class Contraction:
    """A matched ``C += A * B`` block (see module docstring)."""

    info: SBlockInfo
    out: tirx.Buffer
    out_vars: list[tirx.Var]
    spatial: list[tirx.Var]
    reduce: list[tirx.Var]
    extents: dict[tirx.Var, int]
    operands: tuple[Operand, Operand]

    @property
    def block(self) -> SBlockRV:
        """The block's schedule handle."""
        return self.info.block_rv

    def loop_of(self, var: tirx.Var):
        """The loop (LoopRV) bound to block iterator ``var``."""
        for it in self.info.iters:
            if it.var.same_as(var):
                return it.loop_rv
        raise KeyError(var)


def _vars_in(expr: tirx.PrimExpr) -> set[tirx.Var]:
    return set(tirx.analysis.undefined_vars(expr))


def _is_zero(expr: tirx.PrimExpr) -> bool:
    return isinstance(expr, (tirx.FloatImm, tirx.IntImm)) and float(expr.value) == 0.0


def _same_indices(a: list[tirx.PrimExpr], b: list[tirx.PrimExpr]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b))


def block_infos(sch: Schedule) -> list[SBlockInfo] | None:
    """Normalized blocks of the schedule's function (one loop per block iterator), or None."""
    return normalize_prim_func(sch)


def match_contraction(sch: Schedule, info: SBlockInfo, dtype: str = "float32") -> Contraction | None:
    """Match ``info`` against ``C[s] = C[s] + A[..] * B[..]`` with static extents.

    Returns None unless: the block has a zero init, the output indices are distinct spatial
    iterators covering all spatial iterators, all extents are static, every iterator is bound
    to its own loop, and all three buffers have dtype ``dtype``.
    """
    block = sch.get(info.block_rv)
    if block.init is None or not isinstance(block.init, tirx.BufferStore):
        return None
    store = block.body
    if not isinstance(store, tirx.BufferStore) or store.buffer.dtype != dtype:
        return None
    if not (block.init.buffer.same_as(store.buffer) and _is_zero(block.init.value)):
        return None
    if any(it.kind not in ("S", "R") for it in info.iters):
        return None
    if any(not isinstance(it.dom, int) for it in info.iters):
        return None
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = value.a, value.b
    if not isinstance(acc, tirx.BufferLoad):
        acc, prod = prod, acc
    if not (
        isinstance(acc, tirx.BufferLoad)
        and acc.buffer.same_as(store.buffer)
        and _same_indices(list(acc.indices), list(store.indices))
        and isinstance(prod, tirx.Mul)
        and isinstance(prod.a, tirx.BufferLoad)
        and isinstance(prod.b, tirx.BufferLoad)
    ):
        return None
    spatial = [it.var for it in info.iters if it.kind == "S"]
    reduce = [it.var for it in info.iters if it.kind == "R"]
    out_vars = list(store.indices)
    if not all(isinstance(v, tirx.Var) for v in out_vars):
        return None
    if len({id(v) for v in out_vars}) != len(out_vars) or len(out_vars) != len(spatial):
        return None
    if not all(any(v.same_as(s) for s in spatial) for v in out_vars):
        return None
    operands = []
    for load in (prod.a, prod.b):
        if load.buffer.dtype != dtype or load.buffer.same_as(store.buffer):
            return None
        indices = list(load.indices)
        operands.append(Operand(load.buffer, indices, [_vars_in(i) for i in indices]))
    extents = {it.var: int(it.dom) for it in info.iters}
    return Contraction(info, store.buffer, out_vars, spatial, reduce, extents, tuple(operands))


def param_index(func: tirx.PrimFunc, buffer: tirx.Buffer) -> int | None:
    """Position of ``buffer`` among the function's parameters, or None if it is not one."""
    for i, param in enumerate(func.params):
        buf = func.buffer_map.get(param, None)
        if buf is not None and buf.same_as(buffer):
            return i
    return None


def is_plain(index: tirx.PrimExpr, var: tirx.Var) -> bool:
    """Whether ``index`` is exactly ``var``."""
    return isinstance(index, tirx.Var) and index.same_as(var)


def packed_factor(operand: Operand, var: tirx.Var) -> int | None:
    """If ``operand`` is packed along ``var`` as ``[.., var // c, .., var % c]``, return ``c``."""
    last = operand.indices[-1]
    if not (
        isinstance(last, tirx.FloorMod)
        and is_plain(last.a, var)
        and isinstance(last.b, tirx.IntImm)
    ):
        return None
    factor = int(last.b.value)
    for index in operand.indices[:-1]:
        if (
            isinstance(index, tirx.FloorDiv)
            and is_plain(index.a, var)
            and isinstance(index.b, tirx.IntImm)
            and int(index.b.value) == factor
        ):
            return factor
    return None


def static_shape(buffer: tirx.Buffer) -> list[int] | None:
    """The buffer's shape as ints, or None if any dimension is symbolic."""
    dims = []
    for d in buffer.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d.value))
    return dims
