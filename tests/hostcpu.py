"""Which CPU features this machine has, and the targets tests compile for and run on.

The suite must hold on any x86-64 host with AVX2 (and aarch64 hosts where TVM runs). A module
built with features the host lacks dies with SIGILL inside the process (no exception, nothing
to catch), so a test that *executes* code uses a target this machine runs:

- :func:`runnable` / :func:`missing` say whether a target's code runs here (same architecture,
  every feature present; features come from :func:`targets.missing_features`, i.e. what both
  ``/proc/cpuinfo`` and LLVM's ``cpuid`` agree on — under ``qemu-x86_64-static -cpu Haswell``
  the emulated Haswell's);
- :func:`host_tvm_target` is the widest x86 target this machine runs (AVX-512 when present,
  else AVX2; NEON on aarch64), and :func:`execution_target` maps a target to itself when it
  runs here, else to the host's (same cores), for tests whose numerics hold on any target;
- :func:`require_runnable` skips the *execute step* of a target this machine cannot run,
  naming the missing features. Never use it to hide a failure: compile and inspect (TIR,
  assembly) first, then call it right before running.

:data:`AVX512`, :data:`AVX512_VNNI`, :data:`AVX2` and :data:`AARCH64` are fixed TVM targets for
compile-and-inspect tests: what they schedule and emit does not depend on the host.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import tvm

import targets
from targets import host_arch, host_features, missing_features

__all__ = [
    "AARCH64",
    "AVX2",
    "AVX2_FEATURES",
    "AVX512",
    "AVX512_FEATURES",
    "AVX512_VNNI",
    "AVX512_VNNI_FEATURES",
    "describe",
    "execution_target",
    "host_arch",
    "host_features",
    "host_target",
    "host_tvm_target",
    "lanes",
    "missing",
    "require_runnable",
    "runnable",
    "tvm_target",
]

AVX2_FEATURES = ("+avx2", "+fma")
AVX512_FEATURES = ("+avx2", "+fma", "+avx512f")
AVX512_VNNI_FEATURES = AVX512_FEATURES + ("+avx512bw", "+avx512vl", "+avx512vnni")
NEON_FEATURES = ("+neon",)


def tvm_target(features: tuple[str, ...] = (), num_cores: int = 2,
               triple: str = "x86_64-linux-gnu") -> tvm.target.Target:
    """An LLVM CPU target as TVM 0.27 wants it (a dict; ``mattr`` a list)."""
    spec: dict[str, Any] = {"kind": "llvm", "mtriple": triple, "num-cores": num_cores}
    if features:
        spec["mattr"] = list(features)
    return tvm.target.Target(spec)


#: 512-bit vectors (16 float lanes), 32 registers: compile and inspect; run only if runnable.
AVX512 = tvm_target(AVX512_FEATURES)
#: AVX-512 with VNNI (int8 ``vpdpbusd``).
AVX512_VNNI = tvm_target(AVX512_VNNI_FEATURES)
#: 256-bit vectors (8 float lanes), 16 registers: what every x86-64 host of the suite runs.
AVX2 = tvm_target(AVX2_FEATURES)
#: 128-bit NEON, 4 cores: compile only (cross).
AARCH64 = tvm_target(NEON_FEATURES, num_cores=4, triple="aarch64-linux-gnu")


def _arch_of_triple(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


# instruction-set extensions among the features an ``-mcpu`` implies (LLVM also lists tuning
# flags such as ``slow-3ops-lea``, which no CPU "has")
_ISA_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx", "neon", "sve", "dotprod", "i8mm",
                 "bf16", "fullfp16")


def _tvm_features(target: tvm.target.Target) -> tuple[str, ...]:
    """``+feature`` list a TVM LLVM target compiles for: its ``-mattr`` plus the instruction-set
    extensions its ``-mcpu`` implies."""
    attrs = target.attrs
    feats = [str(f) for f in (attrs.get("mattr") or [])]
    cpu = attrs.get("mcpu")
    if cpu:
        from tvm.target import codegen

        spec = {"kind": "llvm", "mcpu": str(cpu)}
        if attrs.get("mtriple"):
            spec["mtriple"] = str(attrs.get("mtriple"))
        feats += ["+" + str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(spec))
                  if str(f).startswith(_ISA_PREFIXES)]
    return tuple(feats)


def missing(target: Any) -> tuple[str, ...]:
    """Why this machine cannot run ``target``'s code: the missing CPU features (``avx512f``),
    or the target's architecture / kind when it is not this machine's; ``()`` if it runs.

    ``target`` is a :class:`tvm.target.Target`, a :class:`targets.Target` or a target string
    hwcc parses (``"x86_64-linux-gnu -mattr=+avx2,+fma"``)."""
    if isinstance(target, str):
        target = targets.parse_target(target)
    if isinstance(target, targets.Target):
        if target.kind == "cuda":
            return ("a CUDA GPU in this process",)
        if target.kind == "llvm" and target.arch != host_arch():
            return (f"the {target.arch} architecture",)
        return target.missing_host_features()
    kind = target.kind.name
    if kind == "c":
        return ()
    if kind != "llvm":
        return (f"a {kind} device in this process",)
    triple = target.attrs.get("mtriple")
    arch = _arch_of_triple(str(triple)) if triple else host_arch()
    if arch != host_arch():
        return (f"the {arch} architecture",)
    return missing_features(_tvm_features(target))


def runnable(target: Any) -> bool:
    """Whether code built for ``target`` can be loaded and run in this process."""
    return not missing(target)


def require_runnable(target: Any) -> None:
    """Skip the rest of the test (its execute step) when this machine cannot run ``target``.

    Call it after everything that can be checked without running (building, TIR, assembly),
    right before loading or running the module."""
    lacks = missing(target)
    if lacks:
        pytest.skip(f"this {host_arch()} machine cannot run code for {describe(target)} (it "
                    f"lacks {', '.join(lacks)}): compiled and inspected here, not run")


def describe(target: Any) -> str:
    """A short name of a target: hwcc's spelling (``x86_64-linux-gnu -mattr=+avx2,+fma``)."""
    if isinstance(target, (str, targets.Target)):
        return str(target)
    attrs = target.attrs
    if target.kind.name != "llvm":
        return target.kind.name
    parts = [str(attrs.get("mtriple") or "llvm")]
    if attrs.get("mcpu"):
        parts.append(f"-mcpu={attrs.get('mcpu')}")
    if attrs.get("mattr"):
        parts.append("-mattr=" + ",".join(str(f) for f in attrs.get("mattr")))
    return " ".join(parts)


@functools.cache
def host_tvm_target(num_cores: int = 2) -> tvm.target.Target:
    """The widest target this machine runs, for executing tests: AVX-512 (:data:`AVX512`'s
    features) when present, else AVX2 + FMA, else the x86-64 baseline; NEON on aarch64; LLVM's
    default for the host on anything else. Its features are a fixed set, not every feature the
    host has, so the same host class always gets the same code."""
    arch = host_arch()
    if arch == "x86_64":
        for feats in (AVX512_FEATURES, AVX2_FEATURES, ()):
            if not missing_features(feats):
                return tvm_target(feats, num_cores)
    if arch == "aarch64" and not missing_features(NEON_FEATURES):
        return tvm_target(NEON_FEATURES, num_cores, "aarch64-linux-gnu")
    return tvm.target.Target({"kind": "llvm", "num-cores": num_cores})


def host_target(cores: int = 2) -> targets.Target:
    """:func:`host_tvm_target` as hwcc's :class:`targets.Target` (for ``lower.build``)."""
    t = host_tvm_target(cores)
    triple = t.attrs.get("mtriple")
    if not triple or _arch_of_triple(str(triple)) != host_arch():
        return targets.parse_target(f"host -cores={cores}")
    feats = [str(f) for f in (t.attrs.get("mattr") or [])]
    spec = str(triple) + (" -mattr=" + ",".join(feats) if feats else "")
    return targets.parse_target(f"{spec} -cores={cores}")


def _cores(target: Any) -> int:
    if isinstance(target, targets.Target):
        return target.cores
    return int(target.attrs.get("num-cores") or 1)


def execution_target(target: Any) -> Any:
    """``target`` itself when this machine runs its code, else :func:`host_target` /
    :func:`host_tvm_target` (same type, same cores): where a test runs what it also compiles
    (and inspects) for ``target``."""
    if runnable(target):
        return target
    if isinstance(target, (str, targets.Target)):
        return host_target(_cores(targets.parse_target(target)))
    return host_tvm_target(_cores(target))


def lanes(target: Any, bits: int = 32) -> int:
    """Vector lanes of ``bits``-wide elements on ``target`` (16 float lanes on AVX-512, 8 on
    AVX2, 4 on NEON), as the default schedules see it."""
    from compiler.lower.schedules.target_info import cpu_info

    if isinstance(target, (str, targets.Target)):
        target = targets.parse_target(target).tvm_target()
    return cpu_info(target).lanes(bits)
