"""Write a compiled model as an artifact directory: module library + manifest.json.

The directory is assembled under a temporary name beside the destination and renamed into
place, so an interrupted compile never leaves a half-written artifact. Every file is listed
in the manifest with its SHA-256, and the manifest carries the SHA-256 of its own canonical
JSON (:func:`seal_manifest`); :mod:`compiler.artifact.runtime` checks both before loading.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compiler import tempdirs
from compiler.errors import ArtifactError

MANIFEST = "manifest.json"
LIBRARY = "module.so"
SOURCE_MODEL = "model.onnx"
FORMAT = "hwcc-artifact"
#: 2: the manifest carries its own hash (:data:`MANIFEST_HASH`); 1: it does not.
FORMAT_VERSION = 2
#: The first format version whose manifests must carry :data:`MANIFEST_HASH`.
SEALED_SINCE = 2
#: The manifest's field holding the SHA-256 of the manifest itself (:func:`manifest_digest`).
MANIFEST_HASH = "manifest_sha256"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON, without its :data:`MANIFEST_HASH` field.

    Canonical: keys sorted, no whitespace, ASCII escapes, computed on the JSON round trip of
    the dict (tuples become lists, keys strings), so the digest of a manifest as written
    equals the digest of the same manifest as read back. Any edit of a value, a key or the
    structure changes it; reformatting the file (indentation, key order) does not.
    """
    body = {k: v for k, v in json.loads(json.dumps(manifest)).items() if k != MANIFEST_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with :data:`MANIFEST_HASH` set to its :func:`manifest_digest`.

    The file hashes are inside the manifest, so the seal covers the module and every other
    file too: replacing ``module.so`` and its recorded SHA-256 breaks the seal. It detects
    accidents and careless edits, not an attacker, who can recompute it (see the README: an
    artifact is native code, only a signature from a key the user trusts protects against
    a deliberate replacement).
    """
    sealed = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    sealed[MANIFEST_HASH] = manifest_digest(sealed)
    return sealed


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("hwcc", "apache-tvm", "apache-tvm-ffi", "onnx", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifact(out_dir: Path, manifest: dict[str, Any],
                   writers: dict[str, Callable[[Path], None]]) -> Path:
    """Create ``out_dir`` atomically from file writers and a manifest.

    Parameters
    ----------
    out_dir
        Destination; replaced if it exists and is an hwcc artifact (or empty).
    manifest
        Manifest fields; ``files`` (name → sha256, size), ``created`` and the manifest's own
        hash (:data:`MANIFEST_HASH`, :func:`seal_manifest`) are added here.
    writers
        File name → function writing that file at the given path.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not _replaceable(out_dir):
        raise ArtifactError(f"output directory {out_dir} exists and is not an hwcc artifact; "
                            "refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    with tempdirs.removed_on_exit(tmp):  # SIGTERM mid-write: no half-written folder left
        try:
            files: dict[str, dict[str, Any]] = {}
            for name, write in writers.items():
                write(tmp / name)
                files[name] = {"sha256": sha256_file(tmp / name),
                               "bytes": (tmp / name).stat().st_size}
            manifest = dict(manifest)
            manifest["format"] = FORMAT
            manifest["format_version"] = FORMAT_VERSION
            manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds")
            manifest["files"] = files
            write_json_atomic(tmp / MANIFEST, seal_manifest(manifest))
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing ``dst`` if it exists, by
    renames only: ``dst`` is either the old or the new directory, never a half-written one."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _replaceable(path: Path) -> bool:
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
