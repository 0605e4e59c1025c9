"""Shared fixtures: the model zoo on disk and a session-wide scratch directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.artifact.runtime import use_all_cores


def pytest_configure(config: pytest.Config) -> None:
    """Modules built and run by tests use every core, as the CLI and Artifact.load do (set
    before TVM's runtime starts its thread pool; a TVM_NUM_THREADS already set is kept)."""
    use_all_cores()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model zoo written as .onnx files."""
    import onnx

    from tests import models

    d = tmp_path_factory.mktemp("zoo")
    for name in models.ZOO:
        onnx.save(models.get_model(name), str(d / f"{name}.onnx"))
    return d
