"""Command-line options of the compression passes, turned into pass specs for ``compile``.

Kept apart from ``cli.py`` so each pass's flags live next to each other in one place.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_pass_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the compression flags of ``hwcc compile``."""
    g = parser.add_argument_group("compression passes")
    g.add_argument("--calib", metavar="FILE.npz", help="calibration inputs keyed by input "
                   "name (one sample, or a leading sample axis)")


def passes_from_args(args: argparse.Namespace) -> list[Any]:
    """Pass specs, in pipeline order, for the flags given."""
    return []
