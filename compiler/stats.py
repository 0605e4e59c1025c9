"""Size statistics of ONNX models and Relax modules (parameters, bytes of weights)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx


def onnx_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Parameter count and bytes of the initializers of an ONNX model."""
    params = nbytes = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        params += n
        nbytes += n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return {"params": params, "weight_bytes": nbytes}


def relax_weights(mod: Any) -> dict[str, int]:
    """Parameter count and bytes of the constants bound in the Relax functions of ``mod``."""
    import tvm
    from tvm import relax

    seen: list[tuple[int, int]] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "shape"):
            shape = tuple(int(d) for d in expr.value.shape)
            n = int(np.prod(shape)) if shape else 1
            seen.append((n, n * np.dtype(str(expr.value.dtype)).itemsize))

    for _gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {"params": sum(v[0] for v in seen), "weight_bytes": sum(v[1] for v in seen)}
