"""Low-rank factorization (hwcc.LowRank): one case per behaviour.

Numerical references are independent of TVM: numpy SVDs of the original weights and
``onnx.reference`` runs of convolutions with the reconstructed weights.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compiler.errors import ConfigError
from passes._ir import bindings, const_array, is_const, main_function, op_name
from passes.canonicalize import Canonicalize
from passes.low_rank import (
    LowRank,
    LowRankConfig,
    format_report,
    low_rank_config_from_arg,
    read_report,
)
from tests import models

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})


# --------------------------------------------------------------------------------------------
# Helpers


def apply(pass_obj: tvm.transform.Pass, mod: tvm.IRModule) -> tvm.IRModule:
    """Run a pass between two well-formedness checks."""
    assert relax.analysis.check_well_formed(mod)
    out = pass_obj(mod)
    assert relax.analysis.check_well_formed(out)
    return out


def run(mod: tvm.IRModule, *arrays: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


@functools.cache
def zoo(name: str) -> tuple[onnx.ModelProto, tvm.IRModule]:
    model = models.get_model(name)
    return model, Canonicalize()(from_onnx(model, keep_params_in_input=False))


def weighted_calls(mod: tvm.IRModule) -> list[tuple[str, str, tuple[int, ...]]]:
    """(binding name, op, constant weight shape) of every conv2d / matmul with a const weight."""
    out = []
    for b in bindings(main_function(mod)):
        if op_name(b.value) in ("relax.matmul", "relax.nn.conv2d") and is_const(b.value.args[1]):
            out.append((b.var.name, op_name(b.value), const_array(b.value.args[1]).shape))
    return out


def consts_of(mod: tvm.IRModule) -> dict[str, np.ndarray]:
    """Binding name -> constant weight of conv2d / matmul calls."""
    return {
        b.var.name: const_array(b.value.args[1])
        for b in bindings(main_function(mod))
        if op_name(b.value) in ("relax.matmul", "relax.nn.conv2d") and is_const(b.value.args[1])
    }


def spectrum_matrix(m: int, n: int, s: np.ndarray, seed: int = 0) -> np.ndarray:
    """An m × n matrix with singular values ``s`` (random orthonormal singular vectors)."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((n, len(s))))[0]
    return ((u * s) @ v.T).astype(np.float32)


def dense_model(w: np.ndarray, rows: int = 8) -> onnx.ModelProto:
    """``y = x @ w`` as a one-node ONNX model."""
    m, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, m])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(nodes: list, inits: dict, cin: int, shape_in: tuple) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *shape_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --------------------------------------------------------------------------------------------
# Configuration and the CLI flag


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of energy, rank, ratio"),
        ({"energy": 0.9, "rank": 8}, "exactly one"),
        ({"energy": 0.0}, r"energy must be a number in \(0, 1\]"),
        ({"energy": 1.5}, r"energy must be a number in \(0, 1\]"),
        ({"energy": -0.1}, r"energy must be a number in \(0, 1\]"),
        ({"ratio": 0.0}, r"ratio must be a number in \(0, 1\]"),
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"rank": 2.5}, "rank must be an integer >= 1"),
        ({"energy": 0.9, "conv_method": "cp"}, "unknown conv_method 'cp'"),
        ({"energy": 0.9, "multiple_of": 0}, "multiple_of must be an integer >= 1"),
        ({"energy": 0.9, "recover": True}, "recover needs calibration data"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    """Out-of-range or inconsistent options raise ConfigError with a readable message."""
    with pytest.raises(ConfigError, match=match):
        LowRankConfig(**kwargs)


def test_flag_parsing() -> None:
    """energy= / rank= / ratio= and the optional extras map onto LowRankConfig fields."""
    assert low_rank_config_from_arg("energy=0.95").energy == 0.95
    assert low_rank_config_from_arg("rank=64").rank == 64
    assert low_rank_config_from_arg("ratio=0.25", multiple_of=16).multiple_of == 16
    cfg = low_rank_config_from_arg("energy=0.9, conv=spatial, min_params=0, all")
    assert (cfg.conv_method, cfg.min_params, cfg.only_if_cheaper) == ("spatial", 0, False)
    calib = {"x": np.zeros((2, 8, 4), np.float32)}
    assert low_rank_config_from_arg("rank=4", calibration=calib).recover


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "needs energy=F"),
        ("energy=abc", "energy must be a number; got 'abc'"),
        ("rank=6.5", "rank must be an integer; got '6.5'"),
        ("energy=1.5", r"\(0, 1\]"),
        ("energy=0", r"\(0, 1\]"),
        ("depth=3", "bad --low-rank option 'depth=3'"),
        ("0.95", "bad --low-rank option '0.95'"),
        ("rank=8,rank=4", "given twice"),
        ("rank=8,ratio=0.5", "exactly one"),
    ],
)
def test_flag_parsing_errors(spec: str, match: str) -> None:
    """Malformed flags raise ConfigError quoting the input."""
    with pytest.raises(ConfigError, match=match):
        low_rank_config_from_arg(spec)


def test_rank_larger_than_the_layer_is_an_error() -> None:
    """rank > min(m, n) of a considered layer is refused, naming the layer and its size."""
    w = np.random.default_rng(0).standard_normal((48, 24)).astype(np.float32)
    mod = from_onnx(dense_model(w), keep_params_in_input=False)
    with pytest.raises(ConfigError, match=r"rank 30 is larger than the full rank .* = 24"):
        LowRank(LowRankConfig(rank=30, min_params=0))(mod)


# --------------------------------------------------------------------------------------------
# Dense layers: structure and the SVD error bounds


@pytest.mark.parametrize("m, n, r", [(48, 40, 8), (48, 40, 19), (40, 96, 33), (64, 64, 1)])
def test_dense_factors_have_the_chosen_rank(m: int, n: int, r: int) -> None:
    """The layer becomes matmul(x, A: m×r) then matmul(·, B: r×n), with the layer's name kept
    on the last factor, and the report states the rank."""
    w = np.random.default_rng(m + n + r).standard_normal((m, n)).astype(np.float32)
    mod = from_onnx(dense_model(w), keep_params_in_input=False)
    (name, _, _), = weighted_calls(mod)  # fmt: skip
    p = LowRank(LowRankConfig(rank=r, min_params=0, only_if_cheaper=False))
    out = apply(p, mod)
    assert weighted_calls(out) == [
        (f"{name}_lr0", "relax.matmul", (m, r)),
        (name, "relax.matmul", (r, n)),
    ]
    (lay,) = p.report["layers"]
    assert (lay["rank"], lay["full_rank"], lay["status"]) == (r, min(m, n), "factorized")
    assert read_report(out) == p.report


@pytest.mark.parametrize("r", [4, 12, 24])
def test_dense_error_follows_the_discarded_singular_values(r: int) -> None:
    """‖W − AB‖_F = sqrt(Σ_{i>r} σ_i²) and, row by row, ‖x W − x A B‖ ≤ ‖x‖ σ_{r+1}."""
    s = 2.0 ** -np.arange(32, dtype=np.float64) * 10 + 0.01
    w = spectrum_matrix(48, 32, s)
    mod = from_onnx(dense_model(w, rows=16), keep_params_in_input=False)
    out = apply(LowRank(LowRankConfig(rank=r, min_params=0, only_if_cheaper=False)), mod)
    consts = list(consts_of(out).values())
    a, b = (c.astype(np.float64) for c in consts)
    sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    frob = np.linalg.norm(w - a @ b)
    np.testing.assert_allclose(frob, np.sqrt(np.sum(sigma[r:] ** 2)), rtol=1e-3, atol=1e-6)
    (lay,) = read_report(out)["layers"]
    rel = np.sqrt(np.sum(sigma[r:] ** 2) / np.sum(sigma**2))
    np.testing.assert_allclose(lay["weight_rel_error"], rel, rtol=1e-6)
    np.testing.assert_allclose(lay["energy_kept"], 1 - rel**2, rtol=1e-6)
    x = np.random.default_rng(1).standard_normal((16, 48)).astype(np.float32)
    err = np.linalg.norm(run(out, x) - x @ w.astype(np.float64), axis=1)
    bound = np.linalg.norm(x, axis=1) * sigma[r]
    assert np.all(err <= bound * (1 + 1e-3) + 1e-5), (err, bound)
    assert err.max() > 0.05 * bound.max()  # the bound is not vacuous: error is of its order


def test_energy_picks_the_smallest_rank_then_rounds_to_the_vector_width() -> None:
    """energy=e keeps the fewest σ² reaching e of the total, rounded up to multiple_of."""
    s = np.linspace(10, 0.1, 40)
    w = spectrum_matrix(96, 40, s, seed=3)
    mod = from_onnx(dense_model(w), keep_params_in_input=False)
    for energy, multiple in [(0.5, 1), (0.5, 8), (0.9, 8), (1.0, 8)]:
        sig = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        frac = np.cumsum(sig**2) / np.sum(sig**2)
        expected = int(np.argmax(frac >= energy - 1e-9)) + 1
        expected = min(-(-expected // multiple) * multiple, 40)
        cfg = LowRankConfig(energy=energy, multiple_of=multiple, min_params=0)
        p = LowRank(cfg)
        out = apply(p, mod)
        (lay,) = p.report["layers"]
        if expected * (96 + 40) < 96 * 40:
            assert lay["rank"] == expected, (energy, multiple)
            assert lay["energy_kept"] >= energy - 1e-9
            assert [c[2] for c in weighted_calls(out)] == [(96, expected), (expected, 40)]
        else:  # factorization costs more FLOPs than the layer: left as is
            assert lay["status"] == "skipped" and lay["reason"] == "not cheaper in FLOPs"
            assert lay["rank"] == expected  # reported as what it would have been
            assert weighted_calls(out) == weighted_calls(mod)


# --------------------------------------------------------------------------------------------
# Whole models at full rank: the same function


@pytest.mark.parametrize(
    "name, method",
    [
        ("mlp", "tucker2"),
        ("transformer_block", "tucker2"),
        ("resnet_block_cnn", "tucker2"),
        ("resnet_block_cnn", "spatial"),
    ],
)
def test_full_rank_computes_the_same_function(name: str, method: str) -> None:
    """ratio=1 factorizes every layer exactly; outputs equal the original within float error."""
    model, mod = zoo(name)
    cfg = LowRankConfig(ratio=1.0, conv_method=method, min_params=0, only_if_cheaper=False)
    p = LowRank(cfg)
    out = apply(p, mod)
    assert p.report["factorized"] == len(weighted_calls(mod))
    assert len(weighted_calls(out)) > len(weighted_calls(mod))
    x = list(models.random_inputs(model, 0).values())
    ref = run(mod, *x)
    np.testing.assert_allclose(run(out, *x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# --------------------------------------------------------------------------------------------
# Convolutions against onnx.reference


CONV_CASES = {
    "stride2": {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]},
    "asym_dilated": {"strides": [1, 2], "pads": [2, 0, 1, 2], "dilations": [2, 1]},
}


@pytest.mark.parametrize("method", ["tucker2", "spatial"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_decomposition_matches_onnx_reference(method: str, case: str) -> None:
    """The factorized conv chain equals one conv with the reconstructed weight Ŵ (run by
    onnx.reference), and ‖W − Ŵ‖_F follows the discarded singular values."""
    rng = np.random.default_rng(7)
    cout, cin, k = 24, 16, 3
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    attrs = CONV_CASES[case]
    model = conv_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], {"w": w}, cin, (11, 12)
    )
    mod = from_onnx(model, keep_params_in_input=False)
    (name, _, _), = weighted_calls(mod)  # fmt: skip
    rank = 8
    p = LowRank(LowRankConfig(rank=rank, conv_method=method, min_params=0, only_if_cheaper=False))
    out = apply(p, mod)
    f = consts_of(out)
    w64 = w.astype(np.float64)
    if method == "tucker2":
        first, core, last = f[f"{name}_lr0"], f[f"{name}_lr1"], f[name]
        assert (first.shape, core.shape, last.shape) == (
            (rank, cin, 1, 1), (rank, rank, k, k), (cout, rank, 1, 1)
        )  # fmt: skip
        w_hat = np.einsum("rshw,or,si->oihw", core, last[:, :, 0, 0], first[:, :, 0, 0])
        s_out = np.linalg.svd(w64.reshape(cout, -1), compute_uv=False)
        s_in = np.linalg.svd(w64.transpose(1, 0, 2, 3).reshape(cin, -1), compute_uv=False)
        bound = np.sqrt(np.sum(s_out[rank:] ** 2) + np.sum(s_in[rank:] ** 2))
        assert np.linalg.norm(w_hat - w64) <= bound * (1 + 1e-4)
    else:
        vert, horiz = f[f"{name}_lr0"], f[name]
        assert (vert.shape, horiz.shape) == ((rank, cin, k, 1), (cout, rank, 1, k))
        w_hat = np.einsum("rihx,orwy->oihy", vert, horiz)
        sig = np.linalg.svd(w64.transpose(1, 2, 0, 3).reshape(cin * k, cout * k), compute_uv=False)
        np.testing.assert_allclose(
            np.linalg.norm(w_hat - w64), np.sqrt(np.sum(sig[rank:] ** 2)), rtol=1e-4
        )
    x = rng.standard_normal((1, cin, 11, 12)).astype(np.float32)
    ref_model = conv_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
        {"w": w_hat.astype(np.float32)}, cin, (11, 12),
    )  # fmt: skip
    (expected,) = ReferenceEvaluator(ref_model).run(None, {"x": x})
    got = run(out, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # And the original conv differs: the check above is not trivially true.
    (original,) = ReferenceEvaluator(model).run(None, {"x": x})
    assert np.abs(original - expected).max() > 1e-2


# --------------------------------------------------------------------------------------------
# Negative cases: the pass leaves the graph alone


def test_nothing_to_factorize_leaves_main_unchanged() -> None:
    """With only_if_cheaper, random (flat-spectrum) weights at energy 0.99 are not worth
    factorizing, convs are excluded by conv_method="none": main is structurally the same."""
    _, mod = zoo("resnet_block_cnn")
    p = LowRank(LowRankConfig(energy=0.99, conv_method="none", min_params=0))
    out = apply(p, mod)
    tvm.ir.assert_structural_equal(main_function(out).without_attr("hwcc.low_rank"), mod["main"])
    assert p.report["factorized"] == 0
    reasons = {lay["reason"] for lay in p.report["layers"]}
    assert reasons == {"conv_method none", "not cheaper in FLOPs"}


def test_non_constant_weights_and_small_layers_are_skipped() -> None:
    """A matmul of two inputs is not a layer; a layer under min_params is reported, kept."""
    _, mod = zoo("transformer_block")  # Q·Kᵀ and P·V are matmuls of activations
    p = LowRank(LowRankConfig(rank=8, min_params=10**6))
    out = apply(p, mod)
    tvm.ir.assert_structural_equal(main_function(out).without_attr("hwcc.low_rank"), mod["main"])
    assert len(p.report["layers"]) == 6  # q, k, v, attn_out, ffn1, ffn2 — not the attention
    assert all(lay["reason"].endswith("< min_params 1000000") for lay in p.report["layers"])


# --------------------------------------------------------------------------------------------
# Recovery and the driver


def test_recovery_refits_the_last_factor_on_calibration_data() -> None:
    """recover=True re-fits each factorized layer's last factor: a kept re-fit lowers that
    layer's error, one that would not lower the held-back error is dropped (and says so), and
    the model's outputs on the calibration data get closer to the original's."""
    model, mod = zoo("mlp")
    sets = [models.random_inputs(model, s) for s in range(24)]
    calib = {k: np.stack([s[k] for s in sets]) for k in sets[0]}
    plain = apply(LowRank(LowRankConfig(ratio=0.25)), mod)
    p = LowRank(LowRankConfig(ratio=0.25, calibration=calib, recover=True))
    fitted = apply(p, mod)
    assert [c[2] for c in weighted_calls(fitted)] == [c[2] for c in weighted_calls(plain)]
    rec = {lay["layer"]: lay["recovery"] for lay in p.report["layers"] if "recovery" in lay}
    assert rec and p.report["recovered"]
    assert any(r["kept"] for r in rec.values()), rec
    assert all(r["error_after"] < r["error_before"] if r["kept"]
               else r["reason"].startswith("dropped") for r in rec.values()), rec
    x = calib["input"][:6]
    ref = np.stack([run(mod, xi) for xi in x])
    err_plain = np.linalg.norm(np.stack([run(plain, xi) for xi in x]) - ref)
    err_fit = np.linalg.norm(np.stack([run(fitted, xi) for xi in x]) - ref)
    assert err_fit < err_plain, (err_fit, err_plain)


def test_registered_for_the_driver_with_a_printable_report(tmp_path) -> None:
    """compile(..., passes=[PassSpec("low_rank", cfg)]) runs the pass and puts its report in
    the manifest; format_report prints ranks, parameters and FLOPs."""
    import compiler
    from compiler.pipeline import PassSpec

    model, _ = zoo("mlp")
    spec = PassSpec("low_rank", LowRankConfig(rank=16))
    art = compiler.compile(model, "host", passes=[spec], output_dir=tmp_path / "a")
    (entry,) = art.manifest["passes"]
    report = entry["report"]
    assert report["factorized"] == 2 and report["params_after"] < report["params_before"]
    feeds = models.random_inputs(model, 0)
    assert art.run(feeds)["logits"].shape == (4, 10)
    text = format_report(report)
    assert "16/64" in text and "parameters" in text and "FLOPs" in text


def test_transposed_gemm_weights_are_factorized_without_canonicalize() -> None:
    """Gemm transB=1 imports as matmul(x, permute_dims(W)); the pass factorizes Wᵀ and drops
    the now unused transpose."""
    model = models.mlp()
    raw = from_onnx(model, keep_params_in_input=False)
    transposes = [
        b for b in bindings(main_function(raw)) if op_name(b.value) == "relax.permute_dims"
    ]
    assert transposes  # the precondition of this test
    p = LowRank(LowRankConfig(rank=8, min_params=0, only_if_cheaper=False))
    out = apply(p, raw)
    assert p.report["factorized"] == 3
    assert not [b for b in bindings(main_function(out)) if op_name(b.value) == "relax.permute_dims"]
    x = list(models.random_inputs(model, 0).values())
    full = apply(LowRank(LowRankConfig(ratio=1.0, min_params=0, only_if_cheaper=False)), raw)
    np.testing.assert_allclose(run(full, *x), run(raw, *x), rtol=1e-4, atol=1e-4)
