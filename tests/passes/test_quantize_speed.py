"""hwcc.Quantize never returns a model slower than the float one (issue #22).

With a timer (``compiler.lower.timing.time_module``: the module built by hwcc and run on this
machine) the faster of the two is kept; without one the target's cost model decides (no
integer dot-product instruction: float); ``keep_float_if_slower=False`` (``hwcc compile
--quantize-always``) keeps the quantized model. The report says which and why.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tvm

from compiler.lower.timing import time_module
from passes.quantize import Quantize, QuantizeConfig, quantize_config_from_args
from targets import parse_target
from tests.passes.prune_helpers import apply, stacked_inputs, zoo


def _int8_layers(mod: tvm.IRModule) -> int:
    """conv2d / matmul calls of ``mod`` that accumulate in int32."""
    found = []

    def visit(e) -> None:
        if isinstance(e, tvm.relax.Call) and getattr(e.op, "name", "") in (
                "relax.nn.conv2d", "relax.matmul"):
            if str(getattr(e.attrs, "out_dtype", "")) == "int32":
                found.append(e)

    for _, f in mod.functions_items():
        if isinstance(f, tvm.relax.Function):
            tvm.relax.analysis.post_order_visit(f, visit)
    return len(found)


def _scripted_timer(times: list[float]) -> tuple[list[tvm.IRModule], object]:
    """A timer answering ``times`` in turn (the float model is timed first), recording what
    it was asked to time."""
    seen: list[tvm.IRModule] = []
    answers: Iterator[float] = iter(times)

    def timer(mod: tvm.IRModule) -> float:
        seen.append(mod)
        return next(answers)

    return seen, timer


def _run(timer=None, **kw) -> tuple[tvm.IRModule, tvm.IRModule, Quantize]:
    model, mod = zoo("resnet_block_cnn")
    cfg = QuantizeConfig(calibration=stacked_inputs(model, range(4)), measure=False,
                         timer=timer, **kw)
    p = Quantize(cfg)
    return mod, apply(p, mod), p


def test_float_model_kept_when_the_quantized_one_is_slower() -> None:
    seen, timer = _scripted_timer([1.0, 2.5])
    mod, out, p = _run(timer)
    assert len(seen) == 2 and _int8_layers(seen[0]) == 0 and _int8_layers(seen[1]) > 0
    tvm.ir.assert_structural_equal(out, mod)
    speed = p.report["speed"]
    assert speed["kept"] == "float" and speed["decided_by"].startswith("measured")
    assert (speed["float_ms"], speed["quantized_ms"]) == (1.0, 2.5)
    assert "2.5 ms" in speed["reason"] and "1 ms" in speed["reason"]
    assert sum(p.report["layers"].values()) == 0 and sum(p.report["discarded_layers"].values())


def test_quantized_model_kept_when_faster() -> None:
    _, timer = _scripted_timer([2.0, 1.0])
    _, out, p = _run(timer)
    assert _int8_layers(out) > 0 and p.report["speed"]["kept"] == "quantized"


def test_quantize_always_keeps_the_quantized_model_without_timing() -> None:
    seen, timer = _scripted_timer([1.0, 9.0])
    _, out, p = _run(timer, keep_float_if_slower=False)
    assert not seen and _int8_layers(out) > 0
    assert p.report["speed"] == {"kept": "quantized", "decided_by": "user (always quantize)"}


def test_measured_on_this_machine_with_hwccs_own_build() -> None:
    """The real timer: both models built by hwcc for this machine and timed; the kept one
    is the faster."""
    _, out, p = _run(time_module)
    speed = p.report["speed"]
    assert speed["float_ms"] > 0 and speed["quantized_ms"] > 0
    faster = "quantized" if speed["quantized_ms"] < speed["float_ms"] else "float"
    assert speed["kept"] == faster
    assert (_int8_layers(out) > 0) == (faster == "quantized")


@pytest.mark.parametrize("target, kept", [
    ("x86_64-linux-gnu", "float"),  # SSE2 baseline: no dot product, int8 loops run scalar
    ("x86_64-linux-gnu -mattr=+avx2,+fma", "quantized"),  # vpmaddubsw
    ("aarch64-linux-gnu -mattr=+neon,+dotprod", "quantized"),  # sdot
    ("embedded", "quantized"),  # integer-only: int8 is the only way it runs
])
def test_cost_model_decides_without_a_timer(target: str, kept: str) -> None:
    model, mod = zoo("resnet_block_cnn")
    calib = stacked_inputs(model, range(4))
    cfg = quantize_config_from_args("int8", calib, "minmax", parse_target(target).capabilities)
    p = Quantize(QuantizeConfig(**{**cfg.__dict__, "measure": False}))
    out = apply(p, mod)
    speed = p.report["speed"]
    assert speed["kept"] == kept and "float_ms" not in speed
    assert speed["decided_by"] == ("integer-only target" if target == "embedded" else "cost model")
    assert (_int8_layers(out) > 0) == (kept == "quantized")
    if kept == "float":
        assert "no integer dot-product" in speed["reason"]


def test_timer_must_be_callable() -> None:
    from compiler.errors import ConfigError

    with pytest.raises(ConfigError, match="timer"):
        QuantizeConfig(calibration={"x": np.zeros((1, 2))}, timer=3.0)
