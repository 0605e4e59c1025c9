"""Shared benchmark helpers: timing, the machine description, result files, tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"

from compiler.artifact.runtime import use_all_cores  # noqa: E402

# every core, as hwcc's CLI runs models; set before TVM's runtime starts its thread pool
use_all_cores()


def threads() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", "1"))


def machine() -> dict[str, Any]:
    """CPU model, cores, ISA features, date: printed with every table."""
    from targets import parse_target

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = parse_target("host")
    return {
        "cpu": model,
        "cores": host.cores,
        "features": list(host.features),
        "threads": threads(),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "target": str(host),
    }


def time_fn(fn: Callable[[], Any], repeat: int = 20, warmup: int = 3,
            max_seconds: float = 20.0) -> dict[str, float]:
    """Median/min of ``repeat`` timed calls (fewer if they exceed ``max_seconds``)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def ort_session(model_path: str | Path, n_threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads or threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def save_results(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None
                 ) -> Path:
    """Write ``benchmarks/results/<name>.json`` (atomically) with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2))
    tmp.replace(path)
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table from ``rows`` with ``columns`` as (key, header) pairs."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "—" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores ({m['threads']} threads used), "
            f"{m['date']}; target `{m['target']}`")
