"""Capabilities of a TVM target object, for code that holds a ``tvm.target.Target`` rather
than a :class:`~targets.base.Target` (the schedule rules, which TVM calls with its own target).

This module and the families are the only readers of ``mtriple`` / ``mattr`` strings: the
family is chosen from the triple (or, without one, from x86 feature names) and its
``capabilities`` function decides, so one target is described once.
"""

from __future__ import annotations

import functools
from typing import Any

from . import arm, riscv, x86
from .base import Capabilities, effective_features
from .errors import TargetError

#: an LLVM target with no triple and no x86 feature: 128-bit vectors, 32 registers
GENERIC = Capabilities(vector_bits=128, vector_registers=32)

_X86_PREFIXES = ("x86_64", "i686", "i386")
_X86_FEATURES = {"+avx", "+avx2", "+avx512f", "+sse4.2"}


def _attr_list(tvm_target: Any, key: str) -> tuple[str, ...]:
    value = tvm_target.attrs.get(key, None)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    return tuple(str(v).strip() for v in value)


#: Known ``-mattr`` features per triple architecture (what ``-mcpu`` can imply for us).
_KNOWN = {"x86_64": x86.KNOWN_FEATURES, "aarch64": arm.KNOWN_FEATURES,
          "arm64": arm.KNOWN_FEATURES, "armv7a": arm.KNOWN_FEATURES,
          "riscv64": riscv.KNOWN_FEATURES}


@functools.lru_cache(maxsize=64)
def implied_features(triple: str, cpu: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """The features of ``known`` that LLVM's ``-mcpu=cpu`` implies for ``triple``.

    An unknown CPU name is an error here, listing LLVM's (LLVM would only warn and build for
    a generic CPU).
    """
    import tvm
    from tvm.target import codegen

    cpus = sorted(str(c) for c in codegen.llvm_get_cpu_archlist(
        tvm.target.Target({"kind": "llvm", "mtriple": triple})))
    if cpus and cpu not in cpus:
        raise TargetError(f"unknown -mcpu '{cpu}' for {triple}; LLVM knows: {', '.join(cpus)}")
    implied = {str(f) for f in codegen.llvm_get_cpu_features(
        tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu}))}
    return tuple(f for f in known if f[1:] in implied)


def capabilities_of(tvm_target: Any) -> Capabilities:
    """The :class:`Capabilities` of an ``llvm`` TVM target, from its ``mtriple``, ``mcpu``
    (the features it implies), ``mattr`` and ``num-cores`` (read here and nowhere else).

    x86 triples (or no triple with x86 features) go to :func:`targets.x86.capabilities`,
    ``aarch64``/``arm64``/``arm``/``thumb`` to :func:`targets.arm.capabilities`, ``riscv`` to
    :func:`targets.riscv.capabilities`; anything else is :data:`GENERIC` with its cores.
    """
    features = _attr_list(tvm_target, "mattr")
    triple = str(tvm_target.attrs.get("mtriple", "") or "")
    cores = max(1, int(tvm_target.attrs.get("num-cores", 1) or 1))
    cpu = str(tvm_target.attrs.get("mcpu", "") or "")
    if cpu and triple:  # -mcpu=skylake-avx512 alone means AVX-512: its features count too
        known = _KNOWN.get(triple.split("-", 1)[0], ())
        try:
            features = effective_features(implied_features(triple, cpu, known), features)
        except TargetError:
            pass  # a CPU LLVM does not know: its -mattr alone
    if triple.startswith(_X86_PREFIXES) or (not triple and _X86_FEATURES & set(features)):
        return x86.capabilities(features, cores)
    if triple.startswith(("aarch64", "arm64")):
        return arm.capabilities("aarch64-linux-gnu", features, cores)
    if triple.startswith(("arm", "thumb")):
        return arm.capabilities("armv7a-linux-gnueabihf", features, cores)
    if triple.startswith("riscv"):
        return riscv.capabilities(features, cores)
    return Capabilities(vector_bits=GENERIC.vector_bits,
                        vector_registers=GENERIC.vector_registers, cores=cores)
