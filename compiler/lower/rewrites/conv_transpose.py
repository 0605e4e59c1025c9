"""Transposed convolutions whose kernel equals their stride, as a 1x1 conv and a pixel shuffle.

A ``ConvTranspose`` with kernel ``s x s`` and stride ``s`` (UNet decoders, FPN-style
upsampling, segmentation heads) writes each input pixel into its own ``s x s`` output patch:
no two input pixels overlap, so ::

    y[n, o, s*i + a, s*j + b] = sum_c x[n, c, i, j] * w[c, o, a, b]

is a 1x1 convolution to ``O * s * s`` channels, ``z[n, (o, a, b), i, j]``, followed by a
reshape/transpose/reshape that moves each ``(a, b)`` channel into its place (depth-to-space).
TVM's legalization instead dilates the input with ``s*s - 1`` zeros per pixel and runs a
``s x s`` convolution over that: ``s*s`` times the multiply-adds, three quarters of them by
zero for ``s = 2``. :func:`conv_transpose_as_conv` is a Relax module pass (before
legalization) doing the rewrite; the 1x1 conv then gets hwcc's conv2d schedule and the shuffle,
with the bias add after it, one copy kernel.

Only the non-overlapping case is rewritten (kernel == stride, no padding, no output padding,
dilation 1, one group, NCHW/IOHW, float32, constant weight, static shapes); every other
transposed convolution keeps TVM's lowering. ``LowerOptions(conv_transpose=False)``
(``--disable-rewrite
conv-transpose``) leaves the rewrite out.
"""

from __future__ import annotations

import logging

import numpy as np

from passes._ir import op_rewrite_pass

logger = logging.getLogger(__name__)


def pixel_shuffle_stride(call) -> int | None:
    """The stride ``s`` of a ``relax.nn.conv2d_transpose`` call that this pass rewrites, else
    None (see the module doc for the conditions)."""
    import tvm
    from tvm import relax

    attrs = call.attrs
    data, weight = call.args
    if not isinstance(weight, tvm.ir.expr.Constant):
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "IOHW", "NCHW"):
        return None
    if int(attrs.groups) != 1 or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    if any(int(p) for p in attrs.padding) or any(int(p) for p in attrs.output_padding):
        return None
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    if out_dtype not in ("", "void", "float32"):
        return None
    dsi = data.ty
    if not isinstance(dsi, relax.TensorType) or dsi.dtype != "float32" or dsi.ndim != 4:
        return None
    if weight.ty.dtype != "float32" or dsi.shape is None:
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dsi.shape.values):
        return None
    sh, sw = (int(s) for s in attrs.strides)
    _, _, kh, kw = (int(d) for d in weight.ty.shape.values)
    if sh != sw or (kh, kw) != (sh, sw) or sh < 2:
        return None
    return sh


def shuffle_weight(weight: np.ndarray) -> np.ndarray:
    """``w[c, o, a, b]`` (IOHW) as the 1x1 conv weight ``[(o, a, b), c, 1, 1]`` (OIHW)."""
    c, o, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(o * kh * kw, c, 1, 1))


def conv_transpose_as_conv():
    """Module pass: non-overlapping ``relax.nn.conv2d_transpose`` calls become a 1x1
    ``relax.nn.conv2d`` and a depth-to-space reshape (see the module doc).

    Must run before ``LegalizeOps``. Guarantees: the result is the transposed convolution's
    (each output is the same sum of products over the input channels; only the float rounding
    order may differ); the module is unchanged when nothing qualifies.
    """
    from tvm import relax

    def as_conv_and_shuffle(builder, call):
        s = pixel_shuffle_stride(call)
        if s is None:
            return None
        data, weight = call.args
        n, _, h, w = (int(d) for d in data.ty.shape.values)
        out_channels = int(weight.ty.shape.values[1])
        z = builder.emit(relax.op.nn.conv2d(
            data, relax.const(shuffle_weight(weight.value.numpy()))))
        z = builder.emit(relax.op.reshape(z, [n, out_channels, s, s, h, w]))
        z = builder.emit(relax.op.permute_dims(z, [0, 1, 4, 2, 5, 3]))
        return relax.op.reshape(z, [n, out_channels, h * s, w * s])

    return op_rewrite_pass("hwcc.ConvTransposeAsConv", "relax.nn.conv2d_transpose",
                           as_conv_and_shuffle, "conv2d_transpose as 1x1 conv + pixel shuffle")
