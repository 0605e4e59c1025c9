"""Data files: ``.npz`` inputs, calibration and evaluation sets keyed by the model's input names.

Each array is either exactly the input's shape (one sample) or that shape with a leading
sample axis ``(N, *shape)``; :func:`split_samples` says which form it read. Files are written
atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RuntimeInputError

logger = logging.getLogger(__name__)


def load_npz(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise RuntimeInputError(f"inputs file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise RuntimeInputError(f"cannot read {p} as .npz: {err}") from None


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".npz", dir=p.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_samples(arrays: dict[str, np.ndarray], specs: Sequence[Any],
                  what: str = "inputs") -> tuple[list[dict[str, np.ndarray]], str]:
    """Accept arrays shaped exactly like the inputs (one sample) or with a leading sample axis.

    Returns the list of per-sample feeds and a sentence saying which form was read.
    """
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unknown {extra}"] if extra else [])
        raise RuntimeInputError(f"{what} do not match the model's inputs: {'; '.join(parts)}; "
                                f"expected keys {names}")
    forms = set()
    counts = set()
    for s in specs:
        a = arrays[s.name]
        if tuple(a.shape) == s.shape:
            forms.add("single")
            counts.add(1)
        elif a.ndim == len(s.shape) + 1 and tuple(a.shape[1:]) == s.shape:
            forms.add("batch")
            counts.add(a.shape[0])
        else:
            raise RuntimeInputError(
                f"{what}: '{s.name}' has shape {list(a.shape)}; expected {list(s.shape)} or "
                f"(N, {', '.join(map(str, s.shape))})")
    if len(forms) > 1 or len(counts) > 1:
        raise RuntimeInputError(f"{what}: arrays disagree on the number of samples")
    n = counts.pop()
    if n == 0:
        raise RuntimeInputError(f"{what}: the file holds no samples")
    if forms == {"single"}:
        return [{k: arrays[k] for k in names}], "one sample (arrays shaped like the inputs)"
    feeds = [{k: arrays[k][i] for k in names} for i in range(n)]
    return feeds, f"{n} samples (leading sample axis)"


def stack_samples(arrays: Mapping[str, np.ndarray], specs: Sequence[Any],
                  what: str = "calibration data") -> dict[str, np.ndarray]:
    """``arrays`` (one sample or a leading sample axis) as arrays with a leading sample axis."""
    feeds, form = split_samples(dict(arrays), specs, what=what)
    logger.warning("%s: read %s", what, form)
    return {s.name: np.stack([f[s.name] for f in feeds]) for s in specs}
