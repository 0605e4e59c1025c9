"""Turn an artifact into a bundle that runs on its device without Python.

A bundle is a directory a user copies to the device and runs::

    bundle/
      hwcc_run            runner (C++, compiled here for the artifact's architecture)
      module.so           the compiled model, copied from the artifact
      manifest.json       the artifact's manifest, unchanged
      io.txt              one line per input/output: kind, name, file stem, dtype, shape
      cpu.txt             the target and the CPU features module.so needs; hwcc_run checks
                          them at start-up and refuses (one line) a CPU lacking one
      bundle.json         what the bundle holds: architecture, runtime versions, file hashes
      lib/libtvm_runtime.so, lib/libtvm_ffi.so
                          TVM's runtime for that architecture (found through $ORIGIN/lib)
      README.txt

    $ ./hwcc_run --inputs in/ --outputs out/ --repeat 50

The runtime libraries come from the installed wheels when the artifact is for this machine,
else from the PyPI wheels of the pinned versions for the artifact's architecture, fetched
once with ``pip download`` into ``$HWCC_CACHE/runtime/<arch>/`` (``~/.cache/hwcc`` by
default). The runner is built from ``compiler/artifact/deploy_runner/hwcc_run.cc`` with the host
``g++`` (or ``$CXX``) or the target's cross compiler, and cached beside the libraries.

>>> from compiler.artifact.deploy import make_bundle
>>> make_bundle("out/mlp-a64", "out/mlp-a64-bundle")
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler import tempdirs
from compiler.errors import HwccError
from targets import host_arch, parse_target

from .package import MANIFEST, replace_dir, sha256_file, write_json_atomic
from .runtime import read_manifest, required_cpu_features, verify_files

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "hwcc-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_INFO = "bundle.json"
IO_SPEC = "io.txt"
CPU_SPEC = "cpu.txt"
RUNNER = "hwcc_run"
RUNNER_SOURCE = Path(__file__).with_name("deploy_runner") / "hwcc_run.cc"

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
#: Architectures a bundle can be made for, with the PyPI platform tags tried for their wheels.
PLATFORM_TAGS: dict[str, tuple[str, ...]] = {
    "x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
}
SUPPORTED_ARCHES = tuple(PLATFORM_TAGS)
#: The wheels' Python tag: only apache-tvm-ffi is per-Python, and its libtvm_ffi.so is not.
WHEEL_PYTHON = "3.11"
#: (distribution, version, library inside the wheel)
RUNTIME_LIBS = (
    ("apache-tvm", TVM_VERSION, "tvm/lib/libtvm_runtime.so"),
    ("apache-tvm-ffi", TVM_FFI_VERSION, "tvm_ffi/lib/libtvm_ffi.so"),
)
FFI_INCLUDE = "tvm_ffi/include"
# ELF e_machine values of the architectures we meet.
_ELF_MACHINE = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64", 3: "i386"}
# dtypes hwcc_run reads and writes (see kDTypes in hwcc_run.cc).
RUNNER_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8",
                 "uint16", "uint32", "uint64", "bool")


class BundleError(HwccError):
    """A bundle cannot be made (base class of the bundle errors)."""


class UnsupportedBundleError(BundleError):
    """The artifact is for an architecture or device kind hwcc cannot bundle (yet)."""


class CompilerNotFoundError(BundleError):
    """The C++ compiler for the artifact's architecture is not installed."""


class RuntimeFetchError(BundleError):
    """The TVM runtime libraries for the artifact's architecture cannot be obtained."""


@dataclass(frozen=True)
class RuntimeLibs:
    """TVM runtime libraries and FFI headers for one architecture."""

    arch: str
    libraries: tuple[Path, ...]  # libtvm_runtime.so, libtvm_ffi.so
    include_dir: Path
    source: str  # "installed" or "pypi"
    versions: tuple[str, str]  # apache-tvm, apache-tvm-ffi


# -- public API -----------------------------------------------------------------------------
def make_bundle(artifact_dir: str | Path, out_dir: str | Path) -> Path:
    """Make a self-contained bundle of an artifact for its device.

    Parameters
    ----------
    artifact_dir
        An artifact written by :func:`compiler.compile` (checked against its manifest hashes).
    out_dir
        Bundle directory to write; replaced if it already holds a bundle, refused if it holds
        anything else. Written under a temporary name and renamed into place.

    Returns
    -------
    Path
        The bundle directory (absolute).

    Raises
    ------
    UnsupportedBundleError
        CUDA artifacts, architectures other than :data:`SUPPORTED_ARCHES`, dtypes the runner
        does not know.
    CompilerNotFoundError
        The host or cross C++ compiler is missing.
    RuntimeFetchError
        The runtime wheels cannot be downloaded (offline) or unpacked.
    """
    artifact = Path(artifact_dir)
    manifest = read_manifest(artifact)
    verify_files(artifact, manifest)
    out = Path(out_dir).resolve()
    if out.exists() and not _is_replaceable_bundle(out):
        raise BundleError(f"output directory {out} exists and is not an hwcc bundle; "
                          "refusing to overwrite it")
    tgt = manifest["target"]
    arch = _artifact_arch(artifact, manifest)
    _check_dtypes(manifest)
    cxx = _compiler_for(tgt, arch)
    runtime = runtime_libs(arch)
    runner = _build_runner(cxx, runtime)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tempdirs.remove_on_exit(tmp)  # SIGTERM mid-write: no half-written bundle left
    try:
        library = str(manifest["library"])
        shutil.copy2(artifact / library, tmp / "module.so")
        shutil.copy2(artifact / MANIFEST, tmp / MANIFEST)
        (tmp / "lib").mkdir()
        for lib in runtime.libraries:
            shutil.copy2(lib, tmp / "lib" / lib.name)
        shutil.copy2(runner, tmp / RUNNER)
        os.chmod(tmp / RUNNER, 0o755)
        (tmp / IO_SPEC).write_text(io_spec(manifest["inputs"], manifest["outputs"]))
        features = cpu_features(manifest)
        (tmp / CPU_SPEC).write_text(cpu_spec(str(tgt.get("target")), features))
        requires = libc_requirements([tmp / RUNNER, tmp / "module.so", *runtime.libraries])
        (tmp / "README.txt").write_text(_readme(manifest, arch, requires, features))
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        info = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifact": str(artifact.resolve()),
            "target": tgt.get("target"),
            "machine": arch,
            "runner": RUNNER,
            "compiler": cxx,
            "runtime": {"apache-tvm": runtime.versions[0], "apache-tvm-ffi": runtime.versions[1],
                        "source": runtime.source},
            "requires": requires,
            "cpu_features": list(features),
            "inputs": manifest["inputs"],
            "outputs": manifest["outputs"],
            "files": files,
        }
        write_json_atomic(tmp / BUNDLE_INFO, info)
        for path in tmp.rglob("*"):  # mkdtemp/mkstemp make owner-only files
            os.chmod(path, 0o755 if path.is_dir() or path.suffix == ".so" or
                     path.name == RUNNER else 0o644)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        tempdirs.forget(tmp)
    logger.info("wrote bundle %s for %s (%s runtime)", out, arch, runtime.source)
    return out


def read_bundle_info(bundle_dir: str | Path) -> dict[str, Any]:
    """Read ``bundle.json`` of a bundle directory."""
    path = Path(bundle_dir) / BUNDLE_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{bundle_dir} is not an hwcc bundle: {err}") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an hwcc bundle description")
    return info


def io_spec(inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> str:
    """The ``io.txt`` text: ``kind<TAB>name<TAB>file stem<TAB>dtype<TAB>d0,d1,...`` lines.

    File stems are the tensor names with characters other than letters, digits, ``.``,
    ``_`` and ``-`` replaced by ``_`` (and made unique), so ``input:0`` reads ``input_0.npy``.
    """
    lines = ["# kind\tname\tfile (.npy)\tdtype\tshape (empty: scalar)"]
    for kind, specs in (("input", inputs), ("output", outputs)):
        used: set[str] = set()
        for spec in specs:
            name = str(spec["name"])
            if any(c in name for c in "\t\n\r"):
                raise UnsupportedBundleError(f"{kind} name {name!r} has a tab or newline")
            stem = file_stem(name, used)
            used.add(stem)
            shape = ",".join(str(int(d)) for d in spec["shape"])
            lines.append(f"{kind}\t{name}\t{stem}\t{spec['dtype']}\t{shape}")
    return "\n".join(lines) + "\n"


def cpu_features(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The CPU features (LLVM names, without ``+``) the artifact's module needs."""
    if manifest["target"].get("kind", "llvm") != "llvm":
        return ()
    return tuple(f[1:] for f in required_cpu_features(manifest) if f.startswith("+"))


def cpu_spec(target: str, features: Sequence[str]) -> str:
    """The ``cpu.txt`` text hwcc_run checks at start-up: ``target<TAB>...`` and one
    ``feature<TAB>name`` line per feature."""
    if any(c in target for c in "\t\n\r"):
        raise UnsupportedBundleError(f"target {target!r} has a tab or newline")
    lines = ["# CPU features module.so was built for; hwcc_run refuses a CPU lacking one",
             f"target\t{target}", *(f"feature\t{f}" for f in features)]
    return "\n".join(lines) + "\n"


def file_stem(name: str, used: set[str] | frozenset[str] = frozenset()) -> str:
    """The ``.npy`` file stem hwcc_run uses for a tensor name."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "tensor"
    candidate, n = stem, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}", n + 1
    return candidate


def libc_requirements(paths: Sequence[Path]) -> dict[str, str]:
    """Newest glibc / libstdc++ symbol versions the ELF files ask for (what the device needs).

    Returns
    -------
    dict
        ``{"glibc": "2.34", "libstdc++": "GLIBCXX_3.4.29"}``; a key is absent when no file
        needs that library.
    """
    found: dict[str, tuple[int, ...]] = {}
    for path in paths:
        data = Path(path).read_bytes()
        for key, pattern in (("glibc", rb"GLIBC_(2\.[0-9]+(?:\.[0-9]+)?)\x00"),
                             ("libstdc++", rb"GLIBCXX_(3\.4(?:\.[0-9]+)?)\x00")):
            for m in re.finditer(pattern, data):
                version = tuple(int(x) for x in m.group(1).decode().split("."))
                found[key] = max(found.get(key, version), version)
    out = {}
    if "glibc" in found:
        out["glibc"] = ".".join(map(str, found["glibc"]))
    if "libstdc++" in found:
        out["libstdc++"] = "GLIBCXX_" + ".".join(map(str, found["libstdc++"]))
    return out


def cache_dir() -> Path:
    """``$HWCC_CACHE`` or ``~/.cache/hwcc``."""
    env = os.environ.get("HWCC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hwcc"


def runtime_libs(arch: str) -> RuntimeLibs:
    """TVM runtime libraries and FFI headers for ``arch``: installed wheels or PyPI wheels.

    Raises
    ------
    UnsupportedBundleError
        ``arch`` is not one of :data:`SUPPORTED_ARCHES`.
    RuntimeFetchError
        The wheels cannot be downloaded or do not hold the libraries.
    """
    if arch not in PLATFORM_TAGS:
        raise UnsupportedBundleError(_unsupported_arch_message(arch))
    if arch == host_arch():
        installed = _installed_runtime()
        if installed is not None:
            return installed
    return _fetched_runtime(arch)


# -- checks ---------------------------------------------------------------------------------
def _artifact_arch(artifact: Path, manifest: Mapping[str, Any]) -> str:
    tgt = manifest["target"]
    if tgt.get("kind") == "cuda":
        raise UnsupportedBundleError(
            f"artifact {artifact} is built for CUDA ({tgt.get('target')}); bundles for CUDA "
            "are not supported yet (they need the CUDA runtime library and a GPU-aware "
            "runner). Run it with Python on the GPU machine (hwcc run), or compile for a CPU "
            f"target ({', '.join(SUPPORTED_ARCHES)})")
    if tgt.get("kind") == "c":
        raise UnsupportedBundleError(
            f"artifact {artifact} is for the embedded target: it is standalone C already "
            "(model.c, model.h, hwcc_kernels.c/.h, hwcc_acc.h, hwcc_acc_config.h); build those "
            "into the firmware with the device's C compiler and hwcc_acc_* from the vendor, or "
            "hwcc_acc_sim.c and hwcc_sim_main.c to run it on the simulator")
    arch = str(tgt.get("machine") or "")
    if arch not in SUPPORTED_ARCHES:
        raise UnsupportedBundleError(
            f"artifact {artifact} is for {arch or 'an unknown machine'} "
            f"({tgt.get('target')}): {_unsupported_arch_message(arch)}")
    elf = _elf_machine(artifact / str(manifest["library"]))
    if elf is not None and elf != arch:
        raise BundleError(f"artifact {artifact}: module library is {elf} code but the "
                          f"manifest says {arch}")
    return arch


def _unsupported_arch_message(arch: str) -> str:
    return (f"bundles can be made for {', '.join(SUPPORTED_ARCHES)} only, where PyPI has TVM "
            f"runtime wheels; not for {arch or 'this architecture'}")


def _check_dtypes(manifest: Mapping[str, Any]) -> None:
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            if spec["dtype"] not in RUNNER_DTYPES:
                raise UnsupportedBundleError(
                    f"{kind[:-1]} '{spec['name']}' has dtype {spec['dtype']}, which hwcc_run "
                    f"cannot read or write (it knows {', '.join(RUNNER_DTYPES)})")


def _elf_machine(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINE.get(code, f"ELF machine {code}")


def _compiler_for(tgt: Mapping[str, Any], arch: str) -> str:
    if arch == host_arch():
        cxx = os.environ.get("CXX", "g++")
        hint = "install g++ (Debian: g++) or set CXX"
    else:
        cxx = parse_target(str(tgt["target"])).cross_cc or ""
        package = {"aarch64": "g++-aarch64-linux-gnu"}.get(arch, f"a C++ cross compiler for {arch}")
        hint = f"install {package} (scripts/install.sh does)"
    if not cxx or shutil.which(cxx) is None:
        raise CompilerNotFoundError(f"C++ compiler {cxx or '(none)'} for {arch} not found: {hint}")
    return cxx


# -- runtime libraries ----------------------------------------------------------------------
def _installed_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _installed_runtime() -> RuntimeLibs | None:
    try:
        import tvm
        import tvm_ffi
    except ImportError:
        return None
    ffi_root = Path(tvm_ffi.__file__).parent
    libs = (Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so",
            ffi_root / "lib" / "libtvm_ffi.so")
    include = ffi_root / "include"
    if not all(p.exists() for p in libs) or not (include / "tvm" / "ffi" / "function.h").exists():
        return None
    versions = (_installed_version("apache-tvm"), _installed_version("apache-tvm-ffi"))
    return RuntimeLibs(host_arch(), libs, include, "installed", versions)


def _fetched_runtime(arch: str) -> RuntimeLibs:
    base = cache_dir() / "runtime" / arch
    target = base / f"tvm-{TVM_VERSION}_ffi-{TVM_FFI_VERSION}"
    libs = RuntimeLibs(arch, tuple(target / "lib" / Path(m).name for _, _, m in RUNTIME_LIBS),
                       target / "include", "pypi", (TVM_VERSION, TVM_FFI_VERSION))
    if all(p.exists() for p in libs.libraries) and (libs.include_dir / "tvm").is_dir():
        return libs
    stage = _stage_dir(base)
    try:
        (stage / "lib").mkdir()
        wheels = stage / "wheels"
        for dist, version, member in RUNTIME_LIBS:
            wheel = _download_wheel(dist, version, arch, wheels)
            _extract(wheel, member, stage / "lib" / Path(member).name)
            if dist == "apache-tvm-ffi":
                _extract_tree(wheel, FFI_INCLUDE, stage / "include")
            wheel.unlink()
        for lib in (stage / "lib").iterdir():
            got = _elf_machine(lib)
            if got != arch:
                raise RuntimeFetchError(f"{lib.name} from the {arch} wheel is {got} code")
        shutil.rmtree(wheels, ignore_errors=True)
        _publish(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.info("cached the %s TVM runtime in %s", arch, target)
    return libs


def _download_wheel(dist: str, version: str, arch: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--python-version", WHEEL_PYTHON, "--dest", str(dest)]
    for tag in PLATFORM_TAGS[arch]:
        cmd += ["--platform", tag]
    wheel_dir = os.environ.get("HWCC_WHEEL_DIR")
    if wheel_dir:  # offline: wheels downloaded elsewhere
        cmd += ["--no-index", "--find-links", wheel_dir]
    cmd.append(f"{dist}=={version}")
    logger.info("downloading %s %s for %s (once; cached)", dist, version, arch)
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeFetchError(f"cannot run pip to download {dist}=={version}: {err}") from None
    wheels = sorted(dest.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise RuntimeFetchError(
            f"cannot download the {arch} wheel of {dist}=={version} from PyPI "
            f"({', '.join(PLATFORM_TAGS[arch])}): {last}. Connect to PyPI once (the runtime is "
            f"cached in {cache_dir() / 'runtime' / arch}), or set HWCC_WHEEL_DIR to a directory "
            "holding that wheel")
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (KeyError, zipfile.BadZipFile, OSError) as err:
        raise RuntimeFetchError(f"cannot unpack {member} from {wheel.name}: {err}") from None
    os.chmod(dest, 0o755)


def _extract_tree(wheel: Path, prefix: str, dest: Path) -> None:
    prefix = prefix.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise RuntimeFetchError(f"{wheel.name} holds no {prefix} headers")
        for m in members:
            out = dest / m[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(m) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


# -- runner ---------------------------------------------------------------------------------
def _build_runner(cxx: str, runtime: RuntimeLibs) -> Path:
    """Compile hwcc_run for the runtime's architecture; cached by source, compiler and libs."""
    key = hashlib.sha256()
    key.update(RUNNER_SOURCE.read_bytes())
    key.update(cxx.encode())
    for lib in runtime.libraries:
        key.update(sha256_file(lib).encode())
    cache = cache_dir() / "runtime" / runtime.arch / "runner"
    runner = cache / f"{RUNNER}-{key.hexdigest()[:16]}"
    if runner.exists():
        return runner
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{RUNNER}.", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [cxx, "-std=c++17", "-O2", "-I", str(runtime.include_dir), str(RUNNER_SOURCE),
           "-o", str(tmp)]
    for lib_dir in dict.fromkeys(lib.parent for lib in runtime.libraries):
        cmd += ["-L", str(lib_dir), f"-Wl,-rpath-link,{lib_dir}"]
    cmd += ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/lib"]
    logger.info("building %s: %s", RUNNER, " ".join(cmd))
    try:
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BundleError(f"building {RUNNER} with {cxx} failed: {err}") from None
        if proc.returncode != 0:
            lines = proc.stderr.splitlines()
            errors = [ln for ln in lines if "error" in ln] or lines[-1:] or [str(proc.returncode)]
            raise BundleError(f"building {RUNNER} with {cxx} failed: {errors[0].strip()}")
        os.replace(tmp, runner)
    finally:
        tmp.unlink(missing_ok=True)
    return runner


# -- files ----------------------------------------------------------------------------------
def _stage_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".stage-", dir=parent))


def _publish(stage: Path, target: Path) -> None:
    """Rename a staged cache directory into place (another process may have won the race)."""
    try:
        replace_dir(stage, target)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        if not target.is_dir():
            raise


def _is_replaceable_bundle(path: Path) -> bool:
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        read_bundle_info(path)
        return True
    except BundleError:
        return False


def _readme(manifest: Mapping[str, Any], arch: str, requires: Mapping[str, str],
            features: Sequence[str]) -> str:
    def describe(specs: Sequence[Mapping[str, Any]]) -> str:
        used: set[str] = set()
        rows = []
        for s in specs:
            stem = file_stem(str(s["name"]), used)
            used.add(stem)
            rows.append(f"  {stem}.npy  {s['dtype']} {list(s['shape'])}  ('{s['name']}')")
        return "\n".join(rows)

    return (
        f"hwcc bundle for {arch}: {manifest['target'].get('target')}\n\n"
        "Copy this directory to the device and run, from anywhere:\n"
        "  ./hwcc_run --inputs IN_DIR --outputs OUT_DIR [--repeat N] [--threads N]\n\n"
        f"Inputs (.npy, little-endian, C order):\n{describe(manifest['inputs'])}\n"
        f"Outputs:\n{describe(manifest['outputs'])}\n\n"
        f"The device needs Linux on {arch} with glibc >= {requires.get('glibc', '?')} and a "
        f"libstdc++ providing {requires.get('libstdc++', '?')}\n"
        "(e.g. Debian 12, Ubuntu 22.04, Raspberry Pi OS bookworm or newer).\n"
        + (f"Its CPU needs {', '.join(features)} (hwcc_run checks at start-up).\n"
           if features else "")
        + "TVM's runtime is in lib/; no Python is needed. Set TVM_NUM_THREADS or --threads to "
        "choose the\nthreads (default: all cores).\n"
    )
