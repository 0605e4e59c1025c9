"""The Python API: ``compile`` an ONNX model for a target into an artifact directory."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
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

from .data import stack_samples
from .embedded import compile as embedded_compile
from .embedded import graph as graph_io
from .embedded import tune as embedded_tune
from .embedded.compile import build_embedded
from .embedded.compile import integer_graph as embedded_integer_graph
from .embedded.tune import TileRecords
from .errors import CompileError, ConfigError
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
    if tgt.family == "embedded":
        return _compile_embedded(imported, tgt, compression, passes, output_dir, tuning_log,
                                 verify)

    # the quantize pass keeps the float model where it is faster, and pruning is never slower
    # than the unpruned model: timed here when the target runs on this machine, else the
    # target's cost model decides (quantize) or it is not checked (prune)
    # (with the tuning records the build uses: the float model as `hwcc compile` makes it)
    database, db_path = _open_database(tuning_log, tgt)
    timer = None
    timed = compression.quantize is not None or (bool(compression.prune)
                                                 and not compression.prune_always)
    if timed and tgt.kind == "llvm" and tgt.runs_on_this_machine():
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


def _compile_embedded(imported: Any, tgt: Target, compression: CompressionOptions,
                      passes: Sequence[PassSpec | Any], output_dir: str | Path | None,
                      tuning_log: str | Path | None | bool, verify: bool) -> Artifact:
    """The embedded target: the compression passes but quantize, then the integer-only
    lowering to standalone C (:mod:`compiler.embedded`), which quantizes every tensor itself
    (the CPU quantize pass keeps float between layers; the device has none)."""
    quantized = has_qdq(imported.mod)
    float_opts = dataclasses.replace(compression, quantize=None)
    if quantized:  # its own scales (symmetric int8 QDQ); calibration only fills gaps
        if float_opts.wanted or compression.quantize not in (None, "int8"):
            raise ConfigError("an already-quantized (QDQ) model compiles for the embedded "
                              "target as it is: --prune, --sparsity, --low-rank and "
                              "--quantize other than int8 do not apply")
    elif compression.quantize != "int8" or compression.calibration is None:
        raise ConfigError("the embedded target runs int8 only, calibrated: add --quantize int8 "
                          "--calib FILE.npz (samples of the model's input), or give a model "
                          "quantized to symmetric int8 QDQ")
    pipeline = [PassSpec("canonicalize"), *float_opts.passes(imported.inputs, tgt.capabilities),
                *passes]
    mod, pass_reports = run_passes(imported.mod, pipeline)
    calib = None
    if compression.calibration is not None:
        calib = stack_samples(compression.calibration, imported.inputs)
    records = None
    if tuning_log is not False:
        # like a CPU target's --tune-log: the folder of the records themselves
        records = TileRecords(Path(tuning_log) if tuning_log not in (None, True)
                              else embedded_tune.log_dir(tgt.accelerator))
    built = build_embedded(mod, calib, tgt.accelerator, records)
    pass_reports.append({"name": "integerize", "report": {
        "mode": "int8", "scheme": "symmetric per-tensor activations, per-channel weights, "
        "fixed-point requantization", "layers": len(built.graph.layers),
        "scales": (f"{built.report['scales_from_model']} from the model's QDQ pairs"
                   if quantized else "calibrated")}})
    manifest = _manifest_base(imported, tgt, pass_reports)
    e = built.report
    manifest.update({
        "embedded": {**e, "tile_records": str(records.path) if records else None},
        "kernels": {"kernels": e["conv_layers"], "tuned": e["tuned_layers"],
                    "default_scheduled": e["conv_layers"] - e["tuned_layers"],
                    "unscheduled": [], "tuning_log": str(records.path) if records else None},
        "kernel_info": {},
        "compressed": {"params": int(sum(lay.params["weight"].size for lay in
                                          built.graph.layers if lay.kind == "conv")),
                       "weight_bytes": e["weight_bytes"]},
        "library": "model.c",
        "ir": "TVM Relax (tvm.relax.frontend.onnx) -> hwcc integer graph -> C99",
    })
    writers: dict[str, Callable[[Path], Any]] = {
        name: (lambda p, text=text: p.write_text(text)) for name, text in built.files.items()}
    writers[package.SOURCE_MODEL] = lambda p: p.write_bytes(
        imported.onnx_model.SerializeToString())
    writers[embedded_compile.GRAPH_JSON] = lambda p: graph_io.save_json(built.graph, p)
    writers[embedded_compile.GRAPH_PARAMS] = lambda p: graph_io.save_params(built.graph, p)
    if verify:
        if calib is not None:
            samples = [{s.name: calib[s.name][i] for s in imported.inputs}
                       for i in range(min(64, len(next(iter(calib.values())))))]
            what = f"{len(samples)} calibration samples"
        else:
            samples = [random_inputs(imported.inputs, seed=i) for i in range(16)]
            what = f"{len(samples)} seeded random inputs"
        manifest["verification"] = _verify_embedded(manifest, writers, imported.onnx_model,
                                                    samples, what)
    out = Path(output_dir) if output_dir is not None else Path(
        tempfile.mkdtemp(prefix="hwcc-artifact-"))
    path = package.write_artifact(out, manifest, writers)
    logger.info("wrote %s", path)
    return Artifact.load(path)


def tune_embedded(model: str | Path | onnx.ModelProto, target: str | Target = "embedded", *,
                  trials: int = 200, log_dir: str | Path | None = None,
                  input_shapes: Mapping[str, Sequence[int]] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Tune the tiles of every conv layer of ``model`` for an embedded target against the
    simulator; records go to ``<log_dir or tuning_logs>/embedded/<accelerator>/tiles.json``
    after each layer (an interrupt keeps them: the report says ``stopped``).

    Tiles depend on the layers' shapes only, so the model is lowered with seeded random
    calibration inputs here."""
    tgt = parse_target(target)
    if tgt.family != "embedded":
        raise ConfigError(f"tune_embedded takes an embedded target; got '{tgt}'")
    imported = frontend.load_model(model, input_shapes)
    mod, _ = run_passes(imported.mod, [PassSpec("canonicalize")])
    feeds = [random_inputs(imported.inputs, seed=i) for i in range(4)]
    calib = {s.name: np.stack([f[s.name] for f in feeds]) for s in imported.inputs}
    graph, _ = embedded_integer_graph(mod, calib)
    records = TileRecords(embedded_tune.log_dir(tgt.accelerator,
                                                Path(log_dir) if log_dir else None))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="workload", desc="tuning tiles")
    rows: list[dict[str, Any]] = []
    stopped = None
    t0 = time.perf_counter()
    try:
        embedded_tune.tune_graph(graph, tgt.accelerator, records, trials=trials,
                                 progress=partial(_advance, bar) if bar else None, out=rows)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    before = sum(r["default_cycles"] for r in rows)
    after = sum(r["cycles"] for r in rows)
    return {"model": imported.source, "target": str(tgt), "log_dir": str(records.folder),
            "records": str(records.path), "workloads": rows, "trials_per_layer": trials,
            "before_cycles": before, "after_cycles": after,
            "speedup": before / after if after else None, "stopped": stopped,
            "seconds": time.perf_counter() - t0}


def _advance(bar: Any, done: int, total: int) -> None:
    bar.total = total
    bar.n = done
    bar.refresh()


def _verify_embedded(manifest: dict[str, Any], writers: dict[str, Callable[[Path], Any]],
                     model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], what: str
                     ) -> dict[str, Any]:
    """Run the staged artifact's C on the simulator over ``samples`` and compare with the
    ONNX model (onnxruntime / onnx.reference): the int8 model's error."""
    staging = tempdirs.mkdtemp("hwcc-verify-")
    try:
        art = Artifact.load(package.write_artifact(staging / "a", manifest, writers))
        backend = evaluate.reference_backend()
        ours, ref = [], []
        for feeds in samples:
            ours.append(art.run(feeds)[art.outputs[0].name])
            ref.append(evaluate.reference_outputs(model, feeds, backend)[0])
        report = evaluate.compare([np.concatenate(ours)], [np.concatenate(ref)])
        report.update(verified=True, reference=backend, inputs=what, simulator=True)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _manifest_base(imported: Any, tgt: Target, pass_reports: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    """Manifest fields every target shares."""
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
            "cpu_features": list(tgt.cpu_features),
            "capabilities": tgt.capabilities.to_dict(),
        },
        "passes": pass_reports,
        "source_model": package.SOURCE_MODEL,
        "versions": package.tool_versions(),
    }


def _manifest(imported: Any, tgt: Target, pass_reports: list[dict[str, Any]], mod: Any,
              built: Any, db_path: Path | None, options: LowerOptions) -> dict[str, Any]:
    """The artifact's manifest, less the file hashes and the verification. The target's
    ``cpu_features`` (``-mcpu``'s included) are what Artifact.load and hwcc_run check the CPU
    against, refusing one that lacks a feature instead of dying with SIGILL."""
    manifest = _manifest_base(imported, tgt, pass_reports)
    manifest["target"]["tvm_target"] = tgt.tvm_target_dict()
    manifest.update({
        "lowering": options.to_dict(),
        "compressed": stats.relax_weights(mod),
        "kernels": {**built.stats.to_dict(), "tuning_log": str(db_path) if db_path else None},
        # per kernel name: flops per call, ops (float / int8), how it was scheduled; read by
        # ``hwcc bench --per-layer`` (compiler.artifact.profile)
        "kernel_info": built.stats.kernel_info,
        "library": package.LIBRARY,
        "ir": "TVM Relax (tvm.relax.frontend.onnx)",
    })
    return manifest


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
