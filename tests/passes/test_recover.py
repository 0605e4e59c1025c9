"""Teacher-guided least-squares recovery after pruning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.errors import ConfigError
from passes import PruneChannels, PruneConfig, Recover, RecoverConfig
from passes._ir import bindings, const_array, main_function, op_name
from passes.calibration import capture, run
from passes.recover import _im2col, refit, refit_pruned
from tests.passes.prune_helpers import apply, stacked_inputs, zoo


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).mean() / np.abs(ref).mean())


@pytest.mark.parametrize(
    ("name", "factor"), [("depthwise_block", 0.5), ("concat_block", 0.5), ("mlp", 0.8)]
)
def test_recovery_shrinks_the_accuracy_loss(name: str, factor: float) -> None:
    """On held-out inputs, the re-fitted pruned model is much closer to the teacher than the
    pruned one (measured: depthwise ~0.78 -> ~0.06, concat ~0.85 -> ~0.09; the MLP, where half
    of every hidden layer's information is simply gone, ~0.76 -> ~0.48)."""
    model, teacher = zoo(name)
    samples = 64 if name == "mlp" else 8  # the MLP's batch of 4 rows gives few rows per sample
    calib = stacked_inputs(model, range(samples))
    held_out = stacked_inputs(model, range(1000, 1008))
    pruned = apply(PruneChannels(PruneConfig(ratio=0.5, scope="per_layer")), teacher)
    recovered, stats = refit_pruned(teacher, pruned, calib)
    ref = run(teacher, held_out)[0]
    before = rel_error(run(pruned, held_out)[0], ref)
    after = rel_error(run(recovered, held_out)[0], ref)
    assert after < factor * before, (before, after)
    assert all(s["error_after"] <= s["error_before"] for s in stats.values())
    # Structure unchanged: same weight shapes as the pruned model.
    shapes = [const_array(b.value.args[1]).shape for b in bindings(main_function(pruned))
              if op_name(b.value) in ("relax.nn.conv2d", "relax.matmul")
              and hasattr(b.value.args[1], "value")]  # fmt: skip
    shapes_rec = [const_array(b.value.args[1]).shape for b in bindings(main_function(recovered))
                  if op_name(b.value) in ("relax.nn.conv2d", "relax.matmul")
                  and hasattr(b.value.args[1], "value")]  # fmt: skip
    assert shapes == shapes_rec


def test_refit_of_an_unchanged_model_is_identity() -> None:
    """With student == teacher the fit has nothing to correct: outputs stay the same."""
    model, teacher = zoo("mlp")
    calib = stacked_inputs(model, range(16))
    layers = [
        b.var.name for b in bindings(main_function(teacher)) if op_name(b.value) == "relax.matmul"
    ]
    student, stats = refit(teacher, teacher, calib, layers, ridge=1e-6)
    assert all(s["error_before"] < 1e-10 for s in stats.values())
    np.testing.assert_allclose(run(student, calib)[0], run(teacher, calib)[0], rtol=1e-4, atol=1e-4)


def test_im2col_matches_tvm_conv() -> None:
    """The patch matrix used for conv fits reproduces TVM's strided, padded conv2d."""
    model, mod = zoo("resnet_block_cnn")
    conv = next(
        b for b in bindings(main_function(mod))
        if op_name(b.value) == "relax.nn.conv2d" and int(b.value.attrs.strides[0]) == 2
        and int(b.value.attrs.padding[0]) == 1
    )  # fmt: skip
    cap = capture(mod, stacked_inputs(model, range(1)), [conv.value.args[0], conv.var])
    x, y = cap.values[0][0], cap.values[1][0]
    w = const_array(conv.value.args[1])
    cols = _im2col(x, conv.value, w.shape)
    got = (cols @ w.reshape(w.shape[0], -1).T).reshape(y.shape[0], y.shape[2], y.shape[3], -1)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), y, rtol=1e-4, atol=1e-4)


def test_recover_pass_uses_the_pruning_report() -> None:
    """hwcc.Recover re-fits the report's layers and records per-layer errors on main."""
    model, teacher = zoo("mlp")
    calib = stacked_inputs(model, range(32))
    pruned = apply(PruneChannels(PruneConfig(ratio=0.5)), teacher)
    out = apply(Recover(RecoverConfig(teacher=teacher, calibration=calib)), pruned)
    report = json.loads(str(main_function(out).attrs["hwcc.recover"]))
    assert set(report["layers"]) == {"lv4", "lv7"}
    assert all(v["error_after"] < v["error_before"] for v in report["layers"].values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "teacher"),
        ({"teacher": "model"}, "teacher"),
        ({"teacher": None, "calibration": {}}, "teacher"),
        ({"calibration": None}, "calibration"),
        ({"layers": "lv4"}, "sequence of binding names"),
        ({"ridge": -1.0}, "ridge"),
        ({"max_rows": 0}, "max_rows"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    """RecoverConfig validates itself."""
    _, teacher = zoo("mlp")
    full = {"teacher": teacher, "calibration": {"input": np.zeros((1, 4, 64), np.float32)}}
    full.update(kwargs)
    if not kwargs:
        full = {}
    with pytest.raises(ConfigError, match=message):
        RecoverConfig(**full)


def test_bad_layers_and_data_are_clear_errors() -> None:
    """Unknown layers list the known ones; unpruned modules and misfit data are refused."""
    model, teacher = zoo("mlp")
    calib = stacked_inputs(model, range(2))
    with pytest.raises(ConfigError, match="known layers"):
        refit(teacher, teacher, calib, ["nope"])
    with pytest.raises(ConfigError, match="no PruneChannels report"):
        refit_pruned(teacher, teacher, calib)
    with pytest.raises(ConfigError, match="n_samples"):
        refit(teacher, teacher, {"input": calib["input"][0]}, ["lv4"])
