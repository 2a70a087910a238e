#!/usr/bin/env bash
# CI step for the NEON kernels: cross-compile the standalone CPU kernel test
# (tests/cpu_kernels) for arm64 and run it under qemu-user, twice:
#   armv8-a                 plain NEON (the 8-bit dot falls back to vmull_s8 + vpadalq_s16)
#   armv8.2-a+dotprod       with sdot (vdotq_s32), as Apple M1+ builds use
# Each run checks the NEON kernels against the scalar ones and the scalar ones against a
# float64 dequantized reference. Needs Debian/Ubuntu packages g++-aarch64-linux-gnu and
# qemu-user (installed here when missing; run as root, as CI containers are).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-g++ > /dev/null || ! command -v qemu-aarch64 > /dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user > /dev/null
fi
export RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
for arch in armv8-a armv8.2-a+dotprod; do
  echo "== arm64 -march=$arch under qemu-aarch64"
  OUT_DIR="build/cpu_kernels_arm64_${arch//[^a-z0-9]/_}" \
    bash tests/cpu_kernels/run.sh aarch64-linux-gnu-g++ -march=$arch
done
