"""``hwcc tune``: tune a model's kernels for a target and append the records to its log.

Registered by :func:`add_tune_parser`; :func:`cmd_tune` is a thin layer over
:func:`compiler.tuning.tune.tune`. Human output is a table per task and the totals; ``--json``
prints
one object with stable fields (``tasks``, ``trials``, ``valid_trials``, ``log_dir``,
``before_ms``, ``after_ms`` and more, see :meth:`compiler.tuning.tune.TuneReport.to_dict`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from compiler.api import tune_embedded
from compiler.errors import ConfigError
from compiler.frontend import parse_input_shapes
from compiler.tuning.database import compact_log
from compiler.tuning.tune import TuningInterrupted, tune
from targets import parse_target

from .passes import add_lowering_arguments, lower_options_from_args

EXIT_OK, EXIT_INTERRUPTED = 0, 130

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``1.5h`` or ``1h30m``.

    Raises
    ------
    ConfigError
        When the text is not a positive duration.
    """
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        total = float(s)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise ConfigError(f"malformed duration '{text}'; expected e.g. 90s, 10m, 1h30m")
        total = sum(float(n) * _UNITS[u] for n, u in parts)
    if total <= 0:
        raise ConfigError(f"duration must be positive; got '{text}'")
    return total


def add_tune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hwcc tune`` on the CLI's subparsers; returns the new parser."""
    t = subparsers.add_parser(
        "tune", help="tune the model's kernels with MetaSchedule; compile then uses the records",
        description="Tune the model's fused kernels with MetaSchedule (XGBoost cost model) and "
        "append the records to tuning_logs/<device>/<target>/, where 'hwcc compile' for the "
        "same target finds them. Interrupting keeps every record measured; running again "
        "resumes.")
    t.add_argument("model", help="ONNX model file")
    t.add_argument("--target", "-t", default="host",
                   help="target triple (see 'hwcc targets'); default: host")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, metavar="N",
                        help="trials for the whole model, records already in the log included "
                        "(default: 32 per kernel)")
    budget.add_argument("--time-budget", metavar="DURATION",
                        help="stop cleanly after this long, e.g. 90s, 10m, 1h")
    t.add_argument("--log-dir", metavar="DIR", help="root of the tuning logs (default: "
                   "tuning_logs/ or $HWCC_TUNING_LOGS); records go to DIR/<device>/<target>/")
    t.add_argument("--device", metavar="NAME",
                   help="device name in the log path (default: derived from the target)")
    t.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                   help="pin a dynamic input shape (repeatable)")
    t.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on a remote device through this TVM RPC tracker")
    t.add_argument("--rpc-key", metavar="KEY", help="key of the remote device on the tracker")
    t.add_argument("--compact", action="store_true",
                   help="after tuning, keep only each kernel's fastest record in the log (what "
                   "compile uses; much smaller, e.g. to ship; resuming then tunes again)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_lowering_arguments(t)
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_tune)
    return t


def cmd_tune(args: argparse.Namespace) -> int:
    """Run ``hwcc tune``; returns the exit code (130 when interrupted, after the report)."""
    if parse_target(args.target).family == "embedded":
        return _tune_embedded(args)
    budget = parse_duration(args.time_budget) if args.time_budget else None
    shapes = parse_input_shapes(args.input_shape or [])
    try:
        report = tune(args.model, args.target, trials=args.trials, time_budget_s=budget,
                      log_dir=args.log_dir, device=args.device, input_shapes=shapes,
                      lower_options=lower_options_from_args(args),
                      rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                      progress=not args.no_progress and not args.json and sys.stderr.isatty())
        code = EXIT_OK
    except TuningInterrupted as stop:
        report, code = stop.report, EXIT_INTERRUPTED
    compacted = compact_log(report.log_dir) if args.compact and code == EXIT_OK else None
    if args.json:
        print(json.dumps({**report.to_dict(), "compacted": compacted}, indent=2))
    else:
        print_report(report)
        if compacted:
            print(f"  compacted    {compacted[0]} -> {compacted[1]} records "
                  "(each kernel's fastest kept)")
    return code


def _tune_embedded(args: argparse.Namespace) -> int:
    """``hwcc tune -t embedded…``: tiles chosen against the simulator's cycle count."""
    if args.time_budget or args.rpc_tracker or args.device:
        raise ConfigError("the embedded target tunes against its simulator: --time-budget, "
                          "--rpc-tracker and --device do not apply (use --trials, per layer)")
    trials = args.trials if args.trials is not None else 200
    report = tune_embedded(args.model, args.target, trials=trials, log_dir=args.log_dir,
                           input_shapes=parse_input_shapes(args.input_shape or []),
                           progress=not args.no_progress and not args.json
                           and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_INTERRUPTED if report["stopped"] else EXIT_OK
    print(f"tuned {report['model']} for {report['target']} (tiles, against the simulator)")
    print(f"  {'layer':<12} {'trials':>6} {'default cycles':>14} {'tuned cycles':>12}  tile")
    for r in report["workloads"]:
        t = r.get("tile")
        tile = (f"{t['tile_h']}x{t['tile_w']}x{t['tile_ocb']}"
                f"{' oc-outer' if t['oc_outer'] else ''}{' 2buf' if t['double_buffer'] else ''}"
                if t else r.get("skipped", ""))
        print(f"  {r['layer']:<12} {r.get('trials', 0):>6} {r['default_cycles']:>14,} "
              f"{r['cycles']:>12,}  {tile}")
    if report["speedup"]:
        print(f"  conv cycles  {report['before_cycles']:,} default -> "
              f"{report['after_cycles']:,} tuned ({report['speedup']:.2f}x)")
    if report["stopped"]:
        print("  stopped      interrupted; every layer tuned so far is in the records")
    print(f"  records      {report['records']}  ({report['seconds']:.1f} s)")
    print("  'hwcc compile' for this target uses these records automatically")
    return EXIT_INTERRUPTED if report["stopped"] else EXIT_OK


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def print_report(report: Any) -> None:
    """The human-readable table of a :class:`compiler.tuning.tune.TuneReport`."""
    rows = [t.to_dict() for t in report.tasks]
    w = max([len("task")] + [len(r["name"]) for r in rows])
    print(f"tuned {report.model} for {report.target}"
          + (f" on {report.remote}" if report.remote else ""))
    print(f"  {'task':<{w}}  {'calls':>5}  {'trials':>6}  {'valid':>5}  {'records':>7}  "
          f"{'best ms':>9}  {'default ms':>10}  note")
    for r in rows:
        note = "skipped (enough records)" if r["skipped"] else ""
        if r.get("unmeasurable"):
            note = "not tuned (default schedule does not run on random inputs)"
        if r.get("no_design_space"):
            note = "not tuned (MetaSchedule has no search space for it)"
        if r["best_ms"] is not None and not r["used"]:
            note = (note + "; " if note else "") + "default kept (tuned not 10% and 1 us faster)"
        print(f"  {r['name']:<{w}}  {r['weight']:>5}  {r['trials']:>6}  {r['valid']:>5}  "
              f"{r['records']:>7}  {_ms(r['best_ms']):>9}  {_ms(r['default_ms']):>10}  {note}")
    d = report.to_dict()
    print(f"  trials       {d['trials']} this run ({d['valid_trials']} valid, "
          f"{d['build_errors']} failed to build, {d['run_errors']} failed to run); "
          f"{sum(r['records'] for r in rows)} records in the log")
    for kind in ("build", "run"):
        if d[f"first_{kind}_error"]:
            print(f"  first {kind} error  {d[f'first_{kind}_error']}")
    how = ("whole model, timed here" if d["latency_source"] == "model"
           else "sum of kernels x calls, measured on the device")
    if d["before_ms"] is not None:
        speed = f" ({d['speedup']:.2f}x)" if d["speedup"] else ""
        print(f"  latency      {_ms(d['before_ms'])} ms untuned -> {_ms(d['after_ms'])} ms tuned"
              f"{speed}  [{how}]")
    if d["stopped"]:
        print(f"  stopped      {d['stopped']}; every record measured so far is in the log")
    print(f"  log          {d['log_dir']}  ({d['seconds']:.0f} s)")
    print("  'hwcc compile' for this target uses these records automatically")
