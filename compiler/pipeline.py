"""Compose compression passes into the pipeline that runs before lowering.

Passes are named in :data:`PASSES` (name → factory taking the pass's config object), so the
CLI and the API can ask for them by name; an unknown name is an error listing the known ones.
Each pass runs between two well-formedness checks, so broken IR is caught at the pass that
broke it. A pass object may expose ``report`` (a dict) after it ran; it goes to the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CompileError, ConfigError, HwccError

logger = logging.getLogger(__name__)

# name -> factory(config) -> tvm.transform.Pass. Filled by register_pass in passes/.
PASSES: dict[str, Callable[[Any], Any]] = {}


def register_pass(name: str, factory: Callable[[Any], Any]) -> None:
    PASSES[name] = factory


@dataclass(frozen=True)
class PassSpec:
    """A pass asked for by name, with its config object (None for the pass's defaults).

    ``teacher_from`` names an earlier pass of the same pipeline: the module as it was just
    before that pass ran is put in the config's ``teacher`` field, or passed as ``teacher=`` to
    ``config`` when it is a factory such as ``functools.partial(RecoverConfig, ...)``
    (teacher-guided recovery re-fits compressed layers against the model before compression).
    """

    name: str
    config: Any = None
    teacher_from: str | None = None
    optional: bool = False  # a ConfigError (nothing to do) skips the pass instead of failing

    def build(self, snapshots: dict[str, Any] | None = None) -> Any:
        _load_builtin_passes()
        if self.name not in PASSES:
            raise ConfigError(f"unknown pass '{self.name}'; known: {', '.join(sorted(PASSES))}")
        config = self.config
        if self.teacher_from is not None:
            if not snapshots or self.teacher_from not in snapshots:
                raise ConfigError(f"pass '{self.name}' takes its teacher from pass "
                                  f"'{self.teacher_from}', which did not run before it")
            teacher = snapshots[self.teacher_from]
            # config: a dataclass with a ``teacher`` field, or a factory taking ``teacher=``
            config = (dataclasses.replace(config, teacher=teacher)
                      if dataclasses.is_dataclass(config) else config(teacher=teacher))
        return PASSES[self.name](config)


def _load_builtin_passes() -> None:
    import passes  # noqa: F401  (registers the built-in passes)


def _config_dict(obj: Any) -> Any:
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.name.startswith("_") or f.name == "teacher" or hasattr(v, "shape") \
                    or hasattr(v, "functions_items"):  # skip arrays and IRModules
                continue
            if isinstance(v, dict) and any(hasattr(x, "shape") for x in v.values()):
                continue
            out[f.name] = v if isinstance(v, (int, float, str, bool, type(None), list,
                                              tuple)) else str(v)
        return out
    return str(cfg)


def run_passes(mod: Any, passes: Sequence[Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Run passes in order with well-formedness checks; return the module and reports."""
    from tvm import relax

    reports: list[dict[str, Any]] = []
    snapshots: dict[str, Any] = {}
    for item in passes:
        pass_obj = item.build(snapshots) if isinstance(item, PassSpec) else item
        name = item.name if isinstance(item, PassSpec) else _pass_name(pass_obj)
        snapshots[name] = mod
        t0 = time.perf_counter()
        before_attrs = _hwcc_attrs(mod)
        try:
            mod = pass_obj(mod)
        except ConfigError as err:
            if not (isinstance(item, PassSpec) and item.optional):
                raise
            logger.info("pass %s skipped: %s", name, err)
            reports.append({"name": name, "skipped": str(err)})
            continue
        except HwccError:
            raise
        except Exception as err:
            raise CompileError(f"pass '{name}' failed: {str(err).strip().splitlines()[-1]}") \
                from err
        if not relax.analysis.check_well_formed(mod):
            raise CompileError(f"pass '{name}' produced an ill-formed Relax module")
        report: dict[str, Any] = {"name": name, "config": _config_dict(pass_obj),
                                  "seconds": round(time.perf_counter() - t0, 3)}
        extra = getattr(pass_obj, "report", None)
        if not isinstance(extra, dict):
            extra = _report_from_attrs(mod, before_attrs)
        if extra:
            report["report"] = extra
        reports.append(report)
        logger.info("pass %s done in %.2f s", name, report["seconds"])
    return mod, reports


def _hwcc_attrs(mod: Any) -> dict[str, str]:
    """``hwcc.*`` attributes of ``main``: where passes leave their JSON reports."""
    attrs = mod["main"].attrs if "main" in [gv.name_hint for gv in mod.get_global_vars()] \
        else None
    if attrs is None:
        return {}
    return {str(k): str(attrs[k]) for k in attrs.keys() if str(k).startswith("hwcc.")}


def _report_from_attrs(mod: Any, before: dict[str, str]) -> dict[str, Any] | None:
    """The report a pass attached to ``main`` (a new or changed ``hwcc.*`` attribute)."""
    import json

    for key, value in _hwcc_attrs(mod).items():
        if before.get(key) != value:
            try:
                data = json.loads(value)
            except ValueError:
                data = value
            return data if isinstance(data, dict) else {"value": data}
    return None


def _pass_name(pass_obj: Any) -> str:
    info = getattr(pass_obj, "info", None)
    return str(getattr(info, "name", type(pass_obj).__name__))
