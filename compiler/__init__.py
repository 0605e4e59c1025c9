"""hwcc: compile ONNX models with TVM Relax for a target triple.

Public API::

    import compiler
    art = compiler.compile("model.onnx", target="host", output_dir="out/model")
    outputs = art.run({"input": x})
    art = compiler.Artifact.load("out/model")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Artifact", "HwccError", "LowerOptions", "PassSpec", "TensorSpec", "compile",
           "load_model"]

# Resolved lazily (PEP 562) so that ``targets`` and ``passes`` can import ``compiler.errors``
# without pulling in the whole compile flow, and the CLI starts fast.
_LAZY = {
    "compile": ("api", "compile"),
    "Artifact": ("artifact.runtime", "Artifact"),
    "HwccError": ("errors", "HwccError"),
    "LowerOptions": ("lower.options", "LowerOptions"),
    "TensorSpec": ("artifact.tensors", "TensorSpec"),
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
