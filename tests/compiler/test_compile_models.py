"""End to end on real graphs: compile for the host, run, compare with onnx.reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.lower import lowering
from tests import models

ZOO_TOL = {"resnet_block_cnn": 1e-4, "mlp": 1e-4, "transformer_block": 2e-4,
           "depthwise_block": 1e-4, "concat_block": 1e-4}


@pytest.mark.parametrize("name", sorted(ZOO_TOL))
def test_zoo_model_matches_reference(name: str, tmp_path: Path) -> None:
    """CNN with residuals and BN, MLP, transformer block, depthwise, concat: hwcc == reference."""
    model = models.get_model(name)
    art = compiler.compile(model, "host", output_dir=tmp_path / name, verify=False)
    for seed in (0, 1):
        feeds = models.random_inputs(model, seed=seed)
        ours = art.run(feeds)
        ref = ReferenceEvaluator(model).run(None, feeds)
        for out, r in zip(art.outputs, ref):
            got = ours[out.name]
            assert got.shape == r.shape
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(got, r, atol=ZOO_TOL[name] * scale, rtol=1e-4)


def test_example_model_accuracy_matches_reference(tmp_path: Path) -> None:
    """The bundled digits CNN: same top-1 predictions as onnx.reference on its test data."""
    from examples import example_data, example_model

    path = example_model("digits_cnn")
    data = example_data("digits_cnn")
    art = compiler.compile(path, "host", output_dir=tmp_path / "digits")
    model = onnx.load(str(path))
    ref = ReferenceEvaluator(model)
    xs, labels = data["input"][:60], data["label"][:60]
    ours = np.stack([art.run({"input": x})["logits"][0] for x in xs])
    theirs = np.stack([ref.run(None, {"input": x})[0][0] for x in xs])
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert (ours.argmax(1) == labels).mean() > 0.9


def test_manifest_records_what_was_built(tmp_path: Path) -> None:
    """Manifest: inputs/outputs, target, versions, hashes, sizes, verification."""
    model = models.get_model("mlp")
    art = compiler.compile(model, "host", output_dir=tmp_path / "mlp")
    m = art.manifest
    assert m["inputs"] == [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
                           for i in art.inputs]
    assert m["outputs"][0]["shape"] == [4, 10]
    assert m["versions"]["apache-tvm"].startswith("0.27")
    assert set(m["files"]) == {"module.so", "model.onnx"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["model"]["params"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert m["verification"]["max_abs_err"] < 1e-3
    assert m["verification"]["reference"] in ("onnxruntime", "onnx.reference")


def test_dynamic_batch_pinned_by_input_shape(tmp_path: Path) -> None:
    """A model with a symbolic batch compiles once the user pins it, and runs at that shape."""
    model = models.get_model("mlp")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for o in model.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "batch"
    art = compiler.compile(model, "host", output_dir=tmp_path / "dyn",
                           input_shapes={model.graph.input[0].name: (2, 64)})
    assert art.inputs[0].shape == (2, 64)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]
    np.testing.assert_allclose(art.run([x])[art.outputs[0].name], ref, atol=1e-4)


def test_batch_norm_folded_and_clip_fused_into_convs() -> None:
    """Conv -> BN -> Clip(0, 6) becomes one kernel per conv: BN scale in the weights, no
    divide left, no separate maximum/minimum kernel (numerics: test_zoo_model_matches_reference
    on depthwise_block). The expansion 1x1 conv and the depthwise conv after it share one
    kernel (compiler.lower.rewrites.expand_depthwise), the expansion's Clip inside it; the
    depthwise conv's
    Clip is inside it too, since the projection reads its output in the blocked layout."""
    from tvm import tirx

    from compiler import frontend

    from compiler import lower
    from targets import parse_target

    mod = frontend.load_model(models.get_model("depthwise_block")).mod
    fused = lower.legalize_and_fuse(mod, parse_target("host"))
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)]
    convs = [n for n in names if "conv2d" in n or "expand_depthwise" in n or "pointwise" in n]
    assert len(convs) == 3, names  # stem, expansion + depthwise, projection
    assert not any("divide" in n for n in names), names
    assert not any(n.startswith(("maximum", "minimum", "clip", "fused_maximum", "fused_minimum"))
                   for n in names), names
    assert sum("expand_depthwise_blocked" in n for n in convs) == 1, convs
    assert sum("blocked_pointwise" in n for n in convs) == 1, convs


def test_batch_norm_of_an_nhwc_conv_is_left_to_decompose() -> None:
    """Negative case: TVM's BN folding assumes NCHW; an NHWC conv -> BN (axis 3) keeps its BN
    (decomposed) and still matches numpy."""
    import tvm
    from tvm import relax

    from compiler import lower
    from targets import parse_target

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype("float32")
    gamma, beta, mean = (rng.standard_normal(8).astype("float32") for _ in range(3))
    var = (1 + rng.random(8)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1, data_layout="NHWC",
                                           kernel_layout="OIHW"))
            y = bb.emit(relax.op.nn.batch_norm(y, *(relax.const(a) for a in (gamma, beta, mean,
                                                                              var)),
                                               axis=3, epsilon=1e-5))
            out = bb.emit_output(relax.TupleGetItem(y, 0))
        bb.emit_func_output(out)
    mod = bb.get()
    assert not lowering._bn_after_conv_is_nchw(mod)

    data = rng.standard_normal((1, 6, 6, 4)).astype("float32")
    ex = lower.build(mod, parse_target("host")).executable
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    padded = np.pad(data[0], ((1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))
    conv = np.einsum("hwiab,oiab->hwo", windows, w)
    want = (conv - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)
