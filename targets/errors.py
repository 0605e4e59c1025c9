"""Errors that hwcc reports to users.

Every failure a user can cause (a bad file, an unknown target, wrong inputs, a tampered
artifact) is raised as a subclass of :class:`HwccError` whose message is one readable line.
The CLI prints that line and exits non-zero; the Python API lets it propagate.

The classes live here, in ``targets/`` (the bottom of hwcc's import graph, importing nothing
of ours), so that every room -- targets, passes and the compiler -- raises the same ones;
:mod:`compiler.errors` re-exports them for the API's users.
"""

from __future__ import annotations


class HwccError(Exception):
    """Base class of every error hwcc raises on purpose."""


class ModelLoadError(HwccError):
    """The model file is missing, unreadable, not ONNX or fails the ONNX checker."""


class UnsupportedOpError(HwccError):
    """An ONNX node cannot be imported or compiled."""

    def __init__(self, op_type: str, node_name: str, opset: int | None, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        self.opset = opset
        where = f"node '{node_name}'" if node_name else "an unnamed node"
        msg = f"unsupported ONNX op '{op_type}' (opset {opset}) at {where}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class InputShapeError(HwccError):
    """Input shapes are dynamic and not pinned, or a pinned shape is malformed."""


class TargetError(HwccError):
    """An unknown or malformed target, or a toolchain the target needs is missing."""


class CompileError(HwccError):
    """TVM failed to lower or build the module."""


class ArtifactError(HwccError):
    """An artifact directory is missing, incomplete, tampered with or for another machine."""


class RuntimeInputError(HwccError):
    """Inputs given at run time do not match the model's inputs (names, shapes, dtypes)."""


class ConfigError(HwccError):
    """A pass or tool configuration value is out of range or inconsistent."""


class TuningError(HwccError):
    """Tuning failed, measured no valid candidate, or a tuning log is unusable."""
