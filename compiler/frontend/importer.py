"""ONNX → Relax import with checks and readable errors.

:func:`load_model` accepts a path or an ``onnx.ModelProto``, validates it (ONNX checker, shape
inference), pins input shapes, and imports it with ``tvm.relax.frontend.onnx.from_onnx`` with
the weights bound as constants. Every failure is an :class:`~compiler.errors.HwccError` whose
message names the file, the op type, the node and the opset, as relevant.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.artifact.tensors import TensorSpec
from compiler.errors import HwccError, InputShapeError, ModelLoadError, UnsupportedOpError

from . import int_casts
from . import narrow_types as narrow
from .converters import CONVERTERS
from .guards import check_consistency
from .prep import prepare

logger = logging.getLogger(__name__)

ModelLike = "str | Path | onnx.ModelProto"


@dataclass
class ImportedModel:
    """A model imported into Relax, with what the rest of the flow needs to know about it."""

    mod: Any  # tvm.IRModule; typed loosely so that importing this module stays cheap
    onnx_model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    source: str


def _onnx_dtype(elem_type: int) -> str:
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return f"onnx-type-{elem_type}"


def read_model(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read an ONNX model from a path (external data included) or take a ModelProto as is."""
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>"
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"expected an ONNX file, got a directory: {path}")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"not an ONNX model (cannot parse protobuf): {path}: "
                             f"{type(err).__name__}") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"not an ONNX model (no graph found): {path}")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as err:
        raise ModelLoadError(f"cannot load external weights of {path}: {err}") from None
    return proto, str(path)


def model_opset(model: onnx.ModelProto) -> int:
    for ident in model.opset_import:
        if ident.domain in ("", "ai.onnx"):
            return int(ident.version)
    return 1


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers with a default value)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    if not vi.type.HasField("tensor_type"):
        raise ModelLoadError(f"input '{vi.name}' is not a tensor; only tensor inputs are supported")
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for axis, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value < 0:
            raise ModelLoadError(
                f"graph input '{vi.name}' has dimension {d.dim_value} at axis {axis}; an ONNX "
                "dimension is a size >= 0 or a named symbol")
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1,3,224,224`` strings (the CLI's ``--input-shape``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name:
            raise InputShapeError(f"malformed --input-shape '{spec}'; expected NAME=D1,D2,...")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise InputShapeError(f"malformed --input-shape '{spec}'; dims must be integers") from None
        if any(d <= 0 for d in shape):
            raise InputShapeError(f"--input-shape '{spec}': dims must be positive")
        shapes[name] = shape
    return shapes


def resolve_input_specs(model: onnx.ModelProto,
                        input_shapes: Mapping[str, Sequence[int]] | None) -> list[TensorSpec]:
    """Static input specs, from the model or the user's pinned shapes.

    Raises
    ------
    InputShapeError
        When a dimension is dynamic and not pinned, a pinned shape contradicts a static one or
        has the wrong rank, or a pinned name is not an input of the model.
    """
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    inputs = graph_inputs(model)
    names = [v.name for v in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputShapeError(f"--input-shape names {unknown} are not inputs of the model; "
                              f"inputs: {names}")
    specs = []
    for vi in inputs:
        dims = _dims(vi)
        dtype = _onnx_dtype(vi.type.tensor_type.elem_type)
        if vi.name in given:
            shape = given[vi.name]
            if dims and len(dims) != len(shape):
                raise InputShapeError(
                    f"input '{vi.name}' has rank {len(dims)} ({_fmt(dims)}); "
                    f"--input-shape gave rank {len(shape)} ({_fmt(shape)})")
            for want, got in zip(dims, shape):
                if isinstance(want, int) and want != got:
                    raise InputShapeError(
                            f"input '{vi.name}' has shape {_fmt(dims)} (its static dims are fixed); "
                        f"--input-shape gave {_fmt(shape)}")
        else:
            if any(not isinstance(d, int) for d in dims):
                example = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
                raise InputShapeError(
                    f"input '{vi.name}' has dynamic shape {_fmt(dims)}; pin it with "
                    f"--input-shape {vi.name}={example} (API: input_shapes={{'{vi.name}': ...}})")
            shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        specs.append(TensorSpec(vi.name, shape, dtype))
    return specs


def _fmt(dims: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _pin_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> onnx.ModelProto:
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for vi in pinned.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in spec.shape:
            shape.dim.add().dim_value = d
    return pinned


#: Longest error detail quoted from ONNX or TVM (their messages can hold whole graphs).
MAX_DETAIL = 600


def one_line(err: BaseException) -> str:
    """An exception's message on one line: ONNX's checker puts the node's name and op type on
    the lines after the first ("... input 'x' of node: \\nname: conv1 OpType: Conv\\n is not
    ..."), so the lines are joined, not cut."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def check_model(proto: onnx.ModelProto, source: str) -> None:
    """The ONNX checker with ``full_check`` (structure, then strict shape inference).

    An exporter's stale intermediate shapes that contradict inference are dropped and the
    model checked again (onnxruntime merges them leniently too).

    Raises
    ------
    ModelLoadError
        With the checker's whole message on one line (node name and op type included).
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
        return
    except onnx.shape_inference.InferenceError as err:
        if not len(proto.graph.value_info):
            raise ModelLoadError(f"invalid ONNX model {source}: {one_line(err)}") from None
        bare = onnx.ModelProto()
        bare.CopyFrom(proto)
        del bare.graph.value_info[:]
        with contextlib.suppress(Exception):  # else: the error about the model as given
            onnx.checker.check_model(bare, full_check=True)
            return
        raise ModelLoadError(f"invalid ONNX model {source}: {one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - ValidationError, and odd / oversize protos
        detail = one_line(err)
        if not isinstance(err, onnx.checker.ValidationError):
            detail = f"{type(err).__name__}: {detail}"
        raise ModelLoadError(f"invalid ONNX model {source}: {detail}") from None


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape inference; on a conflict, retry without the exporter's intermediate shapes
    (they go stale when a pinned input shape replaces a symbolic one)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception:
        if not len(model.graph.value_info):
            raise
        bare = onnx.ModelProto()
        bare.CopyFrom(model)
        del bare.graph.value_info[:]
        for out in bare.graph.output:
            out.type.tensor_type.ClearField("shape")
        return onnx.shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True)


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """``(op_type, node_name, domain)`` of every node neither TVM's ONNX importer nor hwcc's
    own converters (:data:`compiler.frontend.converters.CONVERTERS`) convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"} | set(CONVERTERS)
    bad = []
    for node in model.graph.node:
        if node.domain == narrow.DOMAIN and node.op_type in CONVERTERS:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            bad.append((node.op_type, node.name, node.domain or "ai.onnx"))
    return bad


def load_model(model: str | Path | onnx.ModelProto,
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> ImportedModel:
    """Read, check and import an ONNX model into a Relax IRModule with weights as constants.

    Parameters
    ----------
    model
        Path to an ``.onnx`` file or an ``onnx.ModelProto``.
    input_shapes
        Shapes that pin dynamic input dimensions, by input name.

    Raises
    ------
    ModelLoadError, InputShapeError, UnsupportedOpError
        With a one-line message naming what is wrong and where.
    """
    proto, source = read_model(model)
    opset = model_opset(proto)
    check_model(proto, source)

    specs = resolve_input_specs(proto, input_shapes)
    pinned = _pin_shapes(proto, specs)
    try:
        pinned = _infer_shapes(pinned)
    except Exception as err:
        raise ModelLoadError(f"shape inference failed for {source}: {one_line(err)}") from None
    check_consistency(pinned, source)  # what onnxruntime refuses only when it runs the model

    try:
        pinned = prepare(pinned)
    except HwccError:
        raise
    except Exception as err:  # noqa: BLE001 - shape inference / reference errors, one line
        raise ModelLoadError(f"graph preparation failed for {source}: "
                             f"{one_line(err)}") from None
    check_consistency(pinned, source)  # shapes and indices folded to constants since
    try:  # float8/int4...: uint8 storage inside the module
        lowered = narrow.lower_narrow_types(pinned)
    except HwccError:
        raise
    except Exception as err:  # noqa: BLE001 - one line, naming the step
        raise ModelLoadError(f"narrow element types of {source} could not be lowered: "
                             f"{one_line(err)}") from None
    bad = unsupported_nodes(lowered)
    if bad:
        op, name, domain = bad[0]
        others = sorted({b[0] for b in bad[1:]} - {op})
        detail = "no converter in TVM's ONNX importer"
        if domain != "ai.onnx":
            detail = f"domain '{domain}' is not supported"
        if others:
            detail += f"; also unsupported: {', '.join(others)}"
        raise UnsupportedOpError(op, name, opset, detail)

    # every float -> integer conversion clamped first: one answer on every CPU
    mod = int_casts.make_explicit(_import(lowered, specs, opset))
    outputs = _output_specs(pinned, mod)
    logger.info("imported %s: %d nodes, opset %d", source, len(pinned.graph.node), opset)
    return ImportedModel(mod=mod, onnx_model=pinned, inputs=specs, outputs=outputs, opset=opset,
                         source=source)


class _NodeTrackingImporter:
    """Wraps TVM's importer so that a converter failure names the ONNX node it came from."""

    @staticmethod
    def run(model: onnx.ModelProto, specs: list[TensorSpec], opset: int):
        from tvm.relax.frontend.onnx import onnx_frontend as fe

        class Importer(fe.ONNXGraphImporter):
            current: onnx.NodeProto | None = None

            def _parse_value_proto(self, value_proto):  # called once per node, first
                if isinstance(value_proto, onnx.NodeProto):
                    self.current = value_proto
                return super()._parse_value_proto(value_proto)

            def _check_for_unsupported_ops(self, graph):
                theirs = onnx.GraphProto()
                theirs.node.extend(n for n in graph.node if n.op_type not in CONVERTERS)
                return super()._check_for_unsupported_ops(theirs)

            def _convert_operator(self, op_name, inputs, attrs, opset):
                if op_name in CONVERTERS:
                    out = CONVERTERS[op_name](self.bb, inputs, attrs)
                    if out is not None:  # None: TVM's converter handles this form
                        return self.bb.normalize(out)
                return super()._convert_operator(op_name, inputs, attrs, opset)

        importer = Importer({s.name: list(s.shape) for s in specs},
                            {s.name: narrow.storage_dtype(s.dtype) for s in specs},
                            keep_params_in_input=False, sanitize=True)
        try:
            return importer.from_onnx(model.graph, opset)
        except Exception as err:
            node = importer.current
            if node is None:
                raise
            msg = str(err).strip().splitlines()
            detail = msg[-1] if msg else type(err).__name__
            raise UnsupportedOpError(node.op_type, node.name, opset,
                                     f"TVM's importer failed: {detail[:300]}") from None


def _import(model: onnx.ModelProto, specs: list[TensorSpec], opset: int):
    from tvm import relax

    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        mod = _NodeTrackingImporter.run(model, specs, opset)
    if not relax.analysis.check_well_formed(mod):
        raise ModelLoadError("TVM produced an ill-formed Relax module for this model")
    return mod


def _output_specs(model: onnx.ModelProto, mod) -> list[TensorSpec]:
    from tvm import relax

    names = [o.name for o in model.graph.output]
    logical = {o.name: _onnx_dtype(o.type.tensor_type.elem_type) for o in model.graph.output
               if o.type.HasField("tensor_type")}
    ret = mod["main"].ret_ty
    infos = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for name, info in zip(names, infos):
        if not isinstance(info, relax.TensorType) or info.shape is None:
            raise InputShapeError(f"output '{name}' has no static shape after import")
        try:
            shape = tuple(int(d) for d in info.shape.values)
        except (TypeError, ValueError, AttributeError):
            raise InputShapeError(f"output '{name}' has a dynamic shape "
                                  f"{info.shape}; pin the inputs with --input-shape") from None
        dtype = str(info.dtype)
        if narrow.is_narrow(logical.get(name, "")) and dtype == "uint8":
            dtype = logical[name]  # uint8 storage inside, the narrow type at the boundary
        specs.append(TensorSpec(name, shape, dtype))
    return specs
