"""Cross compilation: aarch64/armv7 modules are real ELF files for that machine; CUDA emits
kernels (or a clear error where the toolchain is missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import compiler
from compiler.errors import ArtifactError
from tests import models

CROSS = [
    ("aarch64-linux-gnu -mattr=+neon", "aarch64-linux-gnu-g++", "AArch64"),
    ("armv7a-linux-gnueabihf -mattr=+neon", "arm-linux-gnueabihf-g++", "ARM"),
    ("riscv64-linux-gnu", "riscv64-linux-gnu-g++", "RISC-V"),
]


def _readelf_machine(path: Path) -> str:
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                if ln.strip().startswith("Machine:"))


@pytest.mark.parametrize("spec,cc,machine", CROSS)
def test_cross_compiled_module_is_for_that_machine(spec: str, cc: str, machine: str,
                                                   tmp_path: Path) -> None:
    if shutil.which(cc) is None:
        pytest.fail(f"{cc} is not installed: .ci/run installs it (Debian package g++-*)")
    art = compiler.compile(models.get_model("resnet_block_cnn"), spec,
                           output_dir=tmp_path / "a")
    assert _readelf_machine(art.path / "module.so") == machine
    assert "verification" not in art.manifest  # cannot run here, so not claimed
    with pytest.raises(ArtifactError, match="is built for"):
        compiler.Artifact.load(art.path)


def test_cuda_compile_emits_kernels(tmp_path: Path) -> None:
    """A CUDA build produces CUDA kernels in the artifact (kernels.cu) with a manifest."""
    art = compiler.compile(models.get_model("mlp"), "nvptx64-nvidia-cuda -arch=sm_80",
                           output_dir=tmp_path / "cuda")
    src = (art.path / "kernels.cu").read_text()
    assert "__global__" in src
    assert art.manifest["target"]["kind"] == "cuda"
    assert art.manifest["kernels"]["kernels"] >= 3
