"""The ``hwcc`` command line: argument parsing and printing only; every verb is a call into
the API (``compiler.api``, ``compiler.tuning``, ``compiler.search``, ``compiler.artifact``)."""

from .main import main

__all__ = ["main"]
