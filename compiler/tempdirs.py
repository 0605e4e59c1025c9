"""One temporary directory per process, removed on exit, on error, on Ctrl-C and on SIGTERM.

Every temporary file or folder hwcc makes (a repaired copy of a tuning log, MetaSchedule's
work directory and kernels, a search's candidates, a compile's verification copy) lives
under :func:`root`, a folder ``hwcc-<pid>-*`` in the system's temporary directory made on
first use. It goes away however the process ends short of ``kill -9``:

* normal exit, an error, Ctrl-C (``KeyboardInterrupt`` unwinds to the interpreter's exit):
  an ``atexit`` hook;
* SIGTERM, SIGHUP: a handler that cleans up, restores the default action and sends the
  signal again, so the process still dies of it (exit status and all). It is installed only
  where the handler is still the default one: a program's own handler is left alone.

Staging folders that must sit beside their destination (an artifact written under a
temporary name and renamed into place) are registered with :func:`removed_on_exit` for as long
as they exist, and removed by the same hooks (or :func:`remove_on_exit` / :func:`forget`).

A forked child makes its own root and never removes its parent's. Worker processes that
must write where the parent reads (MetaSchedule's builders) are handed a folder under the
parent's root explicitly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

#: Signals whose default action ends the process without running ``atexit`` hooks.
_FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_lock = threading.RLock()
_root: Path | None = None
_owner_pid: int | None = None
_staged: dict[Path, int] = {}  # path -> pid that registered it
_hooked_pid: int | None = None


def root() -> Path:
    """This process's temporary directory (made on first use, removed at exit)."""
    global _root, _owner_pid
    with _lock:
        if _root is None or _owner_pid != os.getpid() or not _root.is_dir():
            _install_hooks()
            _root = Path(tempfile.mkdtemp(prefix=f"hwcc-{os.getpid()}-"))
            _owner_pid = os.getpid()
        return _root


def mkdtemp(prefix: str = "hwcc-") -> Path:
    """A fresh folder under :func:`root` (its creator may remove it earlier)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root()))


def remove_on_exit(path: str | Path) -> Path:
    """Register ``path`` (a staging folder outside :func:`root`) for removal should the
    process end before :func:`forget` is called for it."""
    p = Path(path)
    with _lock:
        _install_hooks()
        _staged[p] = os.getpid()
    return p


def forget(path: str | Path) -> None:
    """Stop tracking ``path`` (renamed into place, or removed by its owner)."""
    with _lock:
        _staged.pop(Path(path), None)


@contextlib.contextmanager
def removed_on_exit(path: str | Path) -> Iterator[Path]:
    """:func:`remove_on_exit` for the duration of a block; the block itself removes or renames
    the folder as it pleases."""
    p = remove_on_exit(path)
    try:
        yield p
    finally:
        forget(p)


def cleanup() -> None:
    """Remove this process's root and registered staging folders (idempotent)."""
    global _root
    with _lock:
        pid = os.getpid()
        for p, owner in list(_staged.items()):
            if owner == pid:
                shutil.rmtree(p, ignore_errors=True)
                _staged.pop(p, None)
        if _root is not None and _owner_pid == pid:
            shutil.rmtree(_root, ignore_errors=True)
            _root = None


def _install_hooks() -> None:
    """Once per process: the ``atexit`` hook, and the signal handlers where allowed."""
    global _hooked_pid
    if _hooked_pid == os.getpid():
        return
    _hooked_pid = os.getpid()
    atexit.register(cleanup)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in _FATAL_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)


def _on_fatal_signal(signum: int, _frame: object) -> None:
    cleanup()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
