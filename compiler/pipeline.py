"""The compression pipeline that runs before lowering: which passes, in which order, with
which configs, and running them.

Passes are named in :data:`PASSES` (name → factory taking the pass's config object), so the
CLI and the API can ask for them by name; an unknown name is an error listing the known ones.
:func:`build_passes` is the one place that orders them, from user-level options:

    canonicalize → prune_channels → recover → low_rank → sparsify → quantize

canonicalize first (BatchNorm and constants folded, so the others see plain conv/dense),
recovery right after the pruning it repairs (its teacher is the model before pruning), and
quantize last (it needs the final weights). Each pass runs between two well-formedness checks,
so broken IR is caught at the pass that broke it. A pass object may expose ``report`` (a dict)
after it ran; it goes to the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from passes import (
    Canonicalize,
    CanonicalizeConfig,
    LowRank,
    LowRankConfig,
    PruneChannels,
    PruneConfig,
    Quantize,
    Recover,
    RecoverConfig,
    Sparsify,
)
from passes.low_rank import low_rank_config_from_arg
from passes.quantize import quantize_config_from_args
from passes.sparsify import sparsify_config_from_args

from .data import split_samples, stack_samples
from .errors import CompileError, ConfigError, HwccError

logger = logging.getLogger(__name__)

#: name -> factory(config) -> tvm.transform.Pass, in pipeline order
PASSES: dict[str, Callable[[Any], Any]] = {
    "canonicalize": Canonicalize,
    "prune_channels": PruneChannels,
    "recover": Recover,
    "low_rank": lambda cfg: LowRank(cfg or LowRankConfig(energy=0.95)),
    "sparsify": Sparsify,
    "quantize": Quantize,
}

#: the CLI's --prune-method names -> PruneConfig.importance
PRUNE_METHODS = {"l1": "l1", "l2": "l2", "activation": "mean_activation", "apoz": "apoz",
                 "reconstruction": "reconstruction"}


@dataclass(frozen=True)
class PassSpec:
    """A pass asked for by name, with its config object (None for the pass's defaults).

    ``teacher_from`` names an earlier pass of the same pipeline: the module as it was just
    before that pass ran is put in the config's ``teacher`` field, or passed as ``teacher=`` to
    ``config`` when it is a factory such as ``functools.partial(RecoverConfig, ...)``
    (teacher-guided recovery re-fits compressed layers against the model before compression).
    """

    name: str
    config: Any = None
    teacher_from: str | None = None
    optional: bool = False  # a ConfigError (nothing to do) skips the pass instead of failing

    def build(self, snapshots: dict[str, Any] | None = None) -> Any:
        if self.name not in PASSES:
            raise ConfigError(f"unknown pass '{self.name}'; known: {', '.join(sorted(PASSES))}")
        config = self.config
        if self.teacher_from is not None:
            if not snapshots or self.teacher_from not in snapshots:
                raise ConfigError(f"pass '{self.name}' takes its teacher from pass "
                                  f"'{self.teacher_from}', which did not run before it")
            teacher = snapshots[self.teacher_from]
            # config: a dataclass with a ``teacher`` field, or a factory taking ``teacher=``
            config = (dataclasses.replace(config, teacher=teacher)
                      if dataclasses.is_dataclass(config) else config(teacher=teacher))
        return PASSES[self.name](config)


@dataclass(frozen=True)
class CompressionOptions:
    """What a user asks of the compression passes (the flags of ``hwcc compile``).

    Attributes
    ----------
    prune : float or None
        Fraction of channels / neurons / heads to remove, in [0, 1); None: no pruning.
    prune_method : str or None
        A key of :data:`PRUNE_METHODS`; None: ``reconstruction`` with calibration data, else
        ``l1``.
    prune_scope : str
        ``global`` (rank channels across the model) or ``per_layer``.
    recover : bool
        Teacher-guided re-fit after pruning / low rank / sparsity (needs calibration data).
    low_rank : str or None
        ``energy=0.95``, ``rank=64`` or ``ratio=0.25`` (see :mod:`passes.low_rank`).
    sparsity : float, str or None
        Weight sparsity in [0, 1], ``"keep"`` (the zeros the weights have, nothing pruned) or
        ``"auto"`` (a ratio per layer from its weights); None: dense.
    sparse_block : str
        ``RxC``, ``N:M``, ``none`` or ``auto`` (a block of half the target's vector lanes).
    quantize : str or None
        ``int8``, ``int8-dynamic`` or ``fp16``.
    calib_method : str
        Activation range observer for static int8.
    prune_always : bool
        Keep the pruned model even where it is slower than the unpruned one (not timed);
        default False: never slower, timed when the target runs here.
    quantize_always : bool
        Keep the quantized model even where it is slower than float (measured when the target
        runs here, else the target's cost model); default False: never slower than float.
    calibration : mapping or None
        Calibration arrays keyed by input name, one sample or a leading sample axis (as read
        from an ``.npz``); split against the model's inputs when the passes are built.
    """

    prune: float | None = None
    prune_method: str | None = None
    prune_scope: str = "global"
    recover: bool = True
    low_rank: str | None = None
    sparsity: float | str | None = None
    sparse_block: str = "auto"
    quantize: str | None = None
    calib_method: str = "minmax"
    quantize_always: bool = False
    prune_always: bool = False
    calibration: Mapping[str, np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.prune_method is not None and self.prune_method not in PRUNE_METHODS:
            raise ConfigError(f"unknown prune method '{self.prune_method}'; known: "
                              f"{', '.join(sorted(PRUNE_METHODS))}")

    @property
    def wanted(self) -> bool:
        """Whether any compression is asked for."""
        return any(x is not None for x in (self.prune, self.low_rank, self.sparsity,
                                           self.quantize))

    def passes(self, input_specs: Sequence[Any], capabilities: Any,
               timer: Callable[[Any], float] | None = None) -> list[PassSpec]:
        """The pass specs, in pipeline order, for a model's inputs and a target (``timer``:
        module -> ms on that target, when it runs here)."""
        if not self.wanted:
            return []
        calib = None
        if self.calibration is not None:
            calib = stack_samples(self.calibration, input_specs)
        method = self.prune_method or ("reconstruction" if calib is not None else "l1")
        return build_passes(prune=self.prune, prune_method=method,
                            prune_scope=self.prune_scope, recover=self.recover,
                            low_rank=self.low_rank, sparsity=self.sparsity,
                            sparse_block=self.sparse_block, quantize=self.quantize,
                            calib_method=self.calib_method, calibration=calib,
                            lanes=capabilities.fp32_lanes, capabilities=capabilities,
                            quantize_always=self.quantize_always, timer=timer,
                            prune_always=self.prune_always)

    def first_sample(self, input_specs: Sequence[Any]) -> dict[str, np.ndarray] | None:
        """The first calibration sample (real data to verify the compiled module on)."""
        if self.calibration is None:
            return None
        feeds, _ = split_samples(dict(self.calibration), input_specs, what="calibration data")
        return feeds[0]


def build_passes(*, prune: float | None = None, prune_method: str = "l1",
                 prune_scope: str = "global", recover: bool = True,
                 low_rank: str | None = None,
                 sparsity: float | str | None = None, sparse_block: str = "auto",
                 quantize: str | None = None, calib_method: str = "minmax",
                 calibration: Mapping[str, np.ndarray] | None = None,
                 lanes: int = 8, capabilities: Any = None, quantize_always: bool = False,
                 timer: Callable[[Any], float] | None = None,
                 prune_always: bool = False) -> list[PassSpec]:
    """The compression pipeline for the given options (shared by the CLI, API and search).

    ``calibration`` holds arrays with a leading sample axis; ``lanes`` is the target's fp32
    vector lanes (kept channel counts are multiples of it). The quantize pass keeps the float
    model where it is faster (``timer``: module -> ms on the target; None: the cost model),
    unless ``quantize_always``; with a ``timer`` the pruning pass never returns a model slower
    than the unpruned one, unless ``prune_always``.
    """
    specs: list[PassSpec] = []
    if not any(x is not None for x in (prune, low_rank, sparsity, quantize)):
        return specs
    # first: BatchNorm and constants folded, so every later pass sees plain conv/dense layers
    specs.append(PassSpec("canonicalize", CanonicalizeConfig()))
    if prune is not None:
        importance = PRUNE_METHODS[prune_method]
        if importance in ("mean_activation", "apoz", "reconstruction") and calibration is None:
            raise ConfigError(f"--prune-method {prune_method} needs calibration data (--calib)")
        specs.append(PassSpec("prune_channels", PruneConfig(
            ratio=prune, importance=importance, scope=prune_scope, multiple_of=lanes,
            calibration=calibration, timer=None if prune_always else timer)))
        # right after pruning: its teacher is the model as it was before pruning
        if recover and calibration is not None and prune > 0:
            specs.append(PassSpec("recover", partial(RecoverConfig, calibration=calibration),
                                  teacher_from="prune_channels"))
        elif recover and prune > 0:
            logger.warning("no --calib given: pruning without teacher-guided recovery")
    if low_rank is not None:
        specs.append(PassSpec("low_rank", low_rank_config_from_arg(
            low_rank, calibration=calibration if recover else None, multiple_of=lanes)))
    if sparsity is not None:
        block = f"{max(1, lanes // 2)}x1" if sparse_block == "auto" else sparse_block
        specs.append(PassSpec("sparsify", sparsify_config_from_args(
            sparsity, block, calibration=calibration if recover else None, lanes=lanes)))
    # last: quantization needs the final weights
    if quantize is not None:
        if quantize == "int8" and calibration is None:
            raise ConfigError("--quantize int8 calibrates activation ranges: give --calib "
                              "FILE.npz (or use --quantize int8-dynamic)")
        specs.append(PassSpec("quantize", quantize_config_from_args(
            quantize, calibration, calib_method, capabilities, always=quantize_always,
            timer=timer)))
    return specs


def _config_dict(obj: Any) -> Any:
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.name.startswith("_") or f.name == "teacher" or hasattr(v, "shape") \
                    or hasattr(v, "functions_items"):  # skip arrays and IRModules
                continue
            if isinstance(v, dict) and any(hasattr(x, "shape") for x in v.values()):
                continue
            out[f.name] = v if isinstance(v, (int, float, str, bool, type(None), list,
                                              tuple)) else str(v)
        return out
    return str(cfg)


def run_passes(mod: Any, passes: Sequence[Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Run passes in order with well-formedness checks; return the module and reports."""
    from tvm import relax

    reports: list[dict[str, Any]] = []
    snapshots: dict[str, Any] = {}
    for item in passes:
        pass_obj = item.build(snapshots) if isinstance(item, PassSpec) else item
        name = item.name if isinstance(item, PassSpec) else _pass_name(pass_obj)
        snapshots[name] = mod
        t0 = time.perf_counter()
        before_attrs = _hwcc_attrs(mod)
        try:
            mod = pass_obj(mod)
        except ConfigError as err:
            if not (isinstance(item, PassSpec) and item.optional):
                raise
            logger.info("pass %s skipped: %s", name, err)
            reports.append({"name": name, "skipped": str(err)})
            continue
        except HwccError:
            raise
        except Exception as err:
            raise CompileError(f"pass '{name}' failed: {str(err).strip().splitlines()[-1]}") \
                from err
        if not relax.analysis.check_well_formed(mod):
            raise CompileError(f"pass '{name}' produced an ill-formed Relax module")
        report: dict[str, Any] = {"name": name, "config": _config_dict(pass_obj),
                                  "seconds": round(time.perf_counter() - t0, 3)}
        extra = getattr(pass_obj, "report", None)
        if not isinstance(extra, dict):
            extra = _report_from_attrs(mod, before_attrs)
        if extra:
            report["report"] = extra
        reports.append(report)
        logger.info("pass %s done in %.2f s", name, report["seconds"])
    return mod, reports


def _hwcc_attrs(mod: Any) -> dict[str, str]:
    """``hwcc.*`` attributes of ``main``: where passes leave their JSON reports."""
    attrs = mod["main"].attrs if "main" in [gv.name_hint for gv in mod.get_global_vars()] \
        else None
    if attrs is None:
        return {}
    return {str(k): str(attrs[k]) for k in attrs.keys() if str(k).startswith("hwcc.")}


def _report_from_attrs(mod: Any, before: dict[str, str]) -> dict[str, Any] | None:
    """The report a pass attached to ``main`` (a new or changed ``hwcc.*`` attribute)."""
    import json

    for key, value in _hwcc_attrs(mod).items():
        if before.get(key) != value:
            try:
                data = json.loads(value)
            except ValueError:
                data = value
            return data if isinstance(data, dict) else {"value": data}
    return None


def _pass_name(pass_obj: Any) -> str:
    info = getattr(pass_obj, "info", None)
    return str(getattr(info, "name", type(pass_obj).__name__))
