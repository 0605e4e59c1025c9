"""Detect this machine's CPU and turn it into a concrete target (``--target host``), and say
which CPU features a module needs that this machine lacks.

Features are what both the kernel (``/proc/cpuinfo`` flags) and LLVM's view of the CPU
(``cpuid``, through TVM's ``llvm_get_system_cpu``) agree on: under ``qemu-x86_64-static -cpu
Haswell`` the first is the real machine's and the second the emulated one's, and a module must
not use what either lacks (a missing instruction kills the process with SIGILL).
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable
from pathlib import Path

# /proc/cpuinfo flag -> LLVM feature, for the features that change code generation.
_X86_FLAGS = {
    "sse4_2": "+sse4.2", "avx": "+avx", "avx2": "+avx2", "fma": "+fma", "f16c": "+f16c",
    "avx512f": "+avx512f", "avx512bw": "+avx512bw", "avx512dq": "+avx512dq",
    "avx512vl": "+avx512vl", "avx512_vnni": "+avx512vnni", "avx_vnni": "+avxvnni",
    "avx512_bf16": "+avx512bf16", "avx512_fp16": "+avx512fp16", "amx_int8": "+amx-int8",
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


def host_arch() -> str:
    """``uname -m`` of this machine, normalised (``arm64`` -> ``aarch64``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _cpuinfo_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def _llvm_features() -> frozenset[str] | None:
    """LLVM's features of the CPU it detects (``cpuid``), or None when TVM cannot say."""
    try:
        import tvm
        from tvm.target import codegen

        cpu = codegen.llvm_get_system_cpu()
        return frozenset(str(f) for f in codegen.llvm_get_cpu_features(
            tvm.target.Target({"kind": "llvm", "mcpu": cpu})))
    except Exception:  # noqa: BLE001 - no TVM / no LLVM: the kernel's flags alone decide
        return None


@functools.lru_cache(maxsize=1)
def host_features() -> tuple[str, ...]:
    """LLVM ``-mattr`` features of this CPU that both the kernel and LLVM report, in a stable
    order (see the module doc)."""
    flags, llvm = _cpuinfo_flags(), _llvm_features()
    table = _X86_FLAGS if host_arch() == "x86_64" else _ARM_FLAGS
    if not flags and llvm is None:
        return ()
    return tuple(feat for flag, feat in table.items()
                 if (not flags or flag in flags) and (llvm is None or feat[1:] in llvm))


def missing_features(features: Iterable[str]) -> tuple[str, ...]:
    """The features of ``features`` (``+name``; ``-name`` asks for nothing) that this machine
    lacks, without the ``+``, in the order given. Only meaningful for this machine's arch."""
    have = set(host_features())
    known = set(_X86_FLAGS.values() if host_arch() == "x86_64" else _ARM_FLAGS.values())
    llvm = _llvm_features()
    missing = []
    for feat in features:
        if not feat.startswith("+") or feat in have:
            continue
        # a feature outside the table: LLVM's view of the CPU decides (missing if unknown)
        if feat not in known and llvm is not None and feat[1:] in llvm:
            continue
        missing.append(feat[1:])
    return tuple(missing)


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
