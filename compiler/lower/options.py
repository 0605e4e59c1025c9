"""The switches of the lowering, as one frozen record that the manifest stores.

Every optional graph rewrite of :mod:`compiler.lower.rewrites` is on by default; a user turns
one off with ``hwcc compile --disable-rewrite NAME[,NAME]`` (or ``LowerOptions(...)`` in the
API), e.g. to compare against TVM's own lowering. Nothing else (no environment variable)
changes what is compiled, so two artifacts of the same model, target and options hold the
same kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from compiler.errors import ConfigError


@dataclass(frozen=True)
class LowerOptions:
    """Which optional rewrites the lowering applies.

    Attributes
    ----------
    winograd : bool
        3x3 stride-1 convs as Winograd kernels (:mod:`~compiler.lower.rewrites.winograd`).
        Default True.
    expand_depthwise : bool
        Expansion conv + activation + depthwise conv as one kernel
        (:mod:`~compiler.lower.rewrites.expand_depthwise`). Default True.
    blocked_depthwise : bool
        Within that fusion, hand the depthwise output to its 1x1 projection in a blocked
        ``[N, C/L, H, W, L]`` layout. Default True.
    conv_transpose : bool
        Transposed convs whose kernel equals their stride as a 1x1 conv and a pixel shuffle
        (:mod:`~compiler.lower.rewrites.conv_transpose`). Default True.
    resize_taps : bool
        Linear resizes as separable passes over compile-time tables
        (:mod:`~compiler.lower.rewrites.resize_taps`). Default True.
    """

    winograd: bool = True
    expand_depthwise: bool = True
    blocked_depthwise: bool = True
    conv_transpose: bool = True
    resize_taps: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"LowerOptions.{f.name} must be a bool; "
                                  f"got {getattr(self, f.name)!r}")

    @classmethod
    def rewrite_names(cls) -> list[str]:
        """The rewrites' command-line names (``expand-depthwise``, ...)."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def disabling(cls, names: Iterable[str]) -> LowerOptions:
        """Options with the rewrites named (command-line spelling, ``-`` or ``_``) turned off."""
        known = cls.rewrite_names()
        off: dict[str, bool] = {}
        for raw in names:
            name = raw.strip().replace("_", "-")
            if not name:
                continue
            if name not in known:
                raise ConfigError(f"unknown rewrite '{raw.strip()}'; known: {', '.join(known)}")
            off[name.replace("-", "_")] = False
        return cls(**off)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LowerOptions:
        return cls(**{f.name: bool(d.get(f.name, True)) for f in dataclasses.fields(cls)})
