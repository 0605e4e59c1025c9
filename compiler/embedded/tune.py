"""Tile tuning against the simulator, and the records a later compile reuses.

The simulator is the device: deterministic and fast (one ``hwcc_conv2d`` call per tile,
well under a millisecond for these layers), so the tuner measures candidates instead of
modelling them. Each conv layer's geometry is a workload; its candidates are the tiles that
fit (:func:`compiler.embedded.tiling.candidates`), the default first, so a tuned layer is
never slower than the default. After each layer the best tile is written to
``tuning_logs/embedded/<accelerator>/tiles.json`` (atomically, under the log folder's
lock): an interrupted run keeps what it measured, and a later run skips measured layers.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from targets.embedded import Accelerator
from targets.errors import TuningError

from ..tuning.database import default_log_root, log_lock
from .build import conv_bench
from .graph import IntGraph
from .layout import ConvGeometry, conv_geometry
from .tiling import Tile, candidates, default_tile, fits

logger = logging.getLogger(__name__)

RECORDS = "tiles.json"


def workload_key(g: ConvGeometry) -> str:
    return ("conv_" + "_".join(str(v) for v in (g.in_h, g.in_w, g.in_c, g.out_h, g.out_w,
                                                 g.out_c, g.k_h, g.k_w, g.stride_h,
                                                 g.stride_w, g.pad_t, g.pad_l, g.dil_h,
                                                 g.dil_w)))


def log_dir(acc: Accelerator, root: Path | None = None) -> Path:
    return (root or default_log_root()) / "embedded" / acc.name


class TileRecords:
    """``tiles.json``: workload key → best tile, its cycles and the default's."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for key, rec in data.items():
                Tile.from_dict(rec["tile"])
                int(rec["cycles"])
        except (ValueError, KeyError, TypeError) as err:
            raise TuningError(f"corrupted tile records {self.path}: {err}; delete the file "
                              "or re-run hwcc tune") from None
        return data

    def update(self, key: str, record: dict[str, Any]) -> None:
        """Merge one record (kept only if faster than what is there), atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with log_lock(self.folder):
            data = self.read()
            old = data.get(key)
            if old is not None and int(old["cycles"]) <= int(record["cycles"]):
                return
            data[key] = record
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def tile_for(self, g: ConvGeometry, acc: Accelerator) -> Tile | None:
        rec = self.read().get(workload_key(g))
        if rec is None:
            return None
        tile = Tile.from_dict(rec["tile"])
        return tile if fits(g, tile, acc) else None


def assign_tiles(graph: IntGraph, acc: Accelerator, records: TileRecords | None) -> int:
    """Set every conv layer's tile: the record's when there is one, else the default.
    Returns how many came from records."""
    tuned = 0
    for lay in graph.layers:
        if lay.kind != "conv":
            continue
        g = conv_geometry(graph, lay, acc)
        tile = records.tile_for(g, acc) if records is not None else None
        if tile is not None:
            tuned += 1
        lay.tile = (tile or default_tile(g, acc, f"{lay.name} (binding '{lay.node}')")).to_dict()
        lay.attrs["tuned"] = tile is not None
    return tuned


def tune_graph(graph: IntGraph, acc: Accelerator, records: TileRecords, trials: int = 200,
               seed: int = 0, progress: Callable[[int, int], None] | None = None,
               out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Measure up to ``trials`` tiles per distinct conv workload of ``graph`` (the default
    first) and record the fastest. Returns one summary per workload (appended to ``out`` as
    they finish, too, so an interrupted caller keeps them)."""
    if trials < 1:
        raise TuningError(f"trials must be at least 1; got {trials}")
    bench = conv_bench(acc)
    done = records.read()
    workloads: dict[str, tuple[ConvGeometry, str]] = {}
    for lay in graph.layers:
        if lay.kind == "conv":
            g = conv_geometry(graph, lay, acc)
            workloads.setdefault(workload_key(g), (g, lay.name))
    rng = random.Random(seed)
    out = [] if out is None else out
    for i, (key, (g, name)) in enumerate(workloads.items()):
        default = default_tile(g, acc, name)
        base = bench.cycles(g, default)["cycles"]
        if key in done:
            out.append({"workload": key, "layer": name, "skipped": "already tuned",
                        "default_cycles": base, "cycles": int(done[key]["cycles"])})
            if progress:
                progress(i + 1, len(workloads))
            continue
        space = [t for t in candidates(g, acc) if t != default]
        rng.shuffle(space)
        best, best_cycles = default, base
        for t in space[:trials - 1]:
            c = bench.cycles(g, t)["cycles"]
            if c < best_cycles:
                best, best_cycles = t, c
        record = {"tile": best.to_dict(), "cycles": int(best_cycles),
                  "default_cycles": int(base), "trials": 1 + min(len(space), trials - 1),
                  "layer": name}
        out.append({"workload": key, **record})  # measured, whatever happens next
        records.update(key, record)
        logger.info("tuned %s: %d -> %d cycles (%s)", name, base, best_cycles, best)
        if progress:
            progress(i + 1, len(workloads))
    return out
