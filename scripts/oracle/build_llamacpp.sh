#!/usr/bin/env bash
# Build llama.cpp (the copy vendored in the llama-cpp-python 0.3.36 sdist) as the project's
# reference ("oracle") implementation, outside the repository.
#
#   bash scripts/oracle/build_llamacpp.sh            # build the tools, then install llama-cpp-python
#   SKIP_PY=1 bash scripts/oracle/build_llamacpp.sh  # tools only
#
# Environment (all optional):
#   ORACLE_ROOT   where the sdist lies and is extracted      (default /work/oracle)
#   ORACLE_SDIST  the sdist tarball                          (default $ORACLE_ROOT/llama_cpp_python-0.3.36.tar.gz)
#   ORACLE_DIR    CMake build directory                      (default $ORACLE_ROOT/llama.cpp-build)
#   JOBS          parallel compile jobs                      (default 2: the machine is shared)
#
# Results:
#   $ORACLE_DIR/bin/{llama-tokenize,llama-perplexity,llama-quantize,llama-bench,llama-eval-callback,
#                    llama-completion,llama-server}
#   $ORACLE_DIR/bin/lib{llama,ggml,ggml-base,ggml-cpu}.so   (shared libraries, BUILD_SHARED_LIBS=ON)
#   $ORACLE_ROOT/TOKENIZE_READY   path of llama-tokenize, written as soon as it is linked
#   $ORACLE_ROOT/BENCH_READY      path of llama-bench
#   $ORACLE_ROOT/ENV              `source` it to point llama-cpp-python at the shared libraries
#
# CPU features: GGML_NATIVE is OFF so that the instruction sets are chosen explicitly from the flags
# /proc/cpuinfo lists. AMX is always OFF: some virtual machines list amx_* yet fault on the
# instructions.
#
# llama-server: built without its web UI (LLAMA_BUILD_UI=OFF, LLAMA_USE_PREBUILT_UI=OFF: the UI is
# an npm build or a download, and this machine builds offline; the server then embeds an empty asset
# table and still serves the HTTP API) and without OpenSSL (loopback HTTP only).
set -euo pipefail

ORACLE_ROOT=${ORACLE_ROOT:-/work/oracle}
ORACLE_SDIST=${ORACLE_SDIST:-$ORACLE_ROOT/llama_cpp_python-0.3.36.tar.gz}
ORACLE_DIR=${ORACLE_DIR:-$ORACLE_ROOT/llama.cpp-build}
JOBS=${JOBS:-2}
HERE="$(cd "$(dirname "$0")" && pwd)"

# ---- 1. extract the sdist (once) -------------------------------------------------------------
SRC_TOP="$ORACLE_ROOT/$(basename "$ORACLE_SDIST" .tar.gz)"
if [ ! -f "$SRC_TOP/vendor/llama.cpp/CMakeLists.txt" ]; then
  [ -f "$ORACLE_SDIST" ] || { echo "error: sdist not found: $ORACLE_SDIST" >&2; exit 1; }
  tar -xzf "$ORACLE_SDIST" -C "$ORACLE_ROOT"
fi
LLAMA_SRC="$SRC_TOP/vendor/llama.cpp"

# ---- 2. instruction-set flags from /proc/cpuinfo ---------------------------------------------
# One line of flags is enough (all cores are alike). `has X` is true when X is a listed flag.
CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ "$CPU_FLAGS" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }

ISA_ARGS=(
  -DGGML_NATIVE=OFF
  -DGGML_SSE42="$(onoff sse4_2)"
  -DGGML_AVX="$(onoff avx)"
  -DGGML_AVX2="$(onoff avx2)"
  -DGGML_BMI2="$(onoff bmi2)"
  -DGGML_FMA="$(onoff fma)"
  -DGGML_F16C="$(onoff f16c)"
  -DGGML_AVX_VNNI="$(onoff avx_vnni)"
  # ggml's AVX512 switch wants F, and compiles with -mavx512f/-mavx512cd/-mavx512vl/-mavx512dq/-mavx512bw
  -DGGML_AVX512="$( (has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw) && echo ON || echo OFF)"
  -DGGML_AVX512_VBMI="$(onoff avx512vbmi)"
  -DGGML_AVX512_VNNI="$(onoff avx512_vnni)"
  -DGGML_AVX512_BF16="$(onoff avx512_bf16)"
  # never AMX (see the header)
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
)

# ---- 3. configure ----------------------------------------------------------------------------
GEN_ARGS=()
command -v ninja >/dev/null && GEN_ARGS=(-G Ninja)
if [ ! -f "$ORACLE_DIR/CMakeCache.txt" ]; then
  cmake -S "$LLAMA_SRC" -B "$ORACLE_DIR" "${GEN_ARGS[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON \
    "${ISA_ARGS[@]}" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_OPENSSL=OFF
elif ! grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$ORACLE_DIR/CMakeCache.txt"; then
  # A build directory configured before llama-server was added: switch the server on in place (the
  # other options, and so the binaries already built, stay as they are).
  cmake -S "$LLAMA_SRC" -B "$ORACLE_DIR" \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
fi
echo "== ISA flags used:"; printf '   %s\n' "${ISA_ARGS[@]}"

# ---- 4. build: llama-tokenize first (another process waits for it), then the rest ------------
cmake --build "$ORACLE_DIR" --target llama-tokenize -j "$JOBS"
echo "$ORACLE_DIR/bin/llama-tokenize" > "$ORACLE_ROOT/TOKENIZE_READY"
echo "== llama-tokenize ready: $ORACLE_DIR/bin/llama-tokenize"

cmake --build "$ORACLE_DIR" --target llama-perplexity llama-quantize -j "$JOBS"
echo "== llama-perplexity, llama-quantize ready in $ORACLE_DIR/bin"

cmake --build "$ORACLE_DIR" --target llama-bench -j "$JOBS"
echo "$ORACLE_DIR/bin/llama-bench" > "$ORACLE_ROOT/BENCH_READY"
echo "== llama-bench ready: $ORACLE_DIR/bin/llama-bench"

cmake --build "$ORACLE_DIR" --target llama-eval-callback llama-completion -j "$JOBS"

# The HTTP server that bench/serve_bench.py --llama-server runs next to `llmetal serve`.
cmake --build "$ORACLE_DIR" --target llama-server -j "$JOBS"
echo "== llama-server ready: $ORACLE_DIR/bin/llama-server"

# A file to source: python bindings find libllama.so through LLAMA_CPP_LIB_PATH.
cat > "$ORACLE_ROOT/ENV" <<EOF
export LLAMA_CPP_LIB_PATH="$ORACLE_DIR/bin"
export LD_LIBRARY_PATH="$ORACLE_DIR/bin\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LLAMA_ORACLE_BIN="$ORACLE_DIR/bin"
EOF
echo "== tools built in $ORACLE_DIR/bin"; ls -1 "$ORACLE_DIR/bin"

# ---- 5. python bindings over the same libraries ------------------------------------------------
if [ "${SKIP_PY:-0}" != "1" ]; then
  ORACLE_ROOT="$ORACLE_ROOT" ORACLE_DIR="$ORACLE_DIR" SRC_TOP="$SRC_TOP" \
    bash "$HERE/install_llama_cpp_python.sh"
fi
