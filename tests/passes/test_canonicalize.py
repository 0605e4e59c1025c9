"""hwcc.Canonicalize: constants and BatchNorm folded, Clip kernels back to Relax ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from compiler.errors import ConfigError
from passes import Canonicalize, CanonicalizeConfig
from passes._ir import bindings, main_function, op_name
from passes.calibration import run
from tests.models import get_model
from tests.passes.prune_helpers import apply, imported, onnx_reference, stacked_inputs


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in bindings(main_function(mod)):
        name = op_name(b.value) or type(b.value).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize("name", ["resnet_block_cnn", "depthwise_block"])
def test_batch_norm_folded_and_outputs_match_onnx_reference(name: str) -> None:
    """Every BN (after conv with and without bias) folds away; outputs match onnx.reference."""
    model = get_model(name)
    before = imported(model)
    assert op_counts(before)["relax.nn.batch_norm"] > 0
    after = apply(Canonicalize(), before)
    counts = op_counts(after)
    assert "relax.nn.batch_norm" not in counts
    assert "TupleGetItem" not in counts
    assert counts["relax.nn.conv2d"] == op_counts(before)["relax.nn.conv2d"]
    xs = stacked_inputs(model, range(2))
    np.testing.assert_allclose(run(after, xs)[0], onnx_reference(model, xs), rtol=1e-4, atol=1e-4)


def test_clip_call_tir_becomes_relax_ops() -> None:
    """The importer's call_tir(maximum/minimum) for Clip is turned into R.maximum/R.minimum."""
    before = imported(get_model("depthwise_block"))
    assert op_counts(before).get("relax.call_tir", 0) == 4
    counts = op_counts(apply(Canonicalize(), before))
    assert "relax.call_tir" not in counts
    assert counts["relax.maximum"] == 2 and counts["relax.minimum"] == 2


def test_clips_of_different_shapes_all_become_relax_ops() -> None:
    """The importer names the kernels of a second Clip shape maximum1/minimum1; those are
    recognised too (the PrimFunc's structure decides, not its name)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Clip", ["input", "lo", "hi"], ["c1"]),
             helper.make_node("Conv", ["c1", "w"], ["y"]),
             helper.make_node("Clip", ["y", "lo", "hi"], ["output"])]
    graph = helper.make_graph(
        nodes, "two_clips",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    before = imported(model)
    names = {b.value.args[0].name_hint for b in bindings(main_function(before))
             if op_name(b.value) == "relax.call_tir"}
    assert names == {"maximum", "minimum", "maximum1", "minimum1"}
    after = apply(Canonicalize(), before)
    counts = op_counts(after)
    assert "relax.call_tir" not in counts
    assert counts["relax.maximum"] == 2 and counts["relax.minimum"] == 2
    xs = {"input": rng.normal(size=(2, 1, 4, 5, 5)).astype(np.float32) * 5}
    np.testing.assert_allclose(run(after, xs)[0], onnx_reference(model, xs), rtol=1e-5, atol=1e-5)


def _bn_on_input_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "g"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "m"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "v"),
        numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("BatchNormalization", ["input", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("Conv", ["bn", "w"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bn_first",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_batch_norm_without_producer_is_decomposed() -> None:
    """A BN on the model input (nothing to fold into) becomes x * scale + shift."""
    model = _bn_on_input_model()
    after = apply(Canonicalize(), imported(model))
    counts = op_counts(after)
    assert "relax.nn.batch_norm" not in counts
    assert counts["relax.multiply"] == 1 and counts["relax.add"] == 1
    xs = stacked_inputs(model, range(2))
    np.testing.assert_allclose(run(after, xs)[0], onnx_reference(model, xs), rtol=1e-5, atol=1e-5)


def test_model_without_batch_norm_is_left_alone() -> None:
    """Negative case: an MLP (no BN, no Clip) comes back as FoldConstant alone would give it."""
    before = imported(get_model("mlp"))
    after = apply(Canonicalize(), before)
    tvm.ir.assert_structural_equal(after, relax.transform.FoldConstant()(before))


def test_options_off_leave_batch_norm() -> None:
    """fold_batch_norm=False keeps the BN (PruneChannels would then refuse the module)."""
    cfg = CanonicalizeConfig(fold_batch_norm=False)
    after = apply(Canonicalize(cfg), imported(get_model("resnet_block_cnn")))
    assert op_counts(after)["relax.nn.batch_norm"] > 0


def test_config_validates_itself() -> None:
    """Non-bool options are rejected with ConfigError."""
    with pytest.raises(ConfigError, match="fold_batch_norm"):
        CanonicalizeConfig(fold_batch_norm="yes")  # type: ignore[arg-type]
