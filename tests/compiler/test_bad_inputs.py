"""Every way a user can hand hwcc bad input gets one clear HwccError, never a TVM traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import compiler
from compiler.artifact.package import seal_manifest
from compiler.errors import (
    ArtifactError,
    InputShapeError,
    ModelLoadError,
    RuntimeInputError,
    TargetError,
    UnsupportedOpError,
)
from tests import models


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        compiler.compile(tmp_path / "nope.onnx")


def test_garbage_bytes(tmp_path: Path) -> None:
    p = tmp_path / "garbage.onnx"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match="not an ONNX model|invalid ONNX model"):
        compiler.compile(p)


def test_truncated_model(tmp_path: Path) -> None:
    """A model cut in half (an interrupted download) is refused, not half-imported."""
    data = models.get_model("resnet_block_cnn").SerializeToString()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        compiler.compile(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        compiler.compile(p)


def _model_with(node: onnx.NodeProto, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu0"), node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_op_node_and_opset() -> None:
    model = _model_with(helper.make_node("LpNormalization", ["r"], ["y"], name="my_lpnorm"))
    with pytest.raises(UnsupportedOpError) as info:
        compiler.compile(model)
    msg = str(info.value)
    assert "LpNormalization" in msg and "my_lpnorm" in msg and "opset 17" in msg


def test_dynamic_shape_needs_a_value() -> None:
    model = models.get_model("mlp")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(InputShapeError, match=r"--input-shape"):
        compiler.compile(model)


def test_input_shape_for_unknown_input() -> None:
    with pytest.raises(InputShapeError, match="not inputs of the model"):
        compiler.compile(models.get_model("mlp"), input_shapes={"nope": (1, 2)})


def test_unknown_triple() -> None:
    with pytest.raises(TargetError, match="known: x86_64-linux-gnu"):
        compiler.compile(models.get_model("mlp"), "sparc-sun-solaris")


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> compiler.Artifact:
    return compiler.compile(models.get_model("mlp"), "host",
                            output_dir=tmp_path_factory.mktemp("a") / "mlp", verify=False)


def test_wrong_input_shape(mlp_artifact: compiler.Artifact) -> None:
    name = mlp_artifact.inputs[0].name
    with pytest.raises(RuntimeInputError, match=r"must have shape \[4, 64\]; got \[4, 63\]"):
        mlp_artifact.run({name: np.zeros((4, 63), np.float32)})


def test_wrong_input_dtype(mlp_artifact: compiler.Artifact) -> None:
    name = mlp_artifact.inputs[0].name
    with pytest.raises(RuntimeInputError, match="must have dtype float32; got float64"):
        mlp_artifact.run({name: np.zeros((4, 64), np.float64)})


def test_wrong_input_name(mlp_artifact: compiler.Artifact) -> None:
    with pytest.raises(RuntimeInputError, match=r"unknown \['wrong'\]"):
        mlp_artifact.run({"wrong": np.zeros((4, 64), np.float32)})


def _copy(art: compiler.Artifact, dst: Path) -> Path:
    import shutil

    shutil.copytree(art.path, dst)
    return dst


def test_tampered_library(mlp_artifact: compiler.Artifact, tmp_path: Path) -> None:
    d = _copy(mlp_artifact, tmp_path / "t1")
    lib = d / "module.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after it was built"):
        compiler.Artifact.load(d)


def test_missing_library(mlp_artifact: compiler.Artifact, tmp_path: Path) -> None:
    d = _copy(mlp_artifact, tmp_path / "t2")
    (d / "module.so").unlink()
    with pytest.raises(ArtifactError, match="module.so is missing"):
        compiler.Artifact.load(d)


def test_artifact_for_another_architecture(mlp_artifact: compiler.Artifact,
                                           tmp_path: Path) -> None:
    """A manifest saying aarch64 is refused on x86 with a message saying where to run it."""
    d = _copy(mlp_artifact, tmp_path / "t3")
    m = json.loads((d / "manifest.json").read_text())
    m["target"]["machine"] = "aarch64" if m["target"]["machine"] != "aarch64" else "x86_64"
    (d / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    with pytest.raises(ArtifactError, match="is built for"):
        compiler.Artifact.load(d)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an hwcc artifact"):
        compiler.Artifact.load(tmp_path)


def test_failed_compile_leaves_no_artifact(tmp_path: Path) -> None:
    """An error mid-compile leaves neither the output directory nor temporary leftovers."""
    model = _model_with(helper.make_node("LpNormalization", ["r"], ["y"], name="n"))
    out = tmp_path / "out"
    with pytest.raises(UnsupportedOpError):
        compiler.compile(model, output_dir=out)
    assert list(tmp_path.iterdir()) == []
