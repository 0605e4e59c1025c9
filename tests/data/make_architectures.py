"""Write the small PyTorch-exported models of ``tests/compiler/test_architectures.py``.

    python tests/data/make_architectures.py      # needs torch (not needed to run the tests)

Scaled-down versions of the architectures in ``benchmarks/architectures.py``, each kept to the
shapes that exercise a path of their full-size model: ShuffleNetV2's 116-channel 1x1 convs on a
14x14 map (channels padded to whole vectors) and its channel shuffle; ViT's 197 tokens (a prime
attention width) with PyTorch's sequence-first projections; ConvNeXt's 4-D matmuls with an
epilogue after a permute and its 7x7 depthwise convs; UNet's 2x2/2 transposed conv, bilinear
upsampling and skip concats. Weights are seeded random values (seed 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "benchmarks"))

import architectures as arch
import torch

#: file stem -> (module factory, input shape)
SMALL = {
    "arch_shufflenet": (lambda: arch.ShuffleNetV2(widths=(24, 58, 116, 232), repeats=(1, 2, 1),
                                                  head=64, classes=10), [1, 3, 224, 224]),
    "arch_vit": (lambda: arch.ViTTiny(dim=32, depth=1, heads=2, patch=16, classes=10),
                 [1, 3, 224, 224]),
    "arch_convnext": (lambda: arch.ConvNeXtNano(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                                                classes=10), [1, 3, 48, 48]),
    "arch_unet": (lambda: arch.UNetSmall(width=8), [1, 3, 32, 32]),
}


def main() -> None:
    for stem, (factory, shape) in SMALL.items():
        torch.manual_seed(0)
        path = HERE / f"{stem}.onnx"
        arch.export_module(factory(), shape, path)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
