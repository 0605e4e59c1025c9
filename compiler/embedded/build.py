"""Build embedded C with a real compiler, and run it on the simulator through ctypes.

The artifact's C (``model.c`` + the kernel library) is compiled with the host's C compiler
together with the simulator (``hwcc_acc_sim.c``) into a shared library: the model runs
bit-for-bit as on the device, and the simulator counts the device's cycles. The same
library without a model is the tuner's device: it times one ``hwcc_conv2d`` call per tile.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from targets.embedded import Accelerator
from targets.errors import ArtifactError, CompileError

from .. import tempdirs
from .layout import ConvGeometry
from .tiling import Tile

#: the files every embedded artifact carries (device side, then simulator)
LIBRARY_FILES = ("hwcc_acc.h", "hwcc_kernels.h", "hwcc_kernels.c")
SIMULATOR_FILES = ("hwcc_sim.h", "hwcc_acc_sim.c", "hwcc_sim_main.c")
CONFIG = "hwcc_acc_config.h"
#: no -Werror here: a user's compiler may warn where gcc does not (the tests build the C with
#: gcc -Wall -Wextra -pedantic -Werror and arm-none-eabi-gcc -Werror)
CFLAGS = ("-std=c99", "-O2")


def library_source(name: str) -> str:
    return resources.files("compiler.embedded").joinpath("csrc").joinpath(name).read_text()


def write_sources(folder: Path, acc: Accelerator) -> None:
    """The kernel library, the simulator and ``hwcc_acc_config.h`` into ``folder``."""
    for name in LIBRARY_FILES + SIMULATOR_FILES:
        (folder / name).write_text(library_source(name))
    (folder / CONFIG).write_text(acc.config_header())


def host_cc() -> str:
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            return cc
    raise CompileError("no C compiler (cc, gcc or clang) on this machine: the embedded "
                       "target's simulator is built with one")


def compile_shared(folder: Path, sources: list[str], out: Path) -> Path:
    cmd = [host_cc(), *CFLAGS, "-fPIC", "-shared", "-I", str(folder),
           *(str(folder / s) for s in sources), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise CompileError(f"building the embedded simulator failed: "
                           f"{(res.stderr or res.stdout).strip()[:800]}")
    return out


class SimStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cycles", "gemm_cycles", "mac_slots",
                                               "load_bytes", "store_bytes", "loads", "gemms",
                                               "stores")]

    def to_dict(self) -> dict[str, int]:
        return {n: int(getattr(self, n)) for n, _ in self._fields_}


_U32 = ctypes.c_uint32
_CONV_FIELDS = ["layer", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w",
                "stride_h", "stride_w", "pad_t", "pad_l", "dil_h", "dil_w"]


class ConvParams(ctypes.Structure):
    """``hwcc_conv_params`` of hwcc_kernels.h."""

    _fields_ = ([(n, _U32) for n in _CONV_FIELDS]
                + [("weights", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                   ("mult", ctypes.c_void_p), ("shift", ctypes.c_void_p),
                   ("lo", ctypes.c_int32), ("hi", ctypes.c_int32)]
                + [(n, _U32) for n in ("tile_h", "tile_w", "tile_ocb", "oc_outer",
                                       "double_buffer")])


class Simulator:
    """A loaded simulator library (with or without a model)."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.hwcc_sim_error.restype = ctypes.c_char_p
        self.lib.hwcc_sim_cycles.restype = ctypes.c_uint64
        self.lib.hwcc_sim_layer_stats.restype = ctypes.c_int

    def reset(self) -> None:
        self.lib.hwcc_sim_reset()

    def check(self) -> None:
        err = self.lib.hwcc_sim_error()
        if err:
            raise ArtifactError(f"the accelerator simulator stopped: {err.decode()}")

    def layer_stats(self, layer: int) -> dict[str, int] | None:
        st = SimStats()
        if not self.lib.hwcc_sim_layer_stats(ctypes.c_uint32(layer), ctypes.byref(st)):
            return None
        return st.to_dict()

    def total_stats(self) -> dict[str, int]:
        st = SimStats()
        self.lib.hwcc_sim_total_stats(ctypes.byref(st))
        return st.to_dict()


@dataclass
class ConvBench:
    """The tuner's device: times ``hwcc_conv2d`` of one layer geometry on the simulator."""

    sim: Simulator
    acc: Accelerator

    def cycles(self, g: ConvGeometry, t: Tile) -> dict[str, int]:
        in_buf = np.zeros(max(1, g.in_h * g.in_w * g.in_c), np.int8)
        out_buf = np.zeros(max(1, g.out_h * g.out_w * g.out_c), np.int8)
        w = np.zeros(g.out_c * g.k_h * g.k_w * g.in_c, np.int8)  # cycles: data-independent
        zeros32 = np.zeros(g.out_c, np.int32)
        shift = np.ones(g.out_c, np.uint8)
        p = ConvParams(layer=0, in_h=g.in_h, in_w=g.in_w, in_c=g.in_c, out_h=g.out_h,
                       out_w=g.out_w, out_c=g.out_c, k_h=g.k_h, k_w=g.k_w,
                       stride_h=g.stride_h, stride_w=g.stride_w, pad_t=g.pad_t,
                       pad_l=g.pad_l, dil_h=g.dil_h, dil_w=g.dil_w,
                       weights=w.ctypes.data, bias=zeros32.ctypes.data,
                       mult=zeros32.ctypes.data, shift=shift.ctypes.data, lo=-128, hi=127,
                       tile_h=t.tile_h, tile_w=t.tile_w, tile_ocb=t.tile_ocb,
                       oc_outer=t.oc_outer, double_buffer=t.double_buffer)
        self.sim.reset()
        self.sim.lib.hwcc_conv2d(ctypes.byref(p), in_buf.ctypes.data_as(ctypes.c_void_p),
                                 out_buf.ctypes.data_as(ctypes.c_void_p))
        self.sim.check()
        return self.sim.layer_stats(0) or {}


_BENCHES: dict[str, ConvBench] = {}


def conv_bench(acc: Accelerator) -> ConvBench:
    """The kernel library and simulator built for ``acc`` (once per process and config)."""
    key = hashlib.sha256(acc.config_header().encode()).hexdigest()[:16]
    if key not in _BENCHES:
        folder = tempdirs.mkdtemp("hwcc-embedded-bench-")
        write_sources(folder, acc)
        lib = compile_shared(folder, ["hwcc_kernels.c", "hwcc_acc_sim.c"],
                             folder / "libbench.so")
        _BENCHES[key] = ConvBench(Simulator(lib), acc)
    return _BENCHES[key]


class ModelRunner:
    """An embedded artifact's C built with the simulator and loaded: runs ``hwcc_model_run``
    on int8 buffers and reads the simulator's per-layer counters."""

    def __init__(self, folder: Path, arena_bytes: int, in_bytes: int, out_bytes: int) -> None:
        build = tempdirs.mkdtemp("hwcc-embedded-run-")
        for f in folder.iterdir():
            if f.suffix in (".c", ".h"):
                shutil.copy(f, build / f.name)
        lib = compile_shared(build, ["model.c", "hwcc_kernels.c", "hwcc_acc_sim.c"],
                             build / "libmodel.so")
        self.sim = Simulator(lib)
        self.arena = np.zeros(arena_bytes + 16, np.int8)
        self.in_bytes, self.out_bytes = in_bytes, out_bytes

    def run(self, q_in: np.ndarray) -> np.ndarray:
        q_in = np.ascontiguousarray(q_in, np.int8).reshape(-1)
        if q_in.size != self.in_bytes:
            raise ArtifactError(f"expected {self.in_bytes} input bytes, got {q_in.size}")
        out = np.zeros(self.out_bytes, np.int8)
        base = self.arena.ctypes.data
        aligned = base + (-base % 16)
        self.sim.reset()
        self.sim.lib.hwcc_model_run(q_in.ctypes.data_as(ctypes.c_void_p),
                                    out.ctypes.data_as(ctypes.c_void_p),
                                    ctypes.c_void_p(aligned))
        self.sim.check()
        return out

    def stats(self, layers: int) -> list[dict[str, Any] | None]:
        return [self.sim.layer_stats(i) for i in range(layers)]
