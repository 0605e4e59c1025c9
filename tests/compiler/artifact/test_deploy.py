"""Deployment bundles: an artifact plus TVM's runtime and a C++ runner, run without Python.

The x86_64 bundle runs natively; the aarch64 bundle (runtime from the PyPI aarch64 wheels,
downloaded once into the cache) runs under qemu-user. Both are compared with
``onnx.reference``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.artifact import deploy
from compiler.artifact.deploy import (
    CompilerNotFoundError,
    RuntimeFetchError,
    UnsupportedBundleError,
    file_stem,
    make_bundle,
)
from compiler.artifact.package import seal_manifest
from tests import models

A64_TARGET = "aarch64-linux-gnu -mattr=+neon"
A64_CC = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"
A64_SYSROOT = "/usr/aarch64-linux-gnu"


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


def _write_inputs(d: Path, feeds: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, value in feeds.items():
        np.save(d / f"{file_stem(name)}.npy", value)
    return d


def _run(cmd: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


@dataclass
class HostCase:
    model: onnx.ModelProto
    artifact: Path
    bundle: Path


@pytest.fixture(scope="module")
def host_case(tmp_path_factory: pytest.TempPathFactory) -> HostCase:
    """A zoo CNN compiled for the host and bundled; the bundle is then moved elsewhere."""
    d = tmp_path_factory.mktemp("deploy_host")
    model = models.get_model("resnet_block_cnn")
    art = compiler.compile(model, "host", output_dir=d / "artifact", verify=False)
    bundle = make_bundle(art.path, d / "bundle")
    moved = d / "device" / "bundle"  # as if copied to the device: nothing points back
    moved.parent.mkdir()
    shutil.copytree(bundle, moved, symlinks=True)
    shutil.rmtree(bundle)
    return HostCase(model, art.path, moved)


@pytest.fixture(scope="module")
def a64_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(A64_CC) is None:
        pytest.fail(f"{A64_CC} is not installed: scripts/install.sh installs it "
                    "(Debian package g++-aarch64-linux-gnu)")
    d = tmp_path_factory.mktemp("deploy_a64")
    return compiler.compile(models.mlp(), A64_TARGET, output_dir=d / "artifact").path


def test_host_bundle_runs_without_python_and_matches_reference(
        host_case: HostCase, tmp_path: Path) -> None:
    model, bundle = host_case.model, host_case.bundle
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["machine"] == "x86_64" and info["runtime"]["apache-tvm"].startswith("0.27")
    assert info["requires"]["glibc"].startswith("2.")
    for name in ("hwcc_run", "module.so", "io.txt", "manifest.json",
                 "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        assert (bundle / name).is_file(), name
    feeds = models.random_inputs(model, seed=3)
    inputs = _write_inputs(tmp_path / "in", feeds)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = _run([str(bundle / "hwcc_run"), "--inputs", str(inputs), "--outputs", "out",
                 "--repeat", "3"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("latency: median ") and "over 3 runs" in proc.stdout
    for name, want in _reference(model, feeds).items():
        got = np.load(elsewhere / "out" / f"{file_stem(name)}.npy")
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_aarch64_bundle_runs_under_qemu_and_matches_reference(a64_artifact: Path,
                                                              tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed: scripts/install.sh installs it "
                    "(Debian package qemu-user-static)")
    bundle = make_bundle(a64_artifact, tmp_path / "bundle")  # wheels fetched once, cached
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["machine"] == "aarch64"
    assert deploy._elf_machine(bundle / "hwcc_run") == "aarch64"
    assert deploy._elf_machine(bundle / "lib" / "libtvm_runtime.so") == "aarch64"
    model = models.mlp()
    feeds = models.random_inputs(model, seed=5)
    inputs = _write_inputs(tmp_path / "in", feeds)
    proc = _run([QEMU, "-L", A64_SYSROOT, str(bundle / "hwcc_run"), "--inputs", str(inputs),
                 "--outputs", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, want in _reference(model, feeds).items():
        got = np.load(tmp_path / "out" / f"{file_stem(name)}.npy")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_runner_rejects_bad_inputs_with_one_line(host_case: HostCase,
                                                  tmp_path: Path) -> None:
    bundle = host_case.bundle
    spec = json.loads((bundle / "manifest.json").read_text())["inputs"][0]
    stem, shape = file_stem(spec["name"]), spec["shape"]
    runner = str(bundle / "hwcc_run")

    def run_with(array: np.ndarray | None) -> subprocess.CompletedProcess[str]:
        d = Path(tempfile.mkdtemp(dir=tmp_path))
        if array is not None:
            np.save(d / f"{stem}.npy", array)
        return _run([runner, "--inputs", str(d), "--outputs", str(d / "out")], cwd=tmp_path)

    cases = [
        (np.zeros([2, *shape[1:]], np.float32), f"must have shape {shape}"),
        (np.zeros(shape, np.float64), "must have dtype float32; got float64"),
        (None, "not found"),
    ]
    for array, message in cases:
        proc = run_with(array)
        assert proc.returncode == 1
        err = proc.stderr.strip()
        assert "\n" not in err and err.startswith("hwcc_run: error: ")
        assert message in err and spec["name"] in err, err
    proc = _run([runner, "--repeat", "zero"], cwd=tmp_path)
    assert proc.returncode == 2 and "--repeat needs a positive integer" in proc.stderr


def test_runner_handles_int64_scalars_odd_names_and_several_outputs(tmp_path: Path) -> None:
    """Gather by int64 indices, ArgMax (int64 output), ReduceSum to a 0-d output; the input
    name ``x:0`` is read from ``x_0.npy``."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x:0", "idx"], ["gathered"], axis=0),
         helper.make_node("ArgMax", ["x:0"], ["argmax"], axis=1, keepdims=0),
         helper.make_node("ReduceSum", ["x:0"], ["total"], keepdims=0)],
        "multi", [vi("x:0", TensorProto.FLOAT, [3, 5]), vi("idx", TensorProto.INT64, [2])],
        [vi("gathered", TensorProto.FLOAT, [2, 5]), vi("argmax", TensorProto.INT64, [3]),
         vi("total", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    art = compiler.compile(model, "host", output_dir=tmp_path / "art", verify=False)
    bundle = make_bundle(art.path, tmp_path / "bundle")
    assert "input\tx:0\tx_0\tfloat32\t3,5" in (bundle / "io.txt").read_text()
    feeds = {"x:0": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
             "idx": np.array([2, 0], np.int64)}
    inputs = _write_inputs(tmp_path / "in", feeds)
    proc = _run([str(bundle / "hwcc_run"), "--inputs", str(inputs), "--outputs",
                 str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, want in _reference(model, feeds).items():
        got = np.load(tmp_path / "out" / f"{name}.npy")
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _fake_artifact(src: Path, dst: Path, **target: str) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["target"].update(target)
    (dst / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return dst


def test_bundle_errors_name_the_problem(host_case: HostCase,
                                        a64_artifact: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    art = host_case.artifact
    with pytest.raises(UnsupportedBundleError, match="CUDA.*not supported yet"):
        make_bundle(_fake_artifact(art, tmp_path / "cuda", kind="cuda"), tmp_path / "b1")
    with pytest.raises(UnsupportedBundleError, match="x86_64, aarch64 only.*riscv64"):
        make_bundle(_fake_artifact(art, tmp_path / "rv", machine="riscv64"), tmp_path / "b2")
    with pytest.raises(RuntimeFetchError, match="cannot download the aarch64 wheel"):
        monkeypatch.setenv("HWCC_CACHE", str(tmp_path / "empty-cache"))
        monkeypatch.setenv("HWCC_WHEEL_DIR", str(tmp_path / "no-wheels"))  # offline
        deploy.runtime_libs("aarch64")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(CompilerNotFoundError, match="aarch64-linux-gnu-g\\+\\+.*not found"):
        make_bundle(a64_artifact, tmp_path / "b3")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b3").exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(deploy.BundleError, match="not an hwcc bundle"):
        make_bundle(art, tmp_path / "keep")


def test_bundle_cli_json(host_case: HostCase, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from compiler.cli.deploy import add_bundle_parser

    parser = argparse.ArgumentParser(prog="hwcc")
    add_bundle_parser(parser.add_subparsers())
    args = parser.parse_args(["bundle", str(host_case.artifact), "-o", str(tmp_path / "b"),
                              "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"] == "x86_64" and out["bundle"] == str(tmp_path / "b")
    assert "lib/libtvm_runtime.so" in out["files"] and out["bytes"] > 1_000_000
