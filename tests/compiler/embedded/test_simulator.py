"""The accelerator simulator (compiler/embedded/csrc/hwcc_acc_sim.c) against numpy.

The simulator is built with the host gcc into a shared library per accelerator geometry and
driven through ctypes. Functional results are compared bit-exactly with independent numpy
code; the cycle counts with the formulas of the cycle model (see the comment at the top of
hwcc_acc_sim.c). Finally the simulator is cross-built for RISC-V and run under qemu.

The scratchpad has no read port, so tests read it back through the device itself: a gemm
with an identity weight block (kept in the last R*C bytes of the scratchpad) copies C bytes
into an accumulator row, and an identity store (rqmul(v, 2^30, 30) == v) writes them out.
Accumulators are read back exactly, all 32 bits, with four stores (see ``read_acc``).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CSRC = Path(__file__).resolve().parents[3] / "compiler" / "embedded" / "csrc"
SIM_C = CSRC / "hwcc_acc_sim.c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Config:
    rows: int
    cols: int
    spad_bytes: int
    acc_rows: int
    dma_bytes: int
    dma_latency: int
    gemm_latency: int

    def header(self) -> str:
        return (
            "#ifndef HWCC_ACC_CONFIG_H\n#define HWCC_ACC_CONFIG_H\n"
            f"#define HWCC_ACC_ROWS {self.rows}\n"
            f"#define HWCC_ACC_COLS {self.cols}\n"
            f"#define HWCC_ACC_SPAD_BYTES {self.spad_bytes}\n"
            f"#define HWCC_ACC_ACC_ROWS {self.acc_rows}\n"
            f"#define HWCC_ACC_DMA_BYTES {self.dma_bytes}\n"
            f"#define HWCC_ACC_DMA_LATENCY {self.dma_latency}\n"
            f"#define HWCC_ACC_GEMM_LATENCY {self.gemm_latency}\n"
            "#endif\n")

    # The cycle model's formulas, written independently of the C code.
    def load_cycles(self, rows: int, row_bytes: int) -> int:
        return self.dma_latency + rows * -(-row_bytes // self.dma_bytes)

    def gemm_cycles(self, pixels: int, taps: int, k_blocks: int) -> int:
        return self.gemm_latency + pixels * taps * k_blocks

    def store_cycles(self, pixels: int) -> int:
        r = self.rows
        return (self.dma_latency + max(pixels, -(-pixels * r // self.dma_bytes))
                + -(-9 * r // self.dma_bytes))


CONFIGS = {
    "16x16": Config(16, 16, 64 * 1024, 1024, 16, 32, 8),
    # a DMA wider than a row of accumulators: stores are bound by one row per cycle
    "8x8": Config(8, 8, 16 * 1024, 256, 32, 20, 4),
}


class GemmOp(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in (
        "acc_row", "out_lines", "out_cols", "inp_addr", "inp_line_stride", "inp_col_stride",
        "taps_h", "taps_w", "tap_h_stride", "tap_w_stride", "k_blocks", "wgt_addr",
        "accumulate")]


class StoreOp(ctypes.Structure):
    _fields_ = [
        ("dst", ctypes.c_void_p),
        ("dst_line_stride", ctypes.c_int32), ("dst_col_stride", ctypes.c_int32),
        ("acc_row", ctypes.c_uint32), ("lines", ctypes.c_uint32), ("cols", ctypes.c_uint32),
        ("bias", ctypes.c_void_p), ("mult", ctypes.c_void_p), ("shift", ctypes.c_void_p),
        ("lo", ctypes.c_int32), ("hi", ctypes.c_int32),
    ]


STAT_FIELDS = ("cycles", "gemm_cycles", "mac_slots", "load_bytes", "store_bytes", "loads",
               "gemms", "stores")


class Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in STAT_FIELDS]

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STAT_FIELDS}


def wrap32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    return (((x + 2**31) & 0xFFFFFFFF) - 2**31).astype(np.int64)


def rqmul_ref(v: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(int32_t)((v * m + (1 << (s - 1))) >> s) in numpy int64 (>> is arithmetic)."""
    v, m, s = (np.asarray(a, dtype=np.int64) for a in (v, m, s))
    return wrap32((v * m + (np.int64(1) << (s - 1))) >> s)


def build_config_dir(cfg: Config, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hwcc_acc_config.h").write_text(cfg.header())
    return d


class Sim:
    """ctypes wrapper around one build of the simulator."""

    def __init__(self, lib_path: Path, cfg: Config):
        self.cfg = cfg
        self.R, self.C = cfg.rows, cfg.cols
        lib = self.lib = ctypes.CDLL(str(lib_path))
        u32, i32, vp = ctypes.c_uint32, ctypes.c_int32, ctypes.c_void_p
        lib.hwcc_acc_load.argtypes = [u32, u32, vp, i32, u32, u32]
        lib.hwcc_acc_zero.argtypes = [u32, u32]
        lib.hwcc_acc_gemm.argtypes = [ctypes.POINTER(GemmOp)]
        lib.hwcc_acc_store.argtypes = [ctypes.POINTER(StoreOp)]
        lib.hwcc_acc_sync.argtypes = [u32]
        for f in ("hwcc_acc_load", "hwcc_acc_zero", "hwcc_acc_gemm", "hwcc_acc_store",
                  "hwcc_acc_sync", "hwcc_sim_reset", "hwcc_sim_total_stats"):
            getattr(lib, f).restype = None
        lib.hwcc_sim_reset.argtypes = []
        lib.hwcc_sim_cycles.argtypes = []
        lib.hwcc_sim_cycles.restype = ctypes.c_uint64
        lib.hwcc_sim_layer_stats.argtypes = [u32, ctypes.POINTER(Stats)]
        lib.hwcc_sim_layer_stats.restype = ctypes.c_int
        lib.hwcc_sim_total_stats.argtypes = [ctypes.POINTER(Stats)]
        lib.hwcc_sim_error.argtypes = []
        lib.hwcc_sim_error.restype = ctypes.c_char_p
        self.ident_addr = cfg.spad_bytes - self.R * self.C

    # -- the device calls --
    def reset(self) -> None:
        self.lib.hwcc_sim_reset()

    def load(self, spad_addr: int, data: np.ndarray, *, rows: int | None = None,
             row_bytes: int | None = None, spad_stride: int = 0, src_stride: int | None = None,
             src_offset: int = 0) -> None:
        """Load from the int8 buffer ``data`` (src = data + src_offset bytes)."""
        assert data.dtype == np.int8 and data.flags.c_contiguous
        if rows is None:
            rows, row_bytes, src_stride = 1, data.size, 0
        self.lib.hwcc_acc_load(spad_addr, spad_stride, data.ctypes.data + src_offset,
                               src_stride, rows, row_bytes)

    def zero(self, addr: int, nbytes: int) -> None:
        self.lib.hwcc_acc_zero(addr, nbytes)

    def gemm(self, **kw: int) -> None:
        op = GemmOp(**{"out_lines": 1, "out_cols": 1, "taps_h": 1, "taps_w": 1,
                       "k_blocks": 1, **kw})
        self.lib.hwcc_acc_gemm(ctypes.byref(op))

    def store(self, acc_row: int, lines: int, cols: int, *, bias=None, mult=None, shift=None,
              lo: int = -128, hi: int = 127, line_stride: int | None = None,
              col_stride: int | None = None, dst: np.ndarray | None = None,
              dst_offset: int = 0) -> np.ndarray:
        R = self.R
        bias = np.zeros(R, np.int32) if bias is None else np.asarray(bias, np.int32)
        mult = np.full(R, 1 << 30, np.int32) if mult is None else np.asarray(mult, np.int32)
        shift = np.full(R, 30, np.uint8) if shift is None else np.asarray(shift, np.uint8)
        col_stride = R if col_stride is None else col_stride
        line_stride = cols * col_stride if line_stride is None else line_stride
        if dst is None:
            dst = np.zeros(lines * cols * R, np.int8)
        op = StoreOp(dst.ctypes.data + dst_offset, line_stride, col_stride, acc_row, lines,
                     cols, bias.ctypes.data, mult.ctypes.data, shift.ctypes.data, lo, hi)
        self.lib.hwcc_acc_store(ctypes.byref(op))
        return dst

    def sync(self, layer: int = 0) -> None:
        self.lib.hwcc_acc_sync(layer)

    # -- host controls --
    def error(self) -> str | None:
        e = self.lib.hwcc_sim_error()
        return None if e is None else e.decode()

    def cycles(self) -> int:
        return self.lib.hwcc_sim_cycles()

    def layer(self, layer: int) -> dict[str, int] | None:
        s = Stats()
        return s.as_dict() if self.lib.hwcc_sim_layer_stats(layer, ctypes.byref(s)) else None

    def total(self) -> dict[str, int]:
        s = Stats()
        self.lib.hwcc_sim_total_stats(ctypes.byref(s))
        return s.as_dict()

    # -- read-back helpers built from device instructions --
    def load_identity(self) -> np.ndarray:
        assert self.R == self.C
        ident = np.eye(self.R, dtype=np.int8).ravel()
        self.load(self.ident_addr, ident)
        return ident

    def read_spad(self, addr: int, n: int, acc_row: int = 0) -> np.ndarray:
        """n scratchpad bytes from addr (identity weights must be loaded)."""
        C = self.C
        blocks = -(-n // C)
        self.gemm(acc_row=acc_row, out_cols=blocks, inp_addr=addr, inp_col_stride=C,
                  wgt_addr=self.ident_addr)
        return self.store(acc_row, 1, blocks)[:n]

    def read_acc(self, acc_row: int, n: int) -> np.ndarray:
        """Accumulator rows [acc_row, acc_row + n) exactly, as int64 (n, R).

        With lo/hi wide open the store's clamp does nothing and (int8_t)v keeps v's low byte.
        The identity store gives byte 0; rqmul(v, 1, 8k) = round(v / 2^8k) = floor(v / 2^8k)
        + bit (8k-1) of v, so byte k is that store's byte minus the bit already known.
        """
        R = self.R
        one = np.ones(R, np.int32)
        u = self.store(acc_row, 1, n, lo=I32_MIN, hi=I32_MAX).view(np.uint8).astype(np.int64)
        for k in (1, 2, 3):
            r = self.store(acc_row, 1, n, mult=one, shift=np.full(R, 8 * k, np.uint8),
                           lo=I32_MIN, hi=I32_MAX).view(np.uint8).astype(np.int64)
            bit = (u >> (8 * k - 1)) & 1
            u |= ((r - bit) & 0xFF) << (8 * k)
        return wrap32(u).reshape(n, R)


@pytest.fixture(scope="module", params=sorted(CONFIGS), ids=sorted(CONFIGS))
def sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sim:
    if shutil.which("gcc") is None:
        pytest.skip("host gcc not found")
    cfg = CONFIGS[request.param]
    d = build_config_dir(cfg, tmp_path_factory.mktemp(f"sim{request.param}"))
    lib = d / "libhwcc_sim.so"
    subprocess.run(["gcc", *CFLAGS, "-shared", "-fPIC", f"-I{d}", f"-I{CSRC}", str(SIM_C),
                    "-o", str(lib)], check=True, capture_output=True, text=True)
    return Sim(lib, cfg)


@pytest.fixture
def s(sim: Sim) -> Sim:
    sim.reset()
    yield sim
    sim.reset()


# --------------------------------------------------------------------------------------
# Functional
# --------------------------------------------------------------------------------------


def ref_gemm(spad: np.ndarray, op: dict, R: int, C: int, prev: np.ndarray) -> np.ndarray:
    """The header's gemm formula in numpy int64, wrapped to int32; prev is (pixels, R)."""
    sp = spad.astype(np.int64)
    out = np.zeros((op["out_lines"] * op["out_cols"], R), np.int64)
    for l in range(op["out_lines"]):
        for c in range(op["out_cols"]):
            base = op["inp_addr"] + l * op["inp_line_stride"] + c * op["inp_col_stride"]
            for th in range(op["taps_h"]):
                for tw in range(op["taps_w"]):
                    for kb in range(op["k_blocks"]):
                        a = base + th * op["tap_h_stride"] + tw * op["tap_w_stride"] + kb * C
                        blk = (th * op["taps_w"] + tw) * op["k_blocks"] + kb
                        w0 = op["wgt_addr"] + blk * R * C
                        out[l * op["out_cols"] + c] += sp[w0:w0 + R * C].reshape(R, C) @ sp[a:a + C]
    if op["accumulate"]:
        out += prev
    return wrap32(out)


def random_gemm(rng: np.random.Generator, R: int, C: int, inp_end: int, wgt_lo: int,
                wgt_hi: int, acc_row: int, accumulate: int) -> dict:
    while True:
        op = {"acc_row": acc_row, "out_lines": int(rng.integers(1, 4)),
              "out_cols": int(rng.integers(1, 5)), "taps_h": int(rng.integers(1, 4)),
              "taps_w": int(rng.integers(1, 4)), "k_blocks": int(rng.integers(1, 4)),
              "accumulate": accumulate}
        op["tap_w_stride"] = int(rng.choice([op["k_blocks"] * C, int(rng.integers(0, 80))]))
        op["tap_h_stride"] = int(rng.integers(0, 400))
        op["inp_col_stride"] = int(rng.choice([op["tap_w_stride"], int(rng.integers(0, 100))]))
        op["inp_line_stride"] = int(rng.integers(0, 700))
        op["inp_addr"] = int(rng.integers(0, 3000))  # any byte, not only aligned ones
        hi = (op["inp_addr"] + (op["out_lines"] - 1) * op["inp_line_stride"]
              + (op["out_cols"] - 1) * op["inp_col_stride"]
              + (op["taps_h"] - 1) * op["tap_h_stride"] + (op["taps_w"] - 1) * op["tap_w_stride"]
              + op["k_blocks"] * C)
        wbytes = op["taps_h"] * op["taps_w"] * op["k_blocks"] * R * C
        if hi <= inp_end and wgt_lo + wbytes <= wgt_hi:
            op["wgt_addr"] = int(rng.integers(wgt_lo, wgt_hi - wbytes + 1))
            return op


def fill_random_spad(s: Sim, rng: np.random.Generator) -> np.ndarray:
    """Random int8 scratchpad (identity weights at the end); returns its numpy image."""
    spad = rng.integers(-128, 128, s.cfg.spad_bytes, dtype=np.int8)
    spad[s.ident_addr:] = np.eye(s.R, dtype=np.int8).ravel()
    s.load(0, spad)
    return spad


def test_gemm_matches_numpy(s: Sim) -> None:
    rng = np.random.default_rng(1234 + s.R)
    R, C, spad_bytes = s.R, s.C, s.cfg.spad_bytes
    spad = fill_random_spad(s, rng)
    half = spad_bytes // 2
    acc_row = 3
    for trial in range(8):
        first = random_gemm(rng, R, C, half, half, s.ident_addr, acc_row, 0)
        n = first["out_lines"] * first["out_cols"]
        second = dict(random_gemm(rng, R, C, half, half, s.ident_addr, acc_row, trial % 2))
        # The second op writes the same rows: make its pixel count equal.
        second["out_lines"], second["out_cols"] = first["out_lines"], first["out_cols"]
        if not second["inp_addr"] + (second["out_lines"] - 1) * second["inp_line_stride"] \
                + (second["out_cols"] - 1) * second["inp_col_stride"] \
                + (second["taps_h"] - 1) * second["tap_h_stride"] \
                + (second["taps_w"] - 1) * second["tap_w_stride"] + second["k_blocks"] * C <= half:
            second = dict(first, accumulate=trial % 2)
        s.gemm(**first)
        want = ref_gemm(spad, first, R, C, np.zeros((n, R), np.int64))
        np.testing.assert_array_equal(s.read_acc(acc_row, n), want, err_msg=str(first))
        s.gemm(**second)
        want = ref_gemm(spad, second, R, C, want)
        np.testing.assert_array_equal(s.read_acc(acc_row, n), want, err_msg=str(second))
        acc_row += n
    assert s.error() is None


def test_gemm_accumulator_wraps(s: Sim) -> None:
    """int32 sums wrap: -128 * -128 accumulated past 2^31."""
    R, C = s.R, s.C
    kb = (s.cfg.spad_bytes // 2) // (R * C)
    s.load(0, np.full(kb * C, -128, np.int8))
    s.load(s.cfg.spad_bytes // 2, np.full(kb * R * C, -128, np.int8))
    per = kb * C * 128 * 128
    reps = 2**31 // per + 2
    for i in range(reps):
        s.gemm(acc_row=5, inp_addr=0, k_blocks=kb, wgt_addr=s.cfg.spad_bytes // 2,
               accumulate=int(i > 0))
    got = s.read_acc(5, 1)
    assert reps * per > I32_MAX
    np.testing.assert_array_equal(got, wrap32(np.full((1, R), reps * per)))
    # accumulate=0 with no taps zeroes the rows
    s.gemm(acc_row=5, k_blocks=0, accumulate=0)
    np.testing.assert_array_equal(s.read_acc(5, 1), np.zeros((1, R)))
    assert s.error() is None


def test_store_requant_matches_numpy(s: Sim) -> None:
    rng = np.random.default_rng(99 + s.R)
    R, C = s.R, s.C
    spad = fill_random_spad(s, rng)
    half = s.cfg.spad_bytes // 2
    op = {"acc_row": 10, "out_lines": 3, "out_cols": 4, "inp_addr": 17, "inp_line_stride": 300,
          "inp_col_stride": 2 * C, "taps_h": 2, "taps_w": 3, "tap_h_stride": 100,
          "tap_w_stride": 2 * C, "k_blocks": 2, "wgt_addr": half, "accumulate": 0}
    s.gemm(**op)
    acc = ref_gemm(spad, op, R, C, np.zeros((12, R), np.int64)).reshape(3, 4, R)
    for trial in range(20):
        mult = rng.integers(2**30, 2**31, R).astype(np.int32)
        shift = rng.integers(31, 46, R).astype(np.uint8)
        bias = rng.integers(I32_MIN, I32_MAX, R, endpoint=True).astype(np.int32) \
            if trial % 3 == 0 else rng.integers(-50000, 50000, R).astype(np.int32)
        lo, hi = (-128, 127) if trial % 2 else sorted(int(x) for x in rng.integers(-128, 128, 2))
        # strided destination, with gaps that must stay untouched
        line_stride, col_stride = 4 * (R + 3) + 5, R + 3
        dst = np.full(3 * line_stride + 8, 77, np.int8)
        s.store(10, 3, 4, bias=bias, mult=mult, shift=shift, lo=lo, hi=hi,
                line_stride=line_stride, col_stride=col_stride, dst=dst, dst_offset=4)
        v = rqmul_ref(wrap32(acc + bias.astype(np.int64)), mult, shift)
        want = np.clip(v, lo, hi).astype(np.int8)
        expect = np.full_like(dst, 77)
        for l in range(3):
            for c in range(4):
                o = 4 + l * line_stride + c * col_stride
                expect[o:o + R] = want[l, c]
        np.testing.assert_array_equal(dst, expect)
    # negative strides: lines written bottom-up
    dst = np.zeros(3 * 4 * R, np.int8)
    s.store(10, 3, 4, line_stride=-4 * R, col_stride=R, dst=dst, dst_offset=2 * 4 * R,
            lo=-128, hi=127)
    np.testing.assert_array_equal(dst.reshape(3, 4, R)[::-1], np.clip(acc, -128, 127))
    assert s.error() is None


def test_rqmul_edges(s: Sim) -> None:
    """Rounding half up, negative values, s = 1 and s = 62, the int32 truncation."""
    R = s.R
    s.load_identity()
    vals = np.array([-128, -3, -1, 0, 1, 3, 5, 127] * (R // 8 + 1), np.int8)[:R]
    s.load(0, vals)
    s.gemm(acc_row=0, inp_addr=0, wgt_addr=s.ident_addr)
    for mult, shift in [(1, 1), (3, 1), (-7, 2), (I32_MAX, 62), (I32_MIN, 62), (I32_MAX, 1),
                        (I32_MIN, 1), (12345, 13)]:
        m = np.full(R, mult, np.int32)
        sh = np.full(R, shift, np.uint8)
        got = s.store(0, 1, 1, mult=m, shift=sh, lo=I32_MIN, hi=I32_MAX)
        want = rqmul_ref(vals.astype(np.int64), m, sh).astype(np.int64)
        np.testing.assert_array_equal(got, ((want + 128) & 0xFF) - 128, err_msg=f"{mult} {shift}")
    assert s.error() is None


def test_2d_load_and_zero(s: Sim) -> None:
    rng = np.random.default_rng(7)
    C = s.C
    s.load_identity()
    rows, row_bytes, src_stride, spad_stride = 5, 3 * C + 5, 4 * C + 1, 4 * C
    src = rng.integers(-128, 128, rows * src_stride, dtype=np.int8)
    s.zero(0, 2048)
    s.load(100, src, rows=rows, row_bytes=row_bytes, spad_stride=spad_stride,
           src_stride=src_stride)
    image = np.zeros(2048, np.int8)
    for i in range(rows):
        image[100 + i * spad_stride:100 + i * spad_stride + row_bytes] = \
            src[i * src_stride:i * src_stride + row_bytes]
    np.testing.assert_array_equal(s.read_spad(0, 1024), image[:1024])
    # negative source stride: rows read bottom-up; overlapping rows: later rows win
    s.load(1100, src, rows=rows, row_bytes=row_bytes, spad_stride=C, src_stride=-src_stride,
           src_offset=(rows - 1) * src_stride)
    for i in range(rows):
        j = rows - 1 - i
        dst0 = 1100 + i * C
        image[dst0:dst0 + row_bytes] = src[j * src_stride:j * src_stride + row_bytes]
    np.testing.assert_array_equal(s.read_spad(1024, 1024), image[1024:])
    # zero a range that starts and ends mid-page
    s.zero(130, 77)
    image[130:207] = 0
    np.testing.assert_array_equal(s.read_spad(0, 1024), image[:1024])
    assert s.error() is None


# --------------------------------------------------------------------------------------
# Cycle model
# --------------------------------------------------------------------------------------


def test_gemm_waits_for_its_loads(s: Sim) -> None:
    cfg, R, C = s.cfg, s.R, s.C
    kb, pixels = 3, 4
    s.load(0, np.ones(kb * C + (pixels - 1) * C, np.int8))
    s.load(4096, np.ones(kb * R * C, np.int8))
    s.gemm(acc_row=0, out_cols=pixels, inp_addr=0, inp_col_stride=C, k_blocks=kb, wgt_addr=4096)
    s.store(0, 1, pixels)
    s.sync(0)
    loads = cfg.load_cycles(1, kb * C + (pixels - 1) * C) + cfg.load_cycles(1, kb * R * C)
    want = loads + cfg.gemm_cycles(pixels, 1, kb) + cfg.store_cycles(pixels)
    assert s.cycles() == want
    assert s.total()["cycles"] == want
    # zero uses the load engine: C bytes per cycle, no latency
    s.zero(0, 10 * C + 1)
    s.sync(1)
    assert s.cycles() == want + 11
    assert s.error() is None


@pytest.mark.parametrize("far", ["line", "col", "tap_h", "tap_w", "k_block"])
def test_gemm_waits_for_the_far_end_of_its_input(s: Sim, far: str) -> None:
    """The input footprint spans every loop: the last load, into the page only the far
    line / column / tap / k-block reaches, delays the gemm."""
    cfg, C, R = s.cfg, s.C, s.R
    dist = 512
    op = {"acc_row": 0, "inp_addr": 0, "wgt_addr": 4096}
    if far == "line":
        op.update(out_lines=2, inp_line_stride=dist)
    elif far == "col":
        op.update(out_cols=2, inp_col_stride=dist)
    elif far == "tap_h":
        op.update(taps_h=2, tap_h_stride=dist)
    elif far == "tap_w":
        op.update(taps_w=2, tap_w_stride=dist)
    else:
        op.update(k_blocks=dist // C + 1)
    taps = op.get("taps_h", 1) * op.get("taps_w", 1)
    kb = op.get("k_blocks", 1)
    pixels = op.get("out_lines", 1) * op.get("out_cols", 1)
    s.load(4096, np.ones(taps * kb * R * C, np.int8))
    s.load(0, np.ones(C, np.int8))
    s.load(dist, np.ones(C, np.int8))
    s.gemm(**op)
    s.sync(0)
    loads = cfg.load_cycles(1, taps * kb * R * C) + 2 * cfg.load_cycles(1, C)
    assert s.cycles() == loads + cfg.gemm_cycles(pixels, taps, kb)
    assert s.error() is None


def test_independent_engines_overlap(s: Sim) -> None:
    """A load into untouched pages runs while the gemm computes; a store overlaps too."""
    cfg, C = s.cfg, s.C
    s.load(0, np.ones(C, np.int8))
    s.load(1024, np.ones(s.R * C, np.int8))
    s.gemm(acc_row=0, out_cols=50, inp_addr=0, inp_col_stride=0, wgt_addr=1024)
    s.load(8192, np.ones(C, np.int8))  # other pages: overlaps the gemm
    s.sync(0)
    a, w = cfg.load_cycles(1, C), cfg.load_cycles(1, s.R * C)
    assert s.cycles() == max(a + w + cfg.gemm_cycles(50, 1, 1), a + w + a)


def test_store_and_gemm_ordering_on_accumulators(s: Sim) -> None:
    cfg, C = s.cfg, s.C
    s.load(0, np.ones(s.R * C, np.int8))
    t = cfg.load_cycles(1, s.R * C)
    s.gemm(acc_row=0, out_cols=4, inp_addr=0, inp_col_stride=C, wgt_addr=0)  # RAW on pages
    t += cfg.gemm_cycles(4, 1, 1)
    s.store(0, 1, 4)  # RAW on acc rows 0..3
    t += cfg.store_cycles(4)
    s.gemm(acc_row=2, inp_addr=0, wgt_addr=0)  # WAR on acc row 2: waits for the store
    t += cfg.gemm_cycles(1, 1, 1)
    s.sync(0)
    assert s.cycles() == t
    # a gemm to rows no store reads does not wait for the store
    s.gemm(acc_row=0, out_cols=4, inp_addr=0, inp_col_stride=C, wgt_addr=0)
    s.store(0, 1, 4)
    s.gemm(acc_row=100, inp_addr=0, wgt_addr=0)
    s.sync(1)
    g4 = cfg.gemm_cycles(4, 1, 1)
    assert s.cycles() - t == g4 + cfg.store_cycles(4)  # the last gemm hides under the store
    assert cfg.gemm_cycles(1, 1, 1) < cfg.store_cycles(4)


def _two_gemms(s: Sim, b_addr: int) -> int:
    s.reset()
    C, R = s.C, s.R
    wbytes, inp = R * C, 8 * C
    # each gemm: 8 x 8 pixels whose input footprint is the 8 * C bytes just loaded
    geo = {"out_lines": 8, "out_cols": 8, "inp_line_stride": C, "inp_col_stride": 0,
           "wgt_addr": 4096}
    s.load(4096, np.ones(wbytes, np.int8))
    s.load(0, np.ones(inp, np.int8))                          # A
    s.gemm(acc_row=0, inp_addr=0, **geo)
    s.load(b_addr, np.ones(inp, np.int8))                     # B
    s.gemm(acc_row=64, inp_addr=b_addr, **geo)
    s.sync(0)
    assert s.error() is None
    return s.cycles()


def test_double_buffering_beats_reusing_pages(s: Sim) -> None:
    cfg, C, R = s.cfg, s.C, s.R
    double = _two_gemms(s, 2048)
    single = _two_gemms(s, 0)  # B overwrites A's pages: waits until gemm A read them
    w, a, g = cfg.load_cycles(1, R * C), cfg.load_cycles(1, 8 * C), cfg.gemm_cycles(64, 1, 1)
    assert g > a
    assert double == w + a + 2 * g
    assert single == w + 2 * a + 2 * g
    assert double < single
    # the page granularity is 64 bytes: a B one page past A's last page does not wait
    assert _two_gemms(s, ((8 * C + 63) // 64) * 64) == double
    # ... but one sharing A's last page does
    assert _two_gemms(s, 8 * C - 1) == single


def test_layer_stats_add_up(s: Sim) -> None:
    C, R = s.C, s.R
    rng = np.random.default_rng(5)
    assert s.layer(0) is None and s.cycles() == 0
    layers = [3, 1, 3, 4095, 0, 1]
    for i, layer in enumerate(layers):
        n = 1 + i
        s.load(0, rng.integers(-5, 5, n * C, dtype=np.int8))
        s.load(1024, rng.integers(-5, 5, 2 * R * C, dtype=np.int8))
        s.gemm(acc_row=0, out_cols=n, inp_addr=0, inp_col_stride=C, k_blocks=2, wgt_addr=1024,
               tap_w_stride=0)
        s.store(0, 1, n)
        s.sync(layer)
    total = s.total()
    per = {layer: s.layer(layer) for layer in set(layers)}
    for field in STAT_FIELDS:
        assert sum(p[field] for p in per.values()) == total[field], field
    assert total["cycles"] == s.cycles()
    assert per[3]["loads"] == 4 and per[3]["gemms"] == 2 and per[3]["stores"] == 2
    assert s.layer(2) is None and s.layer(4096) is None
    # a sync with nothing pending adds a zero interval
    s.sync(2)
    assert s.layer(2) == dict.fromkeys(STAT_FIELDS, 0)
    # layer ids beyond 4095 are an error, and skipped
    s.sync(4096)
    assert "hwcc_acc_sync" in s.error() and "4096" in s.error()
    assert s.total() == total


def test_counters(s: Sim) -> None:
    cfg, C, R = s.cfg, s.C, s.R
    src = np.ones(10 * 100, np.int8)
    s.load(0, src, rows=7, row_bytes=37, spad_stride=40, src_stride=100)
    s.load(2048, np.ones(3 * R * C, np.int8))
    s.zero(4096, 500)
    s.gemm(acc_row=0, out_lines=2, out_cols=3, inp_addr=0, inp_line_stride=40,
           inp_col_stride=1, taps_w=3, tap_w_stride=0, wgt_addr=2048)
    s.store(0, 2, 3)
    s.sync(9)
    st = s.layer(9)
    busy = 2 * 3 * 3
    assert st == {
        "cycles": s.cycles(),
        "gemm_cycles": busy,
        "mac_slots": busy * R * C,
        "load_bytes": 7 * 37 + 3 * R * C + 9 * R,
        "store_bytes": 6 * R,
        "loads": 2, "gemms": 1, "stores": 1,
    }
    # the 2-D load costs each row separately, rounded up to the DMA width; the zero (other
    # pages) runs on the load engine while the gemm and the store run
    loads = cfg.load_cycles(7, 37) + cfg.load_cycles(1, 3 * R * C)
    assert s.cycles() == loads + max(-(-500 // C), cfg.gemm_cycles(6, 3, 1) + cfg.store_cycles(6))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors(s: Sim) -> None:
    spad_bytes, R, C = s.cfg.spad_bytes, s.R, s.C
    s.load_identity()
    s.load(0, np.full(C, 5, np.int8))
    s.gemm(acc_row=0, inp_addr=0, wgt_addr=s.ident_addr)
    before = s.read_acc(0, 1)
    # weight block beyond the scratchpad: skipped, first message kept
    bad_wgt = spad_bytes - R * C + 1
    s.gemm(acc_row=0, inp_addr=0, wgt_addr=bad_wgt, taps_w=2)
    err = s.error()
    assert err == (f"hwcc_acc_gemm: weight block at {bad_wgt} + {2 * R * C} beyond the "
                   f"{spad_bytes}-byte scratchpad")
    np.testing.assert_array_equal(s.read_acc(0, 1), before)
    s.load(spad_bytes - 10, np.ones(11, np.int8))
    assert s.error() == err
    s.sync(0)
    assert s.total()["gemms"] == 1  # the skipped one counts nothing

    cases = [
        (lambda: s.load(spad_bytes - 10, np.ones(11, np.int8)), "hwcc_acc_load"),
        (lambda: s.load(0, np.ones(C, np.int8), rows=3, row_bytes=C, spad_stride=spad_bytes // 2,
                        src_stride=0), "hwcc_acc_load"),
        (lambda: s.lib.hwcc_acc_load(0, 0, None, 0, 1, 1), "hwcc_acc_load: src is NULL"),
        (lambda: s.zero(spad_bytes - 1, 2), "hwcc_acc_zero"),
        (lambda: s.gemm(acc_row=0, inp_addr=spad_bytes - C + 1), "hwcc_acc_gemm: input"),
        (lambda: s.gemm(acc_row=0, out_cols=2, inp_addr=0, inp_col_stride=spad_bytes),
         "hwcc_acc_gemm: input"),
        (lambda: s.gemm(acc_row=s.cfg.acc_rows - 1, out_cols=2), "hwcc_acc_gemm: accumulator"),
        (lambda: s.gemm(acc_row=0, inp_addr=0, wgt_addr=0, taps_h=2**31, taps_w=2**31,
                        tap_h_stride=0), "hwcc_acc_gemm: weight block"),
        (lambda: s.lib.hwcc_acc_gemm(None), "hwcc_acc_gemm"),
        (lambda: s.store(s.cfg.acc_rows, 1, 1), "hwcc_acc_store: accumulator"),
        (lambda: s.store(0, 1, 1, shift=np.r_[np.full(R - 1, 30), 0]),
         f"hwcc_acc_store: shift[{R - 1}] = 0 outside 1..62"),
        (lambda: s.store(0, 1, 1, shift=np.full(R, 63)), "hwcc_acc_store: shift[0] = 63"),
        (lambda: s.lib.hwcc_acc_store(None), "hwcc_acc_store"),
    ]
    for call, needle in cases:
        s.reset()
        assert s.error() is None
        call()
        assert s.error() is not None and s.error().startswith(needle), (needle, s.error())
        s.sync(0)
        assert s.total()["loads"] + s.total()["gemms"] + s.total()["stores"] == 0
    s.reset()
    assert s.error() is None


# --------------------------------------------------------------------------------------
# Cross build: RISC-V under qemu gives what the host build gives
# --------------------------------------------------------------------------------------

MAIN_C = r"""
#include <stdio.h>
#include "hwcc_acc.h"
#include "hwcc_sim.h"

static int8_t buf[4096];
static int8_t out[4 * HWCC_ACC_ROWS];

int main(void) {
    uint32_t i, seed = 12345u;
    int32_t bias[HWCC_ACC_ROWS], mult[HWCC_ACC_ROWS];
    uint8_t shift[HWCC_ACC_ROWS];
    hwcc_acc_gemm_op g = {0, 2, 2, 0, 3 * HWCC_ACC_COLS, HWCC_ACC_COLS, 2, 2,
                          HWCC_ACC_COLS, HWCC_ACC_COLS, 1, 2048, 0};
    hwcc_acc_store_op st;
    hwcc_sim_stats t;
    for (i = 0; i < sizeof buf; ++i) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (int8_t)((int)((seed >> 16) & 0xffu) - 128);
    }
    for (i = 0; i < HWCC_ACC_ROWS; ++i) {
        bias[i] = (int32_t)i * 1000 - 7000;
        mult[i] = 1518500250 + (int32_t)i;
        shift[i] = (uint8_t)(38 + i % 4);
    }
    hwcc_sim_reset();
    hwcc_acc_load(0, 0, buf, 0, 1, 2048);
    hwcc_acc_load(2048, 0, buf + 2048, 0, 1, 2048);
    hwcc_acc_gemm(&g);
    st.dst = out; st.dst_line_stride = 2 * HWCC_ACC_ROWS; st.dst_col_stride = HWCC_ACC_ROWS;
    st.acc_row = 0; st.lines = 2; st.cols = 2; st.bias = bias; st.mult = mult; st.shift = shift;
    st.lo = -128; st.hi = 127;
    hwcc_acc_store(&st);
    hwcc_acc_sync(1);
    for (i = 0; i < sizeof out; ++i) printf("%d ", out[i]);
    hwcc_sim_total_stats(&t);
    printf("\ncycles %lu macs %lu err %s\n", (unsigned long)hwcc_sim_cycles(),
           (unsigned long)t.mac_slots, hwcc_sim_error() ? hwcc_sim_error() : "none");
    return 0;
}
"""


def test_riscv_cross_build_matches_host(tmp_path: Path) -> None:
    tools = {t: shutil.which(t) for t in ("gcc", "riscv64-linux-gnu-gcc", "qemu-riscv64-static")}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    cfg = CONFIGS["16x16"]
    d = build_config_dir(cfg, tmp_path)
    (d / "main.c").write_text(MAIN_C)
    srcs = [str(d / "main.c"), str(SIM_C), f"-I{d}", f"-I{CSRC}"]
    subprocess.run(["riscv64-linux-gnu-gcc", "-std=c99", "-Wall", "-Werror", "-O2", "-static",
                    *srcs, "-o", str(d / "sim_rv")], check=True, capture_output=True, text=True)
    subprocess.run(["gcc", *CFLAGS, *srcs, "-o", str(d / "sim_host")], check=True,
                   capture_output=True, text=True)
    rv = subprocess.run(["qemu-riscv64-static", str(d / "sim_rv")], check=True,
                        capture_output=True, text=True, timeout=60).stdout
    host = subprocess.run([str(d / "sim_host")], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    assert rv == host
    assert "err none" in host
    values = [int(x) for x in host.split("\n")[0].split()]
    assert len(values) == 4 * cfg.rows and len(set(values)) > 8  # not degenerate

    # ... and what numpy gives for the same program
    seed, buf = 12345, np.zeros(4096, np.int64)
    for i in range(4096):
        seed = (seed * 1103515245 + 12345) & 0xFFFFFFFF
        buf[i] = ((seed >> 16) & 0xFF) - 128
    R, C = cfg.rows, cfg.cols
    op = {"acc_row": 0, "out_lines": 2, "out_cols": 2, "inp_addr": 0, "inp_line_stride": 3 * C,
          "inp_col_stride": C, "taps_h": 2, "taps_w": 2, "tap_h_stride": C, "tap_w_stride": C,
          "k_blocks": 1, "wgt_addr": 2048, "accumulate": 0}
    acc = ref_gemm(buf, op, R, C, np.zeros((4, R), np.int64))
    o = np.arange(R)
    v = rqmul_ref(wrap32(acc + (o * 1000 - 7000)), 1518500250 + o, 38 + o % 4)
    np.testing.assert_array_equal(np.clip(v, -128, 127).ravel(), values)
    busy = 4 * 4
    want = (cfg.load_cycles(1, 2048) * 2 + cfg.gemm_cycles(4, 4, 1) + cfg.store_cycles(4))
    assert f"cycles {want} macs {busy * R * C} " in host
