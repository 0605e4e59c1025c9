"""Transposed convolutions with kernel == stride as a 1x1 conv and a pixel shuffle
(compiler.lower.rewrites.conv_transpose). Numerical cases go through hwcc's own lowering (the
rewrite, fusion,
default schedules) and are compared with ``onnx.reference``."""

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
from compiler.lower.rewrites.conv_transpose import shuffle_weight
from targets import parse_target

RNG = np.random.default_rng(0)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(n, c, o, h, w, k, stride, pad=0, bias=True):
    oh, ow = (h - 1) * stride - 2 * pad + k, (w - 1) * stride - 2 * pad + k
    inputs = ["x", "w"] + (["b"] if bias else [])
    nodes = [helper.make_node("ConvTranspose", inputs, ["y"], kernel_shape=[k, k],
                              strides=[stride] * 2, pads=[pad] * 4),
             helper.make_node("Relu", ["y"], ["z"])]
    inits = [numpy_helper.from_array(RNG.standard_normal((c, o, k, k)).astype("float32"), "w")]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(o).astype("float32"), "b"))
    graph = helper.make_graph(nodes, "g", [_vi("x", [n, c, h, w])], [_vi("z", [n, o, oh, ow])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"x": RNG.standard_normal((n, c, h, w)).astype("float32")}


def _compile_and_run(model, feeds):
    """Build through hwcc's own CPU path (:func:`compiler.lower.lowering`); also returns the fused
    module, whose kernel names show whether the rewrite happened."""
    target = parse_target("host")
    mod = from_onnx(model, keep_params_in_input=False)
    vm = relax.VirtualMachine(lower.build(mod, target).executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    return out, lower.legalize_and_fuse(mod, target)


def test_shuffle_weight_is_the_transposed_conv_per_patch_position():
    """z[(o, a, b)] = sum_c x[c] w[c, o, a, b]: the 1x1 weight's rows are the patch positions."""
    w = RNG.standard_normal((5, 3, 2, 2))
    x = RNG.standard_normal(5)
    z = shuffle_weight(w)[:, :, 0, 0] @ x
    np.testing.assert_allclose(z.reshape(3, 2, 2), np.einsum("c,coab->oab", x, w))


@pytest.mark.parametrize(
    "n,c,o,h,w,k,bias",
    [
        (1, 16, 8, 6, 7, 2, True),  # UNet-style 2x2 / 2 upsampling, non-square map
        (2, 8, 24, 5, 5, 3, False),  # 3x3 / 3, batch 2, no bias
    ],
)
def test_kernel_equal_to_stride_becomes_conv_and_shuffle(n, c, o, h, w, k, bias):
    model, feeds = _model(n, c, o, h, w, k, stride=k, bias=bias)
    got, fused = _compile_and_run(model, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not any("conv2d_transpose" in name for name in names), names
    assert any("conv2d" in name for name in names), names


def test_overlapping_transposed_conv_keeps_tvm_lowering():
    """Kernel 4, stride 2, padding 1 (DCGAN-style): patches overlap, not rewritten, still right."""
    model, feeds = _model(1, 8, 4, 5, 5, 4, stride=2, pad=1)
    got, fused = _compile_and_run(model, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("conv2d_transpose" in name for name in names), names
