"""Train the bundled ``digits_cnn`` example on scikit-learn's 8x8 digits and export it to ONNX.

Run from the repository root (needs ``torch==2.13.0`` and ``scikit-learn``; ~20 s on 2 cores)::

    python -m examples.train_digits

Writes ``examples/digits_cnn.onnx``, ``examples/digits_data.npz`` (the held-out test split)
and ``examples/digits_calib.npz`` (64 training samples for calibration), then checks the
exported model with onnxruntime and ``onnx.reference``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from examples._train_common import (
    ConvBNReLU,
    ResidualBlock,
    seed_everything,
    train_and_export,
)

SEED = 0
HERE = Path(__file__).resolve().parent
N_CALIB = 64


class DigitsCNN(nn.Module):
    """Small ResNet-style CNN for 1x8x8 inputs (about 28k parameters).

    stem conv-bn-relu (16 ch, 8x8) -> residual block (16) -> strided conv-bn-relu (32 ch, 4x4)
    -> residual block (32) -> global average pool -> linear (10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(1, 16),
            ResidualBlock(16),
            ConvBNReLU(16, 32, stride=2),
            ResidualBlock(32),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a (B, 1, 8, 8) batch."""
        return self.classifier(self.features(x))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 80/20 split of the digits, images scaled to [0, 1] as (N, 1, 8, 8) float32."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return x_tr, x_te, y_tr, y_te


def main(out_dir: Path = HERE) -> None:
    """Train, export, save the data files and print accuracies."""
    seed_everything(SEED)
    split = load_split()
    train_and_export("digits", DigitsCNN(), split, epochs=30, batch_size=32, lr=1e-2, seed=SEED,
                     out_dir=out_dir, n_calib=N_CALIB)


if __name__ == "__main__":
    main()
