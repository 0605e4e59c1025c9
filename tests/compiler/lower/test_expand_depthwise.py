"""Expansion 1x1 conv -> activation -> depthwise conv as one kernel
(compiler.lower.rewrites.expand_depthwise
and compiler.lower.schedules.expand_depthwise).

Each case compiles a small ONNX inverted-residual chain through hwcc's own lowering and compares
with ``onnx.reference``; the chain must also have become one ``expand_depthwise`` kernel (or,
where it must not, stayed two convolutions). Shapes cover both task layouts of the schedule:
channel blocks in parallel (many channels) and row bands (few channels).
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compiler import lower
from compiler.lower.options import LowerOptions
from compiler.lower.rewrites.expand_depthwise import (
    BLOCK_PREFIX,
    pack_depthwise_weight,
    pack_expand_weight,
)
from compiler.lower.schedules import ExpandDepthwise
from compiler.lower.schedules.target_info import cpu_info
from targets import parse_target
from tests import hostcpu

HOST = parse_target("host")
#: float lanes of the host target: the shapes below are whole numbers of its vectors
LANES = cpu_info(HOST.tvm_target()).lanes(32)
RNG = np.random.default_rng(0)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _chain(cin, mid, size, *, stride=1, kernel=3, act="clip", expand_bias=True, batch=1,
           expose_expansion=False, dw_is_output=False, expand_kernel=1, expand_stride=1,
           expand_pads=(0, 0, 0, 0)):
    """x -> Conv(mid, expand_kernel, expand_stride, expand_pads) [+bias] -> act -> depthwise
    Conv(kernel, stride, same pad) + bias -> Clip(0, 6); with ``expose_expansion`` the
    activated expansion is a second graph output; with ``dw_is_output`` the depthwise conv (no
    bias) is the graph output itself. ``expand_pads`` is ONNX's (top, left, bottom, right)."""
    pt, pl, pb, pr = expand_pads
    esize = ((size + pt + pb - expand_kernel) // expand_stride + 1,
             (size + pl + pr - expand_kernel) // expand_stride + 1)
    pad = kernel // 2
    out = [(e + 2 * pad - kernel) // stride + 1 for e in esize]
    scale = 0.5 / expand_kernel
    inits = [
        numpy_helper.from_array(
            (RNG.standard_normal((mid, cin, expand_kernel, expand_kernel)) * scale)
            .astype("float32"), "w1"),
        numpy_helper.from_array(RNG.standard_normal((mid, 1, kernel, kernel)).astype("float32"),
                                "w2"),
        numpy_helper.from_array(RNG.standard_normal(mid).astype("float32"), "b2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    expand_in = ["x", "w1"]
    if expand_bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(mid).astype("float32"), "b1"))
        expand_in.append("b1")
    nodes = [helper.make_node("Conv", expand_in, ["e"], strides=[expand_stride] * 2,
                              pads=list(expand_pads))]
    if act == "clip":
        nodes.append(helper.make_node("Clip", ["e", "lo", "hi"], ["a"]))
    elif act == "relu":
        nodes.append(helper.make_node("Relu", ["e"], ["a"]))
    elif act == "swish":  # EfficientNet
        nodes += [helper.make_node("Sigmoid", ["e"], ["s"]),
                  helper.make_node("Mul", ["e", "s"], ["a"])]
    elif act == "hardswish":  # MobileNetV3
        nodes.append(helper.make_node("HardSwish", ["e"], ["a"]))
    elif act == "hardsigmoid_gate":
        nodes += [helper.make_node("HardSigmoid", ["e"], ["s"], alpha=0.25, beta=0.4),
                  helper.make_node("Mul", ["s", "e"], ["a"])]
    else:
        nodes.append(helper.make_node("Identity", ["e"], ["a"]))
    if dw_is_output:
        nodes.append(helper.make_node("Conv", ["a", "w2"], ["y"], group=mid,
                                      strides=[stride] * 2, pads=[pad] * 4,
                                      kernel_shape=[kernel] * 2))
    else:
        nodes += [
            helper.make_node("Conv", ["a", "w2", "b2"], ["d"], group=mid, strides=[stride] * 2,
                             pads=[pad] * 4, kernel_shape=[kernel] * 2),
            helper.make_node("Clip", ["d", "lo", "hi"], ["y"]),
        ]
    outputs = [_vi("y", [batch, mid, *out])]
    if expose_expansion:
        outputs.append(_vi("a", [batch, mid, *esize]))
    graph = helper.make_graph(nodes, "chain", [_vi("x", [batch, cin, size, size])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": RNG.standard_normal((batch, cin, size, size)).astype("float32")}
    return model, feeds


def _kernel_names(mod) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def _check(model, feeds, target=HOST, options: LowerOptions | None = None) -> list[str]:
    """Compile with hwcc's lowering for ``target``, compare every output with onnx.reference
    (run on ``target``, or where this machine cannot run its code, built and run for the
    widest target it runs); return the kernel names of ``target``'s lowered module."""
    mod = from_onnx(model, keep_params_in_input=False)
    built = lower.build(mod, target, options=options)
    run_target = hostcpu.execution_target(target)
    if run_target is not target:
        built = lower.build(mod, run_target, options=options)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    got = [got] if hasattr(got, "numpy") else list(got)
    want = ReferenceEvaluator(model).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5 * scale)
    fused = lower.legalize_and_fuse(mod, target, options)
    return _kernel_names(fused)


@pytest.mark.parametrize(
    "cin,mid,size,stride,kernel,act,expand_bias,batch",
    [
        (8, 2 * LANES, 16, 1, 3, "clip", True, 1),  # few channel blocks: row bands
        (8, 16 * LANES, 8, 1, 3, "clip", True, 1),  # many channel blocks: blocks in parallel
        (8, 2 * LANES, 10, 2, 3, "relu", False, 1),  # stride 2, ReLU, no expansion bias
        (6, 2 * LANES, 9, 1, 5, "none", True, 2),  # 5x5 (EfficientNet), odd map, batch 2
        (4, 8 * LANES, 14, 2, 3, "clip", True, 1),  # stride 2, 7x7 output
    ],
)
def test_chain_becomes_one_kernel_and_matches_reference(cin, mid, size, stride, kernel, act,
                                                        expand_bias, batch):
    model, feeds = _chain(cin, mid, size, stride=stride, kernel=kernel, act=act,
                          expand_bias=expand_bias, batch=batch)
    names = _check(model, feeds)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    assert not any(n.startswith("fused_conv2d") for n in names), names


@pytest.mark.parametrize(
    "cin,mid,size,expand_kernel,expand_stride,expand_pads,stride",
    [
        (3, 2 * LANES, 32, 3, 2, (1, 1, 1, 1), 1),  # MobileNet's stem: 3x3/2 conv -> dw
        (3, 2 * LANES, 17, 3, 2, (0, 0, 1, 1), 2),  # TF-style asymmetric padding, odd map
        (5, 2 * LANES, 12, 3, 1, (0, 0, 0, 0), 1),  # unpadded 3x3 expansion
        (4, 8 * LANES, 14, 2, 2, (0, 0, 0, 0), 1),  # 2x2/2 patchify, channel blocks in parallel
    ],
)
def test_spatial_expansion_conv_fuses_and_matches_reference(cin, mid, size, expand_kernel,
                                                            expand_stride, expand_pads, stride):
    """The expansion may be any dense conv (kernel, stride, padding): MobileNet's first conv
    feeds a depthwise conv the same way a 1x1 expansion does."""
    model, feeds = _chain(cin, mid, size, stride=stride, expand_kernel=expand_kernel,
                          expand_stride=expand_stride, expand_pads=expand_pads)
    names = _check(model, feeds)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    assert not any(n.startswith("fused_conv2d") for n in names), names


def test_the_rule_pads_the_input_per_task():
    """A padded expansion conv's input is padded inside the parallel task (rows the task
    needs), not in a separate serial pass over the whole input."""
    model, _ = _chain(3, 2 * LANES, 32, expand_kernel=3, expand_stride=2,
                      expand_pads=(1, 1, 1, 1))
    fused = lower.legalize_and_fuse(from_onnx(model, keep_params_in_input=False), HOST)
    (name,) = [n for n in _kernel_names(fused) if "expand_depthwise" in n]
    sch = ExpandDepthwise().apply(fused[name], HOST.tvm_target(), False)
    assert sch is not None
    body = sch.mod["main"].body.block.body
    # one root-level nest: the parallel task loop holds every stage, input padding included
    assert isinstance(body, tvm.tirx.For) and body.kind == tvm.tirx.ForKind.PARALLEL
    assert "input_pad" in str(body)


@pytest.mark.parametrize("act,expand_bias", [("swish", True), ("hardswish", True),
                                              ("hardswish", False), ("hardsigmoid_gate", True)])
def test_gated_activations_fuse_and_match_reference(act, expand_bias):
    """Swish (x * sigmoid(x)), HardSwish and other activations that use the expansion's value
    twice are part of the kernel too (EfficientNet, MobileNetV3)."""
    model, feeds = _chain(8, 2 * LANES, 12, act=act, expand_bias=expand_bias)
    names = _check(model, feeds)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    assert not any(n.startswith("fused_conv2d") for n in names), names


def test_gate_on_another_tensor_stays_two_convolutions():
    """x * sigmoid(y) with y not the expansion's value is not an activation of it."""
    mid, size = 2 * LANES, 8
    inits = [
        numpy_helper.from_array((RNG.standard_normal((mid, 8, 1, 1)) * 0.5).astype("float32"),
                                "w1"),
        numpy_helper.from_array(RNG.standard_normal((mid, 1, 3, 3)).astype("float32"), "w2"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["e"]),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Mul", ["e", "s"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], group=mid, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    shape = [1, mid, size, size]
    graph = helper.make_graph(nodes, "gate", [_vi("x", [1, 8, size, size]), _vi("g", shape)],
                              [_vi("y", shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": RNG.standard_normal((1, 8, size, size)).astype("float32"),
             "g": RNG.standard_normal(shape).astype("float32")}
    names = _check(model, feeds)
    assert not any("expand_depthwise" in n for n in names)


def _nested_swish(levels):
    model, feeds = _chain(8, 2 * LANES, 8, act="none")
    graph = model.graph
    (ident,) = [n for n in graph.node if n.op_type == "Identity"]
    at = list(graph.node).index(ident)
    nodes, value = [], "e"
    for i in range(levels):
        nodes += [helper.make_node("Sigmoid", [value], [f"s{i}"]),
                  helper.make_node("Mul", [value, f"s{i}"], [f"m{i}"])]
        value = f"m{i}"
    nodes.append(helper.make_node("Identity", [value], ["a"]))
    del graph.node[at]
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    return model, feeds


def test_nested_gates_fuse_and_match_reference():
    """swish(swish(swish(x))): every value is used twice; the tree (22 nodes) is fused."""
    model, feeds = _nested_swish(3)
    names = _check(model, feeds)
    assert any("expand_depthwise" in n for n in names), names


def test_nested_gates_past_the_cap_are_declined():
    """Each nesting level doubles the activation's tree: 5 levels (94 nodes) pass
    MAX_ACTIVATION_NODES and the pass leaves the chain alone; the node count stops at the cap,
    so deeper nests cost no more. (Legalization and fusion only: building such a chain
    unfused takes minutes in TVM itself, which inlines each duplicated operand.)"""
    from compiler.lower.rewrites.expand_depthwise import MAX_ACTIVATION_NODES, _tree_size

    tree = ("x",)
    for _ in range(30):
        tree = ("mul", tree, ("sigmoid", tree))
    assert _tree_size(tree, MAX_ACTIVATION_NODES) == MAX_ACTIVATION_NODES + 1
    for levels, fused in ((3, True), (5, False)):
        mod = from_onnx(_nested_swish(levels)[0], keep_params_in_input=False)
        names = _kernel_names(lower.legalize_and_fuse(mod, HOST))
        assert any("expand_depthwise" in n for n in names) == fused, (levels, names)


def test_depthwise_conv_as_the_graph_output():
    """No epilogue: the kernel's result is the function's output (the dataflow block's output
    variable is rebound to the new call)."""
    model, feeds = _chain(8, 2 * LANES, 8, act="relu", dw_is_output=True)
    names = _check(model, feeds)
    assert sum("expand_depthwise" in n for n in names) == 1, names


def test_avx2_blocks_of_eight_channels():
    """On an AVX2 target (8 lanes; runs on AVX-512 hosts too, built only elsewhere) 24 channels
    are three blocks."""
    avx2 = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma")
    model, feeds = _chain(8, 24, 10, stride=2)
    names = _check(model, feeds, target=avx2)
    assert sum("expand_depthwise" in n for n in names) == 1, names


def test_valid_padding_stride_two():
    """A depthwise conv with no padding (the pad block pads nothing) fuses and matches too."""
    mid, cin, size = 2 * LANES, 8, 12
    inits = [
        numpy_helper.from_array((RNG.standard_normal((mid, cin, 1, 1)) * 0.5).astype("float32"),
                                "w1"),
        numpy_helper.from_array(RNG.standard_normal((mid, 1, 3, 3)).astype("float32"), "w2"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["e"]),
             helper.make_node("Relu", ["e"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], group=mid, kernel_shape=[3, 3],
                              strides=[2, 2])]
    graph = helper.make_graph(nodes, "valid", [_vi("x", [1, cin, size, size])],
                              [_vi("y", [1, mid, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = _check(model, {"x": RNG.standard_normal((1, cin, size, size)).astype("float32")})
    assert sum("expand_depthwise" in n for n in names) == 1, names


def test_many_cores_split_rows_too():
    """With 16 cores and 3 channel blocks, tasks are (row band, channel block) pairs."""
    many = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma -cores=16")
    model, feeds = _chain(8, 24, 16)
    names = _check(model, feeds, target=many)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    fused = lower.legalize_and_fuse(from_onnx(model, keep_params_in_input=False), many)
    (name,) = [n for n in _kernel_names(fused) if "expand_depthwise" in n]
    text = ExpandDepthwise().apply(fused[name], many.tvm_target(), False).mod.script()
    assert "T.parallel(T.int64(12))" in text  # 4 bands of 4 rows x 3 channel blocks


def test_odd_channel_blocks_split_rows_to_share_the_cores_evenly():
    """5 channel blocks on 2 cores would leave one core idle a sixth of the time: the map is
    cut into 2 bands of 8 rows (10 tasks), and the kernel still matches the reference."""
    two = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma -cores=2")
    model, feeds = _chain(8, 40, 16)  # 8 lanes (AVX2): 5 channel blocks
    names = _check(model, feeds, target=two)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    fused = lower.legalize_and_fuse(from_onnx(model, keep_params_in_input=False), two)
    (name,) = [n for n in _kernel_names(fused) if "expand_depthwise" in n]
    text = ExpandDepthwise().apply(fused[name], two.tvm_target(), False).mod.script()
    assert "T.parallel(T.int64(10))" in text


def test_the_rule_schedules_the_kernel():
    """The fused kernel is scheduled by ExpandDepthwise itself (not left to the fallback)."""
    model, _ = _chain(8, 4 * LANES, 12)
    fused = lower.legalize_and_fuse(from_onnx(model, keep_params_in_input=False), HOST)
    (name,) = [n for n in _kernel_names(fused) if "expand_depthwise" in n]
    sch = ExpandDepthwise().apply(fused[name], HOST.tvm_target(), False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.parallel" in text and "T.vectorized" in text


def test_expansion_used_elsewhere_stays_two_convolutions():
    """An expansion output that is also a graph output must be written: no fusion."""
    model, feeds = _chain(8, 2 * LANES, 8, expose_expansion=True)
    names = _check(model, feeds)
    assert not any("expand_depthwise" in n for n in names)


def test_channels_not_a_multiple_of_the_lanes_stay_two_convolutions():
    mid = LANES + LANES // 2
    model, feeds = _chain(8, mid, 8)
    names = _check(model, feeds)
    assert not any("expand_depthwise" in n for n in names)


def test_switch_off():
    model, feeds = _chain(8, 2 * LANES, 8)
    names = _check(model, feeds, options=LowerOptions(expand_depthwise=False))
    assert not any("expand_depthwise" in n for n in names)


def test_a_failing_rewrite_leaves_the_convolutions_apart(monkeypatch: pytest.MonkeyPatch):
    """The fusion is an optimization: if building its kernel fails, the model still compiles
    (two convolutions) and computes the same values."""
    import compiler.lower.rewrites.expand_depthwise as ed

    def broken(*args, **kwargs):
        raise RuntimeError("kernel construction failed")

    monkeypatch.setattr(ed, "expand_depthwise_te", broken)
    model, feeds = _chain(8, 2 * LANES, 8)
    names = _check(model, feeds)
    assert not any("expand_depthwise" in n for n in names)


def _with_projection(model, feeds, out_channels, *, residual=False, bias=True, act=None,
                     stride=1, pads=(0, 0, 0, 0), expose_depthwise=False):
    """Append the inverted residual's projection to a :func:`_chain` graph: ``z = Conv(y, w3
    [, b3], stride, pads)`` [``+ x``] [then ``act``]; with ``expose_depthwise`` the depthwise
    output ``y`` stays a graph output too."""
    graph = model.graph
    (y,) = [o for o in graph.output if o.name == "y"]
    mid = y.type.tensor_type.shape.dim[1].dim_value
    size = [d.dim_value for d in y.type.tensor_type.shape.dim[2:]]
    batch = y.type.tensor_type.shape.dim[0].dim_value
    graph.initializer.append(numpy_helper.from_array(
        (RNG.standard_normal((out_channels, mid, 1, 1)) / np.sqrt(mid)).astype("float32"), "w3"))
    inputs = ["y", "w3"]
    if bias:
        graph.initializer.append(numpy_helper.from_array(
            RNG.standard_normal(out_channels).astype("float32"), "b3"))
        inputs.append("b3")
    out = [(s + pads[0] + pads[2] - 1) // stride + 1 for s in size]
    graph.node.append(helper.make_node("Conv", inputs, ["p"], strides=[stride] * 2,
                                       pads=list(pads)))
    value = "p"
    if residual:
        graph.node.append(helper.make_node("Add", ["p", "x"], ["r"]))
        value = "r"
    if act == "relu":
        graph.node.append(helper.make_node("Relu", [value], ["q"]))
        value = "q"
    graph.node.append(helper.make_node("Identity", [value], ["z"]))
    kept = [o for o in graph.output if o.name != "y" or expose_depthwise]
    del graph.output[:]
    graph.output.extend([*kept, _vi("z", [batch, out_channels, *out])])
    return model, feeds


@pytest.mark.parametrize(
    "cin,mid,out,size,stride,residual,act",
    [
        (2 * LANES, 4 * LANES, 2 * LANES, 12, 1, True, "clip"),  # residual block
        (8, 2 * LANES, 24, 16, 1, False, "clip"),  # 24 outputs: no whole channel vectors
        (8, 3 * LANES, 5 * LANES, 14, 2, False, "relu"),  # stride 2, 7x7 output
        (LANES, 2 * LANES, LANES, 9, 1, True, "swish"),  # odd map, residual, gated activation
    ],
)
def test_projection_reads_the_blocked_depthwise_output(cin, mid, out, size, stride, residual,
                                                       act):
    """A depthwise output that feeds only a 1x1 projection is passed to it in the blocked
    layout: two kernels (expansion+depthwise, projection), no NCHW depthwise output and no
    separate conv; the projection's bias and residual add are fused into it."""
    model, feeds = _chain(cin, mid, size, stride=stride, act=act)
    model, feeds = _with_projection(model, feeds, out, residual=residual)
    names = _check(model, feeds)
    assert sum("expand_depthwise_blocked" in n for n in names) == 1, names
    assert sum("blocked_pointwise" in n for n in names) == 1, names
    assert len(names) == 2, names


def test_projection_on_avx2_reads_blocks_of_eight_channels():
    """AVX2 (8 lanes; runs on AVX-512 hosts too, built only elsewhere): 24 depthwise channels
    are three blocks of the blocked layout, and the projection still matches the reference."""
    avx2 = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma")
    model, feeds = _chain(8, 24, 10)
    model, feeds = _with_projection(model, feeds, 16, residual=False)
    names = _check(model, feeds, target=avx2)
    assert sum("expand_depthwise_blocked" in n for n in names) == 1, names
    assert sum("blocked_pointwise" in n for n in names) == 1, names


def test_blocked_kernels_are_scheduled_by_their_rules():
    """The blocked expansion+depthwise kernel writes whole channel vectors (no transpose) and the
    projection is the conv2d rule's, packed and vectorized."""
    from compiler.lower.schedules import Conv2d

    model, _ = _chain(8, 4 * LANES, 12)
    model, _ = _with_projection(model, None, 2 * LANES, residual=False)
    fused = lower.legalize_and_fuse(from_onnx(model, keep_params_in_input=False), HOST)
    names = _kernel_names(fused)
    (dw,) = [n for n in names if "expand_depthwise_blocked" in n]
    (pw,) = [n for n in names if "blocked_pointwise" in n]
    func = fused[dw]
    assert [int(d) for d in func.params[-1].shape] == [1, 4, 12, 12, LANES]  # the output
    sch = ExpandDepthwise().apply(func, HOST.tvm_target(), False)
    assert sch is not None
    assert "T.parallel" in sch.mod.script()
    # the output is written a pixel's channel vector at a time
    *_, pixel, inner = (sch.get(lp) for lp in sch.get_loops(sch.get_sblock(BLOCK_PREFIX
                                                                          + "epilogue")))
    assert inner.kind == tvm.tirx.ForKind.VECTORIZED and int(inner.extent) == LANES
    # register tiles are read with constant indices only (a loop would put them on the stack)
    assert pixel.kind == tvm.tirx.ForKind.UNROLLED, pixel
    *_, pixel, inner = (sch.get(lp) for lp in sch.get_loops(sch.get_sblock(BLOCK_PREFIX + "pad")))
    assert pixel.kind == tvm.tirx.ForKind.UNROLLED and inner.kind == tvm.tirx.ForKind.VECTORIZED
    sch = Conv2d().apply(fused[pw], HOST.tvm_target(), False)
    assert sch is not None and "T.vectorized" in sch.mod.script()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2},  # a strided 1x1 conv is not a projection
        {"pads": (1, 1, 1, 1)},  # nor a padded one
        {"expose_depthwise": True},  # the depthwise output is needed in NCHW too
        {"out_channels": LANES // 2},  # under a vector of outputs: vectorized along pixels
    ],
)
def test_other_consumers_keep_the_nchw_depthwise_output(kwargs):
    kwargs = dict(kwargs)
    model, feeds = _chain(8, 2 * LANES, 8)
    model, feeds = _with_projection(model, feeds, kwargs.pop("out_channels", 2 * LANES),
                                    **kwargs)
    names = _check(model, feeds)
    assert sum("expand_depthwise" in n for n in names) == 1, names
    assert not any("blocked" in n for n in names), names


def test_blocked_projection_switch_off():
    model, feeds = _chain(8, 2 * LANES, 8)
    model, feeds = _with_projection(model, feeds, 2 * LANES)
    names = _check(model, feeds, options=LowerOptions(blocked_depthwise=False))
    assert sum("expand_depthwise" in n for n in names) == 1, names
    assert not any("blocked" in n for n in names), names


def test_weight_packing_layouts():
    w1 = RNG.standard_normal((32, 5, 3, 2)).astype("float32")
    w2 = RNG.standard_normal((32, 1, 3, 3)).astype("float32")
    p1, p2 = pack_expand_weight(w1, 16), pack_depthwise_weight(w2, 16)
    assert p1.shape == (2, 5, 3, 2, 16) and p2.shape == (2, 3, 3, 16)
    assert p1[1, 3, 2, 1, 7] == w1[16 + 7, 3, 2, 1]
    assert p2[1, 2, 0, 5] == w2[16 + 5, 0, 2, 0]
