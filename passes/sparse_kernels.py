"""Block-sparse (BSR) matmul / conv kernels over constant sparsity patterns, as TIR.

TVM removed its sparse operators in v0.20; :mod:`passes.sparsify` brings them back with the
kernels of this module. The sparsity pattern of a weight is known when the kernel is generated,
so every kernel here is specialised to its layer: all extents, the number of non-zero blocks and
the block shape are compile-time constants, and the pattern (``data``, ``xoff``, ``indptr``) is
passed as constants of the Relax module.

Computation (one kernel for dense layers, 1×1 convs and stride-1 k×k convs)::

    Y[b, n, m] = Σ_{k : W[n, k] ≠ 0}  W[n, k] · X[b, koff[k] + m]        m < M

``W`` is the (N, K) weight matrix (output features × input features) stored as BSR with
``R × C`` blocks; ``X`` is the input flattened per batch item and ``koff[k]`` the offset of input
feature ``k``'s row in it:

* dense layer ``y = x W`` on ``M`` rows: ``X = xᵀ`` (K, M) flattened, ``koff[k] = k·M``;
* 1×1 conv, NCHW: ``X = x[b]`` (C, H·W) as it is, ``koff[c] = c·H·W``;
* k×k conv with stride 1 on the zero-padded input ``(C, Hp, Wp)``: the flat-shift trick — the
  output is computed on ``Ho × Wp`` positions (columns ``≥ Wo`` are dropped afterwards) and input
  feature ``(c, i, j)`` reads ``koff = c·Hp·Wp + i·d·Wp + j·d``: a contiguous run of ``M``
  elements, so the kernel is the same as for the dense layer.

Kernel structure (the schedule is written by hand, the PrimFunc is marked
``tirx.is_scheduled`` so hwcc's default rules leave it alone): a parallel loop over
(batch, ``M``-tile, block row); an ``R × MT`` register tile of accumulators; for every non-zero
block of the row, ``C`` rows of ``X`` (``MT`` floats each, vector loads) are multiplied by the
block's ``R × C`` weights (broadcasts) — ``R·C·MT/lanes`` FMAs per block. ``M`` is vectorised
(batch rows of a dense layer, spatial positions of a conv), the block gives register reuse. A
remainder tile handles ``M mod MT``. Per-column offsets are precomputed per non-zero
(``xoff[j, cc] = koff[indices[j]·C + cc]``), so the inner loop has one indirect load per row.

:func:`estimate_ms` is the cost model that :mod:`passes.sparsify` uses to decide sparse vs dense
for a layer; a caller may time both instead (:func:`compiler.lower.timing.time_module`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

logger = logging.getLogger(__name__)

#: PrimFunc attribute naming a kernel of this module (value: a short description).
KERNEL_ATTR = "hwcc.sparse_kernel"
#: PrimFunc attribute with the useful operations of one call (2 per multiply-add of a stored
#: weight): TVM's estimate cannot count loops whose bounds are read from ``indptr``.
FLOPS_ATTR = "hwcc.flops"


@dataclass(frozen=True)
class BSR:
    """A weight matrix (N, K) in block-sparse-row form, with ``R × C`` blocks.

    Attributes
    ----------
    data
        (nnz, R, C) float32 values of the non-zero blocks, row by row.
    indices
        (nnz,) int32 block-column index of each block.
    indptr
        (N / R + 1,) int32 start of each block row in ``data``.
    shape
        (N, K) of the dense matrix.
    block
        (R, C).
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def nnz_blocks(self) -> int:
        """Number of stored (non-zero) blocks."""
        return int(self.indptr[-1])

    @property
    def density(self) -> float:
        """Fraction of blocks stored."""
        r, c = self.block
        total = (self.shape[0] // r) * (self.shape[1] // c)
        return self.nnz_blocks / total if total else 0.0

    def to_dense(self) -> np.ndarray:
        """The dense (N, K) matrix (for tests and references)."""
        r, c = self.block
        out = np.zeros(self.shape, dtype=self.data.dtype)
        for i in range(len(self.indptr) - 1):
            for j in range(self.indptr[i], self.indptr[i + 1]):
                k = int(self.indices[j])
                out[i * r : (i + 1) * r, k * c : (k + 1) * c] = self.data[j]
        return out


def to_bsr(w: np.ndarray, block: tuple[int, int]) -> BSR:
    """BSR form of the (N, K) matrix ``w``; a block is stored when any element is non-zero."""
    r, c = block
    n, k = w.shape
    if n % r or k % c:
        raise ValueError(f"block {r}x{c} does not divide the matrix shape {w.shape}")
    blocks = w.reshape(n // r, r, k // c, c).transpose(0, 2, 1, 3)  # (NB, KB, r, c)
    nz = np.any(blocks != 0, axis=(2, 3))
    rows, cols = np.nonzero(nz)
    indptr = np.zeros(n // r + 1, dtype=np.int32)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    data = np.ascontiguousarray(blocks[rows, cols], dtype=np.float32)
    return BSR(data, cols.astype(np.int32), indptr, (n, k), (r, c))


@dataclass(frozen=True)
class KernelSpec:
    """Everything a generated kernel is specialised to.

    Attributes
    ----------
    batch
        Batch items (``B``).
    length
        Elements of ``X`` per batch item (``L``).
    m
        Output positions per batch item (``M``).
    n_rows
        Output features ``N`` (a multiple of ``R``).
    nnz
        Stored blocks (at least 1: an all-zero weight gets one zero block).
    block
        (R, C).
    tile
        ``MT``, the width of the register tile along ``M`` (a multiple of the vector lanes).
    rows_per_pass
        Rows of a block accumulated at once (a divisor of ``R``; 0: all ``R``). A block taller
        than the accumulator registers (16×1 with 16 AVX2 registers) is done in passes.
    lanes, registers
        fp32 lanes and vector registers of the target (the few-positions kernel's choice and
        its accumulator chains).
    """

    batch: int
    length: int
    m: int
    n_rows: int
    nnz: int
    block: tuple[int, int]
    tile: int
    rows_per_pass: int = 0
    lanes: int = 16
    registers: int = 32

    @property
    def name(self) -> str:
        """Name hint of the PrimFunc."""
        r, c = self.block
        return f"sparse_bsr_{r}x{c}"


def rows_per_pass(block: tuple[int, int], registers: int = 32) -> int:
    """Rows of an ``R × C`` block that :func:`bsr_kernel` accumulates at once: all of them when
    they fit half the vector registers, else the largest divisor of ``R`` that does."""
    r = block[0]
    budget = 16 if registers >= 32 else 12
    return max(d for d in range(1, min(r, budget) + 1) if r % d == 0)


def choose_tile(m: int, block: tuple[int, int], lanes: int, registers: int = 32) -> int:
    """Register-tile width ``MT`` along ``M``: ``R · MT / lanes`` accumulators fill about half the
    vector registers (a power of two of at most 8 vectors per row, no wider than ``M``)."""
    r = rows_per_pass(block, registers)
    budget = 16 if registers >= 32 else 12
    vecs = max(1, min(budget // r, 8, -(-m // lanes)))
    vecs = 1 << (vecs.bit_length() - 1)  # a power of two: LLVM splits 3 vectors badly
    return min(vecs * lanes, m)


#: Independent accumulators of the few-positions kernel (hides the FMA latency).
ROWS_CHAINS = 4
#: Parallel chunks of a kernel's work items. Each chunk allocates its accumulators once (TVM
#: turns a local buffer inside a parallel loop into a workspace allocation per iteration, and
#: scalar bindings into more): per item that cost as much as the arithmetic of a small row.
PARALLEL_CHUNKS = 64


def _chunks(items: int) -> tuple[int, int]:
    """``(chunks, items per chunk)`` splitting ``items`` work items for a parallel loop."""
    p = max(1, min(items, PARALLEL_CHUNKS))
    return p, -(-items // p)


def across_block_rows(m: int, block: tuple[int, int], lanes: int = 16, registers: int = 32) -> bool:
    """Whether the kernel for ``M`` positions vectorises the block's ``R`` rows instead of ``M``:
    when ``M`` is smaller than ``R`` (one to a few rows, e.g. a batch-1 dense layer), vectors
    along ``M`` would be (nearly) scalar, while an ``R × 1`` block's rows are contiguous; and
    at least two accumulator chains of ``M`` × ``R`` fit half the vector registers."""
    r, c = block
    budget = 16 if registers >= 32 else 12
    return c == 1 and m < r and 2 * m * -(-r // lanes) <= budget


def row_chains(m: int, block: tuple[int, int], lanes: int = 16, registers: int = 32) -> int:
    """Accumulator chains of the few-positions kernel: up to :data:`ROWS_CHAINS`, as many as
    half the vector registers hold."""
    budget = 16 if registers >= 32 else 12
    return max(1, min(ROWS_CHAINS, budget // (m * -(-block[0] // lanes))))


def bsr_kernel(spec: KernelSpec) -> tvm.tirx.PrimFunc:
    """The TIR kernel for ``spec`` (see the module docstring), already scheduled.

    Parameters: ``x`` (B, L) float32, ``data`` (nnz, R, C) float32, ``xoff`` (nnz, C) int32,
    ``indptr`` (N/R + 1,) int32; output ``y`` (B, N, M) float32. With
    :func:`across_block_rows`, the accumulators are ``M × R`` vectors along ``R`` instead.
    """
    bsz, length, m, n = (int(v) for v in (spec.batch, spec.length, spec.m, spec.n_rows))
    r, c = (int(v) for v in spec.block)
    if across_block_rows(m, (r, c), spec.lanes, spec.registers):
        return _bsr_kernel_rows(spec)
    nnz, mt = int(spec.nnz), int(spec.tile)
    rs = int(spec.rows_per_pass or r)  # block rows accumulated per pass over a block row
    nb = n // r
    mo = m // mt
    tail = m - mo * mt
    tail_w = max(tail, 1)
    mo_d = max(mo, 1)  # divisor that stays valid when there is no full tile

    pf, qf = _chunks(bsz * mo * nb)  # full tiles: pf parallel chunks of qf work items
    pt, qt = _chunks(bsz * nb)  # remainder tile

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((bsz, length), "float32"),
        data: T.Buffer((nnz, r, c), "float32"),
        xoff: T.Buffer((nnz, c), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        y: T.Buffer((bsz, n, m), "float32"),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True, "op_pattern": 8})
        # work item f: batch f // (mo·nb), block row f // mo % nb, M-tile f % mo (a block row's
        # weights stay in cache over its M-tiles; the activations are the larger operand)
        if mo > 0:
            for p in T.parallel(pf):
                acc = T.alloc_local((rs, mt), "float32")
                for q in T.serial(qf):
                    if p * qf + q < bsz * mo * nb:
                        for rh in T.serial(r // rs):
                            for rr in T.unroll(rs):
                                for v in T.vectorized(mt):
                                    acc[rr, v] = T.float32(0)
                            for j in T.serial(
                                indptr[(p * qf + q) // mo_d % nb],
                                indptr[(p * qf + q) // mo_d % nb + 1],
                            ):
                                for cc in T.unroll(c):
                                    for rr in T.unroll(rs):
                                        for v in T.vectorized(mt):
                                            acc[rr, v] = (
                                                acc[rr, v]
                                                + data[j, rh * rs + rr, cc]
                                                * x[
                                                    (p * qf + q) // (mo_d * nb),
                                                    xoff[j, cc] + (p * qf + q) % mo_d * mt + v,
                                                ]
                                            )
                            for rr in T.unroll(rs):
                                for v in T.vectorized(mt):
                                    y[
                                        (p * qf + q) // (mo_d * nb),
                                        (p * qf + q) // mo_d % nb * r + rh * rs + rr,
                                        (p * qf + q) % mo_d * mt + v,
                                    ] = acc[rr, v]
        if tail > 0:
            for p in T.parallel(pt):
                acc = T.alloc_local((rs, tail_w), "float32")
                for q in T.serial(qt):
                    if p * qt + q < bsz * nb:
                        for rh in T.serial(r // rs):
                            for rr in T.unroll(rs):
                                for v in T.vectorized(tail_w):
                                    acc[rr, v] = T.float32(0)
                            for j in T.serial(
                                indptr[(p * qt + q) % nb], indptr[(p * qt + q) % nb + 1]
                            ):
                                for cc in T.unroll(c):
                                    for rr in T.unroll(rs):
                                        for v in T.vectorized(tail_w):
                                            acc[rr, v] = (
                                                acc[rr, v]
                                                + data[j, rh * rs + rr, cc]
                                                * x[(p * qt + q) // nb, xoff[j, cc] + mo * mt + v]
                                            )
                            for rr in T.unroll(rs):
                                for v in T.vectorized(tail_w):
                                    y[
                                        (p * qt + q) // nb,
                                        (p * qt + q) % nb * r + rh * rs + rr,
                                        mo * mt + v,
                                    ] = acc[rr, v]

    desc = f"bsr {r}x{c} N={n} M={m} B={bsz} nnz_blocks={nnz} tile={mt}" + (
        f" in {r // rs} passes of {rs} rows" if rs != r else ""
    )
    return kernel.with_attr(KERNEL_ATTR, desc).with_attr(FLOPS_ATTR, 2 * bsz * nnz * r * c * m)


def _bsr_kernel_rows(spec: KernelSpec) -> tvm.tirx.PrimFunc:
    """The kernel for few positions (``M < R``, ``C == 1``): per block row, ``M`` accumulator
    vectors of ``R`` lanes; every stored block is one broadcast of ``x`` per position times the
    block's ``R`` contiguous weights. With one FMA per block, a single accumulator would wait on
    its own latency; :data:`ROWS_CHAINS` accumulators take the blocks in turn and are summed
    at the end."""
    bsz, length, m, n = (int(v) for v in (spec.batch, spec.length, spec.m, spec.n_rows))
    r = int(spec.block[0])
    nnz = int(spec.nnz)
    nb = n // r
    u = row_chains(m, spec.block, spec.lanes, spec.registers)
    pc, qc = _chunks(bsz * nb)

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((bsz, length), "float32"),
        data: T.Buffer((nnz, r, 1), "float32"),
        xoff: T.Buffer((nnz, 1), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        y: T.Buffer((bsz, n, m), "float32"),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True, "op_pattern": 8})
        # work item f: batch f // nb, block row f % nb (its blocks: indptr[f % nb] ...)
        for p in T.parallel(pc):
            acc = T.alloc_local((u, m, r), "float32")
            for q in T.serial(qc):
                if p * qc + q < bsz * nb:
                    for uu in T.unroll(u):
                        for mm in T.unroll(m):
                            for rr in T.vectorized(r):
                                acc[uu, mm, rr] = T.float32(0)
                    for jo in T.serial(
                        (indptr[(p * qc + q) % nb + 1] - indptr[(p * qc + q) % nb]) // u
                    ):
                        for uu in T.unroll(u):
                            for mm in T.unroll(m):
                                for rr in T.vectorized(r):
                                    acc[uu, mm, rr] = (
                                        acc[uu, mm, rr]
                                        + data[indptr[(p * qc + q) % nb] + jo * u + uu, rr, 0]
                                        * x[
                                            (p * qc + q) // nb,
                                            xoff[indptr[(p * qc + q) % nb] + jo * u + uu, 0] + mm,
                                        ]
                                    )
                    for jt in T.serial(
                        (indptr[(p * qc + q) % nb + 1] - indptr[(p * qc + q) % nb]) % u
                    ):
                        for mm in T.unroll(m):
                            for rr in T.vectorized(r):
                                acc[0, mm, rr] = (
                                    acc[0, mm, rr]
                                    + data[indptr[(p * qc + q) % nb + 1] - jt - 1, rr, 0]
                                    * x[
                                        (p * qc + q) // nb,
                                        xoff[indptr[(p * qc + q) % nb + 1] - jt - 1, 0] + mm,
                                    ]
                                )
                    for uu in T.unroll(1, u):
                        for mm in T.unroll(m):
                            for rr in T.vectorized(r):
                                acc[0, mm, rr] = acc[0, mm, rr] + acc[uu, mm, rr]
                    for mm in T.unroll(m):
                        for rr in T.unroll(r):
                            y[(p * qc + q) // nb, (p * qc + q) % nb * r + rr, mm] = acc[0, mm, rr]

    desc = f"bsr {r}x1 N={n} M={m} B={bsz} nnz_blocks={nnz} vectors along R, {u} chains"
    return kernel.with_attr(KERNEL_ATTR, desc).with_attr(FLOPS_ATTR, 2 * bsz * nnz * r * m)


def kernel_args(bsr: BSR, koff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, xoff, indptr)`` constants of a kernel for ``bsr`` with row offsets ``koff``.

    An all-zero matrix gets one zero block (in block row 0), so no array is empty.
    """
    r, c = bsr.block
    data, indices, indptr = bsr.data, bsr.indices, bsr.indptr
    if bsr.nnz_blocks == 0:
        data = np.zeros((1, r, c), dtype=np.float32)
        indices = np.zeros(1, dtype=np.int32)
        indptr = indptr.copy()
        indptr[1:] = 1
    cols = indices.astype(np.int64)[:, None] * c + np.arange(c)[None, :]
    xoff = np.asarray(koff, dtype=np.int64)[cols]
    if xoff.size and xoff.max() >= 2**31:
        raise ValueError("input too large for int32 offsets")
    return data.astype(np.float32), xoff.astype(np.int32), indptr.astype(np.int32)


def emit_bsr_call(
    bb: relax.BlockBuilder,
    x_flat: relax.Expr,
    bsr: BSR,
    koff: np.ndarray,
    m: int,
    lanes: int,
    registers: int = 32,
) -> relax.Expr:
    """Add the kernel for ``bsr`` to ``bb``'s module; return ``call_tir`` on ``x_flat`` (B, L).

    The result has shape (B, N, ``m``).
    """
    bsz, length = (int(d) for d in x_flat.ty.shape.values)
    data, xoff, indptr = kernel_args(bsr, koff)
    spec = KernelSpec(
        batch=bsz,
        length=length,
        m=m,
        n_rows=bsr.shape[0],
        nnz=int(data.shape[0]),
        block=bsr.block,
        tile=choose_tile(m, bsr.block, lanes, registers),
        rows_per_pass=rows_per_pass(bsr.block, registers),
        lanes=lanes,
        registers=registers,
    )
    gv = bb.add_func(bsr_kernel(spec), spec.name)
    out_ty = relax.TensorType((bsz, bsr.shape[0], m), "float32")
    return relax.call_tir(
        gv, [x_flat, relax.const(data), relax.const(xoff), relax.const(indptr)], out_ty
    )


# --------------------------------------------------------------------------------------------
# Cost model


@dataclass(frozen=True)
class SparseCosts:
    """Milliseconds per unit of work on one core, the coefficients of :func:`estimate_ms`
    (fitted by ``benchmarks/sparse_fit.py``).

    Dense kernel: ``dense_fma`` per vector FMA (``N·K·M / lanes``), ``dense_weight`` per weight
    streamed from memory (``N·K``: what a layer on one or a few rows costs), ``dense_call`` per
    call. BSR kernel along ``M`` (:func:`bsr_kernel`): ``sparse_fma`` per vector FMA
    (``R·C·⌈M/lanes⌉`` per stored block), ``sparse_load`` per activation vector loaded
    (``C·⌈M/lanes⌉`` per block), ``sparse_block`` per block. Few-positions kernel
    (:func:`across_block_rows`): ``rows_fma`` per vector FMA (``M·⌈R/lanes⌉`` per block),
    ``rows_block`` per block. Both: ``copy`` per element copied around the kernel (transposes,
    padding), ``sparse_call`` per call.
    """

    dense_fma: float
    dense_weight: float
    dense_call: float
    sparse_fma: float
    sparse_load: float
    sparse_block: float
    rows_fma: float
    rows_block: float
    copy: float
    sparse_call: float


#: Fitted per fp32 vector width by ``TVM_NUM_THREADS=1 python benchmarks/sparse_fit.py`` on an
#: AMD EPYC (Zen 4), 2026-12-07: 16 lanes with the host target (AVX-512), 8 lanes with
#: ``--target 'x86_64-linux-gnu -mattr=+avx2,+fma'`` on the same CPU. Other widths (NEON's 4)
#: use the nearest fit; they were not timed (no such machine to time on).
COSTS: dict[int, SparseCosts] = {
    16: SparseCosts(dense_fma=2.753e-07, dense_weight=2.622e-08, dense_call=0.003417,
                    sparse_fma=2.453e-07, sparse_load=4.863e-07, sparse_block=0.0,
                    rows_fma=1.279e-07, rows_block=4.043e-07, copy=7.65e-07,
                    sparse_call=0.003178),
    8: SparseCosts(dense_fma=1.663e-07, dense_weight=2.567e-08, dense_call=0.001587,
                   sparse_fma=2.274e-07, sparse_load=2.057e-07, sparse_block=1.029e-07,
                   rows_fma=2.745e-07, rows_block=1.771e-07, copy=5.395e-07,
                   sparse_call=0.003337),
}  # fmt: skip


def costs_for(lanes: int) -> SparseCosts:
    """The fitted :class:`SparseCosts` of the vector width nearest ``lanes``."""
    return COSTS[min(COSTS, key=lambda w: (abs(w - lanes), w))]


def dense_features(m_rows: int, n: int, k: int, lanes: int) -> list[float]:
    """Work units of hwcc's dense kernel, in the order of the dense :class:`SparseCosts`."""
    return [n * k * m_rows / lanes, n * k, 1.0]


def sparse_features(
    m_rows: int,
    n: int,
    k: int,
    nnz_blocks: int,
    block: tuple[int, int],
    lanes: int,
    copy_elems: int = 0,
    batch: int = 1,
) -> list[float]:
    """Work units of the BSR kernel, in the order of the sparse :class:`SparseCosts`."""
    r, c = block
    m = max(1, m_rows // max(batch, 1))
    if across_block_rows(m, block, lanes, 32 if lanes >= 16 else 16):
        fma, block_work = nnz_blocks * m * math.ceil(r / lanes), nnz_blocks
        return [0.0, 0.0, 0.0, batch * fma, batch * block_work, copy_elems, 1.0]
    vec = math.ceil(m / lanes)
    return [
        batch * nnz_blocks * r * c * vec,
        batch * nnz_blocks * c * vec,
        batch * nnz_blocks,
        0.0,
        0.0,
        copy_elems,
        1.0,
    ]


def estimate_ms(
    m_rows: int,
    n: int,
    k: int,
    nnz_blocks: int,
    block: tuple[int, int],
    lanes: int,
    copy_elems: int = 0,
    batch: int = 1,
    costs: SparseCosts | None = None,
) -> tuple[float, float]:
    """Estimated milliseconds of the dense and the sparse kernel of one layer, on one core.

    Parameters
    ----------
    m_rows
        Output positions (rows of a dense layer times batch, or ``B · H · W`` of a conv).
    n, k
        Output and input features (for a conv, ``k = C · kh · kw``).
    nnz_blocks
        Stored blocks of the sparse weight.
    block
        (R, C).
    lanes
        fp32 lanes of a vector register (selects the fitted :data:`COSTS`).
    copy_elems
        Elements the sparse form copies around the kernel (transposes, padding).
    batch
        Batch items the kernel loops over (``m_rows / batch`` positions each).
    costs
        Coefficients; default :func:`costs_for` ``(lanes)``.

    Returns
    -------
    (float, float)
        ``(dense_ms, sparse_ms)``.
    """
    cf = costs or costs_for(lanes)
    dense = np.dot(
        [cf.dense_fma, cf.dense_weight, cf.dense_call], dense_features(m_rows, n, k, lanes)
    )
    sparse = np.dot(
        [cf.sparse_fma, cf.sparse_load, cf.sparse_block, cf.rows_fma, cf.rows_block, cf.copy,
         cf.sparse_call],
        sparse_features(m_rows, n, k, nnz_blocks, block, lanes, copy_elems, batch),
    )  # fmt: skip
    return float(dense), float(sparse)


def gflops(m_rows: int, n: int, k: int, ms: float) -> float:
    """Dense-equivalent GFLOP/s of an (M × K) · (K × N) product done in ``ms``."""
    return 2.0 * m_rows * n * k / (ms * 1e6) if ms > 0 else math.inf
