"""The ``hwcc`` command line: a thin layer over the Python API.

Every command prints what a person wants to read; ``--json`` prints one JSON object instead,
with stable field names. Errors are one line on stderr and a non-zero exit code; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler import api, stats
from compiler.artifact.compare import compare_onnxruntime
from compiler.artifact.package import write_json_atomic
from compiler.artifact.profile import KernelProfile, profile_kernels, short_name, write_chart
from compiler.artifact.runtime import Artifact, read_manifest, use_all_cores, verify_files
from compiler.data import load_npz, save_npz_atomic, split_samples
from compiler.errors import ConfigError, HwccError, RuntimeInputError
from compiler.evaluate import evaluate_artifact
from compiler.frontend import model_opset, parse_input_shapes, read_model, unsupported_nodes
from compiler.sparsity_stats import layer_sparsity
from targets import parse_target, target_table

from . import paths
from .deploy import add_bundle_parser
from .passes import (
    add_lowering_arguments,
    add_pass_arguments,
    lower_options_from_args,
    options_from_args,
)
from .search import add_search_parser
from .tune import add_tune_parser

logger = logging.getLogger("hwcc")

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


# -- helpers ------------------------------------------------------------------------------
def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


# -- commands -----------------------------------------------------------------------------
def cmd_targets(args: argparse.Namespace) -> int:
    rows = target_table()
    host = parse_target("host")
    if args.json:
        _emit_json({"targets": rows, "host": host.to_dict()})
        return EXIT_OK
    w = max(len(r["triple"]) for r in rows)
    print(f"{'triple':<{w}}  {'family':<8} {'runs here':<9} {'compiler':<24} description")
    for r in rows:
        print(f"{r['triple']:<{w}}  {r['family']:<8} {r['runs_here']:<9} "
              f"{r['compiler']:<24} {r['description']}")
    print(f"\nhost = {host}")
    print("syntax: TRIPLE [-mcpu=CPU] [-mattr=+f1,+f2] [-arch=sm_XX] [-cores=N]; "
          "'host' detects this machine")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    shapes = parse_input_shapes(args.input_shape or [])
    compression = options_from_args(args)
    out = args.output or str(paths.default_output(args.model))
    with _summary_warnings_shown(not args.json):
        art = api.compile(args.model, args.target, output_dir=out, input_shapes=shapes,
                          compression=compression, tuning_log=args.tune_log,
                          verify=not args.no_verify,
                          lower_options=lower_options_from_args(args))
    m = art.manifest
    if "embedded" in m:
        return _embedded_summary(args, art)
    latency = None
    v = m.get("verification")
    # timed only where it was verified, i.e. ran: never a module using instructions this
    # CPU lacks (a SIGILL)
    runs_here = v is not None and not art.missing_cpu_features()
    if runs_here and args.bench_repeat > 0:
        latency = art.benchmark(repeat=args.bench_repeat, warmup=3)
    if args.json:
        _emit_json({"artifact": str(art.path), "target": m["target"]["target"],
                    "model": m["model"], "compressed": m["compressed"], "kernels": m["kernels"],
                    "passes": m["passes"], "library_bytes": art.size_bytes,
                    "verification": m.get("verification"), "latency": latency})
        return EXIT_OK
    k = m["kernels"]
    print(f"compiled {m['model']['source']} -> {art.path}")
    print(f"  target       {m['target']['target']}")
    print(f"  model        {m['model']['nodes']} ONNX nodes, {m['model']['params']:,} params, "
          f"{_kib(m['model']['weight_bytes'])} of weights")
    for p in m["passes"]:
        print(f"  pass         {p['name']}: {_pass_summary(p)}")
        speed = (p.get("report") or {}).get("speed")
        if speed:
            print(f"  kept         {_speed_summary(speed)}")
    if m["passes"]:
        print(f"  compressed   {m['compressed']['params']:,} params, "
              f"{_kib(m['compressed']['weight_bytes'])} of weights")
    tuned = f"{k['tuned']} tuned ({k['tuning_log']})" if k["tuning_log"] else "0 tuned"
    print(f"  kernels      {k['kernels']} fused kernels: {tuned}, "
          f"{k['default_scheduled']} with default schedules, {len(k['unscheduled'])} unscheduled")
    print(f"  module       {m['library']}, {_kib(art.size_bytes)}")
    if v and "missing_features" in v:
        print(f"  agreement    not verified: {v['skipped']}")
    elif v and "skipped" in v:
        print(f"  agreement    not checked ({v['skipped']})")
    elif v:
        top1 = f", top-1 agreement {v['top1_agreement']:.1%}" if "top1_agreement" in v else ""
        # the API verifies on the first calibration sample when there is one
        on = "the first calibration sample" if compression.calibration is not None else \
            f"{v['inputs']} inputs"
        print(f"  agreement    max abs err {v['max_abs_err']:.2e}, max rel err "
              f"{v['max_rel_err']:.2e} vs {v['reference']} (float model) on {on}{top1}")
    elif args.no_verify:
        print("  agreement    not checked (--no-verify)")
    else:
        print("  agreement    not checked (the target does not run on this machine)")
    if latency:
        print(f"  latency      {latency['median_ms']:.3f} ms median over {latency['repeat']} "
              f"runs ({latency['threads']} threads)")
    return EXIT_OK


def _embedded_summary(args: argparse.Namespace, art: Any) -> int:
    """What ``hwcc compile`` prints for the embedded target: the C, its memory, its cycles."""
    m = art.manifest
    e = m["embedded"]
    sim = art.simulate() if args.bench_repeat > 0 else None
    if args.json:
        _emit_json({"artifact": str(art.path), "target": m["target"]["target"],
                    "model": m["model"], "compressed": m["compressed"], "passes": m["passes"],
                    "embedded": e, "verification": m.get("verification"),
                    "simulation": sim})
        return EXIT_OK
    a = e["accelerator"]
    convs = [r for r in e["layers"] if r["unit"] == "mac_array"]
    print(f"compiled {m['model']['source']} -> {art.path}")
    print(f"  target       {m['target']['target']}: {a['rows']}x{a['cols']} MAC array, "
          f"{a['spad_kb']} KiB scratchpad, {a['acc_kb']} KiB accumulators, "
          f"{a['dma_bytes']} B/cycle DMA")
    print(f"  model        {m['model']['nodes']} ONNX nodes, {m['model']['params']:,} params, "
          f"{_kib(m['model']['weight_bytes'])} of weights")
    for p in m["passes"]:
        print(f"  pass         {p['name']}: {_pass_summary(p)}")
    print(f"  C            model.c, model.h + hwcc_kernels.c (no heap, no float); "
          f"{len(e['layers'])} integer layers, {len(convs)} on the MAC array "
          f"({e['tuned_layers']} with tuned tiles)")
    print(f"  memory       arena {e['arena_bytes']:,} bytes (peak of live tensors "
          f"{e['peak_live_bytes']:,}), weights {e['weight_bytes']:,} bytes")
    v = m.get("verification")
    if v and v.get("verified"):
        top1 = f", top-1 agreement {v['top1_agreement']:.1%}" if "top1_agreement" in v else ""
        print(f"  agreement    int8 on the simulator vs the ONNX model ({v['reference']}) "
              f"on {v['inputs']}: max abs err {v['max_abs_err']:.3g}{top1}")
    else:
        print("  agreement    not checked (--no-verify)")
    if sim:
        util = sim["conv_utilization"]
        print(f"  cycles       {sim['cycles']:,} simulated cycles; MAC array "
              f"{util:.1%} of its roofline on the conv layers" if util is not None else
              f"  cycles       {sim['cycles']:,} simulated cycles")
    return EXIT_OK


class _InSummary(logging.Filter):
    """Drops the API's warnings that the compile summary prints itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "hwcc_summary", False)


@contextlib.contextmanager
def _summary_warnings_shown(in_summary: bool) -> Iterator[None]:
    """While compiling for the printed summary, leave out of the log the warnings the summary
    repeats (``not verified: this host lacks ...``); with ``--json`` they stay on stderr."""
    if not in_summary:
        yield
        return
    api_logger, flt = logging.getLogger(api.__name__), _InSummary()
    api_logger.addFilter(flt)
    try:
        yield
    finally:
        api_logger.removeFilter(flt)


def _speed_summary(speed: dict[str, Any]) -> str:
    """One line on which model a pass kept (quantized or float, pruned or unpruned), and why."""
    if "kept" not in speed:
        return f"not timed: {speed['decided_by']}"
    line = f"the {speed['kept']} model ({speed['decided_by']}"
    if "float_ms" in speed:
        line += f": quantized {speed['quantized_ms']:.4g} ms, float {speed['float_ms']:.4g} ms"
    if "unpruned_ms" in speed:
        line += f": pruned {speed['pruned_ms']:.4g} ms, unpruned {speed['unpruned_ms']:.4g} ms"
        if speed.get("restored_groups"):
            line += f", {len(speed['restored_groups'])} group(s) left unpruned"
    line += ")"
    if speed["kept"] == "float":
        line += "; --quantize-always keeps the quantized one"
    return line


def _pass_summary(p: dict[str, Any]) -> str:
    if "skipped" in p:
        return f"skipped ({p['skipped']})"
    rep = p.get("report") or {}
    if p.get("name") == "prune_channels" and "achieved" in rep:
        got = rep["achieved"]
        return (f"ratio {rep['ratio']} asked ({rep['importance']}, {rep['scope']}): removed "
                f"{got['params_removed']:.1%} of the parameters, {got['flops_removed']:.1%} of "
                "the conv/matmul FLOPs")
    if p.get("name") == "sparsify" and "sparse_layers" in rep:
        share = rep["nonzero_weights"] / max(rep["weights"], 1)
        return (f"sparsity {rep['ratio']}, block {rep['block']}: {len(rep['sparse_layers'])} "
                f"of {len(rep['layers'])} layers in sparse kernels, {share:.1%} of "
                f"{rep['weights']:,} layer weights non-zero")
    keys = [k for k in rep if isinstance(rep[k], (int, float, str))][:4]
    return ", ".join(f"{k}={rep[k]}" for k in keys) or f"done in {p['seconds']} s"


def cmd_run(args: argparse.Namespace) -> int:
    art = Artifact.load(args.artifact)
    if args.inputs:
        feeds, form = split_samples(load_npz(args.inputs), art.inputs)
    else:
        feeds = [art.random_inputs(seed=args.seed)]
        form = f"seeded random inputs (seed {args.seed})"
    results = [art.run(f) for f in feeds]
    if len(results) == 1:
        outputs = results[0]
    else:
        outputs = {k: np.stack([r[k] for r in results]) for k in results[0]}
    if args.output:
        save_npz_atomic(args.output, outputs)
    # an embedded artifact ran on its simulator: the cycles of the last run
    sim = art.simulate(feeds[-1]) if "embedded" in art.manifest else None
    non_finite = None
    if args.check_finite:
        non_finite = _non_finite(feeds, outputs)
        for name, c in non_finite.items():
            logger.warning("%s '%s' holds %d NaN, %d +inf, %d -inf (of %d values)", c["role"],
                           name, c["nan"], c["posinf"], c["neginf"], c["values"])
    if args.json:
        _emit_json({"artifact": str(art.path), "inputs": form, "samples": len(feeds),
                    **({"simulation": sim} if sim else {}),
                    **({"non_finite": non_finite} if non_finite is not None else {}),
                    "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                                    "values": v.tolist() if v.size <= 64 else None}
                                for k, v in outputs.items()},
                    "output_file": args.output})
        return EXIT_OK
    print(f"ran {art.path} on {form}")
    for name, v in outputs.items():
        flat = v.reshape(-1)
        head = np.array2string(flat[:8], precision=4, separator=", ")
        extra = ""
        if v.ndim >= 2 and v.shape[-1] > 1 and v.dtype.kind == "f":
            extra = f"  argmax {v.reshape(-1, v.shape[-1]).argmax(-1)[:16].tolist()}"
        print(f"  {name}: shape {list(v.shape)} {v.dtype}  {head}{' ...' if flat.size > 8 else ''}"
              f"{extra}")
    if sim:
        util = sim["conv_utilization"]
        print(f"  simulated    {sim['cycles']:,} cycles per run on the "
              f"{sim['accelerator']['rows']}x{sim['accelerator']['cols']} MAC array"
              + (f" ({util:.1%} of its roofline on the conv layers)" if util else "")
              + f"; DMA {sim['dma_load_bytes']:,} bytes in, {sim['dma_store_bytes']:,} out "
              "(hwcc bench: per layer)")
    if args.output:
        print(f"  wrote {args.output}")
    return EXIT_OK


def _non_finite(feeds: list[dict[str, np.ndarray]], outputs: dict[str, np.ndarray]
                ) -> dict[str, dict[str, Any]]:
    """Per float input / output tensor holding NaN or infinity: the counts (over samples)."""
    found: dict[str, dict[str, Any]] = {}
    tensors = [("input", name, np.stack([np.asarray(f[name]) for f in feeds]))
               for name in feeds[0]] + [("output", k, v) for k, v in outputs.items()]
    for role, name, v in tensors:
        if v.dtype.kind not in "fc":
            continue
        nan, posinf, neginf = (int(np.isnan(v).sum()), int(np.isposinf(v).sum()),
                               int(np.isneginf(v).sum()))
        if nan or posinf or neginf:
            found[name] = {"role": role, "nan": nan, "posinf": posinf, "neginf": neginf,
                           "values": int(v.size)}
    return found


def cmd_bench(args: argparse.Namespace) -> int:
    # --json alone prints the JSON object; --json PATH writes it there (and prints the text)
    if args.artifact is None:
        if not isinstance(args.json, str):
            raise ConfigError("hwcc bench: give the artifact directory (hwcc bench DIR)")
        args.artifact, args.json = args.json, True  # `hwcc bench --json DIR`
    json_path = Path(args.json) if isinstance(args.json, str) else None
    if json_path is not None and not json_path.parent.is_dir():
        raise ConfigError(f"--json {json_path}: directory {json_path.parent} does not exist")
    art = Artifact.load(args.artifact)
    feeds = art.random_inputs(seed=0)
    if "embedded" in art.manifest:
        return _bench_embedded(args, art, feeds, json_path)
    result = art.benchmark(feeds, repeat=args.repeat, warmup=args.warmup)
    result["artifact"] = str(art.path)
    if args.compare:
        ref = compare_onnxruntime(art, feeds, repeat=args.repeat, warmup=args.warmup,
                                  hwcc_median_ms=result["median_ms"])
        result["compare"] = ref
    profile = None
    if args.per_layer:
        profile = profile_kernels(art, feeds, repeat=args.repeat, warmup=args.warmup)
        result["per_layer"] = profile.to_dict()
    if args.json is True:
        _emit_json(result)
        return EXIT_OK
    print(f"{art.path}  ({result['target']}, {result['threads']} threads)")
    print(f"  hwcc         median {result['median_ms']:.4f} ms  min {result['min_ms']:.4f}  "
          f"max {result['max_ms']:.4f}  ({result['repeat']} runs)")
    if args.compare:
        r = result["compare"]
        print(f"  onnxruntime  median {r['median_ms']:.4f} ms  min {r['min_ms']:.4f}  "
              f"max {r['max_ms']:.4f}  ({r['threads']} threads)")
        print(f"  ratio        hwcc is {r['speedup']:.2f}x onnxruntime's speed "
              f"(onnxruntime median / hwcc median)")
    if profile is not None:
        _print_per_layer(profile)
    if json_path is not None:
        write_json_atomic(json_path, result)
        wrote = [str(json_path)]
        if profile is not None:
            try:
                wrote.append(str(write_chart(profile, json_path.with_suffix(".png"))))
            except ImportError:
                logger.warning("no chart: matplotlib is not installed "
                               "(pip install 'hwcc[bench]')")
        print(f"  wrote        {', '.join(wrote)}")
    return EXIT_OK


def _bench_embedded(args: argparse.Namespace, art: Any, feeds: dict[str, np.ndarray],
                    json_path: Path | None) -> int:
    """``hwcc bench`` of an embedded artifact: the simulator's cycles, MAC-array utilization
    and DMA bytes, in total and per layer (deterministic: one run is the measurement)."""
    if args.compare:
        raise ConfigError("--compare times against onnxruntime on this CPU; an embedded "
                          "artifact's speed is the simulator's cycle count")
    result = art.simulate(feeds)
    result["artifact"] = str(art.path)
    if args.json is True:
        _emit_json(result)
        return EXIT_OK
    a = result["accelerator"]
    util = result["conv_utilization"]
    print(f"{art.path}  ({result['target']}: {a['rows']}x{a['cols']} MAC array, simulated)")
    print(f"  cycles       {result['cycles']:,}  ({result['macs']:,} MACs; conv layers at "
          f"{util:.1%} of the MAC-array roofline)" if util is not None else
          f"  cycles       {result['cycles']:,}")
    print(f"  DMA          {result['dma_load_bytes']:,} bytes in, "
          f"{result['dma_store_bytes']:,} bytes out")
    print(f"  memory       arena {result['arena_bytes']:,} bytes, weights "
          f"{result['weight_bytes']:,} bytes")
    print(f"    {'layer':<14} {'unit':<9} {'cycles':>9} {'MACs':>10} {'util':>6} "
          f"{'DMA in':>8} {'DMA out':>8}  tile")
    for r in result["layers"]:
        t = r.get("tile")
        tile = (f"{t['tile_h']}x{t['tile_w']}x{t['tile_ocb']}"
                f"{' oc-outer' if t['oc_outer'] else ''}"
                f"{' 2buf' if t['double_buffer'] else ''}"
                f"{' (tuned)' if r.get('tuned') else ''}") if t else ""
        u = f"{r['utilization']:.1%}" if r["utilization"] is not None else "-"
        unit = "MAC" if r["unit"] == "mac_array" else "cpu"
        print(f"    {r['name']:<14} {unit:<9} {r['cycles']:>9,} {r['macs']:>10,} {u:>6} "
              f"{r['dma_load_bytes']:>8,} {r['dma_store_bytes']:>8,}  {tile}")
    print("  (cpu layers run as plain integer C on the host core: not counted in cycles)")
    if json_path is not None:
        write_json_atomic(json_path, result)
        print(f"  wrote        {json_path}")
    return EXIT_OK


def _print_per_layer(p: KernelProfile) -> None:
    """The per-kernel table of ``hwcc bench --per-layer``, slowest first."""
    peak = "unknown"
    if p.peak_gflops:
        peak = f"{p.peak_gflops:g} GFLOP/s fp32, ~{p.peak_int8_gops:g} GOP/s int8"
    count = len(p.kernels)
    print(f"  per kernel   {count} kernel{'s' * (count != 1)}, {p.kernel_ms:.4f} ms per run "
          f"(median of {p.repeat} instrumented runs on {p.host_cpu}; timing adds ~1 us a call)")
    print(f"  peak         {peak} (the target's capabilities)")
    names = [short_name(k.kernel) for k in p.kernels]  # full names in the JSON
    w = max([len("kernel")] + [len(name) for name in names])
    print(f"    {'kernel':<{w}}  {'calls':>5}  {'total ms':>9}  {'share':>6}  "
          f"{'rate':>14}  {'% peak':>6}  schedule")
    for name, k in zip(names, p.kernels):
        unit = "GOP/s" if k.ops == "int8" else "GFLOP/s"
        rate = f"{k.gflops:.2f} {unit}" if k.gflops is not None else "-"
        frac = f"{k.peak_fraction:.1%}" if k.peak_fraction is not None else "-"
        print(f"    {name:<{w}}  {k.calls:>5}  {k.total_ms:>9.4f}  {k.share:>6.1%}  "
              f"{rate:>14}  {frac:>6}  {k.schedule}")


def cmd_eval(args: argparse.Namespace) -> int:

    art = Artifact.load(args.artifact)
    data = load_npz(args.data)
    labels = None
    if args.labels:
        if args.labels not in data:
            raise RuntimeInputError(f"{args.data} has no array '{args.labels}'; arrays: "
                                    f"{sorted(data)}")
        labels = data.pop(args.labels)
    feeds, form = split_samples(data, art.inputs, what=args.data)
    if args.limit and args.limit < len(feeds):
        feeds = feeds[: args.limit]
        labels = labels[: args.limit] if labels is not None else None
        form += f", first {args.limit} used"
    report = evaluate_artifact(art, feeds, labels)
    report["data"] = form
    report["artifact"] = str(art.path)
    if args.json:
        _emit_json(report)
        return EXIT_OK
    print(f"evaluated {art.path} on {args.data}: {form}")
    if "top1_accuracy" in report:
        print(f"  top-1 accuracy   hwcc {report['top1_accuracy']:.2%}   "
              f"{report['reference']} {report['reference_top1_accuracy']:.2%}   "
              f"(same prediction on {report['top1_agreement']:.2%} of samples)")
    print(f"  max abs err      {report['max_abs_err']:.2e} vs {report['reference']} "
          f"(mean {report['mean_abs_err']:.2e}, max rel {report['max_rel_err']:.2e})")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        manifest = read_manifest(path)
        verify_files(path, manifest)
        if args.json:
            _emit_json(manifest)
            return EXIT_OK
        print(f"artifact {path}")
        print(f"  target   {manifest['target']['target']}")
        print(f"  model    {manifest['model']['source']} ({manifest['model']['params']:,} params)")
        for kind in ("inputs", "outputs"):
            for s in manifest[kind]:
                print(f"  {kind[:-1]:<8} {s['name']}: {s['shape']} {s['dtype']}")
        print(f"  passes   {', '.join(p['name'] for p in manifest['passes']) or 'none'}")
        print(f"  kernels  {manifest['kernels']['kernels']} "
              f"({manifest['kernels']['tuned']} tuned)")
        print(f"  created  {manifest['created']} with hwcc {manifest['versions'].get('hwcc')}, "
              f"TVM {manifest['versions'].get('apache-tvm')}")
        return EXIT_OK

    model, source = read_model(path)
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    info = {
        "model": source,
        "opset": model_opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(model.graph.node),
        "ops": dict(ops.most_common()),
        **stats.onnx_weights(model),
        "inputs": [_vi(v) for v in model.graph.input if v.name not in inits],
        "outputs": [_vi(v) for v in model.graph.output],
        "unsupported": [{"op": o, "node": n, "domain": d} for o, n, d in unsupported_nodes(model)],
        "layers": layer_sparsity(model),
    }
    if args.json:
        _emit_json(info)
        return EXIT_OK
    print(f"model {source}: opset {info['opset']}, {info['nodes']} nodes, "
          f"{info['params']:,} params ({_kib(info['weight_bytes'])})")
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            print(f"  {kind[:-1]:<7} {s['name']}: {s['shape']} {s['dtype']}")
    print("  ops     " + ", ".join(f"{k}×{v}" for k, v in ops.most_common()))
    if info["unsupported"]:
        print("  unsupported: "
              + ", ".join(f"{u['op']} ({u['node']})" for u in info["unsupported"]))
    _print_sparsity(info["layers"])
    return EXIT_OK


def _print_sparsity(layers: list[dict[str, Any]]) -> None:
    """The weighted layers that already hold zeros, and the flags that would use them."""
    sparse = [e for e in layers if e["structure"] != "dense"]
    print(f"  sparsity {len(sparse)} of {len(layers)} weighted layers hold zeros"
          + (":" if sparse else ""))
    for e in sparse:
        blocks = ", ".join(f"{b} {s:.1%}" for b, s in e["zero_blocks"].items())
        print(f"    {e['node']} ({e['op']}, {e['matrix'][0]}x{e['matrix'][1]}): "
              f"{e['zeros']:.1%} zero, {e['structure']} (all-zero blocks: {blocks})")
    blocks = Counter(e["suggested_block"] for e in sparse if e["suggested_block"] != "none")
    if blocks:
        block = blocks.most_common(1)[0][0]
        print(f"  hint     --sparsity keep --sparse-block {block} runs these zeros in sparse "
              "kernels where that pays (nothing pruned)")


def _vi(v: Any) -> dict[str, Any]:
    import onnx

    tt = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    try:
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    except Exception:
        dtype = str(tt.elem_type)
    return {"name": v.name, "shape": dims, "dtype": dtype}


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwcc", description="Compile ONNX models with TVM Relax "
                                "for a target triple: compress, tune, deploy.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="compile an ONNX model into an artifact directory")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("--target", "-t", default="host", help="target triple (see 'hwcc targets'); "
                   "default: host")
    c.add_argument("-o", "--output", help="artifact directory (default: out/<model name>)")
    c.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                   help="pin a dynamic input shape (repeatable)")
    c.add_argument("--tune-log", metavar="DIR", help="MetaSchedule tuning records to use "
                   "(default: tuning_logs/<device>/<target>/ when present)")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the agreement check against onnxruntime / onnx.reference")
    c.add_argument("--bench-repeat", type=int, default=20, metavar="N",
                   help="runs to time after compiling when the target runs here (0: none)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    add_lowering_arguments(c)
    add_pass_arguments(c)
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run an artifact on inputs from an .npz file")
    r.add_argument("artifact", help="artifact directory")
    r.add_argument("--inputs", metavar="FILE.npz", help="inputs keyed by input name; each "
                   "array shaped like the input, or with a leading sample axis")
    r.add_argument("--output", metavar="FILE.npz", help="write outputs keyed by output name")
    r.add_argument("--seed", type=int, default=0, help="seed of random inputs (no --inputs)")
    r.add_argument("--check-finite", action="store_true",
                   help="warn (one line per tensor) when an input or output holds NaN or "
                   "infinity; --json adds 'non_finite'")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="time an artifact")
    # nargs="?": `hwcc bench --json DIR` (flag before the directory) still means DIR
    b.add_argument("artifact", nargs="?", help="artifact directory")
    b.add_argument("--repeat", type=int, default=50, help="timed runs (default 50)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--compare", choices=["onnxruntime"], help="also time the same ONNX model "
                   "in onnxruntime, same inputs, same run")
    b.add_argument("--per-layer", action="store_true", help="also time every fused kernel: "
                   "calls, time, share, GFLOP/s, %% of the target's peak, how it was "
                   "scheduled; slowest first")
    b.add_argument("--json", nargs="?", const=True, default=None, metavar="PATH",
                   help="print one JSON object; with PATH, write it there and print the text "
                   "as usual (with --per-layer, also a bar chart beside it: same stem, .png)")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", help="accuracy and agreement of an artifact on a data file")
    e.add_argument("artifact", help="artifact directory")
    e.add_argument("--data", required=True, metavar="FILE.npz", help="inputs keyed by input "
                   "name (with a leading sample axis, or one sample)")
    e.add_argument("--labels", metavar="KEY", help="array in the data file holding class labels")
    e.add_argument("--limit", type=int, default=0, help="use only the first N samples")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="describe an ONNX model or an artifact directory")
    i.add_argument("path", help="ONNX file or artifact directory")
    i.add_argument("--json", action="store_true", help="print one JSON object (artifacts: "
                   "the manifest)")
    i.set_defaults(func=cmd_inspect)

    add_tune_parser(sub)
    add_search_parser(sub)
    add_bundle_parser(sub)

    t = sub.add_parser("targets", help="list the known target triples")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_targets)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    use_all_cores()  # before TVM's runtime starts its thread pool
    try:
        paths.check_outputs(args)  # an unwritable output is refused before the work starts
        return int(args.func(args) or EXIT_OK)
    except HwccError as err:
        if args.debug:
            raise
        print(f"hwcc: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hwcc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hwcc bench DIR | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return EXIT_OK
    except OSError as err:  # permission, disk full, a file where a directory belongs...
        if args.debug:
            raise
        line = paths.os_error_message(err, args)
        if line is None:  # not the user's file system: a bug, reported as one below
            return _internal_error(err)
        print(f"hwcc: error: {line}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # a bug in hwcc or TVM: still one line unless --debug
        if args.debug:
            raise
        return _internal_error(err)


def _internal_error(err: BaseException) -> int:
    msg = str(err).strip().splitlines()
    print(f"hwcc: internal error: {type(err).__name__}: {msg[-1] if msg else ''} "
          "(run with --debug for the traceback)", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
