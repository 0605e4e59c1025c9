"""Guards for the test model zoo (``tests/models.py``) and the bundled example models.

These check the models themselves, not hwcc: if one of these fails, every test that uses the
model is suspect.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import examples

from tests.models import ZOO, get_model, random_inputs

ort = pytest.importorskip("onnxruntime")


def _ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_is_valid_and_static(name: str) -> None:
    """Each zoo model passes the full checker, is opset 17 and has only static shapes."""
    model = get_model(name)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    assert len(model.graph.value_info) > 0
    for value in values:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{value.name} has a dynamic dim"


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_is_deterministic(name: str) -> None:
    """Same seed gives byte-identical models and inputs; another seed changes the weights."""
    first, second = get_model(name), get_model(name)
    assert first.SerializeToString() == second.SerializeToString()
    assert get_model(name, seed=1).SerializeToString() != first.SerializeToString()
    a, b = random_inputs(first, seed=3), random_inputs(first, seed=3)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_onnxruntime_matches_reference(name: str) -> None:
    """onnxruntime and onnx.reference agree within 1e-4 and give finite, non-trivial outputs."""
    model = get_model(name)
    inputs = random_inputs(model, seed=0)
    expected = ReferenceEvaluator(model).run(None, inputs)
    actual = _ort_run(model, inputs)
    assert len(actual) == len(expected) == len(model.graph.output)
    for got, want in zip(actual, expected):
        assert np.all(np.isfinite(want))
        assert float(np.std(want)) > 1e-3, "output is (nearly) constant; weights too small?"
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_get_model_unknown_name_lists_known() -> None:
    """An unknown zoo name raises ValueError naming the known models."""
    with pytest.raises(ValueError, match="unknown zoo model 'nope'; known: .*mlp"):
        get_model("nope")


@pytest.mark.parametrize("name", examples.list_examples())
def test_example_model_accuracy(name: str) -> None:
    """Each bundled example loads, matches its data and keeps its accuracy under onnxruntime."""
    model = onnx.load(examples.example_model(name))
    onnx.checker.check_model(model, full_check=True)
    data = examples.example_data(name)
    calib = examples.example_data(name, "calib")
    assert calib["input"].shape[0] == 64 and calib["input"].shape[1:] == data["input"].shape[1:]
    assert data["input"].dtype == np.float32 and data["label"].dtype == np.int64
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    preds = np.array([sess.run(["logits"], {"input": x})[0].argmax() for x in data["input"]])
    assert (preds == data["label"]).mean() > 0.95
    # The reference evaluator agrees on a few samples (it is slow).
    ref = ReferenceEvaluator(model)
    for x in data["input"][:4]:
        want = ref.run(["logits"], {"input": x})[0]
        np.testing.assert_allclose(sess.run(["logits"], {"input": x})[0], want, atol=1e-4)


def test_example_unknown_name_lists_known() -> None:
    """Unknown example names and data kinds raise ValueError naming the known ones."""
    with pytest.raises(ValueError, match="known: digits_cnn"):
        examples.example_model("resnet50")
    with pytest.raises(ValueError, match="known: digits_cnn"):
        examples.example_data("resnet50")
    with pytest.raises(ValueError, match="known: data, calib"):
        examples.example_data("digits_cnn", "train")
