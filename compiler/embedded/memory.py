"""Static memory plan: every activation at a fixed offset of one arena.

A tensor lives from the layer that writes it to the last layer that reads it (a ``view``
shares its source's bytes and extends its life; a conv's im2col buffer lives during that
conv); the model's input is copied into the arena
by the first step (NCHW → padded NHWC) and its output copied out by the last. Offsets are
chosen greedily, largest tensors first, each at the lowest 16-byte aligned offset that no
tensor alive at the same time overlaps. ``peak`` is the largest total of tensors alive at
once: no plan can use less, and the arena is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from targets.embedded import Accelerator

from .graph import IntGraph
from .layout import im2col_bytes, storage_bytes

ALIGN = 16


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]  # tensor name -> byte offset (views: their source's)
    sizes: dict[str, int]  # buffer (root tensor) name -> bytes
    arena_bytes: int
    peak_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"arena_bytes": self.arena_bytes, "peak_live_bytes": self.peak_bytes,
                "buffers": {k: {"offset": self.offsets[k], "bytes": v}
                            for k, v in self.sizes.items()}}


def scratch_name(layer: str) -> str:
    """The arena buffer of a layer's im2col input."""
    return f"{layer}.im2col"


def plan_arena(graph: IntGraph, acc: Accelerator) -> ArenaPlan:
    root: dict[str, str] = {n: n for n in graph.inputs}
    for lay in graph.layers:
        root[lay.output] = root[lay.inputs[0]] if lay.kind == "view" else lay.output
    sizes = {r: storage_bytes(graph.tensors[r], acc) for r in set(root.values())}
    # step 0 copies the input in; layer i is step i + 1; the output copy is the last step
    first = {n: 0 for n in graph.inputs}
    last: dict[str, int] = {n: 0 for n in graph.inputs}
    for i, lay in enumerate(graph.layers, start=1):
        first.setdefault(root[lay.output], i)
        last[root[lay.output]] = max(last.get(root[lay.output], i), i)
        for name in lay.inputs:
            last[root[name]] = max(last.get(root[name], 0), i)
    end = len(graph.layers) + 1
    for name in graph.outputs:
        last[root[name]] = end
    for i, lay in enumerate(graph.layers, start=1):  # a conv's im2col buffer: its step only
        scratch = im2col_bytes(graph, lay, acc)
        if scratch:
            name = scratch_name(lay.name)
            root[name], sizes[name], first[name], last[name] = name, scratch, i, i
    placed: list[tuple[int, int, int, int]] = []  # (start, stop, offset, size)
    offsets: dict[str, int] = {}
    for buf in sorted(sizes, key=lambda b: (-sizes[b], first[b])):
        lo, hi, size = first[buf], last[buf], sizes[buf]
        busy = sorted((o, o + s) for a, b, o, s in placed if a <= hi and lo <= b)
        off = 0
        for o0, o1 in busy:
            if off + size <= o0:
                break
            off = max(off, -(-o1 // ALIGN) * ALIGN)
        offsets[buf] = off
        placed.append((lo, hi, off, size))
    peak = max(sum(s for a, b, _, s in placed if a <= step <= b) for step in range(end + 1))
    arena = max((o + s for _, _, o, s in placed), default=0)
    arena = -(-arena // ALIGN) * ALIGN
    assert arena >= peak, "arena smaller than the live tensors"
    return ArenaPlan({n: offsets[r] for n, r in root.items()}, sizes, arena, peak)
