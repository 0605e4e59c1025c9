"""Helpers shared by the canonicalize / channel-groups / pruning / recovery tests."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from passes._ir import bindings, const_array, is_const, main_function, op_name
from passes.canonicalize import Canonicalize
from tests.models import get_model, random_inputs


def well_formed(mod: tvm.IRModule) -> tvm.IRModule:
    """Raise if ``mod`` is not well formed; return it (to wrap pass calls)."""
    relax.analysis.well_formed(mod)
    return mod


def apply(pass_obj: tvm.transform.Pass, mod: tvm.IRModule) -> tvm.IRModule:
    """Run a pass with a well-formedness check before and after."""
    return well_formed(pass_obj(well_formed(mod)))


def imported(model: onnx.ModelProto) -> tvm.IRModule:
    """The model as hwcc imports it (weights bound as constants)."""
    return from_onnx(model, keep_params_in_input=False)


@functools.cache
def zoo(name: str) -> tuple[onnx.ModelProto, tvm.IRModule]:
    """A zoo model and its canonicalized Relax module (cached across tests)."""
    model = get_model(name)
    return model, apply(Canonicalize(), imported(model))


def stacked_inputs(model: onnx.ModelProto, seeds: range) -> dict[str, np.ndarray]:
    """Calibration data: one random input set per seed, stacked on a leading sample axis."""
    sets = [random_inputs(model, s) for s in seeds]
    return {k: np.stack([s[k] for s in sets]) for k in sets[0]}


def onnx_reference(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """First output of ``model`` on each sample, by ``onnx.reference`` (independent of TVM)."""
    ev = ReferenceEvaluator(model)
    n = next(iter(inputs.values())).shape[0]
    return np.stack([ev.run(None, {k: v[i] for k, v in inputs.items()})[0] for i in range(n)])


def weights_by_binding(mod: tvm.IRModule) -> dict[str, np.ndarray]:
    """Binding name -> constant weight (arg 1) of every conv2d / matmul / add with a constant."""
    out = {}
    for b in bindings(main_function(mod)):
        if isinstance(b.value, relax.Call) and len(b.value.args) > 1 and is_const(b.value.args[1]):
            out[b.var.name] = const_array(b.value.args[1])
    return out


def layer_order(mod: tvm.IRModule) -> tuple[list[str], list[str]]:
    """Binding names of conv2d and of constant-weight matmul calls, in graph order."""
    convs, mms = [], []
    for b in bindings(main_function(mod)):
        name = op_name(b.value)
        if name == "relax.nn.conv2d":
            convs.append(b.var.name)
        elif name == "relax.matmul" and is_const(b.value.args[1]):
            mms.append(b.var.name)
    return convs, mms


def zero_consumer_inputs(
    model: onnx.ModelProto, mod: tvm.IRModule, cuts: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """The ONNX model with input channels ``cuts[binding]`` of consumer layers zeroed.

    Pruning a closed channel group changes the output exactly like zeroing the group's
    channels in every consumer's weights, so this gives an independent reference for a pruned
    model. Relax layers map to ONNX nodes by order (Conv <-> conv2d, MatMul/Gemm with an
    initializer weight <-> matmul with a constant weight).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    mms = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    r_convs, r_mms = layer_order(mod)
    assert len(convs) == len(r_convs) and len(mms) == len(r_mms)
    for binding, idx in cuts.items():
        if binding in r_convs:
            node, axis = convs[r_convs.index(binding)], 1
        else:
            node = mms[r_mms.index(binding)]
            trans = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            axis = 1 if node.op_type == "Gemm" and trans else 0
        init = inits[node.input[1]]
        w = numpy_helper.to_array(init).copy()
        sl = [slice(None)] * w.ndim
        sl[axis] = np.asarray(idx, dtype=np.int64)
        w[tuple(sl)] = 0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    return model


def tiny_cnn(
    weights: np.ndarray, bias: np.ndarray, w2: np.ndarray, group: int = 1
) -> onnx.ModelProto:
    """input (1, C, 6, 6) -> Conv(weights, bias) -> Relu -> Conv(w2) -> output."""
    cin = weights.shape[1] * group
    inits = [
        numpy_helper.from_array(weights.astype(np.float32), "w1"),
        numpy_helper.from_array(bias.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=group),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, w2.shape[0], 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
