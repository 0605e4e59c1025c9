"""The integer graph the embedded target runs: int8 tensors and integer-only layers.

Every tensor is int8, symmetric (zero point 0), with one float ``scale`` that only the host
uses (to quantize the model's inputs and read its outputs). Every layer is integer
arithmetic defined exactly (``rqmul`` as in ``hwcc_acc.h``), so an independent
implementation (numpy, another device) gives the same bytes. On the device, activations
are NHWC with channels padded to the layout's block (``pad_c``); the graph itself keeps the
logical NCHW shapes and OIHW weights, which is what :func:`save` writes beside the C code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Tensor:
    """An int8 activation: logical shape (``(N, C, H, W)`` or ``(N, F)``), scale."""

    name: str
    shape: tuple[int, ...]
    scale: float
    #: (C, H, W) of the device layout its bytes are in (a flattened tensor keeps its
    #: source's NHWC layout: the next fully connected layer's weights are reordered to it)
    storage: tuple[int, int, int] | None = None

    @property
    def chw(self) -> tuple[int, int, int]:
        """(channels, height, width); a 2-D tensor is (F, 1, 1)."""
        if len(self.shape) == 4:
            return int(self.shape[1]), int(self.shape[2]), int(self.shape[3])
        return int(np.prod(self.shape[1:])), 1, 1


@dataclass
class Layer:
    """One integer layer.

    kind
        ``conv`` (convolution or fully connected: ``weight`` int8 OIHW, ``bias``/``mult``
        int32 and ``shift`` uint8 per output channel, attrs stride/pad/dilation, ``lo``/``hi``),
        ``add`` (``mult_a, shift_a, mult_b, shift_b, lo, hi``), ``mean`` (``mult, shift,
        lo, hi``), ``maxpool`` (kernel/stride/pad), ``clamp`` (``lo, hi``), ``view``
        (a reshape: same bytes).
    node
        The Relax binding (ONNX node) it came from, for messages and reports.
    """

    kind: str
    name: str
    inputs: list[str]
    output: str
    node: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    #: the tile chosen for a conv (filled in by the tiler)
    tile: dict[str, int] | None = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer's real (unpadded) shapes (0 for non-conv)."""
        return int(self.attrs.get("macs", 0))


@dataclass
class IntGraph:
    """Tensors by name, layers in execution order, the model's inputs and outputs."""

    tensors: dict[str, Tensor]
    layers: list[Layer]
    inputs: list[str]
    outputs: list[str]

    def consumers(self, name: str) -> list[Layer]:
        return [lay for lay in self.layers if name in lay.inputs]

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": [{**asdict(t), "shape": list(t.shape),
                         "storage": list(t.storage or t.chw)} for t in self.tensors.values()],
            "layers": [{"kind": lay.kind, "name": lay.name, "inputs": lay.inputs,
                        "output": lay.output, "node": lay.node, "attrs": lay.attrs,
                        "tile": lay.tile, "params": sorted(lay.params)}
                       for lay in self.layers],
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


def save_json(graph: IntGraph, json_path: Path) -> None:
    """Write the graph's structure, scales and attributes as JSON."""
    Path(json_path).write_text(json.dumps(graph.to_json(), indent=1) + "\n")


def save_params(graph: IntGraph, npz_path: Path) -> None:
    """Write the integer parameters (``<layer>.<param>``: OIHW int8 weights, int32 bias and
    multipliers, uint8 shifts) as an npz."""
    arrays = {f"{lay.name}.{k}": v for lay in graph.layers for k, v in lay.params.items()}
    with open(npz_path, "wb") as f:
        np.savez(f, **arrays)


def save(graph: IntGraph, json_path: Path, npz_path: Path) -> None:
    """Write the graph (JSON) and its integer parameters (npz)."""
    save_json(graph, json_path)
    save_params(graph, npz_path)


def load(json_path: Path, npz_path: Path) -> IntGraph:
    """Read what :func:`save` wrote."""
    data = json.loads(Path(json_path).read_text())
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files}
    tensors = {d["name"]: Tensor(d["name"], tuple(d["shape"]), float(d["scale"]),
                                 tuple(d["storage"]))
               for d in data["tensors"]}
    layers = [Layer(kind=d["kind"], name=d["name"], inputs=list(d["inputs"]),
                    output=d["output"], node=d.get("node", ""), attrs=dict(d["attrs"]),
                    params={k: arrays[f"{d['name']}.{k}"] for k in d["params"]},
                    tile=d.get("tile"))
              for d in data["layers"]]
    return IntGraph(tensors, layers, list(data["inputs"]), list(data["outputs"]))
