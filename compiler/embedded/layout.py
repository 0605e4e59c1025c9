"""Device layout of the integer graph: padded NHWC activations, weights packed in the MAC
array's tile layout, and each conv layer's geometry as ``hwcc_conv2d`` sees it.

Activations are NHWC with channels padded to a multiple of ``block = max(R, C)`` (R and C
are powers of two, so it is a multiple of both): a conv reads whole C-wide input blocks and
writes whole R-wide output blocks; the padding channels hold 0 (their weights, bias and
multiplier are 0). A fully connected layer reads its input as one ``1×1×(H·W·Cp)`` vector —
the bytes its (flattened) source left in NHWC order — and its weight columns are reordered
from ONNX's NCHW flattening to that order here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.embedded import Accelerator

from .graph import IntGraph, Layer, Tensor


def block(acc: Accelerator) -> int:
    return max(acc.rows, acc.cols)


def padded(c: int, acc: Accelerator) -> int:
    b = block(acc)
    return -(-c // b) * b


def storage_bytes(t: Tensor, acc: Accelerator) -> int:
    """Bytes of ``t`` in device layout (NHWC, padded channels)."""
    c, h, w = t.storage or t.chw
    return h * w * padded(c, acc)


@dataclass(frozen=True)
class ConvGeometry:
    """A conv layer in device terms (padded channels; a fully connected layer is 1×1)."""

    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    pad_t: int
    pad_l: int
    dil_h: int
    dil_w: int


def im2col_channels(graph: IntGraph, lay: Layer, acc: Accelerator) -> int | None:
    """Padded channels of the im2col input when this conv runs on one, else None.

    A conv with few input channels (an image's 1 or 3) fills a fraction of the array's C
    lanes per tap; gathering its ``k_h·k_w·Cin`` taps into the channel axis first (im2col on
    the host core, CMSIS-NN style) makes it a 1×1 conv over ``pad(k_h·k_w·Cin)`` channels.
    Done when that at least halves the array's work."""
    if lay.kind != "conv" or len(graph.tensors[lay.inputs[0]].shape) != 4:
        return None
    _, cin, kh, kw = lay.params["weight"].shape
    if kh * kw == 1:
        return None
    k = padded(cin * kh * kw, acc)
    return k if 2 * k <= kh * kw * padded(cin, acc) else None


def im2col_bytes(graph: IntGraph, lay: Layer, acc: Accelerator) -> int:
    """Bytes of the im2col buffer of ``lay`` (0 when it runs without one)."""
    k = im2col_channels(graph, lay, acc)
    if k is None:
        return 0
    _, oh, ow = graph.tensors[lay.output].chw
    return oh * ow * k


def conv_geometry(graph: IntGraph, lay: Layer, acc: Accelerator) -> ConvGeometry:
    src, dst = graph.tensors[lay.inputs[0]], graph.tensors[lay.output]
    w = lay.params["weight"]
    out_c = padded(w.shape[0], acc)
    k = im2col_channels(graph, lay, acc)
    if k is not None:
        _, oh, ow = dst.chw
        return ConvGeometry(oh, ow, k, oh, ow, out_c, 1, 1, 1, 1, 0, 0, 1, 1)
    if len(src.shape) == 2:  # fully connected: the source's bytes as one vector
        return ConvGeometry(1, 1, storage_bytes(src, acc), 1, 1, out_c, 1, 1, 1, 1, 0, 0, 1, 1)
    _, ih, iw = src.chw
    _, oh, ow = dst.chw
    s, p, d = lay.attrs["stride"], lay.attrs["pad"], lay.attrs["dilation"]
    return ConvGeometry(ih, iw, padded(src.chw[0], acc), oh, ow, out_c, int(w.shape[2]),
                        int(w.shape[3]), s[0], s[1], p[0], p[1], d[0], d[1])


def device_weight_matrix(graph: IntGraph, lay: Layer, acc: Accelerator) -> np.ndarray:
    """The weight as ``(O, k_h, k_w, in_c_padded)`` over the device's input channel order."""
    src = graph.tensors[lay.inputs[0]]
    w = lay.params["weight"]
    o = w.shape[0]
    k = im2col_channels(graph, lay, acc)
    if k is not None:  # taps gathered into channels, in (k_h, k_w, Cin) order
        dev = np.zeros((o, 1, 1, k), np.int8)
        dev[:, 0, 0, :w[0].size] = w.transpose(0, 2, 3, 1).reshape(o, -1)
        return dev
    if len(src.shape) == 2:
        c, h, wd = src.storage or src.chw
        cp = padded(c, acc)
        dev = np.zeros((o, h, wd, cp), np.int8)
        dev[:, :, :, :c] = w.reshape(o, c, h, wd).transpose(0, 2, 3, 1)
        return dev.reshape(o, 1, 1, h * wd * cp)
    cp = padded(w.shape[1], acc)
    dev = np.zeros((o, w.shape[2], w.shape[3], cp), np.int8)
    dev[..., :w.shape[1]] = w.transpose(0, 2, 3, 1)
    return dev


def pack_weights(graph: IntGraph, lay: Layer, acc: Accelerator) -> np.ndarray:
    """Weights in tile layout ``[out_c/R][k_h][k_w][in_c/C][R][C]`` (int8, flat)."""
    r, c = acc.rows, acc.cols
    dev = device_weight_matrix(graph, lay, acc)
    o, kh, kw, cin = dev.shape
    op = padded(o, acc)
    full = np.zeros((op, kh, kw, cin), np.int8)
    full[:o] = dev
    blocks = full.reshape(op // r, r, kh, kw, cin // c, c).transpose(0, 2, 3, 4, 1, 5)
    return np.ascontiguousarray(blocks).reshape(-1)


def pad_channels(values: np.ndarray, n: int, fill: int = 0) -> np.ndarray:
    out = np.full(n, fill, values.dtype)
    out[:values.size] = values
    return out
