"""Load an hwcc artifact, check it and its inputs, run it and time it.

>>> art = Artifact.load("out/digits")
>>> outputs = art.run({"input": x})          # dict name -> numpy array
>>> art.benchmark(repeat=50)["median_ms"]
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import ArtifactError, HwccError, RuntimeInputError
from targets import host_arch, missing_features, parse_target

from . import tensors as narrow
from .package import FORMAT, MANIFEST, MANIFEST_HASH, SEALED_SINCE, manifest_digest, sha256_file
from .tensors import TensorSpec

logger = logging.getLogger(__name__)


def use_all_cores() -> int:
    """Set ``TVM_NUM_THREADS`` to the cores this process may use, unless the user set it.

    TVM's runtime otherwise uses half the hardware threads on x86, and reads the variable
    once, when its thread pool starts: the CLI, :meth:`Artifact.load` and tuning call this
    before anything runs. Returns the thread count in force.
    """
    if "TVM_NUM_THREADS" not in os.environ:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        os.environ["TVM_NUM_THREADS"] = str(max(1, n))
    return int(os.environ["TVM_NUM_THREADS"])


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of an artifact directory.

    The manifest's own SHA-256 (``manifest_sha256``, over its canonical JSON without that
    field: :func:`compiler.artifact.package.manifest_digest`) must match, so that any edit of
    the manifest (an output shape, the target, a reported figure, a file's recorded hash) is
    refused here with one line. Artifacts written before the field existed (format version
    1, hwcc before issue #27) have none: they are read with a warning saying their manifest
    is unchecked. From format version 2 on, a manifest without the field is refused.

    Raises
    ------
    ArtifactError
        No such directory, no or unreadable manifest, a missing field, or a manifest that
        does not match its own hash.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory not found: {path}")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise ArtifactError(f"{path} is not an hwcc artifact (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"unreadable manifest {mpath}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an hwcc manifest")
    _check_manifest_hash(mpath, manifest)
    for key in ("inputs", "outputs", "target", "files", "library"):
        if key not in manifest:
            raise ArtifactError(f"manifest {mpath} lacks '{key}'")
    return manifest


def _check_manifest_hash(mpath: Path, manifest: dict[str, Any]) -> None:
    recorded = manifest.get(MANIFEST_HASH)
    version = manifest.get("format_version", 1)
    if recorded is None and (not isinstance(version, int) or version >= SEALED_SINCE):
        # a sealed format without its seal: the field was removed or renamed
        raise ArtifactError(f"artifact {mpath.parent} was modified after it was built: "
                            f"{MANIFEST} (format {version}) lacks its own SHA-256 "
                            f"({MANIFEST_HASH})")
    if recorded is None:
        logger.warning("%s has no %s (written by an older hwcc): its contents are not "
                       "checked; recompile to seal it", mpath, MANIFEST_HASH)
        return
    if not isinstance(recorded, str) or recorded != manifest_digest(manifest):
        raise ArtifactError(f"artifact {mpath.parent} was modified after it was built: "
                            f"{MANIFEST} does not match its own SHA-256 ({MANIFEST_HASH})")


#: Per architecture, a target whose artifacts run on every CPU hwcc supports there
#: (x86-64-v3: AVX2 + FMA).
PORTABLE_TARGETS = {"x86_64": "x86_64-linux-gnu -mattr=+avx2,+fma",
                    "aarch64": "aarch64-linux-gnu -mattr=+neon"}


def required_cpu_features(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``-mattr`` features (``+name``) the artifact's module was built for.

    From ``target.cpu_features``; manifests written before it was recorded fall back to the
    features of the target string.
    """
    tgt = manifest["target"]
    if "cpu_features" in tgt:
        return tuple(str(f) for f in tgt["cpu_features"])
    try:
        return parse_target(str(tgt["target"])).cpu_features
    except HwccError:
        return tuple(str(f) for f in (tgt.get("tvm_target") or {}).get("mattr") or ())


def verify_files(path: Path, manifest: Mapping[str, Any]) -> None:
    """Check that every file listed in the manifest exists with the recorded SHA-256."""
    for name, info in manifest["files"].items():
        f = path / name
        if not f.exists():
            raise ArtifactError(f"artifact {path} is incomplete: {name} is missing")
        if sha256_file(f) != info.get("sha256"):
            raise ArtifactError(f"artifact {path} was modified after it was built: "
                                f"{name} does not match its SHA-256 in the manifest")


#: target kind -> Artifact subclass that runs it (registered by the subclass's module)
ARTIFACT_KINDS: dict[str, type] = {}


class Artifact:
    """A compiled model on disk, loaded into TVM's Relax virtual machine."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.inputs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
        self.outputs = [TensorSpec.from_dict(d) for d in manifest["outputs"]]
        self._vm: Any = None
        self._device: Any = None
        self._lib: Any = None

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["target"])

    def missing_cpu_features(self) -> tuple[str, ...]:
        """CPU features the module was built for that this machine lacks (names without
        ``+``); ``()`` for CUDA and generated-C modules and for other architectures (refused
        for that reason instead)."""
        tgt = self.manifest["target"]
        if tgt.get("kind", "llvm") != "llvm" or tgt.get("machine") != host_arch():
            return ()
        return missing_features(required_cpu_features(self.manifest))

    def check_cpu_features(self) -> None:
        """Refuse, with one line, a module using instructions this CPU lacks: loading and
        running it would kill the process with SIGILL."""
        missing = self.missing_cpu_features()
        if not missing:
            return
        portable = PORTABLE_TARGETS.get(host_arch())
        rebuild = "-t host" + (f' or a portable -t "{portable}"' if portable else "")
        raise ArtifactError(
            f"artifact {self.path} needs CPU features this machine lacks: "
            f"{', '.join(missing)} (built for {self.target}); rebuild with {rebuild}")

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        """Check the manifest (its own hash: :func:`read_manifest`), the file hashes, the
        architecture and the CPU features, then load the module.

        These checks catch accidents and careless edits. An artifact is native code: someone
        who replaces the module can rewrite the manifest and its hash as well, and only a
        signature from a key you trust protects against that.

        Raises
        ------
        ArtifactError
            An edited manifest, missing or tampered files, a module built for another
            machine, or for CPU features this machine lacks (checked before the module is
            loaded).
        """
        use_all_cores()
        path = Path(path)
        manifest = read_manifest(path)
        verify_files(path, manifest)
        art = ARTIFACT_KINDS.get(manifest["target"].get("kind"), cls)(path, manifest)
        art._ensure_loaded()
        return art

    def _ensure_loaded(self) -> None:
        if self._vm is not None:
            return
        import tvm
        from tvm import relax

        tgt = self.manifest["target"]
        if tgt.get("kind") == "cuda":
            device = tvm.cuda(0)
            if not device.exist:
                raise ArtifactError(f"artifact {self.path} is built for CUDA ({tgt['target']}) "
                                    "but no CUDA GPU is visible on this machine")
        elif tgt.get("machine") != host_arch():
            raise ArtifactError(
                f"artifact {self.path} is built for {tgt.get('machine')} ({tgt['target']}); "
                f"this machine is {host_arch()}: copy it to a {tgt.get('machine')} device "
                "and load it there")
        else:
            self.check_cpu_features()  # before dlopen: a missing instruction is a SIGILL
            device = tvm.cpu(0)
        lib_path = self.path / self.manifest["library"]
        try:
            lib = tvm.runtime.load_module(str(lib_path))
            self._vm = relax.VirtualMachine(lib, device)
        except Exception as err:
            raise ArtifactError(f"cannot load module {lib_path}: "
                                f"{str(err).strip()[:300]}") from None
        self._device = device
        self._lib = lib

    def instrument_kernels(self, callback: Callable[[str, bool], None] | None) -> None:
        """Call ``callback(kernel, before)`` right before and right after the VM calls each
        kernel of the compiled library (its PrimFuncs, not the VM's builtins), the device
        synchronized first, so that the time between the two calls is the kernel's; None
        stops it. TVM 0.27's Relax VM has no profiler: this uses its ``set_instrument``."""
        import tvm

        self._ensure_loaded()
        if callback is None:
            self._vm.set_instrument(None)
            return
        kernels: dict[str, bool] = {}
        sync = (None if self._device.dlpack_device_type() == tvm.cpu(0).dlpack_device_type()
                else self._device.sync)

        def hook(_func: Any, symbol: str, before: bool, *_rest: Any) -> int:
            is_kernel = kernels.get(symbol)
            if is_kernel is None:  # kernels live in the executable's imported library
                is_kernel = kernels[symbol] = any(m.implements_function(symbol, True)
                                                  for m in self._lib.imports)
            if is_kernel:
                if sync is not None:
                    sync()
                callback(symbol, bool(before))
            return 0  # VMInstrumentReturnKind.NO_OP: run the call

        self._vm.set_instrument(hook)

    # -- inputs ---------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
        """Validate names, shapes and dtypes; return arrays in the model's input order (as the
        module's uint8 storage for float8/float4/int4/int2 inputs)."""
        names = [s.name for s in self.inputs]
        if not isinstance(inputs, Mapping):
            seq = list(inputs)
            if len(seq) != len(names):
                raise RuntimeInputError(f"expected {len(names)} inputs {names}; got {len(seq)}")
            inputs = dict(zip(names, seq))
        missing = [n for n in names if n not in inputs]
        extra = sorted(set(inputs) - set(names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unknown {extra}")
            raise RuntimeInputError(f"inputs do not match the model: {'; '.join(parts)}; "
                                    f"expected {names}")
        arrays = []
        for spec in self.inputs:
            a = np.asarray(inputs[spec.name])
            if tuple(a.shape) != spec.shape:
                raise RuntimeInputError(f"input '{spec.name}' must have shape {list(spec.shape)}; "
                                        f"got {list(a.shape)}")
            if str(a.dtype) != spec.dtype:
                raise RuntimeInputError(f"input '{spec.name}' must have dtype {spec.dtype}; "
                                        f"got {a.dtype}")
            a = a if a.flags.c_contiguous else a.copy(order="C")  # keeps 0-d
            arrays.append(narrow.storage_view(a, spec.dtype))  # float8/int4: uint8 storage
        return arrays

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded random inputs of the right shapes and dtypes."""
        return random_inputs(self.inputs, seed)

    # -- running --------------------------------------------------------------------------
    def _invoke(self, tensors: list[Any]) -> Any:
        return self._vm["main"](*tensors)

    @property
    def size_bytes(self) -> int:
        """Bytes of the module library on disk."""
        return int(self.manifest["files"][self.manifest["library"]]["bytes"])

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """Run once; returns output name → numpy array."""
        import tvm

        arrays = self.check_inputs(inputs)
        self._ensure_loaded()
        tensors = [tvm.runtime.tensor(a, self._device) for a in arrays]
        result = self._invoke(tensors)
        outs = _flatten(result)
        return {spec.name: narrow.logical_view(o, spec.dtype)
                for spec, o in zip(self.outputs, outs)}

    def benchmark(self, inputs: Mapping[str, Any] | None = None, repeat: int = 50,
                  warmup: int = 5) -> dict[str, Any]:
        """Time ``repeat`` runs after ``warmup`` runs; milliseconds, inputs already on device."""
        import tvm

        if repeat < 1:
            raise RuntimeInputError(f"repeat must be at least 1; got {repeat}")
        arrays = self.check_inputs(inputs if inputs is not None else self.random_inputs())
        self._ensure_loaded()
        tensors = [tvm.runtime.tensor(a, self._device) for a in arrays]
        for _ in range(max(0, warmup)):
            self._invoke(tensors)
        self._device.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._invoke(tensors)
            self._device.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return timing_summary(times, self.target, warmup)


def timing_summary(times_ms: Sequence[float], target: str, warmup: int) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(times_ms), 4),
        "mean_ms": round(statistics.fmean(times_ms), 4),
        "min_ms": round(min(times_ms), 4),
        "max_ms": round(max(times_ms), 4),
        "repeat": len(times_ms),
        "warmup": warmup,
        "target": target,
        "threads": int(os.environ.get("TVM_NUM_THREADS", "0") or 0),
    }


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if narrow.is_narrow(s.dtype):  # float8 / float4 / int4 / int2: small exact values
            import ml_dtypes  # noqa: F401 - registers the dtype names with numpy

            out[s.name] = rng.integers(0, 2, size=s.shape).astype(np.dtype(s.dtype))
            continue
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind in "iu":
            out[s.name] = rng.integers(0, 10, size=s.shape).astype(dt)
        elif dt.kind == "b":
            out[s.name] = rng.integers(0, 2, size=s.shape).astype(bool)
        else:
            raise RuntimeInputError(f"cannot make random data of dtype {s.dtype} for '{s.name}'")
    return out


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out
