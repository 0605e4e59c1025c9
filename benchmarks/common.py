"""Shared benchmark helpers: timing, the machine description, targets, result files, tables.

Targets
-------
The scripts that compile for a chosen ISA (``models.py``, ``quantize.py``, ``kernels.py``) take
``--target TRIPLE_WITH_OPTIONS`` (default ``host``: this machine's triple with every feature it
has), parsed by :func:`targets.parse_target`. Benchmarks run what they compile, so a target
this machine cannot execute (another architecture, or a CPU feature it lacks) is refused with
one line before anything is compiled (:func:`benchmark_target`).

Result files
------------
``benchmarks/results/<name>.json`` holds the run for the host target;
``benchmarks/results/<name>-<slug>.json`` the run for any other target, where the slug
(:func:`target_slug`) names what differs from the bare triple: ``-mcpu`` as ``mcpu_<cpu>``,
each ``-mattr`` feature without its ``+`` (``-feature`` as ``no-<feature>``) in the family's
canonical order, ``-cores=N`` as ``cores<N>``, joined by ``-``; a target with none of these is
named by its architecture. ``x86_64-linux-gnu -mattr=+avx2,+fma`` gives ``models-avx2-fma.json``;
a target equal to ``host`` (same triple, same feature set) writes ``models.json``. Every file
records the machine (CPU model, cores, its features) and the target (string and features).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from targets import Target

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"

from compiler.artifact.runtime import use_all_cores  # noqa: E402

# every core, as hwcc's CLI runs models; set before TVM's runtime starts its thread pool
use_all_cores()


def threads() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", "1"))


def machine(target: Target | None = None) -> dict[str, Any]:
    """CPU model, cores, ISA features, date, and the target benchmarked (``host`` when None):
    printed with every table.

    ``features`` are this CPU's; ``target`` is the target string and ``target_features`` the
    ``-mattr`` features it compiles for."""
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
    target = host if target is None else target
    return {
        "cpu": model,
        "cores": host.cores,
        "features": list(host.features),
        "threads": threads(),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "target": str(target),
        "target_features": list(target.features),
    }


# -- targets ------------------------------------------------------------------------------
def add_target_argument(ap: argparse.ArgumentParser) -> None:
    """``--target TRIPLE_WITH_OPTIONS`` (default ``host``), as the target-aware scripts take it."""
    ap.add_argument("--target", default="host", metavar="TRIPLE_WITH_OPTIONS",
                    help="target to compile for, e.g. 'x86_64-linux-gnu -mattr=+avx2,+fma' "
                         "(default: host, this machine's own features); it must run on this "
                         "machine. Results of a target other than host go to "
                         "results/<name>-<slug>.json")


def benchmark_target(spec: str | Target) -> Target:
    """Parse ``spec`` and check that this machine can execute code built for it.

    Raises
    ------
    TargetError
        For a target :func:`targets.parse_target` rejects (unknown triple, option or feature),
        one that is not an LLVM CPU target of this machine's architecture, or one that needs
        CPU features this machine lacks (running it would die with SIGILL).
    """
    from targets import host_arch, parse_target
    from targets.errors import TargetError

    target = parse_target(spec)
    if target.kind != "llvm":
        raise TargetError(f"cannot benchmark target '{target}': benchmarks time LLVM CPU code "
                          f"on this machine, and it compiles to {target.kind} code")
    if target.arch != host_arch():
        raise TargetError(f"cannot benchmark target '{target}' on this {host_arch()} machine: "
                          f"benchmarks run what they compile, and its code is for {target.arch}")
    lacks = target.missing_host_features()  # -mcpu's features included
    if lacks:
        have = ",".join(parse_target("host").features) or "(none)"
        raise TargetError(
            f"cannot benchmark target '{target}' on this machine: it lacks "
            f"{', '.join(lacks)} (this CPU has {have})")
    return target


def target_from_args(spec: str, prog: str) -> Target:
    """:func:`benchmark_target`, or one line ``<prog>: error: ...`` on stderr and exit 2."""
    from targets.errors import TargetError

    try:
        return benchmark_target(spec)
    except TargetError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def is_host_target(target: Target) -> bool:
    """Whether ``target`` is this machine's own target (``host``): same triple, no ``-mcpu``,
    the same feature set (in any order), cores not forced."""
    from targets import parse_target

    host = parse_target("host")
    return (target.triple == host.triple and target.cpu is None and not target.explicit_cores
            and set(target.features) == set(host.features))


def target_slug(target: Target) -> str:
    """``""`` for the host target, else the file-name suffix of the target's results (see the
    module doc): ``x86_64-linux-gnu -mattr=+avx2,+fma`` -> ``avx2-fma``."""
    from targets import FAMILIES
    from targets.host import host_triple

    if is_host_target(target):
        return ""
    known = FAMILIES[target.family][1]

    def order(feat: str) -> tuple[int, str]:
        plus = "+" + feat[1:]
        return (known.index(plus) if plus in known else len(known), feat)

    parts = [] if target.triple == host_triple() else [target.triple]
    if target.cpu:
        parts.append(f"mcpu_{target.cpu}")
    parts += [f[1:] if f.startswith("+") else f"no-{f[1:]}" for f in sorted(target.features,
                                                                             key=order)]
    if target.explicit_cores:
        parts.append(f"cores{target.cores}")
    slug = "-".join(parts) or target.arch
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", slug)


def results_path(name: str, target: Target | None = None) -> Path:
    """``results/<name>.json`` for the host target (or None), ``results/<name>-<slug>.json``
    for any other."""
    slug = "" if target is None else target_slug(target)
    return RESULTS / (f"{name}-{slug}.json" if slug else f"{name}.json")


def target_extra(script: str, target: Target) -> dict[str, Any]:
    """What a result file of a target other than the host's adds (``{}`` for the host's): the
    command that reproduces it (``script --target '...'``, shown under its README table) and a
    note that onnxruntime, which picks its kernels from this CPU's own features, is not
    restricted to the target's ISA."""
    if is_host_target(target):
        return {}
    return {"script": f"{script} --target '{target}'",
            "notes": [("onnxruntime picks its kernels from this CPU's own features, not the "
                       "target's: its columns measure the same onnxruntime as the host-target "
                       "table.")]}


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


def save_results(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                 target: Target | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (``<name>-<slug>.json`` for a target other than
    the host's, see :func:`results_path`) atomically, with the machine and target."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(name, target)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(target), "rows": rows, **(extra or {})},
                              indent=2))
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
    """One line: CPU, cores, date and target; for a target whose features are not this CPU's
    (``target_features`` differs from ``features``), both feature lists."""
    line = (f"{m['cpu']}, {m['cores']} cores ({m['threads']} threads used), "
            f"{m['date']}; target `{m['target']}`")
    tf = m.get("target_features")
    if tf is not None and set(tf) != set(m.get("features", ())):
        line += (f" (target features: {','.join(tf) or 'none in -mattr'}; "
                 f"CPU features: {','.join(m.get('features', ())) or 'none detected'})")
    return line
