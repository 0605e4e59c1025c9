"""Command-line options of the compression passes, turned into pass specs for ``compile``.

Kept apart from ``cli.py`` so every pass's flags live together. The pipeline order is fixed
and deliberate: canonicalize (fold BatchNorm/constants) → prune channels → recover → low rank
→ sparsify → quantize (last: it needs the final weights); each compression that loses accuracy is followed by its teacher-guided recovery
when calibration data is given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .errors import ConfigError
from .pipeline import PassSpec

logger = logging.getLogger(__name__)

PRUNE_METHODS = {"l1": "l1", "l2": "l2", "activation": "mean_activation", "apoz": "apoz",
                 "reconstruction": "reconstruction"}


def add_pass_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the compression flags of ``hwcc compile``."""
    g = parser.add_argument_group("compression passes")
    g.add_argument("--calib", metavar="FILE.npz", help="calibration inputs keyed by input "
                   "name (one sample, or a leading sample axis): activation statistics, "
                   "recovery, quantization")
    g.add_argument("--prune", type=float, metavar="RATIO", help="structured pruning: remove "
                   "this fraction of channels / neurons / heads, in [0, 1)")
    g.add_argument("--prune-method", choices=sorted(PRUNE_METHODS), default=None,
                   help="channel importance (default: reconstruction with --calib, else l1; "
                   "activation, apoz and reconstruction need --calib)")
    g.add_argument("--prune-scope", choices=["global", "per_layer"], default="global",
                   help="rank channels across the model or within each layer")
    g.add_argument("--no-recover", action="store_true", help="skip the teacher-guided "
                   "least-squares re-fit after pruning / low rank")
    g.add_argument("--low-rank", metavar="SPEC", help="low-rank factorization: energy=0.95, "
                   "rank=64 or ratio=0.25")
    g.add_argument("--sparsity", type=float, metavar="RATIO", help="weight sparsity in [0, 1] "
                   "compiled into sparse kernels where they are faster (layers stay dense "
                   "otherwise)")
    g.add_argument("--sparse-block", default="auto", metavar="BLOCK",
                   help="sparsity pattern: RxC blocks (1x4, 4x1, 8x1, 16x1), N:M (2:4, 1:4), "
                   "none (unstructured) or auto (a block of the target's vector width)")
    g.add_argument("--quantize", choices=["int8", "int8-dynamic", "fp16"],
                   help="int8 (static, calibrated on --calib), int8-dynamic (activation scales "
                   "at run time, for MatMul/Gemm), or fp16 weights")
    g.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"],
                   default="minmax", help="activation range observer for --quantize int8")


def load_calibration(path: str, input_specs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Read a calibration ``.npz``; return arrays with a leading sample axis."""
    from .cli import load_npz, split_samples

    feeds, form = split_samples(load_npz(path), input_specs, what=f"calibration file {path}")
    logger.warning("calibration: read %s from %s", form, path)
    return {s.name: np.stack([f[s.name] for f in feeds]) for s in input_specs}


def passes_from_args(args: argparse.Namespace, input_specs: Sequence[Any],
                     capabilities: Any) -> list[PassSpec]:
    """Pass specs, in pipeline order, for the flags given (for a target's capabilities)."""
    lanes = capabilities.fp32_lanes
    calib = load_calibration(args.calib, input_specs) if args.calib else None
    method = args.prune_method or ("reconstruction" if calib is not None else "l1")
    return build_passes(prune=args.prune, prune_method=method,
                        prune_scope=args.prune_scope, recover=not args.no_recover,
                        low_rank=args.low_rank, sparsity=args.sparsity,
                        sparse_block=args.sparse_block, quantize=args.quantize,
                        calib_method=args.calib_method, calibration=calib, lanes=lanes,
                        capabilities=capabilities)


def build_passes(*, prune: float | None = None, prune_method: str = "l1",
                 prune_scope: str = "global", recover: bool = True,
                 low_rank: str | None = None,
                 sparsity: float | None = None, sparse_block: str = "auto",
                 quantize: str | None = None, calib_method: str = "minmax",
                 calibration: Mapping[str, np.ndarray] | None = None,
                 lanes: int = 8, capabilities: Any = None) -> list[PassSpec]:
    """The compression pipeline for the given options (shared by the CLI and search)."""
    specs: list[PassSpec] = []
    wants = any(x is not None for x in (prune, low_rank, sparsity, quantize))
    if not wants:
        return specs
    from passes import CanonicalizeConfig, PruneConfig, RecoverConfig

    specs.append(PassSpec("canonicalize", CanonicalizeConfig()))
    if prune is not None:
        importance = PRUNE_METHODS[prune_method]
        if importance in ("mean_activation", "apoz", "reconstruction") and calibration is None:
            raise ConfigError(f"--prune-method {prune_method} needs calibration data (--calib)")
        specs.append(PassSpec("prune_channels", PruneConfig(
            ratio=prune, importance=importance, scope=prune_scope, multiple_of=lanes,
            calibration=calibration)))
        if recover and calibration is not None and prune > 0:
            specs.append(PassSpec("recover", partial(RecoverConfig, calibration=calibration),
                                  teacher_from="prune_channels"))
        elif recover and prune > 0:
            logger.warning("no --calib given: pruning without teacher-guided recovery")
    if low_rank is not None:
        from passes.low_rank import low_rank_config_from_arg

        specs.append(PassSpec("low_rank", low_rank_config_from_arg(
            low_rank, calibration=calibration if recover else None, multiple_of=lanes)))
    if sparsity is not None:
        from passes.sparsify import sparsify_config_from_args

        block = f"{max(1, lanes // 2)}x1" if sparse_block == "auto" else sparse_block
        specs.append(PassSpec("sparsify", sparsify_config_from_args(
            sparsity, block, calibration=calibration if recover else None, lanes=lanes)))
    if quantize is not None:
        from passes.quantize import quantize_config_from_args

        if quantize == "int8" and calibration is None:
            raise ConfigError("--quantize int8 calibrates activation ranges: give --calib "
                              "FILE.npz (or use --quantize int8-dynamic)")
        specs.append(PassSpec("quantize", quantize_config_from_args(
            quantize, calibration, calib_method, capabilities)))
    return specs


def first_sample(specs: Sequence[PassSpec]) -> dict[str, np.ndarray] | None:
    """The first calibration sample carried by any pass config (for verification)."""
    for spec in specs:
        cfg = spec.config
        calib = getattr(cfg, "calibration", None) or getattr(
            getattr(cfg, "keywords", {}), "get", lambda _k: None)("calibration")
        if calib:
            return {k: np.asarray(v[0]) for k, v in calib.items()}
    return None
