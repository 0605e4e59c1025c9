"""Default CPU schedules (compiler.lower.schedules): numerics against the ONNX reference, structure.

Each numerical case builds a one- or two-node ONNX model, schedules it with the default schedules
for a fixed target (AVX-512 unless a test names another) and compares with
``onnx.reference.ReferenceEvaluator`` (rtol/atol 1e-4 relative to the output scale). The
structural assertions read the TIR scheduled for that fixed target, so they hold on every host;
the module is always built for it, and run where this machine can (``tests.hostcpu``), else the
same model is scheduled, built and run for the widest target this machine runs (AVX2 on an
AVX2-only x86-64).
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
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.relax.frontend.onnx import from_onnx

from compiler.lower.schedules import apply_default_schedules, is_scheduled
from tests import hostcpu

#: AVX-512 (16 float lanes, 32 registers), 2 cores: what the structural assertions describe.
X86 = hostcpu.AVX512
#: AVX2 + FMA (8 lanes, 16 registers), 2 cores.
X86_AVX2 = hostcpu.AVX2
#: NEON, 4 cores: compiled only.
AARCH64 = hostcpu.AARCH64

RNG = np.random.default_rng(0)


def _vi(name: str, shape: list[int]):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _const(name: str, shape: tuple[int, ...]):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype("float32"), name)


def _fused(model, target=X86) -> tvm.IRModule:
    mod = from_onnx(model, keep_params_in_input=False)
    with target:
        passes = cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def _lower(mod: tvm.IRModule, target=X86) -> tvm.IRModule:
    with target:
        passes = cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def _default_schedule(mod: tvm.IRModule, target) -> tvm.IRModule:
    return apply_default_schedules(mod, target)


def _scheduled(model, target=X86, schedule=_default_schedule) -> tvm.IRModule:
    with target:
        return schedule(_fused(model, target), target)


def _build(mod: tvm.IRModule, target):
    return tvm.compile(_lower(mod, target), target=target, relax_pipeline=None)


def _numpy(out):
    return out.numpy() if hasattr(out, "numpy") else tuple(t.numpy() for t in out)


def _run_scheduled(model, inputs: dict[str, np.ndarray], target=X86,
                   schedule=_default_schedule):
    """Schedule ``model`` for ``target`` and build it; run that module when this machine runs
    ``target``'s code, else schedule, build and run the model for the widest target it runs.
    Returns the outputs (an array, or a tuple for several) and ``target``'s scheduled module."""
    mod = _scheduled(model, target, schedule)
    ex = _build(mod, target)
    run_target = hostcpu.execution_target(target)
    if run_target is not target:
        ex = _build(_scheduled(model, run_target, schedule), run_target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in inputs.values()])
    return _numpy(out), mod


def _check(model, inputs: dict[str, np.ndarray], target=X86) -> tvm.IRModule:
    got, mod = _run_scheduled(model, inputs, target)
    want = ReferenceEvaluator(model).run(None, inputs)[0]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    return mod


def _prim_funcs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _gemm(m: int, k: int, n: int, trans_b: int):
    w_shape = (n, k) if trans_b else (k, n)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    return _model(
        nodes, [_vi("x", [m, k])], [_vi("z", [m, n])], [_const("w", w_shape), _const("b", (n,))]
    )


def _conv(c, o, h, k, stride=1, pad=1, group=1, residual=False):
    oh = (h + 2 * pad - k) // stride + 1
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, strides=[stride] * 2, group=group
        )
    ]
    inputs = [_vi("x", [1, c, h, h])]
    last = "y"
    if residual:
        inputs.append(_vi("r", [1, o, oh, oh]))
        nodes.append(helper.make_node("Add", ["y", "r"], ["y2"]))
        last = "y2"
    nodes.append(helper.make_node("Relu", [last], ["z"]))
    inits = [_const("w", (o, c // group, k, k)), _const("b", (o,))]
    model = _model(nodes, inputs, [_vi("z", [1, o, oh, oh])], inits)
    feeds = {"x": RNG.standard_normal((1, c, h, h)).astype("float32")}
    if residual:
        feeds["r"] = RNG.standard_normal((1, o, oh, oh)).astype("float32")
    return model, feeds


@pytest.mark.parametrize(
    "m,k,n,trans_b", [(4, 32, 16, 1), (7, 13, 33, 0), (1, 64, 48, 1), (5, 37, 37, 0)]
)
def test_gemm_bias_relu_matches_reference(m, k, n, trans_b):
    """Gemm (+ transposed constant weight) with fused bias and ReLU, odd sizes included."""
    model = _gemm(m, k, n, trans_b)
    _check(model, {"x": RNG.standard_normal((m, k)).astype("float32")})


def test_matmul_batched_activations():
    """Attention-style batch matmul of two activations (no constant to pack)."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    model = _model(
        nodes, [_vi("a", [2, 3, 9, 16]), _vi("b", [2, 3, 16, 7])], [_vi("y", [2, 3, 9, 7])], []
    )
    feeds = {
        "a": RNG.standard_normal((2, 3, 9, 16)).astype("float32"),
        "b": RNG.standard_normal((2, 3, 16, 7)).astype("float32"),
    }
    _check(model, feeds)


@pytest.mark.parametrize("epilogue", [False, True])
def test_matmul_of_activations_pads_prime_width(epilogue):
    """Attention scores over a prime number of tokens (ViT: 197): B is copied into whole
    vectors of columns padded with zeros, so the tile has no per-lane predicate (which would
    make it scalar); only the real columns are written."""
    t, d = 37, 16
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"])]
    if epilogue:
        nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    model = _model(nodes, [_vi("q", [1, 3, t, d]), _vi("k", [1, 3, d, t])],
                   [_vi("y" if epilogue else "s", [1, 3, t, t])], [])
    feeds = {"q": RNG.standard_normal((1, 3, t, d)).astype("float32"),
             "k": RNG.standard_normal((1, 3, d, t)).astype("float32")}
    mod = _check(model, feeds)
    (func,) = [f for n, f in _prim_funcs(mod).items() if "matmul" in n]
    text = func.script()
    assert "T.vectorized(T.int64(32))" in text
    # the padded copy of B: [1, 3, ceil(37 / 32), 16, 32]
    assert "(T.int64(1), T.int64(3), T.int64(2), T.int64(16), T.int64(32))" in text


def test_matmul_sequence_first_rows_share_weight_tiles():
    """[S, 1, K] x constant [K, N] (PyTorch's sequence-first attention projections): the S
    batch entries are rows of one register-tiled matmul (several rows per tile reuse each
    weight vector), not S matrix-vector products."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["y", "b"], ["z"])]
    model = _model(nodes, [_vi("x", [40, 1, 48])], [_vi("z", [40, 1, 64])],
                   [_const("w", (48, 64)), _const("b", (64,))])
    mod = _check(model, {"x": RNG.standard_normal((40, 1, 48)).astype("float32")})
    (func,) = [f for n, f in _prim_funcs(mod).items() if "matmul" in n]
    assert "T.unroll(" in func.script()  # a tile of several rows


def test_matmul_4d_rows_keep_their_epilogue_exact():
    """[1, H, W, C] x [C, N] + bias, * scale (ConvNeXt's MLP after a permute): batches of
    several rows are tiled per batch, so each tile's epilogue writes only the rows it computed."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["y", "b"], ["z"]),
             helper.make_node("Mul", ["z", "g"], ["o"])]
    model = _model(nodes, [_vi("x", [1, 6, 10, 48])], [_vi("o", [1, 6, 10, 32])],
                   [_const("w", (48, 32)), _const("b", (32,)), _const("g", (32,))])
    _check(model, {"x": RNG.standard_normal((1, 6, 10, 48)).astype("float32")})


def test_matmul_3d_by_constant_weight():
    """[B, S, K] x constant [K, N]: batch broadcast over a packed weight, with bias add."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Add", ["y", "b"], ["z"]),
    ]
    model = _model(
        nodes,
        [_vi("x", [2, 13, 24])],
        [_vi("z", [2, 13, 40])],
        [_const("w", (24, 40)), _const("b", (40,))],
    )
    mod = _check(model, {"x": RNG.standard_normal((2, 13, 24)).astype("float32")})
    weights = [p for f in _prim_funcs(mod).values() for p in f.params if len(p.shape) == 3]
    assert weights, "the constant weight should have been packed to [N/NR, K, NR]"


@pytest.mark.parametrize(
    "c,o,h,k,stride,pad,group,residual",
    [
        (8, 16, 10, 3, 1, 1, 1, False),  # 3x3
        (7, 13, 9, 3, 1, 1, 1, True),  # odd channels, residual add
        (16, 33, 11, 1, 1, 0, 1, False),  # 1x1, 33 output channels
        (16, 32, 12, 3, 2, 1, 1, False),  # strided
        (32, 32, 14, 3, 1, 1, 32, False),  # depthwise
        (32, 32, 15, 3, 2, 1, 32, True),  # strided depthwise + residual
        (16, 32, 8, 3, 1, 1, 4, False),  # grouped
        (64, 128, 7, 3, 1, 1, 1, True),  # few rows: channel blocks grouped per core + residual
        (32, 96, 7, 3, 1, 1, 1, False),  # few rows, 3 blocks on 2 cores: rows-only tasks
        (48, 64, 5, 1, 1, 0, 1, True),  # 1x1 on 5x5: every channel block a task
    ],
)
def test_conv2d_matches_reference(c, o, h, k, stride, pad, group, residual):
    """Conv2d NCHW with bias + ReLU (+ residual) under every conv rule."""
    model, feeds = _conv(c, o, h, k, stride, pad, group, residual)
    _check(model, feeds)


@pytest.mark.parametrize(
    "c,o,h,k,pad,epilogue",
    [
        (116, 116, 14, 1, 0, True),  # ShuffleNetV2: 116 = 4 x 29, odd-width vectors unpadded
        (24, 72, 7, 3, 1, True),  # 72 = 4.5 vectors: padded 3x3 conv on a 7x7 map
        (116, 116, 14, 1, 0, False),  # no epilogue: the accumulator write-back is guarded
    ],
)
def test_conv2d_pads_output_channels_to_whole_vectors(c, o, h, k, pad, epilogue):
    """A channel count that whole 16-lane vectors do not divide is computed padded with zero
    filters (the packed weight has whole vectors of output channels); only the real channels
    are written, and the result matches the reference."""
    if epilogue:
        model, feeds = _conv(c, o, h, k, pad=pad, residual=True)
    else:
        model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)],
                       [_vi("x", [1, c, h, h])], [_vi("y", [1, o, h, h])],
                       [_const("w", (o, c, k, k))])
        feeds = {"x": RNG.standard_normal((1, c, h, h)).astype("float32")}
    mod = _check(model, feeds)
    (func,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
    shapes = [tuple(int(d) for d in p.shape) for p in func.params]
    assert (-(-o // 16), c, k, k, 16) in shapes, shapes


def _depthwise_clip(c: int, h: int, w: int, stride: int):
    """Depthwise 3x3 conv + bias + Clip(0, 6), as in MobileNetV2 (BN folded into the bias)."""
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4, strides=[stride] * 2,
                         group=c),
        helper.make_node("Clip", ["y", "lo", "hi"], ["z"]),
    ]
    inits = [_const("w", (c, 1, 3, 3)), _const("b", (c,)),
             numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(6.0), "hi")]
    model = _model(nodes, [_vi("x", [1, c, h, w])], [_vi("z", [1, c, oh, ow])], inits)
    return model, {"x": (2 * RNG.standard_normal((1, c, h, w))).astype("float32")}


@pytest.mark.parametrize(
    "c,h,w,stride",
    [
        (40, 7, 7, 1),  # whole 7x7 channel per task
        (24, 14, 14, 2),  # strided, output rows split (at most 4 per task)
        (20, 13, 11, 1),  # odd sizes, channels not a multiple of the vector width
        (12, 28, 28, 2),  # 14x14 strided output: rows split by a divisor, no tail
        (8, 30, 30, 1),  # rows split by a divisor of 30
        (8, 40, 40, 2),  # strided, 20 output columns: input stored as two column phases
        (6, 34, 33, 2),  # strided, odd padded width: strided loads kept
        (54, 9, 9, 1),  # tasks of 3 channels (4 does not divide 54)
        (64, 12, 10, 2),  # tasks of 4 channels, strided
    ],
)
def test_depthwise_clip_matches_reference(c, h, w, stride):
    """Depthwise conv with a fused Clip epilogue; row tiles divide the output height."""
    model, feeds = _depthwise_clip(c, h, w, stride)
    mod = _check(model, feeds)
    (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
    text = conv.script()
    assert "T.max(" in text and "T.min(" in text, "clip should be the conv's epilogue"
    assert "T.where(" not in text, "row tiles should divide the output height (no predicate)"
    phased = stride == 2 and (w + 2) % 2 == 0 and (w - 1) // 2 + 1 >= 16
    pad = [b for b in conv.script().splitlines() if "pad_temp = T.sblock_alloc_buffer" in b]
    assert len(pad) == 1 and pad[0].count("T.int64(") == (5 if phased else 4), pad


def test_small_maps_share_channel_blocks_among_cores():
    """7 output rows on 2 cores: the parallel loop also covers channel blocks (7 x 2 groups of
    two 32-channel blocks with padding, 7 x 4 blocks without)."""
    for (c, o, k, pad), tasks in (((64, 128, 3, 1), 14), ((64, 128, 1, 0), 28)):
        model, feeds = _conv(c, o, 7, k, pad=pad)
        mod = _check(model, feeds)
        (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
        assert f"T.parallel(T.int64({tasks}))" in conv.script()


def test_depthwise_tasks_group_channels_when_there_are_enough():
    """Tasks of up to 4 channels while 8 tasks per core remain (2 cores), else one channel."""
    for c, tasks in ((54, 18), (64, 16), (60, 60)):
        model, feeds = _depthwise_clip(c, 9, 9, 1)
        mod = _check(model, feeds)
        (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
        assert f"T.parallel(T.int64({tasks}))" in conv.script(), c


def test_odd_channel_count_uses_power_of_two_vectors():
    """24 output channels (MobileNetV2) pack into one 24-channel block computed as three
    unrolled 8-lane vectors, never a 24-lane vector (nor 8-channel tiles, which load a broadcast
    input per FMA)."""
    from compiler.lower.schedules.common import vector_factor

    assert vector_factor(24, 16, 2) == 8
    assert vector_factor(96, 16, 2) == 32
    assert vector_factor(7, 16, 2) == 7
    model, feeds = _conv(48, 24, 14, 1, pad=0)
    mod = _check(model, feeds)
    (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
    assert (1, 48, 1, 1, 24) in [tuple(int(d) for d in p.shape) for p in conv.params]
    text = conv.script()
    assert "T.unroll(T.int64(3))" in text and "T.vectorized(T.int64(8))" in text
    assert "T.vectorized(T.int64(24))" not in text


def _pixel_tile_of(model, target=X86):
    from compiler.lower.schedules.conv2d import _pixel_tile, match_conv2d

    raw = next(f for n, f in _prim_funcs(_fused(model, target)).items() if "conv2d" in n)
    sch = tvm.s_tir.Schedule(raw)
    return _pixel_tile(sch, match_conv2d(sch), target)


@pytest.mark.parametrize(
    "c,o,h,residual,target,tile",
    [
        (48, 24, 8, False, X86, (24, 2)),  # 2 rows of 8 = one 16-lane vector
        # 4 rows of 28 = 7 vectors; 2 channels x 7 accumulators (4 x 7, the 7 loaded pixel
        # vectors and a broadcast weight would need 36 of the 32 registers)
        (32, 40, 28, True, X86, (2, 4)),
        (16, 20, 16, False, X86_AVX2, (5, 1)),  # 8 lanes, 16 registers: 5 channels x 2 vectors
    ],
)
def test_1x1_conv_with_channels_short_of_a_vector_is_vectorized_along_pixels(
        c, o, h, residual, target, tile):
    """24 or 40 output channels fill no whole 16-lane vectors, but rows of pixels do: the 1x1
    conv keeps channels x pixel vectors in registers, its weight packed per channel tile."""
    from compiler.lower.schedules.conv2d import PixelTile

    model, feeds = _conv(c, o, h, 1, pad=0, residual=residual)
    assert _pixel_tile_of(model, target) == PixelTile(*tile)
    mod = _check(model, feeds, target)
    (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
    weight = next(p for p in conv.params if len(p.shape) == 5)
    assert [int(d) for d in weight.shape] == [o // tile[0], c, 1, 1, tile[0]]
    assert f"T.vectorized(T.int64({hostcpu.lanes(target)}))" in conv.script()


def test_other_1x1_convs_keep_channel_vectors():
    """14-wide rows: no divisor of 14 rows gives whole 16-lane vectors (nor on 7x7); a padded
    1x1 conv (border outputs are bias only); channels that fill whole vectors."""
    for h in (14, 7):
        assert _pixel_tile_of(_conv(48, 24, h, 1, pad=0)[0]) is None
    model, feeds = _conv(16, 24, 6, 1, pad=1)
    assert _pixel_tile_of(model) is None
    _check(model, feeds)
    assert _pixel_tile_of(_conv(48, 32, 16, 1, pad=0)[0]) is None


def test_unpadded_conv_reads_its_input_directly():
    """pad=0 legalizes to an identity copy block; the conv rules inline it (no pad_temp)."""
    for model, feeds in (_conv(64, 32, 14, 1, pad=0, residual=True), _conv(32, 32, 14, 3, pad=0)):
        mod = _check(model, feeds)
        (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
        assert "pad_temp" not in conv.script()
    model, feeds = _conv(16, 32, 14, 3, pad=1)  # real padding is still computed per task
    mod = _check(model, feeds)
    (conv,) = [f for n, f in _prim_funcs(mod).items() if "conv2d" in n]
    assert "pad_temp" in conv.script()


def test_avx2_target_matches_reference():
    """Same conv and gemm with 256-bit vectors (tiles chosen for 16 registers)."""
    model, feeds = _conv(8, 24, 9, 3)
    _check(model, feeds, X86_AVX2)
    _check(_gemm(6, 20, 24, 1), {"x": RNG.standard_normal((6, 20)).astype("float32")}, X86_AVX2)


def test_fallback_ops_match_reference():
    """Max-pool, softmax and layer norm on odd sizes (pool, row-reduction and fallback rules)."""
    nodes = [
        helper.make_node(
            "MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        ),
        helper.make_node("Softmax", ["p"], ["s"], axis=-1),
        helper.make_node("LayerNormalization", ["s", "g", "bt"], ["z"], axis=-1),
    ]
    model = _model(
        nodes,
        [_vi("x", [1, 8, 33, 33])],
        [_vi("z", [1, 8, 17, 17])],
        [_const("g", (17,)), _const("bt", (17,))],
    )
    _check(model, {"x": RNG.standard_normal((1, 8, 33, 33)).astype("float32")})


@pytest.mark.parametrize(
    "op,h,k,stride,pad,extra",
    [
        ("MaxPool", 32, 3, 2, 1, {}),  # ResNet stem pool
        ("MaxPool", 16, 2, 2, 0, {}),  # no padding block
        ("AveragePool", 24, 3, 1, 1, {"count_include_pad": 0}),  # sum + per-position divide
        ("AveragePool", 24, 3, 2, 1, {"count_include_pad": 1}),
    ],
)
def test_pool2d_rule_matches_reference(op, h, k, stride, pad, extra):
    """Pool2d: max/average pooling numerics, parallel + vectorized, padding per channel."""
    from compiler.lower.schedules.pool import Pool2d

    oh = (h + 2 * pad - k) // stride + 1
    node = helper.make_node(
        op, ["x"], ["y"], kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, **extra
    )
    model = _model([node], [_vi("x", [1, 8, h, h])], [_vi("y", [1, 8, oh, oh])], [])
    mod = _check(model, {"x": RNG.standard_normal((1, 8, h, h)).astype("float32")})
    (func,) = _prim_funcs(mod).values()
    with X86:
        unscheduled = _prim_funcs(_fused(model))
    (raw,) = unscheduled.values()
    assert Pool2d().apply(raw, X86, False) is not None
    text = func.script()
    assert "T.vectorized(" in text
    assert "T.unroll(" in text
    if pad:
        assert "if_then_else" not in text  # padding decomposed: fill + copy


def test_pool2d_rule_declines_reductions_over_the_last_axis():
    """Softmax / layer-norm style reductions over the innermost axis are not pools."""
    from compiler.lower.schedules.pool import Pool2d

    model = _model(
        [helper.make_node("ReduceMax", ["x"], ["y"], axes=[3], keepdims=0)],
        [_vi("x", [1, 8, 16, 16])],
        [_vi("y", [1, 8, 16])],
        [],
    )
    with X86:
        (raw,) = _prim_funcs(_fused(model)).values()
    assert Pool2d().apply(raw, X86, False) is None


def _row_norm_models(cols: int):
    """LayerNorm, softmax over the last axis and an RMSNorm-like chain on [2, 200, cols]."""
    shape = [2, 200, cols]
    ln = _model([helper.make_node("LayerNormalization", ["x", "g", "bt"], ["z"], axis=-1)],
                [_vi("x", shape)], [_vi("z", shape)], [_const("g", (cols,)), _const("bt", (cols,))])
    sm = _model([helper.make_node("Softmax", ["x"], ["z"], axis=-1)],
                [_vi("x", shape)], [_vi("z", shape)], [])
    rms = _model(
        [helper.make_node("Mul", ["x", "x"], ["sq"]),
         helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
         helper.make_node("Sqrt", ["ms"], ["r"]),
         helper.make_node("Div", ["x", "r"], ["n"]),
         helper.make_node("Mul", ["n", "g"], ["z"])],
        [_vi("x", shape)], [_vi("z", shape)], [_const("g", (cols,))])
    return {"layer_norm": ln, "softmax": sm, "rms_norm": rms}


@pytest.mark.parametrize("cols", [256, 100, 17])
@pytest.mark.parametrize("kind", ["layer_norm", "softmax", "rms_norm"])
def test_row_reduction_rule_matches_reference(kind, cols):
    """RowReduction: rows in parallel, vector partial sums/maxima where cols allow."""
    from compiler.lower.schedules.row_reduce import RowReduction

    model = _row_norm_models(cols)[kind]
    with X86:
        raw = _prim_funcs(_fused(model))
    matched = [n for n, f in raw.items() if RowReduction().apply(f, X86, False) is not None]
    assert matched, f"RowReduction matched none of {sorted(raw)}"
    mod = _check(model, {"x": RNG.standard_normal((2, 200, cols)).astype("float32")})
    text = "\n".join(_prim_funcs(mod)[n].script() for n in matched)
    assert ("T.parallel(" in text) == (400 * cols >= 16384)  # enough work for two threads
    if cols % 16 == 0:  # AVX-512: 16 float lanes; partial results in one vector
        assert "_rf" in text and "T.vectorized(" in text


def test_row_reduction_rule_declines_other_reductions():
    """A reduction without a row-wise consumer (ReduceSum over H, W) is not a row norm."""
    from compiler.lower.schedules.row_reduce import RowReduction

    model = _model(
        [helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=0)],
        [_vi("x", [1, 8, 16, 16])], [_vi("y", [1, 8])],
        [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "ax")],
    )
    with X86:
        (raw,) = _prim_funcs(_fused(model)).values()
    assert RowReduction().apply(raw, X86, False) is None


def _reduce_model(op: str, shape: list[int], axes: list[int]):
    out = [d for i, d in enumerate(shape) if i not in axes]
    if op == "ReduceSum":  # axes are an input from opset 13, an attribute of the others to 17
        node = helper.make_node(op, ["x", "ax"], ["y"], keepdims=0)
        inits = [numpy_helper.from_array(np.array(axes, dtype=np.int64), "ax")]
    else:
        node, inits = helper.make_node(op, ["x"], ["y"], keepdims=0, axes=axes), []
    return _model([node], [_vi("x", shape)], [_vi("y", out)], inits)


@pytest.mark.parametrize(
    "op,shape,axes,vectorized",
    [
        ("ReduceMean", [1, 32, 80, 80], [2, 3], True),  # squeeze-and-excitation pooling
        ("ReduceMean", [1, 24, 20, 20], [2, 3], True),  # 400 = 25 vectors: one accumulator
        ("ReduceSum", [4, 96, 256], [2], True),
        ("ReduceMax", [3, 7, 512], [2], True),
        ("ReduceMean", [1, 64, 7, 7], [2, 3], True),  # 49: 7 partial sums per output
        ("ReduceMean", [1, 96, 14, 14], [2, 3], True),  # 196: 28 partial sums per output
        ("ReduceSum", [4, 8, 37], [2], False),  # 37: no vector width divides it, declined
        ("ReduceSum", [2, 16, 48], [1], False),  # reduced axis not innermost, declined
        ("ReduceMean", [2, 64, 64], [0, 1, 2], False),  # to one scalar: left to the fallback
    ],
)
def test_inner_reduction_rule(op, shape, axes, vectorized):
    """InnerReduction: vector partial results (rfactor) per output, outputs in parallel."""
    from compiler.lower.schedules.reduce import InnerReduction

    model = _reduce_model(op, shape, axes)
    with X86:
        (raw,) = _prim_funcs(_fused(model)).values()
    assert (InnerReduction().apply(raw, X86, False) is not None) == vectorized
    mod = _check(model, {"x": RNG.standard_normal(shape).astype("float32")})
    (func,) = _prim_funcs(mod).values()
    text = func.script()
    if vectorized:
        assert "_rf" in text and "T.vectorized(" in text
        outputs = int(np.prod([d for i, d in enumerate(shape) if i not in axes]))
        assert ("T.parallel(" in text) == (outputs >= 2 and int(np.prod(shape)) >= 16384)


def test_squeeze_excitation_gate_is_computed_once_per_channel():
    """sigmoid(conv(mean(x))) * x: the gate is a separate per-channel loop, not recomputed for
    every pixel of the map it scales, and the kernel matches the reference."""
    c, r, h = 48, 8, 20
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1, axes=[2, 3]),
        helper.make_node("Conv", ["m", "w1", "b1"], ["s"]),
        helper.make_node("Relu", ["s"], ["sr"]),
        helper.make_node("Conv", ["sr", "w2", "b2"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["gs"]),
        helper.make_node("Mul", ["x", "gs"], ["y"]),
    ]
    model = _model(
        nodes, [_vi("x", [1, c, h, h])], [_vi("y", [1, c, h, h])],
        [_const("w1", (r, c, 1, 1)), _const("b1", (r,)),
         _const("w2", (c, r, 1, 1)), _const("b2", (c,))],
    )
    mod = _check(model, {"x": RNG.standard_normal((1, c, h, h)).astype("float32")})
    gates = [f for n, f in _prim_funcs(mod).items() if "sigmoid" in n and "multiply" in n]
    assert gates, sorted(_prim_funcs(mod))
    # the multiply's loop nest reads the gate from a buffer: no exp-bits arithmetic in it
    for func in gates:
        multiply = func.script().split('T.sblock("T_multiply")')[1]
        assert "T.reinterpret" not in multiply and "T.exp" not in multiply


def test_channel_shuffle_copies_whole_rows_in_vectors():
    """ShuffleNet's concat -> reshape -> transpose -> reshape inlines into one copy whose
    indices are simplified under the loop ranges (no division chain per element), each output
    channel's 14x14 map copied in vectors, and matches the reference."""
    c, h = 58, 14
    shape5 = numpy_helper.from_array(np.array([1, 2, c, h, h], dtype=np.int64), "s5")
    shape4 = numpy_helper.from_array(np.array([1, 2 * c, h, h], dtype=np.int64), "s4")
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "s5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "s4"], ["y"]),
    ]
    model = _model(nodes, [_vi("a", [1, c, h, h]), _vi("b", [1, c, h, h])],
                   [_vi("y", [1, 2 * c, h, h])], [shape5, shape4])
    mod = _check(model, {n: RNG.standard_normal((1, c, h, h)).astype("float32") for n in "ab"})
    (func,) = _prim_funcs(mod).values()
    text = func.script()
    assert "T.vectorized(T.int64(16))" in text
    assert f"// T.int64({h})" not in text.split("T.reads(")[1].split("T.writes(")[0]


def test_conv_on_a_1x1_map_is_a_vectorized_mat_vec():
    """The squeeze conv of an SE block (pooled [1, C, 1, 1] in, C/4 out) matches the Conv2d rule
    (packed weights, output-channel vectors); so does the excite conv whose epilogue scales a
    whole map with its gate: the gate is computed once per channel, and the map is scaled in
    whole vectors of each channel's 14x14 = 196 pixels plus a 4-pixel vector for the rest."""
    from compiler.lower.schedules.conv2d import Conv2d

    c, r = 256, 64
    squeeze = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        [_vi("x", [1, c, 1, 1])], [_vi("y", [1, r, 1, 1])], [_const("w", (r, c, 1, 1)),
                                                           _const("b", (r,))],
    )
    with X86:
        (raw,) = _prim_funcs(_fused(squeeze)).values()
    assert Conv2d().apply(raw, X86, False) is not None
    mod = _check(squeeze, {"x": RNG.standard_normal((1, c, 1, 1)).astype("float32")})
    (func,) = _prim_funcs(mod).values()
    assert "T.vectorized(" in func.script()
    excite = _model(
        [helper.make_node("Conv", ["g", "w", "b"], ["s"]),
         helper.make_node("Sigmoid", ["s"], ["gs"]), helper.make_node("Mul", ["x", "gs"], ["y"])],
        [_vi("g", [1, r, 1, 1]), _vi("x", [1, c, 14, 14])], [_vi("y", [1, c, 14, 14])],
        [_const("w", (c, r, 1, 1)), _const("b", (c,))],
    )
    with X86:
        (raw,) = _prim_funcs(_fused(excite)).values()
    assert Conv2d().apply(raw, X86, False) is not None
    mod = _check(excite, {"g": RNG.standard_normal((1, r, 1, 1)).astype("float32"),
                          "x": RNG.standard_normal((1, c, 14, 14)).astype("float32")})
    (func,) = _prim_funcs(mod).values()
    text = func.script()
    gate, scale = text.split('T.sblock("T_multiply', 1)
    assert "T.reinterpret" in gate and "T.reinterpret" not in scale  # sigmoid once per channel
    assert "T.vectorized(T.int64(16))" in scale
    assert "T.vectorized(T.int64(192), T.int64(196))" in scale


@pytest.mark.parametrize("target", [X86, X86_AVX2], ids=["avx512", "avx2"])
def test_vectorizable_erf_exp_match_numpy(target):
    """Erf and Exp become vectorizable arithmetic: ~1e-7 accurate, inf/NaN/underflow kept."""
    import math

    n = 4096
    x = np.concatenate(
        [
            RNG.uniform(-6, 6, n // 2),
            RNG.uniform(-100, 100, n // 2 - 8),
            [0.0, -0.0, 88.7, 88.8, np.inf, -np.inf, -90.0, np.nan],
        ]
    ).astype("float32")
    model = _model(
        [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Exp", ["x"], ["p"])],
        [_vi("x", [n])],
        [_vi("e", [n]), _vi("p", [n])],
        [],
    )
    (erf, exp), mod = _run_scheduled(model, {"x": x}, target)
    for func in _prim_funcs(mod).values():
        text = func.script()
        assert "T.erf(" not in text and "T.exp(" not in text
        assert "T.vectorized(" in text
    x64 = x.astype("float64")
    want_erf = np.array([math.erf(v) if not np.isnan(v) else np.nan for v in x64])
    np.testing.assert_allclose(erf, want_erf, rtol=0, atol=1e-6, equal_nan=True)
    with np.errstate(over="ignore"):
        want_exp = np.exp(x64).astype("float32").astype("float64")
    normal = np.abs(want_exp) >= np.finfo("float32").tiny
    np.testing.assert_allclose(exp[normal], want_exp[normal], rtol=1e-6)
    assert np.all(exp[~normal & ~np.isnan(x)] == 0.0)  # below FLT_MIN: flushed to zero
    assert np.isnan(exp[-1]) and np.isnan(erf[-1])


@pytest.mark.parametrize("target", [X86, X86_AVX2], ids=["avx512", "avx2"])
def test_vectorizable_sigmoid_matches_numpy(target):
    """Sigmoid (SE blocks, Swish, LSTM gates) becomes vectorizable arithmetic too."""
    n = 2048
    x = np.concatenate(
        [RNG.uniform(-10, 10, n - 8), [0.0, -0.0, 88.8, -88.8, np.inf, -np.inf, 200.0, np.nan]]
    ).astype("float32")
    model = _model([helper.make_node("Sigmoid", ["x"], ["s"])], [_vi("x", [n])],
                   [_vi("s", [n])], [])
    got, mod = _run_scheduled(model, {"x": x}, target)
    (func,) = _prim_funcs(mod).values()
    text = func.script()
    assert "T.sigmoid(" not in text and "T.exp(" not in text and "T.vectorized(" in text
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x.astype("float64")))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert got[-4] == 1.0 and np.isnan(got[-1])
    # far below zero: a tiny normal float, never a denormal (slow in the ops downstream)
    assert 0.0 < got[-3] < 1e-37 and 0.0 < got[-5] < 1e-37
    assert not np.any((got != 0) & (np.abs(got) < np.finfo(np.float32).tiny))


def test_gelu_epilogue_fused_into_matmul():
    """GELU (x * 0.5 * (1 + erf(x / sqrt 2)), x read twice) is computed per matmul tile."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Add", ["y", "b"], ["h"]),
        helper.make_node("Div", ["h", "s"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h", "e1"], ["g"]),
        helper.make_node("Mul", ["g", "half"], ["z"]),
    ]
    inits = [
        _const("w", (64, 128)),
        _const("b", (128,)),
        numpy_helper.from_array(np.array(math_sqrt2(), "float32"), "s"),
        numpy_helper.from_array(np.array(1.0, "float32"), "one"),
        numpy_helper.from_array(np.array(0.5, "float32"), "half"),
    ]
    model = _model(nodes, [_vi("x", [32, 64])], [_vi("z", [32, 128])], inits)
    mod = _check(model, {"x": RNG.standard_normal((32, 64)).astype("float32")})
    (func,) = [f for n, f in _prim_funcs(mod).items() if "matmul" in n]
    text = func.script()
    assert text.count("T.parallel(") == 1  # one loop nest: the epilogue is inside the tile
    assert "T.erf(" not in text


def math_sqrt2() -> float:
    return float(np.sqrt(2.0))


def test_scheduled_kernels_are_parallel_and_vectorized():
    """Matmul, conv, depthwise and elementwise kernels all get parallel + vectorized loops."""
    conv, _ = _conv(16, 32, 14, 3)
    dw, _ = _conv(32, 32, 28, 3, group=32)
    add = _model(
        [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        [_vi("a", [128, 256]), _vi("b", [128, 256])],
        [_vi("z", [128, 256])],
        [],
    )
    for model in (_gemm(64, 128, 256, 1), conv, dw, add):
        with X86:
            mod = apply_default_schedules(_fused(model), X86)
        funcs = _prim_funcs(mod)
        assert funcs
        for name, func in funcs.items():
            assert is_scheduled(func), name
            text = func.script()
            assert "T.parallel(" in text, name
            assert "T.vectorized(" in text, name


def test_padding_kernel_vectorizes_its_inside():
    """Scale then pad by one pixel (as int8 input quantization before a conv is): the padded
    width (50) has no vector-sized divisor, the inside (48) has; the fallback fills the border
    and runs the inside as a vectorized loop, with the same values."""
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["m"]),
        helper.make_node("Pad", ["m", "pads"], ["z"], mode="constant"),
    ]
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    model = _model(nodes, [_vi("x", [1, 3, 48, 48])], [_vi("z", [1, 3, 50, 50])],
                   [_const("s", (1,)), pads])
    _check(model, {"x": RNG.standard_normal((1, 3, 48, 48)).astype("float32")})
    with X86:
        mod = apply_default_schedules(_fused(model), X86)
    (text,) = [f.script() for n, f in _prim_funcs(mod).items() if "pad" in n]
    assert "T.vectorized(" in text and "pad_const" in text


def test_already_scheduled_function_is_left_alone():
    """A PrimFunc carrying tirx.is_scheduled is neither rescheduled nor repacked."""
    mod = _fused(_gemm(8, 16, 32, 1))
    marked = tvm.IRModule(
        {
            gv: (f.with_attr("tirx.is_scheduled", True) if isinstance(f, tvm.tirx.PrimFunc) else f)
            for gv, f in mod.functions_items()
        }
    )
    with X86:
        out = apply_default_schedules(marked, X86)
    for name, func in _prim_funcs(out).items():
        tvm.ir.assert_structural_equal(func, _prim_funcs(marked)[name])


def test_non_cpu_target_is_a_no_op():
    """A CUDA target gets the module back unchanged."""
    mod = _fused(_gemm(4, 8, 8, 1))
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert apply_default_schedules(mod, cuda).same_as(mod)


def test_aarch64_builds():
    """128-bit NEON schedules build for aarch64 (not run here)."""
    model, _ = _conv(8, 16, 10, 3, residual=True)
    with AARCH64:
        mod = apply_default_schedules(_fused(model, AARCH64), AARCH64)
    assert "T.vectorized(" in mod.script()
    tvm.compile(_lower(mod, AARCH64), target=AARCH64, relax_pipeline=None)


@pytest.mark.parametrize("target,register,absent", [(X86, "zmm", None), (X86_AVX2, "ymm", "zmm")],
                         ids=["avx512", "avx2"])
def test_x86_builds_compute_in_their_vector_registers(target, register, absent):
    """Built on every host, run by no test that this machine cannot run: the AVX-512 module
    computes in 512-bit zmm registers; the AVX2 module in ymm and never touches a zmm register
    (an AVX2-only CPU would die with SIGILL)."""
    model, _ = _conv(16, 32, 14, 3, residual=True)
    ex = _build(_scheduled(model, target), target)
    asm = "\n".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")
    assert "%" + register in asm and "vfmadd" in asm
    if absent:
        assert "%" + absent not in asm


@pytest.mark.parametrize("name", ["resnet_block_cnn", "transformer_block", "depthwise_block"])
def test_zoo_models_match_reference(name):
    """Whole zoo models (BN, attention, GELU, softmax, pooling) stay exact under the rules."""
    from tests import models

    model = models.get_model(name)
    _check(model, models.random_inputs(model))


def test_shared_kernel_with_two_weights():
    """Two same-shape Gemm layers may share one PrimFunc: each call gets its own packed weight."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["y"], transB=1),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    inits = [
        _const("w1", (32, 32)),
        _const("b1", (32,)),
        _const("w2", (32, 32)),
        _const("b2", (32,)),
    ]
    model = _model(nodes, [_vi("x", [3, 32])], [_vi("z", [3, 32])], inits)
    _check(model, {"x": RNG.standard_normal((3, 32)).astype("float32")})


def test_symbolic_batch_builds_and_runs():
    """A symbolic batch dimension: rules that need static shapes step aside, results stay exact."""
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 40])
    model = _model(nodes, [x], [z], [_const("w", (40, 24)), _const("b", (40,))])
    _check(model, {"x": RNG.standard_normal((5, 24)).astype("float32")})


def test_conv2d_with_weight_as_input():
    """A conv whose weight is a graph input (not a constant) packs it inside the kernel."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)]
    model = _model(
        nodes, [_vi("x", [1, 8, 9, 9]), _vi("w", [16, 8, 3, 3])], [_vi("y", [1, 16, 9, 9])], []
    )
    feeds = {
        "x": RNG.standard_normal((1, 8, 9, 9)).astype("float32"),
        "w": RNG.standard_normal((16, 8, 3, 3)).astype("float32"),
    }
    mod = _check(model, feeds)
    assert all("T.vectorized(" in f.script() for f in _prim_funcs(mod).values())


def test_rules_work_under_dlight_apply_default_schedule():
    """The rules are plain DLight rules: without the packing step they still schedule correctly."""
    from tvm.s_tir import dlight as dl

    from compiler.lower.schedules import DEFAULT_RULES

    def dlight(mod, target):
        return dl.ApplyDefaultSchedule(*DEFAULT_RULES)(mod)

    model, feeds = _conv(8, 16, 10, 3, residual=True)
    got, mod = _run_scheduled(model, feeds, X86, schedule=dlight)
    assert all(is_scheduled(f) for f in _prim_funcs(mod).values())
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_failing_rule_is_reported_in_one_line(caplog):
    """A rule that raises (TVM's schedule errors carry the whole IR) is skipped with a one-line
    warning naming the rule, the kernel and the error message; the next rule schedules it."""
    import logging

    from compiler.lower.schedules import Fallback, _schedule

    class Exploding:
        def apply(self, func, target, tunable):
            ir_dump = "    lots of IR\n" * 50
            raise RuntimeError("ScheduleError: primitive failed\n# from tvm.script import ...\n"
                               + ir_dump + "Error message: producers not under loop")

    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4, 64])],
                   [_vi("y", [4, 64])], [])
    with X86:
        (func,) = _prim_funcs(_fused(model)).values()
    with caplog.at_level(logging.WARNING, logger="compiler.lower.schedules"):
        scheduled = _schedule("relu", func, X86, [Exploding(), Fallback()])
    assert scheduled is not None
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "\n" not in message and "Exploding" in message and "relu" in message
    assert "producers not under loop" in message
