"""Time a small Relax module on this machine, built by hwcc's own lowering.

Handed to passes that may time kernels instead of trusting a cost model (a pass never builds
or times anything itself), e.g. ``SparsifyConfig(measure=time_module)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from targets import Target, parse_target

from .lowering import build
from .options import LowerOptions


def time_module(mod: tvm.IRModule, repeat: int = 7, number: int = 5,
                target: Target | None = None, options: LowerOptions | None = None,
                database: Any = None) -> float:
    """Best-of-``repeat`` milliseconds of ``mod``'s ``main`` built by hwcc's lowering (default
    schedules, and the records of ``database`` if given) for ``target`` (default: this
    machine), run here.

    Every parameter must have a static shape; float inputs get seeded normal values, integer
    inputs zeros (valid indices for gathers and embeddings), booleans False.
    """
    tgt = target if target is not None else parse_target("host")
    built = build(mod, tgt, database=database, options=options)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    rng = np.random.default_rng(0)
    args = []
    for param in mod["main"].params:
        shape = [int(d) for d in param.ty.shape.values]
        dtype = str(param.ty.dtype)
        if dtype.startswith(("float", "bfloat")):
            x = rng.standard_normal(shape).astype(dtype)
        else:
            x = np.zeros(shape, dtype=dtype)
        args.append(tvm.runtime.tensor(x))
    vm.set_input("main", *args)
    timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)
    return float(min(timer("main").results)) * 1e3
