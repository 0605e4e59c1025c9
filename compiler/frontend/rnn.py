"""LSTM, GRU and RNN as exact ONNX decompositions, unrolled over the (static) sequence length.

TVM's ONNX importer has no converter for the recurrent ops. Once input shapes are pinned, the
sequence length is a number, so each op becomes, per direction: one MatMul of the whole input
sequence with W (plus both biases), then per time step a MatMul with R, the gate
activations, the state update and, when ``sequence_lens`` is given, a ``Where`` that keeps the
state of finished sequences and writes zeros to their outputs (this also gives the right
result for the reverse direction). All ONNX attributes are honoured: ``direction``,
``layout``, ``activations`` with ``activation_alpha``/``activation_beta``, ``clip``,
``input_forget`` (LSTM), peepholes ``P`` (LSTM), ``linear_before_reset`` (GRU).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import NameGen

logger = logging.getLogger(__name__)

#: Default activations per op (one list per direction).
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "RNN": ["Tanh"]}
#: Gates per op, in the order of W's rows.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Activations ONNX allows in recurrent ops, with their default (alpha, beta).
ACTIVATION_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "Relu": (None, None), "Tanh": (None, None), "Sigmoid": (None, None),
    "Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None),
    "Softsign": (None, None), "Softplus": (None, None),
}


class _Emitter:
    """Appends nodes and initializers, with forms that fit the model's opset."""

    def __init__(self, names: NameGen, prefix: str, opset: int, dtype: np.dtype) -> None:
        self.names, self.prefix, self.opset, self.dtype = names, prefix, opset, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def fresh(self, hint: str) -> str:
        return self.names(f"{self.prefix}_{hint}")

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float, hint: str = "s") -> str:
        return self.const(np.array(value, dtype=self.dtype), hint)

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1,
           **attrs) -> list[str]:
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        return self.op(op_type, inputs, hint, 1, **attrs)[0]

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.one("Unsqueeze", [x, self.const(np.array(axes, np.int64), "axes")])
        return self.one("Unsqueeze", [x], axes=axes)

    def split(self, x: str, parts: int, size: int, axis: int) -> list[str]:
        if parts == 1:
            return [x]
        sizes = [size] * parts
        if self.opset >= 13:
            return self.op("Split", [x, self.const(np.array(sizes, np.int64), "split")],
                           "gate", parts, axis=axis)
        return self.op("Split", [x], "gate", parts, axis=axis, split=sizes)

    def clip(self, x: str, bound: float | None) -> str:
        if bound is None:
            return x
        if self.opset >= 11:
            return self.one("Clip", [x, self.scalar(-bound), self.scalar(bound)])
        return self.one("Clip", [x], min=-bound, max=bound)

    def activation(self, x: str, name: str, alpha: float | None, beta: float | None) -> str:
        if name in ("Relu", "Tanh", "Sigmoid", "Softsign", "Softplus"):
            return self.one(name, [x])
        if name == "Affine":
            return self.one("Add", [self.one("Mul", [x, self.scalar(alpha)]),
                                    self.scalar(beta)])
        if name == "ScaledTanh":
            inner = self.one("Tanh", [self.one("Mul", [x, self.scalar(beta)])])
            return self.one("Mul", [inner, self.scalar(alpha)])
        if name == "HardSigmoid":
            return self.one("HardSigmoid", [x], alpha=alpha, beta=beta)
        return self.one(name, [x], alpha=alpha)  # LeakyRelu, ThresholdedRelu, Elu


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    types = {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    for t in g.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types


def _shape(tp: onnx.TypeProto | None) -> tuple[int, ...] | None:
    if tp is None or not tp.tensor_type.HasField("shape"):
        return None
    dims = tp.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _activations(node_op: str, attrs: dict, num_dir: int
                 ) -> list[list[tuple[str, float | None, float | None]]] | None:
    per_dir = len(DEFAULT_ACTIVATIONS[node_op])
    names = [a.decode() if isinstance(a, bytes) else a
             for a in attrs.get("activations", DEFAULT_ACTIVATIONS[node_op] * num_dir)]
    if len(names) != per_dir * num_dir:
        return None
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    acts = []
    for i, raw in enumerate(names):
        name = next((k for k in ACTIVATION_DEFAULTS if k.lower() == raw.lower()), None)
        if name is None:
            return None
        da, db = ACTIVATION_DEFAULTS[name]
        alpha = alphas[i] if i < len(alphas) else da
        beta = betas[i] if i < len(betas) else db
        acts.append((name, alpha, beta))
    return [acts[d * per_dir:(d + 1) * per_dir] for d in range(num_dir)]


def recurrent(node: onnx.NodeProto, model: onnx.ModelProto, names: NameGen):
    """Unroll an LSTM / GRU / RNN node; None (left alone) when a shape is unknown."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    num_dir = 2 if direction == "bidirectional" else 1
    layout = int(attrs.get("layout", 0))
    types = _types(model)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x_shape = _shape(types.get(inputs[0]))
    w_shape = _shape(types.get(inputs[1]))
    acts = _activations(op, attrs, num_dir)
    if x_shape is None or w_shape is None or len(x_shape) != 3 or acts is None:
        return None
    gates = GATES[op]
    hidden = int(attrs.get("hidden_size", w_shape[1] // gates))
    seq, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    elem = types[inputs[0]].tensor_type.elem_type
    e = _Emitter(names, node.name or op.lower(), _opset(model),
                 helper.tensor_dtype_to_np_dtype(elem))
    clip = attrs.get("clip")
    clip = float(clip) if clip is not None else None

    x = inputs[0]
    if layout:
        x = e.one("Transpose", [x], perm=[1, 0, 2])
    seq_lens = inputs[4]
    masks = None
    if seq_lens:
        t_idx = [e.const(np.array([t], np.int32), "t") for t in range(seq)]
        lens = seq_lens
        if types.get(seq_lens) is not None and \
                types[seq_lens].tensor_type.elem_type != onnx.TensorProto.INT32:
            lens = e.one("Cast", [seq_lens], to=onnx.TensorProto.INT32)
        # [batch, 1] bool: is step t inside sequence b
        masks = [e.unsqueeze(e.one("Less", [t_idx[t], lens], "mask"), [1]) for t in range(seq)]
    zeros = e.const(np.zeros((batch, hidden), e.dtype), "zeros")

    ys, y_hs, y_cs = [], [], []
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        idx = e.const(np.array(d, np.int64), "dir")
        w = e.one("Gather", [inputs[1], idx], axis=0)                # [G*H, I]
        r = e.one("Gather", [inputs[2], idx], axis=0)                # [G*H, H]
        xw = e.one("MatMul", [x, e.one("Transpose", [w], perm=[1, 0])])  # [S, B, G*H]
        rt = e.one("Transpose", [r], perm=[1, 0])
        rbs = None
        if inputs[3]:
            b = e.one("Gather", [inputs[3], idx], axis=0)            # [2*G*H]
            wb, rb = e.split(b, 2, gates * hidden, 0)
            if op == "GRU" and attrs.get("linear_before_reset", 0):
                # Rb_h stays inside r (.) (H R_h^T + Rb_h); the other biases fold into xw
                rbz, rbr, rbh = e.split(rb, 3, hidden, 0)
                xw = e.one("Add", [xw, e.one("Add", [wb, e.one(
                    "Concat", [rbz, rbr, e.const(np.zeros(hidden, e.dtype))], axis=0)])])
                rbs = rbh
            else:
                xw = e.one("Add", [xw, e.one("Add", [wb, rb])])
        peep = None
        if op == "LSTM" and inputs[7]:
            p = e.one("Gather", [inputs[7], idx], axis=0)
            peep = e.split(p, 3, hidden, 0)                            # Pi, Po, Pf
        h = e.one("Gather", [inputs[5], idx], axis=0) if inputs[5] else zeros
        c = None
        if op == "LSTM":
            c = e.one("Gather", [inputs[6], idx], axis=0) if inputs[6] else zeros
        steps = range(seq - 1, -1, -1) if reverse else range(seq)
        f, g, hh = (acts[d] + [None, None])[:3]
        y_t: dict[int, str] = {}
        for t in steps:
            xt = e.one("Gather", [xw, e.const(np.array(t, np.int64), "t")], axis=0)
            if op == "LSTM":
                pre = e.one("Add", [xt, e.one("MatMul", [h, rt])])
                gi, go, gf, gc = e.split(pre, 4, hidden, 1)
                if peep is not None:
                    gi = e.one("Add", [gi, e.one("Mul", [peep[0], c])])
                    gf = e.one("Add", [gf, e.one("Mul", [peep[2], c])])
                i_t = e.activation(e.clip(gi, clip), *f)
                if attrs.get("input_forget", 0):
                    f_t = e.one("Sub", [e.scalar(1.0), i_t])
                else:
                    f_t = e.activation(e.clip(gf, clip), *f)
                c_hat = e.activation(e.clip(gc, clip), *g)
                c_new = e.one("Add", [e.one("Mul", [f_t, c]), e.one("Mul", [i_t, c_hat])])
                if peep is not None:
                    go = e.one("Add", [go, e.one("Mul", [peep[1], c_new])])
                o_t = e.activation(e.clip(go, clip), *f)
                h_new = e.one("Mul", [o_t, e.activation(c_new, *hh)])
            elif op == "GRU":
                xz, xr, xh = e.split(xt, 3, hidden, 1)
                rz, rr, rh = e.split(rt, 3, hidden, 1)
                z_t = e.activation(e.clip(e.one("Add", [xz, e.one("MatMul", [h, rz])]), clip),
                                   *f)
                r_t = e.activation(e.clip(e.one("Add", [xr, e.one("MatMul", [h, rr])]), clip),
                                   *f)
                if attrs.get("linear_before_reset", 0):
                    hr = e.one("MatMul", [h, rh])
                    if rbs is not None:
                        hr = e.one("Add", [hr, rbs])
                    pre_h = e.one("Add", [xh, e.one("Mul", [r_t, hr])])
                else:
                    pre_h = e.one("Add", [xh, e.one("MatMul", [e.one("Mul", [r_t, h]), rh])])
                h_hat = e.activation(e.clip(pre_h, clip), *g)
                one_minus_z = e.one("Sub", [e.scalar(1.0), z_t])
                h_new = e.one("Add", [e.one("Mul", [one_minus_z, h_hat]),
                                      e.one("Mul", [z_t, h])])
                c_new = None
            else:
                pre = e.one("Add", [xt, e.one("MatMul", [h, rt])])
                h_new = e.activation(e.clip(pre, clip), *f)
                c_new = None
            if masks is not None:
                y_t[t] = e.one("Where", [masks[t], h_new, zeros])
                h = e.one("Where", [masks[t], h_new, h])
                if c_new is not None:
                    c = e.one("Where", [masks[t], c_new, c])
            else:
                y_t[t] = h = h_new
                c = c_new if c_new is not None else c
        seq_out = [e.unsqueeze(y_t[t], [0, 1]) for t in range(seq)]     # [1, 1, B, H]
        ys.append(e.one("Concat", seq_out, axis=0) if seq > 1 else seq_out[0])
        y_hs.append(e.unsqueeze(h, [0]))
        if c is not None:
            y_cs.append(e.unsqueeze(c, [0]))

    outs = list(node.output) + [""] * 3
    finals = [
        (outs[0], ys, 1, [2, 0, 1, 3]),
        (outs[1], y_hs, 0, [1, 0, 2]),
        (outs[2] if op == "LSTM" else "", y_cs, 0, [1, 0, 2]),
    ]
    for name, parts, axis, perm in finals:
        if not name:
            continue
        val = e.one("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
        e.nodes.append(helper.make_node("Transpose", [val], [name], perm=perm) if layout
                       else helper.make_node("Identity", [val], [name]))
    logger.info("unrolled %s node '%s': %d steps x %d directions", op, node.name, seq, num_dir)
    return e.nodes, e.inits
