"""``--target`` of the benchmark scripts: parsing and refusal before any compile, result file
names per target, and the README rendering of host-target and other-target tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common, update_readme
from compiler.errors import TargetError
from targets import host_arch, host_features, missing_features, parse_target
from targets.x86 import KNOWN_FEATURES as X86_FEATURES

ROOT = Path(__file__).resolve().parents[2]
x86_only = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 target names")


def test_unknown_triple_is_refused() -> None:
    """An unknown triple gives the targets package's error, quoting it and the known ones."""
    with pytest.raises(TargetError, match=r"unknown target triple 'aarch65-linux'; known: "):
        common.benchmark_target("aarch65-linux")


def test_other_architecture_is_refused() -> None:
    """A target of another architecture cannot be timed here: refused, naming its arch."""
    other = "aarch64-linux-gnu" if host_arch() != "aarch64" else "x86_64-linux-gnu"
    with pytest.raises(TargetError, match=r"cannot benchmark target .* code is for"):
        common.benchmark_target(other)


@x86_only
def test_missing_feature_is_refused() -> None:
    """A target using a CPU feature this machine lacks is refused, naming the feature."""
    lacking = [f for f in X86_FEATURES if missing_features([f])]
    if not lacking:
        pytest.skip("this CPU has every x86 feature hwcc knows")
    with pytest.raises(TargetError, match=rf"it lacks {lacking[0][1:]}"):
        common.benchmark_target(f"x86_64-linux-gnu -mattr={lacking[0]}")


@pytest.mark.parametrize("script", ["models.py", "quantize.py"])
def test_script_exits_with_one_line(script: str) -> None:
    """The scripts stop on a bad --target with exit code 2, one line on stderr, nothing run."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script),
                           "--target", "aarch65-linux"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: unknown target triple")
    assert proc.stdout == ""


def test_host_target_keeps_the_plain_file_name() -> None:
    """``host`` and its spelled-out equivalent (any feature order) write ``<name>.json``."""
    host = parse_target("host")
    spelled = parse_target(" ".join(
        [host.triple] + ([f"-mattr={','.join(reversed(host.features))}"] if host.features
                         else [])))
    assert common.results_path("models", host) == common.RESULTS / "models.json"
    assert common.results_path("models", spelled) == common.RESULTS / "models.json"
    assert common.results_path("models") == common.RESULTS / "models.json"


@x86_only
def test_other_targets_get_distinct_file_names() -> None:
    """Each other target its own file, named by its features in canonical order."""
    names = {spec: common.results_path("models", parse_target(spec)).name for spec in [
        "x86_64-linux-gnu -mattr=+avx2,+fma",
        "x86_64-linux-gnu -mattr=+avx2",
        "x86_64-linux-gnu -mattr=+avx2,+fma -cores=1",
        "x86_64-linux-gnu -mcpu=haswell",
        "x86_64-linux-gnu",
    ]}
    assert names["x86_64-linux-gnu -mattr=+avx2,+fma"] == "models-avx2-fma.json"
    assert common.results_path("models", parse_target(
        "x86_64-linux-gnu -mattr=+fma,+avx2")).name == "models-avx2-fma.json"
    assert len(set(names.values()) | {"models.json"}) == len(names) + 1


def _write(path: Path, target: str, features: list[str]) -> None:
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "date": "2026-01-01",
               "features": ["+avx2", "+fma", "+avx512f"], "target": target,
               "target_features": features}
    path.write_text(json.dumps({"machine": machine, "rows": [{"model": "m", "ms": 1.0}],
                                "columns": [["model", "model"], ["ms", "ms"]],
                                "title": "Whole models"}))


def test_readme_renders_host_then_other_target(tmp_path: Path) -> None:
    """Both files: the host-target table, then the other target's, each heading naming its
    target, the other's line giving both feature lists and its command."""
    _write(tmp_path / "models.json", "x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f",
           ["+avx2", "+fma", "+avx512f"])
    _write(tmp_path / "models-avx2-fma.json", "x86_64-linux-gnu -mattr=+avx2,+fma",
           ["+avx2", "+fma"])
    text = update_readme.render(tmp_path)
    host = text.index("### Whole models — host target")
    other = text.index("### Whole models — target `x86_64-linux-gnu -mattr=+avx2,+fma`")
    assert host < other
    assert "(target features: +avx2,+fma; CPU features: +avx2,+fma,+avx512f)" in text[other:]


def test_readme_renders_a_single_host_table_as_before(tmp_path: Path) -> None:
    """Only ``models.json``: one table under its plain title, no target suffix."""
    _write(tmp_path / "models.json", "x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f",
           ["+avx2", "+fma", "+avx512f"])
    text = update_readme.render(tmp_path)
    assert text.startswith("### Whole models\n\nTest CPU, 2 cores (2 threads used), 2026-01-01; "
                           "target `x86_64-linux-gnu -mattr=+avx2,+fma,+avx512f` — "
                           "`python benchmarks/models.py`")
    assert "target features" not in text


def test_machine_records_target_and_its_features() -> None:
    """The machine record of a result file carries the target string and its features beside
    this CPU's features."""
    target = parse_target("host")
    m = common.machine(target)
    assert m["target"] == str(target)
    assert m["target_features"] == list(target.features)
    assert m["features"] == list(host_features())
