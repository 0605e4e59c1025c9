"""Output paths checked before a command starts its work, and file-system errors named.

A compile takes seconds to minutes; an output directory the user may not write to, or an
output path that is an existing file, should be refused before it, in one line naming the
path -- not reported as an internal error after it. :func:`check_outputs` checks every output
path a command was given (or will use by default) by creating and removing a probe where the
command will write: the only test that answers for root, read-only mounts and ACLs alike.
:func:`os_error_message` turns the file-system errors that still happen later (disk full, a
permission changed meanwhile) into the same kind of line.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compiler.errors import ArtifactError, HwccError

#: errno values that describe the user's file system, not a bug: reported as ``hwcc: error:``.
USER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EFBIG: "file too large",
}


#: Commands that run a C++ compiler, which writes its temporary files under $TMPDIR.
BUILDS = frozenset({"compile", "tune", "search", "bundle"})


class OutputPathError(HwccError):
    """An output path that cannot be written: a file where a directory is needed, a missing
    or read-only directory."""


def default_output(model: str) -> Path:
    """Where ``hwcc compile MODEL`` writes without ``-o``: ``out/<model name>``."""
    return Path("out") / Path(model).stem


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(directory: Path, option: str, path: Path) -> None:
    """Create and remove a directory in ``directory``: refuse ``path`` if that fails."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hwcc-probe-", dir=directory))
    except OSError as err:
        why = USER_ERRNOS.get(err.errno, err.strerror or type(err).__name__)
        where = "" if directory == path else f" (in {directory})"
        raise OutputPathError(f"{option} {path}: cannot write there{where}: {why}") from None


def check_output_dir(path: str | Path, option: str, artifact: bool = False) -> Path:
    """Refuse, before any work, an output directory that cannot be written.

    Parameters
    ----------
    path
        The directory a command will create or replace (its missing parents are created).
    option
        How the user gave it (``-o``), for the message.
    artifact
        The directory is an hwcc artifact: an existing directory that is not empty and not an
        artifact is refused too (:func:`compiler.artifact.package.write_artifact` would refuse
        it after the compile).

    Raises
    ------
    OutputPathError, ArtifactError
        Naming the path and what is wrong.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{option} {p}: is an existing file, not a directory")
    if p.is_dir() and artifact and not _artifact_or_empty(p):
        raise ArtifactError(f"{option} {p}: exists and is not an hwcc artifact; refusing to "
                            "overwrite it (remove it or choose another directory)")
    # the directory is assembled beside its destination and renamed into place
    parent = p.resolve().parent
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputPathError(f"{option} {p}: {base} is a file, not a directory")
    _probe(base, option, p)
    return p


def check_output_file(path: str | Path, option: str, parents: bool = True) -> Path:
    """Refuse, before any work, an output file that cannot be written.

    Parameters
    ----------
    parents
        Whether the command creates missing parent directories (else a missing parent is
        refused).

    Raises
    ------
    OutputPathError
        Naming the path and what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{option} {p}: is a directory; give a file name")
    parent = p.resolve().parent
    if not parents and not parent.is_dir():
        raise OutputPathError(f"{option} {p}: directory {p.parent} does not exist")
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputPathError(f"{option} {p}: {base} is a file, not a directory")
    _probe(base, option, p)  # the file is written beside its destination, then renamed
    return p


def _artifact_or_empty(path: Path) -> bool:
    from compiler.artifact.package import FORMAT, MANIFEST

    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _outputs(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """``(kind, path, option)`` of every output of the parsed command line."""
    command = getattr(args, "command", None)
    output = getattr(args, "output", None)
    if command == "compile":
        yield "artifact", str(output or default_output(args.model)), "-o"
    elif command == "search" and output:
        yield "artifact", output, "-o"
    elif command == "bundle" and output:
        yield "dir", output, "-o"
    elif command == "run" and output:
        yield "file", output, "--output"
    elif command == "tune" and getattr(args, "log_dir", None):
        yield "dir", args.log_dir, "--log-dir"
    elif command == "bench" and isinstance(getattr(args, "json", None), str) \
            and args.artifact is not None:  # `hwcc bench --json DIR` names the artifact
        yield "json", args.json, "--json"


def check_outputs(args: argparse.Namespace) -> None:
    """Check every output path of a parsed ``hwcc`` command line before the command runs.

    Raises
    ------
    OutputPathError, ArtifactError
        For the first output that cannot be written.
    """
    if getattr(args, "command", None) in BUILDS and os.environ.get("TMPDIR"):
        # Python falls back to /tmp when $TMPDIR is unwritable; the C++ compiler does not
        tmp = Path(os.environ["TMPDIR"])
        if not tmp.is_dir():
            raise OutputPathError(f"TMPDIR {tmp}: is not a directory")
        _probe(tmp, "TMPDIR", tmp)
    for kind, path, option in _outputs(args):
        if kind == "artifact":
            check_output_dir(path, option, artifact=True)
        elif kind == "dir":
            check_output_dir(path, option)
        elif kind == "json":
            check_output_file(path, option, parents=False)
        else:
            check_output_file(path, option)


def output_paths(args: argparse.Namespace) -> list[str]:
    """The output paths of a parsed command line (for messages that have no file name)."""
    return [path for _, path, _ in _outputs(args)]


def os_error_message(err: OSError, args: argparse.Namespace | None = None) -> str | None:
    """One line for a file-system error caused by the user's files, naming the path; None
    for an OSError that is not about the file system (left to the internal-error report)."""
    if err.errno not in USER_ERRNOS:
        return None
    why = USER_ERRNOS[err.errno]
    names = [str(n) for n in (err.filename, err.filename2) if n]
    if names:
        return f"{' -> '.join(names)}: {why}"
    outputs = output_paths(args) if args is not None else []
    if outputs:
        return f"{why} while writing {', '.join(outputs)}"
    return f"{why} ({err.strerror or type(err).__name__})"
