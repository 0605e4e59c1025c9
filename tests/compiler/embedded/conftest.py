"""Helpers of the embedded-target tests: small ONNX models built here, and an independent
numpy interpreter of an artifact's integer graph (``graph.json`` + ``graph_params.npz``).

The interpreter follows the integer semantics as documented (compiler/embedded/graph.py,
integerize.py, csrc/hwcc_kernels.h, csrc/hwcc_acc.h), written from scratch: it shares no code
with the library, so a disagreement between it and the simulated C is a real finding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


# -- integer arithmetic (int64 numpy, independent of compiler.embedded) -------------------
def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (what int32_t arithmetic does)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + 2**31) & 0xFFFFFFFF) - 2**31


def requant(v: Any, m: Any, s: Any) -> np.ndarray:
    """(int32)((v * m + 2^(s-1)) >> s), arithmetic (floor) shift, in int64."""
    v = np.asarray(v, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    num = v * m + np.left_shift(np.int64(1), s - 1)
    return wrap32(np.floor_divide(num, np.left_shift(np.int64(1), s)))


def _clamp(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.minimum(np.maximum(x, int(lo)), int(hi))


def _conv(x: np.ndarray, w: np.ndarray, stride: list[int], pad: list[int],
          dil: list[int], out_hw: tuple[int, int]) -> np.ndarray:
    """int32 (wrapping) convolution of x (C, H, W) with w (O, C, kh, kw), zero padding
    [top, left, bottom, right]; output (O, oh, ow) as int64 holding int32 values."""
    c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c, (w.shape, x.shape)
    oh, ow = out_hw
    sh, sw = stride
    dh, dw = dil
    # enough zero padding on the bottom / right for every window of the output
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    pb = max(pad[2], need_h - h - pad[0])
    pr = max(pad[3], need_w - wd - pad[1])
    xp = np.zeros((c, pad[0] + h + pb, pad[1] + wd + pr), np.int64)
    xp[:, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    acc = np.zeros((o, oh, ow), np.int64)
    w64 = w.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                       j * dw: j * dw + (ow - 1) * sw + 1: sw]  # (C, oh, ow)
            acc += np.einsum("oc,chw->ohw", w64[:, :, i, j], patch)
    return wrap32(acc)


def _maxpool(x: np.ndarray, kernel: list[int], stride: list[int], pad: list[int],
             out_hw: tuple[int, int]) -> np.ndarray:
    """Max over the valid (non-padding) positions of each window of x (C, H, W)."""
    c, h, wd = x.shape
    oh, ow = out_hw
    out = np.empty((c, oh, ow), np.int64)
    for y in range(oh):
        for z in range(ow):
            y0, z0 = y * stride[0] - pad[0], z * stride[1] - pad[1]
            ys = slice(max(y0, 0), min(y0 + kernel[0], h))
            zs = slice(max(z0, 0), min(z0 + kernel[1], wd))
            win = x[:, ys, zs].reshape(c, -1)
            assert win.shape[1] > 0, "a window with no valid position"
            out[:, y, z] = win.max(axis=1)
    return out


def load_graph(artifact_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    g = json.loads((Path(artifact_dir) / "graph.json").read_text())
    with np.load(Path(artifact_dir) / "graph_params.npz") as z:
        params = {k: z[k] for k in z.files}
    return g, params


def interpret(graph: dict[str, Any], params: dict[str, np.ndarray], q_in: np.ndarray
              ) -> np.ndarray:
    """Run the integer graph on one int8 input (the model's input shape); the int8 output
    (the output tensor's logical shape)."""
    shapes = {t["name"]: tuple(t["shape"]) for t in graph["tensors"]}
    (in_name,) = graph["inputs"]
    (out_name,) = graph["outputs"]
    assert tuple(q_in.shape) == shapes[in_name]
    assert q_in.dtype == np.int8
    vals: dict[str, np.ndarray] = {in_name: q_in.astype(np.int64)}
    for lay in graph["layers"]:
        kind, a = lay["kind"], lay["attrs"]
        x = vals[lay["inputs"][0]]
        oshape = shapes[lay["output"]]
        if kind == "conv":
            p = {k: params[f"{lay['name']}.{k}"] for k in ("weight", "bias", "mult", "shift")}
            w = p["weight"]
            assert w.dtype == np.int8 and w.ndim == 4
            if x.ndim == 2:  # fully connected: (1, K) with weight (N, K, 1, 1)
                assert w.shape[2:] == (1, 1)
                x3 = x.reshape(-1, 1, 1)
                out_hw = (1, 1)
            else:
                x3 = x[0]
                out_hw = (oshape[2], oshape[3])
            acc = _conv(x3, w, a["stride"], a["pad"], a["dilation"], out_hw)
            o = w.shape[0]
            v = wrap32(acc + p["bias"].astype(np.int64).reshape(o, 1, 1))
            v = requant(v, p["mult"].reshape(o, 1, 1), p["shift"].reshape(o, 1, 1))
            y = _clamp(v, a["lo"], a["hi"])
        elif kind == "add":
            b = vals[lay["inputs"][1]]
            ta = requant(x * 65536, a["mult_a"], a["shift_a"])
            tb = requant(b * 65536, a["mult_b"], a["shift_b"])
            t = wrap32(ta + tb)
            y = _clamp(wrap32(t + 32768) >> 16, a["lo"], a["hi"])
        elif kind == "mean":
            s = x.sum(axis=(2, 3))
            y = _clamp(requant(s, a["mult"], a["shift"]), a["lo"], a["hi"])
        elif kind == "maxpool":
            y = _maxpool(x[0], a["kernel"], a["stride"], a["pad"], (oshape[2], oshape[3]))
        elif kind == "clamp":
            y = _clamp(x, a["lo"], a["hi"])
        elif kind == "view":
            y = x
        else:
            raise AssertionError(f"unknown layer kind {kind!r}")
        y = np.asarray(y, np.int64).reshape(oshape)
        assert y.min(initial=0) >= -128 and y.max(initial=0) <= 127, lay["name"]
        vals[lay["output"]] = y
    return vals[out_name].astype(np.int8)


# -- models -------------------------------------------------------------------------------
def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, base: str, value: np.ndarray) -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), nm))
        return nm

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1,
             pad: int | list[int] = 0, dilation: int = 1) -> str:
        """ONNX pads: an int (all sides) or [top, left, bottom, right]."""
        w = self.const("w", _he(self.rng, (cout, cin, k, k), cin * k * k))
        b = self.const("b", (self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        pads = [pad] * 4 if isinstance(pad, int) else list(pad)
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                       pads=pads, dilations=[dilation, dilation])

    def gemm(self, x: str, k: int, n: int) -> str:
        w = self.const("w", _he(self.rng, (n, k), k))
        b = self.const("b", (self.rng.standard_normal(n) * 0.1).astype(np.float32))
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, inp: str, in_shape: list[int], out: str, out_shape: list[int],
              name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet_block_model(seed: int = 0) -> onnx.ModelProto:
    """(1,3,12,12) -> conv/relu -> conv/relu -> conv -> + residual -> relu -> maxpool 2x2/2
    -> conv 16->24 (24: not a multiple of the channel block) -> relu -> GAP -> flatten ->
    gemm 24->5."""
    b = _Builder(seed)
    x = "input"
    r1 = b.op("Relu", [b.conv(x, 3, 16, 3, pad=1)])
    r2 = b.op("Relu", [b.conv(r1, 16, 16, 3, pad=1)])
    c3 = b.conv(r2, 16, 16, 3, pad=1)
    r3 = b.op("Relu", [b.op("Add", [c3, r1])])
    mp = b.op("MaxPool", [r3], kernel_shape=[2, 2], strides=[2, 2])
    r4 = b.op("Relu", [b.conv(mp, 16, 24, 3, pad=1)])
    gap = b.op("GlobalAveragePool", [r4])
    flat = b.op("Flatten", [gap], axis=1)
    out = b.gemm(flat, 24, 5)
    return b.model(x, [1, 3, 12, 12], out, [1, 5], "resnet_block")


def flatten_gemm_model(seed: int = 1) -> onnx.ModelProto:
    """A Gemm on the flattening of a spatial map of 20 channels (padded on the device, so
    the Gemm's weight columns must be reordered from NCHW to the device's NHWC bytes).
    (1,3,8,8) -> conv 3->20 (no activation: negative values) -> maxpool 3x3/2 pad 1 (the
    padding must never win over negatives) -> conv 1x1 20->20 -> relu -> flatten (320)
    -> gemm 320->7."""
    b = _Builder(seed)
    x = "input"
    c1 = b.conv(x, 3, 20, 3, pad=1)
    mp = b.op("MaxPool", [c1], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    r2 = b.op("Relu", [b.conv(mp, 20, 20, 1)])
    flat = b.op("Flatten", [r2], axis=1)
    out = b.gemm(flat, 320, 7)
    return b.model(x, [1, 3, 8, 8], out, [1, 7], "flatten_gemm")


def strided_dilated_model(seed: int = 4) -> onnx.ModelProto:
    """Convolution geometry off the common path: (1,3,11,11) -> conv 3->16 3x3 stride 2 with
    asymmetric pads [top 1, left 0, bottom 0, right 1] (5x5 out; 3 input channels: the
    im2col path) -> relu -> conv 16->16 3x3 dilation 2 pad 2 -> relu -> conv 1x1 16->8 ->
    GAP -> flatten -> gemm 8->3."""
    b = _Builder(seed)
    x = "input"
    r1 = b.op("Relu", [b.conv(x, 3, 16, 3, stride=2, pad=[1, 0, 0, 1])])
    r2 = b.op("Relu", [b.conv(r1, 16, 16, 3, pad=2, dilation=2)])
    c3 = b.conv(r2, 16, 8, 1)
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [c3])], axis=1)
    out = b.gemm(flat, 8, 3)
    return b.model(x, [1, 3, 11, 11], out, [1, 3], "strided_dilated")


def flatten_relu_gemm_model(seed: int = 2) -> onnx.ModelProto:
    """A standalone activation between the Flatten of a spatial map and the Gemm:
    (1,3,6,6) -> conv 3->20 -> flatten (720) -> relu -> gemm 720->6."""
    b = _Builder(seed)
    x = "input"
    c1 = b.conv(x, 3, 20, 3, pad=1)
    flat = b.op("Flatten", [c1], axis=1)
    r = b.op("Relu", [flat])
    out = b.gemm(r, 720, 6)
    return b.model(x, [1, 3, 6, 6], out, [1, 6], "flatten_relu_gemm")


def clip_model(seed: int = 5) -> onnx.ModelProto:
    """ONNX Clip with tensor bounds (imported as max/min with constants), folded into a conv
    (ReLU6-style) and standalone after a Flatten: (1,3,6,6) -> conv 3->8 -> Clip(0, 1.5) ->
    conv 8->8 -> flatten (288) -> Clip(-0.5, 0.75) -> gemm 288->4."""
    b = _Builder(seed)
    x = "input"
    lo, hi = b.const("lo", np.array(0.0, np.float32)), b.const("hi", np.array(1.5, np.float32))
    c1 = b.op("Clip", [b.conv(x, 3, 8, 3, pad=1), lo, hi])
    flat = b.op("Flatten", [b.conv(c1, 8, 8, 3, pad=1)], axis=1)
    lo2 = b.const("lo", np.array(-0.5, np.float32))
    hi2 = b.const("hi", np.array(0.75, np.float32))
    out = b.gemm(b.op("Clip", [flat, lo2, hi2]), 288, 4)
    return b.model(x, [1, 3, 6, 6], out, [1, 4], "clip")


def float_op_model(op: str = "Sigmoid", seed: int = 3) -> onnx.ModelProto:
    """(1,3,8,8) -> conv -> <op> -> GAP -> flatten -> gemm: one op with no integer kernel."""
    b = _Builder(seed)
    x = "input"
    s = b.op(op, [b.conv(x, 3, 8, 3, pad=1)])
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [s])], axis=1)
    out = b.gemm(flat, 8, 4)
    return b.model(x, [1, 3, 8, 8], out, [1, 4], f"with_{op.lower()}")


def random_calib(shape: tuple[int, ...], n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """n seeded samples in [0, 1), with a leading sample axis."""
    rng = np.random.default_rng(seed)
    return {"input": rng.random((n, *shape), dtype=np.float32)}


def largest_activation_bytes(graph: dict[str, Any], block: int) -> int:
    """Bytes of the largest activation in device layout, from the logical shapes alone:
    NHWC with channels padded to ``block`` (a 2-D tensor (1, F) as F padded channels)."""
    best = 0
    for t in graph["tensors"]:
        shape = t["shape"]
        if len(shape) == 4:
            c, hw = shape[1], shape[2] * shape[3]
        else:
            c, hw = int(np.prod(shape[1:])), 1
        best = max(best, hw * (-(-c // block) * block))
    return best
