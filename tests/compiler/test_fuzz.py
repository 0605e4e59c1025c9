"""A small seeded fuzz run: mutated example models never crash, hang or compile wrongly.

``benchmarks/fuzz.py`` mutates the bundled example models (bytes, dims, op types, attributes,
initializers, input names, inserted nodes) and compiles each with ``hwcc compile`` in a
subprocess (a worker process, and a few fresh ``python -m compiler.cli`` processes). Every
case must end in one ``hwcc: error:`` line naming the file, a node or an op, or in a model
that onnxruntime runs too. The long run's command is in the README.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from benchmarks import fuzz

COUNT, SEED = 36, 0


#: onnxruntime (the harness's reference) writes its session id into the temporary directory.
ORT_SESSION_FILE = ".ses"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The seeded run, with a temporary directory of its own (what is left in it is noted)."""
    tmp = tmp_path_factory.mktemp("fuzz-tmpdir")
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp), None
    try:
        result = fuzz.fuzz(COUNT, SEED, timeout=150, jobs=2, fresh=2)
    finally:
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        tempfile.tempdir = old_tempdir
    result["left_in_tmpdir"] = sorted(p.name for p in tmp.iterdir())
    return result


@pytest.mark.slow
def test_no_traceback_signal_hang_or_wrongly_compiled_model(run: dict) -> None:
    counts = run["counts"]
    bad = [f"#{c['index']} {c['mutation']}: {c['detail']} -> {c['outcome']}: {c['line']}"
           for c in run["cases"] if c["outcome"] in fuzz.FAILURES]
    assert sum(counts[k] for k in fuzz.FAILURES) == 0, bad
    assert counts["clean_error"] + counts["compiled"] == COUNT
    assert counts["clean_error"] > 0 and counts["compiled"] > 0  # both paths were exercised


@pytest.mark.slow
def test_every_error_names_a_file_node_or_op(run: dict) -> None:
    unnamed = [c["line"] for c in run["cases"] if c["outcome"] == "clean_error" and not c["named"]]
    assert not unnamed


@pytest.mark.slow
def test_temporary_directory_is_left_as_it_was(run: dict) -> None:
    """Compiles, worker processes (ended with SIGTERM) and fresh processes leave nothing in
    the temporary directory but onnxruntime's session file."""
    assert [n for n in run["left_in_tmpdir"] if n != ORT_SESSION_FILE] == []


@pytest.mark.slow
def test_fresh_processes_ran(run: dict) -> None:
    """Some cases ran as `python -m compiler.cli`, where a signal would kill the command."""
    assert sum(c["fresh"] for c in run["cases"]) == 2


def test_cases_are_reproducible(tmp_path: Path) -> None:
    """Case N of seed S is the same file every time (so a failure can be rebuilt alone)."""
    a = fuzz.make_case(5, 7, tmp_path)
    data = Path(a.path).read_bytes()
    b = fuzz.make_case(5, 7, tmp_path)
    assert (a.mutation, a.detail) == (b.mutation, b.detail)
    assert Path(b.path).read_bytes() == data


def test_classify() -> None:
    """Outcomes from exit codes and stderr as a finished compile leaves them."""
    assert fuzz.classify(-11, "")[0] == "signal"
    assert fuzz.classify(1, "WARNING x\nhwcc: error: bad node 'n'\n") == \
        ("clean_error", "hwcc: error: bad node 'n'")
    assert fuzz.classify(1, "hwcc: internal error: KeyError: 'x' (run with --debug ...)")[0] \
        == "traceback"
    assert fuzz.classify(1, "Traceback (most recent call last):\n  ...\nValueError: x")[0] \
        == "traceback"
    assert fuzz.classify(0, "")[0] == "compiled"
    assert fuzz.classify(2, "usage: hwcc ...")[0] == "other"
