"""hwcc.PruneChannels: real shrinking, coupled consistency, exactness against references."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import ConfigError
from passes import Canonicalize, PruneChannels, PruneConfig
from passes.calibration import run
from passes.channel_groups import SHAPE, analyze
from passes.prune_channels import param_count, read_report
from tests.models import ZOO, get_model
from tests.passes.prune_helpers import (
    apply,
    imported,
    onnx_reference,
    stacked_inputs,
    tiny_cnn,
    weights_by_binding,
    zero_consumer_inputs,
    zoo,
)


@pytest.mark.parametrize("name", list(ZOO))
def test_pruned_model_is_smaller_consistent_and_exact(name: str) -> None:
    """At ratio 0.5 every prunable group shrinks; every member of a group loses exactly the
    removed units (weights, biases, reshapes); the pruned model compiles, runs and equals the
    original ONNX model with the removed channels zeroed in the consumers (onnx.reference)."""
    model, mod = zoo(name)
    cfg = PruneConfig(ratio=0.5, multiple_of=4, scope="per_layer")
    pruned = apply(PruneChannels(cfg), mod)
    report = read_report(pruned)
    assert report["params_after"] < report["params_before"] == param_count(mod)
    assert report["params_after"] == param_count(pruned)
    before, after = weights_by_binding(mod), weights_by_binding(pruned)
    removed = {g["group"]: g["removed_units"] for g in report["groups"]}
    cuts: dict[str, set] = {}
    for g in analyze(mod):
        if not g.prunable:
            continue
        assert removed[g.name], f"group {g.name} was not pruned"
        kept = g.size - len(removed[g.name])
        assert (kept * g.unit_elems) % 4 == 0  # hardware multiple
        for m in g.members:
            if m.arg == SHAPE:
                continue
            lost = before[m.binding].shape[m.axis] - after[m.binding].shape[m.axis]
            assert lost >= len(removed[g.name]) * m.width, (g.name, m)
            if m.role == "in":
                cuts.setdefault(m.binding, set()).update(m.indices(removed[g.name]).tolist())
    xs = stacked_inputs(model, range(2))
    reference = zero_consumer_inputs(model, mod, {k: sorted(v) for k, v in cuts.items()})
    np.testing.assert_allclose(
        run(pruned, xs)[0], onnx_reference(reference, xs), rtol=2e-4, atol=2e-4
    )


@pytest.mark.parametrize("name", ["resnet_block_cnn", "transformer_block"])
def test_ratio_zero_is_exactly_the_original(name: str) -> None:
    """ratio=0 removes nothing: identical weights and bit-identical outputs."""
    model, mod = zoo(name)
    pruned = apply(PruneChannels(PruneConfig(ratio=0.0)), mod)
    assert all(g["removed"] == 0 for g in read_report(pruned)["groups"])
    xs = stacked_inputs(model, range(2))
    assert np.array_equal(run(pruned, xs)[0], run(mod, xs)[0])


def test_transformer_heads_removed_whole() -> None:
    """Pruning heads shrinks Q/K/V/out-projection by whole heads and the head reshapes."""
    _, mod = zoo("transformer_block")
    pruned = apply(PruneChannels(PruneConfig(ratio=0.5, scope="per_layer")), mod)
    heads = next(g for g in read_report(pruned)["groups"] if g["unit_elems"] == 16)
    assert (heads["size"], heads["kept"]) == (4, 2)
    shapes = sorted(w.shape for w in weights_by_binding(pruned).values() if w.ndim == 2)
    assert shapes.count((64, 32)) == 3 and shapes.count((32, 64)) == 1  # Q, K, V; out proj
    # The blocked residual stream keeps its width: LayerNorm weights stay 64 wide.
    assert all(g["size"] != 64 for g in read_report(pruned)["groups"])


def _cnn_with_weak_channels(dead: list[int], weak: list[int]):
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3))
    w1[weak] *= 1e-3
    b1 = np.zeros(8)
    b1[dead] = -100.0  # always negative before ReLU: a dead channel
    return tiny_cnn(w1, b1, rng.normal(size=(4, 8, 1, 1)) * np.ones((1, 8, 1, 1)))


@pytest.mark.parametrize(
    ("importance", "expected"),
    [("l1", [1, 6]), ("l2", [1, 6]), ("mean_activation", [2, 5]), ("apoz", [2, 5])],
)
def test_importance_picks_the_right_channels(importance: str, expected: list[int]) -> None:
    """Channels 1, 6 have tiny weights (magnitude criteria), 2, 5 never fire (activation)."""
    model = _cnn_with_weak_channels(dead=[2, 5], weak=[1, 6])
    mod = apply(Canonicalize(), imported(model))
    calib = stacked_inputs(model, range(3))
    cfg = PruneConfig(ratio=0.25, importance=importance, scope="per_layer", calibration=calib)
    report = read_report(apply(PruneChannels(cfg), mod))
    assert report["groups"][0]["removed_units"] == expected


def test_reconstruction_and_global_scope() -> None:
    """Reconstruction importance with global ranking removes the requested share overall."""
    model, mod = zoo("concat_block")
    calib = stacked_inputs(model, range(2))
    cfg = PruneConfig(ratio=0.5, importance="reconstruction", calibration=calib)
    report = read_report(apply(PruneChannels(cfg), mod))
    total = sum(g["size"] for g in report["groups"])
    assert sum(g["removed"] for g in report["groups"]) == total // 2


def test_multiple_of_rounds_kept_channels_up() -> None:
    """multiple_of=8: each pruned group keeps a multiple of 8 elements (or all of them)."""
    _, mod = zoo("mlp")
    report = read_report(apply(PruneChannels(PruneConfig(ratio=0.3, multiple_of=8)), mod))
    assert all(g["kept"] % 8 == 0 for g in report["groups"])
    assert all(g["removed"] > 0 for g in report["groups"])


def test_layer_ratios_override() -> None:
    """A per-group ratio prunes only that group."""
    _, mod = zoo("mlp")
    first = next(g for g in analyze(mod) if g.prunable).name
    cfg = PruneConfig(ratio=0.0, layer_ratios={first: 0.5})
    groups = read_report(apply(PruneChannels(cfg), mod))["groups"]
    assert [(g["group"], g["kept"]) for g in groups if g["removed"]] == [(first, 64)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, r"\[0, 1\)"),
        ({"ratio": -0.1}, r"\[0, 1\)"),
        ({"ratio": "0.5"}, r"\[0, 1\)"),
        ({"importance": "random"}, "unknown importance"),
        ({"scope": "layer"}, "unknown scope"),
        ({"multiple_of": 0}, "multiple_of"),
        ({"importance": "apoz"}, "needs calibration data"),
        ({"layer_ratios": {"lv1": 1.5}}, r"layer_ratios\['lv1'\]"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    """PruneConfig validates itself."""
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_nothing_prunable_is_a_clear_error() -> None:
    """A single conv feeding the output has nothing that may be pruned."""
    rng = np.random.default_rng(0)
    model = tiny_cnn(rng.normal(size=(4, 2, 3, 3)), np.zeros(4), rng.normal(size=(2, 4, 1, 1)), 2)
    mod = apply(Canonicalize(), imported(model))
    with pytest.raises(ConfigError, match="nothing to prune.*grouped conv2d"):
        PruneChannels(PruneConfig(ratio=0.5))(mod)


def test_unfolded_batch_norm_is_refused() -> None:
    """The precondition (BatchNorm folded) is checked, with the fix in the message."""
    mod = imported(get_model("resnet_block_cnn"))
    with pytest.raises(ConfigError, match="Canonicalize"):
        PruneChannels(PruneConfig(ratio=0.5))(mod)


def test_calibration_that_does_not_fit_is_a_clear_error() -> None:
    """Calibration arrays without the sample axis are rejected, naming the input and shapes."""
    _, mod = zoo("mlp")
    bad = {"input": np.zeros((4, 64), np.float32)}
    cfg = PruneConfig(ratio=0.5, importance="mean_activation", calibration=bad)
    with pytest.raises(ConfigError, match=r"'input'.*\(n_samples, \*\(4, 64\)\)"):
        PruneChannels(cfg)(mod)
    with pytest.raises(ConfigError, match="missing"):
        cfg = PruneConfig(ratio=0.5, importance="apoz", calibration={"x": np.zeros((1, 4, 64))})
        PruneChannels(cfg)(mod)


def test_unknown_layer_ratio_group() -> None:
    """layer_ratios naming no prunable group lists the prunable ones."""
    _, mod = zoo("mlp")
    with pytest.raises(ConfigError, match="prunable groups"):
        PruneChannels(PruneConfig(layer_ratios={"nope": 0.5}))(mod)


def test_pipeline_runs_the_passes_by_name() -> None:
    """The compile driver finds the passes by name and picks up the report from main."""
    from compiler.pipeline import PassSpec, run_passes

    mod = imported(get_model("mlp"))
    specs = [PassSpec("canonicalize"), PassSpec("prune_channels", PruneConfig(ratio=0.5))]
    _, reports = run_passes(mod, specs)
    report = reports[1]["report"]
    assert report["params_after"] < report["params_before"]
    assert all(g["params_removed"] > 0 for g in report["groups"])
