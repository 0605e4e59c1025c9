"""Small PyTorch-exported models of architectures that stress different schedules, compiled
through the public API and compared with onnxruntime on the same input.

The models are made by ``tests/data/make_architectures.py`` (needs torch; the ONNX files are
committed): ShuffleNetV2 (116-channel 1x1 convs padded to whole vectors, channel shuffles),
ViT (197-token attention, sequence-first projections), ConvNeXt (4-D matmuls with epilogues,
7x7 depthwise, LayerNorm over channels), UNet (2x2/2 transposed conv, bilinear upsampling).
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import compiler

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("stem", ["arch_shufflenet", "arch_vit", "arch_convnext", "arch_unet"])
def test_exported_architecture_matches_onnxruntime(stem, tmp_path):
    path = DATA / f"{stem}.onnx"
    art = compiler.compile(path, "host", output_dir=tmp_path / "art", verify=False,
                           tuning_log=False)
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in art.inputs}
    got = list(art.run(feeds).values())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale)
