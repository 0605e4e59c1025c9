"""Channel dependency groups: which weights, biases and reshapes shrink together."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes import Canonicalize
from passes.channel_groups import HANDLERS, SHAPE, ChannelGroup, analyze
from tests.passes.prune_helpers import apply, imported, tiny_cnn, weights_by_binding, zoo


def roles(group: ChannelGroup) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in group.members:
        out[m.role] = out.get(m.role, 0) + 1
    return out


def check_consistent(mod, groups: list[ChannelGroup]) -> None:
    """Every member maps every unit inside its tensor; producers span whole output axes."""
    weights = weights_by_binding(mod)
    for g in groups:
        if not g.prunable:
            continue
        for m in g.members:
            if m.arg == SHAPE:
                continue
            w = weights[m.binding]
            idx = m.indices(np.arange(g.size))
            assert idx.max() < w.shape[m.axis], (g.name, m)
            assert len(set(idx.tolist())) == g.size * m.width
            if m.role in ("out", "dw"):
                assert w.shape[m.axis] == g.size * g.unit_elems, (g.name, m)


def test_resnet_residual_adds_couple_convs() -> None:
    """Residual adds put the stem and block-1 output convs in one group, block-2 conv and
    projection shortcut in another; the classifier feeding the output is blocked."""
    _, mod = zoo("resnet_block_cnn")
    groups = analyze(mod)
    check_consistent(mod, groups)
    prunable = [g for g in groups if g.prunable]
    assert sorted(g.size for g in prunable) == [16, 16, 32, 32]
    residual = [g for g in prunable if roles(g)["out"] == 2]
    assert sorted(g.size for g in residual) == [16, 32]
    stem = next(g for g in residual if g.size == 16)
    assert roles(stem)["in"] == 3  # block-1 conv1, block-2 conv1 and the projection
    head = next(g for g in residual if g.size == 32)
    dense_in = [m for m in head.consumers() if weights_by_binding(mod)[m.binding].ndim == 2]
    assert len(dense_in) == 1 and dense_in[0].width == 1  # GAP -> flatten -> Gemm
    blocked = [g for g in groups if not g.prunable]
    assert len(blocked) == 1 and "model output" in blocked[0].blocked


def test_mlp_neurons() -> None:
    """Each hidden layer is a group: its weight columns, bias and the next layer's rows."""
    _, mod = zoo("mlp")
    groups = analyze(mod)
    check_consistent(mod, groups)
    prunable = [g for g in groups if g.prunable]
    assert [g.size for g in prunable] == [128, 128]
    for g in prunable:
        assert roles(g) == {"out": 1, "param": 1, "in": 1}


def test_transformer_heads_pruned_as_units() -> None:
    """Q, K, V projections, their biases, the head reshapes and the output projection's rows
    form one group whose unit is a whole head; LayerNorm-coupled residual stream is blocked."""
    _, mod = zoo("transformer_block")
    groups = analyze(mod)
    check_consistent(mod, groups)
    heads = next(g for g in groups if g.unit_elems == 16)
    assert heads.prunable and heads.size == 4
    assert roles(heads) == {"out": 3, "param": 3, "shape": 4, "in": 1}
    assert heads.consumers()[0].width == 16
    ffn = next(g for g in groups if g.size == 256)
    assert ffn.prunable and roles(ffn)["out"] == 1
    stream = [g for g in groups if g.size == 64]
    assert stream and all(not g.prunable for g in stream)


def test_depthwise_conv_passes_channels_through() -> None:
    """Expand conv, depthwise conv (dw member) and project conv inputs form one group; the
    stem and the project conv are coupled by the residual add."""
    _, mod = zoo("depthwise_block")
    groups = analyze(mod)
    check_consistent(mod, groups)
    expand = next(g for g in groups if g.size == 64)
    assert expand.prunable and roles(expand)["dw"] == 1 and roles(expand)["in"] == 1
    residual = next(g for g in groups if g.size == 16)
    assert residual.prunable and roles(residual)["out"] == 2


def test_concat_offsets() -> None:
    """The conv after the concat takes branch A's channels at offset 0, branch B's at 8."""
    _, mod = zoo("concat_block")
    groups = analyze(mod)
    check_consistent(mod, groups)
    consumer_ins = {}
    for g in groups:
        for m in g.consumers():
            if weights_by_binding(mod)[m.binding].shape[1] == 20:
                consumer_ins[g.size] = m.offset
    assert consumer_ins == {8: 0, 12: 8}


def _flatten_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "flatten",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_flatten_maps_channel_to_feature_block() -> None:
    """Conv channel k owns dense rows [4k, 4k + 4) after a 2x2 map is flattened."""
    mod = apply(Canonicalize(), imported(_flatten_model()))
    groups = analyze(mod)
    check_consistent(mod, groups)
    conv = next(g for g in groups if g.prunable)
    dense_in = conv.consumers()[0]
    assert (dense_in.axis, dense_in.width) == (0, 4)
    assert roles(conv)["shape"] == 1  # the flatten's target shape shrinks too


def test_unsafe_groups_are_blocked_with_reasons() -> None:
    """Negative cases: the layer producing the output and a grouped conv are never pruned."""
    rng = np.random.default_rng(0)
    model = tiny_cnn(rng.normal(size=(4, 2, 3, 3)), np.zeros(4), rng.normal(size=(2, 4, 1, 1)), 2)
    groups = analyze(apply(Canonicalize(), imported(model)))
    assert groups and not any(g.prunable for g in groups)
    reasons = " ".join(g.blocked for g in groups)
    assert "grouped conv2d" in reasons and "model output" in reasons


def test_unknown_op_blocks() -> None:
    """A Softmax over the channel axis has no safe mapping: its group is blocked."""
    rng = np.random.default_rng(0)
    model = tiny_cnn(rng.normal(size=(4, 2, 3, 3)), np.zeros(4), rng.normal(size=(2, 4, 1, 1)))
    model.graph.node[1].op_type = "Softmax"
    model.graph.node[1].attribute.append(helper.make_attribute("axis", 1))
    groups = analyze(apply(Canonicalize(), imported(model)))
    first = next(g for g in groups if g.size == 4)
    assert not first.prunable and "softmax" in first.blocked


@pytest.mark.parametrize("op", ["relax.nn.conv2d", "relax.matmul", "relax.add", "relax.concat"])
def test_handler_registry(op: str) -> None:
    """One handler per op kind, looked up by name."""
    assert callable(HANDLERS[op])
