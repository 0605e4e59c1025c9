"""Bilinear ``Resize`` as two separable passes over index/weight tables built at compile time.

TVM legalizes ``relax.image.resize2d`` (method ``linear``) into one TOPI expression per output
element that recomputes the source coordinate in float, converts it to integer indices, clamps
them and gathers four input values, in every channel again (in a UNet decoder that made the
upsample the slowest kernel). The coordinates depend only on the output row or only on the
output column, so :func:`resize_linear_as_taps` (a Relax module
pass, before legalization) computes them once with numpy, exactly as TOPI's ``resize2d`` does
(same float32 operations, same clamping), and replaces the call by :func:`resize_linear_te`::

    rows[n, c, y, x] = data[n, c, y, x0[x]] * (1 - wx[x]) + data[n, c, y, x1[x]] * wx[x]
    out[n, c, y, x]  = rows[n, c, y0[y], x] * (1 - wy[y]) + rows[n, c, y1[y], x] * wy[y]

for every input row ``y`` (first pass) and output row (second pass): the same products and
sums as TOPI's ``lerp(lerp(p00, p01, wx), lerp(p10, p11, wx), wy)``, so the results are TOPI's
up to the rounding of contracted multiply-adds.

Rewritten: NCHW, float32, static shapes, ``linear`` with coordinate transformation
``half_pixel``, ``pytorch_half_pixel``, ``align_corners`` or ``asymmetric``. Everything else
(nearest, cubic, ``tf_crop_and_resize``, NHWC) keeps TVM's lowering.
``LowerOptions(resize_taps=False)`` (``--disable-rewrite resize-taps``) leaves the rewrite out.
"""

from __future__ import annotations

import logging

import numpy as np

from passes._ir import op_rewrite_pass

logger = logging.getLogger(__name__)

#: Coordinate transformations the tables reproduce (TOPI's ``get_inx``).
MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")


def linear_taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """``(i0, i1, w)`` for each output coordinate: the two clamped source indices and the
    weight of the second, as TOPI's linear ``resize2d`` computes them in float32."""
    f32 = np.float32
    x = np.arange(out_size, dtype=f32)
    scale = f32(in_size) / f32(out_size)
    if mode == "half_pixel":
        src = (x + f32(0.5)) * scale - f32(0.5)
    elif mode == "pytorch_half_pixel":
        src = (x + f32(0.5)) * scale - f32(0.5) if out_size > 1 else np.zeros_like(x)
    elif mode == "align_corners":
        src = f32(in_size - 1) / f32(out_size - 1) * x if out_size > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        src = scale * x
    else:
        raise ValueError(f"unsupported coordinate transformation {mode!r}")
    src = src.astype(f32)
    base = np.floor(src).astype(np.int32)
    weight = (src - base.astype(f32)).astype(f32)
    i0 = np.clip(base, 0, in_size - 1).astype(np.int32)
    i1 = np.clip(base + 1, 0, in_size - 1).astype(np.int32)
    return i0, i1, weight


def resize_linear_te(data, x0, x1, wx, y0, y1, wy):
    """TE of the two passes (see the module doc): ``data`` ``[N, C, H, W]``; ``x0, x1, wx``
    ``[OW]`` and ``y0, y1, wy`` ``[OH]`` tables. Returns ``[N, C, OH, OW]``."""
    from tvm import te

    n, c, h, _ = (int(s) for s in data.shape)
    oh, ow = int(y0.shape[0]), int(x0.shape[0])
    one = 1.0
    rows = te.compute(
        (n, c, h, ow),
        lambda b, ch, y, x: data[b, ch, y, x0[x]] * (one - wx[x]) + data[b, ch, y, x1[x]] * wx[x],
        name="hwcc_resize_rows",
    )
    return te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, x: rows[b, ch, y0[y], x] * (one - wy[y]) + rows[b, ch, y1[y], x] * wy[y],
        name="hwcc_resize_cols",
    )


def _plan(call) -> tuple[tuple[int, ...], tuple[int, int], str] | None:
    """``(input shape, (OH, OW), mode)`` when ``call`` is a resize this pass rewrites."""
    from tvm import relax

    attrs = call.attrs
    if str(attrs.layout) != "NCHW" or str(attrs.method) != "linear":
        return None
    mode = str(attrs.coordinate_transformation_mode)
    if mode not in MODES:
        return None
    data = call.args[0]
    dty, oty = data.ty, call.ty
    if not isinstance(dty, relax.TensorType) or dty.dtype != "float32" or dty.ndim != 4:
        return None
    if not isinstance(oty, relax.TensorType) or oty.dtype != "float32" or oty.shape is None:
        return None
    if dty.shape is None:
        return None
    try:
        shape = tuple(int(d) for d in dty.shape.values)
        out = tuple(int(d) for d in oty.shape.values)
    except (TypeError, ValueError):
        return None  # symbolic
    if out[:2] != shape[:2]:
        return None
    return shape, (out[2], out[3]), mode


def resize_linear_as_taps():
    """Module pass: linear ``relax.image.resize2d`` calls become :func:`resize_linear_te`
    (see the module doc). Must run before ``LegalizeOps``; leaves every other resize
    unchanged."""
    from tvm import relax

    def as_taps(builder, call):
        plan = _plan(call)
        if plan is None:
            return None
        shape, (oh, ow), mode = plan
        x0, x1, wx = linear_taps(shape[3], ow, mode)
        y0, y1, wy = linear_taps(shape[2], oh, mode)
        return builder.call_te(
            resize_linear_te, call.args[0], *(relax.const(t) for t in (x0, x1, wx, y0, y1, wy)),
            primfunc_name_hint="resize_linear",
            primfunc_attrs={"op_pattern": 2},  # injective: a following concat fuses with it
        )

    return op_rewrite_pass("hwcc.ResizeLinearAsTaps", "relax.image.resize2d", as_taps,
                           "linear resizes as separable table passes")
