"""Winograd F(4x4, 3x3) for 3x3 stride-1 float32 convolutions with constant weights.

:func:`winograd_conv2d` is a Relax module pass that runs before legalization (after batch-norm
folding, so that the weight is a folded constant). It replaces each eligible
``relax.nn.conv2d`` by

* a constant ``U = G w G^T`` (per output/input channel pair): the weight transform, computed
  here in float64 with numpy and rounded once to float32 (:func:`transform_weight`), and
* a ``call_tir`` of :func:`winograd_te`: zero padding, a gather of each 6x6 input tile
  (channels innermost), the input transform ``V = B^T d B``, a batched GEMM
  ``M[eps, nu] = V[eps, nu] U[eps, nu]`` over the 36 points, and the inverse transform
  ``Y = A^T M A`` per 4x4 output tile.

The kernel is annotated ``op_pattern = kOutEWiseFusable`` so that ``FuseOps`` still fuses the
bias add, ReLU and residual add after it; :class:`compiler.lower.schedules.winograd.Winograd`
schedules it. Every multiply by a transform coefficient is written out as arithmetic (no table
lookups, no multiplies by 0 or +-1), selected per tile position by ``Select`` chains that
become constant once the schedule unrolls the tile loops.

The matrices are TVM's (``topi.nn.winograd_util``): interpolation points
``0, -1, 1, 1/2, -2`` chosen for accuracy (Barabasz et al., arXiv 1803.10986). The rounding
error is a few times a direct float32 conv's; ``tests/compiler/lower/test_winograd.py`` holds it to
2e-5 of the output's magnitude against ``onnx.reference``.

Multiplies per output: 36 * C / 16 instead of 9 * C (4x fewer); the transforms add work that
does not shrink with the channel count, and the transformed weight is 4x the original, so
small convolutions stay direct; maps with too few 4x4 tiles use F(2x2, 3x3) (6x6 -> 4x4
transform points, see :class:`WinogradConfig`). ``LowerOptions(winograd=False)``
(``--disable-rewrite winograd``) leaves the rewrite out.

The transformed weight is stored in output-channel blocks ``U[eps, nu, K / b, C, b]`` (``b`` =
the GEMM's register tile, two vectors of the target) so that the GEMM streams it contiguously:
with a plain ``[eps, nu, C, K]`` layout the KB-sized stride between rows defeats the
hardware prefetcher. ``python benchmarks/models.py`` shows the effect on ResNet-18.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce

import numpy as np

from compiler.lower.schedules.common import vector_factor
from compiler.lower.schedules.target_info import cpu_info, is_cpu_target
from compiler.lower.schedules.winograd import BLOCK_PREFIX
from passes._ir import rewrite_op_calls

logger = logging.getLogger(__name__)

#: Kernel edge r of F(m x m, r x r); output tiles m are 4 (default) or 2 (small maps).
KERNEL = 3
#: Output tile edges supported (alpha = m + r - 1 transform points per axis).
TILES = (4, 2)



@dataclass(frozen=True)
class WinogradConfig:
    """When a conv2d becomes Winograd.

    Attributes
    ----------
    enabled : bool
        Master switch (default True).
    min_in_channels, min_out_channels : int
        Channel counts below which the transforms cost more than the multiplies they save
        (default 16 each).
    min_tiles : int
        Fewest output tiles (batch included) worth transforming (default 16, a 14x14 map in
        4x4 tiles or a 7x7 map in 2x2 tiles): each transformed weight element, 4x the size of
        the original, is reused once per tile, so with fewer tiles streaming the weights costs
        more than the multiplies saved.
    small_maps : bool
        Use F(2x2, 3x3) where 4x4 tiles are too few but 2x2 tiles are enough (a 7x7 map: 16
        tiles; 2.25x fewer multiplies instead of 4x, with a weight 16/9 the size). Default on
        (hand-timed faster than direct on ResNet-18's 512-channel 7x7 maps).
    """

    enabled: bool = True
    min_in_channels: int = 16
    min_out_channels: int = 16
    min_tiles: int = 16
    small_maps: bool = True

    def __post_init__(self) -> None:
        for name in ("min_in_channels", "min_out_channels", "min_tiles"):
            if getattr(self, name) < 1:
                raise ValueError(f"WinogradConfig.{name} must be >= 1; got {getattr(self, name)}")


def transform_matrices(tile: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(m x m, 3x3) in float64, shapes ``(a, m), (a, a), (a, 3)``, a = m + 2."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    if tile not in TILES:
        raise ValueError(f"Winograd tile must be one of {TILES}; got {tile}")
    a, b, g = _cook_toom_convolution(_interpolation_points(tile + KERNEL - 1), tile, KERNEL)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def transform_weight(weight: np.ndarray, tile: int = 4, block: int = 16) -> np.ndarray:
    """``U[eps, nu, k // b, c, k % b] = (G w[k, c] G^T)[eps, nu]`` of an OIHW 3x3 weight, in
    float32, output channels in blocks of ``b = block`` (zero-padded to whole blocks): the
    GEMM streams each block's ``C x b`` weights contiguously."""
    _, _, g = transform_matrices(tile)
    u = np.einsum("er,kcrs,ns->enck", g, weight.astype(np.float64), g)
    a, _, c, k = u.shape
    blocks = -(-k // block)
    u = np.pad(u, ((0, 0), (0, 0), (0, 0), (0, blocks * block - k)))
    u = u.reshape(a, a, c, blocks, block).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(u.astype(np.float32))


def _linear(coeffs, terms):
    """``sum(c * t)`` over nonzero ``c``, with ``+-1`` as add/subtract (a Python-built expr)."""
    import tvm

    out = None
    for c, t in zip(coeffs, terms):
        c = float(c)
        if c == 0.0:
            continue
        if c == 1.0:
            term, neg = t, False
        elif c == -1.0:
            term, neg = t, True
        else:
            term, neg = t * tvm.tirx.const(c, "float32"), False
        if out is None:
            out = -term if neg else term
        else:
            out = out - term if neg else out + term
    return out if out is not None else tvm.tirx.const(0.0, "float32")


def _select(index, exprs):
    """``exprs[index]`` for an integer expression ``index`` in ``[0, len(exprs))``."""
    import tvm

    return reduce(
        lambda acc, i: tvm.tirx.Select(index == i, exprs[i], acc),
        range(len(exprs) - 2, -1, -1),
        exprs[-1],
    )


def winograd_te(data, u, padding: tuple[int, int, int, int], out_channels: int):
    """TE compute of the Winograd convolution of NCHW ``data`` with transformed weight ``u``.

    Parameters
    ----------
    data : te.Tensor
        ``[N, C, H, W]`` float32.
    u : te.Tensor
        ``[a, a, K / b, C, b]`` from :func:`transform_weight` (a = 6 for 4x4 tiles, 4 for
        2x2; b the output-channel block).
    padding : tuple of int
        ``(top, left, bottom, right)`` zero padding of the 3x3 convolution (stride 1).
    out_channels : int
        K (``u`` may hold zero padding beyond it).

    Returns
    -------
    te.Tensor
        ``[N, K, H + top + bottom - 2, W + left + right - 2]``.
    """
    from tvm import te

    n, c, h, w = (int(s) for s in data.shape)
    k, block = out_channels, int(u.shape[4])
    alpha = int(u.shape[0])
    tile = alpha - KERNEL + 1
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - KERNEL + 1, w + left + right - KERNEL + 1
    nh, nw = -(-oh // tile), -(-ow // tile)
    tiles = n * nh * nw
    a_mat, b_mat, _ = transform_matrices(tile)
    bt = b_mat.T
    f32 = "float32"

    def inside(yy, xx):
        return (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)

    dpad = te.compute(
        (n, c, nh * tile + KERNEL - 1, nw * tile + KERNEL - 1),
        lambda b, ci, yy, xx: te.if_then_else(
            inside(yy, xx), data[b, ci, yy - top, xx - left], te.const(0.0, f32)
        ),
        name=BLOCK_PREFIX + "pad",
    )

    def gather(i, j, p, ci):
        b, y0, x0 = p // (nh * nw), p % (nh * nw) // nw * tile, p % nw * tile
        return dpad[b, ci, y0 + i, x0 + j]

    # each 6x6 tile gathered once, channels innermost (the transforms run on channel vectors)
    d = te.compute((alpha, alpha, tiles, c), gather, name=BLOCK_PREFIX + "tile")
    t_in = te.compute(
        (alpha, alpha, tiles, c),
        lambda eps, j, p, ci: _select(
            eps, [_linear(bt[e], [d[i, j, p, ci] for i in range(alpha)]) for e in range(alpha)]
        ),
        name=BLOCK_PREFIX + "input_rows",
    )
    v = te.compute(
        (alpha, alpha, tiles, c),
        lambda eps, nu, p, ci: _select(
            nu, [_linear(bt[e], [t_in[eps, j, p, ci] for j in range(alpha)]) for e in range(alpha)]
        ),
        name=BLOCK_PREFIX + "input",
    )
    rc = te.reduce_axis((0, c), name="rc")
    m = te.compute(
        (alpha, alpha, tiles, k),
        lambda eps, nu, p, ko: te.sum(
            u[eps, nu, ko // block, rc, ko % block] * v[eps, nu, p, rc], axis=rc
        ),
        name=BLOCK_PREFIX + "gemm",
    )
    at = a_mat.T
    t_out = te.compute(
        (tile, alpha, tiles, k),
        lambda i, nu, p, ko: _select(
            i, [_linear(at[r], [m[e, nu, p, ko] for e in range(alpha)]) for r in range(tile)]
        ),
        name=BLOCK_PREFIX + "output_rows",
    )

    def out(b, ko, y, x):
        p = b * (nh * nw) + y // tile * nw + x // tile
        row = [t_out[y % tile, nu, p, ko] for nu in range(alpha)]
        return _select(x % tile, [_linear(at[r], row) for r in range(tile)])

    return te.compute((n, k, oh, ow), out, name=BLOCK_PREFIX + "output")


#: largest ratio of a weight's magnitude to the typical (median non-zero) one that Winograd
#: takes: its transforms mix a kernel's weights, and float rounding of a weight 10^k times the
#: others leaves errors of that size where direct convolution gives exact zeros (a fuzzed
#: MNIST weight of 1e31 gave logits of 1e22 instead of about 40)
MAX_WEIGHT_RANGE = 1e4


def _well_scaled(weight: np.ndarray) -> bool:
    """Finite weights with no outlier beyond :data:`MAX_WEIGHT_RANGE` times the median."""
    if not np.isfinite(weight).all():
        return False
    mag = np.abs(weight[weight != 0])
    return mag.size == 0 or float(mag.max()) <= MAX_WEIGHT_RANGE * float(np.median(mag))


def choose_tile(call, config: WinogradConfig) -> int | None:
    """Output tile edge for a ``relax.nn.conv2d`` call under ``config``: 4, 2, or None (stays
    a direct convolution)."""
    import tvm
    from tvm import relax

    attrs = call.attrs
    data, weight = call.args
    if not isinstance(weight, tvm.ir.expr.Constant):
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if int(attrs.groups) != 1 or [int(s) for s in attrs.strides] != [1, 1]:
        return None
    if [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    if out_dtype not in ("", "void", "float32"):
        return None
    dsi, wsi = data.ty, weight.ty
    if not isinstance(dsi, relax.TensorType) or dsi.dtype != "float32" or dsi.ndim != 4:
        return None
    if wsi.dtype != "float32":
        return None
    shape = dsi.shape
    if shape is None or not all(isinstance(s, tvm.tirx.IntImm) for s in shape.values):
        return None
    n, c, h, w = (int(s) for s in shape.values)
    k, wc, kh, kw = (int(s) for s in wsi.shape.values)
    if (kh, kw) != (KERNEL, KERNEL) or wc != c:
        return None
    if c < config.min_in_channels or k < config.min_out_channels:
        return None
    if not _well_scaled(weight.value.numpy()):
        return None
    top, left, bottom, right = (int(p) for p in attrs.padding)
    oh, ow = h + top + bottom - KERNEL + 1, w + left + right - KERNEL + 1
    if oh < 1 or ow < 1:
        return None
    for tile in (4, 2) if config.small_maps else (4,):
        if n * -(-oh // tile) * -(-ow // tile) >= config.min_tiles:
            return tile
    return None


def winograd_conv2d(config: WinogradConfig | None = None, target=None):
    """Module pass: eligible ``relax.nn.conv2d`` calls become Winograd kernels (see module doc).

    Must run before ``LegalizeOps`` (it rewrites the high-level ``nn.conv2d``); raises
    ``ValueError`` on a module with no Relax function, and leaves the module unchanged when
    ``config.enabled`` is False, nothing is eligible, or ``target`` (a ``tvm.target.Target``)
    is not an LLVM CPU target, the only one with a schedule for the kernel. The output-channel
    block of the transformed weight is the schedule's register tile for ``target`` (two
    vectors; two AVX2 vectors when ``target`` is None).
    """
    import tvm
    from tvm import relax


    config = config or WinogradConfig()
    lanes = cpu_info(target).lanes(32) if target is not None else 8

    def as_winograd(builder, call):
        tile = choose_tile(call, config)
        if tile is None:
            return None
        weight = call.args[1].value.numpy()
        block = vector_factor(weight.shape[0], lanes, max_vectors=2)
        u = relax.const(transform_weight(weight, tile, block))
        padding = tuple(int(p) for p in call.attrs.padding)
        return builder.call_te(
            winograd_te,
            call.args[0],
            u,
            padding,
            weight.shape[0],
            primfunc_name_hint="winograd_conv2d",
            primfunc_attrs={"op_pattern": 4},  # kOutEWiseFusable: epilogues fuse after it
        )

    @tvm.transform.module_pass(opt_level=0, name="hwcc.WinogradConv2d")
    def rewrite(mod, _ctx):
        if not config.enabled or (target is not None and not is_cpu_target(target)):
            return mod
        if not any(isinstance(f, relax.Function) for _, f in mod.functions_items()):
            raise ValueError("hwcc.WinogradConv2d: the module has no Relax function")
        mod, count = rewrite_op_calls(mod, "relax.nn.conv2d", as_winograd)
        if count:
            logger.info("%d conv2d as Winograd", count)
        return mod

    return rewrite
