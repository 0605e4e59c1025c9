"""Lower a Relax IRModule for a target and build it into a VM executable.

The pipeline is TVM's own, with two hwcc stages inserted after fusion (where kernels are
single fused PrimFuncs):

1. records from a MetaSchedule tuning database, when one is given (tuned kernels win);
2. hwcc's default CPU schedules for every kernel still unscheduled (fast without tuning).

CUDA uses TVM's CUDA pipeline (DLight GPU rules). The embedded target does not come here:
``compiler/embedded`` lowers it to standalone C (a ``c``-kind target built here directly gets
TVM's C backend with vectorization disabled).

What each kernel is and how it was scheduled is recorded per kernel name
(:attr:`LowerStats.kernel_info`, the manifest's ``kernel_info``, read by
``hwcc bench --per-layer``): TVM's FLOP estimate of the fused TIR, and the schedule, read
from the :data:`~compiler.lower.schedules.SCHEDULE_ATTR` attribute of the kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from compiler.errors import CompileError
from targets import Target

from .nan_semantics import constants_first
from .options import LowerOptions
from .rewrites.conv_transpose import conv_transpose_as_conv
from .rewrites.expand_depthwise import fuse_expand_depthwise
from .rewrites.resize_taps import resize_linear_as_taps
from .rewrites.winograd import winograd_conv2d
from .schedules import SCHEDULE_ATTR, apply_default_schedules
from .schedules.analysis import region_buffer
from .vector_ops import declare_vectorizable

DEFAULT_OPTIONS = LowerOptions()

logger = logging.getLogger(__name__)


@dataclass
class LowerStats:
    """What the lowering did to the kernels of a module.

    ``kernel_info`` maps each kernel (PrimFunc) name of the built module to ``flops`` (one
    call's floating-point or integer operations, TVM's ``estimate_tir_flops`` of the fused TIR
    before the default schedules pack or tile it, of the tuned TIR for tuned kernels; None
    where it cannot tell), ``ops`` (``"int8"`` for kernels whose reductions multiply 8-bit
    integers into 32-bit sums, else ``"float"``) and ``schedule`` (``"tuned"``,
    ``"default rule: <Rule>"``, ``"hand-scheduled"`` or ``"unscheduled"``).
    It is not part of :meth:`to_dict`: the manifest keeps it under its own key.
    """

    kernels: int = 0
    tuned: int = 0
    default_scheduled: int = 0
    unscheduled: list[str] = field(default_factory=list)
    kernel_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "tuned": self.tuned,
                "default_scheduled": self.default_scheduled,
                "unscheduled": list(self.unscheduled)}


@dataclass
class BuildResult:
    executable: Any  # tvm.runtime.Executable
    target: Target
    stats: LowerStats


def _primfuncs(mod) -> dict[str, Any]:
    from tvm import tirx

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def _is_scheduled(func) -> bool:
    """Whether a PrimFunc carries ``tirx.is_scheduled`` (TVM 0.27) or ``tir.is_scheduled``."""
    if func.attrs is None:
        return False
    return any(key in func.attrs and bool(func.attrs[key])
               for key in ("tirx.is_scheduled", "tir.is_scheduled"))


#: A kernel's own count of the operations of one call (set by hand-written kernels such as
#: :mod:`passes.sparse_kernels`, whose loop bounds are data TVM's estimate cannot count).
FLOPS_ATTR = "hwcc.flops"


def _flops(func) -> int | None:
    """One call's operations (a multiply-add counts 2): the kernel's own ``hwcc.flops``
    attribute where it has one (kernels whose loop bounds are data, such as the sparse ones),
    else TVM's estimate; None if that fails (e.g. symbolic loop extents)."""
    from tvm import s_tir

    if func.attrs is not None and FLOPS_ATTR in func.attrs:
        return int(func.attrs[FLOPS_ATTR])
    try:
        return round(float(s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func}))))
    except Exception as err:  # noqa: BLE001 - an estimate is optional, never a build failure
        logger.debug("no FLOP estimate: %s", _last_line(err))
        return None


_INT8 = ("int8", "uint8")


def _is_int8(func) -> bool:
    """Whether a reduction block of ``func`` reads 8-bit integers into a 32-bit integer sum."""
    import tvm_ffi
    from tvm import s_tir, tirx

    found: list[bool] = []

    def note(block):
        if (any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in block.iter_vars)
                and any(str(region_buffer(w).dtype) == "int32" for w in block.writes)
                and any(str(region_buffer(r).dtype) in _INT8 for r in block.reads)):
            found.append(True)
        return block

    tvm_ffi.structural_map(func, [(s_tir.SBlock, note)])
    return bool(found)


def _schedule_of(func, unattributed: str) -> str:
    """How ``func`` was scheduled, from its :data:`SCHEDULE_ATTR` attribute; a scheduled
    kernel without one is ``unattributed`` (a hand-written kernel, or DLight's on CUDA)."""
    how = func.attrs.get(SCHEDULE_ATTR, None) if func.attrs is not None else None
    if how is not None:
        return "tuned" if str(how) == "tuned" else f"default rule: {how}"
    return unattributed if _is_scheduled(func) else "unscheduled"


def kernel_info(fused: dict[str, Any], built: dict[str, Any],
                unattributed: str = "hand-scheduled", count_flops: bool = True
                ) -> dict[str, dict[str, Any]]:
    """Per kernel of ``built`` (name -> PrimFunc after scheduling): its FLOP estimate and kind
    from the TIR of the same name in ``fused`` (before the default schedules: packed code
    would count padding and layout work; ``built``'s own where ``fused`` lacks the name), and
    how it was scheduled. ``count_flops=False`` records None for every kernel."""
    info = {}
    for name, func in sorted(built.items()):
        source = fused.get(name, func)
        info[name] = {"flops": _flops(source) if count_flops else None,
                      "ops": "int8" if _is_int8(source) else "float",
                      "schedule": _schedule_of(func, unattributed)}
    return info


def _nan_propagating(mod):
    """``mod`` with :func:`.nan_semantics.constants_first` applied to every PrimFunc."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            new = constants_first(func)
            if new is not func:
                updates[gv] = new
    if not updates:
        return mod
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs,
                       global_infos=mod.global_infos)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def pass_context(target: Target):
    """TVM's pass context for ``target`` (opt level 3; no vectorizing for the C target)."""
    config: dict[str, Any] = {}
    if target.kind == "c":
        config["tirx.disable_vectorize"] = True
    return tvm.transform.PassContext(opt_level=3, config=config)


def _bn_after_conv_is_nchw(mod) -> bool:
    """Whether every ``batch_norm`` of a ``conv2d`` result is NCHW with ``axis=1``.

    TVM's ``FoldBatchnormToConv2D`` assumes it (it reshapes the bias to ``[1, C, 1, 1]``
    whatever the layout); the ONNX frontend always emits NCHW convs.
    """

    convs: dict[Any, Any] = {}
    unsafe: list[Any] = []

    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = getattr(binding, "value", None)
                if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                    continue
                if call.op.name == "relax.nn.conv2d":
                    convs[binding.var] = call
                elif call.op.name == "relax.nn.batch_norm" and call.args[0] in convs:
                    conv = convs[call.args[0]]
                    if (int(call.attrs.axis) != 1 or conv.attrs.data_layout != "NCHW"
                            or conv.attrs.out_layout != "NCHW"):
                        unsafe.append(binding.var)
    return not unsafe


def _fold_batch_norm():
    """conv2d -> batch_norm with constant weights: the BN scale folded into the conv weights,
    a bias add left. Skipped (BN decomposed as before) when a conv is not NCHW."""

    @tvm.transform.module_pass(opt_level=0, name="hwcc.FoldBatchNormIntoConv")
    def fold(mod, _ctx):
        if not _bn_after_conv_is_nchw(mod):
            logger.info("a conv2d -> batch_norm is not NCHW: batch norms left to decompose")
            return mod
        mod = relax.transform.FoldBatchnormToConv2D()(mod)
        return relax.transform.FoldConstant()(mod)  # computes the folded weights and biases

    return fold


def _fuse_passes(tvm_target: Any, options: LowerOptions) -> list[Any]:
    """The graph passes up to fused kernels, in order; optional rewrites per ``options``."""
    rewrites = [
        # before legalization, which would dilate the input with zeros: kernel == stride
        # transposed convs become a 1x1 conv and a pixel shuffle
        (options.conv_transpose, conv_transpose_as_conv),
        # before legalization, which would recompute each output's source coordinates: linear
        # resizes read index/weight tables built at compile time, in two separable passes
        (options.resize_taps, resize_linear_as_taps),
        # after BN folding (folded constant weights and biases), before legalization:
        # 1x1 expansion -> activation -> depthwise conv chains become one kernel
        (options.expand_depthwise, lambda: fuse_expand_depthwise(
            target=tvm_target, blocked=options.blocked_depthwise)),
        # after BN folding (weights are folded constants), before legalization (it rewrites
        # the high-level nn.conv2d): 3x3 stride-1 convs become Winograd kernels
        (options.winograd, lambda: winograd_conv2d(target=tvm_target)),
    ]
    return ([
        # before DecomposeOpsForInference, which would turn BN into 4 elementwise ops per
        # output element (one a divide) and keep a following Clip out of the conv's kernel
        _fold_batch_norm(),
        *(make() for enabled, make in rewrites if enabled),
        relax.transform.DecomposeOpsForInference(),  # remaining batch_norm etc. in inference form
    ]
            + cpu_generic.library_dispatch_passes(tvm_target)
            # legalize → annotate → fold → FuseOps → FuseTIR: kernels become fused PrimFuncs
            + cpu_generic.legalize_passes(tvm_target))


def legalize_and_fuse(mod, target: Target, options: LowerOptions | None = None) -> Any:
    """Legalize and fuse ``mod`` for a CPU-like target: its kernels become fused PrimFuncs.

    This is the module that tuning extracts its tasks from and that :func:`lower_cpu` applies
    tuning records to, so that records found by ``hwcc tune`` match at compile time.
    """

    tvm_target = target.tvm_target()
    with tvm_target, pass_context(target):
        return tvm.transform.Sequential(_fuse_passes(tvm_target, options or DEFAULT_OPTIONS))(mod)


def mark_layout_free(mod) -> Any:
    """Mark each kernel's constant (weight) parameters as layout-free.

    MetaSchedule may then choose a packed weight layout for a kernel (its ``RewriteLayout``
    postprocessor); the records of :mod:`compiler.tuning.tune` are found on, and applied to, modules
    marked this way, so both sides must call this.
    """

    return relax.transform.AttachAttrLayoutFreeBuffers()(mod)


_PREPROC = "meta_schedule.layout_rewrite_preproc"


def _rewrites_layout(func) -> bool:
    """Whether a tuned PrimFunc still re-lays-out a weight inside (a RewriteLayout block)."""
    import tvm_ffi
    from tvm import s_tir

    found = []

    def note(block):
        if block.annotations is not None and _PREPROC in block.annotations:
            found.append(block)
        return block

    tvm_ffi.structural_map(func, [(s_tir.SBlock, note)])
    return bool(found)


def _apply_records(mod, database) -> tuple[Any, int]:
    """Apply the database's records (tuned kernels get ``tirx.is_scheduled``); return the
    module and how many kernels were tuned. With no record for any kernel the module comes
    back unchanged, so a log made for other models changes nothing."""
    from tvm import relax, tirx

    before = {n for n, f in _primfuncs(mod).items() if _is_scheduled(f)}
    with database:
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
            mark_layout_free(mod))
    funcs = _primfuncs(applied)
    # tuned: scheduled now and not before; the pass renames the kernels it passes through
    # (sparse_bsr_4x1 -> sparse_bsr_4x11), so hwcc's hand-written ones are known by their
    # own attributes (hwcc.flops) rather than by name
    tuned = {n for n, f in funcs.items() if _is_scheduled(f) and n not in before
             and not (f.attrs is not None and FLOPS_ATTR in f.attrs)}
    if not tuned:
        return mod, 0
    for gv, f in list(applied.functions_items()):
        if gv.name_hint in tuned:  # say so, for the manifest's kernel_info
            applied[gv] = f.with_attr(SCHEDULE_ATTR, "tuned")
    split = {n for n in tuned if _rewrites_layout(funcs[n])}
    if split:
        # those records re-lay-out a weight inside the kernel (MetaSchedule's RewriteLayout):
        # split that step out and run it once, on the constant, here. TVM's pass inspects
        # every PrimFunc and rejects some it need not touch (hand-scheduled sparse kernels,
        # scans), so it sees only the Relax functions and the kernels to split.
        keep = tvm.IRModule(
            {gv: f for gv, f in applied.functions_items()
             if not isinstance(f, tirx.PrimFunc) or gv.name_hint in split},
            attrs=applied.attrs, global_infos=applied.global_infos)
        done = relax.transform.SplitLayoutRewritePreproc()(keep)
        for gv, f in applied.functions_items():
            if isinstance(f, tirx.PrimFunc) and gv.name_hint not in split:
                done[gv] = f
        # the split-out steps ran on the constants; drop the functions no longer called
        applied = relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(done))
    return applied, len(tuned)


def lower_cpu(mod, target: Target, database: Any = None, finalize: bool = True,
              options: LowerOptions | None = None) -> tuple[Any, LowerStats]:
    """Legalize, fuse, schedule (tuned records, then defaults) and lower to VM form
    (``finalize=False`` stops after scheduling: the fused, scheduled kernels)."""

    tvm_target = target.tvm_target()
    stats = LowerStats()
    with tvm_target, pass_context(target):
        mod = tvm.transform.Sequential(_fuse_passes(tvm_target, options or DEFAULT_OPTIONS))(mod)
        stats.kernels = len(_primfuncs(mod))
        if database is not None:
            mod, stats.tuned = _apply_records(mod, database)
        fused = _primfuncs(mod)  # FLOPs of the unpacked kernels, under their final names
        if target.kind == "llvm":
            # defaults for the rest; already-scheduled kernels are left alone
            mod = apply_default_schedules(mod, tvm_target)
            mod = _nan_propagating(mod)  # every kernel, tuned ones too
        funcs = _primfuncs(mod)
        scheduled = {n for n, f in funcs.items() if _is_scheduled(f)}
        stats.default_scheduled = len(scheduled) - stats.tuned
        stats.unscheduled = sorted(set(funcs) - scheduled)
        if finalize:
            mod = tvm.transform.Sequential(
                cpu_generic.dataflow_lower_passes(tvm_target)
                + cpu_generic.finalize_passes(tvm_target)
            )(mod)
        stats.kernel_info = kernel_info(fused, _primfuncs(mod))
    return mod, stats


def build(mod, target: Target, database: Any = None,
          options: LowerOptions | None = None) -> BuildResult:
    """Build ``mod`` for ``target``; ``database`` is a MetaSchedule database or None;
    ``options`` switches the optional rewrites (CPU targets).

    Raises
    ------
    CompileError
        When TVM fails to lower or generate code; the message keeps TVM's last line.
    """
    declare_vectorizable()  # isnan/nearbyint loops stay vectorized (vector_ops)

    try:
        if target.kind == "cuda":
            # TVM's CUDA pipeline: legalize, fuse, DLight GPU schedules, lower
            tvm_target = target.tvm_target()
            with tvm_target, pass_context(target):
                lowered = relax.pipeline.get_default_pipeline(tvm_target)(mod)
                ex = tvm.compile(lowered, target=tvm_target, relax_pipeline=None)
            funcs = _primfuncs(lowered)
            stats = LowerStats(kernels=len(funcs))
            stats.default_scheduled = sum(_is_scheduled(f) for f in funcs.values())
            # TVM's pipeline schedules as it lowers: only GPU-scheduled TIR is left, whose
            # thread tiles the FLOP estimate over-counts (7x on a small conv), so none
            stats.kernel_info = kernel_info(funcs, funcs, unattributed="default rule: DLight",
                                            count_flops=False)
        else:
            lowered, stats = lower_cpu(mod, target, database, options=options)
            with pass_context(target):
                ex = tvm.compile(lowered, target=target.tvm_target(), relax_pipeline=None)
    except CompileError:
        raise
    except Exception as err:  # TVM raises many types; keep the message, drop the trace
        raise CompileError(f"TVM failed to build for '{target}': {_last_line(err)}") from err
    logger.info("built %d kernels for %s (%d tuned, %d default-scheduled, %d unscheduled)",
                stats.kernels, target, stats.tuned, stats.default_scheduled,
                len(stats.unscheduled))
    return BuildResult(executable=ex, target=target, stats=stats)


def _last_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:400]


def export_library(executable: Any, target: Target, path: Path) -> None:
    """Write the executable as a shared library linked by the target's compiler."""
    import shutil

    from tvm.support import cc

    path = Path(path)
    if target.kind == "cuda":
        executable.export_library(str(path))
        return
    if target.cross_cc:
        if shutil.which(target.cross_cc) is None:
            raise CompileError(
                f"cross compiler '{target.cross_cc}' for {target.triple} not found; install "
                f"Debian's g++-{target.cross_cc.rsplit('-', 1)[0]} (see README, Targets)")
        executable.export_library(str(path), fcompile=cc.cross_compiler(target.cross_cc))
    else:
        executable.export_library(str(path))
