"""Shared helpers for the example training scripts (needs ``torch``; not imported by hwcc).

The training scripts are run by hand to regenerate the bundled models::

    python -m examples.train_digits
    python -m examples.train_mnist

They print progress and accuracies; this module only returns values.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

#: ONNX opset the examples are exported with.
OPSET = 17


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and make torch single-threaded-deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


class ConvBNReLU(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU``, padding keeps the spatial size at stride 1."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False),
        )


class ResidualBlock(nn.Module):
    """Basic ResNet block: ``relu(x + bn(conv(relu(bn(conv(x))))))``, channels unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return self.relu(x + self.body(x))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Train ``model`` with AdamW + one-cycle LR and cross-entropy; returns the per-epoch loss.

    ``x`` is (N, C, H, W) float32, ``y`` is (N,) int64.
    """
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the torch model (eval mode) on (N, C, H, W) inputs."""
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_onnx(model: nn.Module, sample_shape: tuple[int, ...], path: Path) -> onnx.ModelProto:
    """Export ``model`` (eval mode) to ONNX opset 17 with a static batch of 1.

    ``training=PRESERVE`` keeps BatchNormalization nodes in the graph (the default EVAL mode
    folds them into the convolutions), so hwcc's own BatchNorm folding has something to do.
    The model is re-saved with ``onnx.save`` so weights are stored inline in one file.
    """
    model.eval()
    dummy = torch.zeros(sample_shape, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        training=torch.onnx.TrainingMode.PRESERVE,
        # Folding is pointless here (nothing to fold) and warns under PRESERVE.
        do_constant_folding=False,
    )
    proto = onnx.load(str(path))
    proto.doc_string = "hwcc example model; see examples/README.md"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def onnx_accuracies(path: Path, inputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of the exported model under onnxruntime and ``onnx.reference``.

    ``inputs`` has shape (N, 1, C, H, W): one batch-1 sample per row. Also returns the
    largest absolute difference between the two runtimes' logits.
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(str(path))
    ort_pred, ref_pred, max_diff = [], [], 0.0
    for sample in inputs:
        a = sess.run(["logits"], {"input": sample})[0]
        b = ref.run(["logits"], {"input": sample})[0]
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        ort_pred.append(int(a.argmax()))
        ref_pred.append(int(b.argmax()))
    return {
        "onnxruntime": float((np.array(ort_pred) == labels).mean()),
        "reference": float((np.array(ref_pred) == labels).mean()),
        "max_abs_diff": max_diff,
    }


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    """Count of each op type in the graph."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def train_and_export(
    name: str,
    model: nn.Module,
    split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    out_dir: Path,
    n_calib: int = 64,
) -> dict[str, float]:
    """Train ``model`` on ``split`` (x_train, x_test, y_train, y_test), export and check it.

    Writes ``<name>_cnn.onnx``, ``<name>_data.npz`` (the test split as batch-1 samples with
    labels) and ``<name>_calib.npz`` (``n_calib`` training samples) into ``out_dir``, prints
    progress, and returns the exported model's accuracies (:func:`onnx_accuracies`).
    Seed the run (:func:`seed_everything`) before building ``model``.
    """
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    x_tr, x_te, y_tr, y_te = split
    print(f"{name}: train {len(x_tr)}, test {len(x_te)}; params {count_params(model)}")
    losses = train(model, x_tr, y_tr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    print(f"loss: first epoch {losses[0]:.4f}, last epoch {losses[-1]:.4f}")
    print(f"torch test accuracy: {torch_accuracy(model, x_te, y_te):.4f}")

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}_cnn.onnx"
    proto = export_onnx(model, (1, *x_tr.shape[1:]), onnx_path)
    print(f"exported {onnx_path.name}: {onnx_path.stat().st_size} bytes, ops {op_histogram(proto)}")

    rng = np.random.default_rng(seed)
    calib = x_tr[np.sort(rng.choice(len(x_tr), n_calib, replace=False))]
    np.savez_compressed(out_dir / f"{name}_data.npz", input=x_te[:, None], label=y_te)
    np.savez_compressed(out_dir / f"{name}_calib.npz", input=calib[:, None])

    acc = onnx_accuracies(onnx_path, x_te[:, None], y_te)
    print(
        f"ONNX test accuracy on {len(y_te)} samples: onnxruntime {acc['onnxruntime']:.4f}, "
        f"onnx.reference {acc['reference']:.4f}, max |logit diff| {acc['max_abs_diff']:.2e}"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return acc
