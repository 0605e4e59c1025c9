"""Errors that hwcc reports to users (defined in :mod:`targets.errors`, re-exported here).

Every failure a user can cause is a subclass of :class:`HwccError` whose message is one
readable line; the CLI prints that line and exits non-zero, the Python API lets it propagate.
"""

from targets.errors import (
    ArtifactError,
    CompileError,
    ConfigError,
    HwccError,
    InputShapeError,
    ModelLoadError,
    RuntimeInputError,
    TargetError,
    TuningError,
    UnsupportedOpError,
)

__all__ = ["ArtifactError", "CompileError", "ConfigError", "HwccError", "InputShapeError",
           "ModelLoadError", "RuntimeInputError", "TargetError", "TuningError",
           "UnsupportedOpError"]
