"""Run a Relax module on calibration data and capture intermediate values.

Compression passes need statistics of the model's activations: channel pruning ranks channels by
their mean activation, recovery re-fits layers on their inputs, quantization observers record
ranges. :func:`capture` serves them all: it builds an *instrumented copy* of ``main`` that also
returns the requested intermediate values, compiles it for the host CPU and runs it once per
calibration sample.

Calibration data format
-----------------------
A mapping from model input name (the names of ``main``'s parameters, i.e. the ONNX graph input
names) to a numpy array whose **leading axis indexes samples**; the rest of each array must equal
that input's static shape. An input of shape ``(2, 3, 32, 32)`` therefore takes an array of shape
``(n, 2, 3, 32, 32)``: ``n`` runs of the model on its own batch size. Every input must hold the
same ``n``. Mismatches raise :class:`compiler.errors.ConfigError` naming the input and both shapes.

Example
-------
>>> lv = find_binding(mod, "lv7").var
>>> cap = capture(mod, {"x": xs}, [lv])
>>> cap.values[0].shape  # (n, *shape of lv7)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from targets.errors import ConfigError

from ._ir import bindings, main_function, rebuild_main, static_shape

logger = logging.getLogger(__name__)

#: Target used to run calibration on this machine.
HOST_TARGET = {"kind": "llvm", "num-cores": 2}


@dataclass(frozen=True)
class Capture:
    """What :func:`capture` returns.

    Attributes
    ----------
    outputs
        The model's outputs (a tuple output is flattened), each stacked over samples:
        shape ``(n, *output_shape)``.
    values
        The requested intermediate values, in request order, stacked the same way.
    names
        The binding names of ``values``.
    """

    outputs: list[np.ndarray]
    values: list[np.ndarray]
    names: list[str]

    def __getitem__(self, name: str) -> np.ndarray:
        """The captured value of the binding called ``name``."""
        try:
            return self.values[self.names.index(name)]
        except ValueError:
            raise KeyError(f"'{name}' was not captured; captured: {self.names}") from None


def find_binding(mod: tvm.IRModule, name: str) -> relax.Binding:
    """The binding of ``main`` whose var is called ``name``; ConfigError when absent."""
    for b in bindings(main_function(mod)):
        if b.var.name == name:
            return b
    raise ConfigError(f"no binding named '{name}' in main")


def check_calibration(mod: tvm.IRModule, inputs: Mapping[str, np.ndarray]) -> int:
    """Check calibration arrays against ``main``'s inputs; return the number of samples.

    Raises
    ------
    ConfigError
        Missing or unknown inputs, shapes that do not fit, differing sample counts, no samples.
    """
    func = main_function(mod)
    expected = {p.name: static_shape(p) for p in func.params}
    missing = sorted(set(expected) - set(inputs))
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise ConfigError(
            f"calibration data must hold exactly the model inputs {sorted(expected)}; "
            f"missing {missing}, unknown {unknown}"
        )
    counts = set()
    for name, shape in expected.items():
        arr = np.asarray(inputs[name])
        if shape is None:
            raise ConfigError(
                f"model input '{name}' has no static shape; pin it before calibration"
            )
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
            raise ConfigError(
                f"calibration data for input '{name}' must have shape (n_samples, *{shape}); "
                f"got {tuple(arr.shape)}"
            )
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise ConfigError(f"calibration inputs hold different numbers of samples: {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise ConfigError("calibration data holds no samples")
    return n


def _to_numpy(obj: object) -> list[np.ndarray]:
    if hasattr(obj, "numpy"):
        return [obj.numpy()]
    out: list[np.ndarray] = []
    for item in obj:  # a tuple (ffi Array) output
        out.extend(_to_numpy(item))
    return out


def _n_outputs(mod: tvm.IRModule) -> int:
    def count(ty: object) -> int:
        if isinstance(ty, relax.TupleType):
            return sum(count(f) for f in ty.fields)
        return 1

    return count(main_function(mod).ret_ty)


def capture(
    mod: tvm.IRModule,
    inputs: Mapping[str, np.ndarray],
    exprs: Sequence[relax.Var | str] = (),
    target: Mapping | None = None,
) -> Capture:
    """Run ``mod`` over calibration samples and return its outputs and intermediate values.

    Parameters
    ----------
    mod
        A Relax module with ``main`` (weights bound as constants).
    inputs
        Calibration data: input name → array with a leading sample axis (see the module doc).
    exprs
        Values to capture: vars bound in ``main`` (or their names). ``main``'s parameters are
        accepted too (returned as given).
    target
        TVM target dict to compile for; default the host CPU (:data:`HOST_TARGET`).

    Returns
    -------
    Capture
        Outputs and values stacked over samples.
    """
    n = check_calibration(mod, inputs)
    func = main_function(mod)
    by_name = {b.var.name: b.var for b in bindings(func)}
    by_name.update({p.name: p for p in func.params})
    wanted: list[relax.Var] = []
    for e in exprs:
        if isinstance(e, str):
            if e not in by_name:
                raise ConfigError(f"no binding named '{e}' in main")
            e = by_name[e]
        wanted.append(e)
    bound = [v for v in wanted if v.name not in {p.name for p in func.params}]
    instrumented = rebuild_main(mod, extra_outputs=bound) if bound else mod
    n_out = _n_outputs(mod)
    ex = tvm.compile(instrumented, target=tvm.target.Target(dict(target or HOST_TARGET)))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [p.name for p in func.params]
    per_sample: list[list[np.ndarray]] = []
    for i in range(n):
        args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[k][i])) for k in names]
        per_sample.append(_to_numpy(vm["main"](*args)))
    logger.debug("captured %d values over %d samples", len(wanted), n)
    stacked = [np.stack([s[j] for s in per_sample]) for j in range(len(per_sample[0]))]
    outputs = stacked[:n_out]
    extra = iter(stacked[n_out:])
    values = []
    for v in wanted:
        if v in bound:
            values.append(next(extra))
        else:
            values.append(np.asarray(inputs[v.name]))
    return Capture(outputs=outputs, values=values, names=[v.name for v in wanted])


def run(mod: tvm.IRModule, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs over calibration samples (``capture`` without intermediates)."""
    return capture(mod, inputs).outputs
