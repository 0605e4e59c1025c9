"""Graph preparation before import: inline functions, expand function ops, fold constants.

TVM's importer needs static shapes and constant "shape" inputs (Reshape's shape, Expand's
shape, axes, pads, Range's bounds...); exporters often compute them at run time from
``Shape`` chains. :func:`prepare` turns such subgraphs into initializers, once input shapes
are pinned and shapes inferred:

1. **inline** model-local functions (``onnx.inliner``);
2. **expand** ops TVM cannot import (or imports wrongly) into their ONNX function bodies
   (``onnx.defs`` schemas), exactly as the standard defines them;
3. **fold**: ``Shape``/``Size`` of statically shaped values become constants, and every
   deterministic node whose inputs are all constants is evaluated once with
   ``onnx.reference.ReferenceEvaluator`` (the reference semantics, by construction;
   float -> integer casts as :mod:`compiler.frontend.int_casts` defines them, and a
   QuantizeLinear whose numpy conversion would meet NaN or an out-of-range value is left to
   the compiled kernel);
4. **sequences** whose structure is static become lists of tensors
   (:mod:`compiler.frontend.sequences`);
5. drop nodes nothing uses, infer shapes again; repeat until nothing changes.

Every step is an exact transformation of the graph: the result computes what the original
computes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import UnsupportedOpError

from . import int_casts
from .graph import all_inputs, static_shape, value_types  # noqa: F401 - re-exported
from .rewrites import apply_rewrites
from .sequences import eliminate_sequences

logger = logging.getLogger(__name__)

#: Ops never folded: random, control flow, sequences (their values are not plain tensors).
NOT_FOLDABLE = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
    "Multinomial", "If", "Loop", "Scan", "SequenceMap", "Optional", "OptionalGetElement",
    "OptionalHasElement", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
    "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
    "ImageDecoder",
})
#: Folded outputs larger than this (elements) stay computed at run time.
MAX_FOLD_ELEMENTS = 1 << 22

#: Ops that TVM imports without error but computes wrongly in some cases, expanded into their
#: function bodies whenever the schema has one (see
#: tests/compiler/frontend/test_frontend_conformance).
EXPAND_ALWAYS: frozenset[str] = frozenset({
    "Attention",  # TVM's converter is com.microsoft's Attention (needs num_heads), not ONNX's
})


_T = onnx.TensorProto
#: Element types TVM cannot hold. (float8, float4, int4 and int2 are carried as uint8 storage
#: by compiler/onnx_narrow_types.py, which refuses the nodes it cannot lower.)
UNSUPPORTED_DTYPES = {
    _T.STRING: "string", _T.COMPLEX64: "complex64", _T.COMPLEX128: "complex128",
    **{getattr(_T, n): n.lower() for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(_T, n)},
}


def check_dtypes(model: onnx.ModelProto) -> None:
    """Refuse, naming the node, a graph that computes with an element type TVM lacks.

    Raises
    ------
    UnsupportedOpError
        For the first node that reads or writes a value of such a type.
    """
    for out in model.graph.output:
        kind = out.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            producer = next((n for n in model.graph.node if out.name in n.output), None)
            raise UnsupportedOpError(producer.op_type if producer else "<graph output>",
                                     producer.name if producer else out.name,
                                     _default_opset(model),
                                     f"output '{out.name}' is a {kind.replace('_type', '')}; "
                                     "only tensor outputs are supported")
    bad: dict[str, str] = {}
    for name, tp in value_types(model).items():
        if tp.WhichOneof("value") == "tensor_type" and \
                tp.tensor_type.elem_type in UNSUPPORTED_DTYPES:
            bad[name] = UNSUPPORTED_DTYPES[tp.tensor_type.elem_type]
    if not bad:
        return
    for node in model.graph.node:
        hit = next((v for v in list(node.output) + list(node.input) if v in bad), None)
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if hit is None and to in UNSUPPORTED_DTYPES:
            hit, bad[""] = "", UNSUPPORTED_DTYPES[to]
        if hit is not None:
            raise UnsupportedOpError(node.op_type, node.name, _default_opset(model),
                                     f"element type {bad[hit]} is not supported")
    name = next(iter(bad))
    raise UnsupportedOpError("<graph input>", name, _default_opset(model),
                             f"element type {bad[name]} is not supported")


#: Ops left to their own rewrites (compiler/onnx_qop.py, the int8 work): never expanded here.
NEVER_EXPAND = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def _default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _tvm_ops() -> frozenset[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map()) | {"If", "Constant"}


# ----------------------------------------------------------------------------------------
# types of values
# ----------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------
# function expansion
# ----------------------------------------------------------------------------------------
def function_body(node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]
                  ) -> onnx.FunctionProto | None:
    """The ONNX function body of ``node`` at ``opset`` (None if its schema has none)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None
    versions = [v for v in schema.function_opset_versions if v <= opset]
    fp = onnx.FunctionProto()
    if versions:
        fp.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    else:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not versions:
            return None
        in_types = []
        for name in node.input:
            tp = types.get(name) if name else None
            if name and tp is None:
                return None  # a context-dependent body needs every input's type
            in_types.append((tp or onnx.TypeProto()).SerializeToString())
        data = schema.get_context_dependent_function_with_opset_version(
            max(versions), node.SerializeToString(), in_types)
        if not data:
            return None
        fp.ParseFromString(data)
    return fp if len(fp.node) else None


def _same_semantics(fp: onnx.FunctionProto, opset: int) -> bool:
    """Whether every op of ``fp`` means the same at the model's opset as at the body's."""
    body_opset = next((o.version for o in fp.opset_import if o.domain in ("", "ai.onnx")),
                      opset)
    if body_opset == opset:
        return True
    for n in fp.node:
        if n.domain not in ("", "ai.onnx"):
            return False
        try:
            a = onnx.defs.get_schema(n.op_type, opset, "").since_version
            b = onnx.defs.get_schema(n.op_type, body_opset, "").since_version
        except onnx.defs.SchemaError:
            return False
        if a != b:
            return False
    return True


def _schema_defaults(node: onnx.NodeProto, opset: int) -> dict[str, onnx.AttributeProto]:
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    out = {}
    for name, attr in schema.attributes.items():
        if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            out[name] = attr.default_value
    return out


def inline_call(node: onnx.NodeProto, fp: onnx.FunctionProto, opset: int, prefix: str
                ) -> list[onnx.NodeProto] | None:
    """The nodes of ``fp`` with its formal inputs/outputs bound to ``node``'s, attributes
    substituted and internal names made unique with ``prefix`` (None if it cannot)."""
    rename: dict[str, str] = {"": ""}
    for formal, actual in zip(fp.input, node.input):
        rename[formal] = actual
    for formal in fp.input[len(node.input):]:
        rename[formal] = ""  # omitted optional input
    for formal, actual in zip(fp.output, node.output):
        rename[formal] = actual if actual else f"{prefix}{formal}"
    attrs = {**_schema_defaults(node, opset), **{a.name: a for a in node.attribute}}
    for a in fp.attribute_proto:
        attrs.setdefault(a.name, a)
    out = []
    for inner in fp.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in inner.attribute):
            return None
        new = onnx.NodeProto()
        new.CopyFrom(inner)
        new.name = f"{prefix}{inner.name or inner.op_type}"
        for i, v in enumerate(inner.input):
            new.input[i] = rename.setdefault(v, f"{prefix}{v}")
        for i, v in enumerate(inner.output):
            new.output[i] = rename.setdefault(v, f"{prefix}{v}")
        del new.attribute[:]
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name not in attrs:
                    continue  # an optional attribute the caller left out
                ref = onnx.AttributeProto()
                ref.CopyFrom(attrs[a.ref_attr_name])
                ref.name = a.name
                new.attribute.append(ref)
            else:
                new.attribute.append(a)
        out.append(new)
    return out


def expand_functions(model: onnx.ModelProto, ops: Iterable[str] | None = None
                     ) -> tuple[onnx.ModelProto, int]:
    """Replace nodes of ``ops`` (default: ops TVM has no converter for, plus
    :data:`EXPAND_ALWAYS`) by their function bodies. Returns the model and the count."""
    opset = _default_opset(model)
    if ops is None:
        tvm_ops = _tvm_ops()
        wanted = None
    else:
        tvm_ops = frozenset()
        wanted = set(ops)
    types = value_types(model)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for i, node in enumerate(model.graph.node):
        dom_ok = node.domain in ("", "ai.onnx") and node.op_type not in NEVER_EXPAND
        want = dom_ok and (node.op_type in wanted if wanted is not None else
                           (node.op_type not in tvm_ops or node.op_type in EXPAND_ALWAYS))
        body = function_body(node, opset, types) if want else None
        nodes = None
        if body is not None and _same_semantics(body, opset):
            nodes = inline_call(node, body, opset, f"{node.name or node.op_type}__fn{i}_")
        if nodes is None:
            new_nodes.append(node)
            continue
        logger.info("expanded %s node '%s' into %d nodes (its ONNX function body)",
                    node.op_type, node.name, len(nodes))
        new_nodes.extend(nodes)
        count += 1
    if not count:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return out, count


# ----------------------------------------------------------------------------------------
# constant folding
# ----------------------------------------------------------------------------------------
def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    try:
        value = ReferenceEvaluator(node).run(None, {})[0]
    except Exception:  # noqa: BLE001 - a sparse or odd Constant stays as it is
        return None
    return value if isinstance(value, np.ndarray) else None


#: Ops whose reference converts floats to integers with numpy's ``astype``: folded only when
#: no value is out of range or NaN (numpy's answer then depends on the CPU; the compiled
#: kernel's does not, see :mod:`compiler.frontend.int_casts`).
_NUMPY_CONVERTS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})


def _float_to_int_cast(node: onnx.NodeProto, args: dict[str, np.ndarray]
                       ) -> list[np.ndarray] | None:
    """A Cast/CastLike of a float constant to an integer type, folded as hwcc defines it
    (:func:`compiler.frontend.int_casts.cast_numpy`), not as numpy does on this CPU."""
    if node.op_type not in ("Cast", "CastLike") or not node.input or node.input[0] not in args:
        return None
    x = args[node.input[0]]
    if node.op_type == "Cast":
        to = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)
        try:
            to = str(np.dtype(helper.tensor_dtype_to_np_dtype(int(to))))
        except (TypeError, ValueError, KeyError):
            return None
    else:
        to = str(args[node.input[1]].dtype) if len(node.input) > 1 else None
    if str(x.dtype) not in int_casts.FLOAT_DTYPES or to not in int_casts.INT_DTYPES:
        return None
    return [int_casts.cast_numpy(x, to)]


def _evaluate(node: onnx.NodeProto, args: dict[str, np.ndarray], opsets: dict[str, int]
              ) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    cast = _float_to_int_cast(node, args)
    if cast is not None:
        return cast
    try:
        if node.op_type in _NUMPY_CONVERTS:  # NaN / out of range: FloatingPointError
            with np.errstate(invalid="raise"):
                outs = ReferenceEvaluator(node, opsets=opsets).run(None, args)
        else:
            outs = ReferenceEvaluator(node, opsets=opsets).run(None, args)
    except Exception as err:  # noqa: BLE001 - leave what the reference cannot evaluate
        logger.debug("not folding %s '%s': %s", node.op_type, node.name, err)
        return None
    result = []
    for o in outs:
        if not isinstance(o, np.ndarray) or o.dtype == object:
            return None
        result.append(o)
    return result


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Evaluate every node whose value does not depend on the graph's inputs.

    Returns the model (initializers in place of folded nodes) and the number folded.
    """
    g = model.graph
    opsets = {o.domain or "": int(o.version) for o in model.opset_import}
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    graph_inputs = {v.name for v in g.input} - set(consts)
    consts = {k: v for k, v in consts.items() if k not in graph_inputs}
    types = value_types(model)
    outputs = {o.name for o in g.output}
    kept: list[onnx.NodeProto] = []
    folded: dict[str, np.ndarray] = {}
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in NOT_FOLDABLE or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute):
            kept.append(node)
            continue
        values: list[np.ndarray] | None = None
        if node.op_type == "Constant":
            v = _constant_value(node)
            values = None if v is None else [v]
        elif node.op_type in ("Shape", "Size") and node.input[0] not in consts:
            shape = static_shape(types.get(node.input[0]))
            if shape is not None:
                v = np.array(shape, np.int64) if node.op_type == "Shape" else \
                    np.array(int(np.prod(shape)), np.int64)
                if node.op_type == "Shape":
                    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                    rank = len(shape)
                    start = attrs.get("start", 0)
                    end = attrs.get("end", rank)
                    v = v[slice(start, end)]
                values = [v]
        elif all(not name or name in consts for name in node.input):
            values = _evaluate(node, {n: consts[n] for n in node.input if n}, opsets)
        if values is None or len(values) < len([o for o in node.output if o]) or any(
                v.size > MAX_FOLD_ELEMENTS for v in values):
            kept.append(node)
            continue
        for name, v in zip(node.output, values):
            if name:
                consts[name] = v
                folded[name] = v
    if not folded:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    used = {i for n in kept for i in all_inputs(n)} | outputs
    for name, v in folded.items():
        if name in used:
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    n_folded = len(g.node) - len(kept)
    return out, n_folded


def remove_dead(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Drop nodes and initializers that no graph output depends on."""
    g = model.graph
    live = {o.name for o in g.output}
    keep_rev = []
    for node in reversed(g.node):
        if any(o and o in live for o in node.output):
            keep_rev.append(node)
            live |= all_inputs(node)
    removed = len(g.node) - len(keep_rev)
    inits = [t for t in g.initializer if t.name in live]
    if not removed and len(inits) == len(g.initializer):
        return model, 0
    dropped = {t.name for t in g.initializer} - {t.name for t in inits}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep_rev))
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    # an initializer listed as a graph input (a default value) goes with its input entry
    kept_inputs = [v for v in g.input if v.name not in dropped]
    del out.graph.input[:]
    out.graph.input.extend(kept_inputs)
    return out, removed


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with data propagation; stale intermediate shapes are dropped first."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 - e.g. an exporter's stale output type: infer around it
        for out in bare.graph.output:
            out.type.tensor_type.ClearField("shape")
        return onnx.shape_inference.infer_shapes(bare, data_prop=True)


# ----------------------------------------------------------------------------------------
# the whole preparation
# ----------------------------------------------------------------------------------------
def prepare(model: onnx.ModelProto, max_rounds: int = 8) -> onnx.ModelProto:
    """Inline, expand, fold and clean ``model`` (input shapes already pinned and inferred).

    Raises whatever shape inference raises on an inconsistent graph; the caller reports it.
    """
    check_dtypes(model)
    if len(model.functions):
        model = onnx.inliner.inline_local_functions(model)
        model = infer(model)
    for _ in range(max_rounds):
        model, n_fold = fold_constants(model)
        model, n_dead = remove_dead(model)
        model, n_seq = eliminate_sequences(model)  # positions are constant once folded
        if n_fold or n_dead or n_seq:
            model = infer(model)
        rewritten = apply_rewrites(model)
        n_rw = rewritten is not model
        model, n_exp = expand_functions(rewritten)
        changed = bool(n_exp or n_rw)
        if changed:
            model = infer(model)
        logger.debug("prepare round: folded %d, removed %d, expanded %d", n_fold, n_dead, n_exp)
        if not (n_fold or n_dead or n_seq or changed):
            break
    eliminate_sequences(model, strict=True)  # refuses a sequence that is still not static
    check_runtime_shapes(model)
    return model


def check_runtime_shapes(model: onnx.ModelProto) -> None:
    """Refuse an Expand whose target shape is still computed at run time after folding.

    TVM then broadcasts to the shape's values literally: a 1 that ONNX reads as "keep this
    dimension" gives a wrong output shape, with no error.

    Raises
    ------
    UnsupportedOpError
        Naming the Expand node.
    """
    consts = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Expand" and node.input[1] not in consts:
            raise UnsupportedOpError(
                "Expand", node.name, _default_opset(model),
                f"its shape '{node.input[1]}' is computed at run time; pin the input shapes "
                "so that it folds to a constant (TVM mis-broadcasts run-time shapes)")
