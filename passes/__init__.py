"""hwcc's Relax graph passes, one pass per module. :mod:`compiler.pipeline` names them and
runs them in order; a pass imports only :mod:`passes._ir` and :mod:`targets`, never
:mod:`compiler` (it never builds or times a kernel: a timer or cost model is handed in)."""

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
