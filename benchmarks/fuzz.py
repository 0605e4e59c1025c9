"""Fuzz ``hwcc compile`` with mutated ONNX models: one clean line or a model onnxruntime runs.

Each case mutates one bundled example model (``examples/*.onnx``) in one way, seeded by
``(--seed, case index)`` so any case can be rebuilt alone:

* ``flip_bytes``: 1-8 bytes of the serialized file flipped;
* ``change_dims``: one dim of an initializer (its values regenerated) or of the graph input;
* ``change_op_type``: a node's op type replaced (by a known op or a made-up one);
* ``drop_attribute`` / ``alter_attribute``: an attribute removed, or its value changed
  (zero, negative, larger, shorter, longer);
* ``alter_initializer``: NaN/Inf values, a truncated buffer, another element type;
* ``rename_input``: a node input (or the graph input) renamed to an undefined or later value;
* ``insert_node``: a Reshape, Gather, MatMul or pooling node with random constants inserted
  after a node.

Every case is compiled by ``hwcc compile FILE --target host --no-verify`` in a subprocess:
a worker process that runs :func:`compiler.cli.main.main` for one file after another (TVM
imported once), restarted after a crash or a hang, and (``--fresh N``) for N cases a fresh
``python -m compiler.cli`` process each. Outcomes:

* ``clean_error``: exit 1 and one ``hwcc: error:`` line (and ``unnamed_error`` when that line
  names neither the file, nor a node, nor an op type);
* ``compiled``: exit 0 and onnxruntime runs the same model (``disagree`` when the outputs on
  the same random inputs differ beyond rtol 1e-3 / atol 1e-4, NaN where NaN);
* failures: ``compiled_ort_refuses`` (hwcc compiled what onnxruntime refuses), ``traceback``
  (a Python traceback or ``hwcc: internal error``), ``signal`` (the process died by a
  signal), ``hang`` (past ``--timeout``), ``other`` (any other exit or output).

Usage::

    python benchmarks/fuzz.py --count 2000 --seed 0 --timeout 120 --jobs 2 --save

prints a table (with the machine) and, with ``--save``, writes ``results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.onnx"))
RESULTS = Path(__file__).resolve().parent / "results"

MUTATIONS = ("flip_bytes", "change_dims", "change_op_type", "drop_attribute",
             "alter_attribute", "alter_initializer", "rename_input", "insert_node")
#: Outcomes that are failures of hwcc.
FAILURES = ("compiled_ort_refuses", "traceback", "signal", "hang", "other")
OUTCOMES = ("clean_error", "compiled", *FAILURES)
#: Ops a node may become (two made up: hwcc must refuse them by name).
OP_TYPES = ("Relu", "Sigmoid", "Conv", "MaxPool", "AveragePool", "Gemm", "MatMul", "Add",
            "Reshape", "Gather", "Flatten", "Transpose", "Softmax", "Identity", "Concat",
            "BatchNormalization", "GlobalAveragePool", "ConvTranspose", "LpPool",
            "NotAnOp", "Conv2d")


# -- mutations ------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _flip_bytes(model: onnx.ModelProto, rng: np.random.Generator) -> tuple[bytes, str]:
    data = bytearray(model.SerializeToString())
    spots = sorted(int(i) for i in rng.integers(0, len(data), int(rng.integers(1, 9))))
    for i in spots:
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data), f"flipped bytes at {spots}"


def _change_dims(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    g = model.graph
    if rng.random() < 0.25:
        dims = g.input[0].type.tensor_type.shape.dim
        i = int(rng.integers(len(dims)))
        new = int(_pick(rng, [0, 1, 2, 3, 7, 64, dims[i].dim_value + 1, -1]))
        dims[i].dim_value = new
        return f"input '{g.input[0].name}' dim {i} -> {new}"
    t = _pick(rng, list(g.initializer))
    arr = numpy_helper.to_array(t)
    shape = list(arr.shape)
    i = int(rng.integers(len(shape)))
    shape[i] = int(_pick(rng, [1, 2, 3, max(shape[i] - 1, 0), shape[i] + 1, shape[i] * 2]))
    if rng.random() < 0.2:
        shape.append(int(_pick(rng, [1, 3])))
    new = rng.standard_normal(shape).astype(arr.dtype)
    t.CopyFrom(numpy_helper.from_array(new, t.name))
    return f"initializer '{t.name}' {list(arr.shape)} -> {shape}"


def _change_op_type(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    node = _pick(rng, list(model.graph.node))
    old, node.op_type = node.op_type, str(_pick(rng, [o for o in OP_TYPES if o != node.op_type]))
    return f"node '{node.name}' {old} -> {node.op_type}"


def _drop_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    node = _pick(rng, nodes)
    i = int(rng.integers(len(node.attribute)))
    name = node.attribute[i].name
    del node.attribute[i]
    return f"node '{node.name}' dropped {name}"


def _alter_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    node = _pick(rng, nodes)
    a = _pick(rng, list(node.attribute))
    if a.type == onnx.AttributeProto.INTS:
        vals = list(a.ints)
        how = _pick(rng, ["zero", "negative", "bigger", "shorter", "longer", "swap"])
        if how == "zero" and vals:
            vals[int(rng.integers(len(vals)))] = 0
        elif how == "negative" and vals:
            vals[int(rng.integers(len(vals)))] = -int(rng.integers(1, 4))
        elif how == "bigger" and vals:
            vals[int(rng.integers(len(vals)))] += int(rng.integers(1, 20))
        elif how == "shorter":
            vals = vals[:-1]
        elif how == "longer":
            vals = vals + [int(rng.integers(0, 4))]
        else:
            vals = vals[::-1] if len(set(vals)) > 1 else [v + 2 for v in vals]
        a.ClearField("ints")
        a.ints.extend(vals)
        return f"node '{node.name}' {a.name} -> {vals} ({how})"
    if a.type == onnx.AttributeProto.INT:
        a.i = int(_pick(rng, [0, -1, 2, 3, 5, 16, 1 << 20]))
        return f"node '{node.name}' {a.name} -> {a.i}"
    if a.type == onnx.AttributeProto.FLOAT:
        a.f = float(_pick(rng, [0.0, -1.0, float("nan"), float("inf"), 1e30]))
        return f"node '{node.name}' {a.name} -> {a.f}"
    a.type = onnx.AttributeProto.FLOAT  # a kind the op does not expect
    a.f = 1.5
    return f"node '{node.name}' {a.name} retyped to FLOAT"


def _alter_initializer(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    t = _pick(rng, list(model.graph.initializer))
    arr = numpy_helper.to_array(t).copy()
    how = _pick(rng, ["nan", "inf", "truncate", "dtype", "huge"])
    if how in ("nan", "inf", "huge") and arr.size:
        idx = rng.integers(0, arr.size, max(1, arr.size // 10))
        arr.reshape(-1)[idx] = {"nan": np.nan, "inf": np.inf, "huge": 1e38}[how]
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif how == "truncate":
        raw = numpy_helper.from_array(arr, t.name)
        raw.raw_data = raw.raw_data[: len(raw.raw_data) // 2]
        t.CopyFrom(raw)
    else:
        t.CopyFrom(numpy_helper.from_array(arr.astype(_pick(rng, [np.float64, np.int64,
                                                                   np.float16])), t.name))
    return f"initializer '{t.name}' {how}"


def _rename_input(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    g = model.graph
    if rng.random() < 0.2:
        old = g.input[0].name
        g.input[0].name = "renamed_input"
        return f"graph input '{old}' -> 'renamed_input'"
    i = int(rng.integers(len(g.node)))
    node = g.node[i]
    k = int(rng.integers(len(node.input)))
    later = [o for n in g.node[i:] for o in n.output]
    new = str(_pick(rng, ["does_not_exist", *later[:3]]))
    old, node.input[k] = node.input[k], new
    return f"node '{node.name}' input {k} '{old}' -> '{new}'"


def _insert_node(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    """A node with random constants after a node's first output (its consumers follow)."""
    g = model.graph
    i = int(rng.integers(len(g.node) - 1))
    src = g.node[i].output[0]
    out = f"{src}__fuzz"
    name = f"fuzz_{g.node[i].op_type.lower()}_{i}"
    kind = _pick(rng, ["Reshape", "Gather", "MatMul", "MaxPool", "AveragePool"])
    c = f"{name}_const"
    if kind == "Reshape":
        shape = [int(v) for v in rng.choice([-1, 0, 1, 2, 8, 16, 64], size=int(rng.integers(1, 5)))]
        g.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), c))
        new = helper.make_node("Reshape", [src, c], [out], name=name)
        what = f"shape {shape}"
    elif kind == "Gather":
        idx = rng.integers(-20, 20, size=int(rng.integers(1, 4))).astype(np.int64)
        g.initializer.append(numpy_helper.from_array(idx, c))
        axis = int(rng.integers(-2, 4))
        new = helper.make_node("Gather", [src, c], [out], name=name, axis=axis)
        what = f"indices {idx.tolist()} axis {axis}"
    elif kind == "MatMul":
        shape = [int(v) for v in rng.choice([1, 4, 8, 16, 32], size=2)]
        g.initializer.append(numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), c))
        new = helper.make_node("MatMul", [src, c], [out], name=name)
        what = f"weight {shape}"
    else:
        ks = [int(v) for v in rng.integers(0, 12, size=int(_pick(rng, [1, 2, 2, 3])))]
        pads = [int(v) for v in rng.integers(0, 4, size=2 * len(ks))]
        new = helper.make_node(kind, [src], [out], name=name, kernel_shape=ks, pads=pads)
        what = f"kernel_shape {ks} pads {pads}"
    for n in g.node[i + 1:]:
        for k, v in enumerate(n.input):
            if v == src:
                n.input[k] = out
    for o in g.output:
        if o.name == src:
            o.name = out
    g.node.insert(i + 1, new)
    return f"inserted {kind} '{name}' ({what}) after '{g.node[i].name}'"


_MUTATORS = {"change_dims": _change_dims, "change_op_type": _change_op_type,
             "drop_attribute": _drop_attribute, "alter_attribute": _alter_attribute,
             "alter_initializer": _alter_initializer, "rename_input": _rename_input,
             "insert_node": _insert_node}


@dataclass
class Case:
    index: int
    source: str
    mutation: str
    detail: str
    path: str
    fresh: bool = False
    outcome: str = ""
    line: str = ""
    seconds: float = 0.0
    ort: str = ""
    named: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def make_case(index: int, seed: int, workdir: Path, fresh: bool = False) -> Case:
    """Case ``index`` of the run seeded ``seed``: the mutated file is written to ``workdir``."""
    rng = np.random.default_rng([seed, index])
    src = EXAMPLES[index % len(EXAMPLES)]
    mutation = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    model = onnx.load(str(src))
    if mutation == "flip_bytes":
        data, detail = _flip_bytes(model, rng)
    else:
        detail = _MUTATORS[mutation](model, rng)
        data = model.SerializeToString()
    path = workdir / f"case{index:05d}_{src.stem}_{mutation}.onnx"
    path.write_bytes(data)
    return Case(index, src.name, mutation, detail, str(path), fresh)


# -- running one case -----------------------------------------------------------------------
def compile_argv(case: Case, out: Path) -> list[str]:
    return ["compile", case.path, "--target", "host", "-o", str(out), "--no-verify",
            "--bench-repeat", "0"]


def classify(rc: int | None, stderr: str) -> tuple[str, str]:
    """(outcome, the error line) of a finished ``hwcc compile``; ``rc`` < 0: a signal."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    if rc is not None and rc < 0:
        return "signal", f"killed by {signal.Signals(-rc).name}"
    if "Traceback (most recent call last)" in stderr or \
            any(x.startswith("hwcc: internal error") for x in lines):
        return "traceback", next((x for x in lines if x.startswith("hwcc: internal error")),
                                 lines[-1] if lines else "")
    errors = [x for x in lines if x.startswith("hwcc: error:")]
    if rc == 0:
        return "compiled", ""
    if rc == 1 and len(errors) == 1:
        return "clean_error", errors[0]
    return "other", f"exit {rc}: " + (lines[-1] if lines else "(no output)")


#: An op type named in an error line: a capitalized word of ONNX's op names.
_OPS = None


def names_something(line: str, case: Case) -> bool:
    """Whether an error line names the file, a node, a graph input or output, or an op type."""
    global _OPS
    if case.path in line or Path(case.path).name in line or "node" in line:
        return True
    if re.search(r"\b(input|output) '[^']+'", line):  # a graph input or output, by name
        return True
    if _OPS is None:
        _OPS = {s.name for s in onnx.defs.get_all_schemas_with_history()} | set(OP_TYPES)
    return any(w in _OPS for w in re.findall(r"[A-Za-z][A-Za-z0-9]+", line))


def check_with_ort(model_path: str, artifact: str) -> dict[str, Any]:
    """Run the compiled artifact and onnxruntime on the same seeded inputs."""
    import onnxruntime as ort

    from compiler.artifact.runtime import Artifact

    art = Artifact.load(artifact)
    feeds = art.random_inputs(seed=0)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        theirs = sess.run(None, feeds)
    except Exception as err:  # noqa: BLE001 - any refusal is the answer
        return {"ort": "refused", "ort_error": " ".join(str(err).split())[:300]}
    ours = art.run(feeds)
    for (name, a), b in zip(ours.items(), theirs):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or not np.allclose(a.astype(np.float64), b.astype(np.float64),
                                                 rtol=1e-3, atol=1e-4, equal_nan=True):
            return {"ort": "disagree", "output": name}
    return {"ort": "agrees"}


def _worker() -> None:
    """Serve cases on stdin (one JSON per line), one JSON result per line on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    from compiler.cli.main import main

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        res: dict[str, Any] = {}
        with _redirected(job["log"]):
            start = time.perf_counter()
            try:
                rc = main(job["argv"])
            except SystemExit as err:  # argparse
                rc = err.code if isinstance(err.code, int) else 2
            except BaseException:  # noqa: BLE001 - a traceback is what we count
                import traceback

                traceback.print_exc()
                rc = 1
            res["rc"] = rc
            res["seconds"] = time.perf_counter() - start
        if rc == 0:
            out.write(json.dumps({"phase": "check"}) + "\n")
            with _redirected(job["log"] + ".check"):
                try:
                    res.update(check_with_ort(job["model"], job["out"]))
                except Exception as err:  # noqa: BLE001 - e.g. the artifact does not load
                    res.update({"ort": "check_failed", "error": f"{type(err).__name__}: "
                                f"{' '.join(str(err).split())[:300]}"})
        out.write(json.dumps(res) + "\n")


@contextlib.contextmanager
def _redirected(log: str):
    """Point file descriptors 1 and 2 (Python's, TVM's and onnxruntime's output) at ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Worker:
    """A ``fuzz.py --worker`` process, restarted after a crash or a hang."""

    def __init__(self, workdir: Path, start_timeout: float = 300) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=self.workdir,
            env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        first = self._next(self.start_timeout)
        if not first or not first.get("ready"):
            raise RuntimeError("fuzz worker did not start")

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next line as JSON; None at EOF; raises queue.Empty at the timeout."""
        line = self.lines.get(timeout=timeout)
        return None if line is None else json.loads(line)

    def stop(self, grace: float = 10.0) -> None:
        """End the worker: SIGTERM first (hwcc removes its temporary directory on it), then
        SIGKILL after ``grace`` seconds (a worker that hangs)."""
        if self.proc is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self.proc = None

    def run(self, case: Case, out: Path, log: Path, timeout: float) -> dict[str, Any]:
        if self.proc is None:
            self._start()
        job = {"argv": compile_argv(case, out), "model": case.path, "out": str(out),
               "log": str(log)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        phase = "compile"
        while True:
            try:
                msg = self._next(max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                return {"hang": True, "phase": phase}
            if msg is None:  # the worker died
                rc = self.proc.wait()
                self.proc = None
                return {"rc": rc if rc < 0 else -1, "phase": phase, "died": True}
            if "phase" in msg and len(msg) == 1:
                phase = msg["phase"]
                continue
            return msg


def run_fresh(case: Case, out: Path, timeout: float) -> dict[str, Any]:
    """``python -m compiler.cli compile`` in its own process, then the onnxruntime check."""
    cmd = [sys.executable, "-m", "compiler.cli", *compile_argv(case, out)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=out.parent, env=_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"hang": True, "phase": "compile"}
    res: dict[str, Any] = {"rc": proc.returncode, "stderr": proc.stderr,
                           "seconds": time.perf_counter() - start}
    if proc.returncode == 0:
        chk = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--check",
                              case.path, str(out)], cwd=out.parent, env=_env(),
                             capture_output=True, text=True, timeout=timeout, check=False)
        last = (chk.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            res.update(json.loads(last))
        except ValueError:
            res.update({"ort": "check_failed", "error": f"exit {chk.returncode}"})
    return res


def finish(case: Case, res: dict[str, Any], stderr: str) -> Case:
    case.seconds = round(float(res.get("seconds", 0.0)), 3)
    if res.get("hang"):
        case.outcome, case.line = "hang", f"no answer after the timeout ({res['phase']})"
        return case
    if res.get("died"):
        if res["phase"] == "check":  # onnxruntime (or the artifact's run) crashed: not hwcc's
            case.outcome, case.ort = "compiled_ort_refuses", "crashed"
            case.line = f"the check process died ({res['rc']})"
            return case
        rc = res["rc"]
        case.outcome = "signal"
        case.line = f"killed by {signal.Signals(-rc).name}" if rc < 0 else "worker died"
        return case
    case.outcome, case.line = classify(res.get("rc"), stderr)
    if case.outcome == "clean_error":
        case.named = names_something(case.line, case)
    if case.outcome == "compiled":
        case.ort = res.get("ort", "")
        if case.ort in ("refused", "check_failed"):
            case.outcome = "compiled_ort_refuses" if case.ort == "refused" else "traceback"
            case.line = res.get("ort_error") or res.get("error", "")
        elif case.ort == "disagree":
            case.extra["output"] = res.get("output")
    return case


def run_cases(cases: list[Case], workdir: Path, timeout: float, jobs: int,
              progress: bool = True) -> list[Case]:
    """Run every case (``jobs`` workers in parallel); outcomes are filled in."""
    todo: queue.Queue = queue.Queue()
    for c in cases:
        todo.put(c)
    done: list[Case] = []
    lock = threading.Lock()

    def loop() -> None:
        worker = Worker(workdir)
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                out = workdir / f"out{case.index:05d}"
                log = workdir / f"case{case.index:05d}.log"
                if case.fresh:
                    res = run_fresh(case, out, timeout)
                    stderr = res.pop("stderr", "")
                else:
                    res = worker.run(case, out, log, timeout)
                    stderr = log.read_text(errors="replace") if log.exists() else ""
                finish(case, res, stderr)
                shutil.rmtree(out, ignore_errors=True)
                with lock:
                    done.append(case)
                    if progress:
                        mark = "!" if case.outcome in FAILURES or not case.named else "."
                        print(mark, end="", flush=True, file=sys.stderr)
        finally:
            worker.stop()

    threads = [threading.Thread(target=loop) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if progress:
        print(file=sys.stderr)
    return sorted(done, key=lambda c: c.index)


def fuzz(count: int, seed: int, timeout: float = 120, jobs: int = 1, fresh: int = 0,
         workdir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Mutate and compile ``count`` cases; ``fresh`` of them (spread evenly) in a fresh
    ``python -m compiler.cli`` process each. Returns the counts and every case."""
    with tempfile.TemporaryDirectory(prefix="hwcc-fuzz-") as tmp:
        work = Path(workdir or tmp)
        step = max(count // fresh, 1) if fresh else 0
        cases = [make_case(i, seed, work, fresh=bool(step) and i % step == 0
                           and i // step < fresh) for i in range(count)]
        start = time.perf_counter()
        cases = run_cases(cases, work, timeout, jobs, progress)
        seconds = time.perf_counter() - start
    counts = Counter(c.outcome for c in cases)
    compiled = [c for c in cases if c.outcome == "compiled"]
    summary = {
        "count": count, "seed": seed, "timeout_s": timeout, "jobs": jobs, "fresh": fresh,
        "seconds": round(seconds, 1),
        "counts": {k: counts.get(k, 0) for k in OUTCOMES},
        "unnamed_error": sum(1 for c in cases if c.outcome == "clean_error" and not c.named),
        "disagree": sum(1 for c in compiled if c.ort == "disagree"),
        "by_mutation": {m: dict(Counter(c.outcome for c in cases if c.mutation == m))
                        for m in MUTATIONS},
        "cases": [asdict(c) for c in cases],
    }
    return summary


def print_report(s: dict[str, Any], machine_line: str) -> None:
    print(machine_line)
    print(f"{s['count']} mutated models (seed {s['seed']}, timeout {s['timeout_s']} s, "
          f"{s['jobs']} jobs, {s['fresh']} in fresh processes) in {s['seconds']} s\n")
    rows = [("clean error (one `hwcc: error:` line)", s["counts"]["clean_error"]),
            ("  of which name no file, node or op", s["unnamed_error"]),
            ("compiled, onnxruntime runs it too", s["counts"]["compiled"]),
            ("  of which disagree with onnxruntime", s["disagree"]),
            ("compiled, onnxruntime refuses (failure)", s["counts"]["compiled_ort_refuses"]),
            ("traceback / internal error (failure)", s["counts"]["traceback"]),
            ("signal (failure)", s["counts"]["signal"]),
            ("hang (failure)", s["counts"]["hang"]),
            ("other exit (failure)", s["counts"]["other"])]
    w = max(len(r[0]) for r in rows)
    print(f"| {'outcome':<{w}} | files |")
    print(f"| {'-' * w} | ----: |")
    for name, n in rows:
        print(f"| {name:<{w}} | {n:>5} |")
    bad = [c for c in s["cases"] if c["outcome"] in FAILURES or
           (c["outcome"] == "clean_error" and not c["named"]) or c["ort"] == "disagree"]
    if bad:
        print("\ncases to look at (python benchmarks/fuzz.py --seed S --case N rebuilds one):")
        for c in bad:
            print(f"  #{c['index']} {c['source']} {c['mutation']}: {c['detail']} -> "
                  f"{c['outcome']}{' (' + c['ort'] + ')' if c['ort'] else ''}: {c['line'][:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50, help="mutated models (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds per compile before it counts as a hang (default 120)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--fresh", type=int, default=3, metavar="N", help="cases run in a fresh "
                    "`python -m compiler.cli` process each (default 3)")
    ap.add_argument("--case", type=int, metavar="N", help="only write case N's model to "
                    "--keep (or the current directory) and print its mutation")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the mutated models")
    ap.add_argument("--save", action="store_true", help="write results/fuzz.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", nargs=2, metavar=("MODEL", "ARTIFACT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    if args.check:
        print(json.dumps(check_with_ort(*args.check)))
        return 0
    if args.case is not None:
        work = Path(args.keep or ".")
        work.mkdir(parents=True, exist_ok=True)
        c = make_case(args.case, args.seed, work)
        print(f"{c.path}: {c.source} {c.mutation}: {c.detail}")
        return 0
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, machine_line

    workdir = Path(args.keep) if args.keep else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    s = fuzz(args.count, args.seed, args.timeout, args.jobs, args.fresh, workdir,
             progress=True)
    m = machine()
    print_report(s, machine_line(m))
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "fuzz.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"machine": m, **s}, indent=2))
        tmp.replace(path)
        print(f"\nwrote {path}")
    failures = sum(s["counts"][k] for k in FAILURES) + s["unnamed_error"]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
