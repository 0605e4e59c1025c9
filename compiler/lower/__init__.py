"""Relax IRModule -> VM executable for one target.

``lowering`` is the flow (graph rewrites, legalize, fuse, tuned records, default schedules,
build, export); ``rewrites/`` holds the graph rewrites that run before legalization (each a
Relax module pass); ``schedules/`` the default CPU schedules applied to the fused kernels.
"""

from .lowering import (
    BuildResult,
    LowerStats,
    build,
    export_library,
    legalize_and_fuse,
    lower_cpu,
    mark_layout_free,
    pass_context,
)

from .vector_ops import declare_vectorizable

# every build in this process (hwcc's, the tests' and tuning's own tvm.compile calls) keeps
# isnan/nearbyint loops vectorized; see vector_ops
declare_vectorizable()

__all__ = ["BuildResult", "LowerStats", "build", "export_library", "legalize_and_fuse",
           "lower_cpu", "mark_layout_free", "pass_context"]
