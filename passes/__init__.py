"""hwcc's Relax graph passes (one pass per module)."""

from .canonicalize import Canonicalize, CanonicalizeConfig
from .prune_channels import PruneChannels, PruneConfig
from .recover import Recover, RecoverConfig

__all__ = [
    "Canonicalize",
    "CanonicalizeConfig",
    "PruneChannels",
    "PruneConfig",
    "Recover",
    "RecoverConfig",
]
