"""Per-kernel profile of an artifact: where the time of one inference goes.

>>> prof = profile_kernels(Artifact.load("out/digits_cnn"), repeat=20)
>>> k = prof.kernels[0]                       # the slowest kernel first
>>> k.kernel, k.calls, k.schedule
('fused_winograd_conv2d_add_relu', 1, 'default rule: Winograd')

Every kernel is a fused TIR PrimFunc that the Relax VM calls. TVM 0.27's
``relax.VirtualMachine`` has no ``profile`` method (nor a profiler of any kind), so each call
is timed from Python through the VM's instrument hook (:meth:`Artifact.instrument_kernels`):
the clock is read right before and right after the call, the device synchronized first on
GPUs. Each kernel's time per run is the median over ``repeat`` instrumented runs, after
``warmup`` runs. The clock is read in Python, so each call's time includes the hook's own
passage back into the VM and out again: about a microsecond (a Zen 4 core), nothing for a
real layer, much for a microsecond kernel; the kernels of a tiny model can so add up to more
than an uninstrumented run.

The FLOP count of a call and how the kernel was scheduled come from the manifest's
``kernel_info``, written at compile time (:mod:`compiler.lower.lowering`). An artifact built
before it was recorded still profiles: its kernels' ``schedule`` is ``"unknown"`` and their
``flops`` None.

Peaks come from the target's :class:`targets.Capabilities` (the manifest's target string
parsed again, as at compile time; the recorded capabilities if it no longer parses):
``peak_gflops`` is the fp32 peak. Int8 kernels are rated in GOP/s against an *approximate*
int8 peak: the fp32 peak scaled by the best 8-bit dot-product instruction of
``capabilities.int8_dot`` (:data:`INT8_DOT_OPS`), i.e. its operations per 32-bit lane times
its width, over the 2 flops per lane of an fp32 FMA at the target's ``vector_bits``:
``vpdpbusd`` (AVX-512 VNNI) 4x, ``vpmaddubsw`` (AVX2, a two-instruction pair) 2x on a 256-bit
target and 1x on a 512-bit one, ``sdot`` 4x, ``smmla`` 8x; without any, the fp32 peak itself
(widening integer arithmetic). Instruction mix, issue ports and clocks are ignored.
"""

from __future__ import annotations

import logging
import os
import statistics
import textwrap
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import HwccError, RuntimeInputError
from targets import Capabilities, parse_target

from .runtime import Artifact

logger = logging.getLogger(__name__)

#: 8-bit dot-product instruction -> (int8 operations per 32-bit lane per instruction, a
#: multiply-add counting 2; the instruction's vector bits). ``vpmaddubsw`` needs a second
#: instruction (``vpmaddwd``) to reach 32-bit sums: 4 multiply-adds per lane over two.
INT8_DOT_OPS: dict[str, tuple[float, int]] = {
    "vpdpbusd": (8.0, 512),
    "vpdpbusd256": (8.0, 256),
    "vpmaddubsw512": (4.0, 512),
    "vpmaddubsw": (4.0, 256),
    "sdot": (8.0, 128),
    "smmla": (16.0, 128),
}

#: What ``schedule`` says of a kernel the manifest does not describe (built before it did).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class KernelTime:
    """One kernel's share of a run.

    Attributes
    ----------
    kernel : str
        The PrimFunc's name (its symbol in the module library).
    calls : int
        Calls per run.
    total_ms : float
        Milliseconds per run, all its calls together (median over the profiled runs).
    share : float
        ``total_ms`` over the sum of every kernel's ``total_ms`` (the shares sum to 1).
    flops : int or None
        Operations of one call (TVM's estimate of the fused TIR; integer operations for int8
        kernels); None when unknown.
    gflops : float or None
        Achieved GFLOP/s (GOP/s for int8 kernels): ``flops * calls / total_ms``.
    peak_fraction : float or None
        ``gflops`` over the target's fp32 (int8: approximate int8) peak; None when either is
        unknown.
    schedule : str
        ``"tuned"``, ``"default rule: <Rule>"``, ``"hand-scheduled"``, ``"unscheduled"``, or
        ``"unknown"`` (a manifest without per-kernel information).
    ops : str
        ``"float"``, ``"int8"``, or ``"unknown"``.
    """

    kernel: str
    calls: int
    total_ms: float
    share: float
    flops: int | None
    gflops: float | None
    peak_fraction: float | None
    schedule: str
    ops: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KernelProfile:
    """The kernels of an artifact, slowest first, and what they were measured against."""

    artifact: str
    target: str
    host_cpu: str
    threads: int
    repeat: int
    warmup: int
    kernel_ms: float
    peak_gflops: float | None
    peak_int8_gops: float | None
    kernels: tuple[KernelTime, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernels"] = [k.to_dict() for k in self.kernels]
        return d


def capabilities(manifest: Mapping[str, Any]) -> Capabilities | None:
    """The artifact target's capabilities: its target string parsed again (as at compile
    time), else the ones the manifest recorded; None when neither can be had."""
    tgt = manifest["target"]
    try:
        return parse_target(str(tgt["target"])).capabilities
    except HwccError as err:
        logger.debug("target %r does not parse here (%s): using the recorded capabilities",
                     tgt.get("target"), err)
    recorded = tgt.get("capabilities")
    if not isinstance(recorded, Mapping):
        return None
    fields = {k: v for k, v in recorded.items() if k in Capabilities.__dataclass_fields__}
    fields["int8_dot"] = tuple(fields.get("int8_dot") or ())
    return Capabilities(**fields)


def peaks(caps: Capabilities | None) -> tuple[float | None, float | None]:
    """(fp32 peak GFLOP/s, approximate int8 peak GOP/s) of ``caps``; None where unknown (see
    the module docstring for the int8 approximation)."""
    if caps is None or caps.peak_gflops <= 0 or caps.vector_bits <= 0:
        return None, None
    scale = max([1.0] + [ops * bits / (2.0 * caps.vector_bits)
                         for ops, bits in (INT8_DOT_OPS[i] for i in caps.int8_dot
                                           if i in INT8_DOT_OPS)])
    return caps.peak_gflops, round(caps.peak_gflops * scale, 1)


def profile_kernels(art: Artifact, inputs: Mapping[str, np.ndarray] | None = None,
                    repeat: int = 20, warmup: int = 3) -> KernelProfile:
    """Time every kernel of ``art`` over ``repeat`` runs on ``inputs`` (seeded random inputs
    when None), after ``warmup`` untimed runs.

    Raises
    ------
    RuntimeInputError
        ``repeat`` below 1, or inputs that do not match the model.
    ArtifactError
        The artifact does not load here (another machine, CPU features this one lacks).
    """
    if repeat < 1:
        raise RuntimeInputError(f"repeat must be at least 1; got {repeat}")
    feeds = dict(inputs) if inputs is not None else art.random_inputs(seed=0)
    for _ in range(max(0, warmup)):
        art.run(feeds)
    runs, calls = _timed_runs(art, feeds, repeat)
    info = art.manifest.get("kernel_info")
    if not isinstance(info, Mapping):
        logger.info("%s: the manifest has no kernel_info (built by an older hwcc): "
                    "schedules unknown, no FLOP counts", art.path)
        info = {}
    peak, peak_int8 = peaks(capabilities(art.manifest))
    totals = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in calls}
    whole = sum(totals.values())
    rows = []
    for name, ms in totals.items():
        meta = info.get(name) or {}
        flops = meta.get("flops")
        ops = str(meta.get("ops", UNKNOWN))
        gflops = flops * calls[name] / (ms * 1e6) if flops is not None and ms > 0 else None
        top = peak_int8 if ops == "int8" else peak
        rows.append(KernelTime(
            kernel=name, calls=calls[name], total_ms=round(ms, 6),
            share=ms / whole if whole > 0 else 0.0,
            flops=None if flops is None else int(flops),
            gflops=None if gflops is None else round(gflops, 3),
            peak_fraction=round(gflops / top, 5) if gflops is not None and top else None,
            schedule=str(meta.get("schedule", UNKNOWN)), ops=ops))
    rows.sort(key=lambda r: (-r.total_ms, r.kernel))
    return KernelProfile(
        artifact=str(art.path), target=art.target, host_cpu=_host_cpu(),
        threads=_threads(), repeat=repeat, warmup=max(0, warmup),
        kernel_ms=round(whole, 6), peak_gflops=peak, peak_int8_gops=peak_int8,
        kernels=tuple(rows))


def _timed_runs(art: Artifact, feeds: Mapping[str, np.ndarray], repeat: int
                ) -> tuple[list[Counter[str]], Counter[str]]:
    """Per run, milliseconds per kernel; and the calls per run of each kernel."""
    runs: list[Counter[str]] = []
    calls: Counter[str] = Counter()
    current: Counter[str] = Counter()
    started = [0.0]

    def on_call(kernel: str, before: bool) -> None:
        now = time.perf_counter()
        if before:
            started[0] = now
        else:
            current[kernel] += (now - started[0]) * 1e3
            calls[kernel] += 1

    art.instrument_kernels(on_call)
    try:
        for _ in range(repeat):
            current.clear()
            art.run(feeds)
            runs.append(Counter(current))
    finally:
        art.instrument_kernels(None)
    return runs, Counter({k: n // repeat for k, n in calls.items()})


def _threads() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", "0") or 0)


def _host_cpu() -> str:
    """LLVM's name of this machine's CPU (``znver3``), for the header of a table."""
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - a label only
        return "unknown"


def short_name(name: str, width: int = 60) -> str:
    """``name`` cut in the middle to ``width`` characters, for tables and charts (fused
    kernel names grow with every op fused in; the JSON keeps them whole)."""
    if len(name) <= width:
        return name
    tail = width // 3
    return f"{name[:width - tail - 3]}...{name[-tail:]}"


def write_chart(profile: KernelProfile, path: str | Path) -> Path:
    """Draw ``profile`` as a horizontal bar chart PNG (matplotlib's Agg canvas, no display):
    milliseconds per kernel, slowest on top, each bar labelled with its share and schedule.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install 'hwcc[bench]'``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    rows = list(profile.kernels)
    colors = {"tuned": "tab:green", "default": "tab:blue", "hand-scheduled": "tab:purple",
              "unscheduled": "tab:red", UNKNOWN: "tab:gray"}
    fig = Figure(figsize=(10, 1.2 + 0.35 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r.total_ms for r in rows],
            color=[colors.get(r.schedule.split(":")[0].replace("default rule", "default"),
                              "tab:gray") for r in rows])
    ax.set_yticks(y, [short_name(r.kernel) for r in rows], fontsize=8)
    for yi, r in zip(y, rows):
        rate = "" if r.gflops is None else \
            f"  {r.gflops:.3g} {'GOP/s' if r.ops == 'int8' else 'GFLOP/s'}"
        ax.text(r.total_ms, yi, f"  {r.share:.1%}{rate}  {r.schedule}", va="center", fontsize=7)
    ax.set_xlabel("ms per run")
    ax.set_xlim(0, 1.6 * max([r.total_ms for r in rows] + [1e-6]))
    # the target string can be long (every -mattr feature): wrapped, on lines of its own
    target = textwrap.fill(profile.target, width=110, break_on_hyphens=False)
    ax.set_title(f"{Path(profile.artifact).name}: {profile.host_cpu}, {profile.threads} "
                 f"threads, {profile.kernel_ms:.3f} ms in kernels\n{target}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path
