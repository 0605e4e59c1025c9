"""What the default CPU schedules need to know about a target: vector width, registers, cores."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm

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


def _attr_list(target: tvm.target.Target, key: str) -> list[str]:
    value = target.attrs.get(key, None)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def cpu_info(target: tvm.target.Target) -> CPUInfo:
    """Derive :class:`CPUInfo` from an LLVM target's ``mtriple``, ``mattr`` and ``num-cores``.

    Parameters
    ----------
    target : tvm.target.Target
        An ``llvm`` target.

    Returns
    -------
    CPUInfo
        512-bit vectors when ``+avx512f`` is in ``mattr``, 256-bit for ``+avx``/``+avx2``,
        128-bit otherwise (NEON, SSE, RISC-V V at VLEN 128); 32 vector registers for AVX-512,
        AArch64 and RISC-V, 16 for AVX2/SSE and 32-bit ARM.
    """
    mattr = {a.strip() for a in _attr_list(target, "mattr")}
    triple = str(target.attrs.get("mtriple", "") or "")
    is_x86 = triple.startswith(("x86_64", "i686", "i386")) or any(
        a in mattr for a in ("+avx", "+avx2", "+avx512f", "+sse4.2")
    )
    if "+avx512f" in mattr:
        bits, regs = 512, 32
    elif "+avx2" in mattr or "+avx" in mattr:
        bits, regs = 256, 16
    elif triple.startswith(("aarch64", "arm64")):
        bits, regs = 128, 32
    elif triple.startswith(("arm", "thumb")) or is_x86:
        bits, regs = 128, 16  # 32-bit ARM NEON has 16 Q registers; SSE has 16 XMM
    else:
        bits, regs = 128, 32  # RISC-V V (VLEN >= 128 assumed) and others
    cores = int(target.attrs.get("num-cores", 1) or 1)
    return CPUInfo(vector_bits=bits, vector_registers=regs, num_cores=max(1, cores))


def is_cpu_target(target: tvm.target.Target | None) -> bool:
    """Whether the rules of this package apply to ``target`` (an LLVM CPU target)."""
    return target is not None and target.kind.name == "llvm"
