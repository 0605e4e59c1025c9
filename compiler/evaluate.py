"""Agreement of a compiled model with a reference: onnxruntime, else onnx.reference.

Used by ``compile`` (the manifest's agreement report), by passes and by search.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

logger = logging.getLogger(__name__)


def reference_backend() -> str:
    try:
        import onnxruntime  # noqa: F401

        return "onnxruntime"
    except ImportError:
        return "onnx.reference"


def reference_outputs(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                      backend: str | None = None) -> list[np.ndarray]:
    """Outputs of the ONNX model on ``inputs`` from an independent implementation."""
    backend = backend or reference_backend()
    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        return decode_narrow_outputs(model, sess.run(None, dict(inputs)))
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, dict(inputs)))


def decode_narrow_outputs(model: onnx.ModelProto, outputs: Sequence[np.ndarray]
                          ) -> list[np.ndarray]:
    """Outputs of one-byte ``ml_dtypes`` types (float8) that onnxruntime hands back as their
    raw bytes (uint8), seen as the type the model declares, so that values are compared."""
    out = []
    for vi, arr in zip(model.graph.output, outputs):
        arr = np.asarray(arr)
        want = _declared_dtype(vi)
        if want is not None and want.kind in "Vf" and want.itemsize == 1 \
                and arr.dtype in (np.uint8, np.int8):
            arr = arr.view(want)
        out.append(arr)
    out.extend(np.asarray(a) for a in list(outputs)[len(out):])
    return out


def _declared_dtype(vi: onnx.ValueInfoProto) -> np.dtype | None:
    if not vi.type.HasField("tensor_type"):
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _values(a: np.ndarray) -> np.ndarray:
    """``ml_dtypes`` arrays (float8, float4, int4, bfloat16: numpy kind 'V', or 'f' for
    float8_e5m2) as float64 values; others unchanged."""
    if a.dtype.kind == "V" or (a.dtype.kind == "f" and a.dtype.itemsize == 1):
        return a.astype(np.float64)
    return a


def compare(ours: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> dict[str, Any]:
    """Max/mean absolute error, relative error and (for 2-D float outputs) top-1 agreement."""
    if len(ours) != len(ref):
        raise ValueError(f"{len(ours)} outputs vs {len(ref)} reference outputs")
    max_abs = mean_abs = rel = 0.0
    top1_hits = top1_total = 0
    for a, b in zip(ours, ref):
        a = _values(np.asarray(a))
        b = _values(np.asarray(b))
        if a.shape != b.shape:
            raise ValueError(f"output shape {a.shape} differs from the reference {b.shape}")
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))  # infinities, NaN agree
            with np.errstate(invalid="ignore"):
                diff = np.abs(a64 - b64)
            d = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))  # NaN vs number
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            mean_abs = max(mean_abs, float(d.mean()) if d.size else 0.0)
            scale = float(np.abs(b64[np.isfinite(b64)]).max(initial=0.0))
            rel = max(rel, float(d.max(initial=0.0)) / scale if scale > 0 else 0.0)
            if a.ndim == 2 and a.shape[1] > 1:
                top1_hits += int((a.argmax(1) == b.argmax(1)).sum())
                top1_total += a.shape[0]
        else:
            mism = int((a != b).sum())
            max_abs = max(max_abs, float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(
                initial=0)))
            if mism:
                rel = max(rel, 1.0)
    out: dict[str, Any] = {"max_abs_err": max_abs, "mean_abs_err": mean_abs, "max_rel_err": rel}
    if top1_total:
        out["top1_agreement"] = top1_hits / top1_total
    return out


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-sample comparisons (worst error, averaged agreement)."""
    if not reports:
        return {}
    out: dict[str, Any] = {
        "max_abs_err": max(r["max_abs_err"] for r in reports),
        "mean_abs_err": float(np.mean([r["mean_abs_err"] for r in reports])),
        "max_rel_err": max(r["max_rel_err"] for r in reports),
        "samples": len(reports),
    }
    if all("top1_agreement" in r for r in reports):
        out["top1_agreement"] = float(np.mean([r["top1_agreement"] for r in reports]))
    return out


def evaluate_artifact(art: Any, feeds: Sequence[Mapping[str, np.ndarray]],
                      labels: np.ndarray | None = None,
                      reference_model: onnx.ModelProto | None = None) -> dict[str, Any]:
    """Run ``art`` over samples; compare with the reference model and score top-1 accuracy.

    Parameters
    ----------
    art
        A loaded :class:`compiler.artifact.runtime.Artifact`.
    feeds
        One input dict per sample.
    labels
        Class labels, one per sample (scored on the first output, argmax of its last axis).
    reference_model
        The model to compare with (default: the artifact's own source ``model.onnx``).
    """
    if reference_model is None:
        reference_model = onnx.load(str(art.path / art.manifest["source_model"]))
    backend = reference_backend()
    first = art.outputs[0].name
    reports, ours_first, ref_first = [], [], []
    sess = _reference_session(reference_model, backend)
    for feed in feeds:
        ours = art.run(feed)
        ref = sess(feed)
        reports.append(compare([ours[s.name] for s in art.outputs], ref))
        ours_first.append(ours[first])
        ref_first.append(ref[0])
    out = merge_reports(reports)
    out["reference"] = backend
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != len(feeds):
            raise ValueError(f"{labels.shape[0]} labels for {len(feeds)} samples")
        pred, ref_pred = _predictions(ours_first), _predictions(ref_first)
        out["top1_accuracy"] = float((pred == labels).mean())
        out["reference_top1_accuracy"] = float((ref_pred == labels).mean())
        out["top1_agreement"] = float((pred == ref_pred).mean())
    return out


def _predictions(first_outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Class of each sample: argmax over the last axis of its first output (first row)."""
    return np.array([o.reshape(-1, o.shape[-1]).argmax(-1)[0] for o in first_outputs])


def top1_accuracy(art: Any, feeds: Sequence[Mapping[str, np.ndarray]],
                  labels: np.ndarray) -> float:
    """Top-1 accuracy of ``art`` alone (no reference run), scored as
    :func:`evaluate_artifact` scores it."""
    first = art.outputs[0].name
    pred = _predictions([art.run(feed)[first] for feed in feeds])
    return float((pred == np.asarray(labels).reshape(-1)).mean())


def _reference_session(model: onnx.ModelProto, backend: str):
    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        return lambda feed: decode_narrow_outputs(model, sess.run(None, dict(feed)))
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    return lambda feed: list(ev.run(None, dict(feed)))
