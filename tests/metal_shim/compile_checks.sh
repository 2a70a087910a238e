#!/usr/bin/env bash
# Compile checks of the Metal device that need no Mac (run by .ci/run; clang 16+ required):
#  1. cpp/metal/device.mm, syntax-only, as Objective-C++ with manual retain/release (as CMake
#     builds it on Apple), against tests/metal_shim/include: a declaration header of exactly the
#     Metal/Foundation API it uses. A misspelled or undeclared selector is an error
#     (-Werror=objc-method-access), and the check proves it can fail: a copy of device.mm with
#     one selector misspelled must be rejected.
#  2. the emulator's x86-64 context switch (cpp/metal_emu/fiber_switch_x86_64.h) assembles for
#     Mach-O (Intel Macs) as well as ELF.
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
