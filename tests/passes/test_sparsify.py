"""Weight sparsity (hwcc.Sparsify) and the BSR kernels it emits.

References are independent of hwcc: masks are recomputed in numpy from the ONNX initializers,
pruned models are run by ``onnx.reference``, raw kernels are compared with numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax

from compiler import lower
from compiler.errors import ConfigError
from compiler.pipeline import PASSES
from passes import sparse_kernels as sk
from passes._ir import bindings, main_function
from passes.calibration import run
from passes.sparsify import (
    Sparsify,
    SparsifyConfig,
    parse_pattern,
    read_report,
    sparsify_config_from_args,
)
from targets import parse_target
from tests import models
from tests.passes.prune_helpers import apply, imported, stacked_inputs, tiny_cnn, zoo

HOST = parse_target("host")


# --------------------------------------------------------------------------------------------
# Helpers


def build_run(mod: tvm.IRModule, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """First output of ``mod`` built by hwcc's lowering for this machine."""
    vm = relax.VirtualMachine(lower.build(mod, HOST).executable, tvm.cpu())
    names = [p.name for p in main_function(mod).params]
    return vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in names]).numpy()


def onnx_ref(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ReferenceEvaluator(model).run(None, feeds)[0]


def block_mask(wm: np.ndarray, block: tuple[int, int], ratio: float) -> np.ndarray:
    """Independent per-layer block magnitude mask of an (N, K) matrix."""
    r, c = block
    n, k = wm.shape
    norms = (wm.astype(np.float64) ** 2).reshape(n // r, r, k // c, c).sum(axis=(1, 3))
    n_remove = int(np.floor(ratio * norms.size + 1e-9))
    keep = np.ones(norms.size, dtype=bool)
    keep[np.argsort(norms.reshape(-1), kind="stable")[:n_remove]] = False
    return np.repeat(np.repeat(keep.reshape(norms.shape), r, axis=0), c, axis=1)


def nm_mask(wm: np.ndarray, n_keep: int, m: int) -> np.ndarray:
    keep = np.zeros(wm.shape, dtype=bool)
    for i in range(wm.shape[0]):
        for g in range(0, wm.shape[1], m):
            top = np.argsort(-np.abs(wm[i, g : g + m]), kind="stable")[:n_keep]
            keep[i, g + top] = True
    return keep


def pruned_onnx(model: onnx.ModelProto, masks_for: dict[str, callable]) -> onnx.ModelProto:
    """The model with initializer ``name`` multiplied by ``masks_for[name](matrix)``.

    Matrices are (out, in): Gemm transB=1 weights as they are, MatMul weights transposed,
    Conv weights reshaped to (O, C·kh·kw).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kinds = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        ):
            kinds[node.input[1]] = "kn"
        elif node.op_type in ("Gemm", "Conv"):
            kinds[node.input[1]] = "nk"
    for init in model.graph.initializer:
        if init.name not in masks_for:
            continue
        w = numpy_helper.to_array(init)
        wm = w.T if kinds[init.name] == "kn" else w.reshape(w.shape[0], -1)
        wm = wm * masks_for[init.name](wm)
        w = wm.T if kinds[init.name] == "kn" else wm.reshape(w.shape)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), init.name))
    return model


def matmul_model(rows: tuple[int, ...], k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    """input (*rows, k) -> MatMul (k, n) -> Add bias -> output."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [*rows, k])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [*rows, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_model(
    cin: int, cout: int, hw: tuple[int, int], k: int, batch: int = 1, seed: int = 0, **attrs
) -> onnx.ModelProto:
    """input (batch, cin, *hw) -> Conv(k×k, attrs) -> output."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["input", "w"], ["output"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, cin, *hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    return models.random_inputs(model, seed)


def sparse_kernels_in(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs of ``mod`` that are hwcc BSR kernels."""
    return [
        gv.name_hint
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and sk.KERNEL_ATTR in f.attrs
    ]


# --------------------------------------------------------------------------------------------
# The pass against onnx.reference on the same pruned weights


@pytest.mark.parametrize(
    ("block", "ratio"),
    [("none", 0.5), ("1x4", 0.9), ("4x1", 0.95), ("8x1", 0.7), ("16x1", 0.99), ("2:4", 0.5)],
)
def test_sparse_matmul_matches_onnx_reference(block: str, ratio: float) -> None:
    """A MatMul + bias on a (3, 7, 64) input (21 rows: odd, 3-D) rewritten to the sparse kernel
    equals onnx.reference on the model with independently pruned weights; density as asked."""
    model = matmul_model((3, 7), 64, 48)
    mod = imported(model)
    out = apply(Sparsify(SparsifyConfig(ratio=ratio, block=block, lanes=16, choice="sparse")), mod)
    pat = parse_pattern(block)
    mask = (
        (lambda wm: nm_mask(wm, *pat.shape))
        if pat.kind == "nm"
        else (lambda wm: block_mask(wm, pat.shape, ratio))
    )
    ref_model = pruned_onnx(model, {"w": mask})
    feeds = feeds_for(model)
    np.testing.assert_allclose(
        build_run(out, feeds), onnx_ref(ref_model, feeds), rtol=1e-4, atol=1e-4
    )
    (entry,) = read_report(out)["layers"]
    assert entry["choice"] == "sparse" and entry["matrix"] == [48, 64]
    if pat.kind == "nm":
        assert entry["density"] == pytest.approx(1 - 0.5)
    else:
        r, c = pat.shape
        total = (48 // r) * (64 // c)
        assert entry["nnz_blocks"] == total - int(np.floor(ratio * total + 1e-9))


@pytest.mark.parametrize(
    ("name", "attrs", "batch", "block"),
    [
        ("1x1", {}, 2, "4x1"),
        ("1x1 stride 2", {"strides": [2, 2]}, 1, "none"),
        ("3x3 pad 1", {"pads": [1, 1, 1, 1]}, 2, "1x4"),
        ("3x3 dilation 2, asymmetric pads", {"pads": [2, 1, 0, 2], "dilations": [2, 2]}, 1, "8x1"),
    ],
)
def test_sparse_conv_matches_onnx_reference(name: str, attrs: dict, batch: int, block: str) -> None:
    """Convs rewritten to the sparse kernel (1×1 directly or after a strided slice; k×k stride 1
    on the flat padded input) equal onnx.reference with the same pruned weights (odd 9×11)."""
    k = 1 if name.startswith("1x1") else 3
    model = conv_model(16, 24, (9, 11), k, batch=batch, **attrs)
    mod = imported(model)
    out = apply(Sparsify(SparsifyConfig(ratio=0.8, block=block, lanes=16, choice="sparse")), mod)
    assert read_report(out)["layers"][0]["choice"] == "sparse"
    shape = parse_pattern(block).shape
    ref_model = pruned_onnx(model, {"w": lambda wm: block_mask(wm, shape, 0.8)})
    feeds = feeds_for(model)
    np.testing.assert_allclose(
        build_run(out, feeds), onnx_ref(ref_model, feeds), rtol=1e-4, atol=1e-4
    )


def test_zoo_model_with_recovery_matches_its_dense_form() -> None:
    """On the MLP zoo model, the sparse model equals onnx.reference of the ONNX model with the
    pass's own pruned (and re-fitted) weights written back: kernel choice never changes
    numerics. Recovery brings the output closer to the unpruned model on held-out data (mean
    absolute error 0.80 -> 0.64 at 70% 2x1 sparsity, 256 calibration rows)."""
    model, mod = zoo("mlp")
    calib = stacked_inputs(model, range(64))
    held = stacked_inputs(model, range(1000, 1004))
    base = {"ratio": 0.7, "block": "2x1", "lanes": 16}
    plain = apply(Sparsify(SparsifyConfig(**base, choice="dense")), mod)
    rec_cfg = SparsifyConfig(**base, choice="dense", recover=True, calibration=calib)
    recovered = apply(Sparsify(rec_cfg), mod)
    teacher = onnx_ref_batched(model, held)

    def err(m: tvm.IRModule) -> float:
        return float(np.abs(run(m, held)[0] - teacher).mean())

    assert err(recovered) < 0.85 * err(plain), (err(recovered), err(plain))  # seen 0.80 -> 0.64
    stats = [e["recover"] for e in read_report(recovered)["layers"]]
    assert all(s["error_after"] <= s["error_before"] for s in stats)
    # Recovered weights keep the mask: same zeros as the plain pruned weights.
    for a, b in zip(dense_weights(plain), dense_weights(recovered)):
        np.testing.assert_array_equal(a == 0, b == 0)
    # Sparse form of the recovered model == onnx.reference with those weights.
    sparse = apply(
        Sparsify(SparsifyConfig(**base, choice="sparse", recover=True, calibration=calib)), mod
    )
    assert len(read_report(sparse)["sparse_layers"]) == 3
    ref_model = write_back(model, dense_weights(recovered))
    feeds = feeds_for(model, seed=7)
    np.testing.assert_allclose(
        build_run(sparse, feeds), onnx_ref(ref_model, feeds), rtol=1e-4, atol=1e-4
    )


def onnx_ref_batched(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    ev = ReferenceEvaluator(model)
    n = next(iter(inputs.values())).shape[0]
    return np.stack([ev.run(None, {k: v[i] for k, v in inputs.items()})[0] for i in range(n)])


def dense_weights(mod: tvm.IRModule) -> list[np.ndarray]:
    """Constant weights of main's matmul calls, in order (Relax layout (K, N))."""
    out = []
    for b in bindings(main_function(mod)):
        if isinstance(b.value, relax.Call) and str(getattr(b.value.op, "name", "")) == (
            "relax.matmul"
        ):
            out.append(b.value.args[1].value.numpy())
    return out


def write_back(model: onnx.ModelProto, weights: list[np.ndarray]) -> onnx.ModelProto:
    """The zoo MLP with its three layer weights replaced (Relax (K, N) → ONNX layout)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    layers = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    for node, w in zip(layers, weights):
        trans = any(a.name == "transB" and a.i for a in node.attribute)
        arr = w.T if trans else w
        inits[node.input[1]].CopyFrom(
            numpy_helper.from_array(np.ascontiguousarray(arr), node.input[1])
        )
    return model


# --------------------------------------------------------------------------------------------
# Structure: the sparse kernel is in the built IR; slow cases stay dense


def test_lowered_module_contains_the_sparse_kernel() -> None:
    """After hwcc's lowering (legalize, fuse, default schedules) the BSR kernels are still
    there, untouched by the default rules (``tirx.is_scheduled``), called from main, and the
    dense matmul kernels of the sparse layers are gone."""
    model = matmul_model((128,), 256, 512)
    out = apply(Sparsify(SparsifyConfig(ratio=0.9, block="4x1", lanes=16)), imported(model))
    (entry,) = read_report(out)["layers"]
    assert entry["choice"] == "sparse", entry
    lowered, stats = lower.lower_cpu(out, HOST)
    kernels = sparse_kernels_in(lowered)
    assert len(kernels) == 1
    func = lowered[kernels[0]]
    assert bool(func.attrs["tirx.is_scheduled"])
    assert "bsr 4x1" in str(func.attrs[sk.KERNEL_ATTR])
    assert kernels[0] in lowered["main"].script()
    assert not any("matmul" in gv.name_hint for gv in lowered.get_global_vars())
    assert stats.unscheduled == []


def test_layer_where_sparse_is_slower_stays_dense() -> None:
    """Unstructured 50% sparsity: the cost model says the sparse kernel is slower, so the layer
    keeps its dense matmul (with the pruned weights) and no sparse kernel is emitted."""
    model = matmul_model((128,), 256, 512)
    out = apply(Sparsify(SparsifyConfig(ratio=0.5, block="none", lanes=16)), imported(model))
    (entry,) = read_report(out)["layers"]
    assert entry["choice"] == "dense"
    assert entry["speedup"] < 1.25 and "<" in entry["reason"]
    assert sparse_kernels_in(out) == []
    assert sparse_kernels_in(lower.lower_cpu(out, HOST)[0]) == []
    (w,) = dense_weights(out)
    assert (w == 0).mean() == pytest.approx(0.5, abs=1e-3)


def test_measure_mode_times_both_kernels() -> None:
    """With a timer handed in, the choice rests on timings of both kernels on this machine."""
    from compiler.lower.timing import time_module

    model = matmul_model((64,), 128, 256)
    out = apply(
        Sparsify(SparsifyConfig(ratio=0.95, block="8x1", lanes=16, measure=time_module)),
        imported(model),
    )
    (entry,) = read_report(out)["layers"]
    assert entry["measured_dense_ms"] > 0 and entry["measured_sparse_ms"] > 0
    assert entry["reason"].startswith("measured")
    assert (entry["choice"] == "sparse") == (entry["speedup"] >= 1.25)


def test_ratio_zero_is_a_no_op_and_report_lists_dynamic_weights() -> None:
    """ratio 0 returns the same main (plus the report); the transformer's attention matmuls
    (activation × activation) are reported as skipped with the reason."""
    _, mod = zoo("transformer_block")
    out = apply(Sparsify(SparsifyConfig(ratio=0.0)), mod)
    tvm.ir.assert_structural_equal(
        out["main"].without_attr("hwcc.sparsify"), mod["main"], map_free_vars=True
    )
    skipped = [e for e in read_report(out)["layers"] if e["choice"] == "skipped"]
    assert len(skipped) == 2 and all("dynamic" in e["reason"] for e in skipped)


def test_global_scope_and_layer_ratios() -> None:
    """Global scope removes ``ratio`` of all blocks together; a per-layer ratio overrides."""
    _, mod = zoo("mlp")
    out = apply(Sparsify(SparsifyConfig(ratio=0.8, scope="global", choice="dense")), mod)
    ws = dense_weights(out)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == int(np.floor(0.8 * sum(w.size for w in ws)))
    first = read_report(out)["layers"][0]["layer"]
    out = apply(Sparsify(SparsifyConfig(ratio=0.5, layer_ratios={first: 0.9})), mod)
    dens = {e["layer"]: e["density"] for e in read_report(out)["layers"]}
    assert dens[first] == pytest.approx(0.1, abs=1e-3)
    assert all(d == pytest.approx(0.5, abs=1e-3) for n, d in dens.items() if n != first)


def test_nm_patterns_keep_n_of_every_m() -> None:
    """2:4 and 1:4 keep exactly N of every M consecutive input weights of each output."""
    _, mod = zoo("mlp")
    for n_keep in (1, 2):
        out = apply(Sparsify(SparsifyConfig(ratio=0.5, block=f"{n_keep}:4", choice="dense")), mod)
        for w in dense_weights(out)[:2]:
            groups = (w.T != 0).reshape(w.shape[1], -1, 4).sum(axis=2)
            assert (groups == n_keep).all()


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": -0.1},
        {"ratio": 1.5},
        {"ratio": True},
        {"block": "4y1"},
        {"block": "0x4"},
        {"block": "4:4"},
        {"scope": "nowhere"},
        {"lanes": 0},
        {"recover": True},
        {"layer_ratios": {"lv1": 2.0}},
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SparsifyConfig(**kwargs)


def test_block_that_does_not_divide_is_skipped_or_refused() -> None:
    """The 27-input stem conv of concat_block cannot take 1x4 blocks: reported skip under a
    global ratio, a ConfigError when named explicitly; naming a dynamic-weight layer or an
    unknown layer is a ConfigError too."""
    _, mod = zoo("concat_block")
    out = apply(Sparsify(SparsifyConfig(ratio=0.9, block="1x4", choice="dense")), mod)
    skipped = [e for e in read_report(out)["layers"] if e["choice"] == "skipped"]
    assert len(skipped) == 1 and "does not divide" in skipped[0]["reason"]
    with pytest.raises(ConfigError, match="does not divide"):
        Sparsify(SparsifyConfig(block="1x4", layer_ratios={skipped[0]["layer"]: 0.5}))(mod)
    with pytest.raises(ConfigError, match="unknown layer"):
        Sparsify(SparsifyConfig(layer_ratios={"nope": 0.5}))(mod)
    _, tmod = zoo("transformer_block")
    dyn = [e for e in read_report(apply(Sparsify(), tmod))["layers"] if e["choice"] == "skipped"]
    with pytest.raises(ConfigError, match="dynamic"):
        Sparsify(SparsifyConfig(layer_ratios={dyn[0]["layer"]: 0.5}))(tmod)


def test_cli_helper_and_registration() -> None:
    """``sparsify_config_from_args`` maps the CLI flags; the pass is registered by name."""
    cfg = sparsify_config_from_args(0.9, "1x4", lanes=16)
    assert (cfg.ratio, cfg.block, cfg.lanes, cfg.recover) == (0.9, "1x4", 16, False)
    assert sparsify_config_from_args(0.5, "none").block == "none"
    assert sparsify_config_from_args(0.5, "2:4").pattern.kind == "nm"
    calib = {"input": np.zeros((1, 4, 64), np.float32)}
    assert sparsify_config_from_args(0.5, "4x1", calibration=calib).recover
    with pytest.raises(ConfigError):
        sparsify_config_from_args(1.2, "1x4")
    with pytest.raises(ConfigError):
        sparsify_config_from_args(0.5, "banana")
    assert isinstance(PASSES["sparsify"](cfg), Sparsify)


def test_tiny_cnn_whole_model_auto_choice() -> None:
    """Auto choice on a small CNN: every layer is either sparse or dense with a reason, and the
    whole compiled model matches onnx.reference with the same pruned weights."""
    rng = np.random.default_rng(3)
    model = tiny_cnn(
        rng.standard_normal((16, 8, 3, 3)),
        rng.standard_normal(16),
        rng.standard_normal((8, 16, 1, 1)),
    )
    mod = imported(model)
    out = apply(Sparsify(SparsifyConfig(ratio=0.9, block="4x1", lanes=16)), mod)
    entries = read_report(out)["layers"]
    assert {e["choice"] for e in entries} <= {"sparse", "dense"} and all(
        e["reason"] for e in entries
    )
    masks = {name: (lambda wm: block_mask(wm, (4, 1), 0.9)) for name in ("w1", "w2")}
    feeds = feeds_for(model)
    np.testing.assert_allclose(
        build_run(out, feeds), onnx_ref(pruned_onnx(model, masks), feeds), rtol=1e-4, atol=1e-4
    )
