"""Where tuning records live and how they are opened safely.

Records are MetaSchedule JSON databases under ``tuning_logs/<device>/<target-key>/``. A line
that does not parse (a crash mid-write, a hand edit) is skipped with a warning instead of
failing the compile: the database is opened from a repaired copy (:func:`repair_log`), and
the warning names the user's file, not the copy. :func:`compact_log` keeps each kernel's
fastest records (what ships in ``tuning_logs/``).

A log may be shared by several processes at once (two ``hwcc tune`` runs, a compile reading
while a tune appends). Every access holds an advisory lock (``fcntl.flock`` on
:data:`LOCK` in the log's folder, :func:`log_lock`):

* a tuner appends through :class:`SharedLog`: under the lock it looks up (or appends) the
  workload's line and appends its records with one ``write`` each batch, so records of two
  tuners never interleave within a line nor point at the other's workloads;
* rewrites (repair, compaction, the slower-than-default split) replace several files
  together through a journal (:func:`_rewrite`): new files are written beside the old ones
  and synced, a journal naming them is renamed into place (the commit point), then each is
  renamed over its old file. Whoever takes the lock next finishes a committed rewrite or
  discards an uncommitted one, so ``kill -9`` at any instant leaves either the old log or
  the new one, never a mix whose records point at the wrong workloads;
* readers copy the files under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler import tempdirs
from compiler.errors import ConfigError, TuningError
from targets import Target

logger = logging.getLogger(__name__)

#: run_secs of a candidate that failed to build or run (MetaSchedule reports 1e10)
_FAILED_SECS = 1e9

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
#: The advisory lock file of a log folder (empty; left in place: removing it would race).
LOCK = ".hwcc.lock"
#: Journal of a multi-file rewrite in flight: the names whose ``*.new`` files replace them.
JOURNAL = ".hwcc-rewrite.json"
_NEW = ".new"


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
    """Open the MetaSchedule database for ``target`` (None when there are no records).

    The database is read from a repaired copy in this process's temporary directory
    (:mod:`compiler.tempdirs`), taken under the log's lock; warnings about corrupted lines
    name the log's own files.
    """
    path = Path(tuning_log) if tuning_log is not None else log_dir(target)
    if not has_records(path):
        if tuning_log is not None:
            raise TuningError(f"no tuning records in {path} (expected {WORKLOADS} and {RECORDS})")
        return None, None
    from tvm.s_tir import meta_schedule as ms

    # repair a copy: the log may be shipped read-only, and a dropped workload line renumbers
    # the records that point at later workloads
    clean = tempdirs.mkdtemp("hwcc-db-")
    try:
        _copy_consistent(path, clean)
        bad = repair_log(clean, shown_as=path)
        try:
            db = ms.database.JSONDatabase(work_dir=str(clean), allow_missing=False)
        except Exception as err:  # noqa: BLE001 - TVM raises many types for a bad log
            raise TuningError(f"unusable tuning log {path}: {str(err).strip()[:200]}") from None
    finally:
        shutil.rmtree(clean, ignore_errors=True)  # the database holds its records in memory
    logger.info("using tuning records from %s (%d corrupted lines skipped)", path, bad)
    return db, path


def _copy_consistent(path: Path, dest: Path) -> None:
    """Copy the workloads and records of ``path`` as one state of the log: under its lock,
    and, should a writer make the lock file only now, again if a rewrite replaced a file
    meanwhile (appends only add lines, which the repair handles when torn)."""
    for _attempt in range(5):
        with log_lock(path, create=False):
            inodes = [_stamp(path / n)[0] for n in (WORKLOADS, RECORDS)]
            shutil.copy(path / WORKLOADS, dest / WORKLOADS)
            shutil.copy(path / RECORDS, dest / RECORDS)
            if inodes == [_stamp(path / n)[0] for n in (WORKLOADS, RECORDS)] \
                    and not (path / JOURNAL).exists():
                return
    raise TuningError(f"tuning log {path} keeps changing under a writer without the lock")


# -- locking and crash-safe rewrites --------------------------------------------------------
_held: dict[str, list[Any]] = {}  # lock file -> [fd or None, depth] (flock is per open file)
_held_lock = threading.RLock()


@contextlib.contextmanager
def log_lock(path: Path, create: bool = True) -> Iterator[None]:
    """Hold the advisory lock of the log folder ``path`` (re-entrant within a process).

    On first taking it, a rewrite interrupted by a crash is finished or undone
    (:func:`_recover`). ``create=False`` (readers): the lock file is not made, and where
    there is none (no process ever wrote this log) the block runs unlocked.
    """
    key = os.path.abspath(path / LOCK)
    with _held_lock:
        if key in _held:
            _held[key][1] += 1
            try:
                yield
            finally:
                _held[key][1] -= 1
            return
        fd: int | None = None
        try:
            # readers never make the file: a shipped log (tuning_logs/ of a checkout, or
            # read-only) stays as it is; a writer makes it before its first write
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644) if create else \
                os.open(key, os.O_RDONLY)
        except OSError as err:
            if create:
                raise TuningError(f"cannot lock tuning log {path}: {err.strerror}") from None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # a reader may lack the right to finish a rewrite: its copy then sees the
                # journal and says so (:func:`_copy_consistent`)
                with contextlib.suppress(*(() if create else (OSError,))):
                    _recover(path)
            _held[key] = [fd, 1]
            yield
        finally:
            _held.pop(key, None)
            if fd is not None:
                os.close(fd)  # releases the flock


def _rewrite(path: Path, contents: Mapping[str, Sequence[str]]) -> None:
    """Replace the files ``contents`` names (in folder ``path``) together, under the lock.

    Each new file is written and synced as ``<name>.new``; the journal listing them is then
    renamed into place (the commit point); then each ``.new`` is renamed over its file and
    the journal removed. :func:`_recover` completes a committed rewrite, or drops the
    ``.new`` files of an uncommitted one.
    """
    names = list(contents)
    for name in names:
        _write_synced(path / (name + _NEW), "".join(ln + "\n" for ln in contents[name]))
    _write_synced(path / (JOURNAL + _NEW), json.dumps(names))
    os.replace(path / (JOURNAL + _NEW), path / JOURNAL)
    _sync_dir(path)
    _finish_rewrite(path, names)


def _finish_rewrite(path: Path, names: Sequence[str]) -> None:
    for name in names:
        new = path / (name + _NEW)
        if new.exists():
            os.replace(new, path / name)
    _sync_dir(path)
    (path / JOURNAL).unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Finish a committed rewrite a crash interrupted, or discard an uncommitted one."""
    journal = path / JOURNAL
    if journal.exists():
        try:
            names = [str(n) for n in json.loads(journal.read_text())
                     if str(n) in _LOG_FILES]
        except (OSError, ValueError, TypeError):
            names = []  # written atomically: never torn; unreadable means not ours
        logger.warning("%s: finishing a rewrite an earlier process left half done", path)
        _finish_rewrite(path, names)
    for name in (*_LOG_FILES, JOURNAL):
        (path / (name + _NEW)).unlink(missing_ok=True)  # an uncommitted rewrite: old files stand


def _write_synced(p: Path, text: str) -> None:
    with open(p, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SharedLog:
    """Copies the records a tuner's own database commits to a log that other processes may
    append to at the same time.

    MetaSchedule's ``JSONDatabase`` numbers workloads by their line in its own memory, so two
    of them appending to one file make records point at each other's workloads. A tuner
    therefore searches with a private ``JSONDatabase`` (a copy of the log, in its temporary
    directory) and :meth:`sync` carries each new record line over: under the lock it finds
    the workload's line in the log as it is now (appending it when missing), renumbers the
    record to it and appends the batch in one ``write``. The lines are TVM's own, byte for
    byte, but for that number.
    """

    def __init__(self, path: Path, private: Path) -> None:
        self.path = Path(path)
        self.private = Path(private)
        rec = self.private / RECORDS
        self._offset = rec.stat().st_size if rec.exists() else 0
        self._private_wl: list[str] = []
        self._index: tuple[tuple[int, int, int], dict[tuple[str, ...], int]] | None = None

    def sync(self) -> int:
        """Append the records committed to the private database since the last call; returns
        how many."""
        rec_path = self.private / RECORDS
        if not rec_path.exists():
            return 0
        with open(rec_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        if not end:
            return 0
        self._offset += end
        lines = [ln for ln in data[:end].decode().splitlines() if ln.strip()]
        if not lines:
            return 0
        with log_lock(self.path):
            out = []
            for line in lines:
                m = _RECORD_INDEX.match(line)
                if m is None:
                    raise TuningError(f"unexpected tuning record in {rec_path}: {line[:80]}")
                idx = self._workload_index(self._private_workload(int(m.group(1))))
                out.append(f"[{idx},{line[m.end():]}\n")
            _append(self.path / RECORDS, "".join(out))
        return len(out)

    def _private_workload(self, i: int) -> tuple[str, ...]:
        if i >= len(self._private_wl):
            self._private_wl = _read_lines(self.private / WORKLOADS)
        return tuple(str(x) for x in json.loads(self._private_wl[i]))

    def _workload_index(self, key: tuple[str, ...]) -> int:
        wl_path = self.path / WORKLOADS
        stamp = _stamp(wl_path)
        if self._index is None or self._index[0] != stamp:
            index: dict[tuple[str, ...], int] = {}
            for i, line in enumerate(_read_lines(wl_path)):
                with contextlib.suppress(ValueError, TypeError):
                    index.setdefault(tuple(str(x) for x in json.loads(line)), i)
            self._index = (stamp, index)
        index = self._index[1]
        if key not in index:
            index[key] = len(_read_lines(wl_path))
            _append(wl_path, json.dumps(list(key), separators=(",", ":")) + "\n")
            self._index = (_stamp(wl_path), index)
        return index[key]


_RECORD_INDEX = re.compile(r"\[\s*(\d+)\s*,")


def _stamp(p: Path) -> tuple[int, int, int]:
    try:
        st = p.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _append(p: Path, text: str) -> None:
    """Append ``text`` in one ``write`` (a torn last line of a crashed writer is ended first,
    so that the repair drops it alone)."""
    data = text.encode()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and _missing_newline(p):
            data = b"\n" + data
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


#: Records of kernels whose tuned schedules measured slower than hwcc's default schedule.
#: Same format as the records file (indices into the same workload file); ``compile`` never
#: reads it, so those kernels keep their default schedule, while resuming still counts them.
SLOWER = "hwcc_slower_than_default.json"
_LOG_FILES = (WORKLOADS, RECORDS, SLOWER)


def _record_files(path: Path) -> list[Path]:
    return [path / RECORDS, path / SLOWER]


def repair_log(path: Path, shown_as: Path | None = None) -> int:
    """Drop corrupted lines from a MetaSchedule JSON log in place; return how many.

    Records point at workloads by line number, so a dropped workload line drops its records
    and renumbers the others. The original files are kept as ``*.bak`` when anything changed.
    Warnings name the files in ``shown_as`` (the user's log, when ``path`` is a copy of it).
    """
    with log_lock(path):
        return _repair(path, Path(shown_as) if shown_as is not None else path)


def _repair(path: Path, shown: Path) -> int:
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
            logger.warning("%s:%d: corrupted workload skipped", shown / WORKLOADS, i + 1)
    renumbered = len(kept_wl) != len(wl_lines)
    rewrite: dict[str, list[str]] = {WORKLOADS: kept_wl}
    for rec_path in _record_files(path):
        kept: list[str] = []
        for i, line in enumerate(_read_lines(rec_path)):
            try:
                rec = json.loads(line)
                rec[0] = renumber[int(rec[0])]
            except (ValueError, TypeError, KeyError, IndexError):
                bad += 1
                logger.warning("%s:%d: corrupted tuning record skipped", shown / rec_path.name,
                               i + 1)
                continue
            kept.append(json.dumps(rec, separators=(",", ":")) if renumbered else line)
        rewrite[rec_path.name] = kept
    if bad or any(_missing_newline(path / name) for name in rewrite):
        present = {name: lines for name, lines in rewrite.items() if (path / name).exists()}
        for name in present:
            shutil.copyfile(path / name, path / (name + ".bak"))
        _rewrite(path, present)
    return bad


def compact_log(path: Path, keep: int = 1) -> tuple[int, int]:
    """Keep the ``keep`` fastest valid records of each kernel (in each record file) and the
    workloads they use; return (records before, records after).

    Compile applies only a kernel's best record, so a compacted log compiles to the same
    kernels in a fraction of the size (what ships in ``tuning_logs/``). Resuming counts the
    records that are left, so a later ``hwcc tune`` with the same ``--trials`` tunes again.
    Runs under the log's lock, and replaces its files together (:func:`_rewrite`): a crash
    at any point leaves the log as it was or compacted.
    """
    if keep < 1:
        raise ConfigError(f"keep must be at least 1; got {keep}")
    with log_lock(path):
        _repair(path, path)
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
        rewrite: dict[str, list[str]] = {WORKLOADS: [wl_lines[i] for i in used]}
        for rec_path, lines in kept.items():
            out = []
            for _i, line in lines:
                rec = json.loads(line)
                rec[0] = renumber[rec[0]]
                out.append(json.dumps(rec, separators=(",", ":")))
            if rec_path.exists() or out:
                rewrite[rec_path.name] = out
        _rewrite(path, rewrite)
    return before, after


def _read_lines(p: Path) -> list[str]:
    if not p.exists():
        return []
    return [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]


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
    run put them: this run measured no default for them. The caller holds the log's lock.
    """
    hashes = [str(json.loads(ln)[0]) for ln in _read_lines(path / WORKLOADS)]
    files = {RECORDS: _read_lines(path / RECORDS), SLOWER: _read_lines(path / SLOWER)}
    moved: dict[str, list[str]] = {RECORDS: [], SLOWER: []}
    for name, lines in files.items():
        for line in lines:
            h = hashes[json.loads(line)[0]]
            dest = name if h not in settled else (SLOWER if h in slower else RECORDS)
            moved[dest].append(line)
    changed = {name: lines for name, lines in moved.items() if lines != files[name]}
    if changed:
        _rewrite(path, changed)  # both files at once: a crash between them loses no record


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
