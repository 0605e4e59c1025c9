"""Pruning is never slower than the unpruned model (hwcc.PruneChannels with a timer).

The pass takes the timer as an input (it never builds a kernel itself), so these tests hand it
timers with known answers to check each branch of the decision, and one real timer
(:func:`compiler.lower.timing.time_module`) to check the whole path on this machine.
"""

from __future__ import annotations

import tvm

from compiler.lower.timing import time_module
from passes import PruneChannels, PruneConfig
from passes.prune_channels import MAX_RESTORES, param_count, read_report
from tests.passes.prune_helpers import apply, zoo


def _pruned(timer) -> tuple[tvm.IRModule, tvm.IRModule, dict]:
    _, mod = zoo("resnet_block_cnn")
    out = apply(PruneChannels(PruneConfig(ratio=0.5, scope="per_layer", timer=timer)), mod)
    return mod, out, read_report(out)


def test_faster_pruned_model_is_kept() -> None:
    """A timer that finds smaller models faster: the pruned model stays, both times reported."""
    mod, out, rep = _pruned(lambda m: float(param_count(m)))
    assert rep["speed"]["kept"] == "pruned" and rep["speed"]["restored_groups"] == []
    assert rep["speed"]["pruned_ms"] < rep["speed"]["unpruned_ms"] == param_count(mod)
    assert param_count(out) < param_count(mod)


def test_slower_pruned_model_falls_back_to_the_unpruned_one() -> None:
    """A timer that finds every smaller model slower: after restoring groups (at most
    MAX_RESTORES) the pass returns the module as it was (same parameters, same structure), and
    says why."""
    calls = []

    def timer(m: tvm.IRModule) -> float:
        calls.append(param_count(m))
        return 1.0 / param_count(m)

    mod, out, rep = _pruned(timer)
    assert rep["speed"]["kept"] == "unpruned" and "ran" in rep["speed"]["reason"]
    assert param_count(out) == param_count(mod) == rep["params_after"]
    assert all(g["removed"] == 0 for g in rep["groups"]) and rep["refit_layers"] == []
    tvm.ir.assert_structural_equal(out["main"].body, mod["main"].body)
    # unpruned, fully pruned, then one timing per restored group (restoring the last one would
    # give the unpruned module back: not timed again)
    assert len(calls) == 2 + min(MAX_RESTORES, len(rep["groups"]) - 1)


def test_restoring_the_least_useful_group_is_enough() -> None:
    """A timer under which only the fully pruned model is slow: the group that saved fewest
    parameters is restored and every other group stays pruned."""
    state = {}

    def timer(m: tvm.IRModule) -> float:
        n = param_count(m)
        state.setdefault("base", n)  # the first call times the unpruned module
        state.setdefault("full", None)
        if n == state["base"]:
            return 1.0
        if state["full"] is None:  # the second call: the fully pruned module
            state["full"] = n
        return 1.5 if n == state["full"] else 0.5

    mod, out, rep = _pruned(timer)
    speed = rep["speed"]
    assert speed["kept"] == "pruned" and len(speed["restored_groups"]) == 1
    pruned_groups = [g for g in rep["groups"] if g["removed"]]
    restored = speed["restored_groups"][0]
    assert restored not in {g["group"] for g in pruned_groups}
    assert pruned_groups and param_count(mod) > param_count(out) > state["full"]


def test_real_timer_on_this_machine() -> None:
    """With hwcc's own timer the decision rests on two builds timed here, recorded in the
    report; whichever model is kept, it was not the slower one."""
    mod, out, rep = _pruned(time_module)
    speed = rep["speed"]
    assert speed["decided_by"] == "measured on this machine"
    assert speed["unpruned_ms"] > 0 and speed["pruned_ms"] > 0
    if speed["kept"] == "pruned":
        assert speed["pruned_ms"] < speed["unpruned_ms"]
        assert param_count(out) < param_count(mod)
    else:
        assert param_count(out) == param_count(mod)


def test_without_a_timer_the_report_says_it_was_not_checked() -> None:
    _, _, rep = _pruned(None)
    assert "not checked" in rep["speed"]["decided_by"]


def _onnx_flops(model) -> int:
    """Conv / Gemm / MatMul operations of an ONNX model, from its own shape inference."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            k = int(np.prod(weights[node.input[1]][1:]))
            total += 2 * int(np.prod(shapes[node.output[0]])) * k
        elif node.op_type in ("Gemm", "MatMul"):
            total += 2 * int(np.prod(shapes[node.output[0]])) * int(shapes[node.input[0]][-1])
    return total


def test_achieved_parameter_and_flop_ratios_are_reported() -> None:
    """The report states what was achieved beside the requested ratio; the FLOPs before
    pruning equal an independent count from the ONNX model's own shape inference."""
    model, mod = zoo("resnet_block_cnn")
    out = apply(PruneChannels(PruneConfig(ratio=0.5, scope="per_layer")), mod)
    rep = read_report(out)
    assert rep["flops_before"] == _onnx_flops(model)
    assert 0 < rep["flops_after"] < rep["flops_before"]
    got = rep["achieved"]
    assert got["params_removed"] == round(1 - param_count(out) / param_count(mod), 4)
    assert got["flops_removed"] == round(1 - rep["flops_after"] / rep["flops_before"], 4)
