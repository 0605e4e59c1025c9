"""x86-64 Linux targets (``x86_64-linux-gnu``): LLVM code generation, host or cross g++."""

from __future__ import annotations

from .base import Capabilities

TRIPLES = {"x86_64-linux-gnu": "x86-64 Linux (SSE2 baseline; add -mattr=+avx2,+fma or +avx512f)"}
ARCH = "x86_64"
CROSS_CC = "x86_64-linux-gnu-g++"
DEFAULT_CORES = 4
KNOWN_FEATURES = (
    "+sse4.2", "+avx", "+avx2", "+fma", "+f16c", "+avx512f", "+avx512bw", "+avx512dq",
    "+avx512vl", "+avx512vnni", "+avxvnni", "+avx512bf16", "+avx512fp16", "+amx-int8",
)


def capabilities(features: tuple[str, ...], cores: int, clock_ghz: float = 2.5) -> Capabilities:
    """Vector width, int8 instructions and peak from the enabled ISA extensions."""
    f = set(features)
    if "+avx512f" in f:
        vector_bits, flops_per_cycle = 512, 64  # two 16-lane FMA pipes
    elif "+avx2" in f or "+avx" in f:
        vector_bits = 256
        flops_per_cycle = 32 if "+fma" in f else 16
    else:
        vector_bits, flops_per_cycle = 128, 8
    int8: list[str] = []
    if {"+avx512vnni", "+avx512f", "+avx512bw"} <= f:
        int8.append("vpdpbusd")  # 512-bit VNNI: needs the AVX-512 foundation and byte/word ops
    if "+avxvnni" in f:
        int8.append("vpdpbusd256")
    if "+avx512bw" in f:
        int8.append("vpmaddubsw512")  # the u8xs8 pair on 512 bits (saturating int16 sums)
    if "+avx2" in f or "+avx512bw" in f:
        int8.append("vpmaddubsw")
    return Capabilities(
        vector_bits=vector_bits,
        vector_registers=32 if vector_bits == 512 else 16,
        int8_dot=tuple(int8),
        cores=cores,
        l1_kb=32,
        l2_kb=1024,
        peak_gflops=round(cores * flops_per_cycle * clock_ghz, 1),
        fp16_arith="+avx512fp16" in f,
    )
