"""Artifacts know the CPU features they were built for (issue #21).

A target whose features this host lacks is compiled and written but never executed here
(compile says ``not verified: this host lacks ...`` once), its manifest records the features,
and ``Artifact.load`` / ``hwcc run`` / ``hwcc bench`` / the bundle's ``hwcc_run`` refuse it
with one line naming them, before the module is loaded (instead of dying with SIGILL).

The "CPU this host is not" is the first of avx512fp16, amx-int8, avx512f that this host lacks,
so the tests hold on AVX-512 hosts and AVX2-only CI alike.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.artifact.deploy import file_stem, make_bundle
from compiler.artifact.package import seal_manifest
from compiler.artifact.runtime import Artifact, required_cpu_features
from compiler.cli.main import main
from compiler.errors import ArtifactError
from examples import example_model
from targets import host_arch, missing_features, parse_target

ROOT = Path(__file__).resolve().parents[3]
MODEL = example_model("digits_cnn")
SIGILL = (-4, 128 + 4)  # killed by SIGILL / a shell's view of it


def _lacking() -> str | None:
    if host_arch() != "x86_64":
        return None
    return next((f for f in ("avx512fp16", "amx-int8", "avx512f")
                 if missing_features([f"+{f}"])), None)


LACKING = _lacking()
pytestmark = pytest.mark.skipif(
    LACKING is None, reason="this host is not x86-64 or has avx512fp16, amx-int8 and avx512f: "
    "no x86 feature to build for that it lacks")
FOREIGN = f"x86_64-linux-gnu -mattr=+avx2,+fma,+{LACKING}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, list[str]]:
    """The digits CNN compiled through the API for a CPU this host is not, and the warnings
    the API logged meanwhile."""
    records = _Records()
    api_logger = logging.getLogger("compiler.api")
    api_logger.addHandler(records)
    try:
        art = compiler.compile(MODEL, FOREIGN,
                               output_dir=tmp_path_factory.mktemp("foreign") / "art")
    finally:
        api_logger.removeHandler(records)
    return art, records.messages


def test_api_compiles_and_records_what_it_did_not_run(foreign: tuple[Artifact, list[str]]
                                                      ) -> None:
    art, warnings = foreign
    assert (art.path / "module.so").stat().st_size > 0
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["target"]["cpu_features"] == ["+avx2", "+fma", f"+{LACKING}"]
    assert m["target"]["arch"] == "x86_64"
    v = m["verification"]
    assert v["verified"] is False
    assert v["skipped"] == f"this host lacks {LACKING}"
    assert v["missing_features"] == [LACKING]
    assert warnings == [f"not verified: this host lacks {LACKING}"]


def test_load_and_lazy_run_refuse_before_loading(foreign: tuple[Artifact, list[str]]) -> None:
    art, _ = foreign
    want = (f"artifact {art.path} needs CPU features this machine lacks: {LACKING} "
            f"(built for {FOREIGN}); rebuild with -t host or a portable "
            '-t "x86_64-linux-gnu -mattr=+avx2,+fma"')
    with pytest.raises(ArtifactError) as err:
        Artifact.load(art.path)
    assert str(err.value) == want
    # the Artifact compile() returns loads lazily: run and benchmark check first too
    with pytest.raises(ArtifactError, match=f"lacks: {LACKING} "):
        art.run(art.random_inputs())
    with pytest.raises(ArtifactError, match=f"lacks: {LACKING} "):
        art.benchmark(repeat=1)
    assert art._vm is None  # never loaded


def test_old_manifest_without_cpu_features_reads_the_target(
        foreign: tuple[Artifact, list[str]], tmp_path: Path) -> None:
    art, _ = foreign
    old = tmp_path / "old"
    shutil.copytree(art.path, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["target"]["cpu_features"]
    (old / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    assert required_cpu_features(m) == ("+avx2", "+fma", f"+{LACKING}")
    with pytest.raises(ArtifactError, match=f"needs CPU features this machine lacks: {LACKING} "):
        Artifact.load(old)


@pytest.mark.parametrize("command", [["run"], ["bench", "--repeat", "2"]])
def test_cli_run_and_bench_refuse_with_one_line(foreign: tuple[Artifact, list[str]],
                                                command: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    art, _ = foreign
    assert main([command[0], str(art.path), *command[1:]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"hwcc: error: artifact {art.path} needs CPU features this "
                                   f"machine lacks: {LACKING} (built for {FOREIGN})")


def test_cli_compile_says_not_verified_once(tmp_path: Path) -> None:
    """A real process: the artifact is written, not run or timed, and stdout + stderr hold
    the one line (the API's warning is not repeated in the log)."""
    out = tmp_path / "art"
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(MODEL), "-t",
                           FOREIGN, "-o", str(out), "--bench-repeat", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    said = [ln for ln in lines if "not verified" in ln]
    assert said == [f"  agreement    not verified: this host lacks {LACKING}"], lines
    assert not any("latency" in ln or "max abs err" in ln for ln in lines), lines
    assert (out / "module.so").is_file()
    assert json.loads((out / "manifest.json").read_text())["verification"]["verified"] is False


def test_host_artifact_records_features_loads_and_runs(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    art = compiler.compile(MODEL, "host", output_dir=tmp_path / "host")
    host = parse_target("host")
    assert art.manifest["target"]["cpu_features"] == list(host.features)
    assert art.manifest["verification"]["verified"] is True
    assert art.missing_cpu_features() == ()
    loaded = Artifact.load(art.path)
    out = loaded.run(loaded.random_inputs())
    assert np.isfinite(next(iter(out.values()))).all()
    assert main(["run", str(art.path)]) == 0
    assert "ran " in capsys.readouterr().out


def test_bundle_records_features_and_runner_refuses_with_one_line(
        foreign: tuple[Artifact, list[str]], tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.fail("g++ is not installed: scripts/install.sh installs it")
    art, _ = foreign
    bundle = make_bundle(art.path, tmp_path / "bundle")
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["cpu_features"] == ["avx2", "fma", LACKING]
    cpu = (bundle / "cpu.txt").read_text().splitlines()
    assert f"target\t{FOREIGN}" in cpu and f"feature\t{LACKING}" in cpu
    inputs = tmp_path / "in"  # valid inputs: the CPU is the only thing wrong
    inputs.mkdir()
    for name, value in art.random_inputs().items():
        np.save(inputs / f"{file_stem(name)}.npy", value)
    proc = subprocess.run([str(bundle / "hwcc_run"), "--inputs", str(inputs), "--outputs",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1 and proc.returncode not in SIGILL, proc
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"hwcc_run: error: this CPU lacks {LACKING}, which module.so "
                                  f"was built for ({FOREIGN})"), proc.stderr
    assert not (tmp_path / "out").exists()
