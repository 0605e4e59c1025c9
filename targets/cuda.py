"""NVIDIA GPUs (``nvptx64-nvidia-cuda -arch=sm_XX``): CUDA source compiled by nvcc or NVRTC."""

from __future__ import annotations

import re
import shutil

from .base import Capabilities

TRIPLES = {"nvptx64-nvidia-cuda": "NVIDIA GPU through CUDA (-arch=sm_XX, default sm_80)"}
ALIASES = {"cuda": "nvptx64-nvidia-cuda"}
ARCH = "nvptx64"
DEFAULT_ARCH = "sm_80"
KNOWN_FEATURES: tuple[str, ...] = ()
_ARCH_RE = re.compile(r"^sm_\d{2,3}[a-z]?$")

# fp32 peak (GFLOP/s) of a few common parts, by compute capability
_PEAK = {"sm_70": 15700.0, "sm_75": 8100.0, "sm_80": 19500.0, "sm_86": 35600.0,
         "sm_89": 82600.0, "sm_90": 67000.0}


def valid_arch(arch: str) -> bool:
    return bool(_ARCH_RE.match(arch))


def capabilities(gpu_arch: str) -> Capabilities:
    major = int(re.sub(r"\D", "", gpu_arch)[:-1] or 0)
    int8 = ("dp4a", "mma.s8") if major >= 8 else ("dp4a",) if major >= 6 else ()
    return Capabilities(
        vector_bits=32 * 32,  # a warp of 32 fp32 lanes
        int8_dot=int8,
        cores=1,
        l1_kb=128,
        l2_kb=40960,
        peak_gflops=_PEAK.get(gpu_arch, 0.0),
        fp16_arith=int(re.sub(r"\D", "", gpu_arch) or 0) >= 53,
    )


def find_nvcc() -> str | None:
    """Path of nvcc if installed (``/usr/local/cuda/bin`` is checked too)."""
    return shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
