"""Command-line flags of the compression passes and the lowering, turned into
:class:`compiler.pipeline.CompressionOptions` (the pipeline's order lives in
:mod:`compiler.pipeline`) and :class:`compiler.lower.options.LowerOptions`."""

from __future__ import annotations

import argparse

from compiler.data import load_npz
from compiler.lower.options import LowerOptions
from compiler.pipeline import PRUNE_METHODS, CompressionOptions


def add_lowering_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the lowering switches (recorded in the artifact's manifest)."""
    parser.add_argument("--disable-rewrite", metavar="NAME[,NAME]", action="append",
                        default=[], help="leave out optional graph rewrites of the lowering: "
                        f"{', '.join(LowerOptions.rewrite_names())} (repeatable)")


def lower_options_from_args(args: argparse.Namespace) -> LowerOptions:
    """The lowering options for ``--disable-rewrite`` (an unknown name is an error)."""
    names = [n for item in (args.disable_rewrite or []) for n in item.split(",")]
    return LowerOptions.disabling(names)


def sparsity_arg(text: str) -> float | str:
    """``--sparsity``: a ratio in [0, 1], ``keep`` or ``auto``."""
    word = text.strip().lower()
    if word in ("keep", "auto"):
        return word
    try:
        ratio = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a ratio in [0, 1], 'keep' or 'auto'") from None
    if not 0.0 <= ratio <= 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {text} is not in [0, 1]")
    return ratio


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
    g.add_argument("--prune-always", action="store_true",
                   help="keep the pruned model even where it runs slower than the unpruned one "
                   "(by default both are timed when the target runs on this machine and "
                   "groups are restored until it is faster)")
    g.add_argument("--no-recover", action="store_true", help="skip the teacher-guided "
                   "least-squares re-fit after pruning / low rank")
    g.add_argument("--low-rank", metavar="SPEC", help="low-rank factorization: energy=0.95, "
                   "rank=64 or ratio=0.25")
    g.add_argument("--sparsity", type=sparsity_arg, metavar="RATIO|keep|auto",
                   help="weight sparsity in [0, 1] compiled into sparse kernels where they are "
                   "faster (layers stay dense otherwise); keep: prune nothing, compile the "
                   "zeros the weights already have; auto: a ratio per layer from its weights")
    g.add_argument("--sparse-block", default="auto", metavar="BLOCK",
                   help="sparsity pattern: RxC blocks (1x4, 4x1, 8x1, 16x1), N:M (2:4, 1:4), "
                   "none (unstructured) or auto (a block of the target's vector width)")
    g.add_argument("--quantize", choices=["int8", "int8-dynamic", "fp16"],
                   help="int8 (static, calibrated on --calib), int8-dynamic (activation scales "
                   "at run time, for MatMul/Gemm), or fp16 weights")
    g.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"],
                   default="minmax", help="activation range observer for --quantize int8")
    g.add_argument("--quantize-always", action="store_true",
                   help="keep the quantized model even where it runs slower than the float "
                   "one (by default the float model is kept then: timed here when the target "
                   "runs on this machine, else by the target's cost model; the manifest's "
                   "quantize report says which and why)")


def options_from_args(args: argparse.Namespace) -> CompressionOptions:
    """The compression options for the flags given (calibration read once, unsplit)."""
    return CompressionOptions(
        prune=args.prune, prune_method=args.prune_method, prune_scope=args.prune_scope,
        recover=not args.no_recover, low_rank=args.low_rank, sparsity=args.sparsity,
        sparse_block=args.sparse_block, quantize=args.quantize,
        calib_method=args.calib_method, quantize_always=args.quantize_always,
        prune_always=args.prune_always,
        calibration=load_npz(args.calib) if args.calib else None)
