"""The Python API: ``compile`` an ONNX model for a target into an artifact directory."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler import evaluate, frontend, lower, stats, tempdirs
from compiler.artifact import package
from compiler.artifact.runtime import Artifact, random_inputs, read_manifest
from compiler.tuning.database import open_database
from passes.quantize import QuantizeConfig, has_qdq
from targets import Target, parse_target

from .errors import CompileError
from .lower.options import LowerOptions
from .lower.timing import time_module
from .pipeline import CompressionOptions, PassSpec, run_passes

logger = logging.getLogger(__name__)
#: ``extra`` of the warnings that the CLI's compile summary prints itself (so it filters
#: them out of the log: one line, not two).
SUMMARY = {"hwcc_summary": True}


def compile(
    model: str | Path | onnx.ModelProto,
    target: str | Target = "host",
    *,
    output_dir: str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    compression: CompressionOptions | None = None,
    passes: Sequence[PassSpec | Any] = (),
    lower_options: LowerOptions | None = None,
    tuning_log: str | Path | None | bool = None,
    verify: bool = True,
    verify_inputs: Mapping[str, np.ndarray] | None = None,
) -> Artifact:
    """Compile an ONNX model for ``target`` and write an artifact directory.

    The whole flow, top to bottom: read and import the model (once), parse the target (once),
    run the compression passes, lower and build with the target's schedules (and tuning
    records), write the artifact atomically, verified first when the target runs here.

    Parameters
    ----------
    model
        Path to an ONNX file or an ``onnx.ModelProto``.
    target
        Target triple string (see ``hwcc targets``) or a :class:`targets.Target`.
    output_dir
        Where to write the artifact (a fresh temporary directory when None).
    input_shapes
        Pins dynamic input dimensions by input name.
    compression
        What to compress (the flags of ``hwcc compile``); its passes run first, in the
        pipeline's order (:mod:`compiler.pipeline`). Its calibration data's first sample is
        what the artifact is verified on, unless ``verify_inputs`` is given.
    passes
        Further passes, as :class:`compiler.pipeline.PassSpec` or TVM module passes, run in
        order after those of ``compression``.
    lower_options
        Switches of the lowering's optional rewrites (default: all on); recorded in the
        manifest.
    tuning_log
        A MetaSchedule database directory (``tuning_logs/<device>/<target>``); None uses the
        default location for this target if it has records; False uses no records.
    verify
        Run the compiled module (when the target runs here) on ``verify_inputs`` (or seeded
        random inputs) and compare with onnxruntime / onnx.reference; stored in the manifest
        (``verification``, with ``verified``). For this architecture with CPU features this
        host lacks, the module is compiled and written but not run: ``verification`` says
        ``{"verified": false, "skipped": "this host lacks avx512fp16", ...}`` and a warning
        is logged.

    Returns
    -------
    Artifact
        The written artifact; ``run``/``benchmark`` load it on first use.
    """
    tgt = parse_target(target)
    options = lower_options or LowerOptions()
    compression = compression or CompressionOptions()
    imported = frontend.load_model(model, input_shapes)

    # the quantize pass keeps the float model where it is faster: timed here when the target
    # runs on this machine, else the target's cost model decides
    # (with the tuning records the build uses: the float model as `hwcc compile` makes it)
    database, db_path = _open_database(tuning_log, tgt)
    timer = None
    if compression.quantize is not None and tgt.kind == "llvm" and tgt.runs_on_this_machine():
        timer = partial(time_module, target=tgt, options=options, database=database)
    pipeline = [*_import_passes(imported.mod),
                *compression.passes(imported.inputs, tgt.capabilities, timer=timer), *passes]
    mod, pass_reports = run_passes(imported.mod, pipeline) if pipeline else (imported.mod, [])

    built = lower.build(mod, tgt, database=database, options=options)

    manifest = _manifest(imported, tgt, pass_reports, mod, built, db_path, options)
    writers = _writers(imported, tgt, built)
    missing = tgt.missing_host_features()
    if verify and missing:
        # compiled for a CPU this one is not: executing it here would be a SIGILL
        reason = f"this host lacks {', '.join(missing)}"
        logger.warning("not verified: %s", reason, extra=SUMMARY)
        manifest["verification"] = {"verified": False, "skipped": reason,
                                    "missing_features": list(missing)}
    elif verify and tgt.runs_on_this_machine():
        if verify_inputs is None:
            verify_inputs = compression.first_sample(imported.inputs)
        manifest["verification"] = _verify_staged(manifest, writers, imported.onnx_model,
                                                  verify_inputs)
    out = Path(output_dir) if output_dir is not None else Path(
        tempfile.mkdtemp(prefix="hwcc-artifact-"))
    path = package.write_artifact(out, manifest, writers)
    logger.info("wrote %s", path)
    return Artifact(path, read_manifest(path))


def _manifest(imported: Any, tgt: Target, pass_reports: list[dict[str, Any]], mod: Any,
              built: Any, db_path: Path | None, options: LowerOptions) -> dict[str, Any]:
    """The artifact's manifest, less the file hashes and the verification."""
    return {
        "model": {
            "source": imported.source,
            "name": imported.onnx_model.graph.name or Path(imported.source).stem,
            "opset": imported.opset,
            "nodes": len(imported.onnx_model.graph.node),
            "sha256": _sha256_bytes(imported.onnx_model.SerializeToString()),
            **stats.onnx_weights(imported.onnx_model),
        },
        "inputs": [s.to_dict() for s in imported.inputs],
        "outputs": [s.to_dict() for s in imported.outputs],
        "target": {
            "target": str(tgt),
            "triple": tgt.triple,
            "kind": tgt.kind,
            "machine": tgt.machine,
            "arch": tgt.arch,
            # the -mattr features the module uses: Artifact.load and hwcc_run refuse a CPU
            # lacking one (instead of dying with SIGILL)
            "cpu_features": list(tgt.cpu_features),  # -mcpu's features included
            "tvm_target": tgt.tvm_target_dict(),
            "capabilities": tgt.capabilities.to_dict(),
        },
        "passes": pass_reports,
        "lowering": options.to_dict(),
        "compressed": stats.relax_weights(mod),
        "kernels": {**built.stats.to_dict(), "tuning_log": str(db_path) if db_path else None},
        # per kernel name: flops per call, ops (float / int8), how it was scheduled; read by
        # ``hwcc bench --per-layer`` (compiler.artifact.profile)
        "kernel_info": built.stats.kernel_info,
        "library": package.LIBRARY,
        "source_model": package.SOURCE_MODEL,
        "versions": package.tool_versions(),
        "ir": "TVM Relax (tvm.relax.frontend.onnx)",
    }


def _writers(imported: Any, tgt: Target, built: Any) -> dict[str, Callable[[Path], Any]]:
    """File name -> function writing it, for every file of the artifact."""
    writers: dict[str, Callable[[Path], Any]] = {
        package.LIBRARY: lambda p: lower.export_library(built.executable, tgt, p),
        package.SOURCE_MODEL: lambda p: p.write_bytes(imported.onnx_model.SerializeToString()),
    }
    if tgt.kind in _SOURCE_FILES:
        source = _kernel_source(built.executable, tgt.kind)
        writers[_SOURCE_FILES[tgt.kind]] = lambda p: p.write_text(source)
    return writers


def _verify_staged(manifest: dict[str, Any], writers: dict[str, Callable[[Path], Any]],
                   model: onnx.ModelProto, inputs: Mapping[str, np.ndarray] | None
                   ) -> dict[str, Any]:
    """Write a staging copy of the artifact, load it and compare it with the reference, before
    the artifact is published."""
    staging = tempdirs.mkdtemp("hwcc-verify-")
    try:
        staged = package.write_artifact(staging / "a", manifest, writers)
        return _verify(Artifact.load(staged), model, inputs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_passes(mod: Any) -> list[PassSpec]:
    """Passes every model of a kind needs: a QDQ model (quantized by another tool) has its
    dequantize → conv/matmul → quantize chains rewritten to integer kernels."""

    if has_qdq(mod):
        # optional: a model with Q/DQ nodes but no quantized conv/matmul stays as it is
        return [PassSpec("quantize", QuantizeConfig(mode="qdq"), optional=True)]
    return []


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _verify(art: Artifact, model: onnx.ModelProto,
            inputs: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    feeds = dict(inputs) if inputs is not None else random_inputs(art.inputs, seed=0)
    ours = art.run(feeds)
    backend = evaluate.reference_backend()
    try:
        ref = evaluate.reference_outputs(model, feeds, backend)
    except Exception as err:  # noqa: BLE001 - the reference may not run every model we compile
        msg = str(err).strip().splitlines()
        logger.warning("agreement not checked: %s could not run the model", backend,
                       extra=SUMMARY)
        return {"verified": False, "reference": backend, "skipped": f"{backend} failed: "
                f"{msg[-1][:200] if msg else type(err).__name__}"}
    report = evaluate.compare([ours[s.name] for s in art.outputs], ref)
    report["verified"] = True
    report["reference"] = backend
    report["inputs"] = "given" if inputs is not None else "random (seed 0)"
    return report


def _open_database(tuning_log: str | Path | None | bool, tgt: Target
                   ) -> tuple[Any, Path | None]:

    if tuning_log is False or tgt.kind != "llvm":
        return None, None

    return open_database(tuning_log, tgt)


# Targets whose generated kernel source is saved in the artifact, and under which name.
_SOURCE_FILES = {"cuda": "kernels.cu", "c": "kernels.c"}


def _kernel_source(executable: Any, kind: str) -> str:
    """Source of every ``kind`` module imported (at any depth) by the built executable."""
    sources: list[str] = []

    def walk(m: Any) -> None:
        if getattr(m, "kind", "") == kind:
            sources.append(m.inspect_source())
        for sub in getattr(m, "imports", ()):
            walk(sub)

    walk(executable.mod if hasattr(executable, "mod") else executable)
    if not sources:

        raise CompileError(f"the {kind} build produced no {kind} kernels")
    return "\n".join(sources)
