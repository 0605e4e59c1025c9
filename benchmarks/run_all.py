"""Run the benchmark scripts one after another, then refresh the README's results section.

    python benchmarks/run_all.py [--only models,prune,...] [--skip conformance,...]
                                 [--target "x86_64-linux-gnu -mattr=+avx2,+fma"]

Each script writes ``benchmarks/results/<name>.json`` with the machine and date; the README
table is rendered from those files by ``update_readme.py`` — never typed by hand. The
conformance run takes the longest (all ONNX node tests in subprocesses); skip it with
``--skip conformance`` to keep its last result.

``--target`` (default ``host``) goes to the scripts that compile for a chosen target
(``models``, ``kernels``, ``quantize``: :data:`TARGETED`); with a target other than ``host`` the
other scripts, which measure the host target only, are skipped (and say so). The target is
checked once, before any script runs: an unknown one, or one this machine cannot run, stops
here with one line. A non-host target's results go to ``results/<name>-<slug>.json`` and render
after the host-target tables of the same benchmarks.

Tuning is not in the default list: it writes the logs that ship in ``tuning_logs/`` (and
``results/tuning.json``, whose trial counts the models table shows). Run it on its own, alone
on the machine, before the models table::

    python benchmarks/tuning.py --models digits_cnn,bert,resnet18,mobilenet_v2 \
        --time-budget 5m --log-dir tuning_logs --compact
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import add_target_argument, is_host_target, target_from_args

SCRIPTS = ["models", "architectures", "kernels", "prune", "low_rank", "sparse", "quantize",
           "search", "conformance"]
#: The scripts that take ``--target``.
TARGETED = {"models", "kernels", "quantize"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated script names")
    ap.add_argument("--skip", default="", help="comma-separated script names")
    add_target_argument(ap)
    args = ap.parse_args()
    host = is_host_target(target_from_args(args.target, ap.prog))
    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    failed = []
    for name in only or SCRIPTS:
        if name in skip:
            continue
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if name in TARGETED:
            cmd += ["--target", args.target]
        elif not host:
            print(f"=== {name}: skipped (it takes no --target; it measures the host target)",
                  flush=True)
            continue
        t0 = time.perf_counter()
        print(f"=== benchmarks/{name}.py" + (f" --target '{args.target}'" if not host else ""),
              flush=True)
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    subprocess.call([sys.executable, str(HERE / "update_readme.py")], cwd=HERE.parent)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
