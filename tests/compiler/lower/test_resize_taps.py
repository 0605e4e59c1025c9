"""Linear Resize as separable table passes (compiler.lower.rewrites.resize_taps), and the fallback
schedule
keeping a pass that its consumer reads through an index table.

Each case compiles an ONNX Resize through hwcc's lowering and compares with ``onnx.reference``.
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
from compiler.lower.rewrites.resize_taps import linear_taps
from targets import parse_target

HOST = parse_target("host")
RNG = np.random.default_rng(0)


def _resize(shape, out_hw, mode="linear", coord="half_pixel", concat_channels=0):
    """x [N, C, H, W] -> Resize(sizes=[N, C, *out_hw]) [-> Concat with a second input]."""
    n, c = shape[:2]
    sizes = numpy_helper.from_array(np.array([n, c, *out_hw], np.int64), "sizes")
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode=mode,
                              coordinate_transformation_mode=coord)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    out = "r"
    if concat_channels:
        nodes.append(helper.make_node("Concat", ["r", "skip"], ["y"], axis=1))
        inputs.append(helper.make_tensor_value_info(
            "skip", TensorProto.FLOAT, [n, concat_channels, *out_hw]))
        out = "y"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                             [n, c + concat_channels, *out_hw])]
    graph = helper.make_graph(nodes, "resize", inputs, outputs, [sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {"x": RNG.standard_normal(shape).astype("float32")}
    if concat_channels:
        feeds["skip"] = RNG.standard_normal((n, concat_channels, *out_hw)).astype("float32")
    return model, feeds


def _kernel_scripts(model, options: LowerOptions | None = None) -> dict[str, str]:
    mod = from_onnx(model, keep_params_in_input=False)
    lowered, _ = lower.lower_cpu(mod, HOST, None, options=options)
    return {gv.name_hint: f.script() for gv, f in lowered.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _check(model, feeds, options: LowerOptions | None = None) -> dict[str, str]:
    mod = from_onnx(model, keep_params_in_input=False)
    built = lower.build(mod, HOST, options=options)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return _kernel_scripts(model, options)


@pytest.mark.parametrize(
    "shape,out_hw,coord",
    [
        ((1, 8, 16, 16), (32, 32), "half_pixel"),  # UNet's 2x upsample
        ((2, 3, 10, 7), (15, 21), "half_pixel"),  # non-integer scales, batch 2
        ((1, 4, 16, 12), (6, 5), "half_pixel"),  # downscale
        ((1, 4, 9, 9), (17, 20), "align_corners"),
        ((1, 4, 8, 6), (16, 9), "asymmetric"),
        ((1, 4, 8, 6), (1, 12), "pytorch_half_pixel"),  # one output row: source index 0
    ],
)
def test_linear_resize_matches_reference(shape, out_hw, coord):
    scripts = _check(*_resize(shape, out_hw, coord=coord))
    assert any("resize_linear" in name for name in scripts), list(scripts)


def test_upsample_then_concat_keeps_the_row_pass():
    """UNet's decoder: 2x upsample then concat with the skip connection. The horizontal pass
    (two gathers per element, once per input row) stays its own loop nest: the concat reads it
    through the row table, and inlined it would be recomputed for every output row."""
    model, feeds = _resize((1, 8, 16, 16), (32, 32), concat_channels=4)
    scripts = _check(model, feeds)
    (text,) = [t for name, t in scripts.items() if "resize_linear" in name]
    assert 'sblock("hwcc_resize_rows")' in text
    assert 'sblock("hwcc_resize_cols")' not in text  # inlined into the concat, rows contiguous


def test_nearest_keeps_tvms_lowering():
    model, feeds = _resize((1, 4, 8, 8), (16, 16), mode="nearest", coord="asymmetric")
    scripts = _check(model, feeds)
    assert not any("resize_linear" in name for name in scripts), list(scripts)


def test_switch_off():
    model, feeds = _resize((1, 4, 8, 8), (16, 16))
    scripts = _check(model, feeds, LowerOptions(resize_taps=False))
    assert not any("resize_linear" in name for name in scripts), list(scripts)


def test_tables_for_a_2x_half_pixel_upsample():
    """Output x reads source x/2 - 0.25: the first output clamps to index 0, then the weights
    alternate 0.75 / 0.25 between neighbours."""
    i0, i1, w = linear_taps(4, 8, "half_pixel")
    assert i0.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert i1.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    np.testing.assert_allclose(w, [0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25])
