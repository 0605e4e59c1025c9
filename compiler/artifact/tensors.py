"""What the artifact knows of its tensors without the ONNX importer: names, shapes, dtypes,
and how the narrow element types (float8, float4, int4, int2) travel as uint8 storage.

The compiled module holds a narrow value as one byte per element (the ``ml_dtypes`` bit
pattern in the low bits, see :mod:`compiler.frontend.narrow_types`); the runtime views the
user's arrays as those bytes and the results back as the logical type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: logical dtype names (``ml_dtypes``) carried as uint8 storage inside a module
NARROW_DTYPES = frozenset({
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn", "int4", "uint4", "int2", "uint2",
})


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


def is_narrow(dtype: str) -> bool:
    """Whether values of logical ``dtype`` travel as uint8 storage."""
    return dtype in NARROW_DTYPES


def storage_dtype(dtype: str) -> str:
    """The dtype a value of logical ``dtype`` has inside the compiled module."""
    return "uint8" if dtype in NARROW_DTYPES else dtype


def logical_view(arr: np.ndarray, dtype: str) -> np.ndarray:
    """``arr`` (uint8 storage) seen as logical ``dtype`` (no copy); others unchanged."""
    if dtype not in NARROW_DTYPES:
        return arr
    import ml_dtypes  # noqa: F401 - registers the dtype names with numpy

    return np.asarray(arr).view(np.dtype(dtype))


def storage_view(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A user's array of logical ``dtype`` as the module's uint8 storage (no copy)."""
    if dtype not in NARROW_DTYPES:
        return arr
    return np.ascontiguousarray(arr).view(np.uint8)
