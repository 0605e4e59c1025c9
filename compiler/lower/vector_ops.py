"""Tell TVM's vectorizer which elementwise intrinsics have vector forms it does not declare.

TVM 0.27's ``VectorizeLoop`` keeps a loop vectorized through a call only when the op carries
the ``TVectorizable`` attribute; ``tirx.isnan``, ``tirx.isinf``, ``tirx.isfinite`` and
``tirx.nearbyint`` lack it, so any loop using one is scalarized, one lane at a time. hwcc emits
them everywhere a float becomes an integer or NaN must propagate: the NaN-safe casts
(:mod:`compiler.frontend.int_casts`), the quantize pass's ``round``/``isnan`` requantization and
the NaN tests of :mod:`compiler.lower.schedules.fast_math`'s ``exp``/``erf``/``sigmoid``. LLVM
lowers all four on vectors (``fcmp uno``, ``fabs`` compares, ``llvm.nearbyint.v*``): on AVX2
EfficientNet-B0's Swish epilogues and BERT's int8 GELU epilogues were scalar code before this.

:func:`declare_vectorizable` sets the attribute (TVM's own op-attribute mechanism) once per
process; the lowering calls it before every build. Values are unchanged: the same intrinsics are
emitted, on vectors.
"""

from __future__ import annotations

import logging
import threading

import tvm

logger = logging.getLogger(__name__)

#: Elementwise intrinsics that LLVM's code generator handles on vector operands.
VECTORIZABLE = ("tirx.isnan", "tirx.isinf", "tirx.isfinite", "tirx.nearbyint")

_LOCK = threading.Lock()
_DONE = False


def declare_vectorizable() -> None:
    """Mark :data:`VECTORIZABLE` as ``TVectorizable`` (idempotent, thread-safe)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        for name in VECTORIZABLE:
            op = tvm.ir.Op.get(name)
            if not op.get_attr("TVectorizable"):
                tvm.ir.register_op_attr(name, "TVectorizable", True)
                logger.debug("declared %s vectorizable", name)
        _DONE = True
