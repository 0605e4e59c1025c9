"""The target description shared by every target family.

A :class:`Target` is what a user names with a triple (``aarch64-linux-gnu -mcpu=cortex-a76
-mattr=+neon,+dotprod``). It prints back the same canonical string it was parsed from, knows
the TVM target dict it becomes, the compiler that links its modules, and a
:class:`Capabilities` record that passes, tuning and search read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .host import host_arch, missing_features


@dataclass(frozen=True)
class Capabilities:
    """What a device can do, as data (tinygrad-style), read by passes, tuning and search.

    Attributes
    ----------
    vector_bits : int
        Width of the widest SIMD register the target uses for fp32 (0 for none).
    vector_registers : int
        Architectural SIMD registers (32 for AVX-512, AArch64 and RISC-V V; 16 for SSE/AVX2
        and 32-bit ARM): how many accumulators a register tile may hold.
    int8_dot : tuple of str
        Integer dot-product instructions available: ``"vpdpbusd"`` (AVX-512 VNNI on 512-bit
        vectors, with AVX-512 F and BW), ``"vpdpbusd256"`` (AVX-VNNI, 256-bit),
        ``"vpmaddubsw"`` (AVX2 pair ``vpmaddubsw``/``vpmaddwd``, saturating int16 sums),
        ``"vpmaddubsw512"`` (the same on AVX-512 BW), ``"sdot"``,
        ``"smmla"`` (ARM), ``"mac8x8"``-like MAC arrays. Empty when int8 kernels fall back
        to widening arithmetic.
    cores : int
        Cores the compiled module may use (the TVM target's ``num-cores``).
    has_float : bool
        Whether the device computes in floating point at all (False for the embedded target).
    l1_kb, l2_kb : int
        Data cache sizes per core, in KiB (0 when unknown).
    peak_gflops : float
        Estimated fp32 peak throughput of all cores, GFLOP/s (0 when unknown).
    scratchpad_kb : int
        On-chip scratchpad of an accelerator-like target (0 for caches-only CPUs).
    fp16_arith : bool
        Whether the device computes in fp16 natively (AVX-512 FP16, ARMv8.2 ``+fullfp16``,
        CUDA sm_53+). Without it fp16 weights only save memory: every operation converts to
        fp32 and back, and an fp16 model runs slower than the fp32 one.
    """

    vector_bits: int = 128
    vector_registers: int = 16
    int8_dot: tuple[str, ...] = ()
    cores: int = 1
    has_float: bool = True
    l1_kb: int = 32
    l2_kb: int = 512
    peak_gflops: float = 0.0
    scratchpad_kb: int = 0
    fp16_arith: bool = False

    @property
    def fp32_lanes(self) -> int:
        """fp32 elements per vector register (at least 1)."""
        return max(1, self.vector_bits // 32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector_bits": self.vector_bits,
            "vector_registers": self.vector_registers,
            "int8_dot": list(self.int8_dot),
            "cores": self.cores,
            "has_float": self.has_float,
            "l1_kb": self.l1_kb,
            "l2_kb": self.l2_kb,
            "peak_gflops": self.peak_gflops,
            "scratchpad_kb": self.scratchpad_kb,
            "fp16_arith": self.fp16_arith,
        }


def effective_features(implied: tuple[str, ...], features: tuple[str, ...]) -> tuple[str, ...]:
    """``implied`` (``+f`` from ``-mcpu``) with ``features`` (``-mattr``: ``+f`` adds, ``-f``
    removes) applied, in order, each once."""
    out = list(implied)
    for feat in features:
        name = feat[1:]
        out = [f for f in out if f[1:] != name]
        if feat.startswith("+"):
            out.append(feat)
    return tuple(out)


@dataclass(frozen=True)
class Target:
    """A compilation target named by a triple, optionally with a CPU, features and GPU arch.

    Build one with :func:`targets.parse_target`; ``str(target)`` is the canonical spelling and
    ``parse_target(str(target)) == target``.
    """

    triple: str
    family: str
    arch: str
    cpu: str | None = None
    features: tuple[str, ...] = ()
    gpu_arch: str | None = None
    cores: int = 1
    explicit_cores: bool = False
    kind: str = "llvm"
    cross_cc: str | None = None
    description: str = ""
    abi: dict = field(default_factory=dict, compare=False, hash=False)
    capabilities: Capabilities = field(default_factory=Capabilities, compare=False)
    #: Features of the family that ``-mcpu`` implies (LLVM's view of that CPU), before
    #: ``-mattr`` adds or removes any; ``()`` without ``-mcpu``.
    implied_features: tuple[str, ...] = field(default=(), compare=False)
    #: The embedded target's accelerator (:class:`targets.embedded.Accelerator`); None else.
    accelerator: Any = None

    @property
    def cpu_features(self) -> tuple[str, ...]:
        """Every ``+feature`` the generated code may use: those ``-mcpu`` implies, with
        ``-mattr``'s additions and removals applied (what capabilities, the host check and
        the manifest's ``cpu_features`` are made from)."""
        return effective_features(self.implied_features, self.features)

    def __str__(self) -> str:
        parts = [self.triple]
        if self.cpu:
            parts.append(f"-mcpu={self.cpu}")
        if self.features:
            parts.append("-mattr=" + ",".join(self.features))
        if self.gpu_arch:
            parts.append(f"-arch={self.gpu_arch}")
        if self.explicit_cores:
            parts.append(f"-cores={self.cores}")
        if self.accelerator is not None:
            parts.extend(f"{k}={v}" for k, v in self.accelerator.options)
        return " ".join(parts)

    # -- TVM ------------------------------------------------------------------------------
    def tvm_target_dict(self) -> dict[str, Any]:
        """The TVM target as a JSON-style dict (TVM 0.27 rejects target strings)."""
        if self.kind == "cuda":
            return {
                "kind": "cuda",
                "arch": self.gpu_arch or "sm_80",
                "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": self.cores},
            }
        if self.kind == "c":
            return {"kind": "c"}
        d: dict[str, Any] = {"kind": "llvm", "mtriple": self.triple, "num-cores": self.cores}
        if self.cpu:
            d["mcpu"] = self.cpu
        if self.features:
            d["mattr"] = list(self.features)
        d.update(self.abi)
        return d

    def tvm_target(self) -> Any:
        """The :class:`tvm.target.Target` object for this target."""
        import tvm

        return tvm.target.Target(self.tvm_target_dict())

    # -- where it runs --------------------------------------------------------------------
    @property
    def machine(self) -> str:
        """The ELF machine / ``uname -m`` name of code built for this target."""
        return host_arch() if self.kind == "c" else self.arch

    def missing_host_features(self) -> tuple[str, ...]:
        """CPU features this target's code uses that this machine lacks (``()`` for targets
        of another architecture, CUDA and C: those never run in this process)."""
        if self.kind != "llvm" or self.arch != host_arch():
            return ()
        return missing_features(self.cpu_features)

    def runs_on_this_machine(self) -> bool:
        """Whether a module built for this target can be loaded and run in this process: the
        same architecture, and every CPU feature it was built for present here."""
        if self.kind == "cuda":
            return False
        if self.kind == "c":  # generated C, compiled by the host compiler: a functional model
            return True
        return self.arch == host_arch() and not self.missing_host_features()

    @property
    def library_suffix(self) -> str:
        return ".so"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": str(self),
            "triple": self.triple,
            "family": self.family,
            "arch": self.arch,
            "cpu": self.cpu,
            "features": list(self.features),
            "gpu_arch": self.gpu_arch,
            "cores": self.cores,
            "compiler": self.cross_cc or "host cc",
            "capabilities": self.capabilities.to_dict(),
            **({"accelerator": self.accelerator.to_dict()} if self.accelerator else {}),
        }


