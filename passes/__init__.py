"""hwcc's Relax graph passes (one pass per module)."""

from .canonicalize import Canonicalize, CanonicalizeConfig
from .low_rank import LowRank, LowRankConfig  # noqa: F401  (registers the "low_rank" pass)
from .prune_channels import PruneChannels, PruneConfig
from .recover import Recover, RecoverConfig
from .quantize import Quantize, QuantizeConfig  # noqa: F401  (registers the "quantize" pass)

__all__ = [
    "Canonicalize",
    "CanonicalizeConfig",
    "PruneChannels",
    "PruneConfig",
    "Recover",
    "RecoverConfig",
]
