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

from .api import compile  # noqa: E402
from .errors import HwccError  # noqa: E402
from .frontend import TensorSpec, load_model  # noqa: E402
from .pipeline import PassSpec  # noqa: E402
from .runtime import Artifact  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Artifact", "HwccError", "PassSpec", "TensorSpec", "compile", "load_model"]
