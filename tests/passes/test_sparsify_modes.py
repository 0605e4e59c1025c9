"""Models that are already sparse: ``--sparsity keep`` / ``auto`` (hwcc.Sparsify's modes) and the
per-layer sparsity ``hwcc inspect`` reports.

References are independent of hwcc: outputs come from ``onnx.reference`` on the original model
(keep prunes nothing) or on a model pruned by a numpy mask recomputed here (auto).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.cli.main import main
from compiler.errors import ConfigError
from compiler.sparsity_stats import layer_sparsity
from passes.sparsify import Sparsify, SparsifyConfig, read_report, sparsify_config_from_args
from tests.passes.prune_helpers import apply, imported
from tests.passes.test_sparsify import (
    build_run,
    dense_weights,
    onnx_ref,
    pruned_onnx,
    sparse_kernels_in,
)


def block_sparse(shape: tuple[int, int], density: float, block: tuple[int, int],
                 seed: int) -> np.ndarray:
    """A Gaussian (K, N) MatMul weight whose (N, K) matrix keeps ``density`` of its blocks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    r, c = block
    n, k = shape[1], shape[0]
    keep = rng.random((n // r, k // c)) < density
    return w * np.kron(keep, np.ones(block, np.float32)).T


def presparse_mlp(rows: int = 16, seed: int = 0) -> onnx.ModelProto:
    """input (rows, 256) → MatMul (256×1024, ~10% of 4×4 blocks) → Relu → MatMul (1024×256,
    ~10%) → MatMul (256×64, dense) → output: a model from sparse training."""
    w1 = block_sparse((256, 1024), 0.1003, (4, 4), seed)
    w2 = block_sparse((1024, 256), 0.1, (4, 4), seed + 1)
    w3 = np.random.default_rng(seed + 2).standard_normal((256, 64)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["h2"], name="fc2"),
        helper.make_node("MatMul", ["h2", "w3"], ["output"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "presparse",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [rows, 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [rows, 64])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def presparse_conv(seed: int = 0) -> onnx.ModelProto:
    """A 64→64 3×3 conv (pad 1) on 16×16 whose (O, C·9) matrix keeps ~10% of its 4×1 blocks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    keep = np.kron(rng.random((16, 64 * 9)) < 0.1, np.ones((4, 1), bool))
    w = (w.reshape(64, -1) * keep).reshape(w.shape)
    node = helper.make_node("Conv", ["input", "w"], ["output"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "presparse_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, 16, 16])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    (inp,) = model.graph.input
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def nonzeros(model: onnx.ModelProto) -> int:
    return sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in model.graph.initializer)


# --------------------------------------------------------------------------------------------
# keep


@pytest.mark.parametrize("make", [presparse_mlp, presparse_conv], ids=["mlp", "conv"])
def test_keep_runs_the_existing_zeros_in_sparse_kernels_and_prunes_nothing(make) -> None:
    """The issue's case: a layer with 10.03 % non-zero 4×4 blocks. keep removes no weight,
    runs the sparse layers in BSR kernels and matches onnx.reference on the original model."""
    model = make()
    out = apply(Sparsify(SparsifyConfig(mode="keep", block="4x1", lanes=16)), imported(model))
    rep = read_report(out)
    sparse = [e for e in rep["layers"] if e["choice"] == "sparse"]
    assert sparse and len(sparse_kernels_in(out)) == len(sparse) == len(rep["sparse_layers"])
    assert all(e["existing_zero_blocks"] > 0.85 and e["ratio"] == 0 for e in sparse)
    assert rep["nonzero_weights"] == nonzeros(model)  # not one real weight lost
    x = feeds(model)
    np.testing.assert_allclose(build_run(out, x), onnx_ref(model, x), rtol=1e-4, atol=1e-3)


def test_keep_leaves_a_dense_layer_exactly_as_it_is() -> None:
    """The dense head has no all-zero block: it keeps its op and its weights bit for bit."""
    model = presparse_mlp()
    out = apply(Sparsify(SparsifyConfig(mode="keep", block="4x1", lanes=16)), imported(model))
    (head,) = [e for e in read_report(out)["layers"] if e["weight_shape"] == [256, 64]]
    assert head["choice"] == "dense" and "left as it is" in head["reason"]
    (w3,) = [w for w in dense_weights(out) if w.shape == (256, 64)]
    np.testing.assert_array_equal(w3, numpy_helper.to_array(model.graph.initializer[2]))


def test_ratio_mode_on_the_same_model_loses_real_weights() -> None:
    """Why keep exists: --sparsity 0.9 on 10.03 % non-zero blocks removes non-zero weights."""
    model = presparse_mlp()
    out = apply(Sparsify(SparsifyConfig(ratio=0.9, block="4x1", lanes=16)), imported(model))
    assert read_report(out)["nonzero_weights"] < nonzeros(model)


# --------------------------------------------------------------------------------------------
# auto


def test_auto_prunes_each_layer_within_its_energy_budget() -> None:
    """auto: the already-sparse layers go to a ratio ≥ their zeros, removing ≤ 1 % of their
    squared weights (checked on a numpy mask recomputed here and run by onnx.reference); the
    dense Gaussian head would lose far more at 50 % and is left as it is."""
    model = presparse_mlp()
    out = apply(Sparsify(SparsifyConfig(mode="auto", block="4x1", lanes=16)), imported(model))
    rep = read_report(out)
    by_shape = {tuple(e["weight_shape"]): e for e in rep["layers"]}
    head = by_shape[(256, 64)]
    assert head["choice"] == "dense" and "left as it is" in head["reason"]
    masks = {}
    for name, shape in (("w1", (256, 1024)), ("w2", (1024, 256))):
        e = by_shape[shape]
        assert e["choice"] == "sparse" and e["ratio"] >= e["existing_zero_blocks"]
        w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        wm = w.T.astype(np.float64)
        norms = (wm**2).reshape(wm.shape[0] // 4, 4, wm.shape[1]).sum(axis=1)
        n_remove = math.floor(e["ratio"] * norms.size + 1e-9)
        keep = np.ones(norms.size, bool)
        keep[np.argsort(norms.reshape(-1), kind="stable")[:n_remove]] = False
        mask = np.repeat(keep.reshape(norms.shape), 4, axis=0)
        removed = float((wm[~mask] ** 2).sum() / (wm**2).sum())
        assert removed <= 0.01 + 1e-9
        assert e["kept_energy"] == pytest.approx(1 - removed, abs=1e-5)
        masks[name] = lambda m, mask=mask: mask
    x = feeds(model)
    ref = onnx_ref(pruned_onnx(model, masks), x)
    np.testing.assert_allclose(build_run(out, x), ref, rtol=1e-4, atol=1e-3)


def test_auto_energy_and_config_errors() -> None:
    with pytest.raises(ConfigError, match="auto_energy"):
        SparsifyConfig(mode="auto", auto_energy=0)
    with pytest.raises(ConfigError, match="mode"):
        SparsifyConfig(mode="bogus")
    with pytest.raises(ConfigError, match="layer_ratios"):
        SparsifyConfig(mode="keep", layer_ratios={"lv": 0.5})
    with pytest.raises(ConfigError, match="'keep' or 'auto'"):
        sparsify_config_from_args("most", "4x1")
    cfg = sparsify_config_from_args("auto", "4x1", calibration={"input": np.zeros((2, 3))})
    assert cfg.mode == "auto" and cfg.recover
    assert not sparsify_config_from_args("keep", "4x1", calibration={"x": np.zeros(1)}).recover


# --------------------------------------------------------------------------------------------
# CLI: compile --sparsity keep, inspect


def test_cli_keep_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented flags: inspect reports the zeros and suggests the block; compile with
    --sparsity keep runs them sparse; hwcc run matches onnx.reference on the original model."""
    model = presparse_mlp()
    path = tmp_path / "presparse.onnx"
    onnx.save(model, path)

    assert main(["inspect", str(path), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [e["structure"] for e in layers] == ["4x4 blocks", "4x4 blocks", "dense"]
    assert [e["suggested_block"] for e in layers] == ["4x1", "4x1", None]
    assert layers[0]["zeros"] == pytest.approx(
        float((numpy_helper.to_array(model.graph.initializer[0]) == 0).mean()), abs=1e-6)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "2 of 3 weighted layers hold zeros" in text
    assert "--sparsity keep --sparse-block 4x1" in text

    out = tmp_path / "a"
    assert main(["compile", str(path), "-o", str(out), "--bench-repeat", "0",
                 "--sparsity", "keep", "--sparse-block", "4x1"]) == 0
    assert "2 of 3 layers in sparse kernels" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    rep = next(p for p in manifest["passes"] if p["name"] == "sparsify")["report"]
    assert rep["mode"] == "keep" and len(rep["sparse_layers"]) == 2
    x = feeds(model)
    np.savez(tmp_path / "x.npz", **x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz")]) == 0
    got = np.load(tmp_path / "y.npz")["output"]
    np.testing.assert_allclose(got, onnx_ref(model, x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("value", ["1.5", "most"])
def test_cli_bad_sparsity_value(value: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(presparse_mlp(), model_path)
    with pytest.raises(SystemExit) as exc:
        main(["compile", str(model_path), "-o", str(tmp_path / "a"), "--sparsity", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sparsity" in err and value in err and "is not" in err, err


def test_layer_sparsity_of_unstructured_and_two_four_zeros() -> None:
    """Structure names: unstructured zeros, 2:4 rows, dense."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    unstructured = w * (rng.random(w.shape) > 0.6)
    two_four = w.copy()
    drop = np.argsort(rng.random((64, 32, 4)), axis=2)[:, :, :2]  # 2 random zeros per group
    np.put_along_axis(two_four.reshape(64, 32, 4), drop, 0.0, axis=2)
    nodes, inits = [], []
    for i, arr in enumerate((unstructured, two_four, w)):
        inits.append(numpy_helper.from_array(arr, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [f"x{i}", f"w{i}"], [f"y{i}"], transB=1,
                                      name=f"g{i}"))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, 128]) for i in range(3)],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 64]) for i in range(3)],
        inits,
    )  # fmt: skip
    entries = layer_sparsity(helper.make_model(graph))
    assert [e["structure"] for e in entries] == ["unstructured", "2:4", "dense"]
    assert [e["suggested_block"] for e in entries] == ["none", "2:4", None]
    assert entries[1]["two_four"] and entries[1]["zeros"] == 0.5
