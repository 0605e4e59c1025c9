"""The BSR kernel generator (``passes/sparse_kernels.py``): format, TIR kernel, cost model.

Numerical tests compare the generated kernel with numpy on the dense form of the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from passes import sparse_kernels as sk
from targets import parse_target
from tests.passes.test_sparsify import block_mask

HOST = parse_target("host")


def test_to_bsr_round_trip_and_density() -> None:
    """Structure: a block is stored iff any of its elements is non-zero; to_dense inverts."""
    w = np.zeros((8, 8), np.float32)
    w[0, 0] = 1.0  # block (0, 0)
    w[5, 7] = 2.0  # block (1, 1) for 4x4 blocks
    bsr = sk.to_bsr(w, (4, 4))
    assert bsr.nnz_blocks == 2 and bsr.density == 0.5
    assert list(bsr.indptr) == [0, 1, 2] and list(bsr.indices) == [0, 1]
    np.testing.assert_array_equal(bsr.to_dense(), w)


def test_block_that_does_not_divide_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        sk.to_bsr(np.ones((6, 8), np.float32), (4, 1))


@pytest.mark.parametrize(("block", "ratio", "lanes"), [
    *((b, r, 16) for b in [(1, 1), (1, 4), (4, 1), (16, 1), (3, 5)]
      for r in [0.0, 0.5, 0.9, 0.99, 1.0]),
    # 8 lanes / 16 registers: the tiles of AVX2 (16x1 in two passes of 8 rows)
    *((b, r, 8) for b in [(4, 1), (16, 1), (3, 5)] for r in [0.5, 1.0]),
])
def test_bsr_kernel_matches_numpy(block: tuple[int, int], ratio: float, lanes: int) -> None:
    """The raw TIR kernel equals numpy ``W @ X`` on odd sizes (M = 37: a full tile and a
    remainder), batch 2, with empty rows (0.99, 1.0) and an all-zero weight (1.0); with the
    register tiles of 16 lanes / 32 registers and of 8 lanes / 16 registers (where a 16×1 block
    is accumulated in two passes of 8 rows). Built for this machine: the arithmetic does not
    depend on the ISA the tile was sized for."""
    r, c = block
    n, k, m, bsz = 3 * 16 * r // np.gcd(16, r), 20 * c, 37, 2
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w *= block_mask(w, block, ratio)
    bsr = sk.to_bsr(w, block)
    np.testing.assert_array_equal(bsr.to_dense(), w)
    data, xoff, indptr = sk.kernel_args(bsr, np.arange(k) * m)
    regs = 32 if lanes >= 16 else 16
    spec = sk.KernelSpec(bsz, k * m, m, n, data.shape[0], block,
                         sk.choose_tile(m, block, lanes, regs), sk.rows_per_pass(block, regs),
                         lanes, regs)
    func = sk.bsr_kernel(spec)
    if block == (16, 1) and lanes == 8:
        assert "in 2 passes of 8 rows" in str(func.attrs[sk.KERNEL_ATTR])
    func = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST.tvm_target())
    x = rng.standard_normal((bsz, k, m)).astype(np.float32)
    y = tvm.runtime.empty((bsz, n, m), "float32", tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in (x.reshape(bsz, -1), data, xoff, indptr)], y)
    ref = np.einsum("nk,bkm->bnm", w.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)
    if ratio == 1.0:
        assert not y.numpy().any()




@pytest.mark.parametrize("block", [(4, 1), (8, 1), (16, 1)])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("ratio", [0.5, 0.97, 1.0])
@pytest.mark.parametrize("lanes", [16, 8], ids=["avx512", "avx2"])
def test_few_positions_kernel_matches_numpy(block: tuple[int, int], m: int, ratio: float,
                                            lanes: int) -> None:
    """M < R (a batch-1 dense layer): the kernel vectorises the block's rows with several
    accumulator chains; equal to numpy with row block counts that are not multiples of the
    chains, empty rows (0.97) and an all-zero weight (1.0), batch 2."""
    regs = 32 if lanes >= 16 else 16
    assert sk.across_block_rows(m, block, lanes, regs)
    r, _ = block
    n, k, bsz = 5 * r, 67, 2
    rng = np.random.default_rng(2)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w *= block_mask(w, block, ratio)
    bsr = sk.to_bsr(w, block)
    data, xoff, indptr = sk.kernel_args(bsr, np.arange(k) * m)
    spec = sk.KernelSpec(bsz, k * m, m, n, data.shape[0], block,
                         sk.choose_tile(m, block, lanes, regs), 0, lanes, regs)
    func = sk.bsr_kernel(spec)
    assert "vectors along R" in str(func.attrs[sk.KERNEL_ATTR])
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=HOST.tvm_target())
    x = rng.standard_normal((bsz, k, m)).astype(np.float32)
    y = tvm.runtime.empty((bsz, n, m), "float32", tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in (x.reshape(bsz, -1), data, xoff, indptr)], y)
    ref = np.einsum("nk,bkm->bnm", w.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)
