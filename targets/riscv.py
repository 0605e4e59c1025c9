"""RISC-V 64-bit Linux targets (``riscv64-linux-gnu``), RVV with ``+v``."""

from __future__ import annotations

from .base import Capabilities

TRIPLES = {"riscv64-linux-gnu": "64-bit RISC-V Linux (RV64GC; +v for the vector extension)"}
ARCH = "riscv64"
CROSS_CC = "riscv64-linux-gnu-g++"
DEFAULT_CORES = 4
KNOWN_FEATURES = ("+m", "+a", "+f", "+d", "+c", "+v", "+zvfh")
# Debian's riscv64 toolchain is RV64GC, lp64d: objects must use the double-float ABI.
ABI = {"mabi": "lp64d"}


def capabilities(features: tuple[str, ...], cores: int) -> Capabilities:
    has_v = "+v" in features
    return Capabilities(
        vector_bits=128 if has_v else 0,  # VLEN >= 128 assumed
        vector_registers=32,
        cores=cores,
        peak_gflops=round(cores * (8 if has_v else 2) * 1.5, 1),
    )
