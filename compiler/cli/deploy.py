"""``hwcc bundle``: make a directory that runs an artifact on its device without Python.

Registered by :func:`add_bundle_parser`; :func:`cmd_bundle` is a thin layer over
:func:`compiler.artifact.deploy.make_bundle`. Human output says what was written and how to run it;
``--json`` prints one object (``bundle``, ``machine``, ``target``, ``runner``, ``runtime``,
``requires``, ``inputs``, ``outputs``, ``files``, ``bytes``, ``run``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from compiler.artifact.deploy import make_bundle, read_bundle_info


def add_bundle_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hwcc bundle`` on the CLI's subparsers; returns the new parser."""
    b = subparsers.add_parser(
        "bundle", help="make a directory that runs an artifact on its device without Python",
        description="Copy an artifact's module into a directory together with TVM's runtime "
        "libraries for the artifact's architecture (x86_64 or aarch64; the aarch64 ones are "
        "downloaded once from PyPI and cached in $HWCC_CACHE, default ~/.cache/hwcc) and a "
        "runner, hwcc_run, compiled for it. Copy the directory to the device and run "
        "'./hwcc_run --inputs IN --outputs OUT [--repeat N]' with one <input>.npy per input.")
    b.add_argument("artifact", help="artifact directory (from 'hwcc compile')")
    b.add_argument("-o", "--output", required=True, metavar="DIR", help="bundle directory "
                   "(replaced if it holds a bundle)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bundle)
    return b


def cmd_bundle(args: argparse.Namespace) -> int:
    """Run ``hwcc bundle``; returns the exit code."""

    path = make_bundle(args.artifact, args.output)
    info = read_bundle_info(path)
    run = "./hwcc_run --inputs IN_DIR --outputs OUT_DIR"
    if info["machine"] == "aarch64":
        run_here = f"qemu-aarch64-static -L /usr/aarch64-linux-gnu {run}"
    else:
        run_here = run
    total = sum(int(f["bytes"]) for f in info["files"].values())
    if args.json:
        print(json.dumps({
            "bundle": str(path),
            "machine": info["machine"],
            "target": info["target"],
            "runner": str(Path(path) / info["runner"]),
            "runtime": info["runtime"],
            "requires": info.get("requires", {}),
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "files": info["files"],
            "bytes": total,
            "run": run,
        }, indent=2))
        return 0
    print(f"wrote bundle {path} ({total / 1e6:.1f} MB) for {info['machine']}: {info['target']}")
    rt = info["runtime"]
    print(f"  runtime   apache-tvm {rt['apache-tvm']}, apache-tvm-ffi {rt['apache-tvm-ffi']} "
          f"({'installed wheels' if rt['source'] == 'installed' else 'PyPI wheels'})")
    req = info.get("requires", {})
    print(f"  device    Linux {info['machine']}, glibc >= {req.get('glibc', '?')}, libstdc++ with "
          f"{req.get('libstdc++', '?')}; no Python")
    for kind in ("inputs", "outputs"):
        specs = ", ".join(f"{s['name']} {s['dtype']}{list(s['shape'])}" for s in info[kind])
        print(f"  {kind:<9} {specs}")
    print(f"  run       cd {path} && {run}")
    if run_here != run:
        print(f"  here      {run_here}  (emulated: timings mean nothing)")
    return 0
