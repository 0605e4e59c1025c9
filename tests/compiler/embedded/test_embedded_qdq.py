"""Already-quantized (QDQ) models on the embedded target: their own scales, no calibration,
bit-exact C, the QDQ model's accuracy; asymmetric ones refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from compiler import api
from compiler.errors import CompileError, ConfigError
from compiler.pipeline import CompressionOptions

from .conftest import EXAMPLES, interpret, load_graph


class _Reader(CalibrationDataReader):
    def __init__(self, samples: np.ndarray) -> None:
        self.it = iter([{"input": s} for s in samples])

    def get_next(self):  # noqa: ANN201 - onnxruntime's interface
        return next(self.it, None)


def _qdq(tmp: Path, symmetric: bool) -> Path:
    out = tmp / f"digits_qdq_{'sym' if symmetric else 'asym'}.onnx"
    pre = tmp / "digits_pre.onnx"  # onnxruntime's recommended first step (folds BatchNorm)
    quant_pre_process(str(EXAMPLES / "digits_cnn.onnx"), str(pre))
    calib = np.load(EXAMPLES / "digits_calib.npz")["input"][:32]
    act = QuantType.QInt8 if symmetric else QuantType.QUInt8
    quantize_static(str(pre), str(out), _Reader(calib),
                    quant_format=QuantFormat.QDQ, activation_type=act,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return out


@pytest.fixture(scope="module")
def qdq_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("qdq")
    model = _qdq(tmp, symmetric=True)
    return model, api.compile(model, "embedded", output_dir=tmp / "art")  # no --calib


def test_scales_come_from_the_model(qdq_artifact: tuple[Path, object]) -> None:
    model, art = qdq_artifact
    scales = {float(numpy_helper.to_array(t)) for t in onnx.load(str(model)).graph.initializer
              if t.name.endswith("_scale") and numpy_helper.to_array(t).size == 1}
    graph, _ = load_graph(art.path)
    used = {t["scale"] for t in graph["tensors"]}
    assert used and all(any(np.isclose(u, s, rtol=1e-6) for s in scales) for u in used)
    report = next(p for p in art.manifest["passes"] if p["name"] == "integerize")["report"]
    assert "from the model's QDQ pairs" in report["scales"]


def test_bit_exact_and_as_accurate_as_the_qdq_model(qdq_artifact: tuple[Path, object]) -> None:
    model, art = qdq_artifact
    graph, params = load_graph(art.path)
    data = np.load(EXAMPLES / "digits_data.npz")
    x, y = data["input"], data["label"]
    for xi in x[:6]:
        q = art.quantize_input(xi)
        assert np.array_equal(art.run_int8(q), interpret(graph, params, q))
    sess = ort.InferenceSession(str(model))
    ref = np.mean([np.argmax(sess.run(None, {"input": xi})[0]) == yi for xi, yi in zip(x, y)])
    ours = np.mean([np.argmax(art.run({"input": xi})["logits"]) == yi for xi, yi in zip(x, y)])
    assert abs(ours - ref) <= 0.005, (ours, ref)


def test_asymmetric_qdq_is_refused(tmp_path: Path) -> None:
    model = _qdq(tmp_path, symmetric=False)
    with pytest.raises(CompileError, match="symmetric int8") as info:
        api.compile(model, "embedded", output_dir=tmp_path / "a")
    assert "binding" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()


def test_qdq_with_compression_flags_is_refused(qdq_artifact: tuple[Path, object],
                                               tmp_path: Path) -> None:
    model, _ = qdq_artifact
    with pytest.raises(ConfigError, match="as it is"):
        api.compile(model, "embedded", output_dir=tmp_path / "a",
                    compression=CompressionOptions(prune=0.5))
