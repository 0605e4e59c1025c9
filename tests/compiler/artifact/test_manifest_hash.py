"""The manifest's own SHA-256 (``manifest_sha256``): written at packaging, checked at load.

Every edit of ``manifest.json`` that changes what it says (any single byte, an output shape,
the target, a reported figure, a file's recorded hash) is refused at load with one line; an
old artifact without the field loads with a warning. A module replaced together with its
recorded hash is refused before it is loaded (it used to crash the process with SIGSEGV).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import compiler
from compiler.artifact.package import MANIFEST_HASH, manifest_digest, sha256_file
from compiler.artifact.runtime import Artifact, read_manifest
from compiler.errors import ArtifactError
from tests import models

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sealed") / "mlp"
    compiler.compile(models.get_model("mlp"), "host", output_dir=out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest as a careless user would: load, edit, dump (hash left as is)."""
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m, indent=2))


def test_the_manifest_carries_its_own_hash(artifact: Path) -> None:
    m = read_manifest(artifact)
    assert m[MANIFEST_HASH] == manifest_digest(m)
    # reformatting (key order, indentation) says the same thing: still accepted
    shuffled = dict(reversed(list(m.items())))
    assert manifest_digest(shuffled) == m[MANIFEST_HASH]
    Artifact.load(artifact)


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "output shape": lambda m: m["outputs"][0]["shape"].__setitem__(0, 8),
    "target string": lambda m: m["target"].__setitem__("target", "x86_64-linux-gnu"),
    "reported figure": lambda m: m["verification"].__setitem__(
        "max_abs_err", m["verification"]["max_abs_err"] + 0.5),
    "kernel count": lambda m: m["kernels"].__setitem__("kernels", m["kernels"]["kernels"] + 1),
    "file hash": lambda m: m["files"]["model.onnx"].__setitem__("sha256", "0" * 64),
    "added field": lambda m: m.__setitem__("note", "fine"),
    "hash itself": lambda m: m.__setitem__(MANIFEST_HASH, "0" * 64),
    "hash removed": lambda m: m.pop(MANIFEST_HASH),
    "old format claimed": lambda m: m.__setitem__("format_version", 1),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_an_edited_manifest_is_refused(artifact: Path, tmp_path: Path, what: str) -> None:
    d = _copy(artifact, tmp_path / "a")
    m = json.loads((d / "manifest.json").read_text())
    if what == "reported figure" and "max_abs_err" not in m.get("verification", {}):
        pytest.skip("this host did not verify the artifact")
    _edit(d, EDITS[what])
    with pytest.raises(ArtifactError, match="manifest.json (does not match|.* lacks) its own SHA"):
        Artifact.load(d)


def test_every_single_byte_edit_is_seen(artifact: Path, tmp_path: Path) -> None:
    """Each byte of manifest.json replaced in turn: refused (bad JSON or bad hash), unless
    the JSON still says exactly the same thing (whitespace)."""
    d = _copy(artifact, tmp_path / "a")
    raw = (artifact / "manifest.json").read_bytes()
    original = json.loads(raw)
    accepted = []
    for i in range(len(raw)):
        b = raw[i]
        new = ord("1") if b == ord("0") else ord("0") if chr(b).isdigit() else \
            ord(" ") if b in b"\n" else (b ^ 0x01 if chr(b ^ 0x01).isprintable() else ord("x"))
        (d / "manifest.json").write_bytes(raw[:i] + bytes([new]) + raw[i + 1:])
        try:
            read_manifest(d)
        except ArtifactError:
            continue
        accepted.append(i)
        assert json.loads((d / "manifest.json").read_bytes()) == original, (
            f"byte {i} ({raw[i - 20:i + 20]!r}) changed the manifest unseen")
    assert all(raw[i] in b" \n" for i in accepted)  # whitespace only


def test_cli_says_it_in_one_line(artifact: Path, tmp_path: Path) -> None:
    d = _copy(artifact, tmp_path / "a")
    _edit(d, EDITS["output shape"])
    res = subprocess.run([sys.executable, "-m", "compiler.cli", "run", str(d)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwcc: error: artifact ")
    assert "modified after it was built" in lines[0]


def test_an_old_manifest_without_the_field_loads_with_a_warning(
        artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = _copy(artifact, tmp_path / "old")
    def downgrade(m: dict[str, Any]) -> None:  # as hwcc wrote it before the field existed
        m.pop(MANIFEST_HASH)
        m["format_version"] = 1

    _edit(d, downgrade)
    with caplog.at_level(logging.WARNING):
        art = Artifact.load(d)
    assert art.run(art.random_inputs())
    assert any(MANIFEST_HASH in r.getMessage() and "not checked" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("replacement", ["garbage", "another model"])
def test_a_module_replaced_with_its_hash_is_refused_before_loading(
        artifact: Path, tmp_path: Path, replacement: str) -> None:
    """module.so swapped and its SHA-256 in the manifest updated to match: the manifest's
    own hash no longer matches, so the module is never dlopen'ed (no SIGSEGV)."""
    d = _copy(artifact, tmp_path / "a")
    if replacement == "garbage":
        (d / "module.so").write_bytes(b"\x7fELF" + os.urandom(4096))
    else:
        other = compiler.compile(models.get_model("concat_block"), "host",
                                 output_dir=tmp_path / "other", verify=False)
        shutil.copy(other.path / "module.so", d / "module.so")
    digest = sha256_file(d / "module.so")
    _edit(d, lambda m: m["files"]["module.so"].update(
        sha256=digest, bytes=(d / "module.so").stat().st_size))
    code = ("import sys\nfrom compiler.artifact.runtime import Artifact\nfrom compiler.errors "
            "import ArtifactError\ntry:\n    Artifact.load(sys.argv[1])\nexcept ArtifactError "
            "as e:\n    print(e)\n    sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", code, str(d)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=False,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])  # not -11 (SIGSEGV)
    assert "does not match its own SHA-256" in res.stdout
