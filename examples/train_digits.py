"""Train the bundled ``digits_cnn`` example on scikit-learn's 8x8 digits and export it to ONNX.

Run from the repository root (needs ``torch==2.13.0`` and ``scikit-learn``; ~20 s on 2 cores)::

    python -m examples.train_digits

Writes ``examples/digits_cnn.onnx``, ``examples/digits_data.npz`` (the held-out test split)
and ``examples/digits_calib.npz`` (64 training samples for calibration), then checks the
exported model with onnxruntime and ``onnx.reference``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
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


def main() -> None:
    """Train, export, save the data files and print accuracies."""
    t0 = time.perf_counter()
    seed_everything(SEED)
    torch.set_num_threads(2)
    x_tr, x_te, y_tr, y_te = load_split()
    model = DigitsCNN()
    print(f"digits: train {len(x_tr)}, test {len(x_te)}; params {count_params(model)}")
    losses = train(model, x_tr, y_tr, epochs=30, batch_size=32, lr=1e-2, seed=SEED)
    print(f"loss: first epoch {losses[0]:.4f}, last epoch {losses[-1]:.4f}")
    print(f"torch test accuracy: {torch_accuracy(model, x_te, y_te):.4f}")

    onnx_path = HERE / "digits_cnn.onnx"
    proto = export_onnx(model, (1, 1, 8, 8), onnx_path)
    print(f"exported {onnx_path.name}: {onnx_path.stat().st_size} bytes, ops {op_histogram(proto)}")

    rng = np.random.default_rng(SEED)
    calib = x_tr[np.sort(rng.choice(len(x_tr), N_CALIB, replace=False))]
    np.savez_compressed(HERE / "digits_data.npz", input=x_te[:, None], label=y_te)
    np.savez_compressed(HERE / "digits_calib.npz", input=calib[:, None])

    acc = onnx_accuracies(onnx_path, x_te[:, None], y_te)
    print(
        f"ONNX test accuracy on {len(y_te)} samples: onnxruntime {acc['onnxruntime']:.4f}, "
        f"onnx.reference {acc['reference']:.4f}, max |logit diff| {acc['max_abs_diff']:.2e}"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
