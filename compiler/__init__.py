"""hwcc: compile ONNX models with TVM Relax for a target triple.

Public API::

    import compiler
    art = compiler.compile("model.onnx", target="host", output_dir="out/model")
    outputs = art.run({"input": x})
    art = compiler.Artifact.load("out/model")
"""

from __future__ import annotations

import os as _os


def _default_threads() -> None:
    # TVM's runtime uses half the hardware threads on x86 unless told otherwise, and reads
    # this once, when its thread pool starts: use every core this process may use.
    if "TVM_NUM_THREADS" not in _os.environ:
        try:
            n = len(_os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = _os.cpu_count() or 1
        _os.environ["TVM_NUM_THREADS"] = str(max(1, n))


_default_threads()

__version__ = "0.1.0"
__all__ = ["Artifact", "HwccError", "PassSpec", "TensorSpec", "compile", "load_model"]

# Resolved lazily (PEP 562) so that ``targets`` and ``passes`` can import ``compiler.errors``
# without pulling in the whole compile flow, and the CLI starts fast.
_LAZY = {
    "compile": ("api", "compile"),
    "Artifact": ("runtime", "Artifact"),
    "HwccError": ("errors", "HwccError"),
    "TensorSpec": ("frontend", "TensorSpec"),
    "load_model": ("frontend", "load_model"),
    "PassSpec": ("pipeline", "PassSpec"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
