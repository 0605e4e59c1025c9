"""Time the artifact's source ONNX model in onnxruntime, same inputs, same process."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.errors import HwccError

from .runtime import Artifact, timing_summary


def compare_onnxruntime(art: Artifact, feeds: Mapping[str, np.ndarray], repeat: int,
                        warmup: int, hwcc_median_ms: float) -> dict[str, Any]:
    """onnxruntime latency on the artifact's ``model.onnx`` with as many threads as hwcc."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise HwccError("--compare onnxruntime needs onnxruntime: pip install onnxruntime") \
            from None
    src = art.path / art.manifest.get("source_model", "model.onnx")
    if not src.exists():
        raise HwccError(f"{art.path} has no source model to compare with")
    threads = int(os.environ.get("TVM_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    for _ in range(max(0, warmup)):
        sess.run(None, dict(feeds))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, dict(feeds))
        times.append((time.perf_counter() - t0) * 1e3)
    out = timing_summary(times, "onnxruntime CPUExecutionProvider", warmup)
    out["threads"] = threads
    out["hwcc_median_ms"] = hwcc_median_ms
    out["speedup"] = out["median_ms"] / hwcc_median_ms if hwcc_median_ms else None
    return out
