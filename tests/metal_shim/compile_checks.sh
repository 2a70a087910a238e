#!/usr/bin/env bash
# Compile checks of the Metal device that need no Mac (run by .ci/run; clang 16+ required):
#  1. cpp/metal/device.mm, syntax-only, as Objective-C++ with manual retain/release (as CMake
#     builds it on Apple), against tests/metal_shim/include: a declaration header of exactly the
#     Metal/Foundation API it uses. A misspelled or undeclared selector is an error
#     (-Werror=objc-method-access), and the check proves it can fail: a copy of device.mm with
#     one selector misspelled must be rejected.
#  2. the emulator's x86-64 context switch (cpp/metal_emu/fiber_switch_x86_64.h) assembles for
#     Mach-O (Intel Macs) as well as ELF; its runtime (cpp/metal_emu/runtime.cpp) compiles for
#     arm64 Linux, where it takes the <ucontext.h> path that arm64 macOS takes (with
#     aarch64-linux-gnu-g++, which scripts/ci_neon.sh installs; macOS's own headers are not here).
#  3. every .metal file, and the embedded source device.mm compiles at run time, compiled by
#     clang as C++ under MSL's address spaces (msl_check.py with msl_strict.h): a pointer passed
#     or cast across device/constant/threadgroup/thread is an error; kernel attributes checked;
#     and the embedded kernels held against every dispatch the planner makes (plan_dump.cpp):
#     each kernel it names exists and takes exactly the [[buffer(n)]] indices it binds. Each
#     part proves it can fail on a copy of the kernels with one defect.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLANGXX=${CLANGXX:-$(command -v clang++-19 || command -v clang++-18 || command -v clang++-17 || command -v clang++-16 || command -v clang++)}
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" scripts/metal_embed.py metal "$tmp/metal_source.inc"
objcxx=("$CLANGXX" -std=c++17 -x objective-c++ -fsyntax-only -fobjc-runtime=macosx-14.0 -fblocks -fno-objc-arc
        -Wall -Werror -Werror=objc-method-access -Itests/metal_shim/include -I"$tmp" -Icpp -Icpp/metal)
"${objcxx[@]}" cpp/metal/device.mm
echo "compile check: cpp/metal/device.mm (Objective-C++, MRC) against the Metal/Foundation declarations: ok"
sed 's/\[enc endEncoding\]/[enc endEncodng]/' cpp/metal/device.mm > "$tmp/device_misspelled.mm"
if "${objcxx[@]}" "$tmp/device_misspelled.mm" 2> "$tmp/err.txt"; then
  echo "compile check FAILED: a misspelled selector (endEncodng) was accepted" >&2; exit 1
fi
grep -q "endEncodng" "$tmp/err.txt"
echo "compile check: a misspelled selector is rejected: ok"
for target in x86_64-apple-macos11 x86_64-linux-gnu; do
  "$CLANGXX" -target "$target" -Wno-pragma-once-outside-header -x c++ -c cpp/metal_emu/fiber_switch_x86_64.h -o "$tmp/switch.o"
  echo "compile check: the emulator's context switch assembles for $target: ok"
done
if command -v aarch64-linux-gnu-g++ > /dev/null; then
  aarch64-linux-gnu-g++ -std=c++17 -fsyntax-only -Wall -Werror -Icpp/metal_emu cpp/metal_emu/runtime.cpp
  echo "compile check: the emulator's runtime (ucontext path) compiles for arm64 Linux: ok"
else
  echo "compile check: the emulator's runtime for arm64: SKIPPED (no aarch64-linux-gnu-g++)"
fi

"$CLANGXX" -std=c++17 -Icpp tests/metal_shim/plan_dump.cpp cpp/metal/dispatch.cpp cpp/engine.cpp -o "$tmp/plan_dump"
"$tmp/plan_dump" > "$tmp/plan.txt"
msl_check=("$PY" tests/metal_shim/msl_check.py --cxx "$CLANGXX" --tmp "$tmp")
"${msl_check[@]}" --unit "$tmp/metal_source.inc" --plan "$tmp/plan.txt" metal/*.metal tests/metal_emu/selftest.metal
echo "compile check: the kernels under MSL's address spaces, against the planner's dispatches: ok"
# must_fail WHAT TEXT ARGS...: msl_check.py ARGS must fail, with TEXT in its errors
must_fail() {
  local what=$1 text=$2; shift 2
  if "${msl_check[@]}" "$@" > /dev/null 2> "$tmp/err.txt"; then
    echo "compile check FAILED: $what was accepted" >&2; exit 1
  fi
  if ! grep -qF -- "$text" "$tmp/err.txt"; then
    echo "compile check FAILED: $what was rejected, but not for it:" >&2; cat "$tmp/err.txt" >&2; exit 1
  fi
  echo "compile check: $what is rejected: ok"
}
sed 's/threadgroup float\* sx = sh + .*;/threadgroup float* sx = y;/' metal/matmul.metal > "$tmp/matmul_device.metal"
must_fail "a device pointer where a threadgroup pointer goes" \
  "cannot initialize a variable of type 'threadgroup float *' with an lvalue of type 'device float *'" \
  "$tmp/matmul_device.metal"
sed 's/threadgroup float\* sx = sh + .*;/threadgroup float* sx = (threadgroup float*)y;/' metal/matmul.metal > "$tmp/matmul_cast.metal"
must_fail "a cast from device to threadgroup" "a cast to 'threadgroup float *' from another address space" \
  "$tmp/matmul_cast.metal"
sed 's/kernel_rmsnorm_f32/kernel_rmsnorm_f3/' "$tmp/metal_source.inc" > "$tmp/renamed.inc"
must_fail "an embedded source without a kernel the planner names" "the planner dispatches kernel_rmsnorm_f32, which no kernel" \
  --unit "$tmp/renamed.inc" --plan "$tmp/plan.txt"
sed 's/device float\* out \[\[buffer(3)\]\]/device float* out [[buffer(4)]]/' "$tmp/metal_source.inc" > "$tmp/index.inc"
must_fail "a [[buffer(n)]] index the planner does not bind" "kernel_rmsnorm_f32 takes buffers [0, 1, 2, 4]; the planner binds [0, 1, 2, 3]" \
  --unit "$tmp/index.inc" --plan "$tmp/plan.txt"
sed 's/^kernel void kernel_add_f32/void kernel_add_f32/' "$tmp/metal_source.inc" > "$tmp/nokernel.inc"
must_fail "a kernel entry point not declared kernel" "[[buffer(0)]] on a parameter of a function that is not declared \`kernel\`" \
  --unit "$tmp/nokernel.inc" --plan "$tmp/plan.txt"
