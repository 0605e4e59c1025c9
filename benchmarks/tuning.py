"""Untuned vs tuned latency of small CNNs, with the trials spent.

Usage: ``python benchmarks/tuning.py [--trials 64] [--log-dir DIR] [--json FILE]``

For ``examples/digits_cnn.onnx`` and ``tests/models.py``'s ``resnet_block_cnn()``, runs
:func:`compiler.tune.tune` with ``--trials`` trials per model (into a fresh temporary log unless
``--log-dir`` is given, so ``tuning_logs/`` is left alone) and prints the whole model's latency
with hwcc's default schedules and with the records applied, both built like ``hwcc compile``
and timed on this machine in the same run (alternating, fastest repeat), plus the per-kernel
figures measured by the tuner's runner.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64, help="trials per model (default 64)")
    p.add_argument("--log-dir", help="root of the tuning logs (default: a fresh temp dir)")
    p.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    p.add_argument("--progress", action="store_true", help="show the tuning progress bars")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import onnx

    from compiler.tune import tune
    from tests import models

    work = Path(tempfile.mkdtemp(prefix="hwcc-bench-tune-"))
    resnet = work / "resnet_block_cnn.onnx"
    onnx.save(models.resnet_block_cnn(), str(resnet))
    log_root = Path(args.log_dir) if args.log_dir else work / "logs"
    results = []
    for name, model in (("digits_cnn", ROOT / "examples" / "digits_cnn.onnx"),
                        ("resnet_block_cnn", resnet)):
        rep = tune(model, "host", trials=args.trials, log_dir=log_root, progress=args.progress)
        d = rep.to_dict()
        d["name"] = name
        results.append(d)
        print(f"\n{name}: {len(rep.tasks)} kernels, {rep.trials} trials this run "
              f"({rep.valid_trials} valid) in {rep.seconds:.0f} s")
        print(f"  {'kernel':<48} {'calls':>5} {'trials':>6} {'default ms':>10} {'best ms':>9}"
              "  used")
        for t in rep.tasks:
            print(f"  {t.name[:48]:<48} {t.weight:>5} {t.trials:>6} {_ms(t.default_ms):>10} "
                  f"{_ms(t.best_ms):>9}  {'yes' if t.used else 'no'}")
        print(f"  model: untuned {_ms(rep.before_ms)} ms -> tuned {_ms(rep.after_ms)} ms "
              f"({rep.speedup or 0:.2f}x) [{rep.latency_source}]")
    print(f"\nmachine: {platform.processor() or platform.machine()}, target host; "
          f"trials per model: {args.trials}; logs: {log_root}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    sys.exit(main())
