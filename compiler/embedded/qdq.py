"""Already-quantized (QDQ) models on the embedded target: their own activation scales.

A QDQ model (onnxruntime's ``quantize_static(..., quant_format=QDQ)``, or QOperator models
the frontend rewrites to QDQ) marks every quantized activation with a
``QuantizeLinear → DequantizeLinear`` pair and stores weights as ``DequantizeLinear`` of int8
constants. After ``canonicalize`` the weights are float constants (``w_q · s``, from which
the integerizer's symmetric per-channel quantization recovers ``w_q``); :func:`strip_qdq`
removes the activation pairs and returns each marked tensor's scale, which the integerizer
uses instead of calibrating (calibration data, when given, fills in tensors the model left
unmarked).

The device computes symmetric int8 (zero point 0): a pair with another zero point or type is
refused, naming the binding (quantize with ``ActivationSymmetric=True``, ``QInt8``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from passes._ir import bindings, const_array, is_const, main_function, op_name
from targets.errors import CompileError


def _const_value(expr: relax.Expr, producer: dict[Any, Any]) -> np.ndarray | None:
    """A constant, or a var bound to ``astype(constant)`` (how the importer writes a zero
    point), as an array; else None."""
    if is_const(expr):
        return const_array(expr)
    if isinstance(expr, relax.Var) and expr in producer:
        v = producer[expr].value
        if op_name(v) == "relax.astype" and is_const(v.args[0]):
            return const_array(v.args[0])
    return None


def _scalar(arr: np.ndarray | None, what: str, where: str) -> float:
    if arr is None or arr.size != 1:
        raise CompileError(f"QDQ pair at binding '{where}': {what} must be one constant on the "
                           "embedded target (per-tensor activation quantization)")
    return float(arr.reshape(()))


def _trace_quantize(q: relax.Expr, producer: dict[Any, Any], where: str
                    ) -> tuple[relax.Expr, float, int]:
    """The float input, scale and zero point of the quantization that made the int8 ``q``:
    the importer writes QuantizeLinear as ``astype(clip(where(isnan(r), 0, r) + zp, lo, hi))``
    with ``r = round(x / scale)``."""
    zp = 0.0

    def value_of(var: relax.Expr) -> Any:
        if not isinstance(var, relax.Var) or var not in producer:
            raise CompileError(f"dequantize at binding '{where}' reads a value no "
                               "QuantizeLinear made; the embedded target cannot run it")
        return producer[var].value

    v = value_of(q)
    if op_name(v) != "relax.astype" or str(v.attrs.dtype) != "int8":
        raise CompileError(f"QDQ pair at binding '{where}': activations quantized to "
                           f"{getattr(v.attrs, 'dtype', '?')}; the embedded target runs "
                           "symmetric int8 (quantize with QInt8 and ActivationSymmetric=True)")
    v = value_of(v.args[0])
    while True:
        kind = op_name(v)
        if kind in ("relax.clip", "relax.round", "relax.astype"):
            v = value_of(v.args[0])
        elif kind == "relax.where":
            v = value_of(v.args[2])
        elif kind in ("relax.add", "relax.subtract"):
            c = _const_value(v.args[1], producer)
            if c is None:
                raise CompileError(f"QDQ pair at binding '{where}': unexpected quantization "
                                   "arithmetic")
            zp += _scalar(c, "the zero point", where) * (1 if kind == "relax.add" else -1)
            v = value_of(v.args[0])
        elif kind == "relax.divide" and is_const(v.args[1]):
            return v.args[0], _scalar(const_array(v.args[1]), "the scale", where), int(zp)
        elif kind == "relax.multiply" and is_const(v.args[1]):
            inv = _scalar(const_array(v.args[1]), "the scale", where)
            return v.args[0], 1.0 / inv, int(zp)
        else:
            raise CompileError(f"QDQ pair at binding '{where}': cannot read the quantization "
                               f"({kind})")


def strip_qdq(mod: Any) -> tuple[Any, dict[str, float]]:
    """``mod`` without its activation quantize → dequantize pairs (each dequantized value
    replaced by the float value that was quantized), every binding with a unique name, and
    the scale of each tensor a pair marked, by binding (or parameter) name.

    Raises
    ------
    CompileError
        A pair with a zero point other than 0, a type other than int8, per-channel scales,
        different scales on its two sides, or a ``dequantize`` of a computed value no
        quantize made (the message names the binding).
    """
    func = main_function(mod)
    producer = {b.var: b for b in bindings(func)}  # vars hash by identity; names repeat
    alias: dict[Any, relax.Expr] = {}  # dequantized var -> the float value quantized
    marked: dict[Any, float] = {}  # float value -> scale
    for b in bindings(func):
        v = b.value
        if op_name(v) != "relax.dequantize" or is_const(v.args[0]):
            continue
        x, s, z = _trace_quantize(v.args[0], producer, b.var.name)
        s2 = _scalar(_const_value(v.args[1], producer), "the scale", b.var.name)
        z2 = _scalar(_const_value(v.args[2], producer), "the zero point", b.var.name)
        if z != 0 or z2 != 0:
            raise CompileError(f"QDQ pair at binding '{b.var.name}': zero point {z or z2:g}; "
                               "the embedded target runs symmetric int8 (zero point 0: "
                               "quantize with ActivationSymmetric=True)")
        if not np.isclose(s, s2, rtol=1e-6):
            raise CompileError(f"QDQ pair at binding '{b.var.name}': dequantize scale {s2:g} "
                               f"differs from the quantize's {s:g}")
        x = alias.get(x, x)
        alias[b.var] = x
        marked.setdefault(x, s)

    def resolve(e: relax.Expr) -> relax.Expr:
        return alias.get(e, e) if isinstance(e, relax.Var) else e

    out = resolve(func.body.body)
    live: set[Any] = set()
    todo = [out]
    while todo:  # what main's output still needs once dequantized values read their source
        e = todo.pop()
        if isinstance(e, relax.Var) and e in producer and e not in live:
            live.add(e)
            todo.extend(resolve(a) for a in getattr(producer[e].value, "args", []))
        elif isinstance(e, relax.Tuple):
            todo.extend(resolve(f) for f in e.fields)
    vmap: dict[Any, Any] = {p: p for p in func.params}
    used: set[str] = {p.name for p in func.params}
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", list(func.params), attrs=attrs, pure=func.is_pure):
        with bb.dataflow():
            for b in bindings(func):
                if b.var not in live:
                    continue
                name, k = b.var.name, 1
                while name in used:
                    name, k = f"{b.var.name}_{k}", k + 1
                used.add(name)
                emit = bb.emit_output if b.var.same_as(out) else bb.emit
                vmap[b.var] = emit(_substitute(b.value, resolve, vmap), name_hint=name)
        bb.emit_func_output(_substitute(out, resolve, vmap))
    new_mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    new_mod[new_mod.get_global_var("main")] = bb.get()["main"]
    scales = {vmap[x].name: s for x, s in marked.items() if x in vmap}
    return new_mod, scales


def _substitute(expr: relax.Expr, resolve: Any, vmap: dict[Any, Any]) -> relax.Expr:
    """``expr`` with dequantized vars read from their source and vars rebuilt."""
    if isinstance(expr, relax.Var):
        expr = resolve(expr)
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(f, resolve, vmap) for f in expr.fields])
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [_substitute(a, resolve, vmap) for a in expr.args],
                          expr.attrs, expr.ty_args)
    return expr
