"""Parse target strings into :class:`~targets.base.Target` objects, dispatching by family.

Syntax: ``TRIPLE [-mcpu=CPU] [-mattr=+f1,+f2] [-arch=sm_XX] [-cores=N]``, and for ``embedded``
``-mac=RxC -spad=KiB -acc=KiB -dma=N -ram=KiB`` (:mod:`targets.embedded`). ``host`` stands for
this machine's triple with its detected features; ``cuda`` for ``nvptx64-nvidia-cuda``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from targets.errors import TargetError

from . import arm, cuda, embedded, host, riscv, x86
from .base import Target, effective_features
from .host import host_arch
from .tvm_target import implied_features


def _llvm_cpu(triple: str, cpu, features, gpu_arch, cores, family, arch, cross_cc, desc, caps,
              abi=None):
    cross = None if arch == host_arch() else cross_cc
    return Target(triple=triple, family=family, arch=arch, cpu=cpu, features=features,
                  gpu_arch=None, cores=cores, kind="llvm", cross_cc=cross, description=desc,
                  capabilities=caps, abi=dict(abi or {}))


def _make_x86(triple, cpu, features, gpu_arch, cores):
    clock = host.host_clock_ghz() if host_arch() == "x86_64" else 2.5
    caps = x86.capabilities(features, cores, clock)
    return _llvm_cpu(triple, cpu, features, gpu_arch, cores, "x86", x86.ARCH, x86.CROSS_CC,
                     x86.TRIPLES[triple], caps)


def _make_arm(triple, cpu, features, gpu_arch, cores):
    caps = arm.capabilities(triple, features, cores)
    return _llvm_cpu(triple, cpu, features, gpu_arch, cores, "arm", arm.ARCH[triple],
                     arm.CROSS_CC[triple], arm.TRIPLES[triple], caps, arm.ABI.get(triple))


def _make_riscv(triple, cpu, features, gpu_arch, cores):
    caps = riscv.capabilities(features, cores)
    return _llvm_cpu(triple, cpu, features, gpu_arch, cores, "riscv", riscv.ARCH,
                     riscv.CROSS_CC, riscv.TRIPLES[triple], caps, riscv.ABI)


def _make_cuda(triple, cpu, features, gpu_arch, cores):
    arch = gpu_arch or cuda.DEFAULT_ARCH
    if not cuda.valid_arch(arch):
        raise TargetError(f"invalid CUDA arch '{arch}'; expected sm_XX such as sm_80 or sm_90")
    return Target(triple=triple, family="cuda", arch=cuda.ARCH, gpu_arch=gpu_arch, cores=cores,
                  kind="cuda", description=cuda.TRIPLES[triple],
                  capabilities=cuda.capabilities(arch))


def _make_embedded(triple, cpu, features, gpu_arch, cores, accelerator=None):
    accelerator = accelerator or embedded.Accelerator()
    return Target(triple=triple, family="embedded", arch=embedded.ARCH, cores=cores, kind="c",
                  description=embedded.TRIPLES[triple], accelerator=accelerator,
                  capabilities=embedded.capabilities(cores, accelerator))


# family name -> (triples with descriptions, known features, default cores, constructor)
FAMILIES: dict[str, tuple[dict[str, str], tuple[str, ...], int, Callable[..., Target]]] = {
    "x86": (x86.TRIPLES, x86.KNOWN_FEATURES, x86.DEFAULT_CORES, _make_x86),
    "arm": (arm.TRIPLES, arm.KNOWN_FEATURES, arm.DEFAULT_CORES, _make_arm),
    "riscv": (riscv.TRIPLES, riscv.KNOWN_FEATURES, riscv.DEFAULT_CORES, _make_riscv),
    "cuda": (cuda.TRIPLES, cuda.KNOWN_FEATURES, 1, _make_cuda),
    "embedded": (embedded.TRIPLES, embedded.KNOWN_FEATURES, embedded.DEFAULT_CORES,
                 _make_embedded),
}
_ALIASES = dict(cuda.ALIASES)


def _family_of(triple: str) -> str | None:
    for name, (triples, *_rest) in FAMILIES.items():
        if triple in triples:
            return name
    return None


def known_triples() -> list[str]:
    """Every triple hwcc knows, plus the ``host`` and ``cuda`` shorthands."""
    names = [t for triples, *_ in FAMILIES.values() for t in triples]
    return names + ["host"] + sorted(_ALIASES)


def parse_target(spec: str | Target) -> Target:
    """Parse ``TRIPLE [-mcpu=CPU] [-mattr=+a,+b] [-arch=sm_XX] [-cores=N]`` into a Target.

    Raises
    ------
    TargetError
        For an unknown triple (the message lists the known ones), an unknown option or
        feature, or a malformed value. The message quotes the input.
    """
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"empty target; known: {', '.join(known_triples())}")
    tokens = spec.split()
    name, opts = tokens[0], tokens[1:]
    cpu: str | None = None
    features: list[str] = []
    gpu_arch: str | None = None
    cores: int | None = None
    accel_opts: list[tuple[str, str]] = []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not value:
            raise TargetError(f"malformed target option '{opt}' in '{spec}'; "
                              "expected -mcpu=CPU, -mattr=+f1,+f2, -arch=sm_XX or -cores=N")
        if key == "-mcpu":
            cpu = value
        elif key == "-mattr":
            features.extend(f for f in value.split(",") if f)
        elif key == "-arch":
            gpu_arch = value
        elif key == "-cores":
            if not value.isdigit() or int(value) < 1:
                raise TargetError(f"-cores must be a positive integer; got '{value}' in '{spec}'")
            cores = int(value)
        elif key in embedded.OPTIONS:
            accel_opts.append((key, value))
        else:
            raise TargetError(f"unknown target option '{key}' in '{spec}'; "
                              "known: -mcpu, -mattr, -arch, -cores, and for embedded "
                              + ", ".join(f"{k}={v}" for k, v in embedded.OPTIONS.items()))
    if name == "host":
        triple = host.host_triple()
        if triple is None:
            raise TargetError(f"cannot map this machine ('{host_arch()}') to a known triple")
        for feat in host.host_features():
            if feat not in features:
                features.append(feat)
        if cores is None:
            cores = host.host_cores()
    else:
        triple = _ALIASES.get(name, name)
    family = _family_of(triple)
    if family is None:
        raise TargetError(f"unknown target triple '{name}'; known: {', '.join(known_triples())}")
    _triples, known_features, default_cores, make = FAMILIES[family]
    for feat in features:
        if feat[:1] not in "+-" or ("+" + feat[1:]) not in known_features:
            raise TargetError(
                f"unknown feature '{feat}' for {triple}; known: "
                f"{', '.join(known_features) or '(none)'}")
    if gpu_arch is not None and family != "cuda":
        raise TargetError(f"-arch applies to CUDA targets only; got '{spec}'")
    if accel_opts and family != "embedded":
        raise TargetError(f"{accel_opts[0][0]} applies to the embedded target only; "
                          f"got '{spec}'")
    if family == "embedded":
        if cpu is not None:
            raise TargetError(f"-mcpu applies to CPU targets only; the embedded target is "
                              f"described by -mac, -spad, -acc, -dma, -ram; got '{spec}'")
        target = _make_embedded(triple, cpu, tuple(features), gpu_arch, cores or 1,
                                embedded.parse_accelerator(accel_opts, spec))
        return dataclasses.replace(target, explicit_cores=cores is not None)
    explicit_cores = cores is not None and name != "host"
    if cores is None:
        cores = host.host_cores() if family in ("x86", "arm", "riscv") and \
            FAMILIES[family][0].get(triple) and _native(triple) else default_cores
    implied = implied_features(triple, cpu, known_features) if cpu else ()
    # capabilities (vector width, int8 instructions) from everything the code may use
    target = make(triple, cpu, effective_features(implied, tuple(features)), gpu_arch, cores)
    return dataclasses.replace(target, features=tuple(features), implied_features=implied,
                               explicit_cores=explicit_cores)


def _native(triple: str) -> bool:
    return host.host_triple() == triple


def target_table() -> list[dict[str, str]]:
    """One row per known triple: name, family, description, whether it runs here."""
    rows = []
    for family, (triples, features, _cores, _make) in FAMILIES.items():
        for triple, desc in triples.items():
            t = parse_target(triple)
            rows.append({
                "triple": triple,
                "family": family,
                "runs_here": "yes" if t.runs_on_this_machine() else "no",
                "compiler": t.cross_cc or ("nvcc/NVRTC" if family == "cuda" else "host cc"),
                "features": " ".join(features) or "-",
                "description": desc,
            })
    return rows
