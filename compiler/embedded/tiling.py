"""Tiles of a conv layer on the MAC array: what fits, the default, the tuning space.

A tile is ``tile_h × tile_w`` output pixels by ``tile_ocb`` blocks of R output channels, with
a loop order (``oc_outer``: channel tiles outermost, each weight tile loaded once; else pixel
tiles outermost, each input patch loaded once) and ``double_buffer`` (two copies of patch,
weight and accumulator buffers, so the next tile's loads overlap this tile's GEMMs). It fits
when ``buffers × (patch + weight tile)`` bytes fit the scratchpad and ``buffers × tile_h ×
tile_w × tile_ocb`` rows fit the accumulator — exactly what ``hwcc_conv2d`` lays out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from targets.embedded import Accelerator
from targets.errors import CompileError

from .layout import ConvGeometry


@dataclass(frozen=True)
class Tile:
    tile_h: int
    tile_w: int
    tile_ocb: int
    oc_outer: int = 0
    double_buffer: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tile:
        return cls(**{k: int(d[k]) for k in ("tile_h", "tile_w", "tile_ocb", "oc_outer",
                                              "double_buffer")})


def footprint(g: ConvGeometry, t: Tile, acc: Accelerator) -> tuple[int, int]:
    """(scratchpad bytes, accumulator rows) the tile needs."""
    ph = (t.tile_h - 1) * g.stride_h + (g.k_h - 1) * g.dil_h + 1
    pw = (t.tile_w - 1) * g.stride_w + (g.k_w - 1) * g.dil_w + 1
    patch = ph * pw * g.in_c
    weights = t.tile_ocb * g.k_h * g.k_w * g.in_c * acc.rows
    bufs = 2 if t.double_buffer else 1
    return bufs * (patch + weights), bufs * t.tile_h * t.tile_w * t.tile_ocb


def fits(g: ConvGeometry, t: Tile, acc: Accelerator) -> bool:
    spad, rows = footprint(g, t, acc)
    return spad <= acc.spad_bytes and rows <= acc.acc_rows


def _divisor_steps(n: int) -> list[int]:
    """Tile extents worth trying for a dimension of ``n``: its divisors and powers of two."""
    vals = {d for d in range(1, n + 1) if n % d == 0}
    p = 1
    while p < n:
        vals.add(p)
        p *= 2
    return sorted(vals)


def candidates(g: ConvGeometry, acc: Accelerator) -> list[Tile]:
    """Every tile of the tuning space that fits, largest first."""
    ocb = g.out_c // acc.rows
    out = []
    for th in _divisor_steps(g.out_h):
        for tw in _divisor_steps(g.out_w):
            for to in _divisor_steps(ocb):
                for order in (0, 1):
                    for db in (1, 0):
                        t = Tile(th, tw, to, order, db)
                        if fits(g, t, acc):
                            out.append(t)
    out.sort(key=lambda t: -(t.tile_h * t.tile_w * t.tile_ocb))
    return out


def default_tile(g: ConvGeometry, acc: Accelerator, name: str = "") -> Tile:
    """The untuned choice: whole output rows, pixel tiles outermost, double buffered, as
    many channel blocks as fit and then as many rows; single buffering, then narrower rows
    when even that does not fit.

    Raises
    ------
    CompileError
        The layer cannot tile into the scratchpad / accumulator at all (one output pixel of
        one channel block with its whole receptive field does not fit).
    """
    ocb = g.out_c // acc.rows
    for db in (1, 0):
        for tw in sorted(_divisor_steps(g.out_w), reverse=True):
            for to in sorted(_divisor_steps(ocb), reverse=True):
                if not fits(g, Tile(1, tw, to, 0, db), acc):
                    continue
                th = max(h for h in _divisor_steps(g.out_h) if fits(g, Tile(h, tw, to, 0, db),
                                                                    acc))
                return Tile(th, tw, to, 0, db)
    spad, rows = footprint(g, Tile(1, 1, 1, 0, 0), acc)
    raise CompileError(
        f"layer {name} cannot tile into the accelerator: one output pixel needs {spad} "
        f"scratchpad bytes ({acc.spad_bytes} available) and {rows} accumulator rows "
        f"({acc.acc_rows} available); use a larger -spad / -acc")
