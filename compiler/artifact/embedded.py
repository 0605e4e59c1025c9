"""An embedded artifact: standalone C for the MAC-array accelerator, run on its simulator.

``Artifact.load`` returns an :class:`EmbeddedArtifact` for a manifest whose target kind is
``c``. Loading builds the artifact's C (``model.c``, the kernel library and the simulator)
with the host's C compiler; :meth:`run` takes float inputs as any artifact does, quantizes
them with the input scale of ``model.h`` (clamp, round, convert), runs ``hwcc_model_run`` and
returns the int8 output dequantized (``run_int8`` gives and takes the raw bytes);
:meth:`simulate` gives the device's cycles, MAC-array utilization and DMA bytes per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compiler.embedded.build import ModelRunner
from compiler.errors import ArtifactError, RuntimeInputError

from .runtime import ARTIFACT_KINDS, Artifact


class EmbeddedArtifact(Artifact):
    """An artifact of the ``embedded`` target (see the module doc)."""

    def _ensure_loaded(self) -> None:
        if self._vm is not None:
            return
        e = self.manifest["embedded"]
        n_in = int(np.prod(self.inputs[0].shape))
        n_out = int(np.prod(self.outputs[0].shape))
        self._vm = ModelRunner(self.path, int(e["arena_bytes"]), n_in, n_out)

    @property
    def size_bytes(self) -> int:
        """Bytes of constant data the device holds: packed weights and layer parameters."""
        return int(self.manifest["embedded"]["weight_bytes"])

    @property
    def input_scale(self) -> float:
        return float(self.manifest["embedded"]["input_scale"])

    @property
    def output_scale(self) -> float:
        return float(self.manifest["embedded"]["output_scale"])

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """q = clamp(round(x / scale), -128, 127) as int8 (NaN → 0)."""
        q = np.rint(np.nan_to_num(np.asarray(x, np.float64) / self.input_scale))
        return np.clip(q, -128, 127).astype(np.int8)

    def run_int8(self, q_in: np.ndarray) -> np.ndarray:
        """Run on an int8 input of the model's input shape; the int8 output."""
        q_in = np.asarray(q_in)
        spec_in, spec_out = self.inputs[0], self.outputs[0]
        if q_in.dtype != np.int8 or tuple(q_in.shape) != tuple(spec_in.shape):
            raise RuntimeInputError(f"input '{spec_in.name}' must be int8 of shape "
                                    f"{list(spec_in.shape)}; got {q_in.dtype} "
                                    f"{list(q_in.shape)}")
        self._ensure_loaded()
        return self._vm.run(q_in).reshape(spec_out.shape)

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        (x,) = self.check_inputs(inputs)
        q = self.run_int8(self.quantize_input(x))
        return {self.outputs[0].name: (q.astype(np.float32) * np.float32(self.output_scale))}

    def simulate(self, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One run on the simulator: total and per-layer cycles, MAC-array utilization (real
        MACs / (R·C · cycles)), DMA bytes."""
        feeds = inputs if inputs is not None else self.random_inputs()
        self.run(feeds)
        e = self.manifest["embedded"]
        acc = e["accelerator"]
        per_cycle = int(acc["macs_per_cycle"])
        layers = []
        total = self._vm.sim.total_stats()
        for row, stats in zip(e["layers"], self._vm.stats(len(e["layers"]))):
            st = stats or {}
            cycles = int(st.get("cycles", 0))
            macs = int(row.get("macs", 0))
            layers.append({**{k: row[k] for k in ("index", "name", "kind", "node", "unit")},
                           "tile": row.get("tile"), "tuned": row.get("tuned"),
                           "cycles": cycles, "macs": macs,
                           "utilization": macs / (per_cycle * cycles) if cycles and macs
                           else None,
                           "dma_load_bytes": int(st.get("load_bytes", 0)),
                           "dma_store_bytes": int(st.get("store_bytes", 0))})
        cycles = int(total["cycles"])
        conv_cycles = sum(r["cycles"] for r in layers if r["unit"] == "mac_array")
        conv_macs = sum(r["macs"] for r in layers if r["unit"] == "mac_array")
        return {"target": self.target, "accelerator": acc, "cycles": cycles,
                "macs": int(e["macs"]),
                "utilization": int(e["macs"]) / (per_cycle * cycles) if cycles else None,
                "conv_utilization": conv_macs / (per_cycle * conv_cycles) if conv_cycles
                else None,
                "dma_load_bytes": int(total["load_bytes"]),
                "dma_store_bytes": int(total["store_bytes"]),
                "arena_bytes": int(e["arena_bytes"]), "weight_bytes": int(e["weight_bytes"]),
                "layers": layers}

    def benchmark(self, inputs: Mapping[str, Any] | None = None, repeat: int = 1,
                  warmup: int = 0) -> dict[str, Any]:
        """The simulator's count (deterministic: one run is the measurement)."""
        if repeat < 1:
            raise RuntimeInputError(f"repeat must be at least 1; got {repeat}")
        return self.simulate(inputs)

    def instrument_kernels(self, callback: Any) -> None:
        raise ArtifactError("per-kernel timing is for CPU/GPU artifacts; an embedded "
                            "artifact's per-layer cycles come from the simulator "
                            "(hwcc bench shows them)")


ARTIFACT_KINDS["c"] = EmbeddedArtifact
