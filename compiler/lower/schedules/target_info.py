"""What the default CPU schedules need to know about a target: vector width, registers, cores
(read from the target's capabilities, never from its feature strings)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm

from targets import capabilities_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CPUInfo:
    """Vector capabilities of an LLVM CPU target, as the schedule rules use them.

    Attributes
    ----------
    vector_bits : int
        Width of one SIMD register in bits (512 for AVX-512, 256 for AVX2, 128 for NEON/SSE).
    vector_registers : int
        Number of architectural SIMD registers (32 for AVX-512 and AArch64, else 16).
    num_cores : int
        Threads the parallel loops are cut for (``num-cores`` of the target, at least 1).
    """

    vector_bits: int
    vector_registers: int
    num_cores: int

    def lanes(self, dtype_bits: int = 32) -> int:
        """Number of elements of ``dtype_bits`` bits in one vector register."""
        return max(1, self.vector_bits // dtype_bits)


def cpu_info(target: tvm.target.Target) -> CPUInfo:
    """The :class:`CPUInfo` of an LLVM target, from its capabilities
    (:func:`targets.capabilities_of`, the one reader of ``mtriple``/``mattr``).

    512-bit vectors for AVX-512, 256-bit for AVX/AVX2, 128-bit otherwise (NEON, SSE, RISC-V V
    at VLEN 128; also targets without SIMD, whose 4-lane loops LLVM scalarizes); registers
    and cores as the capabilities say.
    """
    caps = capabilities_of(target)
    return CPUInfo(vector_bits=caps.vector_bits or 128, vector_registers=caps.vector_registers,
                   num_cores=max(1, caps.cores))


def is_cpu_target(target: tvm.target.Target | None) -> bool:
    """Whether the rules of this package apply to ``target`` (an LLVM CPU target)."""
    return target is not None and target.kind.name == "llvm"
