"""hwcc's Relax graph passes, one pass per module; importing this package registers them
with :mod:`compiler.pipeline` under the names the CLI and the API use."""

from .canonicalize import Canonicalize, CanonicalizeConfig
from .low_rank import LowRank, LowRankConfig
from .prune_channels import PruneChannels, PruneConfig
from .quantize import Quantize, QuantizeConfig
from .recover import Recover, RecoverConfig
from .sparsify import Sparsify, SparsifyConfig

__all__ = [
    "Canonicalize",
    "CanonicalizeConfig",
    "LowRank",
    "LowRankConfig",
    "PruneChannels",
    "PruneConfig",
    "Quantize",
    "QuantizeConfig",
    "Recover",
    "RecoverConfig",
    "Sparsify",
    "SparsifyConfig",
]
