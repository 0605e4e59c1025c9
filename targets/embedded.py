"""An embedded, ASIC-like target: generated C, int8 MAC array, small scratchpad, no FPU.

Code for it is emitted as C by TVM's ``c`` backend and, on this machine, compiled with the
host compiler into a functional model that runs the module bit-for-bit as the C would run on
the device. Its capabilities steer passes (integer-only, tile sizes that fit the scratchpad).
"""

from __future__ import annotations

from .base import Capabilities

TRIPLES = {"embedded": "ASIC-like device: generated C, int8 MAC array, 256 KiB scratchpad"}
ARCH = "c"
DEFAULT_CORES = 1
KNOWN_FEATURES: tuple[str, ...] = ()


def capabilities(cores: int) -> Capabilities:
    return Capabilities(
        vector_bits=0,
        int8_dot=("mac8x8",),
        cores=cores,
        has_float=False,
        l1_kb=0,
        l2_kb=0,
        peak_gflops=0.0,
        scratchpad_kb=256,
    )
