"""ARM Linux targets: 64-bit ``aarch64-linux-gnu`` and 32-bit ``armv7a-linux-gnueabihf``."""

from __future__ import annotations

from .base import Capabilities

TRIPLES = {
    "aarch64-linux-gnu": "64-bit ARM Linux (NEON; +dotprod for sdot/udot, +i8mm for smmla)",
    "armv7a-linux-gnueabihf": "32-bit ARMv7-A Linux, hard float (NEON with +neon)",
}
ARCH = {"aarch64-linux-gnu": "aarch64", "armv7a-linux-gnueabihf": "arm"}
CROSS_CC = {
    "aarch64-linux-gnu": "aarch64-linux-gnu-g++",
    "armv7a-linux-gnueabihf": "arm-linux-gnueabihf-g++",
}
DEFAULT_CORES = 4
# LLVM options that make object files link with the Debian toolchain of each triple.
ABI = {"armv7a-linux-gnueabihf": {"mfloat-abi": "hard"}}
KNOWN_FEATURES = ("+neon", "+dotprod", "+i8mm", "+sve", "+sve2", "+fullfp16", "+bf16", "+vfp4")


def capabilities(triple: str, features: tuple[str, ...], cores: int) -> Capabilities:
    """NEON is 128-bit; dot-product extensions add int8 instructions."""
    f = set(features)
    is64 = triple.startswith("aarch64")
    has_neon = is64 or "+neon" in f
    int8: list[str] = []
    if "+dotprod" in f:
        int8.append("sdot")
    if "+i8mm" in f:
        int8.append("smmla")
    return Capabilities(
        vector_bits=128 if has_neon else 0,
        vector_registers=32 if is64 else 16,  # AArch64 V0-V31; ARMv7 NEON Q0-Q15
        int8_dot=tuple(int8),
        cores=cores,
        l1_kb=64 if is64 else 32,
        l2_kb=512 if is64 else 256,
        # 2 NEON FMA pipes x 4 lanes x 2 flops at ~2 GHz on a Cortex-A7x-class core
        peak_gflops=round(cores * (16 if is64 else 8) * 2.0, 1),
        fp16_arith="+fullfp16" in f,
    )
