"""Benchmark models built with ``onnx.helper`` from seeded random weights (no torch needed).

The architectures are the standard ones — ResNet-18 (He et al. 2016), MobileNetV2 (Sandler
et al. 2018), EfficientNet-B0 (Tan & Le 2019: Swish, squeeze-and-excitation, 5x5 depthwise
convs) and a 4-layer BERT encoder (hidden 256, 4 heads, sequence 128) — with BatchNorm kept
as separate nodes, as exporters emit them. Weights are random: these models
measure speed, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, arr: np.ndarray, base: str = "w") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "Relu") -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        w *= np.sqrt(2.0 / fan_in)
        y = self.node("Conv", [x, self.const(w)], kernel_shape=[k, k], strides=[stride, stride],
                      pads=[k // 2] * 4, group=group)
        scale = (1.0 + 0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        bias = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        mean = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        var = (1.0 + 0.1 * self.rng.random(cout)).astype(np.float32)
        y = self.node("BatchNormalization", [y, self.const(scale), self.const(bias),
                                             self.const(mean), self.const(var)], epsilon=1e-5)
        if act == "Relu":
            y = self.node("Relu", [y])
        elif act == "Relu6":
            y = self.node("Clip", [y, self.const(np.float32(0.0)), self.const(np.float32(6.0))])
        elif act == "Swish":
            y = self.swish(y)
        return y

    def swish(self, x: str) -> str:
        """SiLU as exporters write it at opset 17: x * sigmoid(x)."""
        return self.node("Mul", [x, self.node("Sigmoid", [x])])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        b = (0.01 * self.rng.standard_normal(cout)).astype(np.float32)
        return self.node("Gemm", [x, self.const(w), self.const(b)], transB=1)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], output: str,
              out_shape: list[int], out_name: str = "output") -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], [out_name], name="output_id"))
        graph = helper.make_graph(self.nodes, name, inputs,
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                                 out_shape)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hwcc-benchmarks")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet18(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 for 224×224 ImageNet-shaped input, 1000 classes (11.7 M parameters)."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, stride=2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            y = b.conv_bn(x, cin, cout, 3, stride=s)
            y = b.conv_bn(y, cout, cout, 3, act=None)
            short = x if (s == 1 and cin == cout) else b.conv_bn(x, cin, cout, 1, stride=s,
                                                                  act=None)
            x = b.node("Relu", [b.node("Add", [y, short])])
            cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 512, 1000)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])
    return b.model("resnet18", [inp], x, [batch, 1000])


def mobilenet_v2(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0) for 224×224 input, 1000 classes (3.5 M parameters)."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 32, 3, stride=2, act="Relu6")
    cin = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.conv_bn(x, cin, hidden, 1, act="Relu6")
            y = b.conv_bn(y, hidden, hidden, 3, stride=stride, group=hidden, act="Relu6")
            y = b.conv_bn(y, hidden, c, 1, act=None)
            x = b.node("Add", [x, y]) if (stride == 1 and cin == c) else y
            cin = c
    x = b.conv_bn(x, cin, 1280, 1, act="Relu6")
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 1280, 1000)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])
    return b.model("mobilenet_v2", [inp], x, [batch, 1000])


def efficientnet_b0(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0 for 224×224 input, 1000 classes (5.3 M parameters): MBConv blocks with
    Swish and squeeze-and-excitation (pool, 1×1 conv, Swish, 1×1 conv, sigmoid, multiply)."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 32, 3, stride=2, act="Swish")
    cin = 32
    # (expansion, channels, repeats, stride, kernel)
    settings = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    for t, c, n, s, k in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.conv_bn(x, cin, hidden, 1, act="Swish")
            y = b.conv_bn(y, hidden, hidden, k, stride=stride, group=hidden, act="Swish")
            squeeze = max(1, cin // 4)
            g = b.node("GlobalAveragePool", [y])
            g = b.swish(b.node("Conv", [g, b.const(_he((squeeze, hidden, 1, 1), b.rng)),
                                        b.const(np.zeros(squeeze, np.float32))]))
            g = b.node("Conv", [g, b.const(_he((hidden, squeeze, 1, 1), b.rng)),
                                b.const(np.zeros(hidden, np.float32))])
            y = b.node("Mul", [y, b.node("Sigmoid", [g])])
            y = b.conv_bn(y, hidden, c, 1, act=None)
            x = b.node("Add", [x, y]) if (stride == 1 and cin == c) else y
            cin = c
    x = b.conv_bn(x, cin, 1280, 1, act="Swish")
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 1280, 1000)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])
    return b.model("efficientnet_b0", [inp], x, [batch, 1000])


def _he(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def bert(layers: int = 4, hidden: int = 256, heads: int = 4, seq: int = 128,
         vocab: int = 8000, batch: int = 1, seed: int = 0, embed: bool = True) -> onnx.ModelProto:
    """A BERT encoder (token + position embeddings, post-LN layers, GELU FFN of 4×hidden).

    ``embed=False``: no embeddings; the float input ``input`` (batch, seq, hidden) goes to the
    first LayerNorm (a transformer block of ``layers`` encoder layers).
    """
    b = _Builder(seed)
    r = b.rng
    hd = hidden // heads
    if embed:
        tok = b.const((0.02 * r.standard_normal((vocab, hidden))).astype(np.float32), "tok_emb")
        pos = b.const((0.02 * r.standard_normal((1, seq, hidden))).astype(np.float32), "pos_emb")
        x = b.node("Gather", [tok, "input_ids"], axis=0)
        x = b.node("Add", [x, pos])
    else:
        x = "input"

    def layer_norm(v: str) -> str:
        g = b.const((1 + 0.05 * r.standard_normal(hidden)).astype(np.float32), "ln_g")
        bb = b.const((0.05 * r.standard_normal(hidden)).astype(np.float32), "ln_b")
        return b.node("LayerNormalization", [v, g, bb], axis=-1, epsilon=1e-12)

    def dense(v: str, cin: int, cout: int) -> str:
        w = (r.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)
        bias = (0.01 * r.standard_normal(cout)).astype(np.float32)
        return b.node("Add", [b.node("MatMul", [v, b.const(w)]), b.const(bias)])

    x = layer_norm(x)
    split_shape = b.const(np.array([batch, seq, heads, hd], np.int64), "shape")
    merge_shape = b.const(np.array([batch, seq, hidden], np.int64), "shape")
    scale = b.const(np.float32(1.0 / np.sqrt(hd)), "scale")
    for _ in range(layers):
        def heads_of(v: str, perm: list[int]) -> str:
            return b.node("Transpose", [b.node("Reshape", [v, split_shape])], perm=perm)

        q = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(dense(x, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        att = b.node("Softmax", [b.node("Mul", [b.node("MatMul", [q, k]), scale])], axis=-1)
        ctx = b.node("Transpose", [b.node("MatMul", [att, v])], perm=[0, 2, 1, 3])
        ctx = b.node("Reshape", [ctx, merge_shape])
        x = layer_norm(b.node("Add", [x, dense(ctx, hidden, hidden)]))
        h = dense(x, hidden, 4 * hidden)
        h = b.node("Gelu", [h]) if OPSET >= 20 else _gelu(b, h)
        x = layer_norm(b.node("Add", [x, dense(h, 4 * hidden, hidden)]))
    if embed:
        inp = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq])
    else:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, seq, hidden])
    return b.model("bert" if embed else "transformer_block", [inp], x, [batch, seq, hidden])


def mobilenet_block(channels: int = 64, expand: int = 6, size: int = 28, blocks: int = 2,
                    seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 inverted residual blocks at one resolution: 1×1 expand + ReLU6, 3×3
    depthwise + ReLU6, 1×1 project, residual add; input and output (1, channels, size, size)."""
    b = _Builder(seed)
    x = "input"
    hidden = channels * expand
    for _ in range(blocks):
        y = b.conv_bn(x, channels, hidden, 1, act="Relu6")
        y = b.conv_bn(y, hidden, hidden, 3, group=hidden, act="Relu6")
        y = b.conv_bn(y, hidden, channels, 1, act=None)
        x = b.node("Add", [x, y])
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])
    return b.model("mobilenet_block", [inp], x, [1, channels, size, size])


def _gelu(b: _Builder, x: str) -> str:
    """Exact GELU as exporters write it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    e = b.node("Erf", [b.node("Div", [x, b.const(np.float32(np.sqrt(2.0)))])])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [e, b.const(np.float32(1.0))])]),
                          b.const(np.float32(0.5))])


MODELS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2,
          "efficientnet_b0": efficientnet_b0, "bert": bert}


def get(name: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the benchmark model ``name``, built once into ``cache_dir``."""
    if name not in MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; known: {', '.join(MODELS)}")
    d = Path(cache_dir or Path(__file__).resolve().parent / ".models")
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.onnx"
    if not path.exists():
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save(MODELS[name](), str(tmp))
        tmp.replace(path)
    return path
