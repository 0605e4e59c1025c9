"""Sparse kernels on aarch64: a model that is already sparse, compiled with ``--sparsity keep``
for ``aarch64-linux-gnu`` (NEON, 4 lanes), bundled and run under ``qemu-aarch64-static -cpu
max``, equals onnx.reference on the original model; at 1 row (the few-positions kernel) and at
16 rows (the kernel along the rows).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import compiler
from compiler.pipeline import CompressionOptions
from tests.compiler.lower.test_int8_arm import _require_tools, _run_bundle
from tests.passes.test_sparsify import onnx_ref
from tests.passes.test_sparsify_modes import feeds, presparse_mlp

TARGET = "aarch64-linux-gnu -mattr=+neon"


@pytest.mark.parametrize("rows", [1, 16])
def test_kept_zeros_run_sparse_and_exact_under_qemu(rows: int, tmp_path) -> None:
    _require_tools()
    model = presparse_mlp(rows=rows)
    art = compiler.compile(model, TARGET, output_dir=tmp_path / "artifact", verify=False,
                           compression=CompressionOptions(sparsity="keep", sparse_block="4x1"))
    manifest = json.loads((art.path / "manifest.json").read_text())
    rep = next(p for p in manifest["passes"] if p["name"] == "sparsify")["report"]
    assert rep["lanes"] == 4 and len(rep["sparse_layers"]) == 2, rep["layers"]
    x = feeds(model)
    got = _run_bundle(art.path, x, tmp_path)["output"]
    np.testing.assert_allclose(got, onnx_ref(model, x), rtol=1e-4, atol=1e-3)
