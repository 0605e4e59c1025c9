"""Winograd F(4x4, 3x3) convolutions (compiler.lower.rewrites.winograd +
compiler.lower.schedules.winograd).

Numerical cases compile small ONNX convolutions through hwcc's own lowering (BN folding,
Winograd rewrite, fusion, default schedules) and compare with ``onnx.reference``. Tolerance:
Winograd rounds differently from a direct sum; on unit-normal data the error stays within
~1e-6 of the output scale (measured), asserted as rtol/atol 2e-5 x scale (a direct conv
would pass at 1e-5 too; a wrong transform coefficient fails by orders of magnitude).

The scheduled TIR that the structural assertions read is the fixed target's (AVX-512 unless a
test names another); that module is always built, and run where this machine can
(``tests.hostcpu``), else the model is compiled and run for the widest target this machine runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax, te
from tvm.relax.frontend.onnx import from_onnx

from compiler.lower import lowering
from compiler.lower.options import LowerOptions
from compiler.lower.rewrites.winograd import (
    WinogradConfig,
    transform_matrices,
    transform_weight,
    winograd_conv2d,
    winograd_te,
)
from compiler.lower.schedules import Winograd, apply_default_schedules, is_scheduled
from targets import parse_target
from tests import hostcpu

#: AVX-512, 2 cores: the TIR the assertions read; run only where this machine has AVX-512.
X86 = hostcpu.AVX512
#: AVX2 + FMA, 1 core.
X86_AVX2 = hostcpu.tvm_target(hostcpu.AVX2_FEATURES, num_cores=1)
#: Accept anything with a 4x4 tile for the small test shapes.
ANY = WinogradConfig(min_in_channels=1, min_out_channels=1, min_tiles=1)
RNG = np.random.default_rng(0)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _conv(c, o, h, w, pad=1, stride=1, group=1, residual=False, bn=False):
    oh, ow = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4,
                              strides=[stride] * 2, group=group)]
    inits = [numpy_helper.from_array(RNG.standard_normal((o, c // group, 3, 3)).astype("float32"),
                                     "w"),
             numpy_helper.from_array(RNG.standard_normal(o).astype("float32"), "b")]
    last = "y"
    if bn:
        for name, val in (("s", RNG.uniform(0.5, 2, o)), ("m", RNG.standard_normal(o)),
                          ("v", RNG.uniform(0.5, 2, o)), ("t", RNG.standard_normal(o))):
            inits.append(numpy_helper.from_array(val.astype("float32"), name))
        nodes.append(helper.make_node("BatchNormalization", ["y", "s", "t", "m", "v"], ["yb"]))
        last = "yb"
    inputs = [_vi("x", [1, c, h, w])]
    feeds = {"x": RNG.standard_normal((1, c, h, w)).astype("float32")}
    if residual:
        inputs.append(_vi("r", [1, o, oh, ow]))
        feeds["r"] = RNG.standard_normal((1, o, oh, ow)).astype("float32")
        nodes.append(helper.make_node("Add", [last, "r"], ["ya"]))
        last = "ya"
    nodes.append(helper.make_node("Relu", [last], ["z"]))
    graph = helper.make_graph(nodes, "g", inputs, [_vi("z", [1, o, oh, ow])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds


def _calls(mod, name):
    """Number of calls in Relax functions to an op (``relax.nn.conv2d``) or a global function
    whose name contains ``name``."""
    count = 0

    @relax.expr_functor.visitor
    class _Count(relax.PyExprVisitor):
        def visit_call_(self, call):
            nonlocal count
            op = call.op
            if isinstance(op, tvm.ir.Op) and op.name == name:
                count += 1
            for arg in call.args:
                if isinstance(arg, tvm.ir.GlobalVar) and name in arg.name_hint:
                    count += 1
            super().visit_call_(call)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Count().visit_expr(func)
    return count


def _compile(model, config, target):
    """hwcc's fusion with ``config``'s Winograd rewrite, default schedules, build for
    ``target``: (executable, scheduled module)."""
    mod = from_onnx(model, keep_params_in_input=False)
    hw_target = parse_target("host")
    passes = lowering._fuse_passes(target, LowerOptions())
    passes = [winograd_conv2d(config, target) if p.info.name == "hwcc.WinogradConv2d" else p
              for p in passes]
    with target, lowering.pass_context(hw_target):
        fused = tvm.transform.Sequential(passes)(mod)
        scheduled = apply_default_schedules(fused, target)
        lowered = tvm.transform.Sequential(
            relax.backend.cpu_generic.pipeline.dataflow_lower_passes(target)
            + relax.backend.cpu_generic.pipeline.finalize_passes(target))(scheduled)
    return tvm.compile(lowered, target=target, relax_pipeline=None), scheduled


def _compile_and_run(model, feeds, config=ANY, target=X86):
    """Build for ``target`` and run it, or, where this machine cannot run ``target``'s code,
    run the build for the widest target it runs. Returns the output and ``target``'s
    scheduled module."""
    ex, scheduled = _compile(model, config, target)
    run_target = hostcpu.execution_target(target)
    if run_target is not target:
        ex, _ = _compile(model, config, run_target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    return out, scheduled


def _check(model, feeds, **kwargs):
    got, mod = _compile_and_run(model, feeds, **kwargs)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale)
    return mod


def test_transform_matrices_compute_a_3_tap_correlation():
    """Y = A^T [(G g) * (B^T d)] for 1-D F(4, 3): the matrices are a valid Winograd triple."""
    a, b, g = transform_matrices()
    d, k = RNG.standard_normal(6), RNG.standard_normal(3)
    want = np.array([d[i:i + 3] @ k for i in range(4)])
    np.testing.assert_allclose(a.T @ ((g @ k) * (b.T @ d)), want, rtol=1e-12, atol=1e-12)


def test_weight_transform_layout():
    """U is [6, 6, K / b, C, b] (eps, nu, output-channel block, input channel, lane) of G w G^T,
    zero-padded to whole blocks."""
    wt = RNG.standard_normal((5, 3, 3, 3)).astype("float32")
    u = transform_weight(wt, block=4)
    _, _, g = transform_matrices()
    assert u.shape == (6, 6, 2, 3, 4) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, :, 1, 1, 0], g @ wt[4, 1] @ g.T, rtol=1e-6, atol=1e-6)
    assert not u[:, :, 1, :, 1:].any()


@pytest.mark.parametrize(
    "c,o,h,w,pad,residual",
    [
        (16, 16, 9, 11, 1, False),   # odd sizes: partial 4x4 tiles at the bottom and right
        (16, 32, 12, 12, 0, False),  # no padding, output 10x10
        (32, 16, 7, 5, 1, True),     # residual add epilogue
        (24, 40, 13, 6, 1, True),    # channel counts that are no multiple of the vector
    ],
)
def test_winograd_matches_reference(c, o, h, w, pad, residual):
    model, feeds = _conv(c, o, h, w, pad=pad, residual=residual)
    mod = _check(model, feeds)
    assert _calls(mod, "winograd_conv2d") == 1
    funcs = {gv.name_hint: f for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "winograd" in gv.name_hint}
    assert len(funcs) == 1
    (name, func), = funcs.items()
    assert is_scheduled(func)
    # scheduled by the Winograd rule (its register-tile accumulator), not the fallback
    assert "hwcc_winograd_gemm_local" in func.script()
    # the epilogue (bias, residual, ReLU) is fused into the Winograd kernel
    assert "relu" in name


@pytest.mark.parametrize("h,w,residual", [(9, 9, False), (7, 5, True)])
def test_small_maps_use_2x2_tiles(h, w, residual):
    """Too few 4x4 tiles but enough 2x2 ones: F(2x2, 3x3) (4x4 transform points)."""
    model, feeds = _conv(16, 32, h, w, residual=residual)
    fewer_than_4x4 = -(-h // 4) * -(-w // 4) + 1
    config = WinogradConfig(min_in_channels=1, min_out_channels=1, min_tiles=fewer_than_4x4,
                            small_maps=True)
    mod = _check(model, feeds, config=config)
    (func,) = [f for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and "winograd" in gv.name_hint]
    shapes = [tuple(int(d) for d in p.shape) for p in func.params]
    assert (4, 4, 1, 16, 32) in shapes  # U: 4x4 transform points, K / 32, C, 32


def test_asymmetric_padding():
    """ONNX pads [top, left, bottom, right] = [1, 0, 0, 1]: output 10 x 10 from 11 x 10."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 0, 0, 1])]
    w = numpy_helper.from_array(RNG.standard_normal((16, 16, 3, 3)).astype("float32"), "w")
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, 16, 11, 10])],
                              [_vi("z", [1, 16, 10, 9])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": RNG.standard_normal((1, 16, 11, 10)).astype("float32")}
    mod = _check(model, feeds)
    assert _calls(mod, "winograd_conv2d") == 1


def test_winograd_after_batch_norm_folding():
    """BN folds into the weight first; the folded constant is what gets transformed."""
    model, feeds = _conv(16, 16, 10, 10, bn=True)
    mod = _check(model, feeds)
    assert _calls(mod, "winograd_conv2d") == 1


def test_winograd_on_avx2_target():
    model, feeds = _conv(16, 32, 9, 9, residual=True)
    _check(model, feeds, target=X86_AVX2)


@pytest.mark.parametrize(
    "kwargs,config",
    [
        ({"stride": 2}, ANY),            # strided: not F(4, 3)
        ({"group": 16}, ANY),            # depthwise
        ({}, WinogradConfig(small_maps=False)),  # a 9x9 map has 9 4x4 tiles, fewer than 16
        ({}, WinogradConfig(enabled=False)),
    ],
)
def test_ineligible_convs_stay_direct(kwargs, config):
    model, _ = _conv(16, 16, 9, 9, **kwargs)
    mod = from_onnx(model, keep_params_in_input=False)
    out = winograd_conv2d(config)(mod)
    assert _calls(out, "relax.nn.conv2d") == 1
    assert _calls(out, "winograd_conv2d") == 0


def test_non_cpu_target_is_left_alone():
    """Only LLVM CPU targets have a schedule for the kernel."""
    model, _ = _conv(16, 16, 16, 16)
    mod = from_onnx(model, keep_params_in_input=False)
    out = winograd_conv2d(ANY, tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))(mod)
    assert _calls(out, "relax.nn.conv2d") == 1


def test_conv_with_weight_as_input_stays_direct():
    x = relax.Var("x", relax.TensorType((1, 16, 16, 16), "float32"))
    wv = relax.Var("w", relax.TensorType((16, 16, 3, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, wv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, wv, padding=1))
        bb.emit_func_output(out)
    out = winograd_conv2d(ANY)(bb.get())
    assert _calls(out, "relax.nn.conv2d") == 1


def test_rewrite_is_well_formed_and_removes_the_conv():
    model, _ = _conv(16, 16, 16, 16)
    mod = from_onnx(model, keep_params_in_input=False)
    assert relax.analysis.check_well_formed(mod)
    out = winograd_conv2d(ANY)(mod)
    assert relax.analysis.check_well_formed(out)
    assert _calls(out, "relax.nn.conv2d") == 0 and _calls(out, "winograd_conv2d") == 1


def test_rule_declines_other_functions():
    x = te.placeholder((4, 8), name="x")
    y = te.compute((4, 8), lambda i, j: x[i, j] + 1.0, name="y")
    assert Winograd().apply(te.create_prim_func([x, y]), X86, False) is None


def test_rule_schedules_the_bare_kernel():
    x = te.placeholder((1, 16, 10, 10), name="x")
    u = te.placeholder((6, 6, 1, 16, 32), name="u")
    func = te.create_prim_func([x, u, winograd_te(x, u, (1, 1, 1, 1), 32)])
    sch = Winograd().apply(func, X86, False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.vectorized" in text and "T.parallel" in text


def test_outlier_weight_keeps_the_direct_convolution():
    """One weight 1e31 (a fuzzed MNIST model): Winograd's transforms mix it into every point,
    and where its input is 0 direct convolution gives exactly 0 but Winograd leaves rounding
    residue of ~1e24; such a conv stays direct and matches the reference."""
    wv = RNG.standard_normal((16, 16, 3, 3)).astype("float32") * 0.1
    wv[3, 5, 1, 1] = 1e31
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, 16, 12, 12])], [_vi("z", [1, 16, 12, 12])],
                              [numpy_helper.from_array(wv, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((1, 16, 12, 12)).astype("float32")
    x[0, 5] = 0.0  # the channel the outlier reads
    got, mod = _compile_and_run(model, {"x": x})
    assert _calls(mod, "winograd_conv2d") == 0
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    wv[3, 5, 1, 1] = 1.0  # a well-scaled weight still gets Winograd
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(wv, "w"))
    assert _calls(_compile_and_run(model, {"x": x})[1], "winograd_conv2d") == 1
