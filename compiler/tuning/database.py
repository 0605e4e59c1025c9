"""Where tuning records live and how they are opened safely.

Records are MetaSchedule JSON databases under ``tuning_logs/<device>/<target-key>/``. A line
that does not parse (a crash mid-write, a hand edit) is skipped with a warning instead of
failing the compile: the database is opened from a repaired copy (:func:`repair_log`).
:func:`compact_log` keeps each kernel's fastest records (what ships in ``tuning_logs/``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import ConfigError, TuningError
from targets import Target

logger = logging.getLogger(__name__)

#: run_secs of a candidate that failed to build or run (MetaSchedule reports 1e10)
_FAILED_SECS = 1e9

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def default_log_root() -> Path:
    """``$HWCC_TUNING_LOGS``, else the ``tuning_logs/`` folder of this checkout."""
    env = os.environ.get("HWCC_TUNING_LOGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "tuning_logs"


def device_name(target: Target) -> str:
    """A name for the class of device: the arch and its widest vector/int8 features."""
    caps = target.capabilities
    parts = [target.arch if target.kind != "c" else "embedded"]
    if target.kind == "cuda":
        parts = ["cuda", target.gpu_arch or "sm_80"]
    elif caps.vector_bits:
        parts.append(f"v{caps.vector_bits}")
    return "-".join(parts)


def target_key(target: Target) -> str:
    """A file-system-safe key of the full target string (features, cores included)."""
    key = f"{target}-c{target.cores}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", key).strip("_")


def log_dir(target: Target, root: str | Path | None = None, device: str | None = None) -> Path:
    root = Path(root) if root is not None else default_log_root()
    return root / (device or device_name(target)) / target_key(target)


def has_records(path: Path) -> bool:
    return (path / WORKLOADS).exists() and (path / RECORDS).exists()


def open_database(tuning_log: str | Path | None, target: Target) -> tuple[Any, Path | None]:
    """Open the MetaSchedule database for ``target`` (None when there are no records)."""
    path = Path(tuning_log) if tuning_log is not None else log_dir(target)
    if not has_records(path):
        if tuning_log is not None:
            raise TuningError(f"no tuning records in {path} (expected {WORKLOADS} and {RECORDS})")
        return None, None
    from tvm.s_tir import meta_schedule as ms

    # repair a copy: the log may be shipped read-only, and a dropped workload line renumbers
    # the records that point at later workloads
    clean = Path(tempfile.mkdtemp(prefix="hwcc-db-"))
    shutil.copy(path / WORKLOADS, clean / WORKLOADS)
    shutil.copy(path / RECORDS, clean / RECORDS)
    bad = repair_log(clean)
    try:
        db = ms.database.JSONDatabase(work_dir=str(clean), allow_missing=False)
    except Exception as err:
        shutil.rmtree(clean, ignore_errors=True)
        raise TuningError(f"unusable tuning log {path}: {str(err).strip()[:200]}") from None
    logger.info("using tuning records from %s (%d corrupted lines skipped)", path, bad)
    return db, path


#: Records of kernels whose tuned schedules measured slower than hwcc's default schedule.
#: Same format as the records file (indices into the same workload file); ``compile`` never
#: reads it, so those kernels keep their default schedule, while resuming still counts them.
SLOWER = "hwcc_slower_than_default.json"


def _record_files(path: Path) -> list[Path]:
    return [path / RECORDS, path / SLOWER]


def repair_log(path: Path) -> int:
    """Drop corrupted lines from a MetaSchedule JSON log in place; return how many.

    Records point at workloads by line number, so a dropped workload line drops its records
    and renumbers the others. The original files are kept as ``*.bak`` when anything changed.
    """
    wl_path = path / WORKLOADS
    wl_lines = _read_lines(wl_path)
    renumber: dict[int, int] = {}
    kept_wl: list[str] = []
    bad = 0
    for i, line in enumerate(wl_lines):
        if _parses(line):
            renumber[i] = len(kept_wl)
            kept_wl.append(line)
        else:
            bad += 1
            logger.warning("%s:%d: corrupted workload skipped", wl_path, i + 1)
    renumbered = len(kept_wl) != len(wl_lines)
    rewrite: dict[Path, list[str]] = {wl_path: kept_wl}
    for rec_path in _record_files(path):
        kept: list[str] = []
        for i, line in enumerate(_read_lines(rec_path)):
            try:
                rec = json.loads(line)
                rec[0] = renumber[int(rec[0])]
            except (ValueError, TypeError, KeyError, IndexError):
                bad += 1
                logger.warning("%s:%d: corrupted tuning record skipped", rec_path, i + 1)
                continue
            kept.append(json.dumps(rec, separators=(",", ":")) if renumbered else line)
        rewrite[rec_path] = kept
    if bad or any(_missing_newline(p) for p in rewrite):
        for p, lines in rewrite.items():
            if p.exists():
                shutil.copyfile(p, p.with_name(p.name + ".bak"))
                _write_lines(p, lines)
    return bad


def compact_log(path: Path, keep: int = 1) -> tuple[int, int]:
    """Keep the ``keep`` fastest valid records of each kernel (in each record file) and the
    workloads they use; return (records before, records after).

    Compile applies only a kernel's best record, so a compacted log compiles to the same
    kernels in a fraction of the size (what ships in ``tuning_logs/``). Resuming counts the
    records that are left, so a later ``hwcc tune`` with the same ``--trials`` tunes again.
    """
    if keep < 1:
        raise ConfigError(f"keep must be at least 1; got {keep}")
    repair_log(path)
    wl_lines = _read_lines(path / WORKLOADS)
    before = after = 0
    kept: dict[Path, list[tuple[int, str]]] = {}
    for rec_path in _record_files(path):
        best: dict[int, list[tuple[float, int, str]]] = {}
        for i, line in enumerate(_read_lines(rec_path)):
            before += 1
            idx, (_trace, run_secs, *_rest) = json.loads(line)
            ms_ = _run_ms(run_secs)
            if ms_ is not None:
                best.setdefault(idx, []).append((ms_, i, line))
        kept[rec_path] = sorted(
            ((i, line) for recs in best.values() for _ms, i, line in sorted(recs)[:keep]))
        after += len(kept[rec_path])
    used = sorted({json.loads(line)[0] for lines in kept.values() for _i, line in lines})
    renumber = {old: new for new, old in enumerate(used)}
    _write_lines(path / WORKLOADS, [wl_lines[i] for i in used])
    for rec_path, lines in kept.items():
        out = []
        for _i, line in lines:
            rec = json.loads(line)
            rec[0] = renumber[rec[0]]
            out.append(json.dumps(rec, separators=(",", ":")))
        if rec_path.exists() or out:
            _write_lines(rec_path, out)
    return before, after


def _read_lines(p: Path) -> list[str]:
    if not p.exists():
        return []
    return [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]


def _write_lines(p: Path, lines: Sequence[str]) -> None:
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, p)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _missing_newline(p: Path) -> bool:
    if not p.exists() or p.stat().st_size == 0:
        return False
    with open(p, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


@dataclass
class _LogEntry:
    """One kernel's records in a log: how many, and the best valid latencies."""

    records: int = 0
    best_ms: float | None = None  # in the records file (what compile applies)
    best_slower_ms: float | None = None  # in the slower-than-default file


def read_log(path: Path) -> dict[str, _LogEntry]:
    """Per workload structural hash: record count and best latencies, read from the files."""
    hashes = [json.loads(ln)[0] for ln in _read_lines(path / WORKLOADS)]
    out: dict[str, _LogEntry] = {}
    for rec_path in _record_files(path):
        live = rec_path.name != SLOWER
        for line in _read_lines(rec_path):
            idx, (_trace, run_secs, *_rest) = json.loads(line)
            entry = out.setdefault(str(hashes[idx]), _LogEntry())
            entry.records += 1
            ms_ = _run_ms(run_secs)
            if ms_ is None:
                continue
            if live and (entry.best_ms is None or ms_ < entry.best_ms):
                entry.best_ms = ms_
            if not live and (entry.best_slower_ms is None or ms_ < entry.best_slower_ms):
                entry.best_slower_ms = ms_
    return out


def _partition_log(path: Path, slower: set[str], settled: set[str]) -> None:
    """Move the records of the kernels in ``settled`` (structural hashes) to the file their
    verdict names: :data:`SLOWER` for those in ``slower``, the records file for the rest.

    Records of other kernels (other models tuned into the same log) stay where an earlier
    run put them: this run measured no default for them.
    """
    hashes = [str(json.loads(ln)[0]) for ln in _read_lines(path / WORKLOADS)]
    files = {RECORDS: _read_lines(path / RECORDS), SLOWER: _read_lines(path / SLOWER)}
    moved = {RECORDS: [], SLOWER: []}
    for name, lines in files.items():
        for line in lines:
            h = hashes[json.loads(line)[0]]
            dest = name if h not in settled else (SLOWER if h in slower else RECORDS)
            moved[dest].append(line)
    for name, lines in moved.items():
        if lines != files[name]:
            _write_lines(path / name, lines)


def _run_ms(run_secs: Any) -> float | None:
    """A candidate's latency in ms: the fastest of its repeats (None: it failed).

    The fastest repeat is the figure least disturbed by other processes on the machine; the
    default schedule and the candidates are compared on it.
    """
    if run_secs is None:
        return None
    vals = [float(v) for v in run_secs]
    if not vals or min(vals) >= _FAILED_SECS:
        return None
    return 1e3 * min(vals)
