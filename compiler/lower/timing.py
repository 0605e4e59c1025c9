"""Time a small Relax module on this machine, built by hwcc's own lowering.

Handed to passes that may time kernels instead of trusting a cost model (a pass never builds
or times anything itself), e.g. ``SparsifyConfig(measure=time_module)``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from targets import parse_target

from .lowering import build


def time_module(mod: tvm.IRModule, repeat: int = 7, number: int = 5) -> float:
    """Best-of-``repeat`` milliseconds of ``mod``'s ``main`` (one static-shape float32 input)
    built by hwcc's lowering for this machine (default schedules for the dense kernels)."""
    built = build(mod, parse_target("host"))
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    param = mod["main"].params[0]
    shape = [int(d) for d in param.ty.shape.values]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    vm.set_input("main", tvm.runtime.tensor(x))
    timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)
    return float(min(timer("main").results)) * 1e3
