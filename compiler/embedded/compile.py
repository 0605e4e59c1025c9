"""The embedded target's lowering: float Relax + calibration → standalone C.

integerize (every tensor int8, every layer integer) → tiles (tuning records, else the
default) → static arena plan → C source (``model.c``, ``model.h``) beside the kernel
library, the accelerator config and the simulator. Refusals are one line each: an op with
no integer kernel, a layer that cannot tile into the scratchpad, an arena larger than the
device's memory (``max_arena_kb``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from targets.embedded import Accelerator
from targets.errors import CompileError

from . import emit
from .build import CONFIG, LIBRARY_FILES, SIMULATOR_FILES, library_source
from .graph import IntGraph
from .integerize import integerize
from .layout import conv_geometry, pack_weights, padded
from .memory import ArenaPlan, plan_arena
from .qdq import strip_qdq
from .tune import TileRecords, assign_tiles

logger = logging.getLogger(__name__)

GRAPH_JSON = "graph.json"
GRAPH_PARAMS = "graph_params.npz"


@dataclass
class EmbeddedBuild:
    graph: IntGraph
    plan: ArenaPlan
    accelerator: Accelerator
    files: dict[str, str]  # C sources and headers by file name
    report: dict[str, Any]


def layer_table(graph: IntGraph, acc: Accelerator) -> list[dict[str, Any]]:
    """Per layer: kind, node, where it runs, MACs, tile."""
    rows = []
    for i, lay in enumerate(graph.layers):
        row: dict[str, Any] = {"index": i, "name": lay.name, "kind": lay.kind,
                               "node": lay.node,
                               "unit": "mac_array" if lay.kind == "conv" else "cpu",
                               "macs": lay.macs}
        if lay.kind == "conv":
            row["tile"] = lay.tile
            row["tuned"] = bool(lay.attrs.get("tuned"))
            g = conv_geometry(graph, lay, acc)
            row["padded_macs"] = g.out_h * g.out_w * g.out_c * g.k_h * g.k_w * g.in_c
        rows.append(row)
    return rows


def integer_graph(mod: Any, calibration: Mapping[str, np.ndarray] | None
                  ) -> tuple[IntGraph, dict[str, float]]:
    """The integer graph of ``mod`` and the scales its QDQ pairs gave (see ``qdq``)."""
    mod, marked = strip_qdq(mod)
    return integerize(mod, calibration, marked), marked


def build_embedded(mod: Any, calibration: Mapping[str, np.ndarray] | None, acc: Accelerator,
                   records: TileRecords | None = None) -> EmbeddedBuild:
    """Lower ``mod`` (float or QDQ, BatchNorm folded) for ``acc``; ``calibration``: input
    name → samples along a leading axis (optional for a QDQ model that marks every tensor)."""
    graph, marked = integer_graph(mod, calibration)
    tuned = assign_tiles(graph, acc, records)
    plan = plan_arena(graph, acc)
    if acc.ram_kb is not None and plan.arena_bytes > acc.ram_kb * 1024:
        biggest = max(plan.sizes, key=plan.sizes.get)
        raise CompileError(f"the activation arena needs {plan.arena_bytes} bytes, over the "
                           f"device's -ram={acc.ram_kb} KiB (largest tensor: '{biggest}', "
                           f"{plan.sizes[biggest]} bytes)")
    files = {emit.HEADER: emit.header(graph, plan, acc),
             emit.SOURCE: emit.source(graph, plan, acc),
             CONFIG: acc.config_header()}
    for name in LIBRARY_FILES + SIMULATOR_FILES:
        files[name] = library_source(name)
    weight_bytes = sum(pack_weights(graph, lay, acc).size + 9 * padded(
        lay.params["weight"].shape[0], acc) for lay in graph.layers if lay.kind == "conv")
    convs = sum(lay.kind == "conv" for lay in graph.layers)
    report = {
        "accelerator": acc.to_dict(),
        "layers": layer_table(graph, acc),
        "arena_bytes": plan.arena_bytes,
        "peak_live_bytes": plan.peak_bytes,
        "weight_bytes": int(weight_bytes),
        "macs": int(sum(lay.macs for lay in graph.layers)),
        "conv_layers": convs,
        "tuned_layers": tuned,
        "input_scale": graph.tensors[graph.inputs[0]].scale,
        "output_scale": graph.tensors[graph.outputs[0]].scale,
        "scales_from_model": len(marked),
    }
    logger.info("embedded: %d layers (%d on the MAC array, %d tiles from records), arena %d "
                "bytes, weights %d bytes", len(graph.layers), convs, tuned, plan.arena_bytes,
                weight_bytes)
    return EmbeddedBuild(graph, plan, acc, files, report)

