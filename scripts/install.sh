#!/usr/bin/env bash
# Install hwcc and everything its compile path and tests need, on a fresh Debian/Ubuntu machine.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cross compilers (aarch64, armv7, riscv64) link modules for non-host targets;
# arm-none-eabi-gcc builds the embedded target's C for a Cortex-M (tests).
need=()
for pkg_cc in g++-aarch64-linux-gnu:aarch64-linux-gnu-g++ \
              libc6-dev-arm64-cross:/usr/aarch64-linux-gnu/lib/libc.so.6 \
              g++-arm-linux-gnueabihf:arm-linux-gnueabihf-g++ \
              g++-riscv64-linux-gnu:riscv64-linux-gnu-g++ \
              gcc-arm-none-eabi:arm-none-eabi-gcc; do
  tool="${pkg_cc#*:}"
  if [[ "$tool" == /* ]]; then [ -e "$tool" ] || need+=("${pkg_cc%%:*}")
  else command -v "$tool" >/dev/null 2>&1 || need+=("${pkg_cc%%:*}"); fi
done
command -v readelf >/dev/null 2>&1 || need+=(binutils)
# qemu-user runs aarch64 / armv7 deployment bundles on this machine (tests of `hwcc bundle`).
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
