"""The embedded target: integer graph, tiles, static memory, standalone C, simulator.

``build_embedded`` lowers a float Relax model (with calibration data) to C99 for the MAC-array
accelerator of :mod:`targets.embedded`; ``ModelRunner`` builds that C with the cycle-counting
simulator and runs it; ``tune_graph`` picks tiles against the simulator.
"""

from .build import ModelRunner
from .compile import EmbeddedBuild, build_embedded
from .tune import TileRecords, tune_graph

__all__ = ["EmbeddedBuild", "ModelRunner", "TileRecords", "build_embedded", "tune_graph"]
