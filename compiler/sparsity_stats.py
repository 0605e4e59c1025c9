"""The sparsity an ONNX model's weights already have, per layer (for ``hwcc inspect``).

Models from sparse training and sparse model zoos arrive with most weights zero, often in
blocks. :func:`layer_sparsity` reports, for every Conv / Gemm / MatMul whose weight is an
initializer, the share of zero weights and of all-zero blocks for the block shapes hwcc's
sparse kernels run (``RxC``: ``R`` output × ``C`` input features of the (N, K) weight matrix,
as :mod:`passes.sparsify` views it), whether it follows 2:4, and a one-word structure; with it a
user knows whether ``hwcc compile --sparsity keep --sparse-block …`` will find zeros to use.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

#: Block shapes checked, (R, C); the first ones are the sparse kernels' favourites.
BLOCKS = ((16, 1), (8, 1), (4, 1), (1, 4), (4, 4))
#: A block shape "holds" the zeros when its all-zero blocks cover this share of the zeros.
BLOCK_COVER = 0.9
#: Below this share of zero weights a layer is called dense.
DENSE_BELOW = 0.05


def weight_matrix(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    """The (N, K) output × input feature matrix of ``node``'s weight, or None when the weight
    is not the shape the op's sparse kernels take (as :mod:`passes.sparsify` sees it)."""
    if node.op_type == "Conv" and weight.ndim >= 3:
        return weight.reshape(weight.shape[0], -1)
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return weight if trans_b else weight.T
    if node.op_type == "MatMul":
        return weight.T
    return None


def _zero_block_share(zero: np.ndarray, block: tuple[int, int]) -> float | None:
    r, c = block
    n, k = zero.shape
    if n % r or k % c:
        return None
    return float(zero.reshape(n // r, r, k // c, c).all(axis=(1, 3)).mean())


def matrix_sparsity(wm: np.ndarray) -> dict[str, Any]:
    """Zero share, all-zero block shares, 2:4 compliance and structure of one (N, K) matrix."""
    zero = wm == 0
    share = float(zero.mean()) if zero.size else 0.0
    blocks = {f"{r}x{c}": _zero_block_share(zero, (r, c)) for r, c in BLOCKS}
    k = wm.shape[1]
    two_four = bool(k % 4 == 0 and (zero.reshape(wm.shape[0], k // 4, 4).sum(axis=2) >= 2).all())
    if share < DENSE_BELOW:
        structure = "dense"
    else:
        held = [b for b, s in blocks.items() if s is not None and s >= BLOCK_COVER * share]
        # the largest block holding the zeros; R x 1 first (what the kernels prefer)
        held.sort(key=lambda b: -np.prod([int(x) for x in b.split("x")]))
        structure = f"{held[0]} blocks" if held else ("2:4" if two_four else "unstructured")
    suggested = None
    if share >= DENSE_BELOW:
        kernel_blocks = [b for b in ("16x1", "8x1", "4x1", "1x4")
                         if blocks[b] is not None and blocks[b] >= BLOCK_COVER * share]
        suggested = kernel_blocks[0] if kernel_blocks else ("2:4" if two_four else "none")
    return {
        "zeros": round(share, 6),
        "zero_blocks": {b: round(s, 6) for b, s in blocks.items() if s is not None},
        "two_four": two_four,
        "structure": structure,
        "suggested_block": suggested,
    }


def layer_sparsity(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """One entry per weighted layer (node name, op, weight name and shape, (N, K) matrix and
    :func:`matrix_sparsity`), in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None:
            continue
        try:
            weight = numpy_helper.to_array(init)
        except (ValueError, TypeError, OSError) as exc:  # the importer reports broken ones
            logger.debug("weight '%s' of %s not read: %s", init.name, node.name, exc)
            continue
        if not np.issubdtype(weight.dtype, np.floating) and not np.issubdtype(
            weight.dtype, np.integer
        ):
            continue
        wm = weight_matrix(node, weight)
        if wm is None:
            continue
        out.append({
            "node": node.name or f"{node.op_type}_{i}", "op": node.op_type,
            "weight": init.name, "weight_shape": list(weight.shape), "matrix": list(wm.shape),
            **matrix_sparsity(wm),
        })  # fmt: skip
    return out
