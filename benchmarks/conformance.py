"""ONNX backend conformance: hwcc vs plain TVM on the ONNX node and model tests.

Runs every node test (``onnx.backend.test.loader.load_model_tests(kind="node")``, built in
memory with reference data) and the ``simple``, ``pytorch-converted`` and
``pytorch-operator`` model tests through

* **hwcc**: ``compiler.compile(model, TARGET, verify=False)`` then ``art.run(feeds)``;
* **tvm**: plain ``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` for the same
  target + the Relax VM,

each test in a worker subprocess with a time limit (a crash or a hang costs one test, never
the run). A test *passes* when every output has the reference's shape and dtype and matches it
within the test's rtol/atol relaxed to at least rtol 1e-3, atol 1e-5 (for float16 and
bfloat16 outputs: at least rtol 2 ulp, atol 1 ulp of that type). Otherwise it is
*wrong* (it ran and differs), *unsupported* (hwcc raised an ``HwccError``; for plain TVM: an
exception during import or build) or *crash* (anything else: another exception, a timeout, a
dead process).

Inputs. Exporters store axes, shapes, pads, sizes, scales... as constants; the node tests
feed them as graph inputs. By default (``--inputs exported``) such inputs (the slots listed
in :data:`STATIC_SLOTS`) become initializers for both compilers; data inputs, integer ones
included, stay inputs. ``--inputs raw`` feeds every input at run time.

Targets. ``--target`` (default ``host``) is any x86/ARM triple this machine runs (the code
executes here). Results are kept per target in ``results/conformance.json`` (each row names
its ``target``): a run replaces the rows of its own target only, so the README shows an
AVX-512 and an AVX2 build side by side (float -> integer conversions, for one, must not
depend on the ISA: see ``compiler/frontend/int_casts.py``).

Usage::

    python benchmarks/conformance.py                 # everything, host target, 2 workers
    python benchmarks/conformance.py --target "x86_64-linux-gnu -mattr=+avx2,+fma"
    python benchmarks/conformance.py --match lstm --compilers hwcc -j 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import re
import sys
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL_KINDS = ("simple", "pytorch-converted", "pytorch-operator")
STATUSES = ("pass", "wrong", "unsupported", "crash")
MIN_RTOL, MIN_ATOL = 1e-3, 1e-5

_REDUCE = ("ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
#: Input slots that real exporters store as constants (shapes, axes, pads, sizes, ...).
STATIC_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "OneHot": (1,), "Range": (0, 1, 2),
    "Split": (1,), "SplitToSequence": (1,), "CumSum": (1,), "CumProd": (1,), "Trilu": (1,),
    "NonMaxSuppression": (2, 3, 4), "DFT": (1, 2), "STFT": (1, 3), "CenterCropPad": (1,),
    "Col2Im": (1, 2), "AffineGrid": (1,), "BlackmanWindow": (0,), "HannWindow": (0,),
    "HammingWindow": (0,), "MelWeightMatrix": (0, 1, 2, 3, 4),
    **{op: (1,) for op in _REDUCE},
}


# ----------------------------------------------------------------------------------------
# test cases
# ----------------------------------------------------------------------------------------
def _read_pb(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def load_cases() -> dict[str, dict[str, Any]]:
    """All test cases by name: ``{"kind", "model", "inputs", "outputs", "rtol", "atol"}``."""
    import onnx
    from onnx.backend.test.loader import load_model_tests

    cases: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in load_model_tests(kind="node"):
            ins, outs = c.data_sets[0]
            cases[c.name] = {"kind": "node", "model": c.model, "inputs": list(ins),
                             "outputs": list(outs), "rtol": c.rtol, "atol": c.atol}
        for kind in MODEL_KINDS:
            for c in load_model_tests(kind=kind):
                d = Path(c.model_dir)
                sets = sorted(d.glob("test_data_set_*"))
                if not sets:
                    continue
                ins = [_read_pb(p) for p in sorted(sets[0].glob("input_*.pb"),
                                                    key=lambda p: int(p.stem.split("_")[1]))]
                outs = [_read_pb(p) for p in sorted(sets[0].glob("output_*.pb"),
                                                     key=lambda p: int(p.stem.split("_")[1]))]
                cases[f"{kind}/{c.name}"] = {
                    "kind": kind, "model": onnx.load(str(d / "model.onnx")), "inputs": ins,
                    "outputs": outs, "rtol": c.rtol, "atol": c.atol}
    return cases


def case_op(name: str, case: dict[str, Any], cases: dict[str, dict[str, Any]]) -> str:
    """The op a test is about (the op of the plain test for ``_expanded`` variants)."""
    if case["kind"] != "node":
        return case["kind"]
    if "_expanded" in name:
        base = name.split("_expanded")[0]
        if base in cases and base != name:
            return case_op(base, cases[base], cases)
    ops = [n.op_type for n in case["model"].graph.node if n.op_type != "Constant"]
    return ops[-1] if ops else "Constant"


def as_array(a: Any) -> Any:
    """Reference data as numpy (TensorProtos and numpy scalars included); lists stay."""
    import onnx
    from onnx import numpy_helper

    if isinstance(a, onnx.TensorProto):
        return numpy_helper.to_array(a)
    if isinstance(a, np.generic):
        return np.asarray(a)
    return a


def input_shapes(model, feeds: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes of the fed arrays for inputs whose declared shape is not fully static (what a
    user pins with ``--input-shape``)."""
    shapes = {}
    for vi in model.graph.input:
        a = feeds.get(vi.name)
        if not isinstance(a, np.ndarray) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        if dims is None or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            shapes[vi.name] = tuple(a.shape)
    return shapes


def prepare(case: dict[str, Any], inputs_mode: str):
    """The model and feeds as a compiler sees them (static slots frozen in ``exported``)."""
    import onnx
    from onnx import numpy_helper

    model = case["model"]
    real = [vi for vi in model.graph.input
            if vi.name not in {t.name for t in model.graph.initializer}]
    feeds = {vi.name: as_array(a) for vi, a in zip(real, case["inputs"])}
    if inputs_mode == "raw":
        return model, feeds
    static_uses: Counter = Counter()
    all_uses: Counter = Counter()
    for node in model.graph.node:
        slots = STATIC_SLOTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            all_uses[name] += 1
            static_uses[name] += i in slots
    # frozen only when every use is a static slot (an input that is also data stays an input)
    freeze = [n for n in feeds if static_uses[n] and static_uses[n] == all_uses[n]
              and isinstance(feeds[n], np.ndarray)]
    if not freeze:
        return model, feeds
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep = [vi for vi in frozen.graph.input if vi.name not in freeze]
    for n in freeze:
        frozen.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds.pop(n)), n))
    del frozen.graph.input[:]
    frozen.graph.input.extend(keep)
    return frozen, feeds


# ----------------------------------------------------------------------------------------
# one test, in a worker
# ----------------------------------------------------------------------------------------
def compare(got: list[Any], want: list[Any], rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``want``; else a short reason."""
    rtol, atol = max(rtol, MIN_RTOL), max(atol, MIN_ATOL)
    if len(got) < len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        w = as_array(w)
        if not isinstance(w, np.ndarray):
            return f"output {i}: reference is a {type(w).__name__}"
        g = np.asarray(g)
        if g.shape != w.shape:
            return f"output {i}: shape {list(g.shape)}, expected {list(w.shape)}"
        if g.dtype != w.dtype:
            return f"output {i}: dtype {g.dtype}, expected {w.dtype}"
        if w.dtype.kind in "OSU":
            if not np.array_equal(g, w):
                return f"output {i}: values differ"
            continue
        if w.dtype.name in ("float16", "bfloat16"):
            # 16-bit floats: the reference rounds every step to 16 bits; another (equally
            # valid) order of operations differs by an ulp or two
            import ml_dtypes

            eps = float(ml_dtypes.finfo(w.dtype).eps)
            rtol, atol = max(rtol, 2 * eps), max(atol, eps)
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        if not np.allclose(gf, wf, rtol=rtol, atol=atol, equal_nan=True):
            err = np.nanmax(np.abs(gf - wf)) if gf.size else 0.0
            return f"output {i}: max abs error {err:.3g}"
    return None


def _run_hwcc(model, feeds: dict[str, np.ndarray], workdir: Path, target: str) -> list[Any]:
    import compiler

    art = compiler.compile(model, target, output_dir=workdir / "a", verify=False,
                           input_shapes=input_shapes(model, feeds) or None)
    out = art.run(feeds)
    return [out[s.name] for s in art.outputs]


def _flatten(x: Any) -> list[Any]:
    import tvm

    if isinstance(x, (list, tuple)) or type(x).__name__ in ("Array", "Tuple"):
        return [y for item in x for y in _flatten(item)]
    if isinstance(x, tvm.runtime.Tensor):
        return [x.numpy()]
    return [np.asarray(x)]


def _run_tvm(model, feeds: dict[str, np.ndarray], target: str) -> tuple[str, Any]:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from targets import parse_target

    try:
        mod = from_onnx(model, shape_dict=input_shapes(model, feeds) or None,
                        keep_params_in_input=False)
        ex = tvm.compile(mod, target=parse_target(target).tvm_target())
    except Exception as err:  # noqa: BLE001 - import / build failure: TVM's "unsupported"
        return "error", err
    vm = relax.VirtualMachine(ex, tvm.cpu())
    # from_onnx takes the graph inputs in order (and may rename them, e.g. "0" -> "input_0")
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    args = [tvm.runtime.tensor(np.asarray(feeds[n])) for n in names]
    return "ok", _flatten(vm["main"](*args))


def run_one(case: dict[str, Any], compiler_name: str, inputs_mode: str, workdir: Path,
            target: str = "host") -> dict[str, Any]:
    """Status and detail of one test through one compiler (in the worker process)."""
    import contextlib
    import io

    from compiler.errors import HwccError

    model, feeds = prepare(case, inputs_mode)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if compiler_name == "hwcc":
                got = _run_hwcc(model, feeds, workdir, target)
            else:
                kind, got = _run_tvm(model, feeds, target)
                if kind == "error":
                    return {"status": "unsupported", "detail": _line(got)}
    except HwccError as err:
        return {"status": "unsupported", "detail": _line(err)}
    except Exception as err:  # noqa: BLE001 - any other failure is a crash
        return {"status": "crash", "detail": _line(err)}
    reason = compare(got, case["outputs"], case["rtol"], case["atol"])
    return {"status": "pass"} if reason is None else {"status": "wrong", "detail": reason}


def _line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {(lines[-1] if lines else '')[:300]}"


def _worker(conn, inputs_mode: str, target: str) -> None:
    import logging
    import shutil
    import tempfile

    logging.disable(logging.WARNING)
    cases = load_cases()
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        name, compiler_name = task
        workdir = Path(tempfile.mkdtemp(prefix="hwcc-conf-"))
        try:
            result = run_one(cases[name], compiler_name, inputs_mode, workdir, target)
        except BaseException as err:  # noqa: BLE001 - report, keep the worker alive
            result = {"status": "crash", "detail": _line(err) or traceback.format_exc()[-300:]}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        conn.send(result)


# ----------------------------------------------------------------------------------------
# the pool (parent side)
# ----------------------------------------------------------------------------------------
class _Slot:
    """One worker subprocess, restarted after a crash or a timeout."""

    def __init__(self, ctx, inputs_mode: str, target: str) -> None:
        self.ctx, self.inputs_mode, self.target = ctx, inputs_mode, target
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.inputs_mode, self.target),
                                     daemon=True)
        self.proc.start()
        self.conn = parent
        if not parent.poll(300) or parent.recv() != "ready":
            raise RuntimeError("conformance worker did not start")

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
        self.proc = self.conn = None

    def run(self, task: tuple[str, str], timeout: float) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        t0 = time.perf_counter()
        self.conn.send(task)
        try:
            ready = self.conn.poll(timeout)
            result = self.conn.recv() if ready else None
        except (EOFError, OSError):
            result = {"status": "crash", "detail": f"worker died (exit {self.proc.exitcode})"}
        if result is None:
            result = {"status": "crash", "detail": f"timeout after {timeout:.0f} s"}
            self._stop()
        elif result.get("detail", "").startswith("worker died"):
            self._stop()
        result["seconds"] = round(time.perf_counter() - t0, 2)
        return result

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self._stop()


def run_all(tasks: list[tuple[str, str]], jobs: int, timeout: float, inputs_mode: str,
            log_path: Path | None, target: str = "host"
            ) -> dict[tuple[str, str], dict[str, Any]]:
    ctx = mp.get_context("spawn")
    todo: queue.Queue = queue.Queue()
    for t in tasks:
        todo.put(t)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    lock = threading.Lock()
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below
    start = time.perf_counter()

    def loop() -> None:
        slot = _Slot(ctx, inputs_mode, target)
        try:
            while True:
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    return
                res = slot.run(task, timeout)
                with lock:
                    results[task] = res
                    if log:
                        log.write(json.dumps({"test": task[0], "compiler": task[1],
                                              "target": target, **res}) + "\n")
                        log.flush()
                    n = len(results)
                    if n % 50 == 0 or n == len(tasks):
                        print(f"  {n}/{len(tasks)} done, {time.perf_counter() - start:.0f} s",
                              file=sys.stderr, flush=True)
        finally:
            slot.close()

    threads = [threading.Thread(target=loop) for _ in range(max(1, jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if log:
        log.close()
    return results


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------
def summarize(results: dict[tuple[str, str], dict[str, Any]], ops: dict[str, str],
              compilers: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    per_op: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    totals: dict[str, Counter] = defaultdict(Counter)
    for (name, comp), res in results.items():
        per_op[ops[name]][comp][res["status"]] += 1
        group = "node" if "/" not in name else name.split("/")[0]
        totals[(comp, group)][res["status"]] += 1
        totals[(comp, "all")][res["status"]] += 1
    total_rows = []
    for comp in compilers:
        for group in ("node", *MODEL_KINDS, "all"):
            c = totals.get((comp, group))
            if not c:
                continue
            n = sum(c.values())
            total_rows.append({"compiler": comp, "tests": group, "total": n,
                               **{s: c[s] for s in STATUSES},
                               "pass_rate": round(100.0 * c["pass"] / n, 1)})
    op_rows = []
    for op in sorted(per_op):
        row: dict[str, Any] = {"op": op}
        for comp in compilers:
            c = per_op[op][comp]
            row[comp] = "/".join(str(c[s]) for s in STATUSES)
        op_rows.append(row)
    return total_rows, op_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-j", "--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per test (default 90)")
    ap.add_argument("--match", default=None, help="regex on test names (a subset; not saved)")
    ap.add_argument("--compilers", default="hwcc,tvm", help="hwcc,tvm (default both)")
    ap.add_argument("--inputs", choices=("exported", "raw"), default="exported")
    ap.add_argument("--target", default="host",
                    help="target triple both compilers build for; it must run on this machine "
                         "(default: host)")
    ap.add_argument("--log", type=Path, default=None, help="append per-test JSON lines here")
    ap.add_argument("--no-save", action="store_true", help="do not write results/*.json")
    ap.add_argument("--from-log", type=Path, nargs="+", default=None,
                    help="summarize --log files of earlier runs (later lines win); run nothing")
    args = ap.parse_args(argv)

    compilers = [c for c in args.compilers.split(",") if c]
    from targets import parse_target

    target = parse_target(args.target)
    if not target.runs_on_this_machine() and not args.from_log:
        missing = ", ".join(target.missing_host_features()) or target.arch
        ap.error(f"'{target}' does not run on this machine (it lacks {missing}): conformance "
                 "executes what it compiles")
    cases = load_cases()
    ops = {name: case_op(name, c, cases) for name, c in cases.items()}
    names = sorted(cases)
    if args.match:
        names = [n for n in names if re.search(args.match, n)]
    tasks = [(n, c) for n in names for c in compilers]
    del cases
    t0 = time.perf_counter()
    if args.from_log:
        results = {}
        for path in args.from_log:
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.pop("target", str(target)) != str(target):
                    continue  # another target's run
                results[(rec.pop("test"), rec.pop("compiler"))] = rec
        results = {t: results[t] for t in tasks if t in results}
    else:
        print(f"{len(names)} tests x {compilers}, {args.jobs} workers, inputs={args.inputs}, "
              f"target {target}", file=sys.stderr)
        results = run_all(tasks, args.jobs, args.timeout, args.inputs, args.log, str(target))
    wall = time.perf_counter() - t0
    total_rows, op_rows = summarize(results, ops, compilers)

    from benchmarks.common import RESULTS, machine, save_results, table

    for row in total_rows:
        row["isa"] = isa_label(target)
        row["target"] = str(target)
    print("\nPer op (pass/wrong/unsupported/crash):")
    print(table(op_rows, [("op", "op"), *[(c, c) for c in compilers]]))
    cols = [("isa", "target"), ("compiler", "compiler"), ("tests", "tests"),
            ("total", "total"), *[(s, s) for s in STATUSES], ("pass_rate", "pass %")]
    print("\nTotals:")
    print(table(total_rows, cols))
    wrong = sorted(n for (n, c), r in results.items() if c == "hwcc" and r["status"] == "wrong")
    if wrong:
        print(f"\nhwcc wrong values ({len(wrong)}): {', '.join(wrong)}")
    print(f"\n{len(tasks)} runs in {wall:.0f} s")
    if not args.match and not args.no_save:
        title = (f"ONNX backend conformance ({len(names)} tests: node + "
                 f"{', '.join(MODEL_KINDS)}; inputs={args.inputs}; per target)")
        # rows of the other targets' runs stay (each row names its target)
        rows, targets = total_rows, {isa_label(target): str(target)}
        old_path = RESULTS / "conformance.json"
        if old_path.exists():
            old = json.loads(old_path.read_text())
            kept = [r for r in old.get("rows", []) if r.get("target") not in (None, str(target))]
            rows = kept + total_rows
            targets = {**{r["isa"]: r["target"] for r in kept if "isa" in r}, **targets}
        targets = dict(sorted(targets.items(), key=lambda kv: _isa_rank(kv[0])))
        rows.sort(key=lambda r: (_isa_rank(r.get("isa", "")), r["compiler"] != "hwcc"))
        notes = ["Targets: " + "; ".join(f"{k} = `{v}`" for k, v in targets.items()) + "."]
        # the machine line names what was built: every target of the table
        host = {**machine(), "target": " and ".join(targets.values())}
        save_results("conformance", rows, {"columns": [list(c) for c in cols],
                                           "title": title, "targets": targets, "notes": notes,
                                           "machine": host})
    return 0


_ISA_ORDER = ("AVX-512 VNNI", "AVX-512", "AVX2", "x86-64")


def _isa_rank(label: str) -> tuple[int, str]:
    """Widest vector ISA first; other architectures after, by name."""
    return (_ISA_ORDER.index(label), "") if label in _ISA_ORDER else (len(_ISA_ORDER), label)


def isa_label(target) -> str:
    """A short name of the target's vector ISA for the table: ``AVX-512``, ``AVX2``, ..."""
    feats = set(target.features)
    if target.arch == "x86_64":
        if "+avx512f" in feats:
            return "AVX-512 VNNI" if "+avx512vnni" in feats else "AVX-512"
        return "AVX2" if "+avx2" in feats else "x86-64"
    return target.arch


if __name__ == "__main__":
    sys.exit(main())
