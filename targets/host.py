"""Detect this machine's CPU and turn it into a concrete target (``--target host``)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import host_arch

# /proc/cpuinfo flag -> LLVM feature, for the features that change code generation.
_X86_FLAGS = {
    "sse4_2": "+sse4.2", "avx": "+avx", "avx2": "+avx2", "fma": "+fma", "f16c": "+f16c",
    "avx512f": "+avx512f", "avx512bw": "+avx512bw", "avx512dq": "+avx512dq",
    "avx512vl": "+avx512vl", "avx512_vnni": "+avx512vnni", "avx_vnni": "+avxvnni",
    "avx512_bf16": "+avx512bf16",
}
_ARM_FLAGS = {"asimd": "+neon", "asimddp": "+dotprod", "i8mm": "+i8mm", "sve": "+sve",
              "sve2": "+sve2", "asimdhp": "+fullfp16", "bf16": "+bf16"}
_TRIPLE_BY_ARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
                   "riscv64": "riscv64-linux-gnu"}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def host_triple() -> str | None:
    return _TRIPLE_BY_ARCH.get(host_arch())


def host_features() -> tuple[str, ...]:
    """LLVM ``-mattr`` features of this CPU, in a stable order."""
    info = _cpuinfo()
    flags: set[str] = set()
    for line in info.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
            break
    table = _X86_FLAGS if host_arch() == "x86_64" else _ARM_FLAGS
    return tuple(feat for flag, feat in table.items() if flag in flags)


def host_cores() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_clock_ghz() -> float:
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("cpu mhz"):
            try:
                return float(line.split(":", 1)[1]) / 1000.0
            except ValueError:
                break
    return 2.5
