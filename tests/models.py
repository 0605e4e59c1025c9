"""A zoo of small ONNX models for tests, built with ``onnx.helper`` and seeded random weights.

Every builder returns an opset-17 ``onnx.ModelProto`` that passes
``onnx.checker.check_model(full_check=True)``, has fully static shapes (``value_info`` filled in
by strict shape inference) and is byte-for-byte the same on every call with the same seed.
Weights are He-scaled and BatchNorm statistics are kept near (0, 1), so activations stay O(1)
and float32 comparisons across runtimes are meaningful.

========================= ================ ======== =============================================
builder                   input            output   what it exercises
========================= ================ ======== =============================================
``resnet_block_cnn``      (1, 3, 32, 32)   (1, 10)  Conv+BN+Relu, identity and strided 1x1
                                                    projection shortcuts, GAP, Flatten, Gemm
``mlp``                   (4, 64)          (4, 10)  Gemm (transB=1 and 0), MatMul+Add, Relu
``transformer_block``     (1, 16, 64)      (1, 16,  4-head self-attention from MatMul / Reshape /
                                           64)      Transpose / Softmax / Div, LayerNorm, Erf-GELU
``depthwise_block``       (1, 3, 16, 16)   (1, 10)  MobileNetV2 inverted residual: 1x1 expand,
                                                    3x3 depthwise (group=C), 1x1 project, Clip
``concat_block``          (1, 3, 16, 16)   (1, 10)  Inception-style branches joined by Concat
========================= ================ ======== =============================================

``ZOO`` maps each name to its builder; :func:`get_model` looks one up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "ZOO",
    "concat_block",
    "depthwise_block",
    "get_model",
    "mlp",
    "random_inputs",
    "resnet_block_cnn",
    "transformer_block",
]

#: ONNX opset of every zoo model.
OPSET = 17


class _GraphBuilder:
    """Collects nodes and seeded initializers; names values ``<prefix>_<n>``."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        """Add ``value`` as an initializer; returns its name."""
        name = self._fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def he_weight(self, prefix: str, shape: Sequence[int], fan_in: int) -> str:
        """He-normal float32 weight: N(0, 2 / fan_in)."""
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return self.const(prefix, w.astype(np.float32))

    def small(self, prefix: str, shape: Sequence[int], scale: float = 0.1) -> str:
        """Small float32 tensor N(0, scale^2), for biases."""
        return self.const(prefix, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: Sequence[str], prefix: str | None = None, **attrs) -> str:
        """Append one single-output node; returns the output name."""
        out = self._fresh(prefix or op_type.lower())
        node_name = f"{op_type}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    # ---- layer helpers -------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        *,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
    ) -> str:
        """2-D convolution with "same" padding (``kernel // 2``)."""
        w = self.he_weight("conv_w", (cout, cin // group, kernel, kernel), cin // group * kernel**2)
        inputs = [x, w] + ([self.small("conv_b", (cout,))] if bias else [])
        pad = kernel // 2
        return self.op(
            "Conv",
            inputs,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
            group=group,
        )

    def batch_norm(self, x: str, channels: int) -> str:
        """Inference-mode BatchNormalization with random, well-conditioned statistics."""
        rng = self.rng
        scale = self.const("bn_scale", rng.uniform(0.5, 1.5, channels).astype(np.float32))
        shift = self.const("bn_bias", (rng.standard_normal(channels) * 0.1).astype(np.float32))
        mean = self.const("bn_mean", (rng.standard_normal(channels) * 0.1).astype(np.float32))
        var = self.const("bn_var", rng.uniform(0.5, 1.5, channels).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, **kw) -> str:
        """Conv (no bias) followed by BatchNormalization."""
        return self.batch_norm(self.conv(x, cin, cout, kernel, **kw), cout)

    def relu(self, x: str) -> str:
        """Relu."""
        return self.op("Relu", [x])

    def classifier_head(self, x: str, channels: int, classes: int = 10) -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1)."""
        flat = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        w = self.he_weight("fc_w", (classes, channels), channels)
        return self.op("Gemm", [flat, w, self.small("fc_b", (classes,))], transB=1)

    def build(
        self,
        inputs: Sequence[tuple[str, Sequence[int]]],
        outputs: Sequence[tuple[str, Sequence[int]]],
    ) -> onnx.ModelProto:
        """Assemble, check and shape-infer the model (float32 inputs and outputs)."""
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="hwcc-tests",
            doc_string=f"hwcc test zoo: {self.name}",
        )
        # IR version 8 is the newest every supported onnxruntime reads.
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def _rename_output(b: _GraphBuilder, value: str, name: str) -> None:
    """Rename the graph value ``value`` (the last node's output) to ``name``."""
    node = b.nodes[-1]
    if list(node.output) != [value]:
        raise ValueError(f"{value!r} is not the output of the last node")
    node.output[0] = name


def resnet_block_cnn(seed: int = 0) -> onnx.ModelProto:
    """ResNet-style CNN: stem, an identity block, a strided block with a 1x1 projection, head.

    ``input`` (1, 3, 32, 32) -> Conv(bias)+BN+Relu stem (16 ch) -> basic block (16 ch, identity
    shortcut) -> basic block (32 ch, stride 2, Conv1x1/2 + BN projection shortcut) -> GAP ->
    Flatten -> Gemm -> ``logits`` (1, 10).
    """
    b = _GraphBuilder("resnet_block_cnn", seed)
    x = b.relu(b.conv_bn("input", 3, 16, 3, bias=True))
    # Block 1: identity shortcut.
    y = b.relu(b.conv_bn(x, 16, 16, 3))
    y = b.conv_bn(y, 16, 16, 3)
    x = b.relu(b.op("Add", [y, x]))
    # Block 2: stride-2 body, strided 1x1 projection shortcut.
    y = b.relu(b.conv_bn(x, 16, 32, 3, stride=2))
    y = b.conv_bn(y, 32, 32, 3)
    shortcut = b.conv_bn(x, 16, 32, 1, stride=2)
    x = b.relu(b.op("Add", [y, shortcut]))
    _rename_output(b, b.classifier_head(x, 32), "logits")
    return b.build([("input", (1, 3, 32, 32))], [("logits", (1, 10))])


def mlp(seed: int = 0) -> onnx.ModelProto:
    """Three-layer perceptron written three ways.

    ``input`` (4, 64) -> Gemm(transB=1) 128 -> Relu -> MatMul + Add 128 -> Relu ->
    Gemm(transB=0) 10 -> ``logits`` (4, 10).
    """
    b = _GraphBuilder("mlp", seed)
    w1 = b.he_weight("fc1_w", (128, 64), 64)  # (out, in): transB=1
    h = b.relu(b.op("Gemm", ["input", w1, b.small("fc1_b", (128,))], transB=1))
    w2 = b.he_weight("fc2_w", (128, 128), 128)  # (in, out) for MatMul
    h = b.relu(b.op("Add", [b.op("MatMul", [h, w2]), b.small("fc2_b", (128,))]))
    w3 = b.he_weight("fc3_w", (128, 10), 128)  # (in, out): transB=0
    _rename_output(b, b.op("Gemm", [h, w3, b.small("fc3_b", (10,))]), "logits")
    return b.build([("input", (4, 64))], [("logits", (4, 10))])


def transformer_block(
    seed: int = 0, seq: int = 16, hidden: int = 64, heads: int = 4, ffn: int = 256
) -> onnx.ModelProto:
    """Post-LN transformer encoder block with the attention written out op by op.

    ``input`` (1, seq, hidden) -> Q, K, V = MatMul + Add -> Reshape (1, seq, heads, d) ->
    Transpose -> softmax(Q K^T / sqrt(d)) V -> Transpose -> Reshape -> MatMul + Add -> residual
    Add -> LayerNormalization -> FFN [MatMul + Add -> GELU as x * 0.5 * (1 + erf(x / sqrt 2))
    (Div, Erf, Add, Mul, Mul) -> MatMul + Add] -> residual Add -> LayerNormalization ->
    ``output`` (1, seq, hidden).
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    d = hidden // heads
    b = _GraphBuilder("transformer_block", seed)

    def linear(x: str, cin: int, cout: int, prefix: str) -> str:
        w = b.he_weight(f"{prefix}_w", (cin, cout), cin)
        return b.op("Add", [b.op("MatMul", [x, w]), b.small(f"{prefix}_b", (cout,))])

    def layer_norm(x: str) -> str:
        gamma = b.const("ln_scale", b.rng.uniform(0.8, 1.2, hidden).astype(np.float32))
        beta = b.small("ln_bias", (hidden,))
        return b.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    split_shape = b.const("split_heads_shape", np.array([1, seq, heads, d], dtype=np.int64))
    merge_shape = b.const("merge_heads_shape", np.array([1, seq, hidden], dtype=np.int64))

    def heads_of(x: str, perm: list[int]) -> str:
        return b.op("Transpose", [b.op("Reshape", [x, split_shape])], perm=perm)

    x = "input"
    q = heads_of(linear(x, hidden, hidden, "q"), [0, 2, 1, 3])  # (1, h, s, d)
    k_t = heads_of(linear(x, hidden, hidden, "k"), [0, 2, 3, 1])  # (1, h, d, s)
    v = heads_of(linear(x, hidden, hidden, "v"), [0, 2, 1, 3])  # (1, h, s, d)
    scores = b.op("MatMul", [q, k_t])
    scores = b.op("Div", [scores, b.const("sqrt_d", np.array(np.sqrt(d), dtype=np.float32))])
    probs = b.op("Softmax", [scores], axis=-1)
    ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])  # (1, s, h, d)
    ctx = b.op("Reshape", [ctx, merge_shape])
    x = layer_norm(b.op("Add", [x, linear(ctx, hidden, hidden, "attn_out")]))

    h = linear(x, hidden, ffn, "ffn1")
    erf = b.op("Erf", [b.op("Div", [h, b.const("sqrt2", np.array(np.sqrt(2.0), np.float32))])])
    one_plus = b.op("Add", [erf, b.const("one", np.array(1.0, np.float32))])
    gelu = b.op("Mul", [b.op("Mul", [h, one_plus]), b.const("half", np.array(0.5, np.float32))])
    x = layer_norm(b.op("Add", [x, linear(gelu, ffn, hidden, "ffn2")]))
    _rename_output(b, x, "output")
    return b.build([("input", (1, seq, hidden))], [("output", (1, seq, hidden))])


def depthwise_block(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2-style inverted residual block between a stem and a classifier head.

    ``input`` (1, 3, 16, 16) -> Conv+BN+Relu stem (16 ch) -> [1x1 expand to 64 + BN + Clip(0, 6)
    -> 3x3 depthwise (group=64) + BN + Clip(0, 6) -> 1x1 project to 16 + BN (linear)] + residual
    Add -> GAP -> Flatten -> Gemm -> ``logits`` (1, 10).
    """
    b = _GraphBuilder("depthwise_block", seed)
    lo = b.const("relu6_min", np.array(0.0, np.float32))
    hi = b.const("relu6_max", np.array(6.0, np.float32))
    x = b.relu(b.conv_bn("input", 3, 16, 3))
    y = b.op("Clip", [b.conv_bn(x, 16, 64, 1), lo, hi])
    y = b.op("Clip", [b.conv_bn(y, 64, 64, 3, group=64), lo, hi])
    y = b.conv_bn(y, 64, 16, 1)
    x = b.op("Add", [x, y])
    _rename_output(b, b.classifier_head(x, 16), "logits")
    return b.build([("input", (1, 3, 16, 16))], [("logits", (1, 10))])


def concat_block(seed: int = 0) -> onnx.ModelProto:
    """Inception-style block: two branches concatenated on channels, then a 1x1 conv.

    ``input`` (1, 3, 16, 16) -> Conv(bias)+Relu stem (16 ch) -> branch A [1x1 conv 8 + BN +
    Relu] and branch B [1x1 conv 8 + Relu -> 3x3 conv 12 + BN + Relu] -> Concat(axis=1, 20 ch)
    -> 1x1 Conv(bias) 16 + Relu -> GAP -> Flatten -> Gemm -> ``logits`` (1, 10).
    """
    b = _GraphBuilder("concat_block", seed)
    x = b.relu(b.conv("input", 3, 16, 3, bias=True))
    branch_a = b.relu(b.conv_bn(x, 16, 8, 1))
    branch_b = b.relu(b.conv(x, 16, 8, 1, bias=True))
    branch_b = b.relu(b.conv_bn(branch_b, 8, 12, 3))
    x = b.op("Concat", [branch_a, branch_b], axis=1)
    x = b.relu(b.conv(x, 20, 16, 1, bias=True))
    _rename_output(b, b.classifier_head(x, 16), "logits")
    return b.build([("input", (1, 3, 16, 16))], [("logits", (1, 10))])


#: Every zoo model by name.
ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet_block_cnn": resnet_block_cnn,
    "mlp": mlp,
    "transformer_block": transformer_block,
    "depthwise_block": depthwise_block,
    "concat_block": concat_block,
}


def get_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build the zoo model called ``name``; raises ``ValueError`` listing the known names."""
    try:
        builder = ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
    return builder(seed=seed)


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input that is not an initializer.

    Shapes come from the model and must be static; float inputs get N(0, 1) values, integer
    inputs get values in [0, 10).
    """
    rng = np.random.default_rng(seed)
    init_names = {init.name for init in model.graph.initializer}
    inputs: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in init_names:
            continue
        tensor_type = value.type.tensor_type
        shape = []
        for dim in tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                raise ValueError(f"input {value.name!r} has a non-static dimension: {dim}")
            shape.append(dim.dim_value)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            inputs[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[value.name] = rng.integers(0, 10, shape).astype(dtype)
    return inputs
