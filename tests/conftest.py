"""Shared fixtures: the model zoo on disk and a session-wide scratch directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model zoo written as .onnx files."""
    import onnx

    import models

    d = tmp_path_factory.mktemp("zoo")
    for name in models.ZOO:
        onnx.save(models.get_model(name), str(d / f"{name}.onnx"))
    return d
