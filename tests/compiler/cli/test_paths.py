"""Output paths are checked before the work starts; file-system errors are named, not internal.

An unwritable place is made for real: a directory without write permission for a normal
user, and ``/sys`` (where even root may not create anything) when the tests run as root.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest

from compiler.cli import paths
from compiler.cli.main import build_parser, main
from tests import models

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("m") / "mlp.onnx"
    onnx.save(models.get_model("mlp"), str(p))
    return p


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create anything in."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
        return
    if not Path("/sys").is_dir():
        pytest.skip("running as root without /sys: no unwritable directory to test with")
    try:
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("running as root and /sys is writable")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_output_in_unwritable_directory_refused_before_compile(
        mlp_file: Path, unwritable: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused in well under the time a compile takes, as an error naming the path."""
    out = unwritable / "artifact"
    start = time.perf_counter()
    assert main(["compile", str(mlp_file), "-o", str(out), "--no-verify"]) == 1
    line = _error_line(capsys)
    assert line.startswith("hwcc: error: ") and "internal" not in line
    assert str(out) in line and "cannot write" in line
    assert time.perf_counter() - start < 5  # the compile (TVM build) never ran
    assert not out.exists()


def test_output_that_is_a_file(mlp_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("keep me")
    assert main(["compile", str(mlp_file), "-o", str(f)]) == 1
    assert _error_line(capsys) == f"hwcc: error: -o {f}: is an existing file, not a directory"
    assert f.read_text() == "keep me"


def test_output_below_a_file(mlp_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("")
    assert main(["compile", str(mlp_file), "-o", str(f / "sub" / "art")]) == 1
    line = _error_line(capsys)
    assert f"{f} is a file, not a directory" in line and line.startswith("hwcc: error: -o ")


def test_output_that_is_a_foreign_directory(mlp_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A non-empty directory that is not an artifact is refused before, not after, compiling."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    assert main(["compile", str(mlp_file), "-o", str(d)]) == 1
    assert "is not an hwcc artifact" in _error_line(capsys)
    assert (d / "notes.txt").read_text() == "mine"


def test_missing_parents_of_an_artifact_are_created(mlp_file: Path, tmp_path: Path) -> None:
    """The check leaves nothing behind, and missing parents are still created (out/NAME)."""
    out = tmp_path / "a" / "b" / "art"
    paths.check_output_dir(out, "-o", artifact=True)
    assert list(tmp_path.iterdir()) == []
    assert main(["compile", str(mlp_file), "-o", str(out), "--no-verify",
                 "--bench-repeat", "0"]) == 0
    assert (out / "manifest.json").is_file()


def test_bench_json_paths(tmp_path: Path, unwritable: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """--json PATH: a directory, a missing parent and an unwritable one are refused first."""
    art = tmp_path / "no-artifact-needed"
    assert main(["bench", str(art), "--json", str(tmp_path)]) == 1
    assert "is a directory; give a file name" in _error_line(capsys)
    assert main(["bench", str(art), "--json", str(tmp_path / "nope" / "r.json")]) == 1
    assert f"directory {tmp_path / 'nope'} does not exist" in _error_line(capsys)
    assert main(["bench", str(art), "--json", str(unwritable / "r.json")]) == 1
    line = _error_line(capsys)
    assert "cannot write" in line and str(unwritable / "r.json") in line


def test_run_bundle_tune_outputs(tmp_path: Path, unwritable: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["run", str(tmp_path), "--output", str(unwritable / "o.npz")],
                 ["bundle", str(tmp_path), "-o", str(unwritable / "b")],
                 ["tune", str(tmp_path / "m.onnx"), "--log-dir", str(unwritable / "logs")]):
        assert main(argv) == 1
        line = _error_line(capsys)
        assert line.startswith("hwcc: error: ") and str(unwritable) in line, argv


def test_unwritable_tmpdir(mlp_file: Path, tmp_path: Path, unwritable: Path) -> None:
    """Python would fall back to /tmp, the C++ compiler would not: refused first."""
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(mlp_file),
                           "-o", str(tmp_path / "a")], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(unwritable)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == \
        f"hwcc: error: TMPDIR {unwritable}: cannot write there: " + \
        paths.USER_ERRNOS[errno.EACCES if os.geteuid() else errno.EPERM]


def _raised(fn) -> OSError:
    try:
        fn()
    except OSError as err:
        return err
    raise AssertionError("no OSError")


def test_os_errors_become_lines_naming_the_path(tmp_path: Path, unwritable: Path) -> None:
    """Real errors from real system calls; only file-system ones are the user's."""
    err = _raised(lambda: os.mkdir(unwritable / "x"))
    assert paths.os_error_message(err) in (f"{unwritable / 'x'}: permission denied",
                                           f"{unwritable / 'x'}: operation not permitted")
    err = _raised(lambda: Path(tmp_path).write_text("x"))
    assert paths.os_error_message(err) == f"{tmp_path}: is a directory"
    (tmp_path / "f").write_text("")
    err = _raised(lambda: (tmp_path / "f" / "g").write_text("x"))
    assert paths.os_error_message(err) == f"{tmp_path / 'f' / 'g'}: not a directory"
    if Path("/dev/full").exists():  # a disk that is always full
        def fill() -> None:
            with open("/dev/full", "w") as f:
                f.write("x")
        err = _raised(fill)
        args = build_parser().parse_args(
            ["compile", "m.onnx", "-o", str(tmp_path / "out")])
        assert paths.os_error_message(err, args) == \
            f"no space left on device while writing {tmp_path / 'out'}"
    err = _raised(lambda: os.read(-1, 1))  # EBADF: a bug, not the user's file system
    assert paths.os_error_message(err) is None
