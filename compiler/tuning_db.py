"""Where tuning records live and how they are opened safely.

Records are MetaSchedule JSON databases under ``tuning_logs/<device>/<target-key>/``. A line
that does not parse (a crash mid-write, a hand edit) is skipped with a warning instead of
failing the compile: the database is opened from a repaired copy (``tune.repair_log``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from targets import Target

logger = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def default_log_root() -> Path:
    """``$HWCC_TUNING_LOGS``, else the ``tuning_logs/`` folder of this checkout."""
    env = os.environ.get("HWCC_TUNING_LOGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "tuning_logs"


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
            from .errors import TuningError

            raise TuningError(f"no tuning records in {path} (expected {WORKLOADS} and {RECORDS})")
        return None, None
    from tvm.s_tir import meta_schedule as ms

    from .tune import repair_log

    # repair a copy: the log may be shipped read-only, and a dropped workload line renumbers
    # the records that point at later workloads
    clean = Path(tempfile.mkdtemp(prefix="hwcc-db-"))
    shutil.copy(path / WORKLOADS, clean / WORKLOADS)
    shutil.copy(path / RECORDS, clean / RECORDS)
    bad = repair_log(clean)
    try:
        db = ms.database.JSONDatabase(work_dir=str(clean), allow_missing=False)
    except Exception as err:
        from .errors import TuningError

        shutil.rmtree(clean, ignore_errors=True)
        raise TuningError(f"unusable tuning log {path}: {str(err).strip()[:200]}") from None
    logger.info("using tuning records from %s (%d corrupted lines skipped)", path, bad)
    return db, path
