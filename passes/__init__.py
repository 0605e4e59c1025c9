"""hwcc's Relax graph passes (one pass per module)."""

from .canonicalize import Canonicalize, CanonicalizeConfig

__all__ = ["Canonicalize", "CanonicalizeConfig"]
