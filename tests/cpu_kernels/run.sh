#!/usr/bin/env bash
# Build the standalone CPU kernel test natively and run it (x86: scalar, AVX2, AVX-512;
# arm64: scalar, NEON). Usage: bash tests/cpu_kernels/run.sh [CXX] [extra flags...]
# No -march: the SIMD kernels carry their own target attributes, as in the engine build.
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${1:-${CXX:-g++}}
shift || true
OUT=${OUT_DIR:-build/cpu_kernels}
mkdir -p "$OUT"
SRC="tests/cpu_kernels/test_cpu_kernels.cpp cpp/cpu/kernels.cpp cpp/cpu/threadpool.cpp cpp/cpu/features.cpp cpp/cpu/quants.cpp $(ls cpp/cpu/quants_*.cpp)"
$CXX -std=c++17 -O2 -Wall -Wno-unused-function -Icpp "$@" $SRC -o "$OUT/test_cpu_kernels" -lpthread
if [ -n "${RUNNER:-}" ]; then $RUNNER "$OUT/test_cpu_kernels"; else "$OUT/test_cpu_kernels"; fi
