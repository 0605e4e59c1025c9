"""Tune models with ``compiler.tuning.tune`` and report untuned vs tuned latency and the trials
spent.

    python benchmarks/tuning.py                                   # small CNNs, temp logs
    python benchmarks/tuning.py --models digits_cnn,bert,resnet18,mobilenet_v2 \\
        --time-budget 5m --log-dir tuning_logs --compact          # the logs hwcc ships

For each model, runs :func:`compiler.tuning.tune.tune` (``--trials`` for the whole model, or
``--time-budget`` per model; records already in the log count and a second run resumes) and
prints, per kernel, the default-schedule and best tuned latency measured by the tuner's runner,
and for the model its latency with hwcc's default schedules and with the records applied, both
built like ``hwcc compile`` and timed alternately in the same run. Kernels whose best record is
not 10% (and 1 µs) faster than the default schedule keep the default (``compiler.tuning.tune``'s
rule).

Models: ``digits_cnn`` (``examples/``), ``resnet_block_cnn`` (``tests/models.py``) and the
benchmark models of ``benchmarks/model_zoo.py`` (``resnet18``, ``mobilenet_v2``, ``bert``).
Without ``--log-dir`` the records go to a fresh temporary directory, so ``tuning_logs/`` is
left alone, and the table is only printed. With it, results go to
``benchmarks/results/tuning.json`` (``benchmarks/models.py`` reads the trial counts of the
shipped logs from it for its "hwcc tuned" column), unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, machine_line, save_results, table

DEFAULT_MODELS = "digits_cnn,resnet_block_cnn"


def model_path(name: str, work: Path) -> Path:
    """The ONNX file of benchmark model ``name``."""
    import onnx

    from benchmarks import model_zoo

    if name == "digits_cnn":
        return ROOT / "examples" / "digits_cnn.onnx"
    if name == "resnet_block_cnn":
        from tests import models

        path = work / "resnet_block_cnn.onnx"
        onnx.save(models.resnet_block_cnn(), str(path))
        return path
    return model_zoo.get(name)


def main() -> int:
    from compiler.cli.tune import parse_duration

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma-separated (default {DEFAULT_MODELS}; also resnet18, "
                        "mobilenet_v2, bert)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials per model, log included (default 64 without --time-budget)")
    p.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                   help="tuning time per model, e.g. 6m")
    p.add_argument("--log-dir", help="root of the tuning logs (default: a fresh temp dir)")
    p.add_argument("--compact", action="store_true",
                   help="at the end, keep only each kernel's fastest record in the log(s)")
    p.add_argument("--progress", action="store_true", help="show the tuning progress bars")
    p.add_argument("--no-save", action="store_true", help="do not write results/tuning.json")
    args = p.parse_args()
    if args.trials is None and args.time_budget is None:
        args.trials = 64
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from compiler.tuning.database import compact_log
    from compiler.tuning.tune import tune

    work = Path(tempfile.mkdtemp(prefix="hwcc-bench-tune-"))
    log_root = Path(args.log_dir).resolve() if args.log_dir else work / "logs"
    rows = []
    for name in args.models.split(","):
        rep = tune(model_path(name, work), "host", trials=args.trials,
                   time_budget_s=args.time_budget, log_dir=log_root, progress=args.progress)
        records = sum(t.records for t in rep.tasks)
        print(f"\n{name}: {len(rep.tasks)} kernels, {rep.trials} trials this run "
              f"({rep.valid_trials} valid, {rep.build_errors} build / {rep.run_errors} run "
              f"errors) in {rep.seconds:.0f} s; {records} records in the log")
        print(f"  {'kernel':<48} {'calls':>5} {'trials':>6} {'default ms':>10} {'best ms':>9}"
              "  used")
        for t in rep.tasks:
            print(f"  {t.name[:48]:<48} {t.weight:>5} {t.trials:>6} {_ms(t.default_ms):>10} "
                  f"{_ms(t.best_ms):>9}  {'yes' if t.used else 'no'}")
        print(f"  model: untuned {_ms(rep.before_ms)} ms -> tuned {_ms(rep.after_ms)} ms "
              f"({rep.speedup or 0:.2f}x) [{rep.latency_source}]", flush=True)
        rows.append({
            "model": name, "kernels": len(rep.tasks),
            "tuned_kernels": sum(t.used for t in rep.tasks),
            "trials": records, "trials_this_run": rep.trials, "valid_trials": rep.valid_trials,
            "seconds": round(rep.seconds), "untuned_ms": rep.before_ms,
            "tuned_ms": rep.after_ms, "speedup": rep.speedup,
            "log_dir": str(rep.log_dir.relative_to(ROOT)) if rep.log_dir.is_relative_to(ROOT)
            else None,
            "_log": rep.log_dir,
        })
    if args.compact:
        for path in sorted({r["_log"] for r in rows}):
            before, after = compact_log(path)
            print(f"compacted {path}: {before} -> {after} records")
    for r in rows:
        del r["_log"]
    cols = [("model", "model"), ("kernels", "kernels"), ("tuned_kernels", "kernels tuned"),
            ("trials", "trials (log)"), ("untuned_ms", "untuned (ms)"),
            ("tuned_ms", "tuned (ms)"), ("speedup", "speed-up")]
    m = machine()
    print(f"\nMetaSchedule tuning — {machine_line(m)}\n")
    print(table(rows, cols))
    if args.log_dir and not args.no_save:  # a scratch run must not replace the shipped run's
        budget = (f"{args.time_budget:.0f} s per model" if args.time_budget
                  else f"{args.trials} trials per model")
        save_results("tuning", rows, {
            "columns": cols, "script": " ".join(["benchmarks/tuning.py", *sys.argv[1:]]),
            "title": f"MetaSchedule tuning (XGBoost cost model; {budget}; kernels keep hwcc's "
                     "default schedule unless a record is 10% and 1 µs faster)"})
    return 0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    sys.exit(main())
