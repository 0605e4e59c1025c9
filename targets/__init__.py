"""Compilation targets, named by triples.

>>> from targets import parse_target
>>> t = parse_target("aarch64-linux-gnu -mattr=+neon,+dotprod")
>>> str(t)
'aarch64-linux-gnu -mattr=+neon,+dotprod'
>>> t.capabilities.int8_dot
('sdot',)

Families live one per module (``x86``, ``arm``, ``riscv``, ``cuda``, ``embedded``) and are
dispatched through :data:`FAMILIES`; ``host`` resolves to this machine's triple and features.
"""

from __future__ import annotations

from .base import Capabilities, Target
from .host import host_arch, host_features, missing_features
from .registry import FAMILIES, known_triples, parse_target, target_table
from .tvm_target import capabilities_of

__all__ = [
    "FAMILIES",
    "Capabilities",
    "Target",
    "capabilities_of",
    "host_arch",
    "host_features",
    "known_triples",
    "missing_features",
    "parse_target",
    "target_table",
]
