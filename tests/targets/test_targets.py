"""Target triples: parsing, round-trip printing, TVM targets, capabilities, errors."""

from __future__ import annotations

import pytest

from compiler.errors import TargetError
from targets import known_triples, parse_target

SPECS = [
    "x86_64-linux-gnu",
    "x86_64-linux-gnu -mcpu=skylake -mattr=+avx2,+fma",
    "aarch64-linux-gnu",
    "aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod",
    "armv7a-linux-gnueabihf -mattr=+neon",
    "riscv64-linux-gnu -mattr=+m,+a,+f,+d,+c,+v",
    "nvptx64-nvidia-cuda -arch=sm_90",
    "embedded",
    "aarch64-linux-gnu -cores=8",
]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip(spec: str) -> None:
    """str(parse(s)) == s and parse(str(t)) == t, and the TVM target is accepted by TVM."""
    t = parse_target(spec)
    assert str(t) == spec
    assert parse_target(str(t)) == t
    tvm_t = t.tvm_target()
    assert tvm_t.kind.name == t.kind


def test_host_detects_this_machine() -> None:
    """'host' resolves to this machine's triple, with features that round-trip."""
    import platform

    t = parse_target("host")
    assert t.runs_on_this_machine()
    assert t.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower())
    assert parse_target(str(t)).features == t.features


def test_capabilities_follow_features() -> None:
    """Vector width and int8 instructions come from the features asked for."""
    base = parse_target("x86_64-linux-gnu").capabilities
    avx2 = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma").capabilities
    vnni = parse_target("x86_64-linux-gnu -mattr=+avx512f,+avx512bw,+avx512vnni").capabilities
    assert (base.vector_bits, avx2.vector_bits, vnni.vector_bits) == (128, 256, 512)
    assert (base.vector_registers, avx2.vector_registers, vnni.vector_registers) == (16, 16, 32)
    assert "vpmaddubsw" in avx2.int8_dot and "vpdpbusd" in vnni.int8_dot
    # AVX-VNNI is the 256-bit form: not the 512-bit vpdpbusd the VNNI kernels use
    avxvnni = parse_target("x86_64-linux-gnu -mattr=+avx2,+fma,+avxvnni").capabilities
    assert "vpdpbusd256" in avxvnni.int8_dot and "vpdpbusd" not in avxvnni.int8_dot
    assert parse_target("aarch64-linux-gnu -mattr=+dotprod,+i8mm").capabilities.int8_dot == (
        "sdot", "smmla")
    assert parse_target("aarch64-linux-gnu").capabilities.vector_registers == 32
    assert not parse_target("embedded").capabilities.has_float
    assert parse_target("cuda").tvm_target_dict()["arch"] == "sm_80"


def test_cross_targets_name_their_compiler() -> None:
    assert parse_target("aarch64-linux-gnu").cross_cc == "aarch64-linux-gnu-g++"
    assert parse_target("armv7a-linux-gnueabihf").cross_cc == "arm-linux-gnueabihf-g++"


@pytest.mark.parametrize("spec,needle", [
    ("aarch65-linux", "unknown target triple 'aarch65-linux'; known: x86_64-linux-gnu"),
    ("x86_64-linux-gnu -mattr=+neon", "unknown feature '+neon'"),
    ("cuda -arch=sm8", "invalid CUDA arch 'sm8'"),
    ("x86_64-linux-gnu -arch=sm_80", "-arch applies to CUDA targets only"),
    ("host -foo=1", "unknown target option '-foo'"),
    ("x86_64-linux-gnu -cores=0", "-cores must be a positive integer"),
    ("", "empty target"),
])
def test_bad_targets(spec: str, needle: str) -> None:
    """Errors quote the input and list what is known."""
    with pytest.raises(TargetError) as info:
        parse_target(spec)
    assert needle in str(info.value)


def test_known_triples_lists_the_documented_ones() -> None:
    names = known_triples()
    for t in ("x86_64-linux-gnu", "aarch64-linux-gnu", "armv7a-linux-gnueabihf",
              "riscv64-linux-gnu", "nvptx64-nvidia-cuda", "host", "embedded"):
        assert t in names


@pytest.mark.parametrize("spec", [
    "x86_64-linux-gnu -mattr=+avx2,+fma -cores=2",
    "x86_64-linux-gnu -mattr=+avx512f,+avx512bw,+avx512vnni -cores=2",
    "aarch64-linux-gnu -mattr=+neon,+dotprod -cores=4",
    "armv7a-linux-gnueabihf -mattr=+neon -cores=4",
    "riscv64-linux-gnu -mattr=+v -cores=4",
])
def test_tvm_target_has_the_same_capabilities(spec: str) -> None:
    """One description per target: what the schedules read from the TVM target object
    (``capabilities_of``) is what ``parse_target`` built, peak estimate aside."""
    from targets import capabilities_of

    t = parse_target(spec)
    caps = capabilities_of(t.tvm_target())
    for field in ("vector_bits", "vector_registers", "int8_dot", "cores"):
        assert getattr(caps, field) == getattr(t.capabilities, field), field


def test_mcpu_features_count_for_capabilities_and_the_host_check() -> None:
    """``-mcpu=skylake-avx512`` alone means AVX-512: capabilities (and the schedules' view
    through ``capabilities_of``) use the features it implies, ``-mattr=-f`` removes one,
    the host check covers them, and the target still prints as given."""
    from targets import capabilities_of
    from targets.host import missing_features

    skx = parse_target("x86_64-linux-gnu -mcpu=skylake-avx512")
    assert str(skx) == "x86_64-linux-gnu -mcpu=skylake-avx512" and skx.features == ()
    assert {"+avx512f", "+avx512bw", "+fma"} <= set(skx.cpu_features)
    assert skx.capabilities.vector_bits == 512 and "vpmaddubsw512" in skx.capabilities.int8_dot
    assert capabilities_of(skx.tvm_target()).vector_bits == 512
    spr = parse_target("x86_64-linux-gnu -mcpu=sapphirerapids -mattr=-avx512fp16")
    assert "+amx-int8" in spr.cpu_features and "+avx512fp16" not in spr.cpu_features
    assert spr.missing_host_features() == missing_features(spr.cpu_features)
    a76 = parse_target("aarch64-linux-gnu -mcpu=cortex-a76")
    assert "+dotprod" in a76.cpu_features and a76.capabilities.int8_dot == ("sdot",)
    with pytest.raises(TargetError, match="unknown -mcpu 'notacpu'.*skylake"):
        parse_target("x86_64-linux-gnu -mcpu=notacpu")


def test_embedded_accelerator_options_print_back_and_reach_capabilities() -> None:
    t = parse_target("embedded -mac=8x8 -spad=64 -acc=16 -dma=8 -ram=32")
    assert str(t) == "embedded -mac=8x8 -spad=64 -acc=16 -dma=8 -ram=32"
    assert parse_target(str(t)) == t
    acc = t.accelerator
    assert (acc.rows, acc.cols, acc.spad_bytes, acc.dma_bytes, acc.ram_kb) == (8, 8, 65536, 8, 32)
    assert acc.acc_rows == 16 * 1024 // (4 * 8)
    assert t.capabilities.int8_dot == ("mac8x8",) and t.capabilities.scratchpad_kb == 64
    assert "#define HWCC_ACC_ROWS 8" in acc.config_header()
    default = parse_target("embedded").accelerator  # Gemmini's defaults
    assert (default.rows, default.cols, default.spad_kb, default.acc_kb) == (16, 16, 256, 64)
    for bad in ("embedded -mac=3x3", "embedded -spad=0", "x86_64-linux-gnu -mac=8x8",
                "embedded -mcpu=cortex-m4", "embedded -mattr=+neon"):
        with pytest.raises(TargetError):
            parse_target(bad)
